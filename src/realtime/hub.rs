//! A channel's hub: one actor per channel that keeps the channel's state,
//! assigns every update its offset, keeps the recent history for resuming
//! clients, and delivers to its subscribers. Because the snapshot, the offsets
//! and the history all live here, a subscriber's snapshot and the updates
//! after it can neither overlap nor leave a gap.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytestring::ByteString;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::channel::{Channel, Near};
use super::history::{History, HistoryLimits};
use super::limits::FeedPlace;
use super::projection::{LISTING_LIMIT, Projection};
use super::protocol::{self, Position};
use super::socket::{Fanout, Frame, SendQueue};
use crate::store::{EventFilter, EventRecord, Store};
use turnout_actors::changes::EventChange;
use turnout_actors::domain::{EventId, GeoPoint, VenueId};
use turnout_actors::queued::{QueueCount, Queued};
use turnout_actors::store::StoreError;

/// What a hub needs of the hubs that started it: where it leaves when it
/// stops, and where it reports an event channel whose event does not
/// exist. (A port, so that a hub does not depend on its registry.)
pub trait HubHome: Send + Sync + 'static {
    fn left(&self, channel: &Channel, hub: &Addr<ChannelHub>);
    fn missed(&self, event: EventId, looked_at: Instant);
}

#[derive(Message)]
#[rtype(result = "Subscribed")]
pub struct Subscribe {
    pub session: u64,
    pub to: SendQueue,
    pub since: Option<Position>,
}

/// How a hub took a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, MessageResponse)]
pub enum Subscribed {
    /// The first frames went to the subscriber's queue.
    Taken,
    /// The channel is `event:<id>` and no published event has that id (a
    /// draft is shown to nobody here), or `venue:<id>` and no venue has
    /// that id: the hub keeps no subscriber.
    NotFound,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub session: u64,
    /// Where to say `unsubscribed`, when the client asked: the hub says
    /// it, after every frame of the channel it sent the session and before
    /// a snapshot for a subscribe right behind, which it takes next.
    pub told: Option<SendQueue>,
    /// The subscription's place among its address's filtered feeds: the
    /// hub holds it for its idle time (`left_places`), so the address may
    /// take this feed again at once, and another only once the hub it made
    /// may have stopped.
    pub place: Option<FeedPlace>,
}

/// A committed change offered to a hub. It counts in the node's changes
/// queued for hubs (`turnout_ws_hub_changes_queued`) until it is handled,
/// or dropped with a stopped hub's mailbox: a hub's mailbox takes every
/// change routed to it, without a bound, so the count is what shows one
/// falling behind.
#[derive(Message)]
#[rtype(result = "()")]
pub struct OfferChange {
    change: Arc<EventChange>,
    _queued: Queued,
}

impl OfferChange {
    pub fn new(change: Arc<EventChange>, queued: &QueueCount) -> Self {
        Self {
            change,
            _queued: queued.enter(),
        }
    }
}

/// Changes may have been missed (the cross-node feed was down): reload the
/// state, start a new epoch, and send every subscriber a fresh snapshot.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync;

pub struct ChannelHub {
    channel: Channel,
    name: Arc<str>,
    /// Changes whenever the hub starts: offsets from another epoch mean nothing.
    epoch: Arc<str>,
    offset: u64,
    history: History,
    /// What the channel shows, and how a change moves it.
    projection: Projection,
    /// Set by a resync: when the reload is done, every subscriber gets a
    /// fresh snapshot.
    resyncing: bool,
    /// The snapshot as last encoded, until the channel moves: as a plain
    /// subscribe's first frame, and as a resume's that could not be served
    /// (`recovered: false`). Every subscriber between two changes is handed
    /// the same bytes: thousands of clients coming back after a restart
    /// cost one encoding, and a client that reads nothing pins a shared
    /// frame, not a copy of its own of a listing that may run to megabytes.
    snapshots: [Option<Frame>; 2],
    /// The channel is a venue's and the load found no such venue.
    missing: bool,
    /// When the last load began: what it found may be older than a change
    /// still queued behind it.
    looked_at: Instant,
    /// A listing's next start time and the timer that takes the events
    /// starting then off the list.
    next_start: Option<(DateTime<Utc>, SpawnHandle)>,
    /// Each subscriber's outgoing queue: the hub writes to it directly.
    /// Kept in the order the sessions began (their ids grow), so that a
    /// fan-out walks the queues, the sockets and the kernel's state of each
    /// connection in about the order they were allocated, as a bare
    /// broadcast walks its vector, and the CPU's prefetchers keep up. In a
    /// hash map's order each subscriber was a cache miss or two: 12 % of
    /// the CPU per delivery (docs/BENCHMARKS.md).
    subscribers: BTreeMap<u64, SendQueue>,
    /// The places of client addresses that left this filtered feed, one
    /// each, held for the hub's idle time: the hub they made lingers that
    /// long, a place among the node's `max_feed_hubs`, and an address that
    /// subscribed and left feed after feed would otherwise hold them all
    /// while its own count stayed at zero.
    left_places: HashMap<IpAddr, (FeedPlace, Instant)>,
    store: Arc<dyn Store>,
    home: Arc<dyn HubHome>,
    idle_limit: Duration,
    idle_since: Instant,
}

impl ChannelHub {
    pub fn new(
        channel: Channel,
        store: Arc<dyn Store>,
        home: Arc<dyn HubHome>,
        history: HistoryLimits,
        idle_limit: Duration,
    ) -> Self {
        Self {
            name: channel.to_string().into(),
            projection: Projection::new(channel.clone()),
            channel,
            epoch: format!("{:016x}", rand::random::<u64>()).into(),
            offset: 0,
            history: History::new(history),
            resyncing: false,
            snapshots: Default::default(),
            missing: false,
            looked_at: Instant::now(),
            next_start: None,
            subscribers: BTreeMap::new(),
            left_places: HashMap::new(),
            store,
            home,
            idle_limit,
            idle_since: Instant::now(),
        }
    }

    /// The snapshot's frame, saying `recovered: false` if it answers a
    /// resume.
    fn snapshot(&mut self, answers_a_resume: bool) -> Frame {
        let (name, epoch, offset) = (&self.name, &self.epoch, self.offset);
        let projection = &self.projection;
        self.snapshots[usize::from(answers_a_resume)]
            .get_or_insert_with(|| {
                let recovered = answers_a_resume.then_some(false);
                let data = projection.snapshot();
                Frame::text(
                    protocol::snapshot(name, epoch, offset, recovered, &data),
                    None,
                )
            })
            .clone()
    }

    /// Loads the channel's state from the read model. `wait` holds
    /// subscriptions and changes until it is done; changes committed
    /// meanwhile queue up and are de-duplicated by version. A failed load is
    /// retried, backing off, rather than given up: the subscribers waiting
    /// for their snapshot get it once the database answers again.
    fn load(&mut self, ctx: &mut Context<Self>) {
        self.looked_at = Instant::now();
        let store = Arc::clone(&self.store);
        let (channel, name) = (self.channel.clone(), Arc::clone(&self.name));
        ctx.wait(
            async move {
                let mut pause = Duration::from_millis(100);
                loop {
                    match fetch(&*store, &channel).await {
                        Ok(loaded) => return loaded,
                        Err(error) => {
                            metrics::counter!("turnout_ws_channel_load_failures_total")
                                .increment(1);
                            tracing::warn!(
                                channel = %name,
                                %error,
                                retry_in_ms = pause.as_millis() as u64,
                                "could not load channel state"
                            );
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(10));
                        }
                    }
                }
            }
            .into_actor(self)
            .map(|loaded, hub, ctx| {
                hub.missing = loaded.is_none();
                let (records, venues) = loaded.unwrap_or_default();
                hub.projection.load(records, venues, Utc::now());
                if std::mem::take(&mut hub.resyncing) {
                    hub.send_fresh_snapshots();
                }
                hub.watch_for_starts(ctx);
            }),
        );
    }

    fn send_fresh_snapshots(&mut self) {
        let frame = self.snapshot(true);
        self.fan_out(&frame);
    }

    /// Folds `change` in and tells the subscribers — once the read model
    /// has said whether it is old news, if the projection asks
    /// ([`Projection::needs_read_model`]); `wait` keeps later changes
    /// queued behind it. A read that fails (of the event, or of where a
    /// radius feed's event is now) lets the change in as it is.
    fn apply_and_broadcast(&mut self, change: Arc<EventChange>, ctx: &mut Context<Self>) {
        if !self.projection.needs_read_model(&change, Utc::now()) {
            return self.apply_as_is(&change, ctx);
        }
        metrics::counter!("turnout_ws_listing_checks_total").increment(1);
        let store = Arc::clone(&self.store);
        let id = change.summary.id;
        let read = async move { store.event(id).await }.into_actor(self);
        ctx.wait(read.map(move |read, hub, ctx| match read {
            // A radius feed must know where the event is now.
            Ok(Some(record)) if hub.projection.needs_venue(record.venue_id) => {
                let venue = record.venue_id;
                hub.learn_venue(venue, ctx, move |hub, ctx| {
                    if hub.projection.needs_venue(venue) {
                        tracing::warn!(
                            channel = %hub.name,
                            "could not read where an event is now; listing it"
                        );
                        return hub.apply_as_is(&change, ctx);
                    }
                    hub.apply_unless_outdated(&change, &record, ctx)
                });
            }
            Ok(Some(record)) => hub.apply_unless_outdated(&change, &record, ctx),
            Ok(None) => hub.apply_as_is(&change, ctx),
            Err(error) => {
                tracing::warn!(
                    channel = %hub.name,
                    %error,
                    "could not read an event a change would list; listing it"
                );
                hub.apply_as_is(&change, ctx);
            }
        }));
    }

    fn apply_unless_outdated(
        &mut self,
        change: &EventChange,
        record: &EventRecord,
        ctx: &mut Context<Self>,
    ) {
        if self.projection.drop_if_outdated(change, record, Utc::now()) {
            metrics::counter!("turnout_ws_late_changes_dropped_total").increment(1);
            return;
        }
        self.apply_as_is(change, ctx);
    }

    /// Learns where `venue` is (a radius feed that has not seen it), then
    /// goes on; `wait` keeps later changes queued behind this one. A venue
    /// that cannot be read stays unknown: outside the circle.
    fn learn_venue(
        &mut self,
        venue: Uuid,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, &mut Context<Self>) + 'static,
    ) {
        let store = Arc::clone(&self.store);
        ctx.wait(
            async move { store.venue(VenueId::from(venue)).await }
                .into_actor(self)
                .map(move |found, hub, ctx| {
                    if let Ok(Some(v)) = found {
                        let at = GeoPoint {
                            lat: v.lat,
                            lon: v.lon,
                        };
                        hub.projection.locate(venue, at);
                    }
                    then(hub, ctx);
                }),
        );
    }

    fn apply_as_is(&mut self, change: &EventChange, ctx: &mut Context<Self>) {
        if let Some(data) = self.projection.apply(change, Utc::now()) {
            self.broadcast(data, change.committed_at);
        }
        if self.projection.take_silent_change() {
            // The next subscriber's snapshot shows the listing as it is.
            self.snapshots = Default::default();
        }
        for update in self.projection.take_crowded_out() {
            self.broadcast(update, change.committed_at);
        }
        // Only a listed event starting before the timer moves it; one that
        // left the list or moved later lets it fire early, find nothing
        // started, and look again — no scan of the listing per change.
        if let Some(starts_at) = self.projection.listed_start(change.summary.id.as_uuid())
            && self
                .next_start
                .as_ref()
                .is_none_or(|(at, _)| starts_at < *at)
        {
            self.start_timer(starts_at, ctx);
        }
    }

    /// A listing shows upcoming events, so an event leaves it when it
    /// starts, not at its next change: keeps a timer set for the earliest
    /// start among the listed events.
    fn watch_for_starts(&mut self, ctx: &mut Context<Self>) {
        match self.projection.next_start() {
            Some(at) => self.start_timer(at, ctx),
            None => {
                if let Some((_, timer)) = self.next_start.take() {
                    ctx.cancel_future(timer);
                }
            }
        }
    }

    fn start_timer(&mut self, at: DateTime<Utc>, ctx: &mut Context<Self>) {
        if let Some((_, timer)) = self.next_start.take() {
            ctx.cancel_future(timer);
        }
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        let timer = ctx.run_later(wait, |hub, ctx| {
            hub.next_start = None;
            hub.drop_started();
            hub.watch_for_starts(ctx);
        });
        self.next_start = Some((at, timer));
    }

    /// Takes the events that have started off the listing, each with an
    /// update saying so.
    fn drop_started(&mut self) {
        let now = Utc::now();
        for update in self.projection.take_started(now) {
            self.broadcast(update, now);
        }
    }

    fn broadcast(&mut self, data: Value, committed_at: DateTime<Utc>) {
        self.snapshots = Default::default();
        self.offset += 1;
        let mut text = protocol::update(
            &self.name,
            &self.epoch,
            self.offset,
            Some(committed_at),
            &data,
        );
        // The frame is kept in the history: not the spare room the encoder
        // grew it with, up to as much again.
        text.shrink_to_fit();
        let text = ByteString::from(text);
        self.history.push(self.offset, text.clone(), Instant::now());
        let frame = Frame::text(text, Some(committed_at));
        self.fan_out(&frame);
        metrics::counter!("turnout_ws_updates_total", "kind" => self.channel.kind()).increment(1);
    }

    /// Hands `frame` to every subscriber. One that is gone or over its
    /// budget is dropped here; its session closes itself.
    fn fan_out(&mut self, frame: &Frame) {
        let before = self.subscribers.len();
        let mut fanout = Fanout::of(frame);
        self.subscribers.retain(|_, to| fanout.to(to));
        let dropped = before - self.subscribers.len();
        if dropped > 0 {
            metrics::gauge!("turnout_ws_subscriptions", "kind" => self.channel.kind())
                .decrement(dropped as f64);
            // Idle from now, as after an unsubscribe: a client dropped for
            // being slow may come back with `since` and resume.
            if self.subscribers.is_empty() {
                self.idle_since = Instant::now();
            }
        }
    }

    fn subscribe(&mut self, msg: Subscribe) -> Subscribed {
        if let Channel::Event(id) = &self.channel
            && self.projection.shows_no_event()
        {
            self.home.missed(*id, self.looked_at);
            return Subscribed::NotFound;
        }
        if self.missing {
            return Subscribed::NotFound;
        }
        let frame = |text: ByteString| Frame::text(text, None);
        let (latest, now) = (self.offset, Instant::now());
        let replay = msg
            .since
            .as_ref()
            .filter(|since| *since.epoch == *self.epoch)
            .and_then(|since| {
                let missed = self.history.after(since.offset, latest, now)?;
                let resumed = protocol::resumed(&self.name, &self.epoch, since.offset);
                Some(
                    std::iter::once(frame(resumed.into()))
                        .chain(missed.map(|text| frame(text.clone())))
                        .collect::<Vec<Frame>>(),
                )
            })
            // A replay that would take more than half of the room left in
            // the connection's queue gets a snapshot instead: resuming
            // several busy channels at once would otherwise overflow it,
            // close the connection (4008: resume with `since`) and do so
            // again on every return.
            .filter(|frames| {
                let bytes: usize = frames.iter().map(Frame::budgeted_len).sum();
                bytes <= msg.to.room() / 2
            });
        let first: Vec<Frame> = match (replay, &msg.since) {
            (Some(frames), _) => {
                metrics::counter!("turnout_ws_resumes_total", "recovered" => "true").increment(1);
                frames
            }
            (None, since) => {
                if since.is_some() {
                    metrics::counter!("turnout_ws_resumes_total", "recovered" => "false")
                        .increment(1);
                }
                vec![self.snapshot(since.is_some())]
            }
        };
        // Stop at the first frame refused: a later, smaller one could still
        // fit and leave the client a gap it would resume past. A subscriber
        // whose first frames did not all go out is not registered; its
        // queue's overflow has told its session to close.
        if first.into_iter().all(|frame| msg.to.push(frame))
            && self.subscribers.insert(msg.session, msg.to).is_none()
        {
            metrics::gauge!("turnout_ws_subscriptions", "kind" => self.channel.kind())
                .increment(1.0);
        }
        Subscribed::Taken
    }
}

/// A channel's events (and, for a radius feed, the venues' positions);
/// `None` for a venue channel whose venue does not exist.
type Loaded = Option<(Vec<EventRecord>, Vec<(Uuid, f64, f64)>)>;

async fn fetch(store: &dyn Store, channel: &Channel) -> Result<Loaded, StoreError> {
    match channel {
        Channel::Event(id) => Ok(Some((
            store.event(*id).await?.into_iter().collect(),
            Vec::new(),
        ))),
        Channel::Venue(venue) => {
            // A made-up venue id would otherwise hold a hub (of the
            // node's `max_hubs`) for as long as its subscriber stays.
            if store.venue(*venue).await?.is_none() {
                return Ok(None);
            }
            let filter = EventFilter {
                venue_id: Some(*venue),
                from: Some(Utc::now()),
                limit: LISTING_LIMIT as i64,
                ..EventFilter::default()
            };
            Ok(Some((store.list_events(&filter).await?, Vec::new())))
        }
        Channel::Feed { tag, near } => {
            let filter = EventFilter {
                tag: tag.as_ref().map(|t| t.as_str().to_owned()),
                within: near.map(|near| near.bounds()),
                from: Some(Utc::now()),
                limit: LISTING_LIMIT as i64,
                ..EventFilter::default()
            };
            match near {
                None => Ok(Some((store.list_events(&filter).await?, Vec::new()))),
                Some(near) => fetch_near(store, *near, filter).await.map(Some),
            }
        }
    }
}

/// The most pages of a box's events a radius feed's load reads: a circle
/// whose corners hold a busy district and whose inside holds little would
/// otherwise read every upcoming event of that district at each load.
const MOST_PAGES_NEAR: usize = 8;

/// A radius feed's soonest events inside its circle, and every venue's
/// position. The database selects the events by a box around the circle;
/// the corners outside the circle are left out here, page after page (up
/// to [`MOST_PAGES_NEAR`]), so that events there cannot take the places of
/// those inside.
async fn fetch_near(
    store: &dyn Store,
    near: Near,
    mut filter: EventFilter,
) -> Result<(Vec<EventRecord>, Vec<(Uuid, f64, f64)>), StoreError> {
    // Every venue, not only the box's: a change at a venue this feed does
    // not know would otherwise cost a lookup before the hub reads on.
    let venues = store.venue_locations().await?;
    let inside: HashSet<Uuid> = venues
        .iter()
        .filter(|&&(_, lat, lon)| near.contains(GeoPoint { lat, lon }))
        .map(|&(id, _, _)| id)
        .collect();
    let mut events = Vec::new();
    for read in 1.. {
        let page = store.list_events(&filter).await?;
        let last_page = page.len() < LISTING_LIMIT;
        filter.after = page.last().map(|e| (e.starts_at, e.id));
        // An event at a venue made since the positions were read is left
        // for its change, queued behind this load, to list.
        events.extend(page.into_iter().filter(|e| inside.contains(&e.venue_id)));
        if last_page || events.len() >= LISTING_LIMIT {
            break;
        }
        if read == MOST_PAGES_NEAR {
            // Listed: the circle's soonest up to the last start read.
            metrics::counter!("turnout_ws_radius_loads_cut_total").increment(1);
            break;
        }
    }
    events.truncate(LISTING_LIMIT);
    Ok((events, venues))
}

impl Actor for ChannelHub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::gauge!("turnout_ws_hubs", "kind" => self.channel.kind()).increment(1.0);
        self.load(ctx);
        let idle_limit = self.idle_limit;
        ctx.run_interval(
            (idle_limit / 2).max(Duration::from_millis(100)),
            move |hub, ctx| {
                hub.left_places
                    .retain(|_, (_, left_at)| left_at.elapsed() < idle_limit);
                if hub.subscribers.is_empty() && hub.idle_since.elapsed() >= idle_limit {
                    hub.home.left(&hub.channel, &ctx.address());
                    ctx.stop();
                }
            },
        );
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        metrics::gauge!("turnout_ws_hubs", "kind" => self.channel.kind()).decrement(1.0);
        let held = self.subscribers.len();
        if held > 0 {
            metrics::gauge!("turnout_ws_subscriptions", "kind" => self.channel.kind())
                .decrement(held as f64);
        }
    }
}

impl Handler<Resync> for ChannelHub {
    type Result = ();

    fn handle(&mut self, _: Resync, ctx: &mut Self::Context) {
        metrics::counter!("turnout_ws_resyncs_total").increment(1);
        self.epoch = format!("{:016x}", rand::random::<u64>()).into();
        self.offset = 0;
        self.history.clear();
        self.snapshots = Default::default();
        self.projection = Projection::new(self.channel.clone());
        self.resyncing = true;
        self.load(ctx);
    }
}

impl Handler<Subscribe> for ChannelHub {
    type Result = Subscribed;

    fn handle(&mut self, msg: Subscribe, ctx: &mut Self::Context) -> Subscribed {
        let subscribed = self.subscribe(msg);
        if subscribed == Subscribed::NotFound && self.subscribers.is_empty() {
            // Nothing to watch: leave now rather than after the idle time.
            self.home.left(&self.channel, &ctx.address());
            ctx.stop();
        }
        subscribed
    }
}

impl Handler<Unsubscribe> for ChannelHub {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _ctx: &mut Self::Context) {
        if let Some(place) = msg.place {
            // The address's earlier place here, if any, goes: one is held.
            self.left_places
                .insert(place.client(), (place, Instant::now()));
        }
        if let Some(told) = &msg.told {
            told.push(Frame::text(protocol::unsubscribed(&self.name), None));
        }
        if self.subscribers.remove(&msg.session).is_some() {
            metrics::gauge!("turnout_ws_subscriptions", "kind" => self.channel.kind())
                .decrement(1.0);
        }
        if self.subscribers.is_empty() {
            self.idle_since = Instant::now();
        }
    }
}

impl Handler<OfferChange> for ChannelHub {
    type Result = ();

    fn handle(&mut self, offered: OfferChange, ctx: &mut Self::Context) {
        let change = offered.change;
        let venue = change.summary.details.venue_id.as_uuid();
        if !self.projection.needs_venue(venue) {
            return self.apply_and_broadcast(change, ctx);
        }
        self.learn_venue(venue, ctx, move |hub, ctx| {
            hub.apply_and_broadcast(change, ctx)
        });
    }
}

//! A channel's hub: one actor per channel that keeps the channel's state,
//! assigns every update its offset, keeps the recent history for resuming
//! clients, and delivers to its subscribers. Because the snapshot, the offsets
//! and the history all live here, a subscriber's snapshot and the updates
//! after it can neither overlap nor leave a gap.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytestring::ByteString;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::channel::Channel;
use super::protocol::{self, Position};
use super::socket::{Frame, SendQueue};
use crate::store::{EventFilter, EventRecord, Store};
use crate::views::EventView;
use turnout_actors::changes::EventChange;
use turnout_actors::domain::{EventId, GeoPoint, Lifecycle, VenueId};
use turnout_actors::store::StoreError;

/// What a hub needs of the hubs that started it: where it leaves when it
/// stops, and where it reports an event channel whose event does not
/// exist. (A port, so that a hub does not depend on its registry.)
pub trait HubHome: Send + Sync + 'static {
    fn left(&self, channel: &Channel, hub: &Addr<ChannelHub>);
    fn missed(&self, event: EventId);
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
    /// draft is shown to nobody here): the hub keeps no subscriber.
    NoSuchEvent,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub session: u64,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Apply(pub Arc<EventChange>);

/// Changes may have been missed (the cross-node feed was down): reload the
/// state, start a new epoch, and send every subscriber a fresh snapshot.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync;

/// How many upcoming events a venue or feed channel lists.
const LISTING_LIMIT: i64 = 500;

enum State {
    /// One event; `None` while it does not exist or is a draft.
    Event(Option<EventView>),
    /// Upcoming published events by id.
    Listing(HashMap<Uuid, EventView>),
}

pub struct ChannelHub {
    channel: Channel,
    name: Arc<str>,
    /// Changes whenever the hub starts: offsets from another epoch mean nothing.
    epoch: Arc<str>,
    offset: u64,
    history: VecDeque<(u64, ByteString)>,
    history_limit: usize,
    state: State,
    versions: HashMap<Uuid, i64>,
    /// Set by a resync: when the reload is done, every subscriber gets a
    /// fresh snapshot.
    resyncing: bool,
    /// Venue positions, for a feed filtered by radius.
    venues: HashMap<Uuid, GeoPoint>,
    /// The snapshot's `data`, rebuilt after a change.
    snapshot: Option<Arc<Value>>,
    /// A listing's next start time and the timer that takes the events
    /// starting then off the list.
    next_start: Option<(DateTime<Utc>, SpawnHandle)>,
    /// Each subscriber's outgoing queue: the hub writes to it directly.
    subscribers: HashMap<u64, SendQueue>,
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
        history_limit: usize,
        idle_limit: Duration,
    ) -> Self {
        let state = match channel {
            Channel::Event(_) => State::Event(None),
            _ => State::Listing(HashMap::new()),
        };
        Self {
            name: channel.to_string().into(),
            channel,
            epoch: format!("{:016x}", rand::random::<u64>()).into(),
            offset: 0,
            history: VecDeque::new(),
            history_limit,
            state,
            versions: HashMap::new(),
            resyncing: false,
            venues: HashMap::new(),
            snapshot: None,
            next_start: None,
            subscribers: HashMap::new(),
            store,
            home,
            idle_limit,
            idle_since: Instant::now(),
        }
    }

    fn loaded(&mut self, (records, venues): Loaded) {
        self.venues = venues
            .into_iter()
            .map(|(id, lat, lon)| (id, GeoPoint { lat, lon }))
            .collect();
        for record in records {
            if !self.relevant_record(&record) {
                continue;
            }
            self.versions.insert(record.id, record.version);
            let view = EventView::from(record);
            match &mut self.state {
                State::Event(current) => {
                    *current = Some(view).filter(|v| v.status != Lifecycle::Draft)
                }
                State::Listing(events) => {
                    events.insert(view.id, view);
                }
            }
        }
    }

    fn snapshot_data(&mut self) -> Arc<Value> {
        if let Some(data) = &self.snapshot {
            return Arc::clone(data);
        }
        let data = Arc::new(match &self.state {
            State::Event(event) => json!({ "event": event }),
            State::Listing(events) => {
                let mut listed: Vec<&EventView> = events.values().collect();
                listed.sort_by_key(|e| (e.starts_at, e.id));
                json!({ "events": listed })
            }
        });
        self.snapshot = Some(Arc::clone(&data));
        data
    }

    fn relevant(&self, view: &EventView) -> bool {
        match &self.channel {
            Channel::Event(id) => id.as_uuid() == view.id,
            Channel::Venue(venue) => venue.as_uuid() == view.venue_id,
            Channel::Feed { tag, near } => {
                tag.as_ref()
                    .is_none_or(|tag| view.tags.iter().any(|t| t == tag.as_str()))
                    && near.is_none_or(|near| {
                        self.venues
                            .get(&view.venue_id)
                            .is_some_and(|p| near.contains(*p))
                    })
            }
        }
    }

    fn relevant_record(&self, record: &EventRecord) -> bool {
        match &self.channel {
            Channel::Feed {
                near: Some(near), ..
            } => self
                .venues
                .get(&record.venue_id)
                .is_some_and(|p| near.contains(*p)),
            _ => true,
        }
    }

    /// Whether this hub must learn a venue's position before applying.
    fn needs_venue(&self, venue: Uuid) -> bool {
        matches!(self.channel, Channel::Feed { near: Some(_), .. })
            && !self.venues.contains_key(&venue)
    }

    /// Folds a change into the state; returns the update to broadcast, if
    /// subscribers should hear about it.
    fn apply(&mut self, change: &EventChange) -> Option<Value> {
        let version = change.summary.version as i64;
        if self
            .versions
            .get(&change.summary.id.as_uuid())
            .is_some_and(|&v| v >= version)
        {
            return None;
        }
        let view = &EventView::from(&change.summary);
        let relevant = self.relevant(view);
        let listed_before = match &self.state {
            State::Event(_) => false,
            State::Listing(events) => events.contains_key(&view.id),
        };
        if !relevant && !listed_before {
            return None;
        }
        self.versions.insert(view.id, version);
        let kinds: Vec<&str> = change.kinds().collect();
        let kinds = &kinds;
        let lifecycle = change.summary.lifecycle;
        match &mut self.state {
            State::Event(current) => {
                if lifecycle == Lifecycle::Draft {
                    return None;
                }
                *current = Some(view.clone());
                Some(json!({ "event": view, "kinds": kinds }))
            }
            State::Listing(events) => {
                let listed =
                    relevant && lifecycle == Lifecycle::Published && view.starts_at > Utc::now();
                let before = if listed {
                    events.insert(view.id, view.clone())
                } else {
                    events.remove(&view.id)
                };
                if !listed && before.is_none() {
                    // Never listed here (a draft, say): nothing to tell.
                    return None;
                }
                let reason = match &self.channel {
                    Channel::Venue(_) => Some("changed"),
                    _ => feed_reason(before.as_ref(), view, kinds, listed),
                }?;
                Some(listing_update(view, kinds, listed, reason))
            }
        }
    }

    /// Loads the channel's state from the read model. `wait` holds
    /// subscriptions and changes until it is done; changes committed
    /// meanwhile queue up and are de-duplicated by version. A failed load is
    /// retried, backing off, rather than given up: the subscribers waiting
    /// for their snapshot get it once the database answers again.
    fn load(&mut self, ctx: &mut Context<Self>) {
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
                hub.loaded(loaded);
                if std::mem::take(&mut hub.resyncing) {
                    hub.send_fresh_snapshots();
                }
                hub.watch_for_starts(ctx);
            }),
        );
    }

    fn send_fresh_snapshots(&mut self) {
        let data = self.snapshot_data();
        let text = ByteString::from(protocol::snapshot(
            &self.name,
            &self.epoch,
            self.offset,
            Some(false),
            &data,
        ));
        self.subscribers.retain(|_, to| {
            to.push(Frame {
                text: text.clone(),
                committed_at: None,
            })
        });
    }

    fn apply_and_broadcast(&mut self, change: &EventChange, ctx: &mut Context<Self>) {
        if let Some(data) = self.apply(change) {
            self.broadcast(data, change.committed_at);
        }
        // Only a listed event starting before the timer moves it; one that
        // left the list or moved later lets it fire early, find nothing
        // started, and look again — no scan of the listing per change.
        let (id, starts_at) = (
            change.summary.id.as_uuid(),
            change.summary.details.starts_at,
        );
        let listed = matches!(&self.state, State::Listing(events) if events.contains_key(&id));
        if listed
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
        let State::Listing(events) = &self.state else {
            return;
        };
        match events.values().map(|e| e.starts_at).min() {
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
        let State::Listing(events) = &mut self.state else {
            return;
        };
        let now = Utc::now();
        let mut started: Vec<EventView> = events
            .values()
            .filter(|e| e.starts_at <= now)
            .cloned()
            .collect();
        started.sort_by_key(|e| (e.starts_at, e.id));
        for view in &started {
            events.remove(&view.id);
        }
        for view in started {
            self.broadcast(listing_update(&view, &[], false, "started"), now);
        }
    }

    fn broadcast(&mut self, data: Value, committed_at: DateTime<Utc>) {
        self.snapshot = None;
        self.offset += 1;
        let text = ByteString::from(protocol::update(
            &self.name,
            &self.epoch,
            self.offset,
            Some(committed_at),
            &data,
        ));
        self.history.push_back((self.offset, text.clone()));
        while self.history.len() > self.history_limit {
            self.history.pop_front();
        }
        let frame = Frame {
            text,
            committed_at: Some(committed_at),
        };
        // A subscriber that is gone or over its budget is dropped here; its
        // session closes itself.
        let before = self.subscribers.len();
        self.subscribers.retain(|_, to| to.push(frame.clone()));
        let dropped = before - self.subscribers.len();
        if dropped > 0 {
            metrics::gauge!("turnout_ws_subscriptions", "kind" => self.channel.kind())
                .decrement(dropped as f64);
        }
        metrics::counter!("turnout_ws_updates_total", "kind" => self.channel.kind()).increment(1);
    }

    fn subscribe(&mut self, msg: Subscribe) -> Subscribed {
        if let (Channel::Event(id), State::Event(None)) = (&self.channel, &self.state) {
            self.home.missed(*id);
            return Subscribed::NoSuchEvent;
        }
        let frame = |text: ByteString| Frame {
            text,
            committed_at: None,
        };
        let resumable = msg.since.as_ref().filter(|since| {
            let oldest_kept = self.history.front().map_or(self.offset + 1, |(o, _)| *o);
            *since.epoch == *self.epoch
                && since.offset <= self.offset
                && since.offset + 1 >= oldest_kept
        });
        let first: Vec<Frame> = match (resumable, &msg.since) {
            (Some(since), _) => {
                metrics::counter!("turnout_ws_resumes_total", "recovered" => "true").increment(1);
                let resumed = protocol::resumed(&self.name, &self.epoch, since.offset);
                std::iter::once(frame(resumed.into()))
                    .chain(
                        self.history
                            .iter()
                            .filter(|(o, _)| *o > since.offset)
                            .map(|(_, text)| frame(text.clone())),
                    )
                    .collect()
            }
            (None, since) => {
                if since.is_some() {
                    metrics::counter!("turnout_ws_resumes_total", "recovered" => "false")
                        .increment(1);
                }
                let data = self.snapshot_data();
                let snapshot = protocol::snapshot(
                    &self.name,
                    &self.epoch,
                    self.offset,
                    since.as_ref().map(|_| false),
                    &data,
                );
                vec![frame(snapshot.into())]
            }
        };
        // Stop at the first frame refused: a later, smaller one could still
        // fit and leave the client a gap it would resume past. A subscriber
        // whose first frames did not all go out is not registered; its
        // queue's overflow has told its session to close.
        if first.into_iter().all(|frame| msg.to.push(frame)) {
            self.subscribers.insert(msg.session, msg.to);
            metrics::gauge!("turnout_ws_subscriptions", "kind" => self.channel.kind())
                .increment(1.0);
        }
        Subscribed::Taken
    }
}

/// A venue or feed update: the event, what changed, whether it is (still)
/// listed, and why subscribers hear of it.
fn listing_update(view: &EventView, kinds: &[&str], listed: bool, reason: &str) -> Value {
    json!({ "event": view, "kinds": kinds, "listed": listed, "reason": reason })
}

/// A channel's events (and, for a radius feed, the venues' positions).
type Loaded = (Vec<EventRecord>, Vec<(Uuid, f64, f64)>);

async fn fetch(store: &dyn Store, channel: &Channel) -> Result<Loaded, StoreError> {
    match channel {
        Channel::Event(id) => Ok((store.event(*id).await?.into_iter().collect(), Vec::new())),
        Channel::Venue(venue) => {
            let filter = EventFilter {
                venue_id: Some(*venue),
                from: Some(Utc::now()),
                limit: LISTING_LIMIT,
                ..EventFilter::default()
            };
            Ok((store.list_events(&filter).await?, Vec::new()))
        }
        Channel::Feed { tag, near } => {
            let filter = EventFilter {
                tag: tag.as_ref().map(|t| t.as_str().to_owned()),
                from: Some(Utc::now()),
                limit: LISTING_LIMIT,
                ..EventFilter::default()
            };
            let events = store.list_events(&filter).await?;
            let venues = match near {
                Some(_) => store.venue_locations().await?,
                None => Vec::new(),
            };
            Ok((events, venues))
        }
    }
}

/// Why the city feed mentions a change, if it does: new, changed, cancelled,
/// filling up or full — not every join.
fn feed_reason(
    before: Option<&EventView>,
    view: &EventView,
    kinds: &[&str],
    listed: bool,
) -> Option<&'static str> {
    let has = |kind: &str| kinds.contains(&kind);
    if has("cancelled") {
        return Some("cancelled");
    }
    if has("published") {
        return Some("published");
    }
    if has("details_changed") || has("capacity_changed") {
        return Some("changed");
    }
    let before = before?;
    if !listed {
        return Some("removed");
    }
    let nearly = (view.capacity / 10).max(1);
    if view.places_left == 0 && before.places_left > 0 {
        Some("full")
    } else if view.places_left <= nearly && before.places_left > nearly {
        Some("filling_up")
    } else {
        None
    }
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
        self.versions.clear();
        self.snapshot = None;
        self.state = match self.channel {
            Channel::Event(_) => State::Event(None),
            _ => State::Listing(HashMap::new()),
        };
        self.resyncing = true;
        self.load(ctx);
    }
}

impl Handler<Subscribe> for ChannelHub {
    type Result = Subscribed;

    fn handle(&mut self, msg: Subscribe, ctx: &mut Self::Context) -> Subscribed {
        let subscribed = self.subscribe(msg);
        if subscribed == Subscribed::NoSuchEvent && self.subscribers.is_empty() {
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
        if self.subscribers.remove(&msg.session).is_some() {
            metrics::gauge!("turnout_ws_subscriptions", "kind" => self.channel.kind())
                .decrement(1.0);
        }
        if self.subscribers.is_empty() {
            self.idle_since = Instant::now();
        }
    }
}

impl Handler<Apply> for ChannelHub {
    type Result = ();

    fn handle(&mut self, Apply(change): Apply, ctx: &mut Self::Context) {
        let venue = change.summary.details.venue_id.as_uuid();
        if !self.needs_venue(venue) {
            return self.apply_and_broadcast(&change, ctx);
        }
        // A venue this radius feed has not seen: learn where it is first;
        // `wait` keeps later changes queued behind this one.
        let store = Arc::clone(&self.store);
        ctx.wait(
            async move { store.venue(VenueId::from(venue)).await }
                .into_actor(self)
                .map(move |found, hub, ctx| {
                    if let Ok(Some(v)) = found {
                        hub.venues.insert(
                            venue,
                            GeoPoint {
                                lat: v.lat,
                                lon: v.lon,
                            },
                        );
                    }
                    hub.apply_and_broadcast(&change, ctx);
                }),
        );
    }
}

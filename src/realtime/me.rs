//! The `me` channel: a signed-in person's own places, live. After `auth`, a
//! subscriber gets a snapshot of their live places (active, offered,
//! waitlisted), then an update whenever one changes status, moves in a
//! waitlist, is offered, or is about to run out (`warn_before_secs` ahead).
//!
//! - [`MyPlaces`] is the pure part: how a committed change moves one
//!   person's places. A waiting place moves by the change's waitlist moves
//!   (see [`turnout_actors::domain::waitlist_moves`]): nobody asks the
//!   database where they stand after each change.
//! - [`MeWatcher`] is one actor per subscription around it: it loads the
//!   snapshot, writes the frames and keeps the warning timers.
//! - [`MeFeeds`] routes each committed change to the watchers it concerns:
//!   those of the people its facts name, those waiting in its event when it
//!   may move them (someone leaves the waitlist; a join behind them moves
//!   nobody), and, when it cancels the event, those holding any place
//!   in it (the cancellation names nobody). It keeps each event's latest
//!   changes ([`RecentChanges`]), so that a watcher that has just begun to
//!   follow an event knows whether a change went by before it did, and a
//!   waiting place knows whether it heard every change that moved it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use serde::Serialize;
use turnout_actors::changes::EventChange;
use turnout_actors::domain::{DomainEvent, EventId, MemberStatus, UserId, WaitlistMove};
use turnout_actors::store::StoreError;
use uuid::Uuid;

use super::projection::LATE_CHANGES_WITHIN;
use super::protocol::{self, Position};
use super::socket::{ChannelQueue, Frame};
use crate::store::{Place, Store, from_micros};

/// The channel's name.
pub const ME: &str = "me";

/// Places a snapshot holds at most: the most recent joins.
const SNAPSHOT_LIMIT: i64 = 500;

/// One of the person's places, as the channel shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MyPlace {
    pub event_id: Uuid,
    pub status: MemberStatus,
    pub seats: usize,
    /// 1-based, counting parties; only while waitlisted.
    pub position: Option<u32>,
    /// Only while offered.
    pub offer_expires_at: Option<DateTime<Utc>>,
    pub joined_at: DateTime<Utc>,
    /// The event's version this place is as of.
    #[serde(skip)]
    pub version: u64,
}

impl MyPlace {
    /// Whether a client would see the same place (versions aside).
    fn shows_as(&self, other: &MyPlace) -> bool {
        MyPlace {
            version: other.version,
            ..self.clone()
        } == *other
    }
}

impl From<Place> for MyPlace {
    fn from(place: Place) -> Self {
        let m = place.membership;
        Self {
            event_id: m.event_id,
            status: m.status,
            seats: m.seats as usize,
            position: m.position.map(|p| p as u32),
            offer_expires_at: m.offer_expires_at.map(from_micros),
            joined_at: from_micros(m.joined_at),
            version: place.version as u64,
        }
    }
}

/// Why an update was sent.
pub type Reason = &'static str;

/// One person's live places, moved by committed changes.
#[derive(Debug)]
pub struct MyPlaces {
    user: UserId,
    by_event: HashMap<EventId, MyPlace>,
    /// Places that ended, each at the version that ended it and when, kept
    /// at least [`LATE_CHANGES_WITHIN`]: an older change overtaken by the end (an
    /// offer, after a shard moved) must not bring the place back.
    ended: HashMap<EventId, (u64, DateTime<Utc>)>,
}

impl MyPlaces {
    /// From the person's places as read (ended ones are left out).
    pub fn new(user: UserId, places: impl IntoIterator<Item = MyPlace>) -> Self {
        Self {
            user,
            by_event: places
                .into_iter()
                .filter(|p| is_live(p.status))
                .map(|p| (EventId::from(p.event_id), p))
                .collect(),
            ended: HashMap::new(),
        }
    }

    pub fn get(&self, event: EventId) -> Option<&MyPlace> {
        self.by_event.get(&event)
    }

    /// Oldest join first.
    pub fn all(&self) -> Vec<MyPlace> {
        let mut places: Vec<MyPlace> = self.by_event.values().cloned().collect();
        places.sort_by_key(|p| (p.joined_at, p.event_id));
        places
    }

    /// The events where the person waits: others' moves there shift them.
    pub fn waiting_in(&self) -> impl Iterator<Item = EventId> + '_ {
        self.by_event
            .iter()
            .filter(|(_, p)| p.status == MemberStatus::Waitlisted)
            .map(|(e, _)| *e)
    }

    /// The events where the person holds a live place: a cancellation
    /// there ends it without naming them.
    pub fn held_in(&self) -> impl Iterator<Item = EventId> + '_ {
        self.by_event.keys().copied()
    }

    /// The events of places not followed as they stand by a watcher
    /// registered as holding a place in `holding_in` and as waiting in
    /// `waiting_in`: held and not followed at all, or waiting and followed
    /// only as held ([`MeWatcher::unfollowed`]).
    pub fn unfollowed(
        &self,
        holding_in: &HashSet<EventId>,
        waiting_in: &HashSet<EventId>,
    ) -> Vec<EventId> {
        let newly_held = self.held_in().filter(|e| !holding_in.contains(e));
        let newly_waiting =
            (self.waiting_in()).filter(|e| !waiting_in.contains(e) && holding_in.contains(e));
        newly_held.chain(newly_waiting).collect()
    }

    /// Whether a change shows that one before it was missed: it is to an
    /// event the person waits in, and their place is older than
    /// `moved_since`, the version from which the feeds vouch that every
    /// change to the event that may move a waiting place reached it (see
    /// [`ForWaiting`]). (After a shard moves
    /// between nodes, the new holder's first change can overtake the old
    /// holder's last one — an offer, say — which then comes as an older
    /// version and moves nothing.) Then the places are read again.
    pub fn missed_before(&self, change: &EventChange, moved_since: u64) -> bool {
        self.by_event
            .get(&change.summary.id)
            .is_some_and(|p| p.status == MemberStatus::Waitlisted && p.version < moved_since)
    }

    /// Moves the places by a committed change; the updates to send, in
    /// order. A change already reflected (an older version than the place,
    /// or than its end) moves nothing.
    pub fn apply(&mut self, change: &EventChange) -> Vec<(Reason, MyPlace)> {
        let event = change.summary.id;
        let version = change.summary.version;
        let reflected = match self.by_event.get(&event) {
            Some(place) => place.version >= version,
            None => self.ended.get(&event).is_some_and(|(at, _)| *at >= version),
        };
        if reflected {
            return Vec::new();
        }
        let mut place = self.by_event.get(&event).cloned();
        let mut updates: Vec<(Reason, MyPlace)> = Vec::new();
        let mut named = false;
        for fact in &change.facts {
            if let DomainEvent::Cancelled { .. } = fact {
                if let Some(p) = place.as_mut() {
                    p.status = MemberStatus::Cancelled;
                    p.position = None;
                    p.offer_expires_at = None;
                    p.version = version;
                    updates.push(("cancelled", p.clone()));
                }
                continue;
            }
            let (Some(party), Some(status)) = (fact.party(), fact.member_status()) else {
                continue;
            };
            if party.user != self.user {
                continue;
            }
            named = true;
            let position = change.moves.iter().find_map(|m| match *m {
                WaitlistMove::Entered { user, position } if user == party.user => Some(position),
                _ => None,
            });
            let now = MyPlace {
                event_id: event.as_uuid(),
                status,
                seats: party.seats.get(),
                position: (status == MemberStatus::Waitlisted)
                    .then_some(position)
                    .flatten(),
                offer_expires_at: match fact {
                    DomainEvent::Offered { expires_at, .. } => Some(*expires_at),
                    _ => None,
                },
                joined_at: party.joined_at,
                version,
            };
            updates.push((fact.what(), now.clone()));
            place = Some(now);
        }
        if !named
            && let Some(p) = place.as_mut()
            && p.status == MemberStatus::Waitlisted
            && let Some(before) = p.position
        {
            let after = change
                .moves
                .iter()
                .try_fold(before, |at, m| m.shift(at))
                .unwrap_or(before);
            p.version = version;
            if after != before {
                p.position = Some(after);
                updates.push(("position", p.clone()));
            }
        }
        match place {
            Some(p) if is_live(p.status) => self.holds(event, p),
            Some(_) => self.ends(event, version, change.committed_at),
            None => {}
        }
        updates
    }

    fn holds(&mut self, event: EventId, place: MyPlace) {
        self.ended.remove(&event);
        self.by_event.insert(event, place);
    }

    fn ends(&mut self, event: EventId, version: u64, at: DateTime<Utc>) {
        self.by_event.remove(&event);
        self.ended
            .retain(|_, (_, ended_at)| *ended_at > at - LATE_CHANGES_WITHIN);
        self.ended.insert(event, (version, at));
    }

    /// Takes a fresh read of the person's places (ended ones too), made at
    /// `now`; the ones it changed, as updates. A place read as ended leaves
    /// the list.
    pub fn refresh(&mut self, fresh: Vec<MyPlace>, now: DateTime<Utc>) -> Vec<(Reason, MyPlace)> {
        let mut updates = Vec::new();
        for place in fresh {
            let event = EventId::from(place.event_id);
            let known = self.by_event.get(&event);
            if known.is_some_and(|k| k.version >= place.version) {
                continue;
            }
            let live = is_live(place.status);
            if !live && known.is_none() {
                continue;
            }
            if known.is_none_or(|k| !k.shows_as(&place)) {
                updates.push(("refreshed", place.clone()));
            }
            if live {
                self.holds(event, place);
            } else {
                self.ends(event, place.version, now);
            }
        }
        updates
    }
}

/// One read of everything [`MeWatcher::read`] does.
async fn read_places(
    store: &dyn Store,
    user: UserId,
    known: &[EventId],
) -> Result<Vec<Place>, StoreError> {
    let mut places = store.live_places_of(user, SNAPSHOT_LIMIT).await?;
    let read: HashSet<Uuid> = places.iter().map(|p| p.membership.event_id).collect();
    let left_out: Vec<EventId> = known
        .iter()
        .filter(|event| !read.contains(&event.as_uuid()))
        .copied()
        .collect();
    if !left_out.is_empty() {
        places.extend(store.places_in(user, &left_out).await?);
    }
    Ok(places)
}

fn is_live(status: MemberStatus) -> bool {
    matches!(
        status,
        MemberStatus::Active | MemberStatus::Offered | MemberStatus::Waitlisted
    )
}

/// How long [`RecentChanges`] remembers an event's latest changes: as long
/// as a change may come late behind a newer one after a shard moved
/// ([`LATE_CHANGES_WITHIN`]; an older change recorded after the newer one
/// was forgotten would look like the latest), and far longer than a
/// watcher takes to follow an event after the change that gave its person
/// a place there. A watcher that finds no trace reads.
const RECENT_FOR: Duration = Duration::from_secs(LATE_CHANGES_WITHIN.num_seconds() as u64);

/// What [`RecentChanges`] holds of one event: the versions of its latest
/// change, of the latest that waiting places heard, and of its
/// cancellation, if routed, and when it last changed.
#[derive(Clone, Copy)]
struct Latest {
    change: u64,
    /// Every change routed here in turn after this one, up to `change`,
    /// moved no waiting place. (A late one may have come too: see
    /// [`RecentChanges::routed`].)
    heard_by_waiting: u64,
    cancellation: Option<u64>,
    at: Instant,
}

/// What [`RecentChanges`] needs of a change to route it.
#[derive(Clone, Copy, Debug)]
struct Routing {
    event: EventId,
    /// The version the event was at before the change.
    base: u64,
    version: u64,
    cancels: bool,
    /// Someone left the waitlist: whoever waited behind them moves up.
    vacates: bool,
}

impl Routing {
    fn of(change: &EventChange) -> Self {
        Self {
            event: change.summary.id,
            base: change.base(),
            version: change.summary.version,
            cancels: change
                .facts
                .iter()
                .any(|f| matches!(f, DomainEvent::Cancelled { .. })),
            vacates: change
                .moves
                .iter()
                .any(|m| matches!(m, WaitlistMove::Vacated { .. })),
        }
    }
}

/// What a routed change is to the places waiting in its event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ForWaiting {
    /// They must hear it: it may move them (a cancellation, someone leaving
    /// the waitlist), or what went before it is not known here (the first
    /// change remembered, one after a gap).
    must_hear: bool,
    /// A waiting place older than this missed a change that may have moved
    /// it ([`MyPlaces::missed_before`]).
    moved_since: u64,
}

/// The versions of each event's latest changes routed here within
/// [`RECENT_FOR`] (or while a watcher here follows someone waiting in it),
/// for two decisions.
///
/// Which changes reach the places waiting in an event: a join behind them
/// moves nobody, and on a hot event with thousands waiting, each join
/// handed to every one of their watchers cost a message per waiting
/// watcher. A change that came in turn (its base is the latest version
/// seen) reaches them only if it may move them ([`ForWaiting`]); since
/// every change in between came in turn and moved nobody, a waiting place
/// at the version of the last one they heard is exact. After a gap (a
/// change overtaken, as when a shard moves) or with nothing remembered,
/// every change reaches them, and a place older than its base reads.
///
/// Whether a watcher that has just begun to follow an event missed a
/// change. A watcher follows an event (registers for the changes that name
/// nobody) only after the change that gave its person a place there; one
/// routed in between reached nobody. Routing records a change before it
/// looks up whom to send it to, and a watcher registers before it asks, so
/// a change that missed the watcher shows here, and the watcher reads the
/// database only then: for a place that waits, after a newer change the
/// waiting heard; for one that does not, only after a cancellation (the
/// rest name the person).
struct RecentChanges {
    latest: DashMap<EventId, Latest>,
    /// Events recorded since the last sweep, and how many may be before the
    /// next: what a sweep left, so that it is not a scan per change.
    recorded: AtomicUsize,
    sweep_at: AtomicUsize,
    sweeping: AtomicBool,
}

impl RecentChanges {
    const LEAST_SWEEP_AT: usize = 1024;

    fn new() -> Self {
        Self {
            latest: DashMap::new(),
            recorded: AtomicUsize::new(0),
            sweep_at: AtomicUsize::new(Self::LEAST_SWEEP_AT),
            sweeping: AtomicBool::new(false),
        }
    }

    /// A change is being routed, at `now`; what it is to the places
    /// waiting in its event. An event a watcher here follows someone
    /// waiting in (`waited_in`) is remembered for as long as it does:
    /// forgotten, its next change would be handed to every waiting
    /// watcher as one after a gap, and all of them would read at once.
    fn routed(
        &self,
        change: Routing,
        now: Instant,
        waited_in: impl Fn(&EventId) -> bool,
    ) -> ForWaiting {
        let Routing {
            event,
            base,
            version,
            cancels,
            vacates,
        } = change;
        let cancellation = cancels.then_some(version);
        let (for_waiting, new) = match self.latest.entry(event) {
            Entry::Occupied(mut seen) => {
                let seen = seen.get_mut();
                let for_waiting = if seen.change == base {
                    ForWaiting {
                        must_hear: cancels || vacates,
                        moved_since: seen.heard_by_waiting,
                    }
                } else if version <= seen.change {
                    // Late: the newer change that overtook it came after
                    // a gap, which had every waiting place behind it read
                    // at that version or later, with this one in it.
                    ForWaiting {
                        must_hear: false,
                        moved_since: base,
                    }
                } else {
                    ForWaiting {
                        must_hear: true,
                        moved_since: base,
                    }
                };
                seen.change = seen.change.max(version);
                if for_waiting.must_hear {
                    seen.heard_by_waiting = version;
                }
                seen.cancellation = seen.cancellation.max(cancellation);
                seen.at = now;
                (for_waiting, false)
            }
            Entry::Vacant(room) => {
                room.insert(Latest {
                    change: version,
                    heard_by_waiting: version,
                    cancellation,
                    at: now,
                });
                let for_waiting = ForWaiting {
                    must_hear: true,
                    moved_since: base,
                };
                (for_waiting, true)
            }
        };
        let due = new
            && self.recorded.fetch_add(1, Ordering::Relaxed) + 1
                >= self.sweep_at.load(Ordering::Relaxed);
        if due && !self.sweeping.swap(true, Ordering::Acquire) {
            self.sweep(now, waited_in);
            self.sweeping.store(false, Ordering::Release);
        }
        for_waiting
    }

    /// Whether a change to `event` newer than `version` that a place there
    /// would miss may have been routed: one was (one the waiting heard, for
    /// a place that `waits`; a cancellation, for one that does not), or the
    /// event is no longer remembered.
    fn may_have_missed(&self, event: EventId, version: u64, waits: bool) -> bool {
        self.latest.get(&event).is_none_or(|seen| {
            let missed = if waits {
                Some(seen.heard_by_waiting)
            } else {
                seen.cancellation
            };
            missed.is_some_and(|missed| missed > version)
        })
    }

    fn sweep(&self, now: Instant, waited_in: impl Fn(&EventId) -> bool) {
        self.recorded.store(0, Ordering::Relaxed);
        if let Some(cutoff) = now.checked_sub(RECENT_FOR) {
            self.latest
                .retain(|event, seen| seen.at > cutoff || waited_in(event));
        }
        let left = self.latest.len();
        self.sweep_at
            .store(left.max(Self::LEAST_SWEEP_AT), Ordering::Relaxed);
    }
}

/// Routes committed changes to the `me` watchers they concern.
#[derive(Clone)]
pub struct MeFeeds(Arc<Inner>);

struct Inner {
    store: Arc<dyn Store>,
    /// An offer's holder is warned this long before it runs out.
    warn_before: chrono::Duration,
    /// Each person's watchers (one per subscribed connection), by id.
    watchers: DashMap<UserId, HashMap<u64, Addr<MeWatcher>>>,
    /// The watchers of people waiting in each event, by id.
    waiting: Watching,
    /// The watchers of people holding any live place in each event, by id.
    holding: Watching,
    recent: RecentChanges,
}

/// Watchers registered by event, by id.
type Watching = DashMap<EventId, HashMap<u64, Addr<MeWatcher>>>;

/// Which of an event's registers a watcher is in.
#[derive(Clone, Copy)]
enum Register {
    Waiting,
    Holding,
}

impl MeFeeds {
    pub fn new(store: Arc<dyn Store>, warn_before: std::time::Duration) -> Self {
        Self(Arc::new(Inner {
            store,
            warn_before: chrono::Duration::from_std(warn_before)
                .unwrap_or(chrono::Duration::zero()),
            watchers: DashMap::new(),
            waiting: DashMap::new(),
            holding: DashMap::new(),
            recent: RecentChanges::new(),
        }))
    }

    /// Starts a subscription's watcher, writing to `queue`.
    pub fn watch(
        &self,
        user: UserId,
        queue: ChannelQueue,
        since: Option<Position>,
    ) -> Addr<MeWatcher> {
        static IDS: AtomicU64 = AtomicU64::new(1);
        MeWatcher {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            user,
            queue,
            feeds: self.clone(),
            places: MyPlaces::new(user, []),
            epoch: Uuid::new_v4().simple().to_string()[..8].to_owned(),
            offset: 0,
            since,
            waiting_in: HashSet::new(),
            holding_in: HashSet::new(),
            warnings: HashMap::new(),
            reading_all: false,
        }
        .start()
    }

    /// Hands a committed change to the watchers it may concern.
    pub fn route(&self, change: &Arc<EventChange>) {
        let mut to: HashMap<u64, Addr<MeWatcher>> = HashMap::new();
        let routing = Routing::of(change);
        let event = routing.event;
        // Before the registers are read: see `RecentChanges`.
        let for_waiting = self.0.recent.routed(routing, Instant::now(), |event| {
            self.0.waiting.contains_key(event)
        });
        if for_waiting.must_hear
            && let Some(waiting) = self.0.waiting.get(&event)
        {
            to.extend(waiting.iter().map(|(id, w)| (*id, w.clone())));
        }
        if routing.cancels
            && let Some(holding) = self.0.holding.get(&event)
        {
            to.extend(holding.iter().map(|(id, w)| (*id, w.clone())));
        }
        for user in change
            .facts
            .iter()
            .filter_map(|f| f.party())
            .map(|p| p.user)
        {
            if let Some(watchers) = self.0.watchers.get(&user) {
                to.extend(watchers.iter().map(|(id, w)| (*id, w.clone())));
            }
        }
        if to.is_empty() {
            // Most changes reach nobody's `me`: no metric lookup for them.
            return;
        }
        metrics::counter!("turnout_me_changes_handed_total").increment(to.len() as u64);
        for watcher in to.into_values() {
            watcher.do_send(MeChange {
                change: Arc::clone(change),
                moved_since: for_waiting.moved_since,
            });
        }
    }

    /// Changes may have been missed: every watcher reads its places again.
    pub fn resync_all(&self) {
        for watchers in self.0.watchers.iter() {
            for watcher in watchers.values() {
                watcher.do_send(Refresh::Everything);
            }
        }
    }

    fn register(&self, register: Register) -> &Watching {
        match register {
            Register::Waiting => &self.0.waiting,
            Register::Holding => &self.0.holding,
        }
    }

    /// Moves a watcher's registration in `register` from the events of
    /// `from` to those of `to`.
    fn reregister(
        &self,
        register: Register,
        (id, watcher): (u64, &Addr<MeWatcher>),
        from: &HashSet<EventId>,
        to: &HashSet<EventId>,
    ) {
        let watching = self.register(register);
        for gone in from.difference(to) {
            watching.remove_if_mut(gone, |_, by_id| {
                by_id.remove(&id);
                by_id.is_empty()
            });
        }
        for new in to.difference(from) {
            watching
                .entry(*new)
                .or_default()
                .insert(id, watcher.clone());
        }
    }
}

/// A committed change that may concern the watcher's person.
#[derive(Message)]
#[rtype(result = "()")]
struct MeChange {
    change: Arc<EventChange>,
    /// See [`ForWaiting::moved_since`].
    moved_since: u64,
}

/// Read the places again.
#[derive(Message)]
#[rtype(result = "()")]
enum Refresh {
    /// Every place: changes may have been missed.
    Everything,
    /// The places in events the watcher has just begun to follow, where a
    /// change went by before it did (see [`RecentChanges`]): routed to the
    /// event's watchers, it reached nobody.
    Followed(Vec<EventId>),
}

/// The subscription ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopWatching;

/// One `me` subscription.
pub struct MeWatcher {
    id: u64,
    user: UserId,
    queue: ChannelQueue,
    feeds: MeFeeds,
    places: MyPlaces,
    epoch: String,
    offset: u64,
    since: Option<Position>,
    /// The events this watcher is registered as waiting in.
    waiting_in: HashSet<EventId>,
    /// The events this watcher is registered as holding a place in.
    holding_in: HashSet<EventId>,
    /// The warning timer of each offer held, with its deadline.
    warnings: HashMap<EventId, (DateTime<Utc>, SpawnHandle)>,
    /// A read of every place is asked for and not begun: the changes
    /// before it need not be applied, nor each ask for one of its own.
    reading_all: bool,
}

impl MeWatcher {
    /// The places `what` asks for. Everything: the person's live places
    /// and, of the events where the watcher knows one, how it stands now
    /// wherever the live read left it out — ended ones with their final
    /// status, which the live read cannot show. A failed read is retried, backing off, as a hub's load is: an
    /// empty list would tell the person they hold nothing.
    ///
    /// A subscription shut or a connection closed meanwhile stops the
    /// retries: nobody is left to tell.
    fn read(&self, what: Refresh) -> impl Future<Output = Vec<MyPlace>> + 'static {
        let (store, user) = (Arc::clone(&self.feeds.0.store), self.user);
        let known: Vec<EventId> = self.places.held_in().collect();
        let queue = self.queue.clone();
        async move {
            let mut pause = std::time::Duration::from_millis(100);
            loop {
                let read = match &what {
                    Refresh::Everything => read_places(&*store, user, &known).await,
                    Refresh::Followed(events) => store.places_in(user, events).await,
                };
                match read {
                    Ok(places) => return places.into_iter().map(MyPlace::from).collect(),
                    Err(_) if queue.is_shut() => return Vec::new(),
                    Err(error) => {
                        metrics::counter!("turnout_ws_channel_load_failures_total").increment(1);
                        tracing::warn!(
                            %error,
                            retry_in_ms = pause.as_millis() as u64,
                            "could not load a person's places"
                        );
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(std::time::Duration::from_secs(10));
                    }
                }
            }
        }
    }

    fn send(&mut self, text: String) {
        self.queue.push(Frame::text(text, None));
    }

    fn send_updates(
        &mut self,
        updates: Vec<(Reason, MyPlace)>,
        committed_at: Option<DateTime<Utc>>,
    ) {
        for (reason, place) in updates {
            self.offset += 1;
            let text = protocol::update(
                ME,
                &self.epoch,
                self.offset,
                committed_at,
                &Update {
                    reason,
                    place: &place,
                },
            );
            self.send(text);
        }
    }

    /// Asks for a read of every place (once until it begins: the changes
    /// handled before then are in it).
    fn read_all(&mut self, ctx: &mut Context<Self>) {
        if !std::mem::replace(&mut self.reading_all, true) {
            ctx.notify(Refresh::Everything);
        }
    }

    /// The events where the person holds a place this watcher does not
    /// follow yet, or waits where it does not follow them as waiting. A
    /// change that gives the person a place (or has them wait) reaches them
    /// by their name, and a read finds it; the changes after it to that
    /// event that name nobody (a cancellation, a shift of the waitlist)
    /// reach them only once the watcher follows the event as they now
    /// stand: whatever was routed in between reached nobody, and a
    /// cancelled event never changes again ([`MeWatcher::follow_new`]).
    fn unfollowed(&self) -> Vec<EventId> {
        self.places.unfollowed(&self.holding_in, &self.waiting_in)
    }

    /// Follows the places as they now stand, and reads those in `events`,
    /// where the person has just taken a place or begun to wait, if a
    /// change went by before the watcher followed them: one read settles
    /// what it missed.
    fn follow_new(&mut self, events: Vec<EventId>, ctx: &mut Context<Self>) {
        self.follow(ctx);
        if events.is_empty() {
            return;
        }
        let recent = &self.feeds.0.recent;
        let missed: Vec<EventId> = events
            .into_iter()
            .filter(|&event| {
                let place = self.places.get(event);
                let version = place.map_or(0, |p| p.version);
                let waits = place.is_some_and(|p| p.status == MemberStatus::Waitlisted);
                recent.may_have_missed(event, version, waits)
            })
            .collect();
        if !missed.is_empty() {
            metrics::counter!("turnout_me_follow_reads_total").increment(1);
            ctx.notify(Refresh::Followed(missed));
        }
    }

    /// Registers where the person waits and where they hold a place, and
    /// keeps one warning timer per offer held.
    fn follow(&mut self, ctx: &mut Context<Self>) {
        let me = (self.id, &ctx.address());
        let waiting: HashSet<EventId> = self.places.waiting_in().collect();
        self.feeds
            .reregister(Register::Waiting, me, &self.waiting_in, &waiting);
        self.waiting_in = waiting;
        let holding: HashSet<EventId> = self.places.held_in().collect();
        self.feeds
            .reregister(Register::Holding, me, &self.holding_in, &holding);
        self.holding_in = holding;

        let offers: HashMap<EventId, DateTime<Utc>> = self
            .places
            .all()
            .into_iter()
            .filter_map(|p| Some((EventId::from(p.event_id), p.offer_expires_at?)))
            .collect();
        self.warnings.retain(|event, (deadline, timer)| {
            let kept = offers.get(event) == Some(deadline);
            if !kept {
                ctx.cancel_future(*timer);
            }
            kept
        });
        for (event, deadline) in offers {
            if self.warnings.contains_key(&event) {
                continue;
            }
            let Ok(wait) = (deadline - self.feeds.0.warn_before - Utc::now()).to_std() else {
                // Already inside the warning window: the offer itself said when.
                continue;
            };
            let timer = ctx.run_later(wait, move |watcher, _| {
                watcher.warnings.remove(&event);
                if let Some(place) = watcher.places.get(event).cloned()
                    && place.offer_expires_at == Some(deadline)
                {
                    watcher.send_updates(vec![("offer_expiring", place)], None);
                }
            });
            self.warnings.insert(event, (deadline, timer));
        }
    }
}

#[derive(Serialize)]
struct Snapshot<'a> {
    places: &'a [MyPlace],
}

#[derive(Serialize)]
struct Update<'a> {
    reason: Reason,
    place: &'a MyPlace,
}

impl Actor for MeWatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::gauge!("turnout_ws_subscriptions", "kind" => ME).increment(1.0);
        self.feeds
            .0
            .watchers
            .entry(self.user)
            .or_default()
            .insert(self.id, ctx.address());
        // Registered first, then read: a change committed meanwhile is
        // either in the read or arrives after it (and older ones are
        // recognised by their version).
        ctx.wait(
            self.read(Refresh::Everything)
                .into_actor(self)
                .map(|places, watcher, ctx| {
                    watcher.places = MyPlaces::new(watcher.user, places);
                    let all = watcher.places.all();
                    // The channel keeps no history: a resume gets a snapshot.
                    let recovered = watcher.since.take().map(|_| false);
                    let text = protocol::snapshot(
                        ME,
                        &watcher.epoch,
                        watcher.offset,
                        recovered,
                        &Snapshot { places: &all },
                    );
                    watcher.send(text);
                    watcher.follow(ctx);
                    // A change to an event the person holds a place in,
                    // committed between the read and following the event,
                    // reached nobody: one more read settles it.
                    watcher.read_all(ctx);
                }),
        );
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        metrics::gauge!("turnout_ws_subscriptions", "kind" => ME).decrement(1.0);
        let me = (self.id, &ctx.address());
        let none = HashSet::new();
        let waiting = std::mem::take(&mut self.waiting_in);
        self.feeds
            .reregister(Register::Waiting, me, &waiting, &none);
        let holding = std::mem::take(&mut self.holding_in);
        self.feeds
            .reregister(Register::Holding, me, &holding, &none);
        let id = self.id;
        self.feeds.0.watchers.remove_if_mut(&self.user, |_, by_id| {
            by_id.remove(&id);
            by_id.is_empty()
        });
    }
}

impl Handler<MeChange> for MeWatcher {
    type Result = ();

    fn handle(
        &mut self,
        MeChange {
            change,
            moved_since,
        }: MeChange,
        ctx: &mut Self::Context,
    ) {
        // A read of every place is on its way, later than this change.
        if self.reading_all {
            return;
        }
        // A change after a gap moves nothing: the read it calls for tells
        // where the places stand. Had it moved a place to its version first,
        // the read — at that version — would find nothing newer, and what
        // the missed change did (an offer) would go untold.
        if self.places.missed_before(&change, moved_since) {
            metrics::counter!("turnout_me_gaps_total").increment(1);
            self.read_all(ctx);
            return;
        }
        let updates = self.places.apply(&change);
        let new_places = self.unfollowed();
        if updates.is_empty() && new_places.is_empty() {
            // Nothing moved (a join behind a waiting place, say).
            return;
        }
        self.send_updates(updates, Some(change.committed_at));
        self.follow_new(new_places, ctx);
    }
}

impl Handler<Refresh> for MeWatcher {
    type Result = ();

    fn handle(&mut self, refresh: Refresh, ctx: &mut Self::Context) {
        if let Refresh::Everything = refresh {
            self.reading_all = false;
        }
        let read = self.read(refresh);
        ctx.wait(read.into_actor(self).map(|fresh, watcher, ctx| {
            let updates = watcher.places.refresh(fresh, Utc::now());
            let new_places = watcher.unfollowed();
            watcher.send_updates(updates, None);
            // A read that found a new place (its change still on the
            // way) was made before the watcher followed its event.
            watcher.follow_new(new_places, ctx);
        }));
    }
}

impl Handler<StopWatching> for MeWatcher {
    type Result = ();

    fn handle(&mut self, _: StopWatching, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use turnout_actors::domain::{
        Capacity, Command, EventDetails, EventState, Lifecycle, Membership, Seats, Title, VenueId,
        WaitlistMode, WaitlistPolicy, decide, evolve, waitlist_moves,
    };
    use turnout_actors::store::EventSummary;

    use super::*;

    /// A change of one fact to `event`, at `version`.
    fn one_fact(event: EventId, version: u64, cancels: bool, vacates: bool) -> Routing {
        Routing {
            event,
            base: version - 1,
            version,
            cancels,
            vacates,
        }
    }

    /// No event is waited in: whatever is not recent may be swept.
    fn nobody_waits(_: &EventId) -> bool {
        false
    }

    /// Routes changes of one fact to `event` through `recent`, at one
    /// instant: `route(version, cancels, vacates)`.
    fn router(
        recent: &RecentChanges,
        event: EventId,
    ) -> impl Fn(u64, bool, bool) -> ForWaiting + '_ {
        let now = Instant::now();
        move |version, cancels, vacates| {
            recent.routed(
                one_fact(event, version, cancels, vacates),
                now,
                nobody_waits,
            )
        }
    }

    #[test]
    fn waiting_places_hear_what_may_move_them_and_whatever_follows_a_gap() {
        let (recent, event) = (RecentChanges::new(), EventId::new());
        let route = router(&recent, event);
        let heard = |moved_since| ForWaiting {
            must_hear: true,
            moved_since,
        };
        let passed = |moved_since| ForWaiting {
            must_hear: false,
            moved_since,
        };
        assert_eq!(route(3, false, false), heard(2), "nothing known before it");
        assert_eq!(route(4, false, false), passed(3), "a join behind them");
        assert_eq!(route(5, false, false), passed(3));
        assert_eq!(
            route(6, false, true),
            heard(3),
            "someone ahead left: a place at 3 heard all that moved it"
        );
        assert_eq!(route(7, true, false), heard(6), "a cancellation");
        assert_eq!(route(9, false, false), heard(8), "a gap: 8 is not known");
        assert_eq!(route(10, false, false), passed(9));
        assert_eq!(
            route(8, false, true),
            passed(7),
            "late: the gap had the places behind it read"
        );
        assert_eq!(route(11, false, false), passed(9), "in turn again");
    }

    #[test]
    fn a_change_went_by_a_waiting_place_when_one_the_waiting_heard_was_routed_or_none_is_remembered()
     {
        let (recent, event) = (RecentChanges::new(), EventId::new());
        let route = router(&recent, event);
        assert!(recent.may_have_missed(event, 1, true), "nothing remembered");
        route(3, false, false);
        assert!(
            !recent.may_have_missed(event, 3, true),
            "the change that gave the place"
        );
        assert!(recent.may_have_missed(event, 2, true));
        route(4, false, false);
        assert!(
            !recent.may_have_missed(event, 3, true),
            "a join behind it moves nobody"
        );
        route(5, false, true);
        assert!(
            recent.may_have_missed(event, 3, true),
            "someone ahead left the waitlist"
        );
        route(2, false, true);
        assert!(
            !recent.may_have_missed(event, 5, true),
            "a late, older change moves nothing"
        );
    }

    /// Only a cancellation reaches a place that does not wait without
    /// naming its person.
    #[test]
    fn only_a_cancellation_goes_by_a_place_that_does_not_wait() {
        let (recent, event) = (RecentChanges::new(), EventId::new());
        let route = router(&recent, event);
        assert!(
            recent.may_have_missed(event, 1, false),
            "nothing remembered"
        );
        route(3, false, false);
        route(4, false, true);
        assert!(
            !recent.may_have_missed(event, 3, false),
            "another's join, another's leave"
        );
        route(5, true, false);
        assert!(recent.may_have_missed(event, 3, false));
        assert!(
            !recent.may_have_missed(event, 5, false),
            "read at the cancellation"
        );
    }

    #[test]
    fn recent_changes_are_forgotten_once_no_late_change_may_come_and_nobody_waits() {
        let recent = RecentChanges::new();
        let start = Instant::now();
        let (old, waited_in) = (EventId::new(), EventId::new());
        let waits = |event: &EventId| *event == waited_in;
        recent.routed(one_fact(old, 1, false, false), start, waits);
        recent.routed(one_fact(waited_in, 1, false, false), start, waits);
        for _ in 0..RecentChanges::LEAST_SWEEP_AT {
            let at = start + Duration::from_secs(1);
            recent.routed(one_fact(EventId::new(), 1, false, false), at, waits);
        }
        assert!(!recent.may_have_missed(old, 1, true), "swept, but recent");
        let later = start + RECENT_FOR + Duration::from_secs(2);
        for _ in 0..RecentChanges::LEAST_SWEEP_AT + 1 {
            recent.routed(one_fact(EventId::new(), 1, false, false), later, waits);
        }
        assert!(
            recent.may_have_missed(old, 1, true),
            "forgotten: a watcher reads"
        );
        assert!(
            !recent.may_have_missed(waited_in, 1, true),
            "kept while anyone waits in it"
        );
        assert!(
            recent.latest.len() <= 2 * RecentChanges::LEAST_SWEEP_AT + 2,
            "{} held",
            recent.latest.len()
        );
    }

    /// An event, and the changes commands make.
    struct Event {
        state: Option<EventState>,
        owner: UserId,
    }

    impl Event {
        /// Of capacity 1, in offer mode.
        fn new() -> Self {
            Self::with(1, WaitlistMode::Offer)
        }

        fn with(capacity: i64, mode: WaitlistMode) -> Self {
            let owner = UserId::new();
            let mut event = Self { state: None, owner };
            event.run(Command::Create {
                id: EventId::new(),
                owner,
                details: EventDetails {
                    title: Title::parse("Quiz").unwrap(),
                    description: None,
                    venue_id: VenueId::new(),
                    starts_at: Utc::now() + chrono::Duration::days(1),
                    ends_at: None,
                    tags: vec![],
                },
                capacity: Capacity::parse(capacity).unwrap(),
                policy: WaitlistPolicy {
                    mode,
                    ..WaitlistPolicy::default()
                },
                at: Utc::now(),
            });
            event.run(Command::Publish {
                by: owner,
                at: Utc::now(),
            });
            event
        }

        fn run(&mut self, command: Command) -> EventChange {
            self.try_run(command).expect("the command is taken")
        }

        /// The change a command makes, if it is taken.
        fn try_run(&mut self, command: Command) -> Option<EventChange> {
            let facts = decide(self.state.as_ref(), &command).ok()?;
            if facts.is_empty() {
                return None;
            }
            let moves = self
                .state
                .as_ref()
                .map(|s| waitlist_moves(s, &facts))
                .unwrap_or_default();
            self.state = facts.iter().fold(self.state.take(), evolve);
            Some(EventChange {
                summary: EventSummary::from(self.state.as_ref().unwrap()),
                facts,
                moves,
                committed_at: Utc::now(),
            })
        }

        fn join(&mut self, user: UserId) -> EventChange {
            self.run(Command::Join {
                user,
                seats: Seats::default(),
                at: Utc::now(),
            })
        }

        fn leave(&mut self, user: UserId) -> EventChange {
            self.run(Command::Leave {
                user,
                at: Utc::now(),
            })
        }
    }

    /// `me` waiting behind `a`, who holds the event's one place.
    fn waiting_behind(a: UserId, me: UserId) -> (Event, MyPlaces) {
        let mut event = Event::new();
        let mut mine = MyPlaces::new(me, []);
        mine.apply(&event.join(a));
        mine.apply(&event.join(me));
        (event, mine)
    }

    #[test]
    fn a_waiting_place_moves_up_as_those_ahead_leave_and_is_then_offered() {
        let (a, b, c, me) = (UserId::new(), UserId::new(), UserId::new(), UserId::new());
        let mut event = Event::new();
        let mut mine = MyPlaces::new(me, []);
        for u in [a, b, c] {
            assert!(mine.apply(&event.join(u)).is_empty(), "not about me");
        }
        let joined = mine.apply(&event.join(me));
        assert_eq!(joined.len(), 1);
        assert_eq!(joined[0].0, "waitlisted");
        assert_eq!(joined[0].1.position, Some(3));

        let moved = mine.apply(&event.leave(c));
        assert_eq!(
            (moved[0].0, moved[0].1.position),
            ("position", Some(2)),
            "someone ahead left"
        );
        let offered_to_b = event.leave(a);
        let moved = mine.apply(&offered_to_b);
        assert_eq!((moved[0].0, moved[0].1.position), ("position", Some(1)));
        assert!(
            mine.apply(&offered_to_b).is_empty(),
            "a change seen before moves nothing"
        );

        let offered = mine.apply(&event.leave(b));
        assert_eq!(offered[0].0, "offered");
        assert_eq!(offered[0].1.status, MemberStatus::Offered);
        assert!(offered[0].1.offer_expires_at.is_some());
        assert_eq!(offered[0].1.position, None);
        assert_eq!(mine.waiting_in().count(), 0);
    }

    /// A refresh after a gap reads the places known here as they stand
    /// now: one that ended meanwhile is told with its final status and
    /// leaves the list (PROTOCOL.md).
    #[test]
    fn a_refresh_tells_a_place_that_ended_unheard_and_drops_it() {
        let (a, me) = (UserId::new(), UserId::new());
        let (mut event, mut mine) = waiting_behind(a, me);
        let id = event.state.as_ref().unwrap().id;
        let waiting = mine.get(id).cloned().expect("waiting");
        // The leave's change never arrived; the read finds the place left.
        let unheard = event.leave(me);
        let read = MyPlace {
            status: MemberStatus::Left,
            position: None,
            version: unheard.summary.version,
            ..waiting
        };
        let told = mine.refresh(vec![read.clone()], Utc::now());
        assert_eq!(told, vec![("refreshed", read)]);
        assert!(mine.get(id).is_none());
        assert_eq!(mine.waiting_in().count(), 0);
    }

    #[test]
    fn a_change_that_overtook_an_earlier_one_is_told_as_a_gap() {
        let (a, b, me) = (UserId::new(), UserId::new(), UserId::new());
        let (mut event, mut mine) = waiting_behind(a, me);
        let offered_to_me = event.leave(a);
        let someone_else_waits = event.join(b);
        // What the feeds vouch for after a gap: nothing before its base.
        let after_gap = |change: &EventChange| Routing::of(change).base;
        assert!(
            !mine.missed_before(&offered_to_me, after_gap(&offered_to_me)),
            "the next change follows"
        );
        assert!(
            mine.missed_before(&someone_else_waits, after_gap(&someone_else_waits)),
            "it came first: the offer before it was missed"
        );
        // The watcher moves nothing on it and reads instead, at its version.
        let id = someone_else_waits.summary.id;
        let read = MyPlace {
            status: MemberStatus::Offered,
            position: None,
            version: someone_else_waits.summary.version,
            ..mine.get(id).cloned().expect("waiting")
        };
        let told = mine.refresh(vec![read.clone()], Utc::now());
        assert_eq!(told, vec![("refreshed", read)], "the read tells the offer");
        assert!(
            mine.apply(&offered_to_me).is_empty(),
            "the late offer is older than the place"
        );
    }

    #[test]
    fn an_offer_overtaken_by_the_leave_after_it_does_not_bring_the_place_back() {
        let (a, me) = (UserId::new(), UserId::new());
        let (mut event, mut mine) = waiting_behind(a, me);
        // After a shard moved, the new holder's leave overtakes the old
        // holder's offer.
        let offered_to_me = event.leave(a);
        let i_left = event.leave(me);
        assert_eq!(mine.apply(&i_left)[0].0, "left");
        assert!(
            mine.apply(&offered_to_me).is_empty(),
            "the offer is older than the leave"
        );
        assert!(mine.all().is_empty());
        // A join after that is a place again.
        assert_eq!(mine.apply(&event.join(me))[0].0, "joined");
        assert_eq!(mine.all().len(), 1);
    }

    #[test]
    fn a_place_that_ends_leaves_the_list() {
        let me = UserId::new();
        let mut event = Event::new();
        let mut mine = MyPlaces::new(me, []);
        mine.apply(&event.join(me));
        assert_eq!(mine.all().len(), 1);
        let left = mine.apply(&event.leave(me));
        assert_eq!(left[0].0, "left");
        assert!(mine.all().is_empty());
    }

    /// The command `kind` (0 – 30) names, by `user`: joins and leaves
    /// mostly, offers answered, and one in 31 a cancellation, which ends
    /// the event.
    fn command(kind: usize, user: UserId, event: &Event) -> Command {
        let at = Utc::now();
        match kind {
            0..12 => Command::Join {
                user,
                seats: Seats::default(),
                at,
            },
            12..24 => Command::Leave { user, at },
            24..27 => Command::AcceptOffer { user, at },
            27..30 => Command::DeclineOffer { user, at },
            _ => Command::Cancel {
                by: event.owner,
                at,
            },
        }
    }

    /// How `me` stands in `event` (status and place in the waitlist), as
    /// the channel would show a live place.
    fn stands(event: &Event, me: UserId) -> Option<(MemberStatus, Option<u32>)> {
        let state = event.state.as_ref().unwrap();
        match state.membership(me)? {
            _ if state.lifecycle == Lifecycle::Cancelled => None,
            Membership::Active { .. } => Some((MemberStatus::Active, None)),
            Membership::Offered { .. } => Some((MemberStatus::Offered, None)),
            Membership::Waitlisted { position, .. } => {
                Some((MemberStatus::Waitlisted, Some(position as u32)))
            }
        }
    }

    /// What a read of `me`'s place in `event` finds now: the live place, or,
    /// for a place the watcher `knew` that is gone, one that ended.
    fn read_place(event: &Event, me: UserId, knew: Option<&MyPlace>) -> Vec<MyPlace> {
        let state = event.state.as_ref().unwrap();
        let (status, seats, position, offer_expires_at, joined_at) = match state.membership(me) {
            _ if state.lifecycle == Lifecycle::Cancelled => {
                let Some(known) = knew else { return vec![] };
                (
                    MemberStatus::Cancelled,
                    known.seats,
                    None,
                    None,
                    known.joined_at,
                )
            }
            None => {
                let Some(known) = knew else { return vec![] };
                (MemberStatus::Left, known.seats, None, None, known.joined_at)
            }
            Some(Membership::Active { joined_at, seats }) => {
                (MemberStatus::Active, seats.get(), None, None, joined_at)
            }
            Some(Membership::Offered {
                joined_at,
                seats,
                expires_at,
            }) => (
                MemberStatus::Offered,
                seats.get(),
                None,
                Some(expires_at),
                joined_at,
            ),
            Some(Membership::Waitlisted {
                position,
                joined_at,
                seats,
            }) => {
                let position = Some(position as u32);
                (
                    MemberStatus::Waitlisted,
                    seats.get(),
                    position,
                    None,
                    joined_at,
                )
            }
        };
        vec![MyPlace {
            event_id: state.id.as_uuid(),
            status,
            seats,
            position,
            offer_expires_at,
            joined_at,
            version: state.version,
        }]
    }

    /// One person's watcher of one event, as `MeWatcher` and the feeds
    /// treat it: which registers it is in, the changes handed to it and
    /// not yet handled (its mailbox), and how often it read.
    struct Watcher {
        me: UserId,
        mine: MyPlaces,
        /// Its registers, as `MeWatcher`'s.
        waiting_in: HashSet<EventId>,
        holding_in: HashSet<EventId>,
        mailbox: std::collections::VecDeque<(EventChange, u64)>,
        reads: usize,
    }

    impl Watcher {
        fn new(me: UserId) -> Self {
            Self {
                me,
                mine: MyPlaces::new(me, []),
                waiting_in: HashSet::new(),
                holding_in: HashSet::new(),
                mailbox: Default::default(),
                reads: 0,
            }
        }

        /// Routes `change` as the feeds do: into the mailbox if it reaches
        /// the watcher as registered now.
        fn route(&mut self, recent: &RecentChanges, change: &EventChange) {
            let routing = Routing::of(change);
            let for_waiting = recent.routed(routing, Instant::now(), |_| true);
            let names_me =
                (change.facts.iter()).any(|f| f.party().is_some_and(|p| p.user == self.me));
            let reaches = names_me
                || (self.waiting_in.contains(&routing.event) && for_waiting.must_hear)
                || (self.holding_in.contains(&routing.event) && routing.cancels);
            if reaches {
                self.mailbox
                    .push_back((change.clone(), for_waiting.moved_since));
            }
        }

        /// Handles the oldest change in the mailbox as `MeWatcher` does;
        /// `event` is where things stand now, for a read. False if none.
        fn handle_next(&mut self, recent: &RecentChanges, event: &Event) -> bool {
            let Some((change, moved_since)) = self.mailbox.pop_front() else {
                return false;
            };
            let id = change.summary.id;
            if self.mine.missed_before(&change, moved_since) {
                self.read(recent, event, id);
            } else {
                self.mine.apply(&change);
                self.follow(recent, event, id);
            }
            true
        }

        /// Routes `change` and handles it at once, with whatever was before.
        fn deliver(&mut self, recent: &RecentChanges, change: &EventChange, event: &Event) {
            self.route(recent, change);
            while self.handle_next(recent, event) {}
        }

        /// Reads the place, and follows it as it now stands (a read that
        /// found a new place checks what went by, as after a change).
        fn read(&mut self, recent: &RecentChanges, event: &Event, id: EventId) {
            self.reads += 1;
            let fresh = read_place(event, self.me, self.mine.get(id));
            self.mine.refresh(fresh, Utc::now());
            self.follow(recent, event, id);
        }

        /// Registers as the place now stands; one it newly follows reads if
        /// a change it would have missed went by (`MeWatcher::follow_new`).
        fn follow(&mut self, recent: &RecentChanges, event: &Event, id: EventId) {
            let newly = self.mine.unfollowed(&self.holding_in, &self.waiting_in);
            self.holding_in = self.mine.held_in().collect();
            self.waiting_in = self.mine.waiting_in().collect();
            let place = self.mine.get(id);
            let waits = place.is_some_and(|p| p.status == MemberStatus::Waitlisted);
            let version = place.map_or(0, |p| p.version);
            if newly.contains(&id) && recent.may_have_missed(id, version, waits) {
                self.read(recent, event, id);
            }
        }
    }

    /// Five people (the first is the one watched), an event of
    /// `capacity` (in offer mode if `offers`), the feeds' memory and the
    /// first person's watcher.
    fn five_people(capacity: i64, offers: bool) -> (Vec<UserId>, Event, RecentChanges, Watcher) {
        let users: Vec<UserId> = (0..5).map(|_| UserId::new()).collect();
        let mode = if offers {
            WaitlistMode::Offer
        } else {
            WaitlistMode::Auto
        };
        let watcher = Watcher::new(users[0]);
        (
            users,
            Event::with(capacity, mode),
            RecentChanges::new(),
            watcher,
        )
    }

    proptest::proptest! {
            /// A person's watcher, handed the changes the feeds route to it —
            /// those that name the person, while the person waits those the
            /// waiting must hear, and while they hold a place a cancellation —
            /// always shows how the person stands (status and place in the
            /// waitlist) once the changes made so far have all come, even when
            /// one comes after the next (as after a shard moves); and it reads
            /// only where one came late: a join behind a waiting place, which
            /// no longer reaches it, moves nobody.
            #[test]
            fn a_waiting_place_hears_every_change_that_moves_it(
                capacity in 1i64..3,
                offers in proptest::bool::ANY,
                steps in proptest::collection::vec((0usize..31, 0usize..5, 0usize..8), 1..80),
            ) {
                let (users, mut event, recent, mut watcher) = five_people(capacity, offers);
                let (me, id) = (users[0], event.state.as_ref().unwrap().id);
                let mut held_back = None;
                for (kind, who, late) in steps {
                    let user = users[who];
                    let Some(change) = event.try_run(command(kind, user, &event)) else { continue };
                    // One in eight comes after the next change.
                    if late == 0 && held_back.is_none() {
                        held_back = Some(change);
                        continue;
                    }
                    let reads = watcher.reads;
                    watcher.deliver(&recent, &change, &event);
                    let came_late = held_back.take();
                    if let Some(earlier) = &came_late {
                        watcher.deliver(&recent, earlier, &event);
                    } else {
                        proptest::prop_assert_eq!(
                            watcher.reads, reads,
                            "in turn, a change needs no read"
                        );
                    }
                    let shown = watcher.mine.get(id).map(|p| (p.status, p.position));
                    proptest::prop_assert_eq!(shown, stands(&event, me));
                }
            }

            /// The same with the watcher behind its mailbox, as an actor is:
            /// changes are routed (to whom its registers say then) before it
            /// has handled the ones before — a leave ahead routed before it
            /// follows the event it just joined reaches nobody, and the
            /// watcher finds it went by when it follows. Once the mailbox is
            /// empty it shows how the person stands.
            #[test]
            fn a_watcher_behind_its_mailbox_ends_where_the_person_stands(
                capacity in 1i64..3,
                offers in proptest::bool::ANY,
                steps in proptest::collection::vec((0usize..31, 0usize..5, 0usize..3), 1..80),
            ) {
                let (users, mut event, recent, mut watcher) = five_people(capacity, offers);
                let (me, id) = (users[0], event.state.as_ref().unwrap().id);
                for (kind, who, handled) in steps {
                    if let Some(change) = event.try_run(command(kind, users[who], &event)) {
                        watcher.route(&recent, &change);
                    }
                    // Handles none, one or two of what waits.
                    for _ in 0..handled {
                        watcher.handle_next(&recent, &event);
                    }
                }
                while watcher.handle_next(&recent, &event) {}
                let shown = watcher.mine.get(id).map(|p| (p.status, p.position));
                proptest::prop_assert_eq!(shown, stands(&event, me));
            }
    }
}

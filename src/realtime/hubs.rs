//! Finds or starts the hub of a channel, and routes each committed change to
//! the hubs it may concern: its event's, its venue's, and the feeds.
//!
//! Channel names come from clients, so hubs are bounded: at most
//! `max_hubs` event and venue hubs and `max_feed_hubs` feed hubs run at
//! once, and an `event:<id>` that names no published event starts no hub
//! (after the first look, the miss is remembered for a few seconds). Of
//! `max_hubs`, the share `venue_hubs_percent` is the venues' alone: every
//! published event is a channel anyone may open, so a few addresses could
//! otherwise take every hub and leave the venues' screens none, while a
//! venue hub needs a venue, which takes an account to make.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use dashmap::DashMap;
use turnout_actors::changes::EventChange;
use turnout_actors::domain::EventId;
use turnout_actors::queued::QueueCount;
use turnout_actors::threads::Threads;

use super::RealtimeSettings;
use super::channel::Channel;
use super::history::HistoryLimits;
use super::hub::{ChannelHub, HubHome, OfferChange, Resync};
use crate::store::Store;

#[derive(Clone)]
pub struct Hubs(Arc<Inner>);

struct Inner {
    /// Event hubs, found by the change's id.
    events: DashMap<Channel, Addr<ChannelHub>>,
    /// Venue hubs, found by the change's venue.
    venues: DashMap<Channel, Addr<ChannelHub>>,
    /// Feed hubs: few, and every change is offered to each.
    feeds: DashMap<Channel, Addr<ChannelHub>>,
    store: Arc<dyn Store>,
    history: HistoryLimits,
    idle: Duration,
    caps: HubCaps,
    misses: RecentMisses,
    /// Changes offered to hubs and not yet handled ([`OfferChange`]).
    queued: QueueCount,
    /// The threads hubs run on, a channel always on the same one. A hub
    /// writes to its plain-TCP subscribers' sockets itself, so a big
    /// audience's fan-out is its thread's work.
    threads: Threads,
}

/// Why a channel has no hub to join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoHub {
    /// `event:<id>` names no published event (or `venue:<id>` no venue).
    NotFound,
    /// As many hubs of the channel's kind run as the server allows.
    Full,
}

/// Event ids recently found to name no published event, so a client
/// subscribing to made-up ids costs one load each, not a hub. Bounded: past
/// `capacity` the expired are dropped, and if none has, nothing is added.
///
/// A hub's look can be overtaken: a draft published while its hub loads is
/// routed to the hub behind the subscription that found it missing. So
/// when each event last changed is kept too, and a miss from a look begun
/// before that is not remembered. The changes are kept in a fixed table,
/// each event's in a slot found by a keyed hash of its id: events sharing
/// a slot only make a miss look overtaken, which costs a load.
struct RecentMisses {
    seen: DashMap<EventId, Instant>,
    ttl: Duration,
    capacity: usize,
    /// The latest change of the events hashed to each slot, in µs since
    /// `since`.
    changed: Box<[AtomicU64]>,
    since: Instant,
    slot_of: RandomState,
}

impl RecentMisses {
    const CHANGE_SLOTS: usize = 4096;

    fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            seen: DashMap::new(),
            ttl,
            capacity,
            changed: (0..Self::CHANGE_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            since: Instant::now(),
            slot_of: RandomState::new(),
        }
    }

    /// A look begun at `looked_at` found no published event `id`.
    fn remember(&self, id: EventId, looked_at: Instant, now: Instant) {
        if self.slot(&id).load(Ordering::Acquire) >= self.micros(looked_at) {
            return;
        }
        if self.seen.len() >= self.capacity {
            self.seen
                .retain(|_, at| now.saturating_duration_since(*at) < self.ttl);
        }
        if self.seen.len() < self.capacity {
            self.seen.insert(id, now);
        }
    }

    fn contains(&self, id: &EventId, now: Instant) -> bool {
        let fresh = self
            .seen
            .get(id)
            .map(|at| now.saturating_duration_since(*at) < self.ttl);
        if fresh == Some(false) {
            self.seen.remove(id);
        }
        fresh == Some(true)
    }

    /// The event changed (it was created or published): no longer a miss,
    /// nor one found by a look begun before now.
    fn changed(&self, id: EventId, now: Instant) {
        self.seen.remove(&id);
        self.slot(&id).fetch_max(self.micros(now), Ordering::AcqRel);
    }

    fn slot(&self, id: &EventId) -> &AtomicU64 {
        let hash = self.slot_of.hash_one(id) as usize;
        &self.changed[hash % self.changed.len()]
    }

    /// µs since the table began, counting the first as 1: a slot's 0 is
    /// "no change yet".
    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.since).as_micros() as u64 + 1
    }
}

impl Hubs {
    pub fn new(
        store: Arc<dyn Store>,
        settings: &RealtimeSettings,
        threads: Vec<ArbiterHandle>,
    ) -> Self {
        Self(Arc::new(Inner {
            events: DashMap::new(),
            venues: DashMap::new(),
            feeds: DashMap::new(),
            store,
            history: HistoryLimits {
                updates: settings.history,
                max_age: Duration::from_secs(settings.history_secs),
            },
            idle: Duration::from_secs(settings.hub_idle_secs),
            caps: HubCaps {
                hubs: settings.max_hubs,
                venues_reserved: settings
                    .max_hubs
                    .saturating_mul(settings.venue_hubs_percent)
                    / 100,
                feeds: settings.max_feed_hubs,
            },
            misses: RecentMisses::new(Duration::from_secs(10), 10_000),
            queued: QueueCount::default(),
            threads: Threads::new(threads, "hubs"),
        }))
    }

    fn map(&self, channel: &Channel) -> &DashMap<Channel, Addr<ChannelHub>> {
        match channel {
            Channel::Event(_) => &self.0.events,
            Channel::Venue(_) => &self.0.venues,
            Channel::Feed { .. } => &self.0.feeds,
        }
    }

    /// The channel's hub, started if it is not running and there is room.
    pub fn hub(&self, channel: &Channel) -> Result<Addr<ChannelHub>, NoHub> {
        if let Channel::Event(id) = channel
            && self.0.misses.contains(id, Instant::now())
        {
            return Err(NoHub::NotFound);
        }
        let map = self.map(channel);
        if let Some(hub) = map.get(channel).filter(|hub| hub.connected()) {
            return Ok(hub.clone());
        }
        // Counted before the entry is locked (`len` reads every shard);
        // starters racing past it together overshoot by at most their number.
        // Only the counts the channel's rule reads.
        let running = match channel {
            Channel::Feed { .. } => Running {
                events: 0,
                venues: 0,
                feeds: self.0.feeds.len(),
            },
            _ => Running {
                events: self.0.events.len(),
                venues: self.0.venues.len(),
                feeds: 0,
            },
        };
        if !self.0.caps.admit(channel, running) {
            metrics::counter!("turnout_ws_hubs_refused_total", "kind" => channel.kind())
                .increment(1);
            return Err(NoHub::Full);
        }
        let mut entry = map
            .entry(channel.clone())
            .or_insert_with(|| self.start(channel));
        if !entry.connected() {
            *entry = self.start(channel);
        }
        Ok(entry.clone())
    }

    fn start(&self, channel: &Channel) -> Addr<ChannelHub> {
        let (channel, store) = (channel.clone(), Arc::clone(&self.0.store));
        let home: Arc<dyn HubHome> = Arc::new(self.clone());
        let (history, idle) = (self.0.history, self.0.idle);
        let thread = self.0.threads.for_key(&channel);
        ChannelHub::start_in_arbiter(thread, move |_| {
            ChannelHub::new(channel, store, home, history, idle)
        })
    }

    /// Tells every running hub to reload: changes may have been missed.
    pub fn resync_all(&self) {
        for hub in self
            .0
            .events
            .iter()
            .chain(self.0.venues.iter())
            .chain(self.0.feeds.iter())
        {
            hub.do_send(Resync);
        }
    }

    /// Offers a change to every running hub it may concern.
    pub fn route(&self, change: Arc<EventChange>) {
        let (event, venue) = (change.summary.id, change.summary.details.venue_id);
        self.0.misses.changed(event, Instant::now());
        let hubs = [
            self.0.events.get(&Channel::Event(event)),
            self.0.venues.get(&Channel::Venue(venue)),
        ];
        for hub in hubs.iter().flatten() {
            hub.do_send(OfferChange::new(Arc::clone(&change), &self.0.queued));
        }
        if change.has("details_changed") {
            // The event may have moved: the venue it left must hear of it,
            // and a change does not say where it was. Details change rarely,
            // so every other venue hub is asked; those that never listed the
            // event ignore it.
            let here = Channel::Venue(venue);
            for hub in self.0.venues.iter() {
                if *hub.key() != here {
                    hub.do_send(OfferChange::new(Arc::clone(&change), &self.0.queued));
                }
            }
        }
        for hub in self.0.feeds.iter() {
            hub.do_send(OfferChange::new(Arc::clone(&change), &self.0.queued));
        }
    }

    /// Changes offered to hubs that none has handled yet.
    pub fn changes_queued(&self) -> usize {
        self.0.queued.len()
    }
}

/// How many hubs of each kind may run at once (see the module's doc).
struct HubCaps {
    /// Event and venue hubs together.
    hubs: usize,
    /// Of `hubs`, those only venue hubs may take.
    venues_reserved: usize,
    /// Filtered feeds (the city's plain feed is always let in).
    feeds: usize,
}

/// The hubs running, by kind.
#[derive(Debug, Clone, Copy)]
struct Running {
    events: usize,
    venues: usize,
    feeds: usize,
}

impl HubCaps {
    /// Whether a hub for `channel` may start beside those `running`.
    fn admit(&self, channel: &Channel, running: Running) -> bool {
        let direct = running.events + running.venues;
        match channel {
            // The city's feed is one hub, and always let in: filtered feeds
            // from a few addresses must not take every kiosk's channel.
            Channel::Feed { .. } if !channel.is_filtered_feed() => true,
            Channel::Feed { .. } => running.feeds < self.feeds,
            Channel::Event(_) => {
                direct < self.hubs
                    && running.events < self.hubs.saturating_sub(self.venues_reserved)
            }
            Channel::Venue(_) => direct < self.hubs,
        }
    }
}

impl HubHome for Hubs {
    fn left(&self, channel: &Channel, hub: &Addr<ChannelHub>) {
        self.map(channel)
            .remove_if(channel, |_, current| current == hub);
    }

    /// An event hub's look begun at `looked_at` found its event missing (or
    /// a draft).
    fn missed(&self, event: EventId, looked_at: Instant) {
        self.0.misses.remember(event, looked_at, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However many event channels are opened, the venues keep their share;
    /// venues may take the rest too; filtered feeds have a cap of their
    /// own, and the city's feed always starts.
    #[test]
    fn event_channels_cannot_take_the_venues_share() {
        let caps = HubCaps {
            hubs: 10,
            venues_reserved: 4,
            feeds: 2,
        };
        let event = Channel::Event(EventId::new());
        let venue = Channel::Venue(turnout_actors::domain::VenueId::new());
        let running = |events, venues, feeds| Running {
            events,
            venues,
            feeds,
        };
        assert!(caps.admit(&event, running(5, 0, 0)));
        assert!(
            !caps.admit(&event, running(6, 0, 0)),
            "the venues' four stay"
        );
        assert!(caps.admit(&venue, running(6, 3, 0)));
        assert!(!caps.admit(&venue, running(6, 4, 0)), "ten in all");
        assert!(
            caps.admit(&venue, running(0, 9, 0)),
            "venues may take the rest"
        );
        assert!(!caps.admit(&event, running(1, 9, 0)), "ten in all");
        let filtered = Channel::parse("feed?tag=jazz").unwrap();
        assert!(caps.admit(&filtered, running(6, 4, 1)));
        assert!(!caps.admit(&filtered, running(0, 0, 2)));
        let city = Channel::parse("feed").unwrap();
        assert!(caps.admit(&city, running(6, 4, 2)));
    }

    #[test]
    fn a_miss_is_remembered_briefly_and_forgotten_on_a_change() {
        let misses = RecentMisses::new(Duration::from_secs(10), 10);
        let t = Instant::now();
        let (gone, published) = (EventId::new(), EventId::new());
        misses.remember(gone, t, t);
        misses.remember(published, t, t);
        assert!(misses.contains(&gone, at(t, 1)));
        misses.changed(published, at(t, 2));
        assert!(
            !misses.contains(&published, at(t, 3)),
            "a change ends the miss"
        );
        assert!(!misses.contains(&gone, at(t, 10_000)), "a miss expires");
        assert!(misses.seen.is_empty());
    }

    #[test]
    fn a_look_overtaken_by_a_change_is_not_remembered() {
        let misses = RecentMisses::new(Duration::from_secs(10), 10);
        let t = Instant::now();
        let draft = EventId::new();
        // Its hub began loading at t; the draft was published at t+5 ms,
        // and the hub, answering the subscription queued before the news,
        // found it missing at t+8 ms.
        misses.changed(draft, at(t, 5));
        misses.remember(draft, t, at(t, 8));
        assert!(
            !misses.contains(&draft, at(t, 9)),
            "a stale look is no miss"
        );

        // A look begun after the change stands.
        misses.remember(draft, at(t, 21), at(t, 22));
        assert!(misses.contains(&draft, at(t, 23)));
    }

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn misses_are_bounded() {
        let misses = RecentMisses::new(Duration::from_secs(60), 3);
        let t = Instant::now();
        let ids: Vec<EventId> = (0..5).map(|_| EventId::new()).collect();
        for id in &ids {
            misses.remember(*id, t, t);
        }
        assert_eq!(misses.seen.len(), 3);
        assert!(misses.contains(&ids[0], t) && !misses.contains(&ids[4], t));
    }
}

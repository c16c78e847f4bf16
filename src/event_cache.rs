//! What `GET /v1/events/{id}` answers, held in memory and kept exact, so
//! that a read needs no database. Every change this node hears of — its own
//! commits at once, other nodes' through the fan-out, a forwarded command's
//! answer — replaces an event's entry when it is newer; a read of an event
//! not held loads it from the read model.
//!
//! Exactness rests on hearing every change, so the cache serves only while
//! the node does: always when it is alone (SQLite), while the Redis link is
//! up in a cluster, never in a cluster without Redis. When changes may have
//! been missed (the link came back, a numbering gap) everything is
//! forgotten, and a load that started before that is not kept.
//!
//! The listing (`GET /v1/events`) is answered from memory too: the
//! published events held, in the listing's order, are every published
//! event starting from some instant on once a full load of them from the
//! read model has gone in (what changed during the load wins by version,
//! and every later change is heard). A query reaching earlier than that
//! instant, or a cache too full to hold them all, goes to the database. A
//! cluster node holds the listing to the same freshness as an entry: it
//! loads it again while it is asked for, and answers from memory only a
//! listing loaded within [`CLUSTER_FRESHNESS`], so a change lost with a
//! killed node shows there as soon as in an event's details.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use serde::Serialize;
use tokio::sync::Notify;
use turnout_actors::domain::{EventId, Lifecycle, UserId};
use turnout_actors::store::EventSummary;

use uuid::Uuid;

use crate::background::Shutdown;
use crate::fanout_link::FanoutLink;
use crate::store::{EventFilter, EventRecord, Store, micros};
use crate::views::EventView;
use turnout_actors::store::StoreError;

/// One event as `GET /v1/events/{id}` answers it.
#[derive(Debug)]
pub struct CachedEvent {
    pub id: EventId,
    /// The event's stream version: a newer one replaces an older.
    pub version: u64,
    owner: UserId,
    /// What the listing orders on (unix µs).
    starts_at: i64,
    view: EventView,
    /// The 200 answer's body, rendered by the first read of this version,
    /// not at each change: a hot event changes many times between reads.
    body: OnceLock<Bytes>,
    /// When this node heard or read it.
    heard_at: Instant,
}

#[derive(Serialize)]
struct Envelope<'a> {
    data: &'a EventView,
}

impl CachedEvent {
    fn new(id: EventId, version: u64, owner: UserId, view: EventView) -> Self {
        Self {
            id,
            version,
            owner,
            starts_at: micros(view.starts_at),
            view,
            body: OnceLock::new(),
            heard_at: Instant::now(),
        }
    }

    /// The 200 answer's body.
    pub fn body(&self) -> Bytes {
        self.body
            .get_or_init(|| {
                let body = serde_json::to_vec(&Envelope { data: &self.view })
                    .expect("an event view always serializes");
                Bytes::from(body)
            })
            .clone()
    }

    /// The event's view alone, as a listing's page holds it: the body
    /// without its envelope (`{"data":` … `}`), not copied.
    pub fn view_json(&self) -> Bytes {
        const ENVELOPE_OPEN: usize = r#"{"data":"#.len();
        let body = self.body();
        body.slice(ENVELOPE_OPEN..body.len() - 1)
    }

    /// The listing's sort key, which its cursor holds.
    pub fn listing_key(&self) -> (i64, Uuid) {
        (self.starts_at, self.id.as_uuid())
    }

    fn listed(&self) -> bool {
        self.view.status == Lifecycle::Published
    }

    fn matches(&self, filter: &EventFilter) -> bool {
        filter
            .venue_id
            .is_none_or(|v| v.as_uuid() == self.view.venue_id)
            && filter
                .tag
                .as_ref()
                .is_none_or(|t| self.view.tags.contains(t))
    }

    /// Drafts are seen by their owner only.
    pub fn visible_to(&self, user: Option<UserId>) -> bool {
        self.view.status != Lifecycle::Draft || user == Some(self.owner)
    }
}

impl From<&EventSummary> for CachedEvent {
    fn from(summary: &EventSummary) -> Self {
        Self::new(
            summary.id,
            summary.version,
            summary.owner,
            EventView::from(summary),
        )
    }
}

impl From<EventRecord> for CachedEvent {
    fn from(record: EventRecord) -> Self {
        let (id, version, owner) = (
            EventId::from(record.id),
            record.version as u64,
            UserId::from(record.owner_id),
        );
        Self::new(id, version, owner, EventView::from(record))
    }
}

/// How long a cluster node answers an entry from memory without hearing of
/// it again: a change lost with the node that made it (killed before it
/// published) shows within this, since a read past it goes to the read
/// model.
const CLUSTER_FRESHNESS: Duration = Duration::from_secs(1);

/// When the cache may answer.
#[derive(Clone)]
pub enum Serving {
    /// This node is the only one: it hears every change.
    Always,
    /// A cluster node: while its fan-out link is up, each entry for
    /// [`CLUSTER_FRESHNESS`].
    WhileLinked(FanoutLink),
    /// A cluster node without Redis hears only its own changes.
    Never,
}

/// The published events held, in the listing's order.
#[derive(Default)]
struct Listing {
    by_start: BTreeMap<(i64, Uuid), Arc<CachedEvent>>,
    /// Every published event starting at or after this (unix µs) is held;
    /// none until a full load has gone in, and again once one may be
    /// missing (forgotten, or refused for want of room).
    complete_from: Option<i64>,
    /// When the last full load that went in began.
    loaded_at: Option<Instant>,
}

impl Listing {
    /// `held` (the entry before, if any) is replaced by `now`.
    fn replace(&mut self, held: Option<&CachedEvent>, now: &Arc<CachedEvent>) {
        if let Some(held) = held.filter(|h| h.listed()) {
            self.by_start.remove(&held.listing_key());
        }
        if now.listed() {
            self.by_start.insert(now.listing_key(), Arc::clone(now));
        }
    }

    /// A full load that began at `began` read every published event from
    /// `from` on, `read` being those it found: one held from there on that
    /// it did not find, and that nothing was heard of since it began, has
    /// gone (cancelled or moved by a change this node never heard).
    fn loaded(&mut self, from: i64, began: Instant, read: &HashSet<EventId>) -> Vec<EventId> {
        let gone: Vec<(i64, Uuid)> = self
            .by_start
            .range((from, Uuid::nil())..)
            .filter(|(_, event)| !read.contains(&event.id) && event.heard_at < began)
            .map(|(key, _)| *key)
            .collect();
        self.complete_from = Some(from);
        self.loaded_at = Some(began);
        gone.iter()
            .filter_map(|key| self.by_start.remove(key))
            .map(|event| event.id)
            .collect()
    }

    /// The first `limit` events of the page `filter` asks for, if every
    /// event it could hold is held.
    fn page(&self, filter: &EventFilter, limit: usize) -> Option<Vec<Arc<CachedEvent>>> {
        // The cache holds no venue positions.
        if filter.within.is_some() {
            return None;
        }
        let from = micros(filter.from?);
        if self.complete_from.is_none_or(|complete| from < complete) {
            return None;
        }
        let start = match filter.after {
            Some(after) if after >= (from, Uuid::nil()) => Bound::Excluded(after),
            _ => Bound::Included((from, Uuid::nil())),
        };
        let to = filter.to.map(micros);
        Some(
            self.by_start
                .range((start, Bound::Unbounded))
                .map(|(_, event)| event)
                .take_while(|event| to.is_none_or(|to| event.starts_at < to))
                .filter(|event| event.matches(filter))
                .take(limit)
                .cloned()
                .collect(),
        )
    }
}

/// The events held, and which of them may be answered from memory.
#[derive(Clone)]
pub struct EventCache {
    entries: Arc<DashMap<EventId, Arc<CachedEvent>>>,
    listing: Arc<RwLock<Listing>>,
    /// Bumped by [`EventCache::forget_all`]: a load from an older
    /// generation may predate a missed change, so it is not kept.
    generation: Arc<AtomicU64>,
    /// Events not taken for want of room, so far.
    refused: Arc<AtomicU64>,
    /// When a full cache last let go of started events (unix µs).
    last_eviction: Arc<AtomicU64>,
    max_events: usize,
    serving: Serving,
    /// Asks the listing keeper for a fresh load.
    listing_wanted: Arc<Notify>,
    /// Whether the last load found fewer upcoming events than the cache
    /// holds: if not, a load after a sweep would be refused again.
    listing_fits: Arc<AtomicBool>,
}

/// Which held entry an incoming one replaces.
#[derive(Clone, Copy)]
enum Replace {
    /// A change: only an older entry.
    Newer,
    /// A read of the read model: an older one or the same version (it is
    /// heard again, so fresh again).
    AsNew,
}

/// Where a load began, to tell whether the cache was emptied meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation(u64);

/// Where a load of the listing began, to tell whether the cache was
/// emptied, or had no room for an event, meanwhile.
#[derive(Debug, Clone, Copy)]
pub struct ListingLoad {
    generation: Generation,
    refused: u64,
    at: Instant,
}

impl EventCache {
    pub fn new(max_events: usize, serving: Serving) -> Self {
        Self {
            entries: Arc::default(),
            listing: Arc::default(),
            generation: Arc::default(),
            refused: Arc::default(),
            last_eviction: Arc::default(),
            max_events,
            serving,
            listing_wanted: Arc::default(),
            listing_fits: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The first `limit` events of a listing page, if it may be answered
    /// from memory: once the published events are loaded (see
    /// [`EventCache::listing_loaded`]) and, on a cluster node, while it
    /// hears every change and the load is fresh. A cluster node asks for
    /// the next load halfway through, so a listing asked for steadily is
    /// always answered from memory.
    pub fn page(&self, filter: &EventFilter, limit: usize) -> Option<Vec<Arc<CachedEvent>>> {
        if !self.serves() {
            return None;
        }
        let listing = self
            .listing
            .read()
            .expect("the listing lock is not poisoned");
        if let Serving::WhileLinked(_) = self.serving {
            let age = listing.loaded_at.map(|at| at.elapsed());
            if age.is_none_or(|age| age > CLUSTER_FRESHNESS / 2) {
                self.listing_wanted.notify_one();
            }
            if age.is_none_or(|age| age > CLUSTER_FRESHNESS) {
                return None;
            }
        }
        listing.page(filter, limit)
    }

    /// Call before reading every published event for the listing; hand
    /// it to [`EventCache::listing_loaded`].
    pub fn listing_load(&self) -> ListingLoad {
        ListingLoad {
            generation: self.generation(),
            refused: self.refused.load(Ordering::Acquire),
            at: Instant::now(),
        }
    }

    /// Every published event starting at or after `from` has been read
    /// (`read`) and handed to [`EventCache::loaded`]: from now on the
    /// listing may be answered from memory, unless since `began` the cache
    /// was emptied or had no room for an event. A listed event the load
    /// did not find, and nothing was heard of since it began, is dropped.
    pub fn listing_loaded(&self, began: ListingLoad, from: DateTime<Utc>, read: &HashSet<EventId>) {
        let mut listing = self
            .listing
            .write()
            .expect("the listing lock is not poisoned");
        // Checked under the lock that `forget_all` empties the listing
        // under: checked before it, a forget could empty the listing
        // between the check and this load's marking it complete.
        let now = self.listing_load();
        if (began.generation, began.refused) != (now.generation, now.refused) {
            return;
        }
        let gone = listing.loaded(micros(from), began.at, read);
        drop(listing);
        // Not under the listing's lock: `keep` takes an entry's, then it.
        for id in gone {
            self.entries
                .remove_if(&id, |_, held| held.heard_at < began.at);
        }
    }

    fn serves(&self) -> bool {
        match &self.serving {
            Serving::Always => true,
            Serving::WhileLinked(link) => link.is_connected(),
            Serving::Never => false,
        }
    }

    /// The event, if it may be answered from memory.
    pub fn get(&self, id: EventId) -> Option<Arc<CachedEvent>> {
        if !self.serves() {
            return None;
        }
        let held = self.entries.get(&id).map(|e| Arc::clone(e.value()))?;
        match self.serving {
            Serving::WhileLinked(_) if held.heard_at.elapsed() > CLUSTER_FRESHNESS => None,
            _ => Some(held),
        }
    }

    /// Call before reading the read model; hand it to
    /// [`EventCache::loaded`] with what was read.
    pub fn generation(&self) -> Generation {
        Generation(self.generation.load(Ordering::Acquire))
    }

    /// An event read from the read model, kept unless the cache was
    /// emptied since `began` or already holds something as new.
    pub fn loaded(&self, began: Generation, event: impl Into<Arc<CachedEvent>>) {
        if !self.serves() || began != self.generation() {
            return;
        }
        let event: Arc<CachedEvent> = event.into();
        self.keep(Arc::clone(&event), Replace::AsNew);
        // Everything may have been forgotten while it went in: then it
        // leaves, from the listing too, unless a change replaced it since.
        if began != self.generation()
            && let Entry::Occupied(held) = self.entries.entry(event.id)
            && Arc::ptr_eq(held.get(), &event)
        {
            if event.listed() {
                self.listing
                    .write()
                    .expect("the listing lock is not poisoned")
                    .by_start
                    .remove(&event.listing_key());
            }
            held.remove();
        }
    }

    /// A committed change (or a forwarded command's answer).
    pub fn changed(&self, summary: &EventSummary) {
        if matches!(self.serving, Serving::Never) {
            return;
        }
        let held = self.entries.get(&summary.id).map(|e| e.version);
        if held.is_some_and(|v| v >= summary.version) {
            return;
        }
        self.keep(Arc::new(CachedEvent::from(summary)), Replace::Newer);
    }

    /// Keeps the listing in memory until shutdown: a node alone loads it
    /// at the start, and again when a sweep made room in a cache whose
    /// refusals had left the listing incomplete; a cluster node loads it
    /// whenever [`EventCache::page`] asks, while its link is up; a node
    /// that never serves from memory is never asked. A load that fails is
    /// retried after a second.
    pub async fn keep_listing(&self, store: &dyn Store, mut shutdown: Shutdown) {
        if let Serving::Always = self.serving {
            self.load_listing(store, &mut shutdown).await;
        }
        loop {
            tokio::select! {
                _ = shutdown.requested() => return,
                _ = self.listing_wanted.notified() => {}
            }
            if self.serves() {
                self.load_listing(store, &mut shutdown).await;
            }
        }
    }

    /// Reads every published event from now on into the cache, then lets
    /// the listing be answered from memory (retried until the store
    /// answers, or shutdown).
    async fn load_listing(&self, store: &dyn Store, shutdown: &mut Shutdown) {
        const PAGE: i64 = 1000;
        loop {
            let began = self.listing_load();
            let from = Utc::now();
            let mut filter = EventFilter {
                from: Some(from),
                limit: PAGE,
                ..EventFilter::default()
            };
            let mut found = HashSet::new();
            let read: Result<(), StoreError> = async {
                loop {
                    let rows = store.list_events(&filter).await?;
                    let more = rows.len() as i64 == PAGE;
                    filter.after = rows.last().map(|r| (r.starts_at, r.id));
                    for row in rows {
                        found.insert(EventId::from(row.id));
                        self.loaded(began.generation, CachedEvent::from(row));
                    }
                    if !more {
                        return Ok(());
                    }
                }
            }
            .await;
            match read {
                Ok(()) => {
                    self.listing_fits
                        .store(found.len() < self.max_events, Ordering::Release);
                    return self.listing_loaded(began, from, &found);
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot load the event listing; retrying");
                    if !shutdown.sleep(Duration::from_secs(1)).await {
                        return;
                    }
                }
            }
        }
    }

    /// Changes may have been missed: nothing held is trusted any more.
    ///
    /// The generation moves twice: before the entries are emptied, so no
    /// load begun earlier keeps what it reads from then on, and again with
    /// the listing emptied, under its lock, so that a load begun while they
    /// were being emptied, whose first events may have gone with them, does
    /// not complete the listing either.
    pub fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.clear();
        let mut listing = self
            .listing
            .write()
            .expect("the listing lock is not poisoned");
        *listing = Listing::default();
        self.generation.fetch_add(1, Ordering::AcqRel);
        drop(listing);
        metrics::gauge!("turnout_event_cache_events").set(0.0);
    }

    /// Holds `event` if it is newer than what is held, and there is room
    /// for it (a full cache still follows the events it holds).
    fn keep(&self, event: Arc<CachedEvent>, replace: Replace) {
        if self.entries.len() >= self.max_events && !self.entries.contains_key(&event.id) {
            self.let_go_of_started(Utc::now());
        }
        let full = self.entries.len() >= self.max_events;
        // The entry stays locked while the listing follows it, so the two
        // agree on each event.
        match self.entries.entry(event.id) {
            Entry::Occupied(mut held) => {
                let version = held.get().version;
                let replaces = match replace {
                    Replace::Newer => version < event.version,
                    Replace::AsNew => version <= event.version,
                };
                if replaces {
                    self.list(Some(held.get()), &event);
                    held.insert(event);
                }
            }
            Entry::Vacant(_) if full => {
                metrics::counter!("turnout_event_cache_full_total").increment(1);
                self.refused.fetch_add(1, Ordering::AcqRel);
                // The listing may lack this event from now on.
                self.listing
                    .write()
                    .expect("the listing lock is not poisoned")
                    .complete_from = None;
            }
            Entry::Vacant(room) => {
                self.list(None, &event);
                room.insert(event);
            }
        }
        metrics::gauge!("turnout_event_cache_events").set(self.entries.len() as f64);
    }

    /// A full cache lets go of the events that started more than a day
    /// ago (a read of one loads it again), at most once a minute: a cache
    /// full of upcoming events is not swept on every new one. The listing
    /// from memory then starts after them.
    fn let_go_of_started(&self, now: DateTime<Utc>) {
        const SWEEP_EVERY: i64 = 60_000_000;
        let now = micros(now);
        let last = self.last_eviction.load(Ordering::Acquire);
        if now - (last as i64) < SWEEP_EVERY
            || self
                .last_eviction
                .compare_exchange(last, now as u64, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        let started_before = now - 86_400_000_000;
        self.entries
            .retain(|_, event| event.starts_at >= started_before);
        let mut listing = self
            .listing
            .write()
            .expect("the listing lock is not poisoned");
        listing.by_start = listing.by_start.split_off(&(started_before, Uuid::nil()));
        match &mut listing.complete_from {
            Some(complete) => *complete = (*complete).max(started_before),
            // A refused event left the listing incomplete: with room made,
            // a load can complete it again, if the upcoming events fit.
            None if self.entries.len() < self.max_events
                && self.listing_fits.load(Ordering::Acquire) =>
            {
                self.listing_wanted.notify_one()
            }
            None => {}
        }
        metrics::gauge!("turnout_event_cache_events").set(self.entries.len() as f64);
    }

    fn list(&self, held: Option<&Arc<CachedEvent>>, now: &Arc<CachedEvent>) {
        if matches!(self.serving, Serving::Never)
            || !(now.listed() || held.is_some_and(|h| h.listed()))
        {
            return;
        }
        self.listing
            .write()
            .expect("the listing lock is not poisoned")
            .replace(held.map(|h| &**h), now);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use turnout_actors::domain::{Capacity, EventDetails, Tag, Title, VenueId};

    fn summary(id: EventId, version: u64, active: usize, lifecycle: Lifecycle) -> EventSummary {
        EventSummary {
            id,
            owner: UserId::from(uuid::Uuid::nil()),
            details: EventDetails {
                title: Title::parse("Quiz night").unwrap(),
                description: None,
                venue_id: VenueId::new(),
                starts_at: Utc::now(),
                ends_at: None,
                tags: vec![],
            },
            capacity: Capacity::parse(10).unwrap(),
            policy: Default::default(),
            lifecycle,
            active_count: active,
            offered_count: 0,
            waitlist_count: 0,
            version,
        }
    }

    fn active_count(event: &CachedEvent) -> u64 {
        let body: serde_json::Value = serde_json::from_slice(&event.body()).unwrap();
        body["data"]["active_count"].as_u64().unwrap()
    }

    #[test]
    fn a_newer_change_replaces_what_is_held_and_an_older_one_does_not() {
        let cache = EventCache::new(10, Serving::Always);
        let id = EventId::new();
        cache.changed(&summary(id, 5, 3, Lifecycle::Published));
        cache.changed(&summary(id, 4, 2, Lifecycle::Published));
        assert_eq!(active_count(&cache.get(id).unwrap()), 3, "older: ignored");
        cache.changed(&summary(id, 6, 4, Lifecycle::Published));
        assert_eq!(active_count(&cache.get(id).unwrap()), 4, "newer: taken");
    }

    #[test]
    fn a_load_older_than_a_change_heard_meanwhile_is_not_kept() {
        let cache = EventCache::new(10, Serving::Always);
        let id = EventId::new();
        let began = cache.generation();
        cache.changed(&summary(id, 7, 5, Lifecycle::Published));
        cache.loaded(
            began,
            CachedEvent::from(&summary(id, 6, 4, Lifecycle::Published)),
        );
        assert_eq!(cache.get(id).unwrap().version, 7);
    }

    #[test]
    fn a_load_that_began_before_everything_was_forgotten_is_not_kept() {
        let cache = EventCache::new(10, Serving::Always);
        let id = EventId::new();
        let began = cache.generation();
        cache.forget_all();
        cache.loaded(
            began,
            CachedEvent::from(&summary(id, 6, 4, Lifecycle::Published)),
        );
        assert!(cache.get(id).is_none(), "it may predate a missed change");
        let now = cache.generation();
        cache.loaded(
            now,
            CachedEvent::from(&summary(id, 6, 4, Lifecycle::Published)),
        );
        assert!(cache.get(id).is_some());
    }

    #[test]
    fn a_full_cache_takes_no_new_event_but_follows_those_it_holds() {
        let cache = EventCache::new(1, Serving::Always);
        let (held, other) = (EventId::new(), EventId::new());
        cache.changed(&summary(held, 1, 0, Lifecycle::Published));
        cache.changed(&summary(other, 1, 0, Lifecycle::Published));
        assert!(cache.get(other).is_none());
        cache.changed(&summary(held, 2, 1, Lifecycle::Published));
        assert_eq!(active_count(&cache.get(held).unwrap()), 1);
    }

    #[test]
    fn a_cluster_node_answers_from_memory_only_while_it_hears_every_change() {
        let id = EventId::new();
        let never = EventCache::new(10, Serving::Never);
        never.changed(&summary(id, 1, 0, Lifecycle::Published));
        assert!(never.get(id).is_none());
        assert!(never.is_empty(), "and holds nothing it will never serve");
        let unlinked = EventCache::new(10, Serving::WhileLinked(FanoutLink::unlinked()));
        unlinked.changed(&summary(id, 1, 0, Lifecycle::Published));
        assert!(unlinked.get(id).is_none(), "the link is down");
    }

    #[test]
    fn a_cluster_node_answers_an_entry_only_while_it_is_fresh() {
        let link = FanoutLink::unlinked();
        link.mark(true);
        let cache = EventCache::new(10, Serving::WhileLinked(link));
        let id = EventId::new();
        cache.changed(&summary(id, 1, 0, Lifecycle::Published));
        assert!(cache.get(id).is_some(), "just heard");
        let mut stale = CachedEvent::from(&summary(id, 2, 1, Lifecycle::Published));
        stale.heard_at = Instant::now() - CLUSTER_FRESHNESS * 2;
        cache.keep(Arc::new(stale), Replace::Newer);
        assert!(
            cache.get(id).is_none(),
            "not heard of for too long: read again"
        );
        let now = cache.generation();
        cache.loaded(
            now,
            CachedEvent::from(&summary(id, 2, 1, Lifecycle::Published)),
        );
        assert!(
            cache.get(id).is_some(),
            "the same version read again is fresh"
        );
    }

    /// A published event at `venue`, `hours` from a fixed instant, tagged.
    fn listed(
        id: EventId,
        version: u64,
        venue: VenueId,
        hours: i64,
        tags: &[&str],
    ) -> EventSummary {
        let mut event = summary(id, version, 0, Lifecycle::Published);
        event.details.venue_id = venue;
        event.details.starts_at = epoch() + chrono::Duration::hours(hours);
        event.details.tags = Tag::parse_list(tags).unwrap();
        event
    }

    fn epoch() -> DateTime<Utc> {
        "2027-01-01T00:00:00Z".parse().unwrap()
    }

    fn upcoming(limit: i64) -> EventFilter {
        EventFilter {
            from: Some(epoch()),
            limit,
            ..EventFilter::default()
        }
    }

    fn ids(page: &[Arc<CachedEvent>]) -> Vec<EventId> {
        page.iter().map(|e| e.id).collect()
    }

    /// A node alone whose listing has been loaded (with nothing in it).
    fn loaded_listing() -> EventCache {
        let cache = EventCache::new(100, Serving::Always);
        let began = cache.listing_load();
        cache.listing_loaded(began, epoch(), &HashSet::new());
        cache
    }

    #[test]
    fn the_listing_is_answered_from_memory_only_once_loaded() {
        let cache = EventCache::new(100, Serving::Always);
        let id = EventId::new();
        cache.changed(&listed(id, 1, VenueId::new(), 1, &[]));
        assert!(cache.page(&upcoming(10), 10).is_none(), "not loaded yet");
        let began = cache.listing_load();
        cache.listing_loaded(began, epoch(), &HashSet::from([id]));
        assert_eq!(ids(&cache.page(&upcoming(10), 10).unwrap()), vec![id]);
        let earlier = EventFilter {
            from: Some(epoch() - chrono::Duration::hours(1)),
            ..upcoming(10)
        };
        assert!(cache.page(&earlier, 10).is_none(), "before what was loaded");
    }

    /// A forget on another thread races a load, let go at a different
    /// point of it each round (or not at all, one round in a few); once
    /// both are done, the listing is either not answered from memory or
    /// holds every event the load read, each of them held, and a round
    /// without a forget is answered. This is the protocol the checks under
    /// the listing's lock and the generation moved twice keep; the window
    /// they close (a forget between a check and its effect) is a few
    /// instructions wide, so a run hits it only now and then.
    #[test]
    fn a_load_that_races_a_forget_leaves_no_listing_short_of_what_it_read() {
        use std::sync::Barrier;
        use std::sync::atomic::AtomicBool;
        let cache = EventCache::new(1_000, Serving::Always);
        let venue = VenueId::new();
        let events: Vec<_> = (0..20)
            .map(|hour| listed(EventId::new(), 1, venue, hour, &[]))
            .collect();
        let (go, done) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let skip = Arc::new(AtomicBool::new(false));
        let rounds = 2_000;
        let forgetter = std::thread::spawn({
            let (cache, go, done, skip) = (cache.clone(), go.clone(), done.clone(), skip.clone());
            move || {
                for _ in 0..rounds {
                    go.wait();
                    if !skip.load(Ordering::Acquire) {
                        cache.forget_all();
                    }
                    done.wait();
                }
            }
        });
        for round in 0..rounds {
            let let_go_at = round % (events.len() + 2);
            let forgets = let_go_at <= events.len();
            skip.store(!forgets, Ordering::Release);
            let began = cache.listing_load();
            let mut read = HashSet::new();
            for (i, event) in events.iter().enumerate() {
                if i == let_go_at {
                    go.wait();
                }
                cache.loaded(began.generation, CachedEvent::from(event));
                read.insert(event.id);
            }
            if let_go_at >= events.len() {
                go.wait();
            }
            cache.listing_loaded(began, epoch(), &read);
            done.wait();
            match cache.page(&upcoming(100), 100) {
                Some(page) => {
                    assert_eq!(page.len(), events.len(), "round {round}: a listing short");
                    assert!(
                        page.iter().all(|e| cache.get(e.id).is_some()),
                        "round {round}"
                    );
                }
                None => assert!(forgets, "round {round}: no forget, yet not answered"),
            }
            // The next round's load starts afresh.
            cache.forget_all();
        }
        forgetter.join().unwrap();
    }

    #[test]
    fn a_load_during_which_the_cache_was_emptied_or_full_does_not_complete_the_listing() {
        let cache = EventCache::new(1, Serving::Always);
        let began = cache.listing_load();
        cache.forget_all();
        cache.listing_loaded(began, epoch(), &HashSet::new());
        assert!(cache.page(&upcoming(10), 10).is_none(), "emptied meanwhile");

        let began = cache.listing_load();
        cache.changed(&listed(EventId::new(), 1, VenueId::new(), 1, &[]));
        cache.changed(&listed(EventId::new(), 1, VenueId::new(), 2, &[]));
        cache.listing_loaded(began, epoch(), &HashSet::new());
        assert!(
            cache.page(&upcoming(10), 10).is_none(),
            "an event found no room"
        );
    }

    #[test]
    fn a_full_cache_stops_answering_the_listing() {
        let cache = EventCache::new(1, Serving::Always);
        let began = cache.listing_load();
        cache.listing_loaded(began, epoch(), &HashSet::new());
        cache.changed(&listed(EventId::new(), 1, VenueId::new(), 1, &[]));
        assert!(cache.page(&upcoming(10), 10).is_some());
        cache.changed(&listed(EventId::new(), 1, VenueId::new(), 2, &[]));
        assert!(cache.page(&upcoming(10), 10).is_none(), "it may lack one");
    }

    #[test]
    fn a_cancelled_event_leaves_the_listing_and_a_moved_one_moves() {
        let cache = loaded_listing();
        let venue = VenueId::new();
        let (moved, cancelled) = (EventId::new(), EventId::new());
        cache.changed(&listed(moved, 1, venue, 1, &[]));
        cache.changed(&listed(cancelled, 1, venue, 2, &[]));
        let mut gone = listed(cancelled, 2, venue, 2, &[]);
        gone.lifecycle = Lifecycle::Cancelled;
        cache.changed(&gone);
        cache.changed(&listed(moved, 2, venue, 5, &[]));
        let page = cache.page(&upcoming(10), 10).unwrap();
        assert_eq!(ids(&page), vec![moved]);
        assert_eq!(
            page[0].starts_at,
            micros(epoch() + chrono::Duration::hours(5))
        );
    }

    /// A linked cluster node whose listing was loaded `ago`.
    fn cluster_listing(link: &FanoutLink, ago: Duration) -> EventCache {
        let cache = EventCache::new(10, Serving::WhileLinked(link.clone()));
        let mut began = cache.listing_load();
        began.at -= ago;
        cache.listing_loaded(began, epoch(), &HashSet::new());
        cache
    }

    #[tokio::test]
    async fn a_cluster_node_lists_from_memory_while_the_load_is_fresh_and_asks_for_the_next() {
        let link = FanoutLink::unlinked();
        link.mark(true);
        let fresh = cluster_listing(&link, Duration::ZERO);
        let id = EventId::new();
        fresh.changed(&listed(id, 1, VenueId::new(), 1, &[]));
        assert_eq!(ids(&fresh.page(&upcoming(10), 10).unwrap()), vec![id]);
        let nobody_asked =
            tokio::time::timeout(Duration::from_millis(20), fresh.listing_wanted.notified()).await;
        assert!(nobody_asked.is_err(), "a fresh load needs no other");

        let aging = cluster_listing(&link, CLUSTER_FRESHNESS * 3 / 4);
        assert!(aging.page(&upcoming(10), 10).is_some(), "still fresh");
        // `notify_one` leaves a permit when nobody waits yet.
        let next =
            tokio::time::timeout(Duration::from_millis(20), aging.listing_wanted.notified()).await;
        assert!(next.is_ok(), "halfway through, the next load is asked for");

        let stale = cluster_listing(&link, CLUSTER_FRESHNESS * 2);
        assert!(
            stale.page(&upcoming(10), 10).is_none(),
            "too old: the database"
        );

        link.mark(false);
        assert!(
            fresh.page(&upcoming(10), 10).is_none(),
            "the link is down: changes may be missed"
        );
    }

    #[test]
    fn a_load_drops_a_listed_event_it_did_not_find_unless_heard_of_since() {
        let link = FanoutLink::unlinked();
        link.mark(true);
        let cache = cluster_listing(&link, Duration::ZERO);
        let venue = VenueId::new();
        let (kept, lost, heard) = (EventId::new(), EventId::new(), EventId::new());
        for id in [kept, lost, heard] {
            cache.changed(&listed(id, 1, venue, 1, &[]));
        }
        let began = cache.listing_load();
        // Cancelled by a node that died before it could tell anyone: the
        // load does not find `lost`. `heard` was published during the load.
        cache.changed(&listed(heard, 2, venue, 2, &[]));
        cache.listing_loaded(began, epoch(), &HashSet::from([kept]));
        let page = cache.page(&upcoming(10), 10).unwrap();
        assert_eq!(ids(&page), vec![kept, heard]);
        assert!(cache.get(lost).is_none(), "gone from the details too");
    }

    #[test]
    fn a_listed_event_renders_as_its_view() {
        let cache = loaded_listing();
        cache.changed(&listed(EventId::new(), 1, VenueId::new(), 1, &["jazz"]));
        let event = &cache.page(&upcoming(10), 10).unwrap()[0];
        let whole: serde_json::Value = serde_json::from_slice(&event.body()).unwrap();
        let view: serde_json::Value = serde_json::from_slice(&event.view_json()).unwrap();
        assert_eq!(whole["data"], view);
    }

    #[test]
    fn a_full_cache_lets_go_of_events_that_started_days_ago() {
        let cache = EventCache::new(2, Serving::Always);
        let began = cache.listing_load();
        cache.listing_loaded(began, Utc::now(), &HashSet::new());
        let venue = VenueId::new();
        let (past, soon, later) = (EventId::new(), EventId::new(), EventId::new());
        let at = |id, days: i64| {
            let mut event = listed(id, 1, venue, 0, &[]);
            event.details.starts_at = Utc::now() + chrono::Duration::days(days);
            event
        };
        cache.changed(&at(past, -3));
        cache.changed(&at(soon, 1));
        cache.changed(&at(later, 2));
        assert!(cache.get(past).is_none(), "let go of");
        assert!(cache.get(later).is_some(), "taken in its place");
        let upcoming = EventFilter {
            from: Some(Utc::now()),
            limit: 10,
            ..EventFilter::default()
        };
        assert_eq!(ids(&cache.page(&upcoming, 10).unwrap()), vec![soon, later]);
        let from_the_past = EventFilter {
            from: Some(Utc::now() - chrono::Duration::days(4)),
            ..upcoming
        };
        assert!(
            cache.page(&from_the_past, 10).is_none(),
            "the listing from memory starts after what it let go of"
        );
    }

    /// A cache of two, its listing loaded, holding an event that started
    /// days ago and one tomorrow, that refused the next (swept a moment
    /// before); then a sweep's turn comes with another new event. Whether
    /// a load of the listing was asked for.
    async fn refused_then_swept(listing_fits: bool) -> bool {
        let cache = EventCache::new(2, Serving::Always);
        let began = cache.listing_load();
        cache.listing_loaded(began, Utc::now(), &HashSet::new());
        cache.listing_fits.store(listing_fits, Ordering::Release);
        let venue = VenueId::new();
        let at = |days: i64| {
            let mut event = listed(EventId::new(), 1, venue, 0, &[]);
            event.details.starts_at = Utc::now() + chrono::Duration::days(days);
            event
        };
        cache.changed(&at(-3));
        cache.changed(&at(1));
        cache
            .last_eviction
            .store(micros(Utc::now()) as u64, Ordering::Release);
        cache.changed(&at(2));
        let upcoming = EventFilter {
            from: Some(Utc::now()),
            limit: 10,
            ..EventFilter::default()
        };
        assert!(
            cache.page(&upcoming, 10).is_none(),
            "an event found no room"
        );
        cache.last_eviction.store(0, Ordering::Release);
        cache.changed(&at(3));
        assert_eq!(cache.len(), 2, "the sweep made room for the new one");
        tokio::time::timeout(Duration::from_millis(20), cache.listing_wanted.notified())
            .await
            .is_ok()
    }

    /// A full cache that refused an event no longer answers the listing;
    /// once a sweep makes room, it asks for the listing to be read again,
    /// rather than leave the listing to the database until a restart —
    /// unless the upcoming events outnumber the cache, when such a load
    /// would be refused again.
    #[tokio::test]
    async fn a_listing_left_incomplete_by_a_full_cache_is_read_again_once_there_is_room() {
        assert!(refused_then_swept(true).await, "a load is asked for");
        assert!(
            !refused_then_swept(false).await,
            "no load that could not complete"
        );
    }

    proptest::proptest! {
        /// Whatever the events and the query, a page from memory is what
        /// the read model's query gives: the published events from `from`
        /// (and after the cursor) up to `to`, of the venue and tag asked
        /// for, in (starts_at, id) order, at most `limit`.
        #[test]
        fn a_page_from_memory_is_the_query_over_the_same_events(
            events in proptest::collection::vec(
                (0i64..48, 0usize..3, proptest::collection::vec(0usize..3, 0..3), 0u8..4),
                0..40,
            ),
            venue in proptest::option::of(0usize..3),
            tag in proptest::option::of(0usize..3),
            to in proptest::option::of(0i64..60),
            cursor_at in proptest::option::of(0usize..40),
            limit in 1usize..10,
        ) {
            const TAGS: [&str; 3] = ["jazz", "quiz", "kids"];
            let venues = [VenueId::new(), VenueId::new(), VenueId::new()];
            let cache = loaded_listing();
            let mut all = Vec::new();
            for (hours, venue, tags, lifecycle) in &events {
                let tags: Vec<&str> = tags.iter().map(|t| TAGS[*t]).collect();
                let mut event = listed(EventId::new(), 1, venues[*venue], *hours - 2, &tags);
                event.lifecycle = [Lifecycle::Published, Lifecycle::Published, Lifecycle::Draft, Lifecycle::Cancelled][*lifecycle as usize];
                cache.changed(&event);
                all.push(CachedEvent::from(&event));
            }
            all.sort_by_key(CachedEvent::listing_key);
            let after = cursor_at.and_then(|i| all.get(i)).map(CachedEvent::listing_key);
            let filter = EventFilter {
                venue_id: venue.map(|v| venues[v]),
                tag: tag.map(|t| TAGS[t].to_owned()),
                to: to.map(|h| epoch() + chrono::Duration::hours(h)),
                after,
                ..upcoming(limit as i64)
            };
            let from = micros(epoch());
            let expected: Vec<EventId> = all
                .iter()
                .filter(|e| e.view.status == Lifecycle::Published)
                .filter(|e| e.starts_at >= from)
                .filter(|e| filter.to.is_none_or(|to| e.starts_at < micros(to)))
                .filter(|e| after.is_none_or(|a| e.listing_key() > a))
                .filter(|e| e.matches(&filter))
                .take(limit)
                .map(|e| e.id)
                .collect();
            proptest::prop_assert_eq!(ids(&cache.page(&filter, limit).unwrap()), expected);
        }
    }

    #[test]
    fn a_draft_is_visible_to_its_owner_only() {
        let draft = CachedEvent::from(&summary(EventId::new(), 1, 0, Lifecycle::Draft));
        assert!(draft.visible_to(Some(UserId::from(uuid::Uuid::nil()))));
        assert!(!draft.visible_to(Some(UserId::new())));
        assert!(!draft.visible_to(None));
        let published = CachedEvent::from(&summary(EventId::new(), 2, 0, Lifecycle::Published));
        assert!(published.visible_to(None));
    }
}

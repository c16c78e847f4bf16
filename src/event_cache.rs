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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use serde::Serialize;
use turnout_actors::domain::{EventId, Lifecycle, UserId};
use turnout_actors::store::EventSummary;

use crate::fanout_link::FanoutLink;
use crate::store::EventRecord;
use crate::views::EventView;

/// One event as `GET /v1/events/{id}` answers it.
#[derive(Debug, Clone)]
pub struct CachedEvent {
    pub id: EventId,
    /// The event's stream version: a newer one replaces an older.
    pub version: u64,
    owner: UserId,
    lifecycle: Lifecycle,
    /// The 200 answer's body, rendered once per change.
    pub body: Bytes,
    /// When this node heard or read it.
    heard_at: Instant,
}

#[derive(Serialize)]
struct Envelope<'a> {
    data: &'a EventView,
}

impl CachedEvent {
    fn rendered(id: EventId, version: u64, owner: UserId, view: &EventView) -> Self {
        let body =
            serde_json::to_vec(&Envelope { data: view }).expect("an event view always serializes");
        Self {
            id,
            version,
            owner,
            lifecycle: view.status,
            body: Bytes::from(body),
            heard_at: Instant::now(),
        }
    }

    /// Drafts are seen by their owner only.
    pub fn visible_to(&self, user: Option<UserId>) -> bool {
        self.lifecycle != Lifecycle::Draft || user == Some(self.owner)
    }
}

impl From<&EventSummary> for CachedEvent {
    fn from(summary: &EventSummary) -> Self {
        Self::rendered(
            summary.id,
            summary.version,
            summary.owner,
            &EventView::from(summary),
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
        Self::rendered(id, version, owner, &EventView::from(record))
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

/// The events held, and which of them may be answered from memory.
#[derive(Clone)]
pub struct EventCache {
    entries: Arc<DashMap<EventId, Arc<CachedEvent>>>,
    /// Bumped by [`EventCache::forget_all`]: a load from an older
    /// generation may predate a missed change, so it is not kept.
    generation: Arc<AtomicU64>,
    max_events: usize,
    serving: Serving,
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

impl EventCache {
    pub fn new(max_events: usize, serving: Serving) -> Self {
        Self {
            entries: Arc::default(),
            generation: Arc::default(),
            max_events,
            serving,
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
    pub fn loaded(&self, began: Generation, event: CachedEvent) {
        if !self.serves() || began != self.generation() {
            return;
        }
        let id = event.id;
        self.keep(event, Replace::AsNew);
        // Everything may have been forgotten while it went in.
        if began != self.generation() {
            self.entries.remove(&id);
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
        self.keep(CachedEvent::from(summary), Replace::Newer);
    }

    /// Changes may have been missed: nothing held is trusted any more.
    pub fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.clear();
        metrics::gauge!("turnout_event_cache_events").set(0.0);
    }

    /// Holds `event` if it is newer than what is held, and there is room
    /// for it (a full cache still follows the events it holds).
    fn keep(&self, event: CachedEvent, replace: Replace) {
        let full = self.entries.len() >= self.max_events;
        match self.entries.entry(event.id) {
            Entry::Occupied(mut held) => {
                let version = held.get().version;
                let replaces = match replace {
                    Replace::Newer => version < event.version,
                    Replace::AsNew => version <= event.version,
                };
                if replaces {
                    held.insert(Arc::new(event));
                }
            }
            Entry::Vacant(_) if full => {
                metrics::counter!("turnout_event_cache_full_total").increment(1);
            }
            Entry::Vacant(room) => {
                room.insert(Arc::new(event));
            }
        }
        metrics::gauge!("turnout_event_cache_events").set(self.entries.len() as f64);
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
    use turnout_actors::domain::{Capacity, EventDetails, Title, VenueId};

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
            lifecycle,
            active_count: active,
            waitlist_count: 0,
            version,
        }
    }

    fn active_count(event: &CachedEvent) -> u64 {
        let body: serde_json::Value = serde_json::from_slice(&event.body).unwrap();
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
        cache.keep(stale, Replace::Newer);
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

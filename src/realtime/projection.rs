//! What a channel shows and how a committed change moves it — pure: no
//! actor, no clock but the `now` it is given, no I/O. The hub that owns a
//! projection numbers its updates, keeps their history and delivers them.
//!
//! An `event:<id>` channel shows one event (none while it does not exist or
//! is a draft). A `venue:<id>` or `feed…` channel lists the upcoming
//! published events it concerns; an event leaves the list when it starts,
//! is cancelled or moves away. A listing holds at most [`LISTING_LIMIT`]
//! events, about the soonest: a later one crowds nothing out, an earlier
//! one crowds out the last (a listed event moved later stays, and one that
//! leaves is not replaced until a change brings another). A feed tells its subscribers only what a city
//! feed should: new, changed, cancelled, removed, filling up, full — not
//! every join.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::channel::Channel;
use crate::store::EventRecord;
use crate::views::EventView;
use turnout_actors::changes::EventChange;
use turnout_actors::domain::{GeoPoint, Lifecycle, Tag};
use turnout_actors::store::EventSummary;

/// The most events a venue or feed channel lists, the soonest: what its
/// hub loads, and what it keeps however many are published while it runs.
pub const LISTING_LIMIT: usize = 500;

/// How late a change may arrive behind a newer one of the same event (a
/// shard moved between two nodes) and still be known for old news by a
/// listing that does not show the event — by the version it keeps, or,
/// for this long after its load, by the read model. Far past the seconds
/// the nodes' change feed takes; a node that misses changes reloads its
/// hubs.
pub const LATE_CHANGES_WITHIN: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// What a projection remembers of an event's last change.
#[derive(Debug, Clone, Copy)]
struct Seen {
    version: i64,
    starts_at: DateTime<Utc>,
    /// When the change was applied (the `now` it was given).
    at: DateTime<Utc>,
}

enum Shown {
    /// One event; `None` while it does not exist or is a draft.
    Event(Option<EventView>),
    /// Upcoming published events by id.
    Listing(HashMap<Uuid, EventView>),
}

pub struct Projection {
    channel: Channel,
    shown: Shown,
    /// The stream version each event this channel concerns was last seen
    /// at: anything not newer is old news (changes from other nodes may
    /// arrive late). A listing keeps none for a draft; it forgets an event
    /// that started, as no change can list it again, and one it does not
    /// list once [`LATE_CHANGES_WITHIN`] has passed since its last change
    /// (a cancelled event's version would otherwise be kept until its
    /// start, years ahead maybe, and anyone may cancel events by the
    /// thousand).
    versions: HashMap<Uuid, Seen>,
    /// How many versions may be held before those no longer needed are
    /// dropped: twice what a drop left, so that it is not a scan per change.
    prune_versions_at: usize,
    /// Events the last change crowded out of a full listing, to be told.
    crowded_out: Vec<EventView>,
    /// Venue positions, for a feed filtered by radius.
    venues: HashMap<Uuid, GeoPoint>,
    /// When the read model's events were taken in (`load`).
    loaded_at: Option<DateTime<Utc>>,
    /// The listing changed without an update to tell it (a feed tells a
    /// listed event's counts only as they cross a threshold): a snapshot
    /// built before is stale ([`Projection::take_silent_change`]).
    changed_silently: bool,
}

impl Projection {
    /// An empty projection of `channel`, before anything is loaded.
    pub fn new(channel: Channel) -> Self {
        let shown = match channel {
            Channel::Event(_) => Shown::Event(None),
            _ => Shown::Listing(HashMap::new()),
        };
        Self {
            channel,
            shown,
            versions: HashMap::new(),
            prune_versions_at: 4 * LISTING_LIMIT,
            venues: HashMap::new(),
            crowded_out: Vec::new(),
            loaded_at: None,
            changed_silently: false,
        }
    }

    /// Whether the listing changed without an update since last asked.
    pub fn take_silent_change(&mut self) -> bool {
        std::mem::take(&mut self.changed_silently)
    }

    /// Takes the read model's events (and, for a radius feed, the venues'
    /// positions), read at `now`.
    pub fn load(
        &mut self,
        records: Vec<EventRecord>,
        venues: Vec<(Uuid, f64, f64)>,
        now: DateTime<Utc>,
    ) {
        self.loaded_at = Some(now);
        self.venues = venues
            .into_iter()
            .map(|(id, lat, lon)| (id, GeoPoint { lat, lon }))
            .collect();
        for record in records {
            if !self.near_enough(record.venue_id) {
                continue;
            }
            let starts_at = crate::store::from_micros(record.starts_at);
            self.remember(record.id, record.version, starts_at, now);
            let view = EventView::from(record);
            match &mut self.shown {
                Shown::Event(current) => {
                    *current = Some(view).filter(|v| v.status != Lifecycle::Draft)
                }
                Shown::Listing(events) => {
                    events.insert(view.id, view);
                }
            }
        }
    }

    /// A snapshot's `data`: `{"event": …}` or `{"events": [… by start]}`.
    pub fn snapshot(&self) -> Value {
        match &self.shown {
            Shown::Event(event) => json!({ "event": event }),
            Shown::Listing(events) => {
                let mut listed: Vec<&EventView> = events.values().collect();
                listed.sort_by_key(|e| (e.starts_at, e.id));
                json!({ "events": listed })
            }
        }
    }

    /// An `event:<id>` channel whose event does not exist (or is a draft).
    pub fn shows_no_event(&self) -> bool {
        matches!(self.shown, Shown::Event(None))
    }

    /// Whether a change at `venue` can be applied only once the venue's
    /// position is known (a radius feed that has not seen it).
    pub fn needs_venue(&self, venue: Uuid) -> bool {
        matches!(self.channel, Channel::Feed { near: Some(_), .. })
            && !self.venues.contains_key(&venue)
    }

    pub fn locate(&mut self, venue: Uuid, at: GeoPoint) {
        self.venues.insert(venue, at);
    }

    /// Whether `change` would list an event this listing has not seen since
    /// it loaded, less than [`LATE_CHANGES_WITHIN`] ago: the load may have
    /// read a newer state of the event than the change's — cancelled, or
    /// moved away, after a shard moved and the old holder's change came
    /// late — and a listing keeps no version of what it does not list. The
    /// read model then says whether the change is old news
    /// ([`Projection::drop_if_outdated`]). (Not only for a change committed
    /// before the load: its `committed_at` is when its node heard the
    /// commit, which a node paused after its commit hears late.)
    pub fn needs_read_model(&self, change: &EventChange, now: DateTime<Utc>) -> bool {
        let summary = &change.summary;
        let Shown::Listing(events) = &self.shown else {
            return false;
        };
        let id = summary.id.as_uuid();
        let recently_loaded = self
            .loaded_at
            .is_some_and(|at| now - at < LATE_CHANGES_WITHIN);
        recently_loaded
            && summary.lifecycle == Lifecycle::Published
            && summary.details.starts_at > now
            && !self.versions.contains_key(&id)
            && self.concerns(summary)
            && (events.len() < LISTING_LIMIT
                || latest(events).is_some_and(|last| (summary.details.starts_at, id) < last))
    }

    /// Drops `change` if `record`, the read model's row of its event (read
    /// because [`Projection::needs_read_model`] asked), makes it old news:
    /// newer, and in a state this listing would not show (cancelled, moved
    /// away, started). The row's version is kept then, so that the change
    /// and any older one list nothing. A newer state the listing would show
    /// lets the change in: the changes after it are on their way here.
    /// Whether it dropped the change.
    pub fn drop_if_outdated(
        &mut self,
        change: &EventChange,
        record: &EventRecord,
        now: DateTime<Utc>,
    ) -> bool {
        if record.version <= change.summary.version as i64 {
            return false;
        }
        let starts_at = crate::store::from_micros(record.starts_at);
        let tagged = |tag: &Tag| record.tags.iter().any(|t| t == tag.as_str());
        let shown = record.status == Lifecycle::Published
            && starts_at > now
            && self.concerns_at(record.id, record.venue_id, tagged);
        if !shown {
            self.remember(record.id, record.version, starts_at, now);
        }
        !shown
    }

    /// Folds a change in; the update's `data` if subscribers should hear of
    /// it.
    pub fn apply(&mut self, change: &EventChange, now: DateTime<Utc>) -> Option<Value> {
        let summary = &change.summary;
        let (id, version) = (summary.id.as_uuid(), summary.version as i64);
        if self
            .versions
            .get(&id)
            .is_some_and(|seen| seen.version >= version)
        {
            return None;
        }
        let concerned = self.concerns(summary);
        if !concerned && !self.lists(id) {
            return None;
        }
        // Rendered only for a change this channel shows: a feed hub is
        // offered every change.
        let view = &EventView::from(summary);
        let lifecycle = summary.lifecycle;
        // A listing remembers an event it does not list, too (a change can
        // overtake an older one after a shard moves: a cancellation must not
        // let the publishing behind it list the event), but not a draft,
        // which anyone may make by the thousand.
        if lifecycle != Lifecycle::Draft || matches!(self.shown, Shown::Event(_)) {
            self.remember(id, version, view.starts_at, now);
        }
        let kinds: Vec<&str> = change.kinds().collect();
        match &mut self.shown {
            Shown::Event(current) => {
                if lifecycle == Lifecycle::Draft {
                    return None;
                }
                *current = Some(view.clone());
                Some(json!({ "event": view, "kinds": kinds }))
            }
            Shown::Listing(events) => {
                // A full listing takes an event not listed yet only if it
                // starts sooner than the last listed, which it crowds out.
                // (The last is looked for only then: it is a walk over the
                // listing, and a busy city's joins mostly concern events
                // the listing does not show.)
                let may_list =
                    concerned && lifecycle == Lifecycle::Published && view.starts_at > now;
                let full =
                    may_list && events.len() >= LISTING_LIMIT && !events.contains_key(&view.id);
                let last = if full { latest(events) } else { None };
                let fits = !full || last.is_some_and(|last| (view.starts_at, view.id) < last);
                let listed = may_list && fits;
                let before = if listed {
                    events.insert(view.id, view.clone())
                } else {
                    events.remove(&view.id)
                };
                if !listed && before.is_none() {
                    // Never listed here (a draft, say): nothing to tell.
                    return None;
                }
                if events.len() > LISTING_LIMIT
                    && let Some((_, last)) = last
                {
                    let last = events.remove(&last).expect("listed");
                    self.crowded_out.push(last);
                }
                let reason = match &self.channel {
                    Channel::Venue(_) => Some("changed"),
                    _ => feed_reason(before.as_ref(), view, &kinds, listed),
                };
                self.changed_silently |= reason.is_none();
                Some(listing_update(view, &kinds, listed, reason?))
            }
        }
    }

    /// Keeps `version` as the last seen of event `id`; first, past a
    /// bound, drops the versions no longer needed.
    fn remember(&mut self, id: Uuid, version: i64, starts_at: DateTime<Utc>, now: DateTime<Utc>) {
        if self.versions.len() >= self.prune_versions_at {
            let late = now - LATE_CHANGES_WITHIN;
            let listed = |id: &Uuid| matches!(&self.shown, Shown::Listing(events) if events.contains_key(id));
            self.versions
                .retain(|id, seen| seen.starts_at > now && (seen.at > late || listed(id)));
            self.prune_versions_at = (2 * self.versions.len()).max(4 * LISTING_LIMIT);
        }
        let seen = Seen {
            version,
            starts_at,
            at: now,
        };
        self.versions.insert(id, seen);
    }

    /// The events the last change crowded out of a full listing, each with
    /// an update saying it left the list (`removed`).
    pub fn take_crowded_out(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.crowded_out)
            .iter()
            .map(|view| listing_update(view, &[], false, "removed"))
            .collect()
    }

    /// When the earliest listed event starts, if any is listed.
    pub fn next_start(&self) -> Option<DateTime<Utc>> {
        match &self.shown {
            Shown::Listing(events) => events.values().map(|e| e.starts_at).min(),
            Shown::Event(_) => None,
        }
    }

    pub fn lists(&self, event: Uuid) -> bool {
        self.listed_start(event).is_some()
    }

    /// When `event` starts, if this listing shows it.
    pub fn listed_start(&self, event: Uuid) -> Option<DateTime<Utc>> {
        match &self.shown {
            Shown::Listing(events) => events.get(&event).map(|e| e.starts_at),
            Shown::Event(_) => None,
        }
    }

    /// Takes the events that have started by `now` off the listing; an
    /// update for each, in start order.
    pub fn take_started(&mut self, now: DateTime<Utc>) -> Vec<Value> {
        let Shown::Listing(events) = &mut self.shown else {
            return Vec::new();
        };
        let mut started: Vec<EventView> = events
            .values()
            .filter(|e| e.starts_at <= now)
            .cloned()
            .collect();
        started.sort_by_key(|e| (e.starts_at, e.id));
        for view in &started {
            events.remove(&view.id);
        }
        // Never listed again: no late change can bring them back.
        self.versions.retain(|_, seen| seen.starts_at > now);
        started
            .iter()
            .map(|view| listing_update(view, &[], false, "started"))
            .collect()
    }

    fn concerns(&self, event: &EventSummary) -> bool {
        let details = &event.details;
        self.concerns_at(event.id.as_uuid(), details.venue_id.as_uuid(), |tag| {
            details.tags.contains(tag)
        })
    }

    /// Whether this channel shows event `id`, at `venue`, `tagged` so.
    fn concerns_at(&self, id: Uuid, venue: Uuid, tagged: impl Fn(&Tag) -> bool) -> bool {
        match &self.channel {
            Channel::Event(event) => event.as_uuid() == id,
            Channel::Venue(here) => here.as_uuid() == venue,
            Channel::Feed { tag, .. } => tag.as_ref().is_none_or(tagged) && self.near_enough(venue),
        }
    }

    /// Whether an event at `venue` is within a radius feed's circle (always,
    /// for any other channel).
    fn near_enough(&self, venue: Uuid) -> bool {
        match &self.channel {
            Channel::Feed {
                near: Some(near), ..
            } => self.venues.get(&venue).is_some_and(|p| near.contains(*p)),
            _ => true,
        }
    }
}

/// The start and id of the listed event that starts last (the greatest id
/// among those starting together).
fn latest(events: &HashMap<Uuid, EventView>) -> Option<(DateTime<Utc>, Uuid)> {
    events.values().map(|e| (e.starts_at, e.id)).max()
}

/// A venue or feed update: the event, what changed, whether it is (still)
/// listed, and why subscribers hear of it.
fn listing_update(view: &EventView, kinds: &[&str], listed: bool, reason: &str) -> Value {
    json!({ "event": view, "kinds": kinds, "listed": listed, "reason": reason })
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
    let Some(before) = before else {
        // Listed now, not before, and not just published: a listing full at
        // load (`LISTING_LIMIT`), or a `published` change overtaken by a
        // later one after a shard moved. A later snapshot lists it, so
        // subscribers already here are told too.
        return listed.then_some("added");
    };
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

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use turnout_actors::domain::{
        Capacity, Command, EventDetails, EventId, EventState, Seats, Tag, Title, UserId, VenueId,
        WaitlistPolicy, decide, evolve,
    };

    use super::*;

    /// An event driven through the real decider, so every change a test
    /// applies is one the actors could commit.
    struct Event {
        owner: UserId,
        state: Option<EventState>,
    }

    impl Event {
        fn new() -> Self {
            Self {
                owner: UserId::new(),
                state: None,
            }
        }

        fn run(&mut self, command: Command) -> EventChange {
            let facts = decide(self.state.as_ref(), &command).expect("the command is allowed");
            self.state = facts.iter().fold(self.state.take(), evolve);
            EventChange {
                summary: EventSummary::from(self.state.as_ref().unwrap()),
                facts,
                moves: Vec::new(),
                committed_at: Utc::now(),
            }
        }

        fn create(&mut self, venue: VenueId, capacity: i64, tag: &str) -> EventChange {
            self.create_starting(venue, capacity, tag, Utc::now() + Duration::days(7))
        }

        fn create_starting(
            &mut self,
            venue: VenueId,
            capacity: i64,
            tag: &str,
            starts_at: DateTime<Utc>,
        ) -> EventChange {
            let details = EventDetails {
                title: Title::parse("Late jazz").unwrap(),
                description: None,
                venue_id: venue,
                starts_at,
                ends_at: None,
                tags: vec![Tag::parse(tag).unwrap()],
            };
            self.run(Command::Create {
                id: EventId::new(),
                owner: self.owner,
                details,
                capacity: Capacity::parse(capacity).unwrap(),
                policy: WaitlistPolicy::default(),
                at: Utc::now(),
            })
        }

        fn publish(&mut self) -> EventChange {
            self.run(Command::Publish {
                by: self.owner,
                at: Utc::now(),
            })
        }

        fn cancel(&mut self) -> EventChange {
            self.run(Command::Cancel {
                by: self.owner,
                at: Utc::now(),
            })
        }

        fn join(&mut self) -> EventChange {
            self.run(Command::Join {
                user: UserId::new(),
                seats: Seats::default(),
                at: Utc::now(),
            })
        }

        fn id(&self) -> EventId {
            self.state.as_ref().unwrap().id
        }
    }

    fn feed(name: &str) -> Projection {
        Projection::new(Channel::parse(name).unwrap())
    }

    /// The read model's row of the event as `change` left it.
    fn record(change: &EventChange) -> EventRecord {
        let view = EventView::from(&change.summary);
        let micros = crate::store::micros;
        EventRecord {
            id: view.id,
            owner_id: view.owner_id,
            venue_id: view.venue_id,
            title: view.title,
            description: view.description,
            starts_at: micros(view.starts_at),
            ends_at: view.ends_at.map(micros),
            capacity: view.capacity,
            status: view.status,
            active_count: view.active_count,
            offered_count: view.offered_seats,
            waitlist_count: view.waitlist_count,
            waitlist_mode: view.waitlist.waitlist_mode,
            offer_hold_secs: view.waitlist.offer_hold_secs,
            max_party: view.waitlist.max_party,
            waitlist_fill: view.waitlist.waitlist_fill,
            version: change.summary.version as i64,
            created_at: micros(change.committed_at),
            updated_at: micros(change.committed_at),
            tags: view.tags,
        }
    }

    /// A listing that loaded after the new holder of a moved shard had
    /// cancelled an event lists nothing when the old holder's publishing
    /// comes late: the load did not list the event, so kept no version of
    /// it, and the read model says the publishing is old news.
    #[test]
    fn a_publishing_later_than_a_loaded_cancellation_lists_nothing() {
        let venue = VenueId::new();
        let mut event = Event::new();
        event.create(venue, 5, "jazz");
        let published = event.publish();
        let cancelled = event.cancel();
        for mut projection in [Projection::new(Channel::Venue(venue)), feed("feed")] {
            let loaded_at = Utc::now();
            projection.load(Vec::new(), Vec::new(), loaded_at);

            assert!(projection.needs_read_model(&published, loaded_at));
            assert!(projection.drop_if_outdated(&published, &record(&cancelled), loaded_at));
            assert!(!projection.lists(event.id().as_uuid()));
            assert!(
                !projection.needs_read_model(&published, loaded_at),
                "known for old news now"
            );
            assert_eq!(projection.apply(&published, loaded_at), None);
        }
    }

    /// A feed tells a listed event's joins only as its places cross a
    /// threshold, yet lists the new counts: the change says so, so that a
    /// snapshot encoded before is not served again. One told, or one about
    /// an event the feed does not list, says nothing.
    #[test]
    fn a_join_listed_without_an_update_is_a_silent_change() {
        let mut projection = feed("feed?tag=jazz");
        projection.load(Vec::new(), Vec::new(), Utc::now());
        let mut event = Event::new();
        event.create(VenueId::new(), 50, "jazz");
        assert!(projection.apply(&event.publish(), Utc::now()).is_some());
        assert!(!projection.take_silent_change(), "told");

        assert_eq!(projection.apply(&event.join(), Utc::now()), None);
        assert!(
            projection.take_silent_change(),
            "listed with 49 places left"
        );
        assert!(!projection.take_silent_change(), "taken");

        let mut elsewhere = Event::new();
        elsewhere.create(VenueId::new(), 5, "rock");
        elsewhere.publish();
        assert_eq!(projection.apply(&elsewhere.join(), Utc::now()), None);
        assert!(!projection.take_silent_change(), "not listed here");
    }

    /// The same for an event that moved to another venue: the old
    /// holder's late change at the first venue does not list it there.
    #[test]
    fn a_change_later_than_a_loaded_move_does_not_list_the_event_where_it_was() {
        let (here, there) = (VenueId::new(), VenueId::new());
        let mut event = Event::new();
        event.create(here, 5, "jazz");
        let published = event.publish();
        let mut moved = record(&event.join());
        moved.venue_id = there.as_uuid();
        moved.version += 1;
        let mut projection = Projection::new(Channel::Venue(here));
        projection.load(Vec::new(), Vec::new(), Utc::now());

        assert!(projection.needs_read_model(&published, Utc::now()));
        assert!(projection.drop_if_outdated(&published, &moved, Utc::now()));
        assert_eq!(projection.apply(&published, Utc::now()), None);
        assert!(!projection.lists(event.id().as_uuid()));
    }

    /// What the read model holds at the change's version, or a newer state
    /// the listing would show (the changes after this one are on their
    /// way), lets the change in as it is.
    #[test]
    fn a_change_the_read_model_does_not_contradict_is_applied() {
        let mut projection = feed("feed");
        projection.load(Vec::new(), Vec::new(), Utc::now());
        let mut event = Event::new();
        event.create(VenueId::new(), 5, "jazz");
        let published = event.publish();
        assert!(!projection.drop_if_outdated(&published, &record(&published), Utc::now()));

        let joined = record(&event.join());
        assert!(!projection.drop_if_outdated(&published, &joined, Utc::now()));
        let told = projection.apply(&published, Utc::now()).unwrap();
        assert_eq!(
            (&told["reason"], &told["kinds"]),
            (&json!("published"), &json!(["published"]))
        );
        assert!(projection.lists(event.id().as_uuid()));
    }

    /// Only an event unseen since a load less than `LATE_CHANGES_WITHIN`
    /// ago that the change would list is read: not one listed, not one the
    /// feed's tag leaves out, not an event off a full listing, not after
    /// that time.
    #[test]
    fn the_read_model_is_asked_only_while_a_late_change_may_come() {
        let mut event = Event::new();
        event.create(VenueId::new(), 5, "jazz");
        let published = event.publish();
        let loaded_at = Utc::now();
        let mut projection = feed("feed?tag=jazz");
        assert!(
            !projection.needs_read_model(&published, loaded_at),
            "nothing loaded"
        );
        projection.load(Vec::new(), Vec::new(), loaded_at);
        assert!(projection.needs_read_model(&published, loaded_at));
        assert!(!projection.needs_read_model(&published, loaded_at + LATE_CHANGES_WITHIN));
        let mut folk = Event::new();
        folk.create(VenueId::new(), 5, "folk");
        assert!(!projection.needs_read_model(&folk.publish(), loaded_at));

        projection.apply(&published, loaded_at);
        assert!(!projection.needs_read_model(&event.join(), loaded_at));

        let mut full = feed("feed");
        let soon = Utc::now() + Duration::days(1);
        let listed: Vec<EventRecord> = (0..LISTING_LIMIT as i64)
            .map(|i| {
                let mut event = Event::new();
                event.create_starting(VenueId::new(), 5, "jazz", soon + Duration::minutes(i));
                record(&event.publish())
            })
            .collect();
        full.load(listed, Vec::new(), loaded_at);
        let mut late = Event::new();
        late.create_starting(VenueId::new(), 5, "jazz", soon + Duration::days(30));
        assert!(
            !full.needs_read_model(&late.publish(), loaded_at),
            "no room"
        );
    }

    #[test]
    fn an_event_channel_shows_its_event_once_published() {
        let mut event = Event::new();
        let draft = event.create(VenueId::new(), 5, "jazz");
        let mut projection = Projection::new(Channel::Event(event.id()));

        assert_eq!(
            projection.apply(&draft, Utc::now()),
            None,
            "a draft is shown to nobody"
        );
        assert!(projection.shows_no_event());

        let update = projection.apply(&event.publish(), Utc::now()).unwrap();
        assert_eq!(update["event"]["status"], "published");
        assert_eq!(update["kinds"], json!(["published"]));
        assert!(!projection.shows_no_event());
        assert_eq!(projection.snapshot()["event"]["id"], json!(event.id()));
    }

    /// However many events are published while a feed runs, it lists the
    /// soonest `LISTING_LIMIT`: a later one crowds nothing out, a sooner
    /// one crowds out the last, which subscribers are told has left. A
    /// draft it never listed leaves nothing behind.
    #[test]
    fn a_full_listing_keeps_the_soonest_events() {
        let mut projection = feed("feed");
        let first = Utc::now() + Duration::days(7);
        let starting = |minutes: i64| first + Duration::minutes(minutes);
        let mut listed = Vec::new();
        for i in 0..LISTING_LIMIT as i64 {
            let mut event = Event::new();
            event.create_starting(VenueId::new(), 5, "jazz", starting(10 * i));
            assert!(projection.apply(&event.publish(), Utc::now()).is_some());
            listed.push(event);
        }
        assert!(projection.take_crowded_out().is_empty());

        let mut later = Event::new();
        let draft = later.create_starting(VenueId::new(), 5, "jazz", starting(100_000));
        assert_eq!(projection.apply(&draft, Utc::now()), None);
        assert_eq!(
            projection.apply(&later.publish(), Utc::now()),
            None,
            "no room"
        );
        assert!(!projection.lists(later.id().as_uuid()));
        assert!(projection.take_crowded_out().is_empty());

        let mut sooner = Event::new();
        sooner.create_starting(VenueId::new(), 5, "jazz", starting(5));
        let told = projection.apply(&sooner.publish(), Utc::now()).unwrap();
        assert_eq!(told["reason"], "published");
        let crowded = projection.take_crowded_out();
        let last = listed.last().unwrap().id();
        assert_eq!(crowded.len(), 1);
        assert_eq!(
            (
                &crowded[0]["event"]["id"],
                &crowded[0]["reason"],
                &crowded[0]["listed"]
            ),
            (&json!(last), &json!("removed"), &json!(false))
        );
        assert!(projection.lists(sooner.id().as_uuid()) && !projection.lists(last.as_uuid()));
        assert_eq!(
            projection.snapshot()["events"].as_array().unwrap().len(),
            LISTING_LIMIT
        );
        let mut draft = Event::new();
        let drafted = draft.create_starting(VenueId::new(), 5, "jazz", starting(1));
        assert_eq!(projection.apply(&drafted, Utc::now()), None);
        assert!(
            !projection.versions.contains_key(&draft.id().as_uuid()),
            "nothing kept of a draft"
        );
    }

    /// After a shard moves, the new holder's cancellation can overtake the
    /// old holder's publishing: the publishing, arriving after, is old news
    /// and lists nothing.
    #[test]
    fn a_cancellation_overtaking_the_publishing_keeps_the_event_off_the_list() {
        let mut event = Event::new();
        event.create(VenueId::new(), 5, "jazz");
        let published = event.publish();
        let cancelled = event.cancel();
        let mut projection = feed("feed");

        assert_eq!(projection.apply(&cancelled, Utc::now()), None);
        assert_eq!(projection.apply(&published, Utc::now()), None, "old news");
        assert!(!projection.lists(event.id().as_uuid()));
    }

    /// Events made and cancelled by the thousand leave a feed no versions
    /// beyond those of the last few minutes; a late publishing within them
    /// is still old news.
    #[test]
    fn cancelled_events_are_remembered_only_while_a_late_change_may_come() {
        let mut projection = feed("feed");
        let start = Utc::now();
        let mut last = None;
        for minute in 0..60 {
            for _ in 0..100 {
                let mut event = Event::new();
                event.create(VenueId::new(), 5, "jazz");
                let published = event.publish();
                let at = start + Duration::minutes(minute);
                projection.apply(&published, at);
                projection.apply(&event.cancel(), at);
                last = Some((event, published));
            }
        }
        let within = LATE_CHANGES_WITHIN.num_minutes() as usize + 1;
        assert!(
            projection.versions.len() <= 2 * within * 100 + 4 * LISTING_LIMIT,
            "{} versions for 6,000 cancelled events",
            projection.versions.len()
        );
        let (event, published) = last.unwrap();
        assert_eq!(
            projection.apply(&published, start + Duration::minutes(60)),
            None
        );
        assert!(!projection.lists(event.id().as_uuid()));
    }

    #[test]
    fn an_event_the_feed_first_hears_of_by_a_join_is_told_as_added() {
        let mut event = Event::new();
        event.create(VenueId::new(), 50, "jazz");
        // The feed never saw it published (loaded full, or the change was
        // overtaken): its first news is a join.
        event.publish();
        let mut projection = feed("feed?tag=jazz");

        let update = projection.apply(&event.join(), Utc::now()).unwrap();

        assert_eq!(
            (&update["reason"], &update["listed"]),
            (&json!("added"), &json!(true))
        );
        assert!(projection.lists(event.id().as_uuid()));
        // The next join is an ordinary one: not told.
        assert_eq!(projection.apply(&event.join(), Utc::now()), None);
    }

    #[test]
    fn a_change_no_newer_than_what_is_shown_is_old_news() {
        let mut event = Event::new();
        event.create(VenueId::new(), 5, "jazz");
        let mut projection = Projection::new(Channel::Event(event.id()));
        let published = event.publish();
        let joined = event.join();
        assert!(projection.apply(&joined, Utc::now()).is_some());
        assert_eq!(
            projection.apply(&published, Utc::now()),
            None,
            "arrived late"
        );
        assert_eq!(projection.apply(&joined, Utc::now()), None, "arrived twice");
        assert_eq!(projection.snapshot()["event"]["active_count"], 1);
    }

    #[test]
    fn a_venue_lists_its_upcoming_published_events_and_drops_a_cancelled_one() {
        let venue = VenueId::new();
        let mut projection = Projection::new(Channel::Venue(venue));
        let mut here = Event::new();
        here.create(venue, 5, "jazz");
        let mut elsewhere = Event::new();
        elsewhere.create(VenueId::new(), 5, "jazz");

        let listed = projection.apply(&here.publish(), Utc::now()).unwrap();
        assert_eq!(
            (listed["listed"].clone(), listed["reason"].clone()),
            (json!(true), json!("changed"))
        );
        assert_eq!(projection.apply(&elsewhere.publish(), Utc::now()), None);
        assert!(projection.lists(here.id().as_uuid()));

        let cancelled = projection.apply(&here.cancel(), Utc::now()).unwrap();
        assert_eq!(cancelled["listed"], false);
        assert!(!projection.lists(here.id().as_uuid()));
        assert_eq!(projection.snapshot()["events"], json!([]));
    }

    #[test]
    fn the_city_feed_tells_of_filling_up_and_full_not_of_every_join() {
        let mut projection = feed("feed");
        let mut event = Event::new();
        event.create(VenueId::new(), 10, "jazz");
        let published = projection.apply(&event.publish(), Utc::now()).unwrap();
        assert_eq!(published["reason"], "published");

        let reasons: Vec<Option<String>> = (0..11)
            .map(|_| {
                projection
                    .apply(&event.join(), Utc::now())
                    .map(|u| u["reason"].as_str().unwrap().to_owned())
            })
            .collect();
        let mut expected = vec![None; 11];
        expected[8] = Some("filling_up".to_owned()); // one place left
        expected[9] = Some("full".to_owned());
        assert_eq!(
            reasons, expected,
            "the 11th joins the waitlist: nothing to tell"
        );
    }

    #[test]
    fn a_tag_feed_ignores_other_tags() {
        let mut projection = feed("feed?tag=jazz");
        let mut jazz = Event::new();
        jazz.create(VenueId::new(), 5, "jazz");
        let mut folk = Event::new();
        folk.create(VenueId::new(), 5, "folk");
        assert!(projection.apply(&jazz.publish(), Utc::now()).is_some());
        assert_eq!(projection.apply(&folk.publish(), Utc::now()), None);
        assert_eq!(projection.snapshot()["events"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_radius_feed_learns_where_a_venue_is_before_it_decides() {
        let mut projection = feed("feed?near=52.37,4.89,2");
        let (inside, outside) = (VenueId::new(), VenueId::new());
        assert!(projection.needs_venue(inside.as_uuid()));
        projection.locate(
            inside.as_uuid(),
            GeoPoint {
                lat: 52.371,
                lon: 4.891,
            },
        );
        projection.locate(
            outside.as_uuid(),
            GeoPoint {
                lat: 51.9,
                lon: 4.5,
            },
        );
        assert!(!projection.needs_venue(inside.as_uuid()));

        let mut near = Event::new();
        near.create(inside, 5, "jazz");
        let mut far = Event::new();
        far.create(outside, 5, "jazz");
        assert!(projection.apply(&near.publish(), Utc::now()).is_some());
        assert_eq!(projection.apply(&far.publish(), Utc::now()), None);
    }

    #[test]
    fn events_leave_a_listing_when_they_start() {
        let venue = VenueId::new();
        let mut projection = Projection::new(Channel::Venue(venue));
        let mut event = Event::new();
        event.create(venue, 5, "jazz");
        projection.apply(&event.publish(), Utc::now());
        let starts_at = projection.next_start().unwrap();

        assert!(
            projection
                .take_started(starts_at - Duration::seconds(1))
                .is_empty()
        );
        let started = projection.take_started(starts_at);
        assert_eq!(started.len(), 1);
        assert_eq!(
            (started[0]["reason"].clone(), started[0]["listed"].clone()),
            (json!("started"), json!(false))
        );
        assert_eq!(projection.next_start(), None);
        assert!(
            projection.apply(&event.join(), starts_at).is_none(),
            "a started event is not listed again"
        );
    }
}

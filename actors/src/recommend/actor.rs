//! The live side of recommendations: a `RecommenderActor` per connected user
//! keeps that user's ranked list and pushes a new one when its top-k moves;
//! `Recommenders` owns the shared catalog, gathers committed changes for a
//! short debounce window and offers each batch to the actors at once. The
//! changes wait in a queue that the catalog's keeper drains on the same
//! tick, rather than as a message each: with a few hundred changes a
//! second spread over many events, a message per change woke the keeper's
//! thread for every join.
//!
//! Updates are incremental. Each actor ranks `list_len + spare` events and
//! remembers the *floor*: the score of the best candidate it left out, so
//! nothing outside its buffer scores above it. A changed event is re-scored
//! alone and moved in or out of the buffer against that floor; only when the
//! buffer runs short of a full list (or the user's own joins change their
//! profile, or time has moved on) does the actor rank in full again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use async_trait::async_trait;
use chrono::Utc;
use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use uuid::Uuid;

use super::catalog::{Catalog, EventCard, EventUpdate};
use super::profile::Profile;
use super::rank::{LiveList, RankSettings, Recommendation, ranked};
use super::score::Reason;
use crate::domain::{EventId, GeoPoint, Tag, UserId, VenueId};
use crate::queued::{QueueCount, Queued};
use crate::store::StoreError;

/// What recommendations need from storage.
#[async_trait]
pub trait RecommendationSource: Send + Sync + 'static {
    /// The user's interests, home and joins. A token-only identity (no local
    /// account) has joins but no interests or home.
    async fn profile(&self, user: UserId) -> Result<ProfileSeed, StoreError>;
    /// A venue's position.
    async fn venue(&self, venue: VenueId) -> Result<Option<GeoPoint>, StoreError>;
}

#[derive(Debug, Clone, Default)]
pub struct ProfileSeed {
    pub interests: Vec<Tag>,
    pub home: Option<GeoPoint>,
    /// Events the user is in (active or waitlisted), oldest join first.
    pub joins: Vec<EventId>,
}

#[derive(Debug, Clone)]
pub struct RecommendSettings {
    pub rank: RankSettings,
    /// Events in each pushed list.
    pub list_len: usize,
    /// Events each actor keeps ranked beyond its list, so that most changes
    /// are absorbed without ranking in full.
    pub spare: usize,
    /// Changes are gathered this long, then offered to every actor at once.
    pub debounce: Duration,
    /// Each actor ranks in full this often, because time moves scores.
    pub refresh: Duration,
    /// After the catalog is reloaded (changes were missed), each actor
    /// reads its user's profile again within this long.
    pub reload_spread: Duration,
    /// An actor without subscribers stops after this long.
    pub idle: Duration,
    /// Events that started longer ago than this are forgotten.
    pub retention: chrono::Duration,
}

impl Default for RecommendSettings {
    fn default() -> Self {
        Self {
            rank: RankSettings::default(),
            list_len: 10,
            spare: 20,
            debounce: Duration::from_millis(100),
            refresh: Duration::from_secs(300),
            reload_spread: Duration::from_secs(5),
            idle: Duration::from_secs(60),
            retention: chrono::Duration::days(180),
        }
    }
}

/// One pushed list: a new revision whenever the top-k changes.
#[derive(Debug, Clone)]
pub struct RankedList {
    /// Changes when the user's actor is restarted; revisions count from 1
    /// within an epoch.
    pub epoch: Arc<str>,
    pub revision: u64,
    pub items: Arc<Vec<(Recommendation, EventCard)>>,
}

/// Where a user's lists go (a WebSocket subscription).
pub trait ListSink: Send + 'static {
    /// False when the subscriber is gone.
    fn deliver(&mut self, list: &RankedList) -> bool;
}

struct Shared {
    catalog: RwLock<Catalog>,
    /// What the keeper takes in order on its next tick.
    handed: Mutex<Vec<Handed>>,
    actors: DashMap<UserId, Running>,
    /// Changes and joins sent to the actors and not yet handled.
    in_mailboxes: QueueCount,
    source: Arc<dyn RecommendationSource>,
    settings: RecommendSettings,
    thread: ArbiterHandle,
}

/// A user's actor and how many subscriptions it serves. Subscriptions are
/// counted under this entry's lock, and an idle actor leaves only by removing
/// its own entry under that lock while the count is zero: after that no
/// subscription can reach it.
struct Running {
    addr: Addr<RecommenderActor>,
    subscribers: usize,
}

/// The handle the server holds: ranks on demand, routes changes, and starts
/// or stops users' actors as their subscriptions come and go.
#[derive(Clone)]
pub struct Recommenders {
    shared: Arc<Shared>,
    /// Held so that the keeper runs as long as a handle does: an actor
    /// whose every address is gone stops.
    _keeper: Addr<CatalogKeeper>,
}

impl Recommenders {
    /// Starts the catalog keeper; actors run on `thread`. Call inside an
    /// actix system.
    pub fn start(
        catalog: Catalog,
        source: Arc<dyn RecommendationSource>,
        settings: RecommendSettings,
        thread: ArbiterHandle,
    ) -> Self {
        let shared = Arc::new(Shared {
            catalog: RwLock::new(catalog),
            handed: Mutex::new(Vec::new()),
            actors: DashMap::new(),
            in_mailboxes: QueueCount::default(),
            source,
            settings,
            thread,
        });
        let keeper_shared = Arc::clone(&shared);
        let keeper = CatalogKeeper::start_in_arbiter(&shared.thread, move |_| CatalogKeeper {
            shared: keeper_shared,
            pending: Vec::new(),
            locating: Default::default(),
            reloads: WhileReading::default(),
        });
        Self {
            shared,
            _keeper: keeper,
        }
    }

    pub fn settings(&self) -> &RecommendSettings {
        &self.shared.settings
    }

    /// Offers a committed change to the catalog and the actors, on the
    /// keeper's next tick.
    pub fn apply(&self, update: EventUpdate) {
        self.shared.handed.lock().push(Handed::Change(update));
    }

    /// Replaces the catalog with the one `load` reads (after changes may
    /// have been missed) and has every actor rank in full. The changes
    /// handed while it loads are applied again to the loaded catalog, which
    /// may have been read before them or after ([`Catalog::reapply`]). A
    /// load that fails leaves the catalog as it is. The load runs on the
    /// recommenders' thread, so any task may ask for it.
    pub fn reload_from(
        &self,
        load: impl Future<Output = Result<Catalog, StoreError>> + Send + 'static,
    ) {
        self.shared.handed.lock().push(Handed::Loading);
        let shared = Arc::clone(&self.shared);
        self.shared.thread.spawn(async move {
            let loaded = load.await;
            if let Err(error) = &loaded {
                tracing::warn!(%error, "cannot reload the recommendation catalog");
            }
            shared.handed.lock().push(Handed::Loaded(loaded.ok()));
        });
    }

    /// Ranks a user's best `limit` events now.
    pub async fn rank_for(
        &self,
        user: UserId,
        limit: usize,
    ) -> Result<Vec<(Recommendation, EventCard)>, StoreError> {
        let seed = self.shared.source.profile(user).await?;
        let settings = &self.shared.settings.rank;
        let mut profile = Profile::new(user, seed.interests, seed.home, seed.joins);
        let started = Instant::now();
        let catalog = self.shared.catalog.read();
        profile.learn(&catalog, settings.utc_offset_minutes);
        let (list, _) = ranked(&catalog, &profile, settings, Utc::now(), limit);
        metrics::histogram!("turnout_recs_rank_seconds").record(started.elapsed().as_secs_f64());
        Ok(with_cards(&catalog, list))
    }

    /// Adds a subscriber to the user's list, starting the user's actor if
    /// it is not running. The sink gets the current list, then each new one.
    pub fn subscribe(&self, user: UserId, id: u64, sink: Box<dyn ListSink>) {
        let mut running = self.shared.actors.entry(user).or_insert_with(|| {
            let shared = Arc::clone(&self.shared);
            metrics::gauge!("turnout_recs_actors").increment(1.0);
            Running {
                addr: RecommenderActor::start_in_arbiter(&self.shared.thread, move |_| {
                    RecommenderActor::new(user, shared)
                }),
                subscribers: 0,
            }
        });
        running.subscribers += 1;
        running.addr.do_send(AddSink { id, sink });
    }

    /// Removes a subscriber. The actor outlives its last one by the idle
    /// time, so that a client reconnecting after a network drop resumes.
    pub fn unsubscribe(&self, user: UserId, id: u64) {
        if let Some(mut running) = self.shared.actors.get_mut(&user) {
            running.subscribers = running.subscribers.saturating_sub(1);
            running.addr.do_send(RemoveSink { id });
        }
    }

    /// The user's interests or home changed: their actor reloads the profile.
    pub fn profile_changed(&self, user: UserId) {
        if let Some(running) = self.shared.actors.get(&user) {
            running.addr.do_send(ReloadProfile);
        }
    }

    /// Running actors and the catalog's size, for metrics and benchmarks.
    pub fn stats(&self) -> (usize, usize, usize) {
        let (events, open) = self.shared.catalog.read().len();
        (self.shared.actors.len(), events, open)
    }

    /// What waits for the recommenders' thread. Both queues take whatever
    /// is handed to them, so these counts are what shows the thread falling
    /// behind the changes.
    pub fn backlog(&self) -> Backlog {
        Backlog {
            handed: self.shared.handed.lock().len(),
            in_mailboxes: self.shared.in_mailboxes.len(),
        }
    }
}

/// See [`Recommenders::backlog`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Changes and reloads handed to the catalog's keeper for its next tick.
    pub handed: usize,
    /// Batches of changed events and users' own joins and leaves sent to
    /// the recommender actors and not yet handled.
    pub in_mailboxes: usize,
}

fn with_cards(catalog: &Catalog, list: Vec<Recommendation>) -> Vec<(Recommendation, EventCard)> {
    list.into_iter()
        .filter_map(|r| {
            let card = catalog.card(r.event)?.clone();
            Some((r, card))
        })
        .collect()
}

/// What the keeper is handed between its ticks.
enum Handed {
    Change(EventUpdate),
    /// A reload began: the changes from here on are kept for its catalog.
    Loading,
    /// A reload ended, with its catalog unless it failed.
    Loaded(Option<Catalog>),
}

/// Changes heard while reads of what they change are under way (the
/// catalog's, a user's profile), to be applied again to what each read
/// brings: it may have been read before them. Kept until the last read
/// under way ends.
struct WhileReading<T> {
    reads: usize,
    changes: Vec<T>,
}

impl<T> Default for WhileReading<T> {
    fn default() -> Self {
        Self {
            reads: 0,
            changes: Vec::new(),
        }
    }
}

impl<T> WhileReading<T> {
    fn began(&mut self) {
        self.reads += 1;
    }

    /// A change applied to what is held now; kept if a read is under way.
    fn heard(&mut self, change: T) {
        if self.reads > 0 {
            self.changes.push(change);
        }
    }

    /// A read ended: `apply` gets every change heard since the earliest
    /// read under way began, in order (none for a read that failed).
    fn ended(&mut self, apply: impl FnMut(&T)) {
        self.changes.iter().for_each(apply);
        self.reads = self.reads.saturating_sub(1);
        if self.reads == 0 {
            self.changes.clear();
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
/// A venue's place as looked up: `None` when it could not be (the next
/// change at the venue looks it up again).
struct VenueLocated(VenueId, Option<GeoPoint>);

/// Every debounce interval applies the changes handed to it to the catalog
/// (the only writer), routes users' own joins to their actors, and offers
/// the events that changed to all actors in one batch.
struct CatalogKeeper {
    shared: Arc<Shared>,
    pending: Vec<EventId>,
    locating: HashSet<VenueId>,
    reloads: WhileReading<EventUpdate>,
}

impl CatalogKeeper {
    /// The tick: what was handed, in order, then the batch to the actors.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let handed = std::mem::take(&mut *self.shared.handed.lock());
        for handed in handed {
            match handed {
                Handed::Change(update) => {
                    self.apply(&update, ctx);
                    self.reloads.heard(update);
                }
                Handed::Loading => self.reloads.began(),
                Handed::Loaded(None) => self.reloads.ended(|_| {}),
                Handed::Loaded(Some(mut catalog)) => {
                    self.reloads.ended(|change| catalog.reapply(change));
                    self.reload(catalog);
                }
            }
        }
        // An event that starts is no longer recommended: the lists that
        // show it hear of it with the tick's changes.
        let now = Utc::now();
        if self.shared.catalog.read().has_started(now) {
            let started = self.shared.catalog.write().close_started(now);
            self.pending.extend(started);
        }
        self.flush();
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.pending.sort_unstable();
        self.pending.dedup();
        let batch: Arc<[EventId]> = std::mem::take(&mut self.pending).into();
        for running in self.shared.actors.iter() {
            running.addr.do_send(Changed {
                events: Arc::clone(&batch),
                _queued: self.shared.in_mailboxes.enter(),
            });
        }
    }

    fn maintain(&mut self) {
        let now = Utc::now();
        let mut catalog = self.shared.catalog.write();
        let started = catalog.maintain(now, now - self.shared.settings.retention);
        self.pending.extend(started);
        let (events, open) = catalog.len();
        metrics::gauge!("turnout_recs_catalog_events").set(events as f64);
        metrics::gauge!("turnout_recs_catalog_open_events").set(open as f64);
    }

    fn apply(&mut self, update: &EventUpdate, ctx: &mut Context<Self>) {
        metrics::counter!("turnout_recs_changes_total").increment(1);
        let venue = update.venue;
        let known = {
            let mut catalog = self.shared.catalog.write();
            catalog.apply(update);
            catalog.knows_venue(venue)
        };
        if !known && self.locating.insert(venue) {
            let source = Arc::clone(&self.shared.source);
            let addr = ctx.address();
            actix::spawn(async move {
                let place = match source.venue(venue).await {
                    Ok(place) => place,
                    Err(error) => {
                        tracing::warn!(%error, "cannot locate a venue for recommendations");
                        // The venue's next event's change asks again.
                        None
                    }
                };
                addr.do_send(VenueLocated(venue, place));
            });
        }
        for (users, joined) in [(&update.joined, true), (&update.left, false)] {
            for (user, _) in users {
                if let Some(running) = self.shared.actors.get(user) {
                    running.addr.do_send(Moved {
                        event: update.id,
                        joined,
                        _queued: self.shared.in_mailboxes.enter(),
                    });
                }
            }
        }
        self.pending.push(update.id);
    }

    fn reload(&mut self, catalog: Catalog) {
        *self.shared.catalog.write() = catalog;
        self.pending.clear();
        for running in self.shared.actors.iter() {
            running.addr.do_send(CatalogReloaded);
        }
    }
}

impl Actor for CatalogKeeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.maintain();
        ctx.run_interval(self.shared.settings.debounce, |keeper, ctx| {
            keeper.tick(ctx)
        });
        ctx.run_interval(Duration::from_secs(60), |keeper, _| keeper.maintain());
    }
}

impl Handler<VenueLocated> for CatalogKeeper {
    type Result = ();

    fn handle(&mut self, VenueLocated(venue, place): VenueLocated, _: &mut Self::Context) {
        self.locating.remove(&venue);
        let Some(place) = place else {
            return;
        };
        self.shared.catalog.write().venue_located(venue, place);
        let catalog = self.shared.catalog.read();
        self.pending
            .extend(catalog.open().filter(|c| c.venue == venue).map(|c| c.id));
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct AddSink {
    id: u64,
    sink: Box<dyn ListSink>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct RemoveSink {
    id: u64,
}

/// Events that changed in the last debounce window.
#[derive(Message)]
#[rtype(result = "()")]
struct Changed {
    events: Arc<[EventId]>,
    _queued: Queued,
}

/// The user joined or left an event.
#[derive(Message)]
#[rtype(result = "()")]
struct Moved {
    event: EventId,
    joined: bool,
    _queued: Queued,
}

/// The catalog was loaded afresh: changes may have been missed.
#[derive(Message)]
#[rtype(result = "()")]
struct CatalogReloaded;

#[derive(Message)]
#[rtype(result = "()")]
struct ReloadProfile;

#[derive(Message)]
#[rtype(result = "()")]
/// The profile as read by read number `.0` (see `profile_reads`).
struct ProfileLoaded(u64, Result<ProfileSeed, StoreError>);

/// One user's live list.
pub struct RecommenderActor {
    user: UserId,
    shared: Arc<Shared>,
    epoch: Arc<str>,
    /// `None` until loaded.
    profile: Option<Profile>,
    /// Joins and leaves heard while the profile was read: the first read,
    /// or again after the user's interests or home changed.
    moves_while_reading: WhileReading<(EventId, bool)>,
    /// Profile reads begun: reads run at once, and one begun before a
    /// later one may answer after it, with what the later one replaced.
    profile_reads: u64,
    /// The best `list_len + spare` events, kept up to date incrementally.
    list_state: LiveList,
    /// What the last pushed list showed: which events, in which order, why,
    /// and how each looked (see [`crate::recommend::EventCard::looks`]).
    shown: Option<Vec<(EventId, Vec<Reason>, u64)>>,
    list: Option<RankedList>,
    /// Changes arrived while nobody was subscribed.
    stale: bool,
    sinks: HashMap<u64, Box<dyn ListSink>>,
}

impl RecommenderActor {
    fn new(user: UserId, shared: Arc<Shared>) -> Self {
        Self {
            user,
            shared,
            epoch: Arc::from(Uuid::now_v7().simple().to_string()),
            profile: None,
            moves_while_reading: WhileReading::default(),
            profile_reads: 0,
            list_state: LiveList::default(),
            shown: None,
            list: None,
            stale: false,
            sinks: HashMap::new(),
        }
    }

    fn load_profile(&mut self, ctx: &mut Context<Self>) {
        self.moves_while_reading.began();
        self.profile_reads += 1;
        self.read_profile(self.profile_reads, ctx);
    }

    /// Read `number` of the profile; a failed one is tried again, still
    /// under way.
    fn read_profile(&self, number: u64, ctx: &mut Context<Self>) {
        let (source, user, addr) = (Arc::clone(&self.shared.source), self.user, ctx.address());
        actix::spawn(async move {
            addr.do_send(ProfileLoaded(number, source.profile(user).await));
        });
    }

    /// Nobody is watching (the last subscriber left; the actor lingers for
    /// resumes): changes only mark the list stale, and the next subscriber
    /// gets it ranked afresh.
    fn idle(&self) -> bool {
        self.sinks.is_empty() && self.list.is_some()
    }

    fn rank_in_full(&mut self) {
        if self.idle() {
            self.stale = true;
            return;
        }
        self.rank_now();
    }

    fn rank_now(&mut self) {
        let Some(profile) = self.profile.as_mut() else {
            return;
        };
        let started = Instant::now();
        let settings = &self.shared.settings.rank;
        let catalog = self.shared.catalog.read();
        profile.learn(&catalog, settings.utc_offset_minutes);
        let capacity = self.shared.settings.list_len + self.shared.settings.spare;
        self.list_state = LiveList::rank(&catalog, profile, settings, Utc::now(), capacity);
        drop(catalog);
        metrics::histogram!("turnout_recs_rank_seconds").record(started.elapsed().as_secs_f64());
        self.publish_if_moved();
    }

    /// Re-scores only the changed events.
    fn rescore(&mut self, changed: &[EventId]) {
        if self.idle() {
            self.stale = true;
            return;
        }
        let Some(profile) = self.profile.as_ref() else {
            return;
        };
        let catalog = self.shared.catalog.read();
        let complete = self.list_state.rescore(
            &catalog,
            profile,
            &self.shared.settings.rank,
            Utc::now(),
            changed,
            self.shared.settings.list_len,
        );
        drop(catalog);
        if complete {
            self.publish_if_moved();
        } else {
            self.rank_in_full();
        }
    }

    fn publish_if_moved(&mut self) {
        let top = self.list_state.top(self.shared.settings.list_len);
        let catalog = self.shared.catalog.read();
        let key: Vec<(EventId, Vec<Reason>, u64)> = top
            .iter()
            .map(|r| {
                let looks = catalog.card(r.event).map_or(0, |card| card.looks);
                (r.event, r.reasons.clone(), looks)
            })
            .collect();
        if self.shown.as_ref() == Some(&key) {
            return;
        }
        let items = with_cards(&catalog, top.to_vec());
        drop(catalog);
        let revision = self.list.as_ref().map_or(1, |l| l.revision + 1);
        let list = RankedList {
            epoch: Arc::clone(&self.epoch),
            revision,
            items: Arc::new(items),
        };
        self.sinks.retain(|_, sink| sink.deliver(&list));
        metrics::counter!("turnout_recs_lists_pushed_total").increment(1);
        self.shown = Some(key);
        self.list = Some(list);
    }
}

/// Where in a spread interval this user's actor does its rounds, in
/// [0, 1): the same for the same user, different across users.
fn spread(user: UserId) -> f64 {
    (user.as_uuid().as_u128() % 1000) as f64 / 1000.0
}

impl Actor for RecommenderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.load_profile(ctx);
        // Spread the actors' full refreshes over the interval, so that they
        // do not all rank at the same moment. Each reads the profile again
        // first: a change of interests made through another node of a
        // cluster is told only to that node's recommender.
        let refresh = self.shared.settings.refresh;
        ctx.run_later(refresh.mul_f64(spread(self.user)), move |_, ctx| {
            ctx.run_interval(refresh, |actor, ctx| actor.load_profile(ctx));
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        metrics::gauge!("turnout_recs_actors").decrement(1.0);
    }
}

impl Handler<ProfileLoaded> for RecommenderActor {
    type Result = ();

    fn handle(&mut self, ProfileLoaded(number, loaded): ProfileLoaded, ctx: &mut Self::Context) {
        if number < self.profile_reads {
            // A later read is under way: its answer is the newer.
            return self.moves_while_reading.ended(|_| {});
        }
        match loaded {
            Ok(seed) => {
                let mut profile = Profile::new(self.user, seed.interests, seed.home, seed.joins);
                // In the order they came: the last move of an event wins,
                // whether or not the read had seen it.
                self.moves_while_reading
                    .ended(|&(event, joined)| profile.record_move(event, joined));
                self.profile = Some(profile);
                self.rank_in_full();
            }
            Err(error) => {
                tracing::warn!(%error, "cannot load a profile for recommendations; retrying");
                ctx.run_later(Duration::from_secs(2), move |actor, ctx| {
                    actor.read_profile(number, ctx)
                });
            }
        }
    }
}

impl Handler<AddSink> for RecommenderActor {
    type Result = ();

    fn handle(&mut self, AddSink { id, mut sink }: AddSink, _: &mut Self::Context) {
        if std::mem::take(&mut self.stale) {
            self.rank_now();
        }
        if let Some(list) = &self.list
            && !sink.deliver(list)
        {
            return;
        }
        self.sinks.insert(id, sink);
    }
}

impl Handler<RemoveSink> for RecommenderActor {
    type Result = ();

    fn handle(&mut self, RemoveSink { id }: RemoveSink, ctx: &mut Self::Context) {
        self.sinks.remove(&id);
        if self.sinks.is_empty() {
            ctx.run_later(self.shared.settings.idle, |actor, ctx| {
                let me = ctx.address();
                let idle = actor.sinks.is_empty()
                    && actor
                        .shared
                        .actors
                        .remove_if(&actor.user, |_, running| {
                            running.addr == me && running.subscribers == 0
                        })
                        .is_some();
                if idle {
                    ctx.stop();
                }
            });
        }
    }
}

impl Handler<Changed> for RecommenderActor {
    type Result = ();

    fn handle(&mut self, Changed { events, .. }: Changed, _: &mut Self::Context) {
        self.rescore(&events);
    }
}

impl Handler<Moved> for RecommenderActor {
    type Result = ();

    fn handle(&mut self, Moved { event, joined, .. }: Moved, _: &mut Self::Context) {
        self.moves_while_reading.heard((event, joined));
        let Some(profile) = self.profile.as_mut() else {
            return;
        };
        profile.record_move(event, joined);
        self.rank_in_full();
    }
}

impl Handler<CatalogReloaded> for RecommenderActor {
    type Result = ();

    /// Ranks against the new catalog at once, and reads the profile again
    /// soon: the changes the reload makes up for were missed here too, the
    /// user's own joins and leaves among them, and only the profile says
    /// which events are theirs. Spread over `reload_spread`, so that a
    /// node's reload does not ask for every profile at once.
    fn handle(&mut self, _: CatalogReloaded, ctx: &mut Self::Context) {
        self.rank_in_full();
        let within = self.shared.settings.reload_spread;
        ctx.run_later(within.mul_f64(spread(self.user)), |actor, ctx| {
            actor.load_profile(ctx)
        });
    }
}

impl Handler<ReloadProfile> for RecommenderActor {
    type Result = ();

    fn handle(&mut self, _: ReloadProfile, ctx: &mut Self::Context) {
        self.load_profile(ctx);
    }
}

//! The live recommendation actors, through their public handle: a
//! subscriber gets the user's list at once, then a new revision only when
//! the top of it moves; an actor with nobody to serve leaves. Given a
//! catalog and a user, when changes arrive, then these lists are pushed.

use std::sync::Arc;
use std::time::Duration;

use actix::Arbiter;
use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::mpsc;
use turnout_actors::domain::{EventId, GeoPoint, Lifecycle, Tag, UserId, VenueId};
use turnout_actors::recommend::{
    Backlog, Catalog, EventUpdate, ListSink, ProfileSeed, RankedList, RecommendSettings,
    RecommendationSource, Recommenders,
};
use turnout_actors::store::StoreError;

/// A profile with one interest, no home and no joins.
fn likes(tag: &str) -> ProfileSeed {
    ProfileSeed {
        interests: vec![Tag::parse(tag).unwrap()],
        home: None,
        joins: Vec::new(),
    }
}

/// A user who likes jazz, with no joins.
struct JazzLover;

#[async_trait]
impl RecommendationSource for JazzLover {
    async fn profile(&self, _user: UserId) -> Result<ProfileSeed, StoreError> {
        Ok(likes("jazz"))
    }

    async fn venue(&self, _venue: VenueId) -> Result<Option<GeoPoint>, StoreError> {
        Ok(None)
    }
}

/// A subscriber: every list pushed to it arrives on a channel.
struct Pushed(mpsc::UnboundedSender<RankedList>);

impl ListSink for Pushed {
    fn deliver(&mut self, list: &RankedList) -> bool {
        self.0.send(list.clone()).is_ok()
    }
}

fn event(tag: &str, lifecycle: Lifecycle, version: u64) -> EventUpdate {
    EventUpdate {
        id: EventId::new(),
        owner: UserId::new(),
        title: format!("{tag} night"),
        venue: VenueId::new(),
        starts_at: Utc::now() + chrono::Duration::days(3),
        tags: vec![Tag::parse(tag).unwrap()],
        lifecycle,
        capacity: 100,
        active: 0,
        offered: 0,
        waitlist: 0,
        version,
        joined: Vec::new(),
        left: Vec::new(),
        at: Utc::now(),
    }
}

fn settings() -> RecommendSettings {
    RecommendSettings {
        list_len: 3,
        spare: 2,
        debounce: Duration::from_millis(10),
        idle: Duration::from_millis(200),
        ..RecommendSettings::default()
    }
}

/// Recommenders over a catalog holding `events`, and a subscriber for one
/// user.
fn start(events: &[EventUpdate]) -> (Recommenders, UserId, mpsc::UnboundedReceiver<RankedList>) {
    start_with(events, Arc::new(JazzLover), settings())
}

/// Like [`start`], the user's profile read from `source`.
fn start_with(
    events: &[EventUpdate],
    source: Arc<dyn RecommendationSource>,
    settings: RecommendSettings,
) -> (Recommenders, UserId, mpsc::UnboundedReceiver<RankedList>) {
    let mut catalog = Catalog::default();
    for e in events {
        catalog.apply(e);
    }
    let recommenders = Recommenders::start(catalog, source, settings, Arbiter::current());
    let (user, (pushed, lists)) = (UserId::new(), mpsc::unbounded_channel());
    recommenders.subscribe(user, 1, Box::new(Pushed(pushed)));
    (recommenders, user, lists)
}

async fn next(lists: &mut mpsc::UnboundedReceiver<RankedList>) -> RankedList {
    tokio::time::timeout(Duration::from_secs(5), lists.recv())
        .await
        .expect("a list within 5 s")
        .expect("the actor is running")
}

async fn nothing_more(lists: &mut mpsc::UnboundedReceiver<RankedList>) {
    let more = tokio::time::timeout(Duration::from_millis(300), lists.recv()).await;
    assert!(more.is_err(), "no list expected, got {:?}", more.unwrap());
}

fn events_of(list: &RankedList) -> Vec<EventId> {
    list.items.iter().map(|(r, _)| r.event).collect()
}

/// A jazz lover whose joins are whatever the test last said.
struct Joiner(std::sync::Mutex<Vec<EventId>>);

#[async_trait]
impl RecommendationSource for Joiner {
    async fn profile(&self, _user: UserId) -> Result<ProfileSeed, StoreError> {
        Ok(ProfileSeed {
            joins: self.0.lock().unwrap().clone(),
            ..likes("jazz")
        })
    }

    async fn venue(&self, _venue: VenueId) -> Result<Option<GeoPoint>, StoreError> {
        Ok(None)
    }
}

/// The catalog reloaded after changes were missed (the node's link to the
/// others came back): the user's own joins were among them, so each actor
/// reads its profile again, and an event the user joined unheard leaves
/// their list.
#[actix::test]
async fn after_a_reload_an_event_joined_unheard_leaves_the_list() {
    let (first, second) = (
        event("jazz", Lifecycle::Published, 1),
        event("jazz", Lifecycle::Published, 1),
    );
    let source = Arc::new(Joiner(std::sync::Mutex::new(Vec::new())));
    let settings = RecommendSettings {
        reload_spread: Duration::from_millis(50),
        ..settings()
    };
    let both = [first.clone(), second.clone()];
    let (recommenders, _, mut lists) = start_with(&both, source.clone(), settings);
    assert!(events_of(&next(&mut lists).await).contains(&first.id));

    // Joined through another node: the change never arrives here.
    source.0.lock().unwrap().push(first.id);
    let mut catalog = Catalog::default();
    for e in &both {
        catalog.apply(e);
    }
    recommenders.reload_from(async move { Ok(catalog) });
    while events_of(&next(&mut lists).await).contains(&first.id) {}
}

/// A reload asked for by a task outside actix's local set (a plain tokio
/// task, as the fan-out's delayed reload is) still runs.
#[actix::test]
async fn a_reload_may_be_asked_for_from_any_task() {
    let folk = event("folk", Lifecycle::Published, 2);
    let (recommenders, _user, mut lists) = start(std::slice::from_ref(&folk));
    assert_eq!(events_of(&next(&mut lists).await), vec![folk.id]);

    let jazz = event("jazz", Lifecycle::Published, 2);
    let mut catalog = Catalog::default();
    for e in [&folk, &jazz] {
        catalog.apply(e);
    }
    let asking = recommenders.clone();
    tokio::spawn(async move { asking.reload_from(async move { Ok(catalog) }) })
        .await
        .expect("asking for a reload does not panic");
    while !events_of(&next(&mut lists).await).contains(&jazz.id) {}
}

#[actix::test]
async fn a_subscriber_gets_the_list_at_once_best_match_first() {
    let folk = event("folk", Lifecycle::Published, 2);
    let jazz = event("jazz", Lifecycle::Published, 2);
    let (_recommenders, _user, mut lists) = start(&[folk.clone(), jazz.clone()]);

    let first = next(&mut lists).await;
    assert_eq!(first.revision, 1);
    assert_eq!(events_of(&first)[0], jazz.id, "the interest ranks first");
    assert!(events_of(&first).contains(&folk.id));
}

#[actix::test]
async fn a_new_event_that_moves_the_top_is_pushed_and_a_draft_is_not() {
    let (recommenders, _user, mut lists) = start(&[event("folk", Lifecycle::Published, 2)]);
    let first = next(&mut lists).await;

    recommenders.apply(event("jazz", Lifecycle::Draft, 1));
    nothing_more(&mut lists).await;

    let jazz = event("jazz", Lifecycle::Published, 2);
    recommenders.apply(jazz.clone());
    let second = next(&mut lists).await;
    assert_eq!(second.revision, first.revision + 1);
    assert_eq!(second.epoch, first.epoch);
    assert_eq!(events_of(&second)[0], jazz.id);
}

#[actix::test]
async fn a_cancelled_event_leaves_the_list() {
    let jazz = event("jazz", Lifecycle::Published, 2);
    let (recommenders, _user, mut lists) = start(std::slice::from_ref(&jazz));
    assert_eq!(events_of(&next(&mut lists).await), vec![jazz.id]);

    recommenders.apply(EventUpdate {
        lifecycle: Lifecycle::Cancelled,
        version: 3,
        ..jazz
    });
    assert!(events_of(&next(&mut lists).await).is_empty());
}

/// A reload reads the catalog over a while, and a change committed
/// meanwhile may or may not be in what it read. Given two published events,
/// when one is cancelled and the other joined while a reload is under way
/// that read the first before its cancel and the second after its join,
/// then the reloaded catalog knows the cancel, and the join counts once.
#[actix::test]
async fn changes_handed_while_the_catalog_reloads_outlive_the_reload() {
    let jazz = event("jazz", Lifecycle::Published, 2);
    let folk = event("folk", Lifecycle::Published, 2);
    let (recommenders, user, mut lists) = start(&[jazz.clone(), folk.clone()]);
    assert_eq!(events_of(&next(&mut lists).await), vec![jazz.id, folk.id]);

    let (read, reading) = tokio::sync::oneshot::channel::<Catalog>();
    recommenders.reload_from(async move { Ok(reading.await.unwrap()) });
    let folk_joined = EventUpdate {
        active: 1,
        version: 3,
        joined: vec![(UserId::new(), folk.at)],
        ..folk.clone()
    };
    recommenders.apply(folk_joined.clone());
    recommenders.apply(EventUpdate {
        lifecycle: Lifecycle::Cancelled,
        version: 3,
        ..jazz.clone()
    });
    assert_eq!(events_of(&next(&mut lists).await), vec![folk.id]);

    let mut loaded = Catalog::default();
    loaded.apply(&jazz);
    loaded.apply(&folk);
    loaded.apply(&folk_joined);
    read.send(loaded).unwrap();
    // The reload may push the list again (a reason's strength moves with
    // the clock, and a loaded machine is slow), but never with jazz back.
    while let Ok(Some(list)) = tokio::time::timeout(Duration::from_millis(300), lists.recv()).await
    {
        assert_eq!(events_of(&list), vec![folk.id], "jazz stays cancelled");
    }
    let ranked = recommenders.rank_for(user, 3).await.unwrap();
    let cards: Vec<_> = ranked
        .iter()
        .map(|(_, card)| (card.id, card.joiners))
        .collect();
    assert_eq!(
        cards,
        vec![(folk.id, 1)],
        "jazz stays cancelled, folk's join counts once"
    );
}

/// A jazz lover with no joins, whose every profile read waits for a
/// permit.
struct GatedJazzLover(tokio::sync::Semaphore);

#[async_trait]
impl RecommendationSource for GatedJazzLover {
    async fn profile(&self, user: UserId) -> Result<ProfileSeed, StoreError> {
        self.0.acquire().await.unwrap().forget();
        JazzLover.profile(user).await
    }

    async fn venue(&self, venue: VenueId) -> Result<Option<GeoPoint>, StoreError> {
        JazzLover.venue(venue).await
    }
}

/// Given a subscriber whose profile is read again (their interests
/// changed), when they join an event while that read is under way and it
/// then answers without the join, then the event stays out of their list.
#[actix::test]
async fn a_join_during_a_profile_reload_outlives_the_reload() {
    let jazz = event("jazz", Lifecycle::Published, 2);
    let source = Arc::new(GatedJazzLover(tokio::sync::Semaphore::new(1)));
    let (recommenders, user, mut lists) =
        start_with(std::slice::from_ref(&jazz), source.clone(), settings());
    assert_eq!(events_of(&next(&mut lists).await), vec![jazz.id]);

    recommenders.profile_changed(user);
    recommenders.apply(EventUpdate {
        active: 1,
        version: 3,
        joined: vec![(user, jazz.at)],
        ..jazz.clone()
    });
    assert!(events_of(&next(&mut lists).await).is_empty(), "joined: out");

    source.0.add_permits(1);
    nothing_more(&mut lists).await;
    assert_eq!(
        source.0.available_permits(),
        0,
        "the reload read the profile"
    );
}

#[actix::test]
async fn an_actor_with_nobody_to_serve_leaves_after_its_idle_time() {
    let (recommenders, user, mut lists) = start(&[event("jazz", Lifecycle::Published, 2)]);
    next(&mut lists).await;
    assert_eq!(recommenders.stats().0, 1, "one actor while subscribed");

    recommenders.unsubscribe(user, 1);
    let mut left = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if recommenders.stats().0 == 0 {
            left = true;
            break;
        }
    }
    assert!(left, "the idle actor left");
}

/// What waits for the recommenders' thread is counted, and no longer once
/// handled: a change until the keeper's tick takes it, the batch it makes
/// until each actor has handled it.
#[actix::test]
async fn a_change_counts_as_waiting_until_the_recommenders_have_handled_it() {
    let jazz = event("jazz", Lifecycle::Published, 2);
    let between_ticks = RecommendSettings {
        debounce: Duration::from_secs(3600),
        ..settings()
    };
    let (recommenders, _, mut lists) = start_with(&[], Arc::new(JazzLover), between_ticks);
    next(&mut lists).await;
    recommenders.apply(jazz.clone());
    assert_eq!(
        recommenders.backlog(),
        Backlog {
            handed: 1,
            in_mailboxes: 0
        },
        "handed, and the keeper has not ticked"
    );

    // Two users on a thread of their own, whose sinks hold the thread up
    // on the list the change brings: the actor that handles its batch
    // first holds it while it delivers, and the other's waits in its
    // mailbox, until the gate opens.
    let thread = actix::Arbiter::new();
    let recommenders = Recommenders::start(
        Catalog::default(),
        Arc::new(JazzLover),
        settings(),
        thread.handle(),
    );
    let gate = Arc::new(Gate::default());
    let (pushed, mut lists) = mpsc::unbounded_channel();
    for id in 1..=2 {
        let sink = Gated(Arc::clone(&gate), Pushed(pushed.clone()));
        recommenders.subscribe(UserId::new(), id, Box::new(sink));
    }
    for _ in 1..=2 {
        next(&mut lists).await;
    }
    recommenders.apply(jazz);
    let mut held = false;
    for _ in 0..250 {
        if recommenders.backlog().in_mailboxes > 0 {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.open();
    assert!(held, "a batch waited in a mailbox");
    for _ in 1..=2 {
        assert_eq!(events_of(&next(&mut lists).await).len(), 1);
    }
    let mut drained = false;
    for _ in 0..250 {
        if recommenders.backlog() == Backlog::default() {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(drained, "still waiting: {:?}", recommenders.backlog());
    thread.stop();
}

/// Closed until opened: holds up the thread that waits on it.
#[derive(Default)]
struct Gate {
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    fn wait(&self) {
        let open = self.open.lock().unwrap();
        drop(self.opened.wait_while(open, |open| !*open).unwrap());
    }
}

/// A subscriber that takes its first list at once and waits at the gate
/// with each later one.
struct Gated(Arc<Gate>, Pushed);

impl ListSink for Gated {
    fn deliver(&mut self, list: &RankedList) -> bool {
        if list.revision > 1 {
            self.0.wait();
        }
        self.1.deliver(list)
    }
}

/// A user whose interests change from read to read: read `n` answers
/// `answers[n]` (the last one from then on), and read `gated`, if any,
/// only once a permit is added to `gate`.
struct ChangingMind {
    answers: Vec<&'static str>,
    gated: Option<usize>,
    gate: tokio::sync::Semaphore,
    reads: std::sync::atomic::AtomicUsize,
}

impl ChangingMind {
    fn new(answers: &[&'static str], gated: Option<usize>) -> Arc<Self> {
        Arc::new(Self {
            answers: answers.to_vec(),
            gated,
            gate: tokio::sync::Semaphore::new(0),
            reads: Default::default(),
        })
    }
}

#[async_trait]
impl RecommendationSource for ChangingMind {
    async fn profile(&self, _user: UserId) -> Result<ProfileSeed, StoreError> {
        let read = self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.gated == Some(read) {
            self.gate.acquire().await.unwrap().forget();
        }
        Ok(likes(self.answers[read.min(self.answers.len() - 1)]))
    }

    async fn venue(&self, _venue: VenueId) -> Result<Option<GeoPoint>, StoreError> {
        Ok(None)
    }
}

/// Given two quick changes of interests, when the first change's read
/// answers after the second's, then the list keeps following the second.
#[actix::test]
async fn a_late_profile_read_does_not_undo_a_newer_one() {
    let (jazz, folk, blues) = (
        event("jazz", Lifecycle::Published, 2),
        event("folk", Lifecycle::Published, 2),
        event("blues", Lifecycle::Published, 2),
    );
    // Jazz at first; the first reload answers late with folk (what the
    // second change replaced); the second answers at once with blues.
    let source = ChangingMind::new(&["jazz", "folk", "blues"], Some(1));
    let (recommenders, user, mut lists) = start_with(
        &[jazz.clone(), folk, blues.clone()],
        source.clone(),
        settings(),
    );
    assert_eq!(events_of(&next(&mut lists).await)[0], jazz.id);

    recommenders.profile_changed(user);
    recommenders.profile_changed(user);
    assert_eq!(events_of(&next(&mut lists).await)[0], blues.id);

    source.gate.add_permits(1);
    nothing_more(&mut lists).await;
    assert_eq!(source.gate.available_permits(), 0, "the late read answered");
}

/// Given interests changed where this node did not hear of it, when the
/// list's periodic refresh comes, then it reads the profile again and
/// follows the new interests.
#[actix::test]
async fn the_periodic_refresh_reads_the_profile_again() {
    let (jazz, blues) = (
        event("jazz", Lifecycle::Published, 2),
        event("blues", Lifecycle::Published, 2),
    );
    let settings = RecommendSettings {
        refresh: Duration::from_millis(300),
        ..settings()
    };
    // Blues after the first read: changed through another node, which
    // tells nobody here.
    let source = ChangingMind::new(&["jazz", "blues"], None);
    let (_recommenders, _user, mut lists) =
        start_with(&[jazz.clone(), blues.clone()], source, settings);
    assert_eq!(events_of(&next(&mut lists).await)[0], jazz.id);

    assert_eq!(events_of(&next(&mut lists).await)[0], blues.id);
}

/// Given a list showing an event, when the event is renamed (nothing else
/// moves), then the list is pushed again with the new title; a join that
/// changes only its counts is not pushed.
#[actix::test]
async fn an_edited_event_is_pushed_again_and_a_count_alone_is_not() {
    let jazz = event("jazz", Lifecycle::Published, 2);
    let (recommenders, _user, mut lists) = start(std::slice::from_ref(&jazz));
    assert_eq!(events_of(&next(&mut lists).await), vec![jazz.id]);

    recommenders.apply(EventUpdate {
        title: "jazz night, moved upstairs".into(),
        version: 3,
        ..jazz.clone()
    });
    let renamed = next(&mut lists).await;
    assert_eq!(&*renamed.items[0].1.title, "jazz night, moved upstairs");

    recommenders.apply(EventUpdate {
        title: "jazz night, moved upstairs".into(),
        active: 1,
        version: 4,
        joined: vec![(UserId::new(), jazz.at)],
        ..jazz
    });
    nothing_more(&mut lists).await;
}

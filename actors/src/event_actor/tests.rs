//! The actor shell's own proofs: activation, panics, refusals that wait
//! on facts in flight, and group commit — against the in-memory store.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;

use super::*;
use crate::domain::{Capacity, OfferHold, Seats, UserId, WaitlistMode, WaitlistPolicy};
use crate::placement::ShardCount;
use crate::shards::HeldShards;
use crate::testing::{MemoryStore, event_details};
use crate::{EventRegistry, Journal, JournalSettings};

/// A one-seat join by `user`, now.
fn join(user: UserId) -> Command {
    Command::Join {
        user,
        seats: Seats::default(),
        at: Utc::now(),
    }
}

/// `user`'s idempotency key `name`, on a join of `event`.
fn join_key(user: UserId, name: &str, event: EventId) -> IdempotencyKey {
    IdempotencyKey {
        user,
        key: name.to_owned(),
        fingerprint: format!("POST /v1/events/{event}/join"),
    }
}

/// Runs `command` on a task of its own, so the test goes on meanwhile.
fn spawn_execute(
    registry: &EventRegistry,
    event: EventId,
    command: Command,
    key: Option<IdempotencyKey>,
) -> tokio::task::JoinHandle<Result<Reply, CommandError>> {
    let registry = registry.clone();
    actix::spawn(async move { registry.execute(event, command, key, None).await })
}

/// Spawns `user`'s join of `event` and returns once its commit has begun
/// (the store then holds it for its `commit_delay`).
async fn join_committing(
    store: &MemoryStore,
    registry: &EventRegistry,
    event: EventId,
    user: UserId,
) -> tokio::task::JoinHandle<Result<Reply, CommandError>> {
    let begun = store.commits_begun.load(Ordering::SeqCst);
    let committing = spawn_execute(registry, event, join(user), None);
    while store.commits_begun.load(Ordering::SeqCst) == begun {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    committing
}

/// `member`'s join is inside the journal's commit (its delay) when the
/// event's next join panics: both callers hear "interrupted", the join's
/// because its actor crashed before the commit answered.
async fn crash_while_committing(
    store: &MemoryStore,
    registry: &EventRegistry,
    event: EventId,
    member: UserId,
) {
    let committing = join_committing(store, registry, event, member).await;
    let doomed = UserId::new();
    PANIC_ON_JOIN_OF.lock().unwrap().push(doomed);
    let crashed = registry.execute(event, join(doomed), None, None).await;
    assert_eq!(crashed.unwrap_err(), CommandError::Interrupted);
    assert_eq!(
        committing.await.unwrap().unwrap_err(),
        CommandError::Interrupted,
        "its actor crashed before the commit answered"
    );
}

fn far_off() -> std::time::Instant {
    std::time::Instant::now() + Duration::from_secs(3_600)
}

fn setup(delay: Duration) -> (Arc<MemoryStore>, EventRegistry) {
    setup_holding(delay, Arc::new(HeldShards::everything(ShardCount::DEFAULT)))
}

/// A registry on a node that holds `held`.
fn setup_holding(delay: Duration, held: Arc<HeldShards>) -> (Arc<MemoryStore>, EventRegistry) {
    setup_with(delay, held, ActorSettings::default())
}

fn setup_with(
    delay: Duration,
    held: Arc<HeldShards>,
    settings: ActorSettings,
) -> (Arc<MemoryStore>, EventRegistry) {
    let store = Arc::new(MemoryStore {
        commit_delay: delay,
        ..MemoryStore::default()
    });
    (store.clone(), registry_on(store, held, settings))
}

/// A registry (a node) on `store`, which another may share.
fn registry_on(
    store: Arc<MemoryStore>,
    held: Arc<HeldShards>,
    settings: ActorSettings,
) -> EventRegistry {
    registry_with_journal(store, held, settings, JournalSettings::default())
}

fn registry_with_journal(
    store: Arc<MemoryStore>,
    held: Arc<HeldShards>,
    settings: ActorSettings,
    journal: JournalSettings,
) -> EventRegistry {
    registry_telling(
        store,
        held,
        settings,
        journal,
        Arc::new(crate::changes::NoChanges),
    )
}

fn registry_telling(
    store: Arc<MemoryStore>,
    held: Arc<HeldShards>,
    settings: ActorSettings,
    journal: JournalSettings,
    changes: Arc<dyn ChangeSink>,
) -> EventRegistry {
    let journal = Journal::new(store.clone(), journal).start();
    EventRegistry::new(
        store,
        journal,
        changes,
        settings,
        vec![Arbiter::current()],
        held,
    )
}

/// A draft event `id` of `capacity`, by a new owner, whom it returns.
async fn create_event(registry: &EventRegistry, id: EventId, capacity: i64) -> UserId {
    let owner = UserId::new();
    let create = Command::Create {
        id,
        owner,
        details: event_details(),
        capacity: Capacity::parse(capacity).unwrap(),
        policy: WaitlistPolicy::default(),
        at: Utc::now(),
    };
    registry.execute(id, create, None, None).await.unwrap();
    owner
}

async fn open_event(registry: &EventRegistry, capacity: i64) -> (EventId, UserId) {
    let id = EventId::new();
    let owner = create_event(registry, id, capacity).await;
    registry
        .execute(
            id,
            Command::Publish {
                by: owner,
                at: Utc::now(),
            },
            None,
            None,
        )
        .await
        .unwrap();
    (id, owner)
}

#[actix::test]
async fn an_actor_for_an_id_that_names_no_event_leaves_at_once() {
    let (_, registry) = setup(Duration::ZERO);
    let (event, _) = open_event(&registry, 5).await;
    let join_all = |ids: Vec<EventId>| {
        let handles: Vec<_> = ids
            .into_iter()
            .map(|id| spawn_execute(&registry, id, join(UserId::new()), None))
            .collect();
        async move {
            for handle in handles {
                assert!(matches!(
                    handle.await.unwrap(),
                    Err(CommandError::Rejected(Rejection::NotFound))
                ));
            }
        }
    };

    join_all((0..50).map(|_| EventId::new()).collect()).await;
    assert_eq!(
        registry.live_actors(),
        1,
        "only the real event's actor stays"
    );

    // One made-up id many times at once: every caller is told it is
    // not found; none is stranded by the actor leaving.
    join_all(vec![EventId::new(); 50]).await;
    assert_eq!(registry.live_actors(), 1);
    let member = join(UserId::new());
    assert!(registry.execute(event, member, None, None).await.is_ok());
}

#[actix::test]
async fn a_panicking_actor_is_replaced_and_rehydrated() {
    let (_, registry) = setup(Duration::ZERO);
    let (event, _) = open_event(&registry, 1).await;
    let first = UserId::new();
    registry
        .execute(event, join(first), None, None)
        .await
        .unwrap();

    let doomed = UserId::new();
    PANIC_ON_JOIN_OF.lock().unwrap().push(doomed);
    let crashed = registry.execute(event, join(doomed), None, None).await;
    assert_eq!(
        crashed.unwrap_err(),
        CommandError::Interrupted,
        "nothing acknowledged from a crash"
    );

    // A fresh actor, rebuilt from the log: `first` still holds the place.
    let next = registry
        .execute(event, join(UserId::new()), None, None)
        .await
        .unwrap();
    let Reply::Done(next) = next else {
        panic!("a fresh answer")
    };
    assert!(matches!(
        next.membership,
        Some(Membership::Waitlisted { position: 1, .. })
    ));
    assert_eq!(next.summary.active_count, 1);
}

/// A join in the batch being committed when its actor panics still lands
/// (its caller was told "unavailable": the outcome is unknown). The actor
/// that replaces the crashed one must see it, not answer from the log
/// without it.
#[actix::test]
async fn a_replacement_sees_what_its_crashed_predecessor_was_committing() {
    let (store, registry) = setup(Duration::from_millis(300));
    let (event, _) = open_event(&registry, 5).await;
    let member = UserId::new();
    crash_while_committing(&store, &registry, event, member).await;

    let leave = Command::Leave {
        user: member,
        at: Utc::now(),
    };
    let left = registry.execute(event, leave, None, None).await;
    assert!(
        matches!(left, Ok(Reply::Done(ref outcome)) if outcome.summary.active_count == 0),
        "the join had landed: the member may leave, got {left:?}"
    );
}

/// The changes an actor announces, as told.
#[derive(Default)]
struct Told(std::sync::Mutex<Vec<Arc<EventChange>>>);

impl ChangeSink for Told {
    fn committed(&self, change: Arc<EventChange>) {
        self.0.lock().unwrap().push(change);
    }
}

/// A join that lands while its actor panics: its caller hears 503 (the
/// outcome is unknown), and its change is told all the same once it has
/// landed, so that caches and hubs do not keep the event without the join
/// until its next change (on a quiet event, for ever).
#[actix::test]
async fn a_crashed_actor_announces_the_appends_of_its_that_landed() {
    let store = Arc::new(MemoryStore {
        commit_delay: Duration::from_millis(300),
        ..MemoryStore::default()
    });
    let told = Arc::new(Told::default());
    let registry = registry_telling(
        store.clone(),
        Arc::new(HeldShards::everything(ShardCount::DEFAULT)),
        ActorSettings::default(),
        JournalSettings::default(),
        told.clone(),
    );
    let (event, _) = open_event(&registry, 5).await;
    let before = told.0.lock().unwrap().len();
    // Given a join inside the journal's commit when the next join panics,
    let member = UserId::new();
    crash_while_committing(&store, &registry, event, member).await;
    // when the next command has been answered (by a replacement, which the
    // crashed actor makes wait until it has told what landed),
    let next = registry
        .execute(event, join(UserId::new()), None, None)
        .await;
    assert!(matches!(next, Ok(Reply::Done(_))), "{next:?}");

    // then the join was told, with its fact, and the doomed join was not.
    let told = told.0.lock().unwrap();
    let after: Vec<_> = told[before..].iter().collect();
    assert_eq!(after.len(), 2, "the landed join, then the next: {after:?}");
    let landed = after[0];
    assert!(
        matches!(landed.facts.as_slice(), [DomainEvent::Joined { user, .. }] if *user == member),
        "{landed:?}"
    );
    assert_eq!(landed.summary.active_count, 1);
    assert_eq!(after[1].summary.version, landed.summary.version + 1);
}

/// What a crashed actor tells is what the log holds: a version another
/// writer took (after a shard moved) is not told as its own, nor a version
/// past the log's end, and a fact that will not decode leaves out only its
/// own change.
#[actix::test]
async fn a_crashed_actor_tells_only_the_facts_the_log_holds_at_their_versions() {
    let (store, registry) = setup(Duration::ZERO);
    let (event, _) = open_event(&registry, 5).await;
    let member = UserId::new();
    let Reply::Done(joined) = registry
        .execute(event, join(member), None, None)
        .await
        .unwrap()
    else {
        panic!("a fresh join")
    };
    let stored = store.load(event).await.unwrap();
    let facts: Vec<DomainEvent> = stored
        .facts
        .into_iter()
        .map(|f| f.decode().unwrap())
        .collect();
    let change = |facts: Vec<DomainEvent>| EventChange {
        summary: joined.summary.clone(),
        facts,
        moves: Vec::new(),
        committed_at: Utc::now(),
    };
    // Given the changes a crashed actor kept — its own join at version 3,
    let ours = change(facts[2..].to_vec());
    // another's join claiming the same version,
    let theirs = change(vec![match facts[2].clone() {
        DomainEvent::Joined {
            status, seats, at, ..
        } => DomainEvent::Joined {
            user: UserId::new(),
            status,
            seats,
            at,
        },
        other => panic!("the third fact is the join: {other:?}"),
    }]);
    // one past the log's end,
    let beyond = EventChange {
        summary: EventSummary {
            version: joined.summary.version + 1,
            ..joined.summary.clone()
        },
        ..ours.clone()
    };
    // and the publish at version 2, whose logged fact no longer decodes —
    let published = EventChange {
        summary: EventSummary {
            version: joined.summary.version - 1,
            ..joined.summary.clone()
        },
        ..change(vec![facts[1].clone()])
    };
    store.log.lock().unwrap().get_mut(&event).unwrap()[1].schema_version = i32::MAX;
    // when it checks them against the log,
    let told = landed_of(
        &*store,
        event,
        vec![published, theirs, ours.clone(), beyond],
    )
    .await;
    // then it tells its own join alone.
    assert_eq!(
        told,
        vec![ours],
        "neither another's fact, one past the log, nor one that will not decode"
    );
}

/// A journal too full for an append refuses it at once, ahead of the
/// outcome of the actor's earlier append still being committed. The actor
/// must not leave before that lands: its replacement would load the event
/// without it.
#[actix::test]
async fn an_actor_refused_for_a_full_journal_leaves_once_its_earlier_appends_settle() {
    let store = Arc::new(MemoryStore {
        commit_delay: Duration::from_millis(300),
        ..MemoryStore::default()
    });
    let settings = JournalSettings {
        max_pending: 1,
        max_batch: 1,
        ..JournalSettings::default()
    };
    let registry = registry_with_journal(
        store.clone(),
        Arc::new(HeldShards::everything(ShardCount::DEFAULT)),
        ActorSettings::default(),
        settings,
    );
    let (event, _) = open_event(&registry, 5).await;
    let member = UserId::new();
    let committing = join_committing(&store, &registry, event, member).await;
    // One join waits in the journal's buffer; the next is refused at once,
    // while the first is still being committed.
    let waiting = spawn_execute(&registry, event, join(UserId::new()), None);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let refused = registry
        .execute(event, join(UserId::new()), None, None)
        .await;
    assert_eq!(refused.unwrap_err(), CommandError::Overloaded);

    let leave = || Command::Leave {
        user: member,
        at: Utc::now(),
    };
    let left = loop {
        match registry.execute(event, leave(), None, None).await {
            Err(CommandError::Interrupted) => tokio::time::sleep(Duration::from_millis(20)).await,
            other => break other,
        }
    };
    assert!(
        committing.await.unwrap().is_ok(),
        "the first join was committed"
    );
    assert!(
        matches!(left, Ok(Reply::Done(ref outcome)) if outcome.summary.active_count == 0),
        "the committed join is known to the next actor: {left:?}"
    );
    let _ = waiting.await;
}

/// A join refused because of a cancellation still being committed is
/// answered only once the cancellation is durable.
#[actix::test]
async fn a_refusal_waits_for_the_facts_it_rests_on() {
    let (store, registry) = setup(Duration::from_millis(200));
    let (event, owner) = open_event(&registry, 10).await;
    let answered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let begun = store.commits_begun.load(Ordering::SeqCst);
    let cancel = {
        let (registry, answered) = (registry.clone(), Arc::clone(&answered));
        actix::spawn(async move {
            let cancel = Command::Cancel {
                by: owner,
                at: Utc::now(),
            };
            let done = registry.execute(event, cancel, None, None).await;
            answered.lock().unwrap().push("cancel");
            done
        })
    };
    // The cancellation is committing (for 200 ms) when the join comes.
    while store.commits_begun.load(Ordering::SeqCst) == begun {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let join = join(UserId::new());
    let refused = registry.execute(event, join, None, None).await;
    answered.lock().unwrap().push("join");
    assert!(
        matches!(refused, Err(CommandError::Rejected(_))),
        "{refused:?}"
    );
    cancel.await.unwrap().unwrap();
    assert_eq!(*answered.lock().unwrap(), vec!["cancel", "join"]);
}

#[actix::test]
async fn the_journal_groups_concurrent_appends_into_few_commits() {
    let (store, registry) = setup(Duration::from_millis(20));
    let (event, _) = open_event(&registry, 1000).await;
    let before = store.commits.load(Ordering::SeqCst);
    let joins: Vec<_> = (0..200)
        .map(|_| {
            let registry = registry.clone();
            actix::spawn(async move {
                registry
                    .execute(event, join(UserId::new()), None, None)
                    .await
            })
        })
        .collect();
    for join in joins {
        join.await.unwrap().unwrap();
    }
    let commits = store.commits.load(Ordering::SeqCst) - before;
    assert!(commits < 20, "200 joins took {commits} commits");
}

/// An actor activated under a lease this node has since let go of — a
/// handover that ran just before it started, so its `Retire` missed it —
/// answers nothing, not even "nothing changed", and leaves; the next
/// command gets a fresh actor under the lease the node holds now.
#[actix::test]
async fn an_actor_whose_lease_is_gone_answers_nothing_and_leaves() {
    let held = Arc::new(HeldShards::none(ShardCount::DEFAULT));
    let (_, registry) = setup_holding(Duration::ZERO, Arc::clone(&held));
    let event = EventId::new();
    let shard = held.shard_of(event);
    held.hold(ShardLease { shard, epoch: 1 }, far_off());
    let owner = create_event(&registry, event, 5).await;
    let publish = Command::Publish {
        by: owner,
        at: Utc::now(),
    };
    registry
        .execute(event, publish.clone(), None, None)
        .await
        .unwrap();

    // The shard went away and came back at a new epoch; the actor never
    // heard.
    held.let_go(shard);
    held.hold(ShardLease { shard, epoch: 2 }, far_off());
    assert!(matches!(
        registry.execute(event, publish.clone(), None, None).await,
        Err(CommandError::NotHere)
    ));
    let again = registry.execute(event, publish, None, None).await;
    assert!(
        matches!(again, Ok(Reply::Done(Outcome { changed: false, .. }))),
        "a fresh actor answers: {again:?}"
    );
    assert_eq!(registry.live_actors(), 1);
}

/// A lease whose renewal is late is believed no longer, at the same
/// epoch: a command reaching the actor meanwhile is answered "not here",
/// but the actor stays. Had it stepped aside, the next command after the
/// renewal would start a second actor, loaded before the first one's join
/// committed, and tell that member they are none.
#[actix::test]
async fn an_actor_whose_lease_lapsed_stays_for_the_renewal() {
    let held = Arc::new(HeldShards::none(ShardCount::DEFAULT));
    let store = Arc::new(MemoryStore {
        commit_delay: Duration::from_millis(150),
        lookup_delay: Duration::from_millis(50),
        ..MemoryStore::default()
    });
    let settings = ActorSettings {
        idle_timeout: Duration::from_millis(100),
        ..ActorSettings::default()
    };
    let registry = registry_on(store, Arc::clone(&held), settings);
    let event = EventId::new();
    let shard = held.shard_of(event);
    held.hold(ShardLease { shard, epoch: 1 }, far_off());
    let owner = create_event(&registry, event, 5).await;
    let run = |command| registry.execute(event, command, None, None);
    let now = Utc::now;
    run(Command::Publish {
        by: owner,
        at: now(),
    })
    .await
    .unwrap();

    // Given a user whose keyed commands are looked up before anything is
    // decided — they replayed a join's key after leaving, once the actor
    // that knew the key had passivated —
    let replayer = UserId::new();
    let first = join_key(replayer, "first", event);
    let keyed =
        |key: &IdempotencyKey| registry.execute(event, join(replayer), Some(key.clone()), None);
    keyed(&first).await.unwrap();
    run(Command::Leave {
        user: replayer,
        at: now(),
    })
    .await
    .unwrap();
    until_passivated(&registry).await;
    assert!(matches!(keyed(&first).await, Ok(Reply::Replayed(_))));
    // and a member's join committing,
    let member = UserId::new();
    let joined = spawn_execute(&registry, event, join(member), None);
    tokio::time::sleep(Duration::from_millis(20)).await;
    // when that user's next command is looked up as the lease lapses,
    let looking = keyed(&join_key(replayer, "second", event));
    held.hold(
        ShardLease { shard, epoch: 1 },
        std::time::Instant::now() + Duration::from_millis(5),
    );
    let answer = looking.await;
    assert!(matches!(answer, Err(CommandError::NotHere)), "{answer:?}");
    // and the lease is renewed before the member's join commits,
    held.renewed(&[shard], far_off());
    let stranger = run(Command::Leave {
        user: UserId::new(),
        at: now(),
    })
    .await;
    assert!(
        matches!(stranger, Err(CommandError::Rejected(_))),
        "{stranger:?}"
    );
    assert!(matches!(joined.await.unwrap(), Ok(Reply::Done(_))));
    // then the member may leave: one actor, which knows of the join.
    let left = run(Command::Leave {
        user: member,
        at: now(),
    })
    .await;
    assert!(matches!(left, Ok(Reply::Done(_))), "{left:?}");
    assert_eq!(registry.live_actors(), 1);
}

/// Waits (up to 10 s) until every actor of `registry` has left memory.
async fn until_passivated(registry: &EventRegistry) {
    let passivated = async {
        while registry.live_actors() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), passivated)
        .await
        .expect("the idle actors passivate");
}

/// Event `id` of one place, offered for a minute's hold when freed: its
/// member joins, a party waits, and the member leaves, every command at
/// `at`. The waiting party then holds an offer until `at` plus a minute.
async fn offer_a_place(registry: &EventRegistry, id: EventId, at: chrono::DateTime<Utc>) {
    let (owner, member) = (UserId::new(), UserId::new());
    let policy = WaitlistPolicy {
        mode: WaitlistMode::Offer,
        offer_hold: OfferHold::parse(60).unwrap(),
        ..WaitlistPolicy::default()
    };
    let join_at = |user| Command::Join {
        user,
        seats: Seats::default(),
        at,
    };
    for command in [
        Command::Create {
            id,
            owner,
            details: event_details(),
            capacity: Capacity::parse(1).unwrap(),
            policy,
            at,
        },
        Command::Publish { by: owner, at },
        join_at(member),
        join_at(UserId::new()),
        Command::Leave { user: member, at },
    ] {
        registry.execute(id, command, None, None).await.unwrap();
    }
}

/// An idle actor holding an offer leaves memory when its deadline lies
/// beyond what the server's sweep is sure to wake it for; nearer than
/// that, or with nothing to wake it, it stays for its own timer.
#[actix::test]
async fn an_idle_actor_holding_a_far_off_offer_leaves_memory() {
    let cases = [
        (Some(Duration::from_secs(10)), true),
        (Some(Duration::from_secs(120)), false),
        (None, false),
    ];
    for (offers_woken_within, leaves) in cases {
        let settings = ActorSettings {
            idle_timeout: Duration::from_millis(100),
            offers_woken_within,
            ..ActorSettings::default()
        };
        let everything = Arc::new(HeldShards::everything(ShardCount::DEFAULT));
        let (store, registry) = setup_with(Duration::ZERO, everything, settings);
        let event = EventId::new();
        offer_a_place(&registry, event, Utc::now()).await;
        assert!(
            store.log.lock().unwrap()[&event]
                .iter()
                .any(|fact| fact.event_type == "offered"),
            "the waiting party holds an offer for a minute"
        );

        if leaves {
            until_passivated(&registry).await;
        } else {
            // Many idle checks (every 50 ms past 100 ms idle) go by.
            tokio::time::sleep(Duration::from_millis(600)).await;
            assert_eq!(
                registry.live_actors(),
                1,
                "woken within {offers_woken_within:?}"
            );
        }
    }
}

/// An offer falling due while the lease has lapsed runs out once the
/// renewal lands, on the actor's own clock: not at the next command, nor
/// at the server's sweep.
#[actix::test]
async fn an_offer_due_while_the_lease_lapsed_runs_out_after_the_renewal() {
    let held = Arc::new(HeldShards::none(ShardCount::DEFAULT));
    let store = Arc::new(MemoryStore::default());
    let registry = registry_on(store.clone(), Arc::clone(&held), ActorSettings::default());
    let event = EventId::new();
    let shard = held.shard_of(event);
    held.hold(ShardLease { shard, epoch: 1 }, far_off());
    // Every command dated so that the offer's minute of hold ends 1.5 s
    // from now.
    offer_a_place(
        &registry,
        event,
        Utc::now() - chrono::Duration::milliseconds(58_500),
    )
    .await;
    let expired = || {
        store.log.lock().unwrap()[&event]
            .iter()
            .any(|fact| fact.event_type == "offer_expired")
    };

    // The lease lapses before the deadline and is renewed after it.
    held.hold(
        ShardLease { shard, epoch: 1 },
        std::time::Instant::now() + Duration::from_millis(5),
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(!expired(), "nothing is decided while the lease has lapsed");
    held.renewed(&[shard], far_off());

    let ran_out = async {
        while !expired() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), ran_out)
        .await
        .expect("the offer runs out without a command");
}

#[actix::test]
async fn facts_replayed_at_activation_count_towards_the_next_snapshot() {
    let settings = ActorSettings {
        snapshot_every: 3,
        idle_timeout: Duration::from_millis(100),
        ..ActorSettings::default()
    };
    let everything = Arc::new(HeldShards::everything(ShardCount::DEFAULT));
    let (store, registry) = setup_with(Duration::ZERO, everything, settings);
    // Given an event of two facts whose actor went idle and passivated,
    let (event, _) = open_event(&registry, 5).await;
    until_passivated(&registry).await;
    assert_eq!(store.snapshots.load(Ordering::SeqCst), 0);

    // when a fresh actor takes the third fact,
    let join = join(UserId::new());
    registry.execute(event, join, None, None).await.unwrap();

    // then it snapshots: the two it replayed count, as if one actor had
    // lived through all three.
    assert_eq!(store.snapshots.load(Ordering::SeqCst), 1);
}

/// A key answered on one event, reused on a busy other: the journal finds
/// it only after the actor decided a join for it and others' joins on top,
/// and a reload undoes them all. Once is the most that may cost: the
/// reuser's unknown keys are then looked up before anything is decided.
#[actix::test]
async fn a_key_reused_on_another_event_fails_others_once_at_most() {
    let (_, registry) = setup(Duration::from_millis(100));
    let (first, _) = open_event(&registry, 100).await;
    let (busy, _) = open_event(&registry, 100).await;
    let reuser = UserId::new();
    let key = |event| join_key(reuser, "the same key", event);
    registry
        .execute(first, join(reuser), Some(key(first)), None)
        .await
        .unwrap();

    // The reuser's join on the busy event, then ten others' while it commits.
    let round = || async {
        let reused = spawn_execute(&registry, busy, join(reuser), Some(key(busy)));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let others: Vec<_> = (0..10)
            .map(|_| spawn_execute(&registry, busy, join(UserId::new()), None))
            .collect();
        let mut failed = 0;
        for other in others {
            match other.await.unwrap() {
                Ok(_) => {}
                // Not the store's failure: the breaker must not count it.
                Err(CommandError::Interrupted) => failed += 1,
                Err(other) => panic!("{other:?}"),
            }
        }
        (reused.await.unwrap(), failed)
    };

    let (reused, failed) = round().await;
    assert!(matches!(reused, Err(CommandError::KeyReused)), "{reused:?}");
    assert!(failed > 0, "the first reuse undid others' joins");

    let (reused, failed) = round().await;
    assert!(matches!(reused, Err(CommandError::KeyReused)), "{reused:?}");
    assert_eq!(failed, 0, "the second was refused before deciding");
}

/// A refusal waits for its key's lookup; if the shard moved meanwhile, the
/// state it was decided on is another node's to judge: "not here", not
/// the refusal.
#[actix::test]
async fn a_refusal_whose_shard_moved_during_its_lookup_is_not_given() {
    let held = Arc::new(HeldShards::none(ShardCount::DEFAULT));
    let store = Arc::new(MemoryStore {
        lookup_delay: Duration::from_millis(100),
        ..MemoryStore::default()
    });
    let registry = registry_on(store.clone(), Arc::clone(&held), ActorSettings::default());
    let event = EventId::new();
    let shard = held.shard_of(event);
    held.hold(ShardLease { shard, epoch: 1 }, far_off());
    let owner = create_event(&registry, event, 5).await;

    // Given the owner's keyed join, refused and looking its key up,
    let key = join_key(owner, "k", event);
    let refused = spawn_execute(&registry, event, join(owner), Some(key));
    while store.lookups_begun.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // when the shard moves to another node before the lookup returns,
    held.let_go(shard);
    // then the refusal is not given.
    let answer = refused.await.unwrap();
    assert!(matches!(answer, Err(CommandError::NotHere)), "{answer:?}");
}

/// A retry's key unknown to the actor (a restart since) is looked up before
/// a refusal is given; with the lookups at their limit, the retry hears
/// "busy, try again", never a refusal contradicting the answer its key was
/// given.
#[actix::test]
async fn a_retry_past_the_lookup_limit_is_told_to_try_again_not_refused() {
    let store = Arc::new(MemoryStore {
        // Long enough that the retry surely comes while they run.
        lookup_delay: Duration::from_secs(1),
        ..MemoryStore::default()
    });
    let held = || Arc::new(HeldShards::everything(ShardCount::DEFAULT));
    let registry = registry_on(store.clone(), held(), ActorSettings::default());
    let (event, owner) = open_event(&registry, 5).await;
    let member = UserId::new();
    let key = join_key(member, "k", event);
    let joined = registry.execute(event, join(member), Some(key.clone()), None);
    assert!(matches!(joined.await, Ok(Reply::Done(_))));
    let cancel = Command::Cancel {
        by: owner,
        at: Utc::now(),
    };
    registry.execute(event, cancel, None, None).await.unwrap();

    // Given an actor that never knew the key (the server restarted), busy
    // looking up the keys of as many refused joins as it looks up at once,
    let registry = registry_on(store.clone(), held(), ActorSettings::default());
    let refused: Vec<_> = (0..MAX_LOOKUPS)
        .map(|n| {
            let user = UserId::new();
            spawn_execute(
                &registry,
                event,
                join(user),
                Some(join_key(user, &n.to_string(), event)),
            )
        })
        .collect();
    while store.lookups_begun.load(Ordering::SeqCst) < MAX_LOOKUPS {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // when the member retries their join with its key,
    let retry = registry
        .execute(event, join(member), Some(key.clone()), None)
        .await;
    // then they are told the event is busy, not that it is cancelled;
    assert!(matches!(retry, Err(CommandError::Overloaded)), "{retry:?}");
    for answer in refused {
        let answer = answer.await.unwrap();
        assert!(
            matches!(answer, Err(CommandError::Rejected(_))),
            "{answer:?}"
        );
    }
    // and once the lookups are done, the retry replays the join's answer.
    let retry = registry.execute(event, join(member), Some(key), None).await;
    assert!(matches!(retry, Ok(Reply::Replayed(_))), "{retry:?}");
}

/// One fresh key sent to two events at once: the second event refuses it
/// before deciding, so the journal never finds it answered at commit and
/// nobody else's join on that event is undone.
#[actix::test]
async fn a_fresh_key_raced_on_two_events_fails_nobody_elses_command() {
    let (_, registry) = setup(Duration::from_millis(100));
    let (first, _) = open_event(&registry, 100).await;
    let (busy, _) = open_event(&registry, 100).await;
    let racer = UserId::new();
    let key = |event| Some(join_key(racer, "raced", event));
    let spawn_join = |event, user, key| spawn_execute(&registry, event, join(user), key);

    // Given the key's join in flight on one event,
    let on_first = spawn_join(first, racer, key(first));
    tokio::time::sleep(Duration::from_millis(20)).await;
    // when the same key reaches another event, among others' joins,
    let on_busy = spawn_join(busy, racer, key(busy));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let others: Vec<_> = (0..10)
        .map(|_| spawn_join(busy, UserId::new(), None))
        .collect();
    let on_busy = on_busy.await.unwrap();

    // then it is refused there at once, and every other join stands.
    assert!(
        matches!(on_busy, Err(CommandError::KeyInUse)),
        "{on_busy:?}"
    );
    for other in others {
        assert!(other.await.unwrap().is_ok(), "another's join was undone");
    }
    assert!(on_first.await.unwrap().is_ok());
    // Once settled, the key's verdict is the usual one: used for another request.
    let after = spawn_join(busy, racer, key(busy)).await.unwrap();
    assert!(matches!(after, Err(CommandError::KeyReused)), "{after:?}");
}

/// A second node on `store`, which snapshots every three facts.
fn snapshotting_every_three(store: &Arc<MemoryStore>) -> EventRegistry {
    let lowered = ActorSettings {
        snapshot_every: 3,
        ..ActorSettings::default()
    };
    let everything = Arc::new(HeldShards::everything(ShardCount::DEFAULT));
    registry_on(store.clone(), everything, lowered)
}

/// A snapshot falls due at activation when more facts were replayed than
/// `snapshot_every` (written before it was lowered, say). A first command
/// that writes nothing must leave it due, not take it and drop it.
#[actix::test]
async fn a_snapshot_due_at_activation_waits_for_a_command_that_writes() {
    let (store, before) = setup(Duration::ZERO);
    let (event, owner) = open_event(&before, 10).await;
    for _ in 0..3 {
        before
            .execute(event, join(UserId::new()), None, None)
            .await
            .unwrap();
    }
    // Given five facts and no snapshot, read by a node that snapshots
    // every three,
    let after = snapshotting_every_three(&store);
    // when its first command changes nothing, and the next writes,
    let again = Command::Publish {
        by: owner,
        at: Utc::now(),
    };
    let unchanged = after.execute(event, again, None, None).await;
    assert!(matches!(
        unchanged,
        Ok(Reply::Done(Outcome { changed: false, .. }))
    ));
    assert_eq!(store.snapshots.load(Ordering::SeqCst), 0);
    after
        .execute(event, join(UserId::new()), None, None)
        .await
        .unwrap();

    // then the one that writes carries the snapshot.
    assert_eq!(store.snapshots.load(Ordering::SeqCst), 1);
}

/// A due snapshot rides only on an append with facts: a keyed command that
/// changes nothing may be answered from its stored key and write nothing,
/// and the snapshot with it.
#[actix::test]
async fn a_snapshot_due_is_not_lost_on_a_replayed_command_that_writes_nothing() {
    let (store, before) = setup(Duration::ZERO);
    let (event, _) = open_event(&before, 10).await;
    let member = UserId::new();
    let key = join_key(member, "k", event);
    let joined = before.execute(event, join(member), Some(key.clone()), None);
    assert!(matches!(joined.await, Ok(Reply::Done(_))));
    // Given three facts and no snapshot, read by a node that snapshots
    // every three and never knew the member's key,
    let after = snapshotting_every_three(&store);
    // when its first command is the member's join again under that key
    // (nothing to change: the journal answers it from the stored key),
    let again = after.execute(event, join(member), Some(key), None).await;
    assert!(matches!(again, Ok(Reply::Replayed(_))), "{again:?}");
    assert_eq!(store.snapshots.load(Ordering::SeqCst), 0);
    // then the next command that writes carries the snapshot.
    after
        .execute(event, join(UserId::new()), None, None)
        .await
        .unwrap();
    assert_eq!(store.snapshots.load(Ordering::SeqCst), 1);
}

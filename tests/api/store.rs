//! The store adapters under the actors, on the real databases: what one
//! commit writes, idempotency expiry, and old fact shapes read back.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use sqlx::Connection;
use turnout::store::{self, EventFilter, PoolSettings, Store};
use turnout_actors::domain::{
    Capacity, Command, EventDetails, EventId, EventState, GeoBox, GeoPoint, MemberStatus,
    PolicyPatch, Seats, Title, UserId, VenueId, WaitlistMode, WaitlistPolicy, decide, evolve,
};
use turnout_actors::placement::{ShardCount, ShardLease, shard_of};
use turnout_actors::shards::HeldShards;
use turnout_actors::store::{Append, EventStore, EventSummary, IdempotencyRecord};
use turnout_actors::{ActorSettings, CommandError, EventRegistry, Journal, JournalSettings};

use crate::helpers::{Backend, fresh_database};

fn pool() -> PoolSettings {
    PoolSettings {
        max_connections: 4,
        min_connections: 0,
        acquire_timeout_ms: 3000,
        idle_timeout_secs: 60,
    }
}

async fn open(backend: Backend, dir: &tempfile::TempDir) -> Option<(Arc<dyn Store>, String)> {
    let url = fresh_database(backend, dir).await?;
    Some((
        store::connect(&url, &pool(), JournalSettings::default().commit_timeout)
            .await
            .expect("store opens"),
        url,
    ))
}

fn registry(
    store: &Arc<dyn Store>,
    settings: ActorSettings,
    threads: Vec<ArbiterHandle>,
) -> EventRegistry {
    registry_with_journal(store, settings, threads, JournalSettings::default())
}

fn registry_with_journal(
    store: &Arc<dyn Store>,
    settings: ActorSettings,
    threads: Vec<ArbiterHandle>,
    journal: JournalSettings,
) -> EventRegistry {
    let event_store: Arc<dyn EventStore> = store.clone();
    let journal = Journal::new(event_store, journal).start();
    EventRegistry::new(
        store.clone(),
        journal,
        Arc::new(turnout_actors::changes::NoChanges),
        settings,
        threads,
        Arc::new(HeldShards::everything(ShardCount::DEFAULT)),
    )
}

async fn create_event(
    store: &Arc<dyn Store>,
    registry: &EventRegistry,
    owner: UserId,
    capacity: i64,
) -> EventId {
    create_event_at(store, registry, owner, capacity, (0.0, 0.0)).await
}

/// A published event at a venue of its own at `(lat, lon)`, starting in a
/// day.
async fn create_event_at(
    store: &Arc<dyn Store>,
    registry: &EventRegistry,
    owner: UserId,
    capacity: i64,
    (lat, lon): (f64, f64),
) -> EventId {
    let venue = VenueId::new();
    store
        .create_venue(&store::VenueRecord {
            id: venue.as_uuid(),
            owner_id: owner.as_uuid(),
            name: "Hall".into(),
            lat,
            lon,
            address: None,
            time_zone: None,
            created_at: 0,
        })
        .await
        .unwrap();
    let id = EventId::new();
    let details = EventDetails {
        title: Title::parse("Fixture").unwrap(),
        description: None,
        venue_id: venue,
        starts_at: Utc::now() + chrono::Duration::days(1),
        ends_at: None,
        tags: vec![],
    };
    let create = Command::Create {
        id,
        owner,
        details,
        capacity: Capacity::parse(capacity).unwrap(),
        policy: WaitlistPolicy::default(),
        at: Utc::now(),
    };
    registry.execute(id, create, None, None).await.unwrap();
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
    id
}

/// A one-seat join by a new user, now.
fn a_join() -> Command {
    join_of(UserId::new())
}

/// A one-seat join by `user`, now.
fn join_of(user: UserId) -> Command {
    Command::Join {
        user,
        seats: Seats::default(),
        at: Utc::now(),
    }
}

/// The event as its log (and snapshot) tell it.
async fn current_state(store: &Arc<dyn Store>, event: EventId) -> EventState {
    store
        .load(event)
        .await
        .unwrap()
        .into_state()
        .unwrap()
        .expect("the event exists")
}

/// A published event of capacity five, as its log tells it (created
/// through actors of its own; the test then commits to the store itself).
async fn event_of_five(store: &Arc<dyn Store>) -> EventState {
    let registry = registry(store, ActorSettings::default(), vec![Arbiter::current()]);
    let event = create_event(store, &registry, UserId::new(), 5).await;
    current_state(store, event).await
}

/// Counts rows with a query both backends understand.
async fn count(url: &str, sql: &'static str, id: uuid::Uuid) -> i64 {
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::query_scalar(sql)
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::query_scalar(sql)
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
    }
}

/// Runs a statement both backends understand, `$1` bound to `id`.
async fn execute(url: &str, sql: String, id: uuid::Uuid) {
    let sql = sqlx::AssertSqlSafe(sql);
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::query(sql).bind(id).execute(&pool).await.unwrap();
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::query(sql).bind(id).execute(&pool).await.unwrap();
    }
}

/// The log's facts of a version range are read whatever snapshot covers
/// them (a crashed actor compares them with its own), and none past its end.
async fn logged_facts_are_read_under_a_snapshot(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, _)) = open(backend, &dir).await else {
        return;
    };
    let every_two = ActorSettings {
        snapshot_every: 2,
        ..ActorSettings::default()
    };
    let registry = registry(&store, every_two, vec![Arbiter::current()]);
    let event = create_event(&store, &registry, UserId::new(), 5).await;
    let member = UserId::new();
    for user in [UserId::new(), member] {
        registry
            .execute(event, join_of(user), None, None)
            .await
            .unwrap();
    }
    let loaded = store.load(event).await.unwrap();
    let snapshot = loaded.snapshot.as_ref().map(|s| s.version);
    let version = loaded.into_state().unwrap().unwrap().version;
    assert_eq!(
        snapshot,
        Some(version),
        "the last join's append carried a snapshot"
    );

    let logged = store
        .logged_facts(event, version - 1, version + 5)
        .await
        .unwrap();
    let facts: Vec<_> = logged.into_iter().map(|f| f.decode().unwrap()).collect();
    assert!(
        matches!(facts.as_slice(), [turnout_actors::domain::DomainEvent::Joined { user, .. }] if *user == member),
        "{facts:?}"
    );
    assert_eq!(
        store.logged_facts(event, 0, version).await.unwrap().len() as u64,
        version
    );
}

async fn one_commit_writes_log_read_models_and_outbox(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, url)) = open(backend, &dir).await else {
        return;
    };
    let registry = registry(&store, ActorSettings::default(), vec![Arbiter::current()]);
    let owner = UserId::new();
    let event = create_event(&store, &registry, owner, 1).await;
    for _ in 0..3 {
        registry.execute(event, a_join(), None, None).await.unwrap();
    }
    let id = event.as_uuid();
    assert_eq!(
        count(
            &url,
            "SELECT COUNT(*) FROM event_log WHERE stream_id = $1",
            id
        )
        .await,
        5
    );
    assert_eq!(
        count(
            &url,
            "SELECT COUNT(*) FROM outbox WHERE aggregate_id = $1",
            id
        )
        .await,
        5
    );
    assert_eq!(
        count(
            &url,
            "SELECT COUNT(*) FROM outbox WHERE aggregate_id = $1 AND status = 'pending'",
            id
        )
        .await,
        5,
        "one pending outbox message per fact"
    );
    assert_eq!(
        count(&url, "SELECT COUNT(*) FROM joins WHERE event_id = $1", id).await,
        3
    );
    assert_eq!(
        count(
            &url,
            "SELECT active_count + waitlist_count FROM events WHERE id = $1",
            id
        )
        .await,
        3
    );
}

async fn expired_idempotency_records_are_purged(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, _)) = open(backend, &dir).await else {
        return;
    };
    let settings = ActorSettings {
        idempotency_ttl: chrono::Duration::seconds(-1),
        ..ActorSettings::default()
    };
    let registry = registry(&store, settings, vec![Arbiter::current()]);
    let owner = UserId::new();
    let event = create_event(&store, &registry, owner, 5).await;
    let user = UserId::new();
    let key = turnout_actors::IdempotencyKey {
        user,
        key: "k".into(),
        fingerprint: "f".into(),
    };
    registry
        .execute(
            event,
            Command::Join {
                user,
                seats: Seats::default(),
                at: Utc::now(),
            },
            Some(key),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        store.purge_expired_replies(Utc::now(), 10).await.unwrap(),
        1
    );
    assert_eq!(
        store.purge_expired_replies(Utc::now(), 10).await.unwrap(),
        0
    );
}

/// Published outbox rows go once published before the bound, at most the
/// batch's limit per call; rows still pending stay whatever their age.
async fn published_outbox_rows_are_purged_in_batches(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, url)) = open(backend, &dir).await else {
        return;
    };
    let registry = registry(&store, ActorSettings::default(), vec![Arbiter::current()]);
    let event = create_event(&store, &registry, UserId::new(), 1).await;
    for _ in 0..3 {
        registry.execute(event, a_join(), None, None).await.unwrap();
    }
    let pending = store
        .outbox(turnout::store::OutboxStatus::Pending, 0, 100)
        .await
        .unwrap();
    assert_eq!(pending.len(), 5, "created, and a fact per join");
    assert!(
        pending.iter().all(|m| m.next_attempt_at == 0),
        "a new row is due at once, whatever the relay's node's clock says"
    );
    let ids: Vec<i64> = pending.iter().take(3).map(|m| m.id).collect();
    let published_at = 1_000;
    store.outbox_published(&ids, published_at).await.unwrap();
    assert_eq!(
        store
            .purge_published_outbox(published_at, 100)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .purge_published_outbox(published_at + 1, 2)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .purge_published_outbox(published_at + 1, 100)
            .await
            .unwrap(),
        1
    );
    let left = "SELECT COUNT(*) FROM outbox WHERE aggregate_id = $1 AND status = 'pending'";
    assert_eq!(count(&url, left, event.as_uuid()).await, 2);
    let all = "SELECT COUNT(*) FROM outbox WHERE aggregate_id = $1";
    assert_eq!(count(&url, all, event.as_uuid()).await, 2);
}

/// Purging every published row keeps the newest, so a message written
/// afterwards still takes an id above every id before it (SQLite numbers a
/// row after the largest id present).
async fn outbox_ids_never_go_back_after_a_purge(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, _url)) = open(backend, &dir).await else {
        return;
    };
    let registry = registry(&store, ActorSettings::default(), vec![Arbiter::current()]);
    let event = create_event(&store, &registry, UserId::new(), 1).await;
    let join = || a_join();
    registry.execute(event, join(), None, None).await.unwrap();
    let pending = |store: Arc<dyn Store>| async move {
        store
            .outbox(turnout::store::OutboxStatus::Pending, 0, 100)
            .await
            .unwrap()
    };
    let ids: Vec<i64> = pending(store.clone()).await.iter().map(|m| m.id).collect();
    let newest = *ids.iter().max().unwrap();
    store.outbox_published(&ids, 1_000).await.unwrap();
    assert_eq!(
        store.purge_published_outbox(2_000, 100).await.unwrap(),
        ids.len() as u64 - 1,
        "all but the newest"
    );

    registry.execute(event, join(), None, None).await.unwrap();
    let after = pending(store.clone()).await;
    assert_eq!(after.len(), 1);
    assert!(after[0].id > newest, "{} after {newest}", after[0].id);
}

/// A backlog of many batches (a long outage, a shorter retention) is purged
/// whole, a batch per statement, and what has not expired stays.
async fn a_purge_takes_a_backlog_of_many_batches(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, url)) = open(backend, &dir).await else {
        return;
    };
    let user = uuid::Uuid::now_v7();
    let keep_until = turnout::store::micros(Utc::now() + chrono::Duration::hours(1));
    let insert = |keys: i64, expires_at: i64| {
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {keys}) \
             INSERT INTO idempotency_keys (user_id, key, fingerprint, answer, created_at, expires_at) \
             SELECT $1, 'k' || i || '-{expires_at}', 'f', '{{}}', 0, {expires_at} FROM n"
        )
    };
    for (keys, expires_at) in [(12_345, 0), (1, keep_until)] {
        execute(&url, insert(keys, expires_at), user).await;
    }
    // Held: a shutdown signal whose sender is gone stops the purge.
    let background = turnout::background::Background::default();
    let mut shutdown = background.shutdown();
    let now = Utc::now();
    let purge = turnout::background::purge_in_batches(&mut shutdown, |limit| {
        store.purge_expired_replies(now, limit)
    });
    assert_eq!(purge.await.unwrap(), 12_345);
    let left = "SELECT COUNT(*) FROM idempotency_keys WHERE user_id = $1";
    assert_eq!(count(&url, left, user).await, 1);
}

/// A key answered by one actor incarnation is replayed by another that never
/// saw it (a restart, another node): the journal checks stored keys — and a
/// replay never has a second effect, even after the user left.
async fn an_old_key_replays_across_actor_incarnations(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, _)) = open(backend, &dir).await else {
        return;
    };
    let first = registry(&store, ActorSettings::default(), vec![Arbiter::current()]);
    let owner = UserId::new();
    let event = create_event(&store, &first, owner, 5).await;
    let user = UserId::new();
    let key = || turnout_actors::IdempotencyKey {
        user,
        key: "join-once".into(),
        fingerprint: format!("join {event}"),
    };
    let join = || Command::Join {
        user,
        seats: Seats::default(),
        at: Utc::now(),
    };
    let answer = first
        .execute(event, join(), Some(key()), None)
        .await
        .unwrap();
    assert!(matches!(answer, turnout_actors::Reply::Done(ref o) if o.changed));

    // A fresh incarnation: the user is a member, and the key is stored.
    let second = registry(&store, ActorSettings::default(), vec![Arbiter::current()]);
    let replay = second
        .execute(event, join(), Some(key()), None)
        .await
        .unwrap();
    assert!(
        matches!(replay, turnout_actors::Reply::Replayed(answer) if answer.changed),
        "{replay:?}"
    );

    // The user leaves; the old key replayed on yet another incarnation must
    // not join them again.
    first
        .execute(
            event,
            Command::Leave {
                user,
                at: Utc::now(),
            },
            None,
            None,
        )
        .await
        .unwrap();
    let third = registry(&store, ActorSettings::default(), vec![Arbiter::current()]);
    let replay = third
        .execute(event, join(), Some(key()), None)
        .await
        .unwrap();
    assert!(
        matches!(replay, turnout_actors::Reply::Replayed(answer) if answer.changed),
        "{replay:?}"
    );
    let row = store.event(event).await.unwrap().unwrap();
    assert_eq!(row.active_count, 0, "no second effect");
    // And the incarnation that replayed reloaded: it still decides correctly.
    let other = UserId::new();
    let joined = third
        .execute(
            event,
            Command::Join {
                user: other,
                seats: Seats::default(),
                at: Utc::now(),
            },
            None,
            None,
        )
        .await
        .unwrap();
    assert!(matches!(joined, turnout_actors::Reply::Done(ref o) if o.summary.active_count == 1));

    // The same key for a different request is refused.
    let mut reused = key();
    reused.fingerprint = "something else".into();
    let refused = third.execute(event, join(), Some(reused), None).await;
    assert_eq!(refused.unwrap_err(), CommandError::KeyReused);

    // Cancelled now, the event would refuse the join; an incarnation that
    // never saw the key still gives the answer stored under it.
    third
        .execute(
            event,
            Command::Cancel {
                by: owner,
                at: Utc::now(),
            },
            None,
            None,
        )
        .await
        .unwrap();
    let fourth = registry(&store, ActorSettings::default(), vec![Arbiter::current()]);
    let replay = fourth
        .execute(event, join(), Some(key()), None)
        .await
        .unwrap();
    assert!(
        matches!(replay, turnout_actors::Reply::Replayed(answer) if answer.changed),
        "{replay:?}"
    );
    let mut reused = key();
    reused.fingerprint = "something else".into();
    let refused = fourth.execute(event, join(), Some(reused), None).await;
    assert_eq!(refused.unwrap_err(), CommandError::KeyReused);
}

/// A stream written by an older build (a v1 `created` fact, tags as one
/// string) still loads and is upcast.
async fn an_old_fact_shape_loads(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, url)) = open(backend, &dir).await else {
        return;
    };
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../../actors/tests/fixtures/created_v1.json")).unwrap();
    let stream = uuid::Uuid::parse_str(fixture["id"].as_str().unwrap()).unwrap();
    let insert = "INSERT INTO event_log (stream_id, version, event_type, schema_version, payload, request_id, recorded_at) \
                  VALUES ($1, 1, 'created', 1, $2, NULL, 0)";
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query(insert)
            .bind(stream)
            .bind(sqlx::types::Json(&fixture))
            .execute(&pool)
            .await
            .unwrap();
    } else {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query(insert)
            .bind(stream)
            .bind(sqlx::types::Json(&fixture))
            .execute(&pool)
            .await
            .unwrap();
    }
    let state = current_state(&store, EventId::from(stream)).await;
    let tags: Vec<&str> = state.details.tags.iter().map(|t| t.as_str()).collect();
    assert_eq!(tags, ["jazz", "late-night"]);
    assert_eq!(state.version, 1);
}

/// With the actor's thread blocked, its bounded mailbox fills and further
/// commands are refused at once (503 upstream), never queued without bound.
async fn a_full_mailbox_refuses_instead_of_growing(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, _)) = open(backend, &dir).await else {
        return;
    };
    let thread = Arbiter::new();
    // The mailbox's four and the one the actor has in hand.
    const HELD: usize = 5;
    const SENT: usize = 20;
    let settings = ActorSettings {
        mailbox_capacity: HELD - 1,
        ..ActorSettings::default()
    };
    let registry = registry(&store, settings, vec![thread.handle()]);
    let owner = UserId::new();
    let event = create_event(&store, &registry, owner, 100).await;

    let (blocked, unblock) = std::sync::mpsc::channel::<()>();
    let (held, holding) = tokio::sync::oneshot::channel::<()>();
    thread.spawn_fn(move || {
        let _ = held.send(());
        let _ = unblock.recv_timeout(Duration::from_secs(10));
    });
    // No command is sent before the actor's thread is held: on a busy
    // machine the thread could otherwise take a few before it blocks.
    holding.await.expect("the actor's thread is held");
    let mut pending = Vec::new();
    for _ in 0..SENT {
        let registry = registry.clone();
        pending.push(actix_web::rt::spawn(async move {
            registry.execute(event, a_join(), None, None).await
        }));
    }
    // Those the mailbox cannot take are refused at once; wait for them
    // (rather than for a fixed time a loaded machine may overrun).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pending.iter().filter(|task| task.is_finished()).count() < SENT - HELD
        && std::time::Instant::now() < deadline
    {
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
    blocked.send(()).unwrap();
    let mut refused = 0;
    let mut joined = 0;
    for task in pending {
        match task.await.unwrap() {
            Ok(_) => joined += 1,
            Err(CommandError::Overloaded) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(refused > 0, "some commands were refused");
    assert!(
        joined > 0 && joined <= HELD,
        "the mailbox held at most its capacity (+1 in hand): {joined}"
    );
    let row = store.event(event).await.unwrap().unwrap();
    assert_eq!(
        row.active_count, joined as i64,
        "refused commands changed nothing"
    );
    thread.stop();
}

/// A writer that decided on top of a fact that was never written is refused
/// like one that lost a race, and nothing of its append is kept: the log has
/// no gaps, whatever the journal in front of it lets through.
async fn an_append_that_skips_a_version_is_refused(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, _)) = open(backend, &dir).await else {
        return;
    };
    let state = event_of_five(&store).await;
    let event = state.id;
    let join = a_join();
    let facts = decide(Some(&state), &join).unwrap();
    let after = facts.iter().fold(Some(state.clone()), evolve).unwrap();
    let append = |base_version| Append {
        lease: None,
        stream: event,
        writer: u64::MAX,
        base_version,
        facts: facts.clone(),
        summary: EventSummary::from(&after),
        snapshot: None,
        idempotency: None,
        request_id: None,
        span: tracing::Span::none(),
    };

    let skipping = store.commit(&[append(state.version + 1)]).await.unwrap();
    assert_eq!(skipping.conflicted, vec![0]);
    let reloaded = current_state(&store, event).await;
    assert_eq!(reloaded.version, state.version, "nothing of it was written");

    let following = store.commit(&[append(state.version)]).await.unwrap();
    assert!(following.conflicted.is_empty());
    let reloaded = current_state(&store, event).await;
    assert_eq!(reloaded.version, after.version);
}

/// Two writers decide a join on the same version; the second to commit
/// loses the race for it and leaves nothing behind: no membership, no
/// stored answer, no second outbox row for the version (which would also
/// collide with the first's).
async fn a_fact_whose_version_was_taken_writes_nothing(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, url)) = open(backend, &dir).await else {
        return;
    };
    let state = event_of_five(&store).await;
    let event = state.id;
    let keyed_join = |user: UserId| {
        let facts = decide(
            Some(&state),
            &Command::Join {
                user,
                seats: Seats::default(),
                at: Utc::now(),
            },
        )
        .unwrap();
        let after = facts.iter().fold(Some(state.clone()), evolve).unwrap();
        let mut append = keyed_no_op(&after, user, "join", 0, Utc::now());
        append.base_version = state.version;
        append.facts = facts;
        append
    };
    let (first, second) = (UserId::new(), UserId::new());

    let won = store.commit(&[keyed_join(first)]).await.unwrap();
    assert!(won.conflicted.is_empty());
    let lost = store.commit(&[keyed_join(second)]).await.unwrap();
    assert_eq!(lost.conflicted, vec![0], "its version was taken");

    let reloaded = current_state(&store, event).await;
    assert!(reloaded.membership(first).is_some());
    assert!(reloaded.membership(second).is_none());
    assert!(store.stored_answer(first, "join").await.unwrap().is_some());
    assert!(
        store.stored_answer(second, "join").await.unwrap().is_none(),
        "the loser's answer was not kept"
    );
    let facts = count(
        &url,
        "SELECT COUNT(*) FROM event_log WHERE stream_id = $1",
        event.as_uuid(),
    )
    .await;
    let messages = count(
        &url,
        "SELECT COUNT(*) FROM outbox WHERE aggregate_id = $1",
        event.as_uuid(),
    )
    .await;
    assert_eq!(messages, facts, "one outbox row per fact written");
    let members = count(
        &url,
        "SELECT COUNT(*) FROM joins WHERE event_id = $1",
        event.as_uuid(),
    )
    .await;
    assert_eq!(members, 1);
}

/// Two appends of one batch under the same key: the first is written, the
/// second replays the first's answer — and nothing of the batch fails.
async fn a_key_taken_twice_in_one_batch_is_answered_once(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, _)) = open(backend, &dir).await else {
        return;
    };
    let state = event_of_five(&store).await;
    let user = UserId::new();
    let first = keyed_no_op(&state, user, "twice", 1, Utc::now());
    let again = keyed_no_op(&state, user, "twice", 2, Utc::now());

    let report = store.commit(&[first.clone(), again]).await.unwrap();
    assert!(report.conflicted.is_empty(), "{report:?}");
    let [(1, given)] = report.replayed.as_slice() else {
        panic!("the second append replays: {report:?}");
    };
    let kept = first.idempotency.unwrap().answer;
    assert_eq!(given.answer, kept, "the first's answer");
    let stored = store.stored_answer(user, "twice").await.unwrap().unwrap();
    assert_eq!(stored.answer, kept);
}

/// An append without facts (a keyed command that changed nothing) on
/// `state`'s version, its answer (told apart by a waitlist `position`) kept
/// for 24 hours from `created_at`.
fn keyed_no_op(
    state: &EventState,
    user: UserId,
    key: &str,
    position: usize,
    created_at: chrono::DateTime<Utc>,
) -> Append {
    Append {
        lease: None,
        stream: state.id,
        writer: u64::MAX,
        base_version: state.version,
        facts: Vec::new(),
        summary: EventSummary::from(state),
        snapshot: None,
        idempotency: Some(IdempotencyRecord {
            user,
            key: key.into(),
            fingerprint: "POST /join".into(),
            answer: turnout_actors::Answer {
                changed: false,
                membership: Some(turnout_actors::domain::Membership::Waitlisted {
                    position,
                    joined_at: created_at,
                    seats: Seats::default(),
                }),
            },
            created_at,
            expires_at: created_at + chrono::Duration::hours(24),
        }),
        request_id: None,
        span: tracing::Span::none(),
    }
}

/// A keyed command that changed nothing writes no fact, so the log cannot
/// tell that it was decided on a version another writer has since moved
/// past: the store must, or the caller would be told "you are in" of an
/// event that has gone on without them, and the event's row would go back.
async fn a_keyed_append_without_facts_on_an_old_version_is_refused(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, _)) = open(backend, &dir).await else {
        return;
    };
    let before = event_of_five(&store).await;
    let event = before.id;
    // Another writer moves the event on.
    let join = a_join();
    let facts = decide(Some(&before), &join).unwrap();
    let after = facts.iter().fold(Some(before.clone()), evolve).unwrap();
    let moved_on = Append {
        lease: None,
        stream: event,
        writer: u64::MAX - 1,
        base_version: before.version,
        facts,
        summary: EventSummary::from(&after),
        snapshot: None,
        idempotency: None,
        request_id: None,
        span: tracing::Span::none(),
    };
    assert!(
        store
            .commit(&[moved_on])
            .await
            .unwrap()
            .conflicted
            .is_empty()
    );

    let no_op =
        |state: &EventState, key: &str| keyed_no_op(state, UserId::new(), key, 1, Utc::now());
    let stale = store.commit(&[no_op(&before, "stale")]).await.unwrap();
    assert_eq!(
        stale.conflicted,
        vec![0],
        "decided on a version since passed"
    );
    let row = store.event(event).await.unwrap().unwrap();
    assert_eq!(
        row.version, after.version as i64,
        "the event's row did not go back"
    );
    assert_eq!(row.active_count, after.active.len() as i64);

    let current = store.commit(&[no_op(&after, "current")]).await.unwrap();
    assert!(
        current.conflicted.is_empty(),
        "on the latest version it stands"
    );
}

/// A key whose answer expired but was not yet purged takes a new answer:
/// the old row must not shadow it.
async fn an_expired_key_takes_a_new_answer_before_the_purge(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, _)) = open(backend, &dir).await else {
        return;
    };
    let state = event_of_five(&store).await;
    let user = UserId::new();
    let keyed = |position: usize, age: chrono::Duration| {
        keyed_no_op(&state, user, "reused", position, Utc::now() - age)
    };
    let expired = keyed(1, chrono::Duration::hours(25));
    assert!(store.commit(&[expired]).await.unwrap().replayed.is_empty());
    let fresh = store
        .commit(&[keyed(2, chrono::Duration::zero())])
        .await
        .unwrap();
    assert!(
        fresh.replayed.is_empty(),
        "an expired answer is not replayed"
    );
    let again = store
        .commit(&[keyed(3, chrono::Duration::zero())])
        .await
        .unwrap();
    assert_eq!(again.replayed.len(), 1);
    assert_eq!(
        again.replayed[0].1.answer.membership.map(|m| match m {
            turnout_actors::domain::Membership::Waitlisted { position, .. } => position,
            _ => 0,
        }),
        Some(2),
        "the new answer was kept"
    );
}

/// A new user's join decided on `state`, as an append under `lease`, and
/// the state after it.
fn joined_under(state: &EventState, lease: ShardLease) -> (Append, EventState) {
    let command = a_join();
    let facts = decide(Some(state), &command).unwrap();
    let after = facts.iter().fold(Some(state.clone()), evolve).unwrap();
    let append = Append {
        lease: Some(lease),
        stream: state.id,
        writer: u64::MAX,
        base_version: state.version,
        facts,
        summary: EventSummary::from(&after),
        snapshot: None,
        idempotency: None,
        request_id: None,
        span: tracing::Span::none(),
    };
    (append, after)
}

/// A node that lost a shard's lease cannot write to that shard's events,
/// even on the right version: a node that paused while its lease lapsed and
/// another node took the shard is fenced by the epoch, in the commit's own
/// transaction.
async fn an_append_under_a_lost_lease_is_fenced(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, _)) = open(backend, &dir).await else {
        return;
    };
    let registry = registry(&store, ActorSettings::default(), vec![Arbiter::current()]);
    let event = create_event(&store, &registry, UserId::new(), 5).await;
    let shards = ShardCount::DEFAULT;
    let shard = shard_of(event, shards);
    store.seed_leases(i64::from(shards.get())).await.unwrap();
    let (paused, successor) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let ttl = 5_000_000;
    let now = store.clock().await.unwrap();
    let first = store
        .take_shard(i64::from(shard.get()), paused, 0, now, now + ttl)
        .await
        .unwrap()
        .expect("a free shard is taken");

    let state = current_state(&store, event).await;
    let join = |state: &EventState, epoch: i64| {
        joined_under(
            state,
            ShardLease {
                shard,
                epoch: epoch as u64,
            },
        )
        .0
    };
    let held = store.commit(&[join(&state, first)]).await.unwrap();
    assert!(held.fenced.is_empty() && held.conflicted.is_empty());

    // The holder falls silent past its lease; another node takes the shard.
    let later = now + ttl + 1;
    let second = store
        .take_shard(i64::from(shard.get()), successor, first, later, later + ttl)
        .await
        .unwrap()
        .expect("a lapsed lease is taken");
    assert!(second > first, "taking a shard moves its epoch on");
    assert_eq!(
        store
            .take_shard(i64::from(shard.get()), paused, first, later, later + ttl)
            .await
            .unwrap(),
        None,
        "a lease is taken once per epoch"
    );
    let at = |node, epoch| (node, vec![(i64::from(shard.get()), epoch)]);
    for ((node, leases), renewed) in [
        (at(paused, first), vec![]),
        (at(successor, first), vec![]),
        (at(successor, second), vec![i64::from(shard.get())]),
    ] {
        assert_eq!(
            store
                .renew_shards(node, &leases, later + ttl)
                .await
                .unwrap(),
            renewed,
            "only the holder at the current epoch renews"
        );
    }
    // A renewal never pulls an expiry back (a take of the shard after the
    // renewal read the clock writes a later one than the renewal's).
    let (_, held) = at(successor, second);
    let renewed = store.renew_shards(successor, &held, later).await.unwrap();
    assert_eq!(renewed, vec![i64::from(shard.get())]);
    let leases = store.leases().await.unwrap();
    let lease = leases
        .iter()
        .find(|l| l.shard == i64::from(shard.get()))
        .unwrap();
    assert_eq!(lease.expires_at, later + ttl, "the later expiry is kept");

    // The paused node wakes up and writes on the right version: fenced.
    let state = current_state(&store, event).await;
    let stale = store.commit(&[join(&state, first)]).await.unwrap();
    assert_eq!(stale.fenced, vec![0]);
    assert!(stale.conflicted.is_empty());
    assert_eq!(
        current_state(&store, event).await.version,
        state.version,
        "nothing of a fenced append is written"
    );

    // The new holder writes at its epoch.
    let fresh = store.commit(&[join(&state, second)]).await.unwrap();
    assert!(fresh.fenced.is_empty() && fresh.conflicted.is_empty());
    assert_eq!(
        current_state(&store, event).await.version,
        state.version + 1
    );
}

/// A node renews its leases while its commits hold them: both take the
/// lease rows in shard order, so neither waits on the other in a circle
/// (before, Postgres broke such deadlocks by failing a commit: 503s).
async fn lease_renewals_never_deadlock_with_commits(backend: Backend) {
    use rand::seq::SliceRandom;

    let dir = tempfile::tempdir().unwrap();
    let Some((store, _)) = open(backend, &dir).await else {
        return;
    };
    let registry = registry(&store, ActorSettings::default(), vec![Arbiter::current()]);
    let shards = ShardCount::DEFAULT;
    store.seed_leases(i64::from(shards.get())).await.unwrap();
    let node = uuid::Uuid::new_v4();
    let now = store.clock().await.unwrap();
    let until = now + 600_000_000;
    // Taken in random order, so the rows' physical order is not the shards'.
    let mut order: Vec<u32> = (0..shards.get()).collect();
    order.shuffle(&mut rand::rng());
    let mut epochs = std::collections::HashMap::new();
    for shard in order {
        let epoch = store
            .take_shard(i64::from(shard), node, 0, now, until)
            .await
            .unwrap()
            .unwrap();
        epochs.insert(shard, epoch as u64);
    }
    let mut states = Vec::new();
    for _ in 0..40 {
        let event = create_event(&store, &registry, UserId::new(), 100_000).await;
        states.push(current_state(&store, event).await);
    }

    let all: Vec<(i64, i64)> = (0..shards.get())
        .map(|shard| (i64::from(shard), epochs[&shard] as i64))
        .collect();
    let renewing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let renewals = {
        let (store, renewing, all) = (store.clone(), renewing.clone(), all.clone());
        tokio::spawn(async move {
            let mut renewed = 0;
            while renewing.load(std::sync::atomic::Ordering::Relaxed) {
                let renewed_now = store
                    .renew_shards(node, &all, until)
                    .await
                    .expect("a renewal");
                assert_eq!(renewed_now.len(), all.len(), "every lease held");
                renewed += 1;
            }
            renewed
        })
    };
    for _ in 0..60 {
        let mut batch = Vec::new();
        for state in states.iter_mut() {
            let shard = shard_of(state.id, shards);
            let epoch = epochs[&shard.get()];
            let (append, after) = joined_under(state, ShardLease { shard, epoch });
            batch.push(append);
            *state = after;
        }
        let report = store.commit(&batch).await.expect("no commit fails");
        assert!(report.fenced.is_empty() && report.conflicted.is_empty());
    }
    renewing.store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(renewals.await.unwrap() > 0);
}

/// The outbox relay's lease (on SQLite written through the journal's
/// connection): one holder at a time, renewed by its holder, taken by
/// another only once it ran out; its epoch (the relay's fencing token)
/// kept by a renewal, raised by each change of hands, never below the
/// time it changed hands.
async fn the_relay_lease_has_one_holder_until_it_runs_out(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, _)) = open(backend, &dir).await else {
        return;
    };
    let ttl = 10_000_000;
    let now = Utc::now().timestamp_micros();
    let take = |holder: &'static str, at: i64| {
        let store = Arc::clone(&store);
        async move {
            store
                .take_lease("relay-test", holder, at, ttl)
                .await
                .unwrap()
        }
    };
    let first = take("a", now).await.expect("a free lease is taken");
    assert_eq!(first, now, "a lease's first epoch is when it was taken");
    assert_eq!(take("b", now + 1).await, None, "held by a: b is refused");
    assert_eq!(
        take("a", now + 2).await,
        Some(first),
        "its holder renews it, at its epoch"
    );
    assert_eq!(take("b", now + ttl).await, None, "renewed: still a's");
    let second = take("b", now + 2 + ttl + 1)
        .await
        .expect("run out: b takes it");
    assert_eq!(
        second,
        now + 2 + ttl + 1,
        "taken over, at the time it changed hands"
    );
    assert_eq!(take("a", now + 2 + ttl + 2).await, None, "now a is refused");
    // The database's clock stepped back while b renewed: its lease runs
    // out before the time of its epoch, and the next epoch still rises.
    let back = now - 5 * ttl;
    assert_eq!(
        take("b", back).await,
        Some(second),
        "renewed on a clock stepped back"
    );
    let third = take("a", back + ttl + 1)
        .await
        .expect("run out: a takes it");
    assert_eq!(
        third,
        second + 1,
        "above b's, though the clock is behind it"
    );
}

/// The journal's own Postgres connection, closed under it by the server,
/// is opened again: a join whose commit found it closed is refused whole,
/// and the next one is written.
#[actix_web::test]
async fn postgres_the_journal_opens_its_connection_again_after_losing_it() {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, url)) = open(Backend::Postgres, &dir).await else {
        return;
    };
    let registry = registry(&store, ActorSettings::default(), vec![Arbiter::current()]);
    let event = create_event(&store, &registry, UserId::new(), 10).await;

    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let closed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()) AS k",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(closed >= 1, "the journal's connection was open");

    // The first join's commit finds the connection closed (the server said
    // why before closing it: a fatal error, not a socket's); the next one
    // goes through a new connection.
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let join = a_join();
        let outcome = registry.execute(event, join, None, None).await;
        let written = outcome.is_ok();
        outcomes.push(outcome);
        if written {
            break;
        }
    }
    assert!(
        outcomes.last().is_some_and(|o| o.is_ok()),
        "a join is written once the connection is open again: {outcomes:?}"
    );
    for refused in &outcomes[..outcomes.len() - 1] {
        assert!(
            matches!(refused, Err(CommandError::Unavailable)),
            "a commit on the closed connection is refused as unavailable: {refused:?}"
        );
    }
    assert_eq!(
        count(
            &url,
            "SELECT COUNT(*) FROM joins WHERE event_id = $1",
            event.as_uuid()
        )
        .await,
        1,
        "only the join that was answered is stored"
    );
}

/// Another node's journal takes the same key (a client that reused it for
/// an event held there) while this one's commit is under way: the commit
/// began before that answer was written, so its check of the stored keys
/// cannot see it, and the write of its own answer waits for the other's
/// commit and then leaves the row alone. It must find the other answer
/// and replay it, not write its facts with no answer kept. Once for a join
/// (the one statement) and once for a cancel (the transaction).
#[actix_web::test]
async fn postgres_a_key_another_node_answered_meanwhile_is_replayed() {
    for cancel in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let Some((store, url)) = open(Backend::Postgres, &dir).await else {
            return;
        };
        let state = event_of_five(&store).await;
        let user = UserId::new();
        let command = match cancel {
            false => Command::Join {
                user,
                seats: Seats::default(),
                at: Utc::now(),
            },
            true => Command::Cancel {
                by: state.owner,
                at: Utc::now(),
            },
        };
        let facts = decide(Some(&state), &command).unwrap();
        let after = facts.iter().fold(Some(state.clone()), evolve).unwrap();
        let mut append = keyed_no_op(&after, user, "shared", 0, Utc::now());
        append.base_version = state.version;
        append.facts = facts;
        assert_eq!(append.cancels(), cancel);

        let admin = sqlx::PgPool::connect(&url).await.unwrap();
        let mut other = admin.begin().await.unwrap();
        let now = Utc::now().timestamp_micros();
        sqlx::query(
            "INSERT INTO idempotency_keys (user_id, key, fingerprint, answer, created_at, \
             expires_at) VALUES ($1, 'shared', 'POST /elsewhere', \
             '{\"changed\":true,\"membership\":null}', $2, $3)",
        )
        .bind(user.as_uuid())
        .bind(now)
        .bind(now + 3_600_000_000)
        .execute(&mut *other)
        .await
        .unwrap();
        let committing = actix_web::rt::spawn({
            let store = Arc::clone(&store);
            async move { store.commit(&[append]).await }
        });
        // Until this node's commit waits on the other's row.
        let mut waits = false;
        for _ in 0..500 {
            waits = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock')",
            )
            .fetch_one(&admin)
            .await
            .unwrap();
            if waits {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(waits, "the commit never waited for the other node's key");
        other.commit().await.unwrap();

        let report = committing.await.unwrap().unwrap();
        let [(0, given)] = report.replayed.as_slice() else {
            panic!("cancel {cancel}: the other node's answer is replayed: {report:?}");
        };
        assert_eq!(given.fingerprint, "POST /elsewhere");
        assert_eq!(
            current_state(&store, state.id).await.version,
            state.version,
            "cancel {cancel}: no fact written"
        );
    }
}

/// The recommendations' catalog read afresh (at start, or after missed
/// changes) dates an event's announcement from its creation: the row's
/// `updated_at` moves with every join, and the busiest events would look
/// just announced.
async fn a_reloaded_catalog_dates_announcements_before_the_joins(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, _)) = open(backend, &dir).await else {
        return;
    };
    let registry = registry(&store, ActorSettings::default(), vec![Arbiter::current()]);
    let event = create_event(&store, &registry, UserId::new(), 10).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let joins_began = Utc::now();
    for _ in 0..3 {
        registry.execute(event, a_join(), None, None).await.unwrap();
    }

    let settings = turnout_actors::recommend::RecommendSettings::default();
    let catalog = turnout::recommendations::load_catalog(store.as_ref(), &settings)
        .await
        .unwrap();

    let card = catalog.card(event).expect("the event is in the catalog");
    assert_eq!(card.joiners, 3);
    let announced = card.published_at.expect("a published event is announced");
    assert!(
        announced < joins_began,
        "announced at {announced}, after the joins that began at {joins_began}"
    );
}

/// Leases and heartbeats are written and judged by the database's clock,
/// in unix microseconds, whichever node reads it.
async fn the_cluster_keeps_time_by_the_databases_clock(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, _)) = open(backend, &dir).await else {
        return;
    };
    let before = store::micros(Utc::now());
    let first = store.clock().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = store.clock().await.unwrap();
    let after = store::micros(Utc::now());
    // The database runs on this machine: its clock is this one's, give or
    // take a few milliseconds of rounding (SQLite's is in milliseconds).
    assert!(
        (before - 5_000..=after + 5_000).contains(&first),
        "{first} is not unix microseconds between {before} and {after}"
    );
    assert!(
        second >= first + 15_000,
        "{first} then {second}, 20 ms apart"
    );
}

/// A node's row is its process's (by its start time): the heartbeat tells
/// its own row from none and from another process's under the same id; a
/// leaving deletes only its own; registering again after the row went
/// never writes over another's.
async fn a_nodes_row_is_its_processs(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, _)) = open(backend, &dir).await else {
        return;
    };
    use turnout::store::{Heartbeat, NodeRecord};
    let now = store.clock().await.unwrap();
    let id = uuid::Uuid::new_v4();
    let process = |started_at: i64| NodeRecord {
        id,
        address: "127.0.0.1:1".into(),
        started_at,
        heartbeat_at: now,
    };
    let (first, twin) = (process(now), process(now + 1));
    store.register_node(&first).await.unwrap();
    assert_eq!(
        store
            .heartbeat(id, first.started_at, now + 5)
            .await
            .unwrap(),
        Heartbeat::Heard
    );

    store.register_node(&twin).await.unwrap();
    assert_eq!(
        store
            .heartbeat(id, first.started_at, now + 6)
            .await
            .unwrap(),
        Heartbeat::Superseded
    );
    assert!(
        !store.register_node_if_absent(&first).await.unwrap(),
        "not over the twin's row"
    );
    store.deregister_node(id, first.started_at).await.unwrap();
    assert_eq!(
        store.heartbeat(id, twin.started_at, now + 7).await.unwrap(),
        Heartbeat::Heard,
        "the first's leaving left the twin's row"
    );

    store.deregister_node(id, twin.started_at).await.unwrap();
    assert_eq!(
        store.heartbeat(id, twin.started_at, now + 8).await.unwrap(),
        Heartbeat::Gone
    );
    assert!(
        store.register_node_if_absent(&twin).await.unwrap(),
        "its row gone, it registers again"
    );
    assert_eq!(
        store.heartbeat(id, twin.started_at, now + 9).await.unwrap(),
        Heartbeat::Heard
    );
}

/// A person's live places for their `me` snapshot are read newest first up
/// to a limit; the places they left must not take that room: a live place
/// joined before many that ended is still found.
async fn live_places_are_not_crowded_out_by_ended_ones(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, _)) = open(backend, &dir).await else {
        return;
    };
    let registry = registry(&store, ActorSettings::default(), vec![Arbiter::current()]);
    let owner = UserId::new();
    let user = UserId::new();
    let staying = create_event(&store, &registry, owner, 10).await;
    let join = || Command::Join {
        user,
        seats: Seats::default(),
        at: Utc::now(),
    };
    registry.execute(staying, join(), None, None).await.unwrap();
    let mut ended = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let left = create_event(&store, &registry, owner, 10).await;
        registry.execute(left, join(), None, None).await.unwrap();
        let leave = Command::Leave {
            user,
            at: Utc::now(),
        };
        registry.execute(left, leave, None, None).await.unwrap();
        ended.push(left);
    }

    let places = store.live_places_of(user, 2).await.unwrap();
    let events: Vec<uuid::Uuid> = places.iter().map(|p| p.membership.event_id).collect();
    assert_eq!(events, vec![staying.as_uuid()], "{places:?}");

    // A `me` refresh reads how the places it knew stand now, ended ones
    // with their final status; an event the person was never in has none.
    let never = create_event(&store, &registry, owner, 10).await;
    let known = [staying, ended[0], never];
    let mut now: Vec<(uuid::Uuid, MemberStatus)> = store
        .places_in(user, &known)
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.membership.event_id, p.membership.status))
        .collect();
    now.sort_by_key(|(event, _)| *event == ended[0].as_uuid());
    assert_eq!(
        now,
        vec![
            (staying.as_uuid(), MemberStatus::Active),
            (ended[0].as_uuid(), MemberStatus::Left),
        ]
    );
}

/// The events a person is in, for their recommendations: every upcoming
/// one however many joins came after it, and of the rest only the most
/// recent (a long history of events gone by must not crowd out one still
/// to come, which would then be recommended back to them).
async fn upcoming_joins_are_not_crowded_out_of_a_profile(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, _)) = open(backend, &dir).await else {
        return;
    };
    let registry = registry(&store, ActorSettings::default(), vec![Arbiter::current()]);
    let (owner, user) = (UserId::new(), UserId::new());
    let mut joined = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let event = create_event(&store, &registry, owner, 10).await;
        registry
            .execute(event, join_of(user), None, None)
            .await
            .unwrap();
        joined.push(event.as_uuid());
    }
    // Each starts tomorrow: now, all three are to come.
    let now = store.current_joins_of(user, Utc::now(), 1).await.unwrap();
    assert_eq!(now, joined);
    // Seen from three days on, all are gone by: the most recent alone.
    let later = Utc::now() + chrono::Duration::days(3);
    let then = store.current_joins_of(user, later, 1).await.unwrap();
    assert_eq!(then, joined[2..]);
}

/// The offer clock's read of events whose offers run out soon, the most
/// urgent first, page after page: every event comes once, in order, however
/// many pages it takes (a cluster's page may be all other nodes' events).
async fn offers_due_are_read_page_by_page(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, _)) = open(backend, &dir).await else {
        return;
    };
    let registry = registry(&store, ActorSettings::default(), vec![Arbiter::current()]);
    let owner = UserId::new();
    let mut offering = Vec::new();
    for _ in 0..5 {
        let event = create_event(&store, &registry, owner, 1).await;
        let offers = Command::Update {
            by: owner,
            patch: Default::default(),
            capacity: None,
            policy: PolicyPatch {
                mode: Some(WaitlistMode::Offer),
                ..PolicyPatch::default()
            },
            at: Utc::now(),
        };
        let (member, waiter) = (UserId::new(), UserId::new());
        for command in [
            offers,
            join_of(member),
            join_of(waiter),
            Command::Leave {
                user: member,
                at: Utc::now(),
            },
        ] {
            registry.execute(event, command, None, None).await.unwrap();
        }
        offering.push(event);
    }
    // One more holding no offer, and nothing due past the horizon.
    create_event(&store, &registry, owner, 1).await;
    let by = Utc::now() + chrono::Duration::days(1);
    assert!(
        store
            .events_with_offers_due(Utc::now(), None, 10)
            .await
            .unwrap()
            .is_empty(),
        "nothing is due yet"
    );

    let (mut read, mut after) = (Vec::new(), None);
    loop {
        let page = store.events_with_offers_due(by, after, 2).await.unwrap();
        read.extend(page.iter().copied());
        if page.len() < 2 {
            break;
        }
        after = page.last().copied();
    }
    let events: Vec<EventId> = read.iter().map(|due| due.event).collect();
    // Made one after another, each offer runs out after the one before.
    assert_eq!(events, offering);
    assert!(read.windows(2).all(|pair| pair[0].due <= pair[1].due));
}

/// A radius feed's load selects events by a box around its circle.
async fn events_are_selected_by_a_box(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, _)) = open(backend, &dir).await else {
        return;
    };
    let registry = registry(&store, ActorSettings::default(), vec![Arbiter::current()]);
    let owner = UserId::new();
    let amsterdam = GeoPoint {
        lat: 52.37,
        lon: 4.9,
    };
    let inside = create_event_at(&store, &registry, owner, 5, (52.40, 4.95)).await;
    let rotterdam = create_event_at(&store, &registry, owner, 5, (51.92, 4.48)).await;
    let area = GeoBox::around(amsterdam, 10.0);

    let filter = |within| EventFilter {
        within,
        from: Some(Utc::now()),
        limit: 10,
        ..EventFilter::default()
    };
    let ids = |events: Vec<store::EventRecord>| -> Vec<uuid::Uuid> {
        events.into_iter().map(|e| e.id).collect()
    };
    let boxed = store.list_events(&filter(Some(area))).await.unwrap();
    assert_eq!(ids(boxed), [inside.as_uuid()]);
    let everywhere = store.list_events(&filter(None)).await.unwrap();
    assert_eq!(everywhere.len(), 2);
    assert!(ids(everywhere).contains(&rotterdam.as_uuid()));
}

/// A commit the journal gave up on (its `commit_timeout` passed) was
/// answered as failed: it must not land later. On Postgres a statement left
/// running when the journal drops its connection runs on, so the journal's
/// connection gives up on a statement, or a lock, sooner than the journal.
/// (Postgres only: on SQLite the attempt runs on the journal's own thread,
/// bounded by SQLite's busy timeout, and nothing is left running.)
#[actix_web::test]
async fn postgres_a_commit_the_journal_gave_up_on_never_lands() {
    let backend = Backend::Postgres;
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(backend, &dir).await else {
        return;
    };
    let commit_timeout = Duration::from_secs(1);
    let store = store::connect(&url, &pool(), commit_timeout).await.unwrap();
    let journal = JournalSettings {
        commit_timeout,
        ..JournalSettings::default()
    };
    let registry = registry_with_journal(
        &store,
        ActorSettings::default(),
        vec![Arbiter::current()],
        journal,
    );
    let event = create_event(&store, &registry, UserId::new(), 10).await;

    // Another transaction holds the event's row, as a slow one would.
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT 1 FROM events WHERE id = $1 FOR UPDATE")
        .bind(event.as_uuid())
        .execute(&mut holder)
        .await
        .unwrap();
    let joined = registry.execute(event, a_join(), None, None).await;
    assert!(joined.is_err(), "the commit could not finish: {joined:?}");
    // Past the journal's deadline, the row is let go.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let facts = store.load(event).await.unwrap().facts;
    assert_eq!(
        facts.len(),
        2,
        "created and published only: the join answered as failed never landed"
    );
}

macro_rules! store_tests {
    ($($name:ident),*) => {
        mod sqlite {
            $( #[actix_web::test] async fn $name() { super::$name(crate::helpers::Backend::Sqlite).await } )*
        }
        mod postgres {
            $( #[actix_web::test] async fn $name() { super::$name(crate::helpers::Backend::Postgres).await } )*
        }
    };
}

store_tests!(
    logged_facts_are_read_under_a_snapshot,
    one_commit_writes_log_read_models_and_outbox,
    expired_idempotency_records_are_purged,
    a_purge_takes_a_backlog_of_many_batches,
    published_outbox_rows_are_purged_in_batches,
    outbox_ids_never_go_back_after_a_purge,
    an_old_fact_shape_loads,
    an_old_key_replays_across_actor_incarnations,
    a_full_mailbox_refuses_instead_of_growing,
    an_append_that_skips_a_version_is_refused,
    an_append_under_a_lost_lease_is_fenced,
    the_relay_lease_has_one_holder_until_it_runs_out,
    lease_renewals_never_deadlock_with_commits,
    a_keyed_append_without_facts_on_an_old_version_is_refused,
    an_expired_key_takes_a_new_answer_before_the_purge,
    a_fact_whose_version_was_taken_writes_nothing,
    a_key_taken_twice_in_one_batch_is_answered_once,
    the_cluster_keeps_time_by_the_databases_clock,
    a_nodes_row_is_its_processs,
    a_reloaded_catalog_dates_announcements_before_the_joins,
    live_places_are_not_crowded_out_by_ended_ones,
    upcoming_joins_are_not_crowded_out_of_a_profile,
    offers_due_are_read_page_by_page,
    events_are_selected_by_a_box
);

//! The outbox relay against the real Redis: facts reach the stream in
//! order, survive Redis being away, and a message Redis refuses goes dead
//! and is replayed by an admin. Runs when `TURNOUT_TEST_REDIS_URL` is set.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::Value;
use turnout::store::OutboxStatus;
use uuid::Uuid;

use crate::helpers::{
    Backend, EVENTUALLY, TcpProxy, TestApp, User, body, metric, redis_address, redis_connection,
    spawn_app_with, wait_until,
};

fn redis_url() -> Option<String> {
    crate::helpers::redis_test_url("the outbox relay tests")
}

fn backend() -> Backend {
    if crate::helpers::postgres_base_url().is_some() {
        Backend::Postgres
    } else {
        Backend::Sqlite
    }
}

async fn stream(
    redis: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> Vec<(String, Vec<(String, String)>)> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(redis)
        .await
        .unwrap();
    reply
        .ids
        .into_iter()
        .map(|entry| {
            let fields = entry
                .map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap()))
                .collect();
            (entry.id, fields)
        })
        .collect()
}

/// A stream prefix of this test's own, and its events stream.
fn fresh_stream() -> (String, String) {
    let prefix = format!("turnout-test-{}:", Uuid::new_v4().simple());
    let key = format!("{prefix}events");
    (prefix, key)
}

/// Adds an entry of id `id` (`*`: now) to the stream `key`.
async fn add_entry(redis: &mut redis::aio::MultiplexedConnection, key: &str, id: &str) {
    let _: String = redis::cmd("XADD")
        .arg(key)
        .arg(id)
        .arg("payload")
        .arg("{}")
        .query_async(redis)
        .await
        .unwrap();
}

async fn delete(redis: &mut redis::aio::MultiplexedConnection, key: &str) {
    let _: () = redis::cmd("DEL").arg(key).query_async(redis).await.unwrap();
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    &fields.iter().find(|(k, _)| k == name).unwrap().1
}

/// An admin of `app`, by token.
fn admin_of(app: &TestApp) -> User {
    User {
        id: Uuid::now_v7(),
        token: app.token_with_role("admin"),
    }
}

/// The facts the daily-facts consumer has counted, over the last two days.
async fn facts_counted(app: &TestApp, admin: &User) -> i64 {
    let response = app
        .as_user(admin, Method::GET, "/v1/admin/stats?days=2")
        .send()
        .await
        .unwrap();
    body(response).await["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["facts"].as_i64().unwrap())
        .sum()
}

#[actix_web::test]
async fn facts_reach_the_stream_in_order_even_after_redis_was_away() {
    let Some(url) = redis_url() else { return };
    let mut check = redis_connection(&url).await;
    let proxy = TcpProxy::to(redis_address(&url)).await;
    let (prefix, key) = fresh_stream();
    let app = spawn_app_with(backend(), |s| {
        s.redis_url = Some(SecretString::from(format!(
            "redis://127.0.0.1:{}",
            proxy.port
        )));
        s.outbox.stream_prefix = prefix.clone();
        s.outbox.batch = 7;
    })
    .await
    .unwrap();
    let store = app.store().await;

    // Redis goes away; the server keeps taking joins, the outbox grows.
    proxy.off();
    let owner = app.user();
    let event = app.published_event(&owner, 10).await;
    for _ in 0..25 {
        let joined = app.join(&app.user(), event).await;
        let status = joined.status();
        assert!(
            status.is_success(),
            "{status}: {}",
            joined.text().await.unwrap()
        );
    }
    let (pending, _) = store.outbox_counts().await.unwrap();
    assert!(pending >= 27, "{pending} pending");
    assert!(stream(&mut check, &key).await.is_empty());

    // Back: it drains, in commit order, every fact exactly once.
    proxy.on();
    wait_until(EVENTUALLY, "the outbox drained", || {
        let store = Arc::clone(&store);
        async move { store.outbox_counts().await.unwrap().0 == 0 }
    })
    .await;
    let entries = stream(&mut check, &key).await;
    assert_eq!(entries.len() as i64, pending, "one entry per fact");
    let outbox_ids: Vec<i64> = entries
        .iter()
        .map(|(_, f)| field(f, "outbox_id").parse().unwrap())
        .collect();
    assert!(
        outbox_ids.windows(2).all(|w| w[0] < w[1]),
        "in order: {outbox_ids:?}"
    );
    let versions: Vec<i64> = entries
        .iter()
        .filter(|(_, f)| field(f, "aggregate_id") == event.to_string())
        .map(|(_, f)| field(f, "stream_version").parse().unwrap())
        .collect();
    assert_eq!(versions, (1..=versions.len() as i64).collect::<Vec<_>>());
    let (_, first) = &entries[0];
    assert_eq!(field(first, "event_type"), "created");
    assert!(!field(first, "request_id").is_empty());
    let payload: Value = serde_json::from_str(field(first, "payload")).unwrap();
    // The daily-facts consumer read the stream (in its consumer group) and
    // counted each fact once — also one delivered twice.
    let (_, last) = entries.last().unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg(
            last.iter()
                .flat_map(|(k, v)| [k.as_str(), v.as_str()])
                .collect::<Vec<_>>(),
        )
        .query_async(&mut check)
        .await
        .unwrap();
    let admin = admin_of(&app);
    wait_until(EVENTUALLY, "every fact counted once", || {
        let (app, admin) = (app.clone(), admin.clone());
        async move { facts_counted(&app, &admin).await == pending }
    })
    .await;
    let mut pending_entries = 1;
    for _ in 0..50 {
        let summary: redis::Value = redis::cmd("XPENDING")
            .arg(&key)
            .arg("turnout-daily-facts")
            .query_async(&mut check)
            .await
            .unwrap();
        pending_entries = match summary {
            redis::Value::Array(items) => match items.first() {
                Some(redis::Value::Int(n)) => *n,
                _ => 0,
            },
            _ => 0,
        };
        if pending_entries == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pending_entries, 0, "every entry acknowledged");
    assert!(
        payload["schema_version"].as_i64().unwrap() >= 1,
        "{payload}"
    );
    assert!(payload["event"].is_object(), "{payload}");
    delete(&mut check, &key).await;
}

/// A connection to Redis that goes silent (a failover, a partition:
/// nothing answers and nothing closes) holds no consumer for ever: its
/// blocking read times out, it connects again, and the facts committed
/// meanwhile are counted.
#[actix_web::test]
async fn a_consumer_whose_redis_went_silent_connects_again() {
    let Some(url) = redis_url() else { return };
    let proxy = TcpProxy::to(redis_address(&url)).await;
    let (prefix, key) = fresh_stream();
    let app = spawn_app_with(backend(), |s| {
        s.redis_url = Some(SecretString::from(format!(
            "redis://127.0.0.1:{}",
            proxy.port
        )));
        s.outbox.stream_prefix = prefix.clone();
    })
    .await
    .unwrap();
    let admin = admin_of(&app);
    let owner = app.user();
    let event = app.published_event(&owner, 10).await;
    wait_until(
        EVENTUALLY,
        "the event's creation and publication counted",
        || {
            let (app, admin) = (app.clone(), admin.clone());
            async move { facts_counted(&app, &admin).await == 2 }
        },
    )
    .await;

    proxy.freeze();
    for _ in 0..3 {
        assert!(app.join(&app.user(), event).await.status().is_success());
    }
    wait_until(
        EVENTUALLY,
        "the joins made while Redis was silent counted",
        || {
            let (app, admin) = (app.clone(), admin.clone());
            async move { facts_counted(&app, &admin).await == 5 }
        },
    )
    .await;
    delete(&mut redis_connection(&url).await, &key).await;
}

#[actix_web::test]
async fn a_message_redis_refuses_goes_dead_and_an_admin_replays_it() {
    let Some(url) = redis_url() else { return };
    let mut check = redis_connection(&url).await;
    let (prefix, key) = fresh_stream();
    // Not a stream: every XADD to it is refused.
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("not a stream")
        .query_async(&mut check)
        .await
        .unwrap();
    let app = spawn_app_with(backend(), |s| {
        s.redis_url = Some(SecretString::from(url.clone()));
        s.outbox.stream_prefix = prefix.clone();
        s.outbox.max_attempts = 2;
    })
    .await
    .unwrap();
    let admin = admin_of(&app);
    let owner = app.user();
    app.published_event(&owner, 10).await;

    let dead = |app: TestApp, admin: User| async move {
        let response = app
            .as_user(&admin, Method::GET, "/v1/admin/outbox/dead")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        body(response).await["data"].as_array().unwrap().clone()
    };
    wait_until(EVENTUALLY, "both facts are dead", || {
        let (app, admin) = (app.clone(), admin.clone());
        async move { dead(app, admin).await.len() == 2 }
    })
    .await;
    let listed = dead(app.clone(), admin.clone()).await;
    assert_eq!(listed[0]["event_type"], "created");
    assert_eq!(listed[0]["attempts"], 2);
    assert!(
        listed[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("refused")
    );
    let store = app.store().await;
    assert_eq!(
        store.outbox(OutboxStatus::Dead, 0, 10).await.unwrap().len(),
        2
    );

    // The operator fixes Redis and replays both, oldest first.
    delete(&mut check, &key).await;
    for message in &listed {
        let response = app
            .as_user(
                &admin,
                Method::POST,
                &format!("/v1/admin/outbox/{}/replay", message["id"]),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body(response).await["data"]["status"], "pending");
    }
    wait_until(EVENTUALLY, "the replayed facts are published", || {
        let store = Arc::clone(&store);
        async move { store.outbox_counts().await.unwrap() == (0, 0) }
    })
    .await;
    let entries = stream(&mut check, &key).await;
    let types: Vec<&str> = entries
        .iter()
        .map(|(_, f)| field(f, "event_type"))
        .collect();
    assert_eq!(types, ["created", "published"]);
    delete(&mut check, &key).await;
}

#[actix_web::test]
async fn two_servers_on_one_database_publish_every_fact_once_in_order() {
    let Some(url) = redis_url() else { return };
    let mut check = redis_connection(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let database = crate::helpers::fresh_database(backend(), &dir)
        .await
        .unwrap();
    let (prefix, key) = fresh_stream();
    let tweak = |s: &mut turnout::config::Settings| {
        s.redis_url = Some(SecretString::from(url.clone()));
        s.outbox.stream_prefix = prefix.clone();
        s.outbox.batch = 5;
    };
    let a = crate::helpers::spawn_node(&database, tweak).await;
    let b = crate::helpers::spawn_node(&database, tweak).await;
    let store = a.store().await;

    // Each node commits its own event's facts; both relays run, one holds
    // the lease at a time.
    let (on_a, on_b) = (
        a.published_event(&a.user(), 100).await,
        b.published_event(&b.user(), 100).await,
    );
    for _ in 0..20 {
        assert!(a.join(&a.user(), on_a).await.status().is_success());
        assert!(b.join(&b.user(), on_b).await.status().is_success());
    }
    wait_until(EVENTUALLY, "the outbox drained", || {
        let store = Arc::clone(&store);
        async move { store.outbox_counts().await.unwrap().0 == 0 }
    })
    .await;
    let entries = stream(&mut check, &key).await;
    let ids: Vec<i64> = entries
        .iter()
        .map(|(_, f)| field(f, "outbox_id").parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 44, "2 events × (created, published) + 40 joins");
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "once each, in order: {ids:?}"
    );
    delete(&mut check, &key).await;
}

/// A relay whose lease epoch is below the fence Redis keeps publishes
/// nothing, says so, and leaves its rows pending; once the fence is its own
/// (here an operator deletes one left by another database), the rows go
/// out in order.
#[actix_web::test]
async fn a_relay_behind_the_fence_publishes_nothing_until_it_is_lifted() {
    let Some(url) = redis_url() else { return };
    let mut check = redis_connection(&url).await;
    let (prefix, key) = fresh_stream();
    let fence = turnout::outbox::fence_key(&prefix);
    // Above any epoch a lease taken today can have (unix µs).
    let _: () = redis::cmd("SET")
        .arg(&fence)
        .arg(9_000_000_000_000_000_i64)
        .query_async(&mut check)
        .await
        .unwrap();
    let app = spawn_app_with(backend(), |s| {
        s.redis_url = Some(SecretString::from(url.clone()));
        s.outbox.stream_prefix = prefix.clone();
    })
    .await
    .unwrap();
    let store = app.store().await;
    let started = store.clock().await.unwrap();
    // The counter is the test process's: other tests' servers count too.
    let fenced = |app: TestApp| async move {
        metric(&app.metrics().await, "turnout_outbox_fenced_total").unwrap_or(0.0)
    };
    let before = fenced(app.clone()).await;
    let event = app.published_event(&app.user(), 10).await;
    assert!(app.join(&app.user(), event).await.status().is_success());

    wait_until(EVENTUALLY, "the relay was fenced off", || {
        let app = app.clone();
        async move { fenced(app).await > before }
    })
    .await;
    assert!(
        stream(&mut check, &key).await.is_empty(),
        "nothing published past the fence"
    );
    assert_eq!(
        store.outbox_counts().await.unwrap(),
        (3, 0),
        "created, published, joined: pending"
    );

    delete(&mut check, &fence).await;
    wait_until(EVENTUALLY, "the outbox drained", || {
        let store = Arc::clone(&store);
        async move { store.outbox_counts().await.unwrap().0 == 0 }
    })
    .await;
    let types: Vec<String> = stream(&mut check, &key)
        .await
        .iter()
        .map(|(_, f)| field(f, "event_type").to_owned())
        .collect();
    assert_eq!(types, ["created", "published", "joined"]);
    let raised: i64 = redis::cmd("GET")
        .arg(&fence)
        .query_async(&mut check)
        .await
        .unwrap();
    assert!(
        raised >= started,
        "the relay's epoch, at least the time it took the lease, is the fence now: {raised}"
    );
    delete(&mut check, &key).await;
    delete(&mut check, &fence).await;
}

/// A stream keeps no entry older than the retention: its consumers' inbox
/// rows are purged after that, and an entry read again then would be
/// counted twice.
#[actix_web::test]
async fn stream_entries_older_than_the_retention_are_trimmed() {
    let Some(url) = redis_url() else { return };
    let mut check = redis_connection(&url).await;
    let (prefix, key) = fresh_stream();
    let two_days_ago = chrono::Utc::now().timestamp_millis() - 48 * 3_600_000;
    for id in [format!("{two_days_ago}-0"), "*".to_owned()] {
        add_entry(&mut check, &key, &id).await;
    }

    let client = redis::Client::open(url.as_str()).unwrap();
    let trimmed = turnout::outbox::trim_stream(&client, &prefix, 24)
        .await
        .unwrap();

    assert_eq!(trimmed, 1);
    let left: u64 = redis::cmd("XLEN")
        .arg(&key)
        .query_async(&mut check)
        .await
        .unwrap();
    assert_eq!(left, 1, "the entry within the retention stays");
    delete(&mut check, &key).await;
}

/// A consumer group still needs what it was handed and has not
/// acknowledged, and what it has yet to read: the trim leaves them, however
/// old, and takes them once the group is through.
#[actix_web::test]
async fn the_trim_keeps_what_a_consumer_group_still_needs() {
    let Some(url) = redis_url() else { return };
    let mut check = redis_connection(&url).await;
    let (prefix, key) = fresh_stream();
    let three_days_ago = chrono::Utc::now().timestamp_millis() - 72 * 3_600_000;
    for id in [
        format!("{three_days_ago}-0"),
        format!("{three_days_ago}-1"),
        format!("{three_days_ago}-2"),
        "*".to_owned(),
    ] {
        add_entry(&mut check, &key, &id).await;
    }
    let _: () = check.xgroup_create(&key, "slow", "0").await.unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let trim = || turnout::outbox::trim_stream(&client, &prefix, 24);

    // Given the oldest entry handed out and not acknowledged,
    let first = hand_out(&mut check, &key, "reader", 1).await;
    // the trim keeps it and what follows.
    assert_eq!(trim().await.unwrap(), 0, "handed, not acknowledged");

    // Acknowledged, the entries not yet handed still stay;
    acknowledge(&mut check, &key, &first).await;
    assert_eq!(trim().await.unwrap(), 0, "not yet handed");

    // once the group is through, the old ones go.
    let rest = hand_out(&mut check, &key, "reader", 10).await;
    acknowledge(&mut check, &key, &rest).await;
    assert_eq!(trim().await.unwrap(), 3, "the three past the retention");
    delete(&mut check, &key).await;
}

/// Up to `count` new entries of `key` for `consumer` of the group `slow`.
async fn hand_out(
    redis: &mut redis::aio::MultiplexedConnection,
    key: &str,
    consumer: &str,
    count: usize,
) -> Vec<String> {
    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("slow")
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(key)
        .arg(">")
        .query_async(redis)
        .await
        .unwrap();
    reply
        .keys
        .first()
        .map_or_else(Vec::new, |k| k.ids.iter().map(|e| e.id.clone()).collect())
}

async fn acknowledge(redis: &mut redis::aio::MultiplexedConnection, key: &str, ids: &[String]) {
    let _: u64 = redis::cmd("XACK")
        .arg(key)
        .arg("slow")
        .arg(ids)
        .query_async(redis)
        .await
        .unwrap();
}

/// Every process start joins the group under a name of its own: the names
/// of processes gone are deleted, but never one with entries pending (the
/// others claim those from it), nor the consumer itself.
#[actix_web::test]
async fn consumers_of_processes_gone_are_forgotten_unless_entries_wait_on_them() {
    let Some(url) = redis_url() else { return };
    let mut check = redis_connection(&url).await;
    let (_, key) = fresh_stream();
    for _ in 0..2 {
        add_entry(&mut check, &key, "*").await;
    }
    let _: () = check.xgroup_create(&key, "slow", "0").await.unwrap();
    let done = hand_out(&mut check, &key, "node-gone", 1).await;
    acknowledge(&mut check, &key, &done).await;
    assert_eq!(hand_out(&mut check, &key, "node-holding", 1).await.len(), 1);
    let _: bool = check
        .xgroup_createconsumer(&key, "slow", "node-me")
        .await
        .unwrap();

    let forgotten = turnout::consumers::forget_idle_consumers(
        &mut check,
        &key,
        "slow",
        "node-me",
        Duration::ZERO,
    )
    .await
    .unwrap();

    assert_eq!(forgotten, 1);
    let left: redis::streams::StreamInfoConsumersReply =
        check.xinfo_consumers(&key, "slow").await.unwrap();
    let mut names: Vec<String> = left.consumers.into_iter().map(|c| c.name).collect();
    names.sort();
    assert_eq!(names, ["node-holding", "node-me"]);
    // Nothing is forgotten that has been idle for less than asked.
    let recent = turnout::consumers::forget_idle_consumers(
        &mut check,
        &key,
        "slow",
        "node-me",
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    assert_eq!(recent, 0);
    delete(&mut check, &key).await;
}

/// The consumer group's lag, for `turnout_outbox_consumer_lag`: the entries
/// it has yet to be handed, which a stream capped at `stream_max_len` trims
/// unread once there are too many.
#[actix_web::test]
async fn a_consumer_groups_lag_is_the_entries_it_has_yet_to_be_handed() {
    let Some(url) = redis_url() else { return };
    let mut check = redis_connection(&url).await;
    let (_, key) = fresh_stream();
    for _ in 0..3 {
        add_entry(&mut check, &key, "*").await;
    }
    let _: () = check.xgroup_create(&key, "behind", "0").await.unwrap();

    let lag = turnout::consumers::group_lag(&mut check, &key, "behind").await;

    assert_eq!(lag.unwrap(), Some(3));
    let unknown = turnout::consumers::group_lag(&mut check, &key, "nobody").await;
    assert_eq!(unknown.unwrap(), None);
    delete(&mut check, &key).await;
}

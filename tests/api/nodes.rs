//! Two servers on one database: the event log's (stream_id, version) key
//! fences a stale actor, which fails its command (nothing acknowledged),
//! reloads, and then decides on the true state.

use reqwest::StatusCode;

use crate::helpers::{Backend, body, fresh_database, spawn_node};

async fn a_stale_actor_is_fenced_and_reloads(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(backend, &dir).await else {
        return;
    };
    let a = spawn_node(&url, |_| {}).await;
    let b = spawn_node(&url, |_| {}).await;

    let owner = a.register("owner@example.com").await;
    let event = a.published_event(&owner, 1).await;
    // Node A's actor now holds the event at its current version.
    let first = a.user();
    assert_eq!(a.join(&first, event).await.status(), StatusCode::CREATED);

    // Node B takes the next version.
    let second = b.user();
    let on_b = body(b.join(&second, event).await).await;
    assert_eq!(on_b["data"]["status"], "waitlisted", "{on_b}");

    // A's actor is stale: its append loses on (stream_id, version).
    let third = a.user();
    let fenced = a.join(&third, event).await;
    assert_eq!(fenced.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(fenced.headers().contains_key("retry-after"));

    // The retry goes to a reloaded actor that sees B's join.
    let retried = body(a.join(&third, event).await).await;
    assert_eq!(retried["data"]["status"], "waitlisted");
    assert_eq!(retried["data"]["position"], 2);
    let seen = a.event(event).await;
    assert_eq!(
        (
            seen["active_count"].as_i64(),
            seen["waitlist_count"].as_i64()
        ),
        (Some(1), Some(2))
    );
}

#[actix_web::test]
async fn sqlite_a_stale_actor_is_fenced_and_reloads() {
    a_stale_actor_is_fenced_and_reloads(Backend::Sqlite).await;
}

#[actix_web::test]
async fn postgres_a_stale_actor_is_fenced_and_reloads() {
    a_stale_actor_is_fenced_and_reloads(Backend::Postgres).await;
}

/// Two servers sharing the real Postgres and the real Redis: a client on
/// node A sees, in order, the joins made through node B.
#[actix_web::test]
async fn a_client_on_one_node_sees_joins_made_through_another_in_order() {
    use secrecy::SecretString;

    let Some(redis_url) = std::env::var("TURNOUT_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("TURNOUT_TEST_REDIS_URL is not set: skipping the two-node fan-out test");
        return;
    };
    let mut check = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("TURNOUT_TEST_REDIS_URL is set but Redis does not answer");
    let _: String = redis::cmd("PING").query_async(&mut check).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let backend = if crate::helpers::postgres_base_url().is_some() {
        Backend::Postgres
    } else {
        Backend::Sqlite
    };
    let url = fresh_database(backend, &dir).await.unwrap();
    let channel = format!("turnout:test:{}", uuid::Uuid::new_v4());
    let tweak = |s: &mut turnout::config::Settings| {
        s.redis_url = Some(SecretString::from(redis_url.clone()));
        s.realtime.redis_channel = channel.clone();
    };
    let a = spawn_node(&url, tweak).await;
    let b = spawn_node(&url, tweak).await;
    for node in [&a, &b] {
        for attempt in 0.. {
            let metrics = node.metrics().await;
            if metrics.lines().any(|l| l == "turnout_fanout_connected 1") {
                break;
            }
            assert!(attempt < 100, "the node never subscribed to redis");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    let owner = b.register("owner@example.com").await;
    let event = b.published_event(&owner, 100).await;
    let mut socket = crate::realtime::connect(&a).await;
    let snapshot = crate::realtime::subscribe(&mut socket, &format!("event:{event}"), None).await;
    assert_eq!(snapshot["type"], "snapshot");
    let first = snapshot["offset"].as_u64().unwrap() + 1;

    for (offset, expected) in (first..).zip(1..=30) {
        b.join(&b.user(), event).await;
        let update = crate::realtime::next(&mut socket).await;
        assert_eq!(
            update["offset"].as_u64().unwrap(),
            offset,
            "no gap, no repeat"
        );
        assert_eq!(
            update["data"]["event"]["active_count"], expected,
            "joins through B arrive at A in order"
        );
    }

    // Cut every pub/sub connection: A misses what B commits until it is back,
    // then its hubs reload and send a fresh snapshot.
    // Keep cutting while B's joins commit, so they fall into the gap.
    let killing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let killer = {
        let (killing, mut redis) = (killing.clone(), check.clone());
        tokio::spawn(async move {
            while killing.load(std::sync::atomic::Ordering::Relaxed) {
                let _: redis::RedisResult<redis::Value> = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query_async(&mut redis)
                    .await;
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    for _ in 0..5 {
        b.join(&b.user(), event).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    killing.store(false, std::sync::atomic::Ordering::Relaxed);
    killer.await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let frame = crate::realtime::next(&mut socket).await;
        if frame["type"] == "snapshot" {
            assert_eq!(frame["recovered"], false, "a resync is a fresh snapshot");
        }
        if frame["data"]["event"]["active_count"] == 35 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "A never caught up: {frame}"
        );
    }
}

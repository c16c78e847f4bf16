//! Several servers on one database. On Postgres they form a cluster: each
//! event's commands are decided by the one node holding its shard, whichever
//! node the client called, and live updates cross nodes through Redis. On
//! SQLite a second server is refused.

use std::collections::BTreeSet;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{
    Backend, TcpProxy, TestApp, body, fresh_database, redis_address, redis_connection,
    redis_test_url, spawn_node, test_settings,
};

#[actix_web::test]
async fn a_second_server_on_one_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(Backend::Sqlite, &dir).await.unwrap();
    let first = spawn_node(&url, |_| {}).await;
    let error = turnout::app::Application::build(test_settings(&url, &dir))
        .await
        .err()
        .expect("no second server on one SQLite file");
    let message = format!("{error:#}");
    assert!(
        message.contains("another Turnout server is using the SQLite database")
            && message.contains("use Postgres to run several nodes"),
        "{message}"
    );
    // The first server is unharmed.
    let owner = first.register("owner@example.com").await;
    let event = first.published_event(&owner, 1).await;
    assert_eq!(
        first.join(&first.user(), event).await.status(),
        StatusCode::CREATED
    );
}

/// Through two nodes at once, every join of every event is decided by one
/// actor: none is refused for a shard on the move or a fenced writer, none
/// overbooks, and the waitlist has one place per waiter.
#[actix_web::test]
async fn joins_through_two_nodes_are_decided_by_one_actor_each() {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(Backend::Postgres, &dir).await else {
        return;
    };
    let a = spawn_node(&url, |_| {}).await;
    let b = spawn_node(&url, |_| {}).await;
    a.wait_for_placement(2).await;

    let owner = a.register("owner@example.com").await;
    let (capacity, joiners): (i64, usize) = (10, 24);
    let mut events = Vec::new();
    for _ in 0..5 {
        events.push(a.published_event(&owner, capacity).await);
    }
    // One that b holds, so that a forwards at least that event's joins.
    // (Not counted on /metrics: its registry is the test process's, shared
    // with every app in it.)
    events.push(event_held_by(&b, &owner, capacity).await);
    let nodes = [&a, &b];
    let joins = events.iter().flat_map(|&event| {
        (0..joiners).map(move |i| {
            let node: &TestApp = nodes[i % 2];
            async move {
                let response = node.join(&node.user(), event).await;
                let status = response.status();
                (event, status, body(response).await)
            }
        })
    });
    let answers = join_all(joins).await;
    for (_, status, answer) in &answers {
        assert_eq!(*status, StatusCode::CREATED, "{answer}");
    }
    for &event in &events {
        let mine: Vec<&Value> = answers
            .iter()
            .filter(|(e, ..)| *e == event)
            .map(|(.., answer)| &answer["data"])
            .collect();
        let active = mine.iter().filter(|j| j["status"] == "active").count();
        let positions: BTreeSet<u64> = mine
            .iter()
            .filter(|j| j["status"] == "waitlisted")
            .map(|j| j["position"].as_u64().unwrap())
            .collect();
        assert_eq!(active, capacity as usize, "exactly full");
        assert_eq!(
            positions,
            (1..=(joiners as u64 - capacity as u64)).collect(),
            "one waitlist place per waiter"
        );
        for node in nodes {
            let seen = node.event(event).await;
            assert_eq!(seen["active_count"], capacity);
            assert_eq!(seen["waitlist_count"], joiners as i64 - capacity);
        }
    }
}

/// A node forwards a hot event's commands on as many connections as it has
/// in flight: the holder's per-address cap does not refuse them (it did,
/// 429 before the handler, and a leave, which carries no key, was
/// answered 503).
#[actix_web::test]
async fn forwarded_commands_pass_the_holders_per_address_cap() {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(Backend::Postgres, &dir).await else {
        return;
    };
    let a = spawn_node(&url, |_| {}).await;
    let b = spawn_node(&url, |s| s.http.max_connections_per_ip = 2).await;
    a.wait_for_placement(2).await;
    b.wait_for_placement(2).await;
    let owner = b.register("owner@example.com").await;
    let event = event_held_by(&b, &owner, 5).await;
    let members: Vec<_> = (0..24).map(|_| b.user()).collect();
    for member in &members {
        assert_eq!(b.join(member, event).await.status(), StatusCode::CREATED);
    }

    let left = join_all(members.iter().map(|member| a.leave(member, event))).await;
    let statuses: Vec<StatusCode> = left.iter().map(|r| r.status()).collect();
    assert!(
        statuses.iter().all(|s| s.is_success()),
        "every leave through the other node is answered: {statuses:?}"
    );
    // Through a: b's cap is shared with this test's own client.
    assert_eq!(a.event(event).await["active_count"], 0);
}

/// Two servers sharing the real Postgres and the real Redis: a client on
/// node A sees, in order, the joins made through node B.
#[actix_web::test]
async fn a_client_on_one_node_sees_joins_made_through_another_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let Some((a, b, cut_a)) = linked_nodes(&dir).await else {
        return;
    };

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

    // Cut A off Redis (its proxy drops every connection and takes no new
    // one) while B's joins commit: A misses them until it is back, then its
    // hubs reload and send a fresh snapshot. Only A's connections: other
    // tests share this Redis.
    cut_a.off();
    for _ in 0..5 {
        b.join(&b.user(), event).await;
    }
    cut_a.on();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
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
    // What A answers from memory was forgotten when its link came back:
    // the joins B took while A was cut off show.
    assert_eq!(a.event(event).await["active_count"], 35);
}

/// A `me` feed on node A, cut off from Redis while the person left an
/// event held by node B, is told once the link is back: the refresh after
/// the resync reads the places it knew as they stand, ended ones with
/// their final status, and the place leaves the list.
#[actix_web::test]
async fn a_place_that_ended_unheard_is_told_once_the_link_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let Some((a, b, cut_a)) = linked_nodes(&dir).await else {
        return;
    };
    a.wait_for_placement(2).await;
    let owner = b.register("owner@example.com").await;
    let event = event_held_by(&b, &owner, 5).await;
    let person = a.user();
    assert_eq!(b.join(&person, event).await.status(), StatusCode::CREATED);
    let (mut socket, snapshot) = crate::realtime::me_socket(&a, &person).await;
    assert_eq!(
        snapshot["data"]["places"][0]["status"], "active",
        "{snapshot}"
    );

    cut_a.off();
    assert_eq!(b.leave(&person, event).await.status(), StatusCode::OK);
    cut_a.on();
    let told = crate::realtime::next(&mut socket).await;
    assert_eq!(told["data"]["reason"], "refreshed", "{told}");
    assert_eq!(told["data"]["place"]["event_id"], event.to_string());
    assert_eq!(told["data"]["place"]["status"], "left", "{told}");
}

/// A published event of `owner`'s whose shard `node` holds.
async fn event_held_by(node: &TestApp, owner: &crate::helpers::User, capacity: i64) -> uuid::Uuid {
    let cluster = node.cluster().await;
    let me = cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["this_node"] == true)
        .unwrap()["id"]
        .clone();
    let shards =
        turnout_actors::placement::ShardCount::new(cluster["shards"].as_u64().unwrap() as u32)
            .unwrap();
    for _ in 0..64 {
        let event = node.published_event(owner, capacity).await;
        let shard = turnout_actors::placement::shard_of(event.into(), shards);
        let holder = cluster["leases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["shard"] == shard.get())
            .map(|l| l["node"].clone());
        if holder == Some(me.clone()) {
            return event;
        }
    }
    panic!("64 events and none held by the node that holds half the shards");
}

/// Reads are answered from memory on every node of a cluster linked
/// through Redis: the node that took a join (or forwarded it) shows it at
/// once, the other as soon as the change reaches it — and each read is the
/// count a database read would give.
#[actix_web::test]
async fn reads_on_every_node_follow_the_joins_through_any_node() {
    let dir = tempfile::tempdir().unwrap();
    let Some((a, b, _cut_a)) = linked_nodes(&dir).await else {
        return;
    };
    a.wait_for_placement(2).await;

    let owner = a.register("owner@example.com").await;
    let event = a.published_event(&owner, 8).await;
    let store = a.store().await;
    for joined in 1..=12_i64 {
        let (took, other) = if joined % 2 == 0 { (&a, &b) } else { (&b, &a) };
        assert_eq!(
            took.join(&took.user(), event).await.status(),
            StatusCode::CREATED
        );
        let (active, waiting) = (joined.min(8), (joined - 8).max(0));
        let seen = took.event(event).await;
        assert_eq!(
            (
                seen["active_count"].as_i64(),
                seen["waitlist_count"].as_i64()
            ),
            (Some(active), Some(waiting)),
            "the node that took the join shows it at once"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while other.event(event).await["active_count"].as_i64() != Some(active) {
            assert!(
                std::time::Instant::now() < deadline,
                "the other node never heard"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let stored = store
            .event(turnout_actors::domain::EventId::from(event))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (stored.active_count, stored.waitlist_count),
            (active, waiting),
            "memory and the database agree"
        );
    }
}

/// The listing too is answered from memory on a linked cluster node: it
/// follows joins made through the other node, and a change no node heard
/// of (written by a node killed before it could publish it; here, straight
/// into the database) shows within the freshness bound, a second or two.
/// Node b is a process of its own, so the count of listings it answered
/// from memory is its own, not any app's of this test process.
#[actix_web::test]
async fn the_listing_on_a_cluster_node_is_from_memory_and_catches_a_change_nobody_heard() {
    let dir = tempfile::tempdir().unwrap();
    let Some(redis_url) = redis_test_url("a test of nodes linked by Redis") else {
        return;
    };
    let Some(url) = fresh_database(Backend::Postgres, &dir).await else {
        return;
    };
    let channel = format!("turnout:test:{}", uuid::Uuid::new_v4());
    let prefix = format!("{channel}:");
    let a = spawn_node(&url, |s| {
        s.redis_url = Some(secrecy::SecretString::from(redis_url.clone()));
        s.outbox.stream_prefix = prefix.clone();
        s.realtime.redis_channel = channel.clone();
    })
    .await;
    let b_dir = tempfile::tempdir().unwrap();
    let b_process = crate::process::ServerProcess::start(
        &url,
        b_dir.path(),
        &[
            ("TURNOUT_REDIS_URL", redis_url.as_str()),
            ("TURNOUT_REALTIME__REDIS_CHANNEL", channel.as_str()),
            ("TURNOUT_OUTBOX__STREAM_PREFIX", prefix.as_str()),
        ],
    )
    .await;
    let b = TestApp::attach(&b_process.address, crate::helpers::JWT_KEY);
    for node in [&a, &b] {
        until_linked(node).await;
    }
    a.wait_for_placement(2).await;
    let owner = a.register("owner@example.com").await;
    let (joined, lost) = (
        a.published_event(&owner, 5).await,
        a.published_event(&owner, 5).await,
    );
    let listed = |page: &serde_json::Value, id: uuid::Uuid| {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id.to_string())
            .cloned()
    };
    let listing = |node: &TestApp| {
        let request = node.request(reqwest::Method::GET, "/v1/events?limit=100");
        async move { body(request.send().await.unwrap()).await }
    };
    assert_eq!(
        a.join(&a.user(), joined).await.status(),
        StatusCode::CREATED
    );
    let from_memory = |metrics: String| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(r#"turnout_event_reads_total{read="listing",source="memory"} "#)
            })
            .map_or(0, |v| v.trim().parse::<u64>().unwrap())
    };
    // Until its link is up and the listing loaded, node b answers from the
    // database; then from memory, which must show the join too.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let before = from_memory(b.metrics().await);
        let page = listing(&b).await;
        let answered_from_memory = from_memory(b.metrics().await) > before;
        if answered_from_memory && listed(&page, joined).is_some_and(|e| e["active_count"] == 1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node b's listing never showed the join from memory"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let pool = sqlx::PgPool::connect(&a.database_url).await.unwrap();
    sqlx::query("UPDATE events SET status = 'cancelled', version = version + 1 WHERE id = $1")
        .bind(lost)
        .execute(&pool)
        .await
        .unwrap();
    let written = std::time::Instant::now();
    for node in [&a, &b] {
        loop {
            if listed(&listing(node).await, lost).is_none() {
                break;
            }
            // Each listing is read again within a second while it is asked
            // for; the bound here is for a slow machine, not the design's.
            assert!(
                written.elapsed() < std::time::Duration::from_secs(30),
                "a change nobody heard stayed in a listing"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    assert!(
        listed(&listing(&b).await, joined).is_some(),
        "the rest stays listed"
    );
}

/// Placement does not use Redis: with Redis unreachable, two nodes still
/// decide every join on one actor; only live updates between nodes pause,
/// and `/ready` says so.
#[actix_web::test]
async fn without_redis_a_cluster_takes_joins_and_says_live_updates_are_down() {
    use secrecy::SecretString;

    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(Backend::Postgres, &dir).await else {
        return;
    };
    // Nothing listens on port 1.
    let tweak = |s: &mut turnout::config::Settings| {
        s.redis_url = Some(SecretString::from("redis://127.0.0.1:1".to_owned()));
    };
    let a = spawn_node(&url, tweak).await;
    let b = spawn_node(&url, tweak).await;
    a.wait_for_placement(2).await;

    let owner = a.register("owner@example.com").await;
    let event = a.published_event(&owner, 3).await;
    for (i, node) in [&a, &b, &a, &b].into_iter().enumerate() {
        let joined = node.join(&node.user(), event).await;
        assert_eq!(joined.status(), StatusCode::CREATED);
        let expected = if i < 3 { "active" } else { "waitlisted" };
        assert_eq!(body(joined).await["data"]["status"], expected);
    }
    for node in [&a, &b] {
        let ready = node
            .request(reqwest::Method::GET, "/ready")
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), StatusCode::OK, "still ready for joins");
        // (`turnout_fanout_connected` says the same, but in-process nodes
        // of parallel tests share one metrics registry.)
        assert_eq!(body(ready).await["data"]["fanout"], "disconnected");
    }
}

/// Two nodes on a fresh Postgres database, linked through the real Redis on
/// a channel of their own, once each hears the other; A reaches Redis
/// through the returned proxy. `None` without Postgres or
/// Redis.
async fn linked_nodes(dir: &tempfile::TempDir) -> Option<(TestApp, TestApp, TcpProxy)> {
    let redis_url = redis_test_url("a test of nodes linked by Redis")?;
    let url = fresh_database(Backend::Postgres, dir).await?;
    let channel = format!("turnout:test:{}", uuid::Uuid::new_v4());
    let cut_a = TcpProxy::to(redis_address(&redis_url)).await;
    let through = |redis: String| {
        let channel = channel.clone();
        move |s: &mut turnout::config::Settings| {
            s.redis_url = Some(secrecy::SecretString::from(redis));
            s.outbox.stream_prefix = format!("{channel}:");
            s.realtime.redis_channel = channel;
        }
    };
    let a = spawn_node(&url, through(format!("redis://127.0.0.1:{}", cut_a.port))).await;
    let b = spawn_node(&url, through(redis_url.clone())).await;
    for node in [&a, &b] {
        until_linked(node).await;
    }
    Some((a, b, cut_a))
}

/// Waits until `node` hears the other nodes through Redis.
async fn until_linked(node: &TestApp) {
    for attempt in 0.. {
        let ready = node
            .request(reqwest::Method::GET, "/ready")
            .send()
            .await
            .unwrap();
        if body(ready).await["data"]["fanout"] == "connected" {
            return;
        }
        assert!(attempt < 1200, "the node never subscribed to redis");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// A node linked through Redis on a channel of its own, and how to play
/// another node on that channel.
struct LinkedNode {
    node: TestApp,
    redis_url: String,
    channel: String,
}

/// A node on a fresh Postgres database in `dir`, linked through Redis and
/// subscribed once it returns; None where there is no Postgres or Redis to
/// test with.
async fn linked_node(dir: &tempfile::TempDir) -> Option<LinkedNode> {
    let redis_url = redis_test_url("a test of nodes linked by Redis")?;
    let url = fresh_database(Backend::Postgres, dir).await?;
    let channel = format!("turnout:test:{}", uuid::Uuid::new_v4());
    let node = spawn_node(&url, |s| {
        s.redis_url = Some(secrecy::SecretString::from(redis_url.clone()));
        s.outbox.stream_prefix = format!("{channel}:");
        s.realtime.redis_channel = channel.clone();
    })
    .await;
    until_linked(&node).await;
    Some(LinkedNode {
        node,
        redis_url,
        channel,
    })
}

/// Subscribes `socket` to `channel`: the snapshot the channel settles on.
/// The node subscribes to Redis as it starts and reloads then: that
/// reload's snapshot may come after ours.
async fn settled_snapshot(socket: &mut crate::realtime::Socket, channel: &str) -> Value {
    let mut snapshot = crate::realtime::subscribe(socket, channel, None).await;
    while let Ok(frame) = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        crate::realtime::next(socket),
    )
    .await
    {
        snapshot = frame;
    }
    snapshot
}

/// Publishes `message` on the shared Redis `channel`, as another node would.
async fn publish_as_another_node(
    redis: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    message: Value,
) {
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(message.to_string())
        .query_async(redis)
        .await
        .unwrap();
}

/// A node's heartbeat carries its count of changes, and a node that falls
/// silent may have committed changes it never published: either way the
/// nodes that hear it reload their channels, and a client gets a fresh
/// snapshot instead of a count left behind. Another node is played here by
/// messages published straight to the shared Redis channel.
#[actix_web::test]
async fn a_dropped_tail_or_a_silent_node_makes_the_others_reload() {
    let dir = tempfile::tempdir().unwrap();
    let Some(LinkedNode {
        node,
        redis_url,
        channel,
    }) = linked_node(&dir).await
    else {
        return;
    };
    let mut redis = redis_connection(&redis_url).await;
    let owner = node.register("owner@example.com").await;
    let event = node.published_event(&owner, 10).await;
    let mut socket = crate::realtime::connect(&node).await;
    let snapshot = settled_snapshot(&mut socket, &format!("event:{event}")).await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    let other = uuid::Uuid::now_v7();
    let heartbeat = |seq: u64| serde_json::json!({ "node": other, "seq": seq, "change": null });
    let mut publish = async |message: Value| {
        publish_as_another_node(&mut redis, &channel, message).await;
    };

    // The other node has counted 1 change, then 3: two never arrived.
    publish(heartbeat(1)).await;
    publish(heartbeat(3)).await;
    let fresh = crate::realtime::next(&mut socket).await;
    assert_eq!(
        (&fresh["type"], &fresh["recovered"]),
        (&serde_json::json!("snapshot"), &serde_json::json!(false)),
        "a dropped tail: {fresh}"
    );

    // Then it falls silent (killed mid-publish, say): after 15 s, once more.
    // Another test cuts every pub/sub connection of the shared Redis for a
    // moment; this node then subscribes again, reloads (which covers all
    // the other node committed before) and forgets whom it heard. So the
    // other node says once more where it stands, on a link known to be up,
    // and any reload from then on is one its silence called for.
    until_linked(&node).await;
    publish(heartbeat(3)).await;
    let fresh = text_within(&mut socket, std::time::Duration::from_secs(40))
        .await
        .expect("a silent node is noticed");
    assert_eq!(
        (&fresh["type"], &fresh["recovered"]),
        (&serde_json::json!("snapshot"), &serde_json::json!(false)),
        "a silent node: {fresh}"
    );
}

/// After a shard moves, the old holder's publishing of an event can reach
/// a node after the new holder's cancellation of it — and after a listing
/// loaded since, which read the event cancelled, so did not list it or keep
/// its version. That listing asks the read model before listing the event
/// and lists nothing. The old holder is played here: the node's own
/// messages, heard on the shared Redis channel, are published again late as
/// another node's.
#[actix_web::test]
async fn a_publishing_later_than_the_cancellation_a_listing_loaded_lists_nothing() {
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let Some(LinkedNode {
        node,
        redis_url,
        channel,
    }) = linked_node(&dir).await
    else {
        return;
    };
    let mut heard = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    heard.subscribe(&channel).await.unwrap();
    let mut heard = heard.into_on_message();

    let owner = node.register("owner@example.com").await;
    let venue = node.venue(&owner).await;
    let draft = serde_json::json!({
        "title": "Late jazz", "venue_id": venue, "capacity": 5,
        "starts_at": chrono::Utc::now() + chrono::Duration::days(7),
    });
    let cancelled = node.published_as(&owner, draft.clone()).await;
    let listed = node.published_as(&owner, draft).await;
    let cancelling = node
        .as_user(
            &owner,
            reqwest::Method::POST,
            &format!("/v1/events/{cancelled}/cancel"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(cancelling.status(), StatusCode::OK);
    // Each event's publishing (its version 2), as the node told it.
    let mut publishings = std::collections::HashMap::new();
    while publishings.len() < 2 {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), heard.next())
            .await
            .expect("the node publishes its changes")
            .unwrap();
        let wire: Value = serde_json::from_str(&message.get_payload::<String>().unwrap()).unwrap();
        let summary = &wire["change"]["summary"];
        if summary["version"] == 2 {
            publishings.insert(
                summary["id"].as_str().unwrap().to_owned(),
                wire["change"].clone(),
            );
        }
    }

    let mut socket = crate::realtime::connect(&node).await;
    let snapshot = settled_snapshot(&mut socket, &format!("venue:{venue}")).await;
    let ids = |events: &Value| -> Vec<String> {
        events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&snapshot["data"]["events"]), [listed.to_string()]);

    let other = uuid::Uuid::now_v7();
    let mut redis = redis_connection(&redis_url).await;
    let mut publish = async |seq: u64, change: &Value| {
        let message = serde_json::json!({ "node": other, "seq": seq, "change": change });
        publish_as_another_node(&mut redis, &channel, message).await;
    };
    publish(1, &publishings[&cancelled.to_string()]).await;
    // Then a change the listing shows, so that what the late publishing
    // did is told before it: one of the other event, newer than any.
    let mut newer = publishings[&listed.to_string()].clone();
    newer["summary"]["version"] = serde_json::json!(1_000);
    publish(2, &newer).await;

    let update = crate::realtime::next(&mut socket).await;
    assert_eq!(
        (&update["type"], &update["data"]["event"]["id"]),
        (&serde_json::json!("update"), &serde_json::json!(listed)),
        "the late publishing listed the cancelled event: {update}"
    );
    let mut again = crate::realtime::connect(&node).await;
    let snapshot = crate::realtime::subscribe(&mut again, &format!("venue:{venue}"), None).await;
    assert_eq!(ids(&snapshot["data"]["events"]), [listed.to_string()]);
}

/// The next text frame within `wait`, if one comes.
async fn text_within(
    socket: &mut crate::realtime::Socket,
    wait: std::time::Duration,
) -> Option<Value> {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .ok()??
            .ok()?;
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            return serde_json::from_str(&text).ok();
        }
    }
}

//! Cluster membership: nodes that share a database form the cluster by
//! themselves, agree on its shard count, and are placed by the live
//! membership (`GET /v1/admin/cluster`).

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{Backend, TestApp, fresh_database, spawn_node, test_settings};

async fn a_lone_node_is_the_whole_cluster(app: TestApp) {
    let view = app.cluster().await;
    assert_eq!(view["shards"], 256);
    let nodes = view["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{view}");
    assert_eq!(nodes[0]["live"], true);
    assert_eq!(nodes[0]["this_node"], true);
    assert_eq!(nodes[0]["shards"], 256, "a lone node is placed every shard");
    assert_eq!(nodes[0]["shards_held"], 256, "and holds them");
    let address = nodes[0]["address"].as_str().unwrap();
    assert!(
        app.address.ends_with(address),
        "advertises where it listens: {address} vs {}",
        app.address
    );

    let stranger = app.user();
    let refused = app
        .as_user(&stranger, Method::GET, "/v1/admin/cluster")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
}

crate::on_both_backends!(
    a_lone_node_is_the_whole_cluster,
    only_nodes_may_forward_commands
);

#[actix_web::test]
async fn nodes_sharing_a_database_share_the_shards() {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(Backend::Postgres, &dir).await else {
        return;
    };
    let a = spawn_node(&url, |_| {}).await;
    let b = spawn_node(&url, |_| {}).await;
    let view = a.wait_for_placement(2).await;
    let nodes = view["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{view}");
    assert!(nodes.iter().all(|n| n["live"] == true));
    let shares: Vec<u64> = nodes
        .iter()
        .map(|n| n["shards"].as_u64().unwrap())
        .collect();
    assert_eq!(shares.iter().sum::<u64>(), 256, "{shares:?}");
    assert!(shares.iter().all(|s| *s > 0), "{shares:?}");
    assert_eq!(nodes.iter().filter(|n| n["this_node"] == true).count(), 1);
    let from_b = b.cluster().await;
    let placed = |view: &Value| -> Vec<(String, u64)> {
        view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["id"].as_str().unwrap().to_owned(),
                    n["shards"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(
        placed(&view),
        placed(&from_b),
        "both nodes compute the same placement"
    );
}

#[actix_web::test]
async fn a_node_configured_with_another_shard_count_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(Backend::Postgres, &dir).await else {
        return;
    };
    let _first = spawn_node(&url, |_| {}).await;
    let mut settings = test_settings(&url, &dir);
    settings.cluster.shards = 64;
    let error = turnout::app::Application::build(settings)
        .await
        .err()
        .expect("no start with another shard count");
    let message = format!("{error:#}");
    assert!(
        message.contains("256 shards") && message.contains("TURNOUT_CLUSTER__SHARDS=256"),
        "{message}"
    );
}

/// A join of `event` by `user` as one node forwards it to another.
fn forwarded_join(event: uuid::Uuid, user: uuid::Uuid) -> Value {
    serde_json::json!({
        "event": event,
        "command": { "command": "join", "user": user, "at": chrono::Utc::now() },
        "idempotency": null,
        "request_id": null,
    })
}

/// The keys a cluster whose internal secret is `secret` signs calls with.
fn node_keys(secret: &str) -> turnout::cluster::forward::InternalKeys {
    turnout::cluster::forward::InternalKeys::new(&[secrecy::SecretString::from(secret.to_owned())])
}

/// The internal route takes commands only from nodes of the cluster: no
/// token, a user's token (even an admin's), or a node token signed with
/// another key are refused before the body is read, and nothing changes.
async fn only_nodes_may_forward_commands(app: TestApp) {
    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, 5).await;
    let stranger = app.user();
    let command = forwarded_join(event, stranger.id);
    let foreign = node_keys("another-cluster-another-cluster-key");
    let tokens = [
        None,
        Some(stranger.token.clone()),
        Some(app.token_with_role("admin")),
        Some(foreign.issue(turnout_actors::placement::NodeId::new())),
    ];
    for token in tokens {
        let mut request = app
            .request(Method::POST, "/internal/commands")
            .json(&command);
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        let refused = request.send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        let mut garbled = app
            .request(Method::POST, "/internal/commands")
            .body("{not json");
        if let Some(token) = &token {
            garbled = garbled.bearer_auth(token);
        }
        assert_eq!(
            garbled.send().await.unwrap().status(),
            StatusCode::UNAUTHORIZED,
            "refused before the body is judged"
        );
        // Past the body limit: still 401, not 413, so a stranger learns
        // nothing of the endpoint, nor has it read.
        let mut oversized = app
            .request(Method::POST, "/internal/commands")
            .body(vec![b' '; 1 << 20]);
        if let Some(token) = &token {
            oversized = oversized.bearer_auth(token);
        }
        assert_eq!(
            oversized.send().await.unwrap().status(),
            StatusCode::UNAUTHORIZED,
            "refused before the body is read"
        );
    }
    assert_eq!(app.event(event).await["active_count"], 0);

    // A node of this cluster (its key is the JWT key here) is heard.
    let ours = node_keys(crate::helpers::JWT_KEY);
    let answered = app
        .request(Method::POST, "/internal/commands")
        .bearer_auth(ours.issue(turnout_actors::placement::NodeId::new()))
        .json(&command)
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status(), StatusCode::OK);
    let reply = crate::helpers::body(answered).await;
    assert!(reply.get("Ok").is_some(), "{reply}");
    assert_eq!(app.event(event).await["active_count"], 1);
}

/// A connection over the per-address cap is refused, unless its request is
/// a node's signed command: nodes forward a hot event's commands on as many
/// connections as they have in flight. The command keeps the request id
/// the client's request had on the node that forwarded it; a stranger's id
/// is not believed.
#[actix_web::test]
async fn a_nodes_command_passes_the_per_address_connection_cap() {
    let app = crate::helpers::spawn_app_with(Backend::Sqlite, |s| {
        s.http.max_connections_per_ip = 1;
    })
    .await
    .unwrap();
    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, 5).await;
    // Each request on a connection of its own, closed after it.
    let fresh = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    let url = |path: &str| format!("{}{path}", app.address);
    // The address's one place, taken by a connection that was served and
    // stays open (once the test client's own idle connection is gone).
    let mut held = None;
    for _ in 0..200 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut socket = tokio::net::TcpStream::connect(app.address.trim_start_matches("http://"))
            .await
            .unwrap();
        socket
            .write_all(b"GET /health HTTP/1.1\r\nHost: turnout\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = socket.read(&mut buf).await.unwrap();
        if buf[..n].starts_with(b"HTTP/1.1 200") {
            held = Some(socket);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(held.is_some(), "the address's place was never free");
    let stranger = fresh()
        .get(url("/v1/events"))
        .header("x-request-id", "posing-as-another")
        .send()
        .await
        .unwrap();
    assert_eq!(stranger.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_ne!(stranger.headers()["x-request-id"], "posing-as-another");
    let unsigned = fresh()
        .post(url("/internal/commands"))
        .bearer_auth(app.token_with_role("admin"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        unsigned.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "only a node's key passes"
    );
    let ours = node_keys(crate::helpers::JWT_KEY);
    let command = forwarded_join(event, app.user().id);
    let forwarded = fresh()
        .post(url("/internal/commands"))
        .bearer_auth(ours.issue(turnout_actors::placement::NodeId::new()))
        .header("x-request-id", "the-clients-request")
        .json(&command)
        .send()
        .await
        .unwrap();
    assert_eq!(forwarded.status(), StatusCode::OK);
    assert_eq!(forwarded.headers()["x-request-id"], "the-clients-request");
    assert!(crate::helpers::body(forwarded).await.get("Ok").is_some());
    // The place was held throughout (the keep-alive had not closed it).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut held = held.unwrap();
    held.write_all(b"GET /health HTTP/1.1\r\nHost: turnout\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = held.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "the place was given up meanwhile"
    );
}

/// A process that died without leaving keeps its row only for a day: a
/// node registering forgets the rows silent for longer (each crash under
/// a generated id would otherwise leave one for ever).
#[actix_web::test]
async fn nodes_silent_for_a_day_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(Backend::Postgres, &dir).await else {
        return;
    };
    let store = crate::helpers::store_at(&url).await;
    let now = store.clock().await.unwrap();
    let silent_for = |hours: i64| turnout::store::NodeRecord {
        id: uuid::Uuid::new_v4(),
        address: "127.0.0.1:1".into(),
        started_at: now - hours * 3_600_000_000,
        heartbeat_at: now - hours * 3_600_000_000,
    };
    let (long_gone, lately_gone) = (silent_for(25), silent_for(23));
    for node in [&long_gone, &lately_gone] {
        store.register_node(node).await.unwrap();
    }

    let app = spawn_node(&url, |_| {}).await;
    app.wait_for_placement(1).await;

    let ids: Vec<uuid::Uuid> = store.nodes().await.unwrap().iter().map(|n| n.id).collect();
    assert!(
        !ids.contains(&long_gone.id),
        "silent for 25 hours: forgotten"
    );
    assert!(ids.contains(&lately_gone.id), "silent for 23 hours: kept");
}

/// A process cut off from the database past its lease, in whose place
/// another started under the same configured id, finds on its next
/// heartbeat that the row is the other's: it stops (going on, the two
/// would take the shards from each other back and forth), saying why, and
/// leaves the other's row in place.
#[actix_web::test]
async fn a_process_whose_node_id_another_took_over_stops() {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(Backend::Postgres, &dir).await else {
        return;
    };
    let id = uuid::Uuid::new_v4();
    let mut settings = test_settings(&url, &dir);
    settings.cluster.node_id = Some(id);
    settings.cluster.heartbeat_ms = 200;
    let app = turnout::app::Application::build(settings).await.unwrap();
    let running = actix_web::rt::spawn(app.run_until_stopped());

    // The twin registers as the first process's start-up guard would have
    // let it, had the first been silent.
    let store = crate::helpers::store_at(&url).await;
    let now = store.clock().await.unwrap();
    let twin = turnout::store::NodeRecord {
        id,
        address: "127.0.0.1:1".into(),
        started_at: now,
        heartbeat_at: now,
    };
    store.register_node(&twin).await.unwrap();

    let stopped = tokio::time::timeout(crate::helpers::EVENTUALLY, running)
        .await
        .expect("the superseded process stops")
        .unwrap();
    let message = format!("{:#}", stopped.expect_err("it says why it stopped"));
    assert!(
        message.contains("another process registered under this node's id"),
        "{message}"
    );
    let nodes = store.nodes().await.unwrap();
    assert!(
        nodes
            .iter()
            .any(|n| n.id == id && n.started_at == twin.started_at),
        "the twin's row is left in place: {nodes:?}"
    );
}

/// Two processes under one configured node id would take each other's
/// shards back and forth: a second one refuses to start while the first
/// still beats; one whose predecessor fell silent starts at once.
#[actix_web::test]
async fn a_node_id_runs_in_one_process_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(Backend::Postgres, &dir).await else {
        return;
    };
    // The second process watches the first for twice the TTL (10 s): a
    // beat late on a busy machine must not look like a crash.
    let as_node = |id: uuid::Uuid| {
        move |settings: &mut turnout::config::Settings| {
            settings.cluster.node_id = Some(id);
            settings.cluster.lease_ttl_ms = 5000;
            settings.cluster.heartbeat_ms = 1000;
        }
    };
    let running = uuid::Uuid::new_v4();
    let _first = spawn_node(&url, as_node(running)).await;

    let mut settings = test_settings(&url, &dir);
    as_node(running)(&mut settings);
    let error = turnout::app::Application::build(settings)
        .await
        .err()
        .expect("no second process under a live node's id");
    let message = format!("{error:#}");
    assert!(
        message.contains(&format!("another process is running as node {running}")),
        "{message}"
    );

    // A predecessor that crashed left its row behind, silent.
    let crashed = uuid::Uuid::new_v4();
    let store = crate::helpers::store_at(&url).await;
    let long_ago = store.clock().await.unwrap() - 60_000_000;
    store
        .register_node(&turnout::store::NodeRecord {
            id: crashed,
            address: "127.0.0.1:1".into(),
            started_at: long_ago,
            heartbeat_at: long_ago,
        })
        .await
        .unwrap();
    let restarted = spawn_node(&url, as_node(crashed)).await;
    let view = restarted.wait_for_placement(2).await;
    assert!(
        view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == crashed.to_string() && n["this_node"] == true),
        "{view}"
    );

    // A predecessor that left the membership (leaving removes its row
    // first) and still hands its shards over: a lease naming the id would
    // be the new process's to take at once, beside it. It waits for the
    // last one to lapse.
    let draining = uuid::Uuid::new_v4();
    // Longer than a node takes to start here, well within the 11 s the
    // newcomer waits before it gives up.
    let lapses = store.clock().await.unwrap() + 4_000_000;
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let held = sqlx::query("UPDATE shard_leases SET node = $1, expires_at = $2 WHERE shard = 0")
        .bind(draining)
        .bind(lapses)
        .execute(&admin)
        .await
        .unwrap();
    assert_eq!(held.rows_affected(), 1);
    let _successor = spawn_node(&url, as_node(draining)).await;
    assert!(
        store.clock().await.unwrap() > lapses,
        "started while its predecessor still held a shard"
    );
}

//! `kill -9` the server binary while joins are in flight, restart it on the
//! same database, and check that every join answered 2xx survived and no
//! event is overbooked.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::helpers::{Backend, JWT_KEY, TestApp, body, fresh_database};
use crate::invariants::assert_roster;
use crate::process::ServerProcess;
use crate::realtime::close_frame;

const CAPACITY: i64 = 100;
const JOINERS: usize = 600;

/// `JOINERS` joins in flight against a server that may die under them.
struct JoinLoad {
    /// Who was answered 201, with the answer.
    acked: Arc<Mutex<HashMap<Uuid, Value>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl JoinLoad {
    fn start(app: &TestApp, event: Uuid) -> Self {
        let acked: Arc<Mutex<HashMap<Uuid, Value>>> = Arc::default();
        let tasks = (0..JOINERS)
            .map(|_| {
                let (app, acked, user) = (app.clone(), Arc::clone(&acked), app.user());
                tokio::spawn(async move {
                    if let Ok(response) = app.try_join(&user, event).await
                        && response.status() == StatusCode::CREATED
                    {
                        let answer = body(response).await["data"].clone();
                        acked.lock().await.insert(user.id, answer);
                    }
                })
            })
            .collect();
        Self { acked, tasks }
    }

    async fn until_acknowledged(&self, count: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.acked.lock().await.len() < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server stopped acknowledging joins"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits for every join to end (answered or cut off); the acknowledged ones.
    async fn finish(self) -> HashMap<Uuid, Value> {
        for task in self.tasks {
            let _ = task.await;
        }
        self.acked.lock().await.clone()
    }
}

async fn acknowledged_joins_survive_kill_9(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(backend, &dir).await else {
        return;
    };
    let server = ServerProcess::start(&url, dir.path(), &[]).await;
    let app = TestApp::attach(&server.address, JWT_KEY);

    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, CAPACITY).await;
    // Kill mid-load: once some joins are acknowledged, others still in flight.
    let load = JoinLoad::start(&app, event);
    load.until_acknowledged(JOINERS / 4).await;
    server.kill();
    let acked = load.finish().await;

    let restarted = ServerProcess::start(&url, dir.path(), &[]).await;
    let app = TestApp::attach(&restarted.address, JWT_KEY);
    let roster = assert_roster(&app, &owner, event, CAPACITY, &acked, &HashSet::new()).await;
    let active = roster.iter().filter(|a| a["status"] == "active").count() as i64;

    // And the restarted server keeps deciding on the recovered state.
    let late = app.user();
    let joined = body(app.join(&late, event).await).await;
    let expected = if active < CAPACITY {
        "active"
    } else {
        "waitlisted"
    };
    assert_eq!(joined["data"]["status"], expected);
    drop(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_acknowledged_joins_survive_kill_9() {
    acknowledged_joins_survive_kill_9(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_acknowledged_joins_survive_kill_9() {
    acknowledged_joins_survive_kill_9(Backend::Postgres).await;
}

/// SIGTERM mid-load: the server stops accepting, answers what it took,
/// flushes the journal and exits cleanly; every acknowledged join is there.
async fn sigterm_drains_and_exits_cleanly(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(backend, &dir).await else {
        return;
    };
    let server = ServerProcess::start(&url, dir.path(), &[]).await;
    let app = TestApp::attach(&server.address, JWT_KEY);
    let owner = app.register("owner@example.com").await;
    let event = app.published_event(&owner, CAPACITY).await;

    let load = JoinLoad::start(&app, event);
    load.until_acknowledged(JOINERS / 4).await;
    server.signal("TERM");
    let acked = load.finish().await;
    assert!(server.exited().await, "a clean exit after SIGTERM");

    let restarted = ServerProcess::start(&url, dir.path(), &[]).await;
    let app = TestApp::attach(&restarted.address, JWT_KEY);
    assert_roster(&app, &owner, event, CAPACITY, &acked, &HashSet::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sigterm_drains_and_exits_cleanly() {
    sigterm_drains_and_exits_cleanly(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sigterm_drains_and_exits_cleanly() {
    sigterm_drains_and_exits_cleanly(Backend::Postgres).await;
}

/// At SIGTERM the node stops accepting but answers on the connections
/// already open, each answer closing its connection, and `/ready` says 503
/// (a proxy never sends on a connection this node is closing); WebSockets
/// are told to go (1001); it stops as soon as they have closed, well before
/// `http.drain_secs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_connections_before_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(Backend::Sqlite, &dir).await.unwrap();
    let server = ServerProcess::start(
        &url,
        dir.path(),
        &[
            ("TURNOUT_HTTP__SHUTDOWN_TIMEOUT_SECS", "60"),
            ("TURNOUT_HTTP__DRAIN_SECS", "60"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let ready = format!("{}/ready", server.address);
    let kept = client.get(&ready).send().await.unwrap();
    assert_eq!(kept.status(), StatusCode::OK);
    assert!(
        kept.headers()
            .get("connection")
            .is_none_or(|c| c != "close")
    );

    let ws = server.address.replace("http://", "ws://") + "/v1/ws";
    let (mut socket, _) = tokio_tungstenite::connect_async(&ws).await.unwrap();

    server.signal("TERM");
    let started = std::time::Instant::now();
    // A WebSocket is told to go, so its client reconnects to a node that
    // stays, and the node need not wait for it.
    let going = close_frame(&mut socket).await.map(|f| u16::from(f.code));
    assert_eq!(going, Some(1001));
    match tokio_tungstenite::connect_async(&ws).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(refused)) => {
            assert_eq!(refused.status().as_u16(), 503)
        }
        // The listener is already shut.
        Err(tokio_tungstenite::tungstenite::Error::Io(error))
            if matches!(
                error.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
            ) => {}
        other => panic!("a draining node must refuse a new socket: {other:?}"),
    }
    let draining = loop {
        let answer = client.get(&ready).send().await.unwrap();
        if answer.status() == StatusCode::SERVICE_UNAVAILABLE {
            break answer;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never drained");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(draining.headers()["connection"], "close");
    let answer = body(draining).await;
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stopping"),
        "{answer}"
    );
    assert!(server.exited().await, "a clean exit");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "stopped once its connections closed, not at the shutdown timeout: {:?}",
        started.elapsed()
    );
}

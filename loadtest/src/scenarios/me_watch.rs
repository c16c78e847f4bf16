//! People who watch their own places (`me`) while they join, as the app on
//! their phone does: each authenticates a WebSocket and subscribes to `me`
//! before the load, then keeps the status it was last told of each event.
//! Afterwards every watcher whose join was acknowledged must have been told
//! its place with the status the join's answer gave (joins only: no leave
//! can promote anyone, so the status told at the join stays).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::mixed::summary;
use super::ws_fanout::{connect_from, subscribe_as};
use crate::burst::Answers;
use crate::report::{Check, latency_histogram};

/// One person watching `me`, who joins the `event`th event during the load.
pub struct Watcher {
    user: Uuid,
    event: usize,
    told: Arc<Mutex<Told>>,
}

/// What a watcher's `me` channel has told.
struct Told {
    /// Each event's place, by the status last told.
    places: HashMap<Uuid, String>,
    /// From each update's commit (`committed_at`) to its arrival here, µs:
    /// a few per watcher, not a histogram each (thousands of watchers).
    from_commit: Vec<u64>,
    closed: bool,
}

/// Connects `user` (whose token is `token`) from `source`, authenticates
/// and subscribes to `me`; the connection is read until it ends.
pub async fn watch(
    server: SocketAddr,
    source: Ipv4Addr,
    user: Uuid,
    token: String,
    event: usize,
) -> anyhow::Result<Watcher> {
    let mut ws = connect_from(server, source).await?;
    subscribe_as(&mut ws, &token, "me").await?;
    let told = Arc::new(Mutex::new(Told {
        places: HashMap::new(),
        from_commit: Vec::new(),
        closed: false,
    }));
    let telling = Arc::clone(&told);
    tokio::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let place = &frame["data"]["place"];
            let (Some(event), Some(status)) = (
                place["event_id"].as_str().and_then(|e| e.parse().ok()),
                place["status"].as_str(),
            ) else {
                continue;
            };
            let arrived = chrono::Utc::now();
            let mut told = telling.lock().expect("not poisoned");
            told.places.insert(event, status.to_owned());
            let committed = frame["committed_at"]
                .as_str()
                .and_then(|c| c.parse::<chrono::DateTime<chrono::Utc>>().ok());
            if let Some(since) = committed.and_then(|c| (arrived - c).to_std().ok()) {
                told.from_commit.push(since.as_micros() as u64);
            }
        }
        telling.lock().expect("not poisoned").closed = true;
    });
    Ok(Watcher { user, event, told })
}

/// Every watcher whose join was acknowledged must be told its place as the
/// answer gave it, and some must have been: a run whose watched joins were
/// all refused checked nothing. Updates are still in flight when the load
/// stops, so the watchers get a few seconds to catch up.
pub async fn check(watchers: &[Watcher], events: &[Uuid], answers: &Answers) -> Vec<Check> {
    let expected = |w: &Watcher| {
        let told = answers.0[w.event].acknowledged.get(&w.user)?;
        Some((events[w.event], told.status.clone()))
    };
    let untold = || {
        watchers
            .iter()
            .filter(|w| {
                expected(w).is_some_and(|(event, status)| {
                    w.told.lock().expect("not poisoned").places.get(&event) != Some(&status)
                })
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while untold() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acknowledged = watchers.iter().filter(|w| expected(w).is_some()).count();
    let (untold, mut closed) = (untold(), 0);
    let mut from_commit = latency_histogram();
    for watcher in watchers {
        let told = watcher.told.lock().expect("not poisoned");
        closed += usize::from(told.closed);
        for &micros in &told.from_commit {
            from_commit.saturating_record(micros);
        }
    }
    vec![
        Check::new(
            "every watcher of me was told its place as its join was answered",
            untold == 0 && closed == 0 && acknowledged > 0,
            format!(
                "{untold}/{acknowledged} not told; {closed} closed; {} joins not acknowledged",
                watchers.len() - acknowledged
            ),
        ),
        Check::new(
            "me updates from commit to watcher (info)",
            true,
            summary(&from_commit, "updates"),
        ),
    ]
}

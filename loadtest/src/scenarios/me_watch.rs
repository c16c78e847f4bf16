//! People who watch their own places (`me`) while they join, as the app on
//! their phone does: each authenticates a WebSocket and subscribes to `me`
//! before the load, then keeps what it was last told of each event's place
//! (status and waitlist position). Afterwards each watcher's places must be
//! as the scenario says they stand: as its join's answer told (`mixed`,
//! joins only: nobody leaves, so nothing moves them), or as the scenario's
//! model of the event has them (`churn`: leaves, promotions and offers).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::mixed::summary;
use super::ws_fanout::{connect_from, subscribe_as};
use crate::invariants::Told;
use crate::report::{Check, latency_histogram};

/// One person watching `me`, who joins the `event`th event during the load.
pub struct Watcher {
    user: Uuid,
    event: usize,
    heard: Arc<Mutex<Heard>>,
}

/// What a watcher's `me` channel has told.
struct Heard {
    /// Each event's place, as last told.
    places: HashMap<Uuid, Told>,
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
    let heard = Arc::new(Mutex::new(Heard {
        places: HashMap::new(),
        from_commit: Vec::new(),
        closed: false,
    }));
    let telling = Arc::clone(&heard);
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
            let place = Told {
                status: status.to_owned(),
                position: place["position"].as_u64(),
            };
            told.places.insert(event, place);
            let committed = frame["committed_at"]
                .as_str()
                .and_then(|c| c.parse::<chrono::DateTime<chrono::Utc>>().ok());
            if let Some(since) = committed.and_then(|c| (arrived - c).to_std().ok()) {
                told.from_commit.push(since.as_micros() as u64);
            }
        }
        telling.lock().expect("not poisoned").closed = true;
    });
    Ok(Watcher { user, event, heard })
}

impl Watcher {
    pub fn user(&self) -> Uuid {
        self.user
    }

    /// The index of the event this watcher's person joins.
    pub fn event(&self) -> usize {
        self.event
    }

    fn told(&self, event: Uuid) -> Option<Told> {
        let heard = self.heard.lock().expect("not poisoned");
        heard.places.get(&event).cloned()
    }
}

/// Every one of the `asked` watchers connected (`failures` says why not),
/// and every watcher for which `expected` names an event's place must be
/// told that place, and some must have been: a run that expected nothing
/// checked nothing. Updates are still in flight when the load stops, so
/// the watchers get a few seconds to catch up. `what` says whose places
/// are expected (the check's name); `skipped` why the others are not.
pub async fn check(
    (watchers, asked, failures): (&[Watcher], usize, &BTreeMap<String, u64>),
    what: &str,
    skipped: &str,
    expected: impl Fn(&Watcher) -> Option<(Uuid, Told)>,
) -> Vec<Check> {
    let wrong = || {
        watchers
            .iter()
            .filter_map(|w| {
                let (event, place) = expected(w)?;
                let told = w.told(event);
                (told.as_ref() != Some(&place)).then_some((w.user, place, told))
            })
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !wrong().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // How the places expected stand: a run whose watchers all ended the
    // same way checked one path only.
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for (_, place) in watchers.iter().filter_map(&expected) {
        *by_status.entry(place.status).or_default() += 1;
    }
    let expecting: usize = by_status.values().sum();
    let by_status: Vec<String> = (by_status.iter())
        .map(|(status, n)| format!("{n} {status}"))
        .collect();
    let (wrong, mut closed) = (wrong(), 0);
    let mut from_commit = latency_histogram();
    for watcher in watchers {
        let heard = watcher.heard.lock().expect("not poisoned");
        closed += usize::from(heard.closed);
        for &micros in &heard.from_commit {
            from_commit.saturating_record(micros);
        }
    }
    let first = wrong
        .first()
        .map(|(user, place, told)| format!("; first: {user} is {place:?}, told {told:?}"))
        .unwrap_or_default();
    vec![
        Check::new(
            &format!("every watcher of me was told its place {what}"),
            wrong.is_empty() && closed == 0 && expecting > 0,
            format!(
                "{}/{expecting} not told{first} (expected {}); {closed} closed; {} {skipped}",
                wrong.len(),
                by_status.join(", "),
                watchers.len() - expecting
            ),
        ),
        Check::new(
            "every watcher of me connected",
            watchers.len() == asked,
            format!("{}/{asked} connected; {failures:?}", watchers.len()),
        ),
        Check::new(
            "me updates from commit to watcher (info)",
            true,
            summary(&from_commit, "updates"),
        ),
    ]
}

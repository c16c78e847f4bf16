//! `recs-fanout`: K users (minted tokens) hold live recommendation lists on
//! the `recs` channel; then, round by round, one new event that belongs in
//! everyone's list (new, and sooner than the rest) is published over HTTP,
//! and each client's arrival time of a list showing it is recorded. Reports the latency over
//! all clients and the time until the last client had it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::ws_fanout::{connect_all, connect_from, server_addrs, subscribe_as};
use crate::Common;
use crate::api::{Api, Minter};
use crate::process::{memory_per_connection, rss_bytes};
use crate::report::{Check, Report, latency_histogram};

#[derive(Args)]
pub struct RecsFanout {
    #[command(flatten)]
    pub common: Common,
    /// Users, each with a live list.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Events published, one at a time.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Spread clients over 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, default_value_t = 4)]
    pub source_addresses: u8,
}

/// A list arrived showing these events.
struct Arrival {
    events: Vec<Uuid>,
    at: Instant,
}

async fn client(
    server: std::net::SocketAddr,
    source: std::net::Ipv4Addr,
    token: String,
    arrivals: mpsc::UnboundedSender<Arrival>,
) -> anyhow::Result<()> {
    let mut ws = connect_from(server, source).await?;
    subscribe_as(&mut ws, &token, "recs").await?;
    tokio::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = message {
                let at = Instant::now();
                let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                let Some(items) = frame["data"]["items"].as_array() else {
                    continue;
                };
                let events = items
                    .iter()
                    .filter_map(|i| i["event"]["id"].as_str()?.parse().ok())
                    .collect();
                let _ = arrivals.send(Arrival { events, at });
            }
        }
    });
    Ok(())
}

pub async fn run(args: RecsFanout) -> anyhow::Result<Report> {
    let servers = server_addrs(&args.common.targets)?;
    let api = Api::new(&args.common.targets, 16)?;
    let minter: Arc<Minter> = Arc::new(args.common.minter()?);
    let owner = minter.token(Uuid::now_v7());
    let (_, venue) = api.published_event_at_venue(&owner, 1_000).await?;
    let rss_before = args.common.server_pid.and_then(rss_bytes);

    eprintln!("recs-fanout: connecting {} users to recs", args.clients);
    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel();
    let (live, failures) = connect_all(args.clients, args.source_addresses, |i, source| {
        client(
            servers[i % servers.len()],
            source,
            minter.token(Uuid::now_v7()),
            arrivals_tx.clone(),
        )
    })
    .await?;
    drop(arrivals_tx);
    let connected = live.len();
    eprintln!("recs-fanout: {connected} lists live; letting them idle");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_idle = args.common.server_pid.and_then(rss_bytes);

    let mut from_send = latency_histogram();
    let mut all_delivered = latency_histogram();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut complete_rounds = 0;
    let started = Instant::now();
    for round in 1..=args.rounds {
        // New, and sooner than every earlier one: it enters every list.
        let starts_at = chrono::Utc::now() + chrono::Duration::hours(3)
            - chrono::Duration::minutes(round as i64);
        let sent = Instant::now();
        let event = api
            .publish_event(&owner, venue, &format!("Round {round}"), starts_at, 1_000)
            .await?;
        // Publishing answered 200 (anything else is an error above).
        *outcomes.entry("200".into()).or_default() += 1;
        let mut received = 0usize;
        let mut last = sent;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while received < connected {
            match tokio::time::timeout_at(deadline, arrivals.recv()).await {
                Ok(Some(arrival)) if arrival.events.contains(&event) => {
                    received += 1;
                    last = last.max(arrival.at);
                    from_send.saturating_record(arrival.at.duration_since(sent).as_micros() as u64);
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        if received == connected {
            complete_rounds += 1;
        }
        all_delivered.saturating_record(last.duration_since(sent).as_micros() as u64);
        eprintln!(
            "round {round}: {received}/{connected} lists in {:.1} ms",
            last.duration_since(sent).as_secs_f64() * 1e3
        );
    }
    let elapsed = started.elapsed();
    let ms = |us: u64| us as f64 / 1000.0;
    let mut checks = vec![
        Check::new(
            "every user subscribed",
            connected == args.clients,
            format!("{connected}/{} subscribed; {failures:?}", args.clients),
        ),
        Check::new(
            "every round reached every list",
            complete_rounds == args.rounds,
            format!("{complete_rounds}/{} rounds complete", args.rounds),
        ),
        Check::new(
            "push latency (info)",
            true,
            if from_send.is_empty() {
                "no list showed a round's event".to_owned()
            } else {
                format!(
                    "from publishing: p50 {:.1} ms p99 {:.1} ms; until the last list: p50 {:.1} ms max {:.1} ms",
                    ms(from_send.value_at_quantile(0.5)),
                    ms(from_send.value_at_quantile(0.99)),
                    ms(all_delivered.value_at_quantile(0.5)),
                    ms(all_delivered.max()),
                )
            },
        ),
    ];
    checks.extend(memory_per_connection(
        "server memory per idle connection with a live list (info)",
        rss_before,
        rss_idle,
        connected,
    ));
    Ok(Report::new(
        "recs-fanout",
        &args.common.target_label(),
        &from_send,
        elapsed,
        outcomes,
        checks,
    )
    .by_target(api.outcomes_by_target()))
}

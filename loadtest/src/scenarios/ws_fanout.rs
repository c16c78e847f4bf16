//! `ws-fanout`: K WebSocket clients subscribe to one venue; then, round by
//! round, one join is made over HTTP and every client's arrival time of the
//! resulting update is recorded. Reports the delivery latency over all
//! clients (from sending the join, from its commit — the update's
//! `committed_at` — and from its acknowledgement), the time
//! until the last client had each update, and the server's memory per idle
//! connection (from /proc, with --server-pid).
//!
//! Clients spread over several 127.0.0.x source addresses so that one
//! address's ephemeral port range is not the limit.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpSocket;
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use uuid::Uuid;

use crate::Common;
use crate::api::Api;
use crate::process::{CpuMeter, memory_per_connection, rss_bytes};
use crate::report::{Check, Report, latency_histogram};

#[derive(Args)]
pub struct WsFanout {
    #[command(flatten)]
    pub common: Common,
    /// Subscribed clients.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Joins made, one at a time, each fanned out to every client.
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// Spread clients over 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, default_value_t = 4)]
    pub source_addresses: u8,
    /// Idle this long before each round, as a venue's screens do between
    /// updates (0: rounds back to back after the first). An update after an
    /// idle spell costs more than one in a steady stream; with a pause the
    /// CPU figures also count what the server did meanwhile (heartbeats).
    #[arg(long, default_value_t = 0)]
    pub pause_ms: u64,
}

/// The targets' socket addresses: WebSocket clients are spread over them
/// round-robin.
pub(crate) fn server_addrs(targets: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    targets
        .iter()
        .map(|target| {
            let host = target.trim_start_matches("http://").trim_end_matches('/');
            host.parse().with_context(|| {
                format!("--target must be http://<ip>:<port> for WebSocket scenarios, not {target}")
            })
        })
        .collect()
}

/// The parts of a channel frame the scenarios read; the rest is skipped
/// without building a JSON tree, so that the client's parsing stays cheap
/// next to the server's work.
#[derive(Deserialize)]
pub(crate) struct ChannelFrame {
    #[serde(rename = "type")]
    pub kind: String,
    pub offset: Option<u64>,
    pub committed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub data: Option<FrameData>,
}

#[derive(Deserialize)]
pub(crate) struct FrameData {
    pub event: Option<EventCounts>,
}

#[derive(Deserialize)]
pub(crate) struct EventCounts {
    pub active_count: u64,
    pub waitlist_count: u64,
}

/// One arrival: which round's update, and when.
struct Arrival {
    offset: u64,
    at: Instant,
    /// From the update's commit (its `committed_at`, same machine's clock)
    /// to its arrival here.
    since_commit: Option<Duration>,
}

pub(crate) type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket to the server from the given source address.
///
/// Its read buffer is 4 KiB instead of tungstenite's 128 KiB: the buffer is
/// zero-filled on every read, and with thousands of clients on the server's
/// own machine that memset was 44 % of the tool's CPU (perf), time taken
/// from the server being measured.
pub(crate) async fn connect_from(server: SocketAddr, source: Ipv4Addr) -> anyhow::Result<Socket> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket.connect(server).await?;
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{server}/v1/ws"),
        stream,
        Some(config),
    )
    .await?;
    Ok(ws)
}

/// The `i`th client's source address among `spread` loopback addresses.
fn source_address(i: usize, spread: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + (i % spread.max(1) as usize) as u8)
}

/// Connects `count` clients (256 handshakes at a time; `connect` is told
/// each one's number and source address), spread over `spread` loopback
/// source addresses; returns what each connected client gave and the
/// failures by message.
pub(crate) async fn connect_all<T, Connect>(
    count: usize,
    spread: u8,
    connect: impl Fn(usize, Ipv4Addr) -> Connect,
) -> anyhow::Result<(Vec<T>, BTreeMap<String, u64>)>
where
    T: Send + 'static,
    Connect: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let handshakes = Arc::new(Semaphore::new(256));
    let mut connecting = Vec::with_capacity(count);
    for i in 0..count {
        let (client, handshakes) = (
            connect(i, source_address(i, spread)),
            Arc::clone(&handshakes),
        );
        connecting.push(tokio::spawn(async move {
            let _slot = handshakes.acquire().await.expect("open");
            client.await
        }));
    }
    let mut connected = Vec::with_capacity(count);
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for task in connecting {
        match task.await? {
            Ok(value) => connected.push(value),
            Err(e) => *failures.entry(format!("connect: {e}")).or_default() += 1,
        }
    }
    Ok((connected, failures))
}

/// Subscribes `ws` to `channel` and waits for the channel's snapshot.
pub(crate) async fn subscribe(ws: &mut Socket, channel: &str) -> anyhow::Result<ChannelFrame> {
    ws.send(Message::text(
        json!({ "type": "subscribe", "channel": channel }).to_string(),
    ))
    .await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: ChannelFrame = serde_json::from_str(&text)?;
                match frame.kind.as_str() {
                    "snapshot" => return Ok(frame),
                    "error" => anyhow::bail!("subscribe to {channel} refused: {text}"),
                    _ => {}
                }
            }
            Some(Ok(_)) => continue,
            _ => anyhow::bail!("closed before the snapshot"),
        }
    }
}

/// Authenticates as the holder of `token` and subscribes to `channel`, one
/// of a person's own (`me`, `recs`): the server takes the two frames in
/// order. Waits for the snapshot.
pub(crate) async fn subscribe_as(
    ws: &mut Socket,
    token: &str,
    channel: &str,
) -> anyhow::Result<()> {
    let auth = json!({ "type": "auth", "token": token });
    ws.send(Message::text(auth.to_string())).await?;
    subscribe(ws, channel).await.map(drop)
}

async fn client(
    server: SocketAddr,
    source: Ipv4Addr,
    channel: String,
    arrivals: mpsc::UnboundedSender<Arrival>,
) -> anyhow::Result<u64> {
    let mut ws = connect_from(server, source).await?;
    let snapshot_offset = subscribe(&mut ws, &channel).await?.offset.unwrap_or(0);
    tokio::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = message {
                let (at, wall) = (Instant::now(), chrono::Utc::now());
                if let Ok(frame) = serde_json::from_str::<ChannelFrame>(&text)
                    && frame.kind == "update"
                {
                    let _ = arrivals.send(Arrival {
                        offset: frame.offset.unwrap_or(0),
                        at,
                        since_commit: frame
                            .committed_at
                            .and_then(|committed| (wall - committed).to_std().ok()),
                    });
                }
            }
        }
    });
    Ok(snapshot_offset)
}

pub async fn run(args: WsFanout) -> anyhow::Result<Report> {
    let servers = server_addrs(&args.common.targets)?;
    let api = Api::new(&args.common.targets, 64)?;
    let minter = args.common.minter()?;
    let owner = minter.token(Uuid::now_v7());
    let (event, venue) = api.published_event_at_venue(&owner, 1_000_000).await?;
    let channel = format!("venue:{venue}");
    let rss_before = args.common.server_pid.and_then(rss_bytes);

    eprintln!(
        "ws-fanout: connecting {} clients to {channel}",
        args.clients
    );
    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel();
    let (offsets, failures) = connect_all(args.clients, args.source_addresses, |i, source| {
        client(
            servers[i % servers.len()],
            source,
            channel.clone(),
            arrivals_tx.clone(),
        )
    })
    .await?;
    drop(arrivals_tx);
    let connected = offsets.len();
    let start_offset = offsets.into_iter().max().unwrap_or(0);
    eprintln!("ws-fanout: {connected} connected; letting them idle");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_idle = args.common.server_pid.and_then(rss_bytes);

    let mut from_send = latency_histogram();
    let mut from_ack = latency_histogram();
    let mut from_commit = latency_histogram();
    let mut all_delivered = latency_histogram();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut complete_rounds = 0;
    let mut delivered = 0;
    let cpu = CpuMeter::start(&args.common);
    let started = Instant::now();
    for round in 1..=args.rounds as u64 {
        if round > 1 && args.pause_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
        }
        let user = Uuid::now_v7();
        let sent = Instant::now();
        let (status, _) = api
            .join(&minter.token(user), event, &Uuid::new_v4().to_string())
            .await?;
        let acked = Instant::now();
        *outcomes.entry(status.as_u16().to_string()).or_default() += 1;
        let target = start_offset + round;
        let mut received = 0usize;
        let mut last = sent;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while received < connected {
            match tokio::time::timeout_at(deadline, arrivals.recv()).await {
                Ok(Some(arrival)) if arrival.offset == target => {
                    received += 1;
                    last = last.max(arrival.at);
                    from_send.saturating_record(arrival.at.duration_since(sent).as_micros() as u64);
                    from_ack.saturating_record(
                        arrival.at.saturating_duration_since(acked).as_micros() as u64,
                    );
                    if let Some(since) = arrival.since_commit {
                        from_commit.saturating_record(since.as_micros() as u64);
                    }
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        delivered += received;
        if received == connected {
            complete_rounds += 1;
        }
        all_delivered.saturating_record(last.duration_since(sent).as_micros() as u64);
        eprintln!(
            "round {round}: {received}/{connected} clients in {:.1} ms",
            last.duration_since(sent).as_secs_f64() * 1e3
        );
    }
    let elapsed = started.elapsed();

    let ms = |us: u64| us as f64 / 1000.0;
    let mut checks = vec![
        Check::new(
            "every client connected",
            connected == args.clients,
            format!("{connected}/{} connected; {failures:?}", args.clients),
        ),
        Check::new(
            "every round reached every client",
            complete_rounds == args.rounds,
            format!("{complete_rounds}/{} rounds complete", args.rounds),
        ),
        Check::new(
            "delivery latency (info)",
            true,
            format!(
                "from join sent: p50 {:.1} ms p99 {:.1} ms; from commit: p50 {:.1} ms p99 {:.1} ms; from ack: p50 {:.1} ms p99 {:.1} ms; until the last client: p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
                ms(from_send.value_at_quantile(0.5)),
                ms(from_send.value_at_quantile(0.99)),
                ms(from_commit.value_at_quantile(0.5)),
                ms(from_commit.value_at_quantile(0.99)),
                ms(from_ack.value_at_quantile(0.5)),
                ms(from_ack.value_at_quantile(0.99)),
                ms(all_delivered.value_at_quantile(0.5)),
                ms(all_delivered.value_at_quantile(0.99)),
                ms(all_delivered.max()),
            ),
        ),
    ];
    checks.extend(cpu.checks(delivered, "delivery"));
    checks.extend(memory_per_connection(
        "server memory per idle connection (info)",
        rss_before,
        rss_idle,
        connected,
    ));
    Ok(Report::new(
        "ws-fanout",
        &args.common.target_label(),
        &from_send,
        elapsed,
        outcomes,
        checks,
    )
    .by_target(api.outcomes_by_target()))
}

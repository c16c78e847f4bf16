//! The fan-out measuring stick for `ws-fanout` (issue #16): the least a
//! delivery can cost here, with nothing of Turnout's code in it. After the
//! WebSocket handshake every socket goes to one thread, and each update is
//! encoded once, as one frame, and its bytes written to every socket in
//! turn — no channels, no per-connection tasks, no queues. What Turnout
//! spends per delivery beyond this is what its hubs, queues and wake-ups
//! cost.
//!
//! It answers the few routes `ws-fanout` uses (a venue, an event, its
//! publication, joins, and `GET /v1/ws` with a `subscribe`), over a bare
//! HTTP/1.1 of its own, so the tool runs against it unchanged:
//!
//! ```sh
//! target/release/ws-stick --bind 127.0.0.1:18152 &
//! target/release/turnout-loadtest ws-fanout --target http://127.0.0.1:18152 \
//!   --jwt-key ANY-KEY-OF-32-BYTES-OR-MORE-0123456 --server-pid $! --clients 10000
//! ```

use std::io::Write;
use std::net::TcpStream as StdStream;
use std::sync::mpsc;

use clap::Parser;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use uuid::Uuid;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:18152")]
    bind: String,
}

/// What the broadcasting thread is told.
enum Broadcast {
    /// A subscribed socket, from now on written only by that thread.
    Socket(StdStream),
    /// An update: one frame's bytes for every socket.
    Frame(Vec<u8>),
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (tx, rx) = mpsc::channel::<Broadcast>();
    std::thread::Builder::new()
        .name("broadcast".into())
        .spawn(move || broadcast(rx))?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(args.bind, tx))
}

/// Writes each frame to every socket in turn; a socket that fails is
/// dropped.
fn broadcast(rx: mpsc::Receiver<Broadcast>) {
    let mut sockets: Vec<StdStream> = Vec::new();
    for message in rx {
        match message {
            Broadcast::Socket(socket) => sockets.push(socket),
            Broadcast::Frame(frame) => sockets.retain_mut(|s| s.write_all(&frame).is_ok()),
        }
    }
}

async fn serve(bind: String, tx: mpsc::Sender<Broadcast>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&bind).await?;
    eprintln!("ws-stick listening on {bind}");
    let channel = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            loop {
                let (stream, _) = listener.accept().await?;
                let (tx, offset) = (tx.clone(), channel.clone());
                tokio::task::spawn_local(async move {
                    let _ = connection(stream, tx, offset).await;
                });
            }
        })
        .await
}

/// One request head: method, path, the WebSocket key if any, and the body's
/// length.
struct Head {
    method: String,
    path: String,
    ws_key: Option<String>,
    length: usize,
}

async fn read_head(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Head>> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or_default().to_owned(),
    );
    let (mut ws_key, mut length) = (None, 0);
    loop {
        line.clear();
        reader.read_line(&mut line).await?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "sec-websocket-key" => ws_key = Some(value.trim().to_owned()),
                _ => {}
            }
        }
    }
    Ok(Some(Head {
        method,
        path,
        ws_key,
        length,
    }))
}

async fn connection(
    stream: TcpStream,
    tx: mpsc::Sender<Broadcast>,
    offset: std::rc::Rc<std::cell::Cell<u64>>,
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream);
    while let Some(head) = read_head(&mut reader).await? {
        let mut body = vec![0; head.length];
        reader.read_exact(&mut body).await?;
        if let Some(key) = head.ws_key {
            return subscriber(reader, &key, tx, offset.get()).await;
        }
        let (status, data) = route(&head.method, &head.path, &tx, &offset);
        let body = json!({ "data": data }).to_string();
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        reader.get_mut().write_all(response.as_bytes()).await?;
    }
    Ok(())
}

/// The routes `ws-fanout` uses. A join is an update for every subscriber.
fn route(
    method: &str,
    path: &str,
    tx: &mpsc::Sender<Broadcast>,
    offset: &std::cell::Cell<u64>,
) -> (&'static str, serde_json::Value) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("POST", ["v1", "venues"] | ["v1", "events"]) => {
            ("201 Created", json!({ "id": Uuid::now_v7() }))
        }
        ("POST", ["v1", "events", id, "publish"]) => {
            ("200 OK", json!({ "id": id, "status": "published" }))
        }
        ("POST", ["v1", "events", id, "join"]) => {
            offset.set(offset.get() + 1);
            let _ = tx.send(Broadcast::Frame(update(id, offset.get())));
            ("201 Created", json!({ "event_id": id, "status": "active" }))
        }
        _ => ("404 Not Found", json!(null)),
    }
}

/// An update frame the size and shape of Turnout's venue update, as long
/// to within the digits of its numbers and timestamps: a channel named by
/// a venue's id, a 16-digit epoch, the event's tag.
fn update(event: &str, offset: u64) -> Vec<u8> {
    let text = json!({
        "v": 1, "type": "update", "channel": format!("venue:{}", Uuid::nil()),
        "epoch": "57ac000000000000", "offset": offset,
        "committed_at": chrono::Utc::now(),
        "data": {
            "event": {
                "id": event, "owner_id": Uuid::nil(), "venue_id": Uuid::nil(),
                "title": "Load test", "description": null,
                "starts_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "ends_at": null, "tags": ["loadtest"],
                "status": "published", "capacity": 1_000_000, "active_count": offset,
                "offered_seats": 0, "waitlist_count": 0, "places_left": 1_000_000 - offset,
                "waitlist_mode": "auto", "waitlist_fill": "strict",
                "offer_hold_secs": 1800, "max_party": 1
            },
            "kinds": ["joined"], "listed": true, "reason": "changed"
        }
    })
    .to_string();
    server_frame(text.as_bytes())
}

/// An unmasked text frame, as a server sends.
fn server_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x81);
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n <= 0xFFFF => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

/// Reads one masked client frame's payload.
async fn client_frame(reader: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut head = [0u8; 2];
    reader.read_exact(&mut head).await?;
    let length = match head[1] & 0x7F {
        126 => reader.read_u16().await? as usize,
        127 => reader.read_u64().await? as usize,
        n => n as usize,
    };
    let mut mask = [0u8; 4];
    reader.read_exact(&mut mask).await?;
    let mut payload = vec![0; length];
    reader.read_exact(&mut payload).await?;
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
    Ok(payload)
}

/// Completes the handshake, answers the `subscribe` with a snapshot, and
/// hands the socket to the broadcasting thread.
async fn subscriber(
    mut reader: BufReader<TcpStream>,
    key: &str,
    tx: mpsc::Sender<Broadcast>,
    offset: u64,
) -> anyhow::Result<()> {
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
    );
    reader.get_mut().write_all(upgrade.as_bytes()).await?;
    let subscribe: serde_json::Value = serde_json::from_slice(&client_frame(&mut reader).await?)?;
    let snapshot = json!({
        "v": 1, "type": "snapshot", "channel": subscribe["channel"], "epoch": "stick",
        "offset": offset, "data": { "events": [] }
    })
    .to_string();
    reader
        .get_mut()
        .write_all(&server_frame(snapshot.as_bytes()))
        .await?;
    let socket = reader.into_inner().into_std()?;
    socket.set_nonblocking(false)?;
    tx.send(Broadcast::Socket(socket))?;
    Ok(())
}

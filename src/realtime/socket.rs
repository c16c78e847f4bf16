//! The send side of a WebSocket connection: the frames queued for one
//! client, bounded in bytes, and the writer that drains them to the socket.
//!
//! Hubs push frames from their own thread, each encoded once for all its
//! subscribers. On plain TCP, a frame pushed while nothing waits before it
//! is written by the hub there and then: one `send`, with no wake-up of the
//! connection's worker. Whatever the socket does not take at once — and
//! every frame on TLS — waits in the queue for the connection's [`Writer`],
//! which writes the frames' shared bytes when woken. An idle connection
//! holds no more than an empty queue.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use actix::prelude::*;
use actix_codec::Encoder;
use actix_http::ws::{CloseReason, Codec, Message};
use actix_web::rt::net::TcpStream;
use actix_web::web::{Bytes, BytesMut};
use bytestring::ByteString;
use chrono::{DateTime, Utc};
use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

use super::limits::ConnectionPermit;
use super::takeover::WriteSide;

/// Stop filling one write beyond this.
const CHUNK_BYTES: usize = 16 * 1024;

/// How long a close waits for the frames before it to be written: a client
/// that stopped reading cannot keep its connection by never taking them.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

struct Queue {
    frames: VecDeque<Frame>,
    /// Bytes of frames queued and not yet written.
    bytes: usize,
    /// Control frames are flags, not queue entries, so that a client that
    /// pings without reading cannot grow the queue: only the latest ping
    /// needs an answer (RFC 6455, 5.5.3).
    ping: bool,
    pong: Option<Bytes>,
    /// Set once: the close frame goes out after the control frames and
    /// ends the connection; from then on nothing more is taken.
    close: Option<CloseReason>,
    /// The rest of a frame a hub wrote only part of: on the wire its header
    /// promised these bytes, so they go out before anything else, a
    /// control frame or the close included.
    unfinished: Option<Frame>,
    /// The writer has taken bytes out and not finished writing them.
    writing: bool,
    /// Plain TCP, until the connection ends: a hub writes a frame itself
    /// when nothing waits to be written before it.
    direct: Option<Direct>,
}

/// The socket a hub writes to itself, its descriptor kept in the queue
/// beside the lock the hub has just taken. Read through the stream, the
/// descriptor is in the stream's own allocation: one more cache miss per
/// connection, which a fan-out to 10,000 connections pays 10,000 times per
/// update (docs/BENCHMARKS.md, "Fan-out: the stick's frame as long as
/// Turnout's, and a cache miss fewer").
struct Direct {
    fd: RawFd,
    /// Keeps `fd` open for as long as this lives.
    _stream: Arc<TcpStream>,
}

impl Direct {
    fn new(stream: Arc<TcpStream>) -> Self {
        Self {
            fd: stream.as_raw_fd(),
            _stream: stream,
        }
    }
}

impl AsFd for Direct {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `_stream` owns the descriptor, and lives as long as `self`.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }
}

impl Queue {
    /// Drops the frames not yet begun; a begun one must still be finished.
    fn drop_queued(&mut self) {
        self.frames.clear();
        self.bytes = self.unfinished.as_ref().map_or(0, |frame| frame.text_len);
    }

    /// Nothing waits to be written, so a new frame may go out at once.
    fn idle(&self) -> bool {
        self.frames.is_empty()
            && self.unfinished.is_none()
            && !self.ping
            && self.pong.is_none()
            && self.close.is_none()
            && !self.writing
    }
}

struct Shared {
    queue: Mutex<Queue>,
    /// The writer's task, woken when something is queued.
    writer: AtomicWaker,
    /// Told once a close is queued: the close's grace starts.
    closing: Notify,
    max_bytes: usize,
    /// Looked up once per connection rather than once per frame: a fan-out
    /// to 10,000 connections writes 10,000 frames.
    sent: metrics::Counter,
    fanout: metrics::Histogram,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock cannot leave the queue half-changed:
        // every change is a single push, pop or flag.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts frames written, and how long after their commit.
    fn written<'a>(&self, frames: impl IntoIterator<Item = &'a Frame>) {
        let (mut texts, mut now) = (0, None);
        for frame in frames {
            texts += 1;
            if let Some(at) = frame.committed_at {
                let now = *now.get_or_insert_with(Utc::now);
                self.fanout.record(seconds_since(at, now));
            }
        }
        if texts > 0 {
            self.sent.increment(texts);
        }
    }
}

/// A text frame, encoded once — WebSocket header and text — so that every
/// subscriber of an update is handed the same bytes (a clone is a reference
/// count) and a lone frame is written as it is.
#[derive(Clone)]
pub struct Frame {
    encoded: Bytes,
    /// The text's length: what a queue's budget counts (in a queue, what
    /// it was charged: see [`SendQueue::push`]).
    text_len: usize,
    /// For updates: when the change committed (fan-out latency).
    committed_at: Option<DateTime<Utc>>,
}

impl Frame {
    /// `committed_at` for an update a commit caused.
    pub fn text(text: impl Into<ByteString>, committed_at: Option<DateTime<Utc>>) -> Self {
        let text = text.into();
        let text_len = text.len();
        let mut encoded = BytesMut::with_capacity(text_len + 10);
        encode(&mut Codec::new(), Message::Text(text), &mut encoded);
        Self {
            encoded: encoded.freeze(),
            text_len,
            committed_at,
        }
    }

    /// What the frame counts against a queue's budget.
    pub fn budgeted_len(&self) -> usize {
        self.text_len
    }
}

/// One frame on its way to many subscribers (a hub's update or snapshot).
/// The frames the hub writes straight to sockets are counted and timed in
/// groups: a fan-out to 10,000 connections reads the clock once per
/// [`Fanout::GROUP`] deliveries and gives each delivery of the group the
/// latency of its last (at most a few milliseconds more than its own). A
/// clock read and a record per frame were ~3 % of a large fan-out's CPU.
/// Recorded when dropped.
pub struct Fanout<'a> {
    frame: &'a Frame,
    unrecorded: u64,
    sent: metrics::Counter,
    fanout: metrics::Histogram,
}

impl<'a> Fanout<'a> {
    const GROUP: u64 = 256;

    pub fn of(frame: &'a Frame) -> Self {
        Self {
            frame,
            unrecorded: 0,
            sent: metrics::counter!(SENT),
            fanout: metrics::histogram!(FANOUT),
        }
    }

    /// Hands the frame to one subscriber; false as [`SendQueue::push`].
    /// Only a frame that waits in the queue is cloned.
    pub fn to(&mut self, queue: &SendQueue) -> bool {
        match queue.offer(self.frame) {
            Offered::Written => {
                self.unrecorded += 1;
                if self.unrecorded == Self::GROUP {
                    self.record();
                }
                true
            }
            Offered::Queued => true,
            Offered::Refused => false,
        }
    }

    fn record(&mut self) {
        if self.unrecorded == 0 {
            return;
        }
        self.sent.increment(self.unrecorded);
        if let Some(at) = self.frame.committed_at {
            self.fanout
                .record_many(seconds_since(at, Utc::now()), self.unrecorded as usize);
        }
        self.unrecorded = 0;
    }
}

impl Drop for Fanout<'_> {
    fn drop(&mut self) {
        self.record();
    }
}

/// How long after its commit a frame went out, for the fan-out histogram.
fn seconds_since(committed_at: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    (now - committed_at)
        .to_std()
        .unwrap_or_default()
        .as_secs_f64()
}

/// What became of a frame offered to a queue.
enum Offered {
    /// On the wire already.
    Written,
    /// For the connection's writer.
    Queued,
    /// The connection is closing or over its budget.
    Refused,
}

const SENT: &str = "turnout_ws_messages_sent_total";
const FANOUT: &str = "turnout_ws_fanout_seconds";

/// One channel's way into a connection's queue, for a channel served by an
/// actor of its own (`me`, `recs`), which the session can shut with a last
/// frame that nothing of the channel follows: the session's `unsubscribed`
/// cannot be overtaken by a snapshot still being read. One lock orders the
/// two writers; frames pushed after the shut are dropped.
#[derive(Clone)]
pub struct ChannelQueue {
    queue: SendQueue,
    open: Arc<Mutex<bool>>,
}

impl ChannelQueue {
    pub fn new(queue: SendQueue) -> Self {
        Self {
            queue,
            open: Arc::new(Mutex::new(true)),
        }
    }

    /// As [`SendQueue::push`]; false, and nothing sent, once shut.
    pub fn push(&self, frame: Frame) -> bool {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        *open && self.queue.push(frame)
    }

    /// Shut, or its connection closing: nobody is left to tell.
    pub fn is_shut(&self) -> bool {
        let open = *self.open.lock().unwrap_or_else(|e| e.into_inner());
        !open || self.queue.is_closing()
    }

    /// Sends `last` as the channel's final frame.
    pub fn shut_with(&self, last: Frame) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if std::mem::replace(&mut *open, false) {
            self.queue.push(last);
        }
    }
}

/// A connection's outgoing queue, bounded in bytes. Cloned into every hub
/// the connection subscribes to.
#[derive(Clone)]
pub struct SendQueue {
    shared: Arc<Shared>,
    /// Told when the queue overflows, so that it closes the connection.
    session: Recipient<Overflowed>,
}

/// The outgoing queue went over its byte budget.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Overflowed;

impl SendQueue {
    /// A queue of at most `max_bytes` for the socket `sink`, and the writer
    /// that drains it; the writer keeps the connection's place within the
    /// limits.
    pub fn new(
        max_bytes: usize,
        session: Recipient<Overflowed>,
        sink: WriteSide,
        permit: ConnectionPermit,
    ) -> (Self, Writer) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                frames: VecDeque::new(),
                bytes: 0,
                ping: false,
                pong: None,
                close: None,
                unfinished: None,
                writing: false,
                direct: sink.shared().map(Direct::new),
            }),
            writer: AtomicWaker::new(),
            closing: Notify::new(),
            max_bytes,
            sent: metrics::counter!(SENT),
            fanout: metrics::histogram!(FANOUT),
        });
        let writer = Writer {
            shared: Arc::clone(&shared),
            sink,
            _permit: permit,
        };
        (Self { shared, session }, writer)
    }

    /// The bytes of frames the queue may still take before the connection
    /// is closed as a slow consumer.
    pub fn room(&self) -> usize {
        let queued = self.shared.queue().bytes;
        self.shared.max_bytes.saturating_sub(queued)
    }

    /// Queues a frame, or writes it at once when the socket allows. False
    /// when the connection is closing or has just gone over its budget, in
    /// which case its session is told to close it. A frame larger than the
    /// whole budget (a big snapshot) still goes out when nothing is queued,
    /// and counts as half the budget: the frames after it have the other
    /// half, or the next update would close a client that reads on.
    pub fn push(&self, frame: Frame) -> bool {
        match self.offer(&frame) {
            Offered::Written => {
                self.shared.written([&frame]);
                true
            }
            Offered::Queued => true,
            Offered::Refused => false,
        }
    }

    fn offer(&self, frame: &Frame) -> Offered {
        let mut queue = self.shared.queue();
        if queue.close.is_some() {
            return Offered::Refused;
        }
        let max_bytes = self.shared.max_bytes;
        let charge = match frame.text_len > max_bytes {
            true => max_bytes / 2,
            false => frame.text_len,
        };
        if queue.bytes > 0 && queue.bytes + charge > max_bytes {
            drop(queue);
            self.session.do_send(Overflowed);
            return Offered::Refused;
        }
        if queue.idle()
            && let Some(tcp) = &queue.direct
        {
            // Under the lock, so that no frame queued after this one can be
            // written before it. An error is the writer's to meet. The
            // socket is non-blocking; `send` on it directly skips tokio's
            // readiness record (another cache line per connection), which
            // only caches what the kernel knows: a full socket makes the
            // writer's next write find out and wait for the kernel's edge.
            match socket2::SockRef::from(tcp).send(&frame.encoded) {
                Ok(written) if written == frame.encoded.len() => return Offered::Written,
                Ok(written) if written > 0 => {
                    // What is left of it is what waits.
                    let charge = charge.min(frame.encoded.len() - written);
                    queue.bytes += charge;
                    queue.unfinished = Some(Frame {
                        encoded: frame.encoded.slice(written..),
                        text_len: charge,
                        ..frame.clone()
                    });
                    drop(queue);
                    self.shared.writer.wake();
                    return Offered::Queued;
                }
                Ok(_) | Err(_) => {}
            }
        }
        queue.bytes += charge;
        queue.frames.push_back(Frame {
            text_len: charge,
            ..frame.clone()
        });
        drop(queue);
        self.shared.writer.wake();
        Offered::Queued
    }

    pub fn ping(&self) {
        self.control(|queue| queue.ping = true);
    }

    /// Answers the client's latest ping; an unanswered earlier one is
    /// superseded.
    pub fn pong(&self, payload: Bytes) {
        self.control(|queue| queue.pong = Some(payload));
    }

    /// Drops whatever is still queued, sends a close frame, and ends the
    /// connection once it is written, or [`CLOSE_GRACE`] after.
    pub fn close(&self, reason: CloseReason) {
        let mut queue = self.shared.queue();
        if queue.close.is_some() {
            return;
        }
        queue.close = Some(reason);
        queue.drop_queued();
        drop(queue);
        self.shared.closing.notify_one();
        self.shared.writer.wake();
    }

    /// A close frame is queued or written: the connection is on its way out.
    pub fn is_closing(&self) -> bool {
        self.shared.queue().close.is_some()
    }

    /// Control frames go ahead of the queued text frames.
    fn control(&self, set: impl FnOnce(&mut Queue)) {
        let mut queue = self.shared.queue();
        if queue.close.is_none() {
            set(&mut queue);
            drop(queue);
            self.shared.writer.wake();
        }
    }
}

/// Writes a connection's queue to its socket: control frames first, then
/// the queue in order, until the close frame is out.
pub struct Writer {
    shared: Arc<Shared>,
    sink: WriteSide,
    _permit: ConnectionPermit,
}

/// What the writer took from the queue for one write.
struct Batch {
    bytes: Bytes,
    frames: Vec<Frame>,
    /// The close frame is in it: the last write.
    last: bool,
}

impl Writer {
    /// Runs until the close frame is written, the socket fails, or a close
    /// has waited [`CLOSE_GRACE`]; then shuts the socket down, which ends
    /// the session's read side too, and gives the connection's place back.
    pub async fn run(self) {
        let Self {
            shared,
            mut sink,
            _permit,
        } = self;
        let ended = Ended(&shared);
        let closed_cleanly = tokio::select! {
            written = write_frames(&shared, &mut sink) => match written {
                Ok(()) => true,
                Err(error) => {
                    tracing::debug!(%error, "websocket write failed");
                    false
                }
            },
            () = async {
                shared.closing.notified().await;
                tokio::time::sleep(CLOSE_GRACE).await;
            } => false,
        };
        drop(ended);
        // Boxed: the ending's futures would otherwise add their size to
        // every open connection's.
        Box::pin(sink.shut_down(closed_cleanly)).await;
    }
}

/// However the writer ends — its close written, the socket failed, or its
/// worker dropped it at a stop — hubs stop writing to the socket and
/// queueing for it.
struct Ended<'a>(&'a Shared);

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        let mut queue = self.0.queue();
        queue.close.get_or_insert(CloseReason {
            code: actix_http::ws::CloseCode::Abnormal,
            description: None,
        });
        queue.unfinished = None;
        queue.drop_queued();
        queue.direct = None;
    }
}

async fn write_frames(shared: &Shared, sink: &mut WriteSide) -> io::Result<()> {
    let mut codec = Codec::new();
    loop {
        let batch = poll_fn(|cx| {
            shared.writer.register(cx.waker());
            match take_batch(&mut shared.queue(), &mut codec) {
                Some(batch) => Poll::Ready(batch),
                None => Poll::Pending,
            }
        })
        .await;
        sink.write_all(&batch.bytes).await?;
        shared.queue().writing = false;
        shared.written(&batch.frames);
        if batch.last {
            return Ok(());
        }
    }
}

/// Takes the next write out of the queue: a lone frame as its shared bytes;
/// several, or control frames, gathered into one chunk.
fn take_batch(queue: &mut Queue, codec: &mut Codec) -> Option<Batch> {
    if let Some(frame) = queue.unfinished.take() {
        queue.bytes -= frame.text_len;
        queue.writing = true;
        return Some(Batch {
            bytes: frame.encoded.clone(),
            frames: vec![frame],
            last: false,
        });
    }
    let mut chunk = BytesMut::new();
    if std::mem::take(&mut queue.ping) {
        encode(codec, Message::Ping(Bytes::new()), &mut chunk);
    }
    if let Some(payload) = queue.pong.take() {
        encode(codec, Message::Pong(payload), &mut chunk);
    }
    let (mut frames, mut size) = (Vec::new(), chunk.len());
    while size < CHUNK_BYTES {
        let Some(frame) = queue.frames.pop_front() else {
            break;
        };
        queue.bytes -= frame.text_len;
        size += frame.encoded.len();
        frames.push(frame);
    }
    let last = queue.close.is_some();
    let bytes = match &frames[..] {
        [lone] if chunk.is_empty() && !last => lone.encoded.clone(),
        _ => {
            for frame in &frames {
                chunk.extend_from_slice(&frame.encoded);
            }
            if let Some(reason) = &queue.close {
                encode(codec, Message::Close(Some(reason.clone())), &mut chunk);
            }
            if chunk.is_empty() {
                return None;
            }
            chunk.freeze()
        }
    };
    queue.writing = true;
    Some(Batch {
        bytes,
        frames,
        last,
    })
}

fn encode(codec: &mut Codec, message: Message, chunk: &mut BytesMut) {
    codec
        .encode(message, chunk)
        .expect("a server frame always encodes");
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use actix_codec::Decoder;
    use actix_http::ws::{CloseCode, Frame as WireFrame};
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpSocket};

    use super::*;
    use crate::realtime::ConnectionLimits;

    /// Stands in for the session: counts overflow notices.
    struct Notices(Arc<AtomicUsize>);

    impl Actor for Notices {
        type Context = actix::Context<Self>;
    }

    impl Handler<Overflowed> for Notices {
        type Result = ();

        fn handle(&mut self, _: Overflowed, _: &mut Self::Context) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A real loopback connection: the server's end as a write side, and
    /// the client's end. Small socket buffers when `tight`, so that the
    /// client not reading soon blocks the server's writes.
    async fn connection(tight: bool) -> (WriteSide, tokio::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpSocket::new_v4().unwrap();
        if tight {
            client.set_recv_buffer_size(4096).unwrap();
        }
        let client = client
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        if tight {
            socket2::SockRef::from(&server)
                .set_send_buffer_size(4096)
                .unwrap();
        }
        (WriteSide::Tcp(Arc::new(server)), client)
    }

    struct Connection {
        queue: SendQueue,
        client: tokio::net::TcpStream,
        notices: Arc<AtomicUsize>,
        /// What the client has read and not yet decoded.
        read: BytesMut,
    }

    async fn connect(max_bytes: usize, tight: bool) -> Connection {
        let (sink, client) = connection(tight).await;
        let notices = Arc::new(AtomicUsize::new(0));
        let session = Notices(Arc::clone(&notices)).start().recipient();
        let permit = ConnectionLimits::new(1, 1, 0, "test_connections")
            .admit(std::net::Ipv4Addr::LOCALHOST.into())
            .unwrap();
        let (queue, writer) = SendQueue::new(max_bytes, session, sink, permit);
        actix_web::rt::spawn(writer.run());
        Connection {
            queue,
            client,
            notices,
            read: BytesMut::new(),
        }
    }

    impl Connection {
        /// The next `count` frames, decoded as a client would.
        async fn frames(&mut self, count: usize) -> Vec<WireFrame> {
            let mut codec = Codec::new().client_mode().max_size(1 << 24);
            let mut frames = Vec::new();
            while frames.len() < count {
                if let Some(frame) = codec.decode(&mut self.read).expect("valid frames") {
                    frames.push(frame);
                    continue;
                }
                let read = tokio::time::timeout(
                    Duration::from_secs(10),
                    self.client.read_buf(&mut self.read),
                )
                .await
                .expect("the server writes")
                .unwrap();
                assert!(read > 0, "the server closed early");
            }
            frames
        }

        /// Whether the server has ended the connection (after what was sent).
        async fn ended(&mut self) -> bool {
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), self.client.read_to_end(&mut rest))
                .await
                .is_ok_and(|read| read.is_ok())
        }
    }

    fn text(s: &str) -> Frame {
        Frame::text(s.to_owned(), None)
    }

    fn is_text(frame: &WireFrame, expected: &str) -> bool {
        matches!(frame, WireFrame::Text(t) if &t[..] == expected.as_bytes())
    }

    #[actix_web::test]
    async fn frames_go_out_in_order_and_a_close_ends_the_connection() {
        let mut connection = connect(1024, false).await;
        let queue = connection.queue.clone();
        assert!(queue.push(text("one")));
        queue.ping();
        assert!(queue.push(text("two")));
        let frames = connection.frames(3).await;
        assert!(is_text(&frames[0], "one"));
        assert!(
            matches!(&frames[1], WireFrame::Ping(_)),
            "a ping goes ahead of the frames queued behind it"
        );
        assert!(is_text(&frames[2], "two"));

        for i in 0..100 {
            queue.pong(Bytes::from(format!("{i}")));
        }
        let frames = connection.frames(1).await;
        assert!(
            matches!(&frames[0], WireFrame::Pong(p) if &p[..] == b"99"),
            "pings pile up no answers: only the latest"
        );

        queue.close(CloseReason {
            code: CloseCode::from(4008),
            description: Some("slow".into()),
        });
        assert!(
            !queue.push(text("after the close")),
            "a closing queue takes nothing"
        );
        let frames = connection.frames(1).await;
        assert!(matches!(&frames[0], WireFrame::Close(Some(r)) if r.code == CloseCode::from(4008)));
        assert!(connection.ended().await, "the server ended the connection");
    }

    #[actix_web::test]
    async fn the_queue_refuses_past_its_budget_and_tells_the_session() {
        let mut connection = connect(64 * 1024, true).await;
        let queue = connection.queue.clone();
        // Far more than the socket's buffers take: the rest waits queued.
        let big = "x".repeat(1 << 20);
        assert!(
            queue.push(text(&big)),
            "a frame larger than the whole budget still goes out alone"
        );
        assert!(
            queue.push(text("y")),
            "and counts as half of it: frames after it have the other half"
        );
        assert!(!queue.push(text(&"w".repeat(32 * 1024))), "but no more");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while connection.notices.load(Ordering::SeqCst) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "never told");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(connection.notices.load(Ordering::SeqCst), 1);

        let frames = connection.frames(2).await;
        assert!(is_text(&frames[0], &big), "the big frame arrives whole");
        assert!(is_text(&frames[1], "y"));
        assert!(queue.push(text("z")), "written frames leave the budget");
        assert!(is_text(&connection.frames(1).await[0], "z"));
    }

    /// A frame the socket took only in part is finished before anything
    /// else goes out: a ping or a close in its middle would break the
    /// stream for the client.
    #[actix_web::test]
    async fn a_frame_begun_on_the_wire_is_finished_before_a_ping_or_the_close() {
        let mut connection = connect(64 * 1024, true).await;
        let queue = connection.queue.clone();
        let big = "x".repeat(1 << 20);
        assert!(queue.push(text(&big)));
        queue.ping();
        queue.close(CloseReason {
            code: CloseCode::from(4008),
            description: Some("slow".into()),
        });
        let frames = connection.frames(3).await;
        assert!(is_text(&frames[0], &big), "the begun frame arrives whole");
        assert!(matches!(&frames[1], WireFrame::Ping(_)));
        assert!(matches!(&frames[2], WireFrame::Close(Some(r)) if r.code == CloseCode::from(4008)));
        assert!(connection.ended().await);
    }

    #[actix_web::test]
    async fn a_close_that_cannot_be_written_ends_the_connection_after_its_grace() {
        let mut connection = connect(64 * 1024, true).await;
        let queue = connection.queue.clone();
        assert!(queue.push(text(&"x".repeat(1 << 20))));
        queue.close(CloseReason {
            code: CloseCode::Normal,
            description: None,
        });
        // The client reads nothing for longer than the grace.
        tokio::time::sleep(CLOSE_GRACE + Duration::from_secs(1)).await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            connection.client.read_to_end(&mut rest),
        )
        .await
        .expect("the server ended the connection");
        // What did arrive is a clean prefix: the frame, cut off, no close.
        let mut rest = BytesMut::from(&rest[..]);
        let mut codec = Codec::new().client_mode().max_size(1 << 24);
        assert!(
            matches!(codec.decode(&mut rest), Ok(None)),
            "the big frame never arrived whole, and nothing else followed it"
        );
    }

    #[actix_web::test]
    async fn the_connection_keeps_its_place_until_the_writer_ends() {
        let limits = ConnectionLimits::new(1, 1, 0, "test_connections");
        let ip = std::net::Ipv4Addr::LOCALHOST.into();
        let session = Notices(Arc::new(AtomicUsize::new(0))).start().recipient();
        let (sink, _client) = connection(false).await;
        let (queue, writer) = SendQueue::new(10, session, sink, limits.admit(ip).unwrap());
        let writing = actix_web::rt::spawn(writer.run());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(limits.admit(ip).is_err(), "the writer holds the place");
        queue.close(CloseReason {
            code: CloseCode::Normal,
            description: None,
        });
        writing.await.unwrap();
        assert!(limits.admit(ip).is_ok(), "the connection is gone");
    }
}

//! The send side of a WebSocket connection: the frames queued for one
//! client, bounded in bytes, and the HTTP response body that writes them.
//!
//! Hubs push frames from their own thread, each encoded once for all its
//! subscribers; the connection's dispatcher drains the queue when woken and
//! writes the frames' shared bytes. An update therefore costs one wake-up and one write per
//! client, with no task or channel in between, and an idle connection holds
//! no more than an empty queue.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::mem;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use actix::prelude::*;
use actix_codec::Encoder;
use actix_http::body::{BodySize, MessageBody};
use actix_http::ws::{CloseReason, Codec, Message};
use actix_web::web::{Bytes, BytesMut};
use bytestring::ByteString;
use chrono::{DateTime, Utc};
use futures_util::task::AtomicWaker;

use super::limits::ConnectionPermit;

/// Stop filling one chunk beyond this; the dispatcher polls again.
const CHUNK_BYTES: usize = 16 * 1024;

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
    /// ends the body; from then on nothing more is taken.
    close: Option<CloseReason>,
}

struct Shared {
    queue: Mutex<Queue>,
    /// The dispatcher's task, woken when something is queued.
    writer: AtomicWaker,
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
}

/// A text frame, encoded once — WebSocket header and text — so that every
/// subscriber of an update is handed the same bytes (a clone is a reference
/// count) and a lone frame is written as it is.
#[derive(Clone)]
pub struct Frame {
    encoded: Bytes,
    /// The text's length: what a queue's budget counts.
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
    /// A queue of at most `max_bytes` and the response body that drains it;
    /// the body keeps the connection's place within the limits.
    pub fn new(
        max_bytes: usize,
        session: Recipient<Overflowed>,
        permit: ConnectionPermit,
    ) -> (Self, SocketBody) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                frames: VecDeque::new(),
                bytes: 0,
                ping: false,
                pong: None,
                close: None,
            }),
            writer: AtomicWaker::new(),
            max_bytes,
            sent: metrics::counter!("turnout_ws_messages_sent_total"),
            fanout: metrics::histogram!("turnout_ws_fanout_seconds"),
        });
        let body = SocketBody {
            shared: Arc::clone(&shared),
            codec: Codec::new(),
            finished: false,
            _permit: permit,
        };
        (Self { shared, session }, body)
    }

    /// Queues a frame. False when the connection is closing or has just gone
    /// over its budget, in which case its session is told to close it. A
    /// frame larger than the whole budget still goes out alone.
    pub fn push(&self, frame: Frame) -> bool {
        let mut queue = self.shared.queue();
        if queue.close.is_some() {
            return false;
        }
        if queue.bytes > 0 && queue.bytes + frame.text_len > self.shared.max_bytes {
            drop(queue);
            self.session.do_send(Overflowed);
            return false;
        }
        queue.bytes += frame.text_len;
        queue.frames.push_back(frame);
        drop(queue);
        self.shared.writer.wake();
        true
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
    /// response once it is written.
    pub fn close(&self, reason: CloseReason) {
        let mut queue = self.shared.queue();
        if queue.close.is_some() {
            return;
        }
        queue.close = Some(reason);
        queue.frames.clear();
        queue.bytes = 0;
        drop(queue);
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

/// The body of the upgrade response: the encoded frames, control frames
/// first, then the queue in order, until the close frame has been written.
pub struct SocketBody {
    shared: Arc<Shared>,
    codec: Codec,
    finished: bool,
    _permit: ConnectionPermit,
}

impl MessageBody for SocketBody {
    type Error = Infallible;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        this.shared.writer.register(cx.waker());
        // A lone frame goes out as its shared bytes; several, or control
        // frames, are gathered into one chunk.
        let mut lone: Option<Bytes> = None;
        let mut chunk = BytesMut::new();
        let (mut texts, mut now) = (0u64, None);
        let mut queue = this.shared.queue();
        if std::mem::take(&mut queue.ping) {
            encode(&mut this.codec, Message::Ping(Bytes::new()), &mut chunk);
        }
        if let Some(payload) = queue.pong.take() {
            encode(&mut this.codec, Message::Pong(payload), &mut chunk);
        }
        while chunk.len() < CHUNK_BYTES {
            let Some(frame) = queue.frames.pop_front() else {
                break;
            };
            queue.bytes -= frame.text_len;
            texts += 1;
            if let Some(at) = frame.committed_at {
                let now = *now.get_or_insert_with(chrono::Utc::now);
                let latency = (now - at).to_std().unwrap_or_default();
                this.shared.fanout.record(latency.as_secs_f64());
            }
            if chunk.is_empty() && lone.is_none() {
                lone = Some(frame.encoded);
            } else {
                if let Some(first) = lone.take() {
                    chunk.extend_from_slice(&first);
                }
                chunk.extend_from_slice(&frame.encoded);
            }
        }
        if let Some(reason) = &queue.close {
            if let Some(first) = lone.take() {
                chunk.extend_from_slice(&first);
            }
            encode(
                &mut this.codec,
                Message::Close(Some(reason.clone())),
                &mut chunk,
            );
            this.finished = true;
        }
        drop(queue);
        if texts > 0 {
            this.shared.sent.increment(texts);
        }
        if let Some(frame) = lone {
            return Poll::Ready(Some(Ok(frame)));
        }
        if chunk.is_empty() {
            // Only a close frame ends the body; then `finished` answers above.
            return Poll::Pending;
        }
        Poll::Ready(Some(Ok(mem::take(&mut chunk).freeze())))
    }
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

    fn queue_with(max_bytes: usize) -> (SendQueue, SocketBody, Arc<AtomicUsize>) {
        let notices = Arc::new(AtomicUsize::new(0));
        let session = Notices(Arc::clone(&notices)).start().recipient();
        let permit = ConnectionLimits::new(1, 1, "test_connections")
            .admit(std::net::Ipv4Addr::LOCALHOST.into())
            .unwrap();
        let (queue, body) = SendQueue::new(max_bytes, session, permit);
        (queue, body, notices)
    }

    #[actix_web::test]
    async fn the_connection_keeps_its_place_until_the_body_is_dropped() {
        let limits = ConnectionLimits::new(1, 1, "test_connections");
        let ip = std::net::Ipv4Addr::LOCALHOST.into();
        let session = Notices(Arc::new(AtomicUsize::new(0))).start().recipient();
        let (queue, body) = SendQueue::new(10, session, limits.admit(ip).unwrap());
        queue.close(CloseReason {
            code: CloseCode::Normal,
            description: None,
        });
        drop(queue);
        assert!(limits.admit(ip).is_none(), "the body still holds the place");
        drop(body);
        assert!(limits.admit(ip).is_some(), "the connection is gone");
    }

    fn text(s: &str) -> Frame {
        Frame::text(s.to_owned(), None)
    }

    /// The next chunk of the body, decoded as a client would.
    async fn next_frames(body: &mut SocketBody) -> Option<Vec<WireFrame>> {
        let chunk = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_next(cx)).await?;
        let mut buf = BytesMut::from(&chunk.unwrap()[..]);
        let mut codec = Codec::new().client_mode();
        let mut frames = Vec::new();
        while let Some(frame) = codec.decode(&mut buf).expect("valid frames") {
            frames.push(frame);
        }
        Some(frames)
    }

    #[actix_web::test]
    async fn frames_go_out_in_order_and_a_close_ends_the_body() {
        let (queue, mut body, _) = queue_with(1024);
        assert!(queue.push(text("one")));
        queue.ping();
        assert!(queue.push(text("two")));
        let frames = next_frames(&mut body).await.unwrap();
        assert_eq!(frames.len(), 3);
        assert!(
            matches!(&frames[0], WireFrame::Ping(_)),
            "control frames go ahead of the queue"
        );
        assert!(matches!(&frames[1], WireFrame::Text(t) if &t[..] == b"one"));
        assert!(matches!(&frames[2], WireFrame::Text(t) if &t[..] == b"two"));

        for i in 0..100 {
            queue.pong(Bytes::from(format!("{i}")));
        }
        let frames = next_frames(&mut body).await.unwrap();
        assert_eq!(frames.len(), 1, "pings pile up no answers: only the latest");
        assert!(matches!(&frames[0], WireFrame::Pong(p) if &p[..] == b"99"));

        assert!(queue.push(text("dropped by the close")));
        queue.close(CloseReason {
            code: CloseCode::from(4008),
            description: Some("slow".into()),
        });
        assert!(
            !queue.push(text("after the close")),
            "a closing queue takes nothing"
        );
        let frames = next_frames(&mut body).await.unwrap();
        assert_eq!(frames.len(), 1, "the close dropped what was still queued");
        assert!(matches!(&frames[0], WireFrame::Close(Some(r)) if r.code == CloseCode::from(4008)));
        assert!(next_frames(&mut body).await.is_none(), "the body has ended");
    }

    #[actix_web::test]
    async fn the_queue_refuses_past_its_budget_and_tells_the_session() {
        let (queue, mut body, notices) = queue_with(10);
        assert!(queue.push(text("12345")));
        assert!(queue.push(text("67890")));
        assert!(!queue.push(text("x")), "11 bytes would be over 10");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert_eq!(notices.load(Ordering::SeqCst), 1);

        let frames = next_frames(&mut body).await.unwrap();
        assert_eq!(frames.len(), 2);
        assert!(queue.push(text("x")), "written frames leave the budget");

        let (queue, mut body, _) = queue_with(10);
        assert!(
            queue.push(text("longer than the whole budget")),
            "a large frame still goes out alone"
        );
        assert!(!queue.push(text("x")), "but nothing joins it");
        assert_eq!(next_frames(&mut body).await.unwrap().len(), 1);
    }
}

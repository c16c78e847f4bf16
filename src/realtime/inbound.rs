//! The client's half of a WebSocket connection: its frames, decoded from the
//! upgrade request's payload with actix-http's codec, continuation frames
//! joined into whole messages.
//!
//! actix-ws would do this too, but it also builds a send channel and a
//! response body for every connection, which the [`super::socket`] queue
//! replaces: reading the frames here saves an idle connection that memory.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_codec::Decoder;
use actix_http::ws::{Codec, Frame, Item, ProtocolError};
use actix_web::web::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::Stream;

/// The longest frame header: 2 bytes, an 8-byte length and a 4-byte mask.
const MAX_HEADER_BYTES: usize = 14;

/// A whole message from the client.
#[derive(PartialEq)]
pub enum Incoming {
    Text(ByteString),
    Binary,
    Ping(Bytes),
    Pong,
    Close,
}

/// A text message shows its length only: it may be an `auth` frame, whose
/// token must not reach a log line.
impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Incoming::Text(text) => write!(f, "Text({} bytes)", text.len()),
            Incoming::Binary => f.write_str("Binary"),
            Incoming::Ping(payload) => f.debug_tuple("Ping").field(payload).finish(),
            Incoming::Pong => f.write_str("Pong"),
            Incoming::Close => f.write_str("Close"),
        }
    }
}

/// Why the client's messages stopped; each has its own close code.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// A frame or a joined message over the limit (1009).
    #[error("a message over the size limit")]
    TooLarge,
    /// A text message that is not UTF-8 (1007).
    #[error("a text message that is not UTF-8")]
    NotUtf8,
    /// Frames that break RFC 6455 (1002).
    #[error(transparent)]
    Protocol(ProtocolError),
    /// The connection failed under us: nobody is left to tell.
    #[error("the connection failed: {0}")]
    Lost(Box<dyn std::error::Error + Send + Sync>),
}

impl From<ProtocolError> for InboundError {
    fn from(error: ProtocolError) -> Self {
        match error {
            ProtocolError::Overflow => Self::TooLarge,
            other => Self::Protocol(other),
        }
    }
}

/// The client's messages, none larger than `max_bytes` (frames or joined
/// continuations): a larger one ends them with `InboundError::TooLarge`.
pub struct Inbound<S> {
    payload: S,
    buf: BytesMut,
    codec: Codec,
    /// A fragmented message being joined: whether it is text, and its bytes.
    partial: Option<(bool, BytesMut)>,
    max_bytes: usize,
    /// The payload has ended: what is buffered is all there is.
    ended: bool,
    /// An error was returned: the stream is over.
    failed: bool,
}

impl<S> Inbound<S> {
    pub fn new(payload: S, max_bytes: usize) -> Self {
        Self {
            payload,
            buf: BytesMut::new(),
            codec: Codec::new().max_size(max_bytes),
            partial: None,
            max_bytes,
            ended: false,
            failed: false,
        }
    }

    /// The message a frame completes, if it completes one.
    fn take(&mut self, frame: Frame) -> Result<Option<Incoming>, InboundError> {
        let item = match frame {
            Frame::Text(bytes) => return text(bytes).map(Some),
            Frame::Binary(_) => return Ok(Some(Incoming::Binary)),
            Frame::Ping(bytes) => return Ok(Some(Incoming::Ping(bytes))),
            Frame::Pong(_) => return Ok(Some(Incoming::Pong)),
            Frame::Close(_) => return Ok(Some(Incoming::Close)),
            Frame::Continuation(item) => item,
        };
        let last = matches!(item, Item::Last(_));
        let (is_text, joined) = match (item, self.partial.take()) {
            (Item::FirstText(bytes), None) => (true, BytesMut::from(&bytes[..])),
            (Item::FirstBinary(bytes), None) => (false, BytesMut::from(&bytes[..])),
            (Item::Continue(bytes) | Item::Last(bytes), Some((is_text, mut joined))) => {
                joined.extend_from_slice(&bytes);
                (is_text, joined)
            }
            _ => return Err(ProtocolError::ContinuationNotStarted.into()),
        };
        if joined.len() > self.max_bytes {
            return Err(InboundError::TooLarge);
        }
        if !last {
            self.partial = Some((is_text, joined));
            return Ok(None);
        }
        if is_text {
            text(joined.freeze()).map(Some)
        } else {
            Ok(Some(Incoming::Binary))
        }
    }
}

fn text(bytes: Bytes) -> Result<Incoming, InboundError> {
    ByteString::try_from(bytes)
        .map(Incoming::Text)
        .map_err(|_| InboundError::NotUtf8)
}

impl<S, E> Stream for Inbound<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    type Item = Result<Incoming, InboundError>;

    /// Ends after the first error: what follows a broken frame means nothing.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        let next = this.next_message(cx);
        if let Poll::Ready(Some(Err(_))) = next {
            this.failed = true;
            this.buf = BytesMut::new();
            this.partial = None;
        }
        next
    }
}

impl<S, E> Inbound<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    fn next_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Incoming, InboundError>>> {
        loop {
            while let Some(frame) = self.codec.decode(&mut self.buf)? {
                if let Some(message) = self.take(frame)? {
                    return Poll::Ready(Some(Ok(message)));
                }
            }
            // The codec waits for a whole frame before checking its size:
            // without this bound a header announcing a huge frame would
            // have us buffer whatever follows it.
            if self.buf.len() > self.max_bytes + MAX_HEADER_BYTES {
                return Poll::Ready(Some(Err(InboundError::TooLarge)));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.payload).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => self.buf.extend_from_slice(&bytes),
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(Err(InboundError::Lost(Box::new(e)))));
                }
                Poll::Ready(None) => self.ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use actix_codec::Encoder;
    use actix_http::ws::Message;
    use futures_util::StreamExt;

    use super::*;

    /// Frames as a client sends them (masked), cut into chunks of `chunk`
    /// bytes so that frames straddle reads.
    fn payload(
        messages: Vec<Message>,
        chunk: usize,
    ) -> impl Stream<Item = Result<Bytes, io::Error>> + Unpin {
        let mut codec = Codec::new().client_mode();
        let mut wire = BytesMut::new();
        for message in messages {
            codec.encode(message, &mut wire).unwrap();
        }
        let chunks: Vec<Result<Bytes, io::Error>> = wire
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures_util::stream::iter(chunks)
    }

    async fn read_all(
        inbound: Inbound<impl Stream<Item = Result<Bytes, io::Error>> + Unpin>,
    ) -> Vec<Result<Incoming, String>> {
        let named = |e: InboundError| match e {
            InboundError::TooLarge => "overflow".to_owned(),
            e => e.to_string(),
        };
        inbound.map(|r| r.map_err(named)).collect().await
    }

    #[actix_web::test]
    async fn messages_arrive_whole_however_the_bytes_are_cut() {
        let messages = || {
            vec![
                Message::Text("hello".into()),
                Message::Ping(Bytes::from_static(b"p")),
                Message::Continuation(Item::FirstText(Bytes::from_static(b"{\"type\":"))),
                Message::Continuation(Item::Continue(Bytes::from_static(b"\"pi"))),
                Message::Continuation(Item::Last(Bytes::from_static(b"ng\"}"))),
                Message::Binary(Bytes::from_static(b"\x00")),
                Message::Close(None),
            ]
        };
        for chunk in [1, 3, 1000] {
            let got = read_all(Inbound::new(payload(messages(), chunk), 64)).await;
            assert_eq!(
                got,
                vec![
                    Ok(Incoming::Text("hello".into())),
                    Ok(Incoming::Ping(Bytes::from_static(b"p"))),
                    Ok(Incoming::Text("{\"type\":\"ping\"}".into())),
                    Ok(Incoming::Binary),
                    Ok(Incoming::Close),
                ],
                "chunks of {chunk} bytes"
            );
        }
    }

    #[actix_web::test]
    async fn oversized_frames_and_joined_messages_overflow() {
        let big = Message::Text("x".repeat(65).into());
        let got = read_all(Inbound::new(payload(vec![big], 1000), 64)).await;
        assert_eq!(got, vec![Err("overflow".to_owned())]);

        let pieces = vec![
            Message::Continuation(Item::FirstText(Bytes::from(vec![b'x'; 40]))),
            Message::Continuation(Item::Last(Bytes::from(vec![b'x'; 40]))),
        ];
        let got = read_all(Inbound::new(payload(pieces, 1000), 64)).await;
        assert_eq!(got, vec![Err("overflow".to_owned())]);
    }

    #[actix_web::test]
    async fn a_frame_announced_as_huge_is_refused_before_it_is_buffered() {
        // A masked text frame header announcing 2^40 bytes, then a stream of
        // bytes that never completes it.
        let mut header = vec![0x81, 0xff];
        header.extend_from_slice(&(1u64 << 40).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        let endless = futures_util::stream::iter(
            std::iter::once(Bytes::from(header))
                .chain(std::iter::repeat(Bytes::from_static(&[0u8; 1024])))
                .map(Ok::<_, io::Error>),
        );
        let got = read_all(Inbound::new(endless, 4096)).await;
        assert_eq!(got, vec![Err("overflow".to_owned())]);
    }

    #[actix_web::test]
    async fn a_continuation_without_a_start_and_bad_utf8_are_errors() {
        // A client codec refuses to send a stray continuation: start one on
        // the codec and send only its second frame.
        let mut codec = Codec::new().client_mode();
        let mut scratch = BytesMut::new();
        let first = Message::Continuation(Item::FirstText(Bytes::from_static(b"x")));
        codec.encode(first, &mut scratch).unwrap();
        let mut wire = BytesMut::new();
        let stray = Message::Continuation(Item::Continue(Bytes::from_static(b"x")));
        codec.encode(stray, &mut wire).unwrap();
        let stream = futures_util::stream::iter(vec![Ok::<_, io::Error>(wire.freeze())]);
        let got = read_all(Inbound::new(stream, 64)).await;
        assert!(got[0].is_err(), "{got:?}");

        let mut wire = BytesMut::new();
        Codec::new()
            .client_mode()
            .encode(Message::Binary(Bytes::from_static(b"\xff")), &mut wire)
            .unwrap();
        wire[0] = (wire[0] & 0xf0) | 0x1; // the same bytes, sent as text
        let stream = futures_util::stream::iter(vec![Ok::<_, io::Error>(wire.freeze())]);
        let got = read_all(Inbound::new(stream, 64)).await;
        assert!(got[0].is_err(), "{got:?}");
    }
}

//! The client's half of a WebSocket connection: its frames, decoded from the
//! upgrade request's payload with actix-http's codec, continuation frames
//! joined into whole messages.
//!
//! actix-ws would do this too, but it also builds a send channel and a
//! response body for every connection, which the [`super::socket`] queue
//! replaces: reading the frames here saves an idle connection that memory.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_codec::Decoder;
use actix_http::ws::{Codec, Frame, Item, ProtocolError};
use actix_web::web::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::Stream;

/// A whole message from the client.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Text(ByteString),
    Binary,
    Ping(Bytes),
    Pong,
    Close,
}

/// The client's messages, none larger than `max_bytes` (frames or joined
/// continuations): a larger one is `ProtocolError::Overflow`.
pub struct Inbound<S> {
    payload: S,
    buf: BytesMut,
    codec: Codec,
    /// A fragmented message being joined: whether it is text, and its bytes.
    partial: Option<(bool, BytesMut)>,
    max_bytes: usize,
    ended: bool,
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
        }
    }

    /// The message a frame completes, if it completes one.
    fn take(&mut self, frame: Frame) -> Result<Option<Incoming>, ProtocolError> {
        let whole = match frame {
            Frame::Text(bytes) => return text(bytes).map(Some),
            Frame::Binary(_) => return Ok(Some(Incoming::Binary)),
            Frame::Ping(bytes) => return Ok(Some(Incoming::Ping(bytes))),
            Frame::Pong(_) => return Ok(Some(Incoming::Pong)),
            Frame::Close(_) => return Ok(Some(Incoming::Close)),
            Frame::Continuation(item) => item,
        };
        match (whole, &mut self.partial) {
            (Item::FirstText(bytes), None) => {
                self.partial = Some((true, BytesMut::from(&bytes[..])))
            }
            (Item::FirstBinary(bytes), None) => {
                self.partial = Some((false, BytesMut::from(&bytes[..])))
            }
            (Item::Continue(bytes), Some((_, joined))) => joined.extend_from_slice(&bytes),
            (Item::Last(bytes), Some((_, joined))) => {
                joined.extend_from_slice(&bytes);
                let (is_text, joined) = self.partial.take().expect("matched above");
                if joined.len() > self.max_bytes {
                    return Err(ProtocolError::Overflow);
                }
                return if is_text {
                    text(joined.freeze()).map(Some)
                } else {
                    Ok(Some(Incoming::Binary))
                };
            }
            _ => return Err(ProtocolError::ContinuationNotStarted),
        }
        if self
            .partial
            .as_ref()
            .is_some_and(|(_, joined)| joined.len() > self.max_bytes)
        {
            return Err(ProtocolError::Overflow);
        }
        Ok(None)
    }
}

fn text(bytes: Bytes) -> Result<Incoming, ProtocolError> {
    ByteString::try_from(bytes)
        .map(Incoming::Text)
        .map_err(|e| ProtocolError::Io(io::Error::new(io::ErrorKind::InvalidData, e)))
}

impl<S, E> Stream for Inbound<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    type Item = Result<Incoming, ProtocolError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            while let Some(frame) = this.codec.decode(&mut this.buf)? {
                if let Some(message) = this.take(frame)? {
                    return Poll::Ready(Some(Ok(message)));
                }
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.payload).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => this.buf.extend_from_slice(&bytes),
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(ProtocolError::Io(io::Error::other(e)))));
                }
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
        let named = |e: ProtocolError| match e {
            ProtocolError::Overflow => "overflow".to_owned(),
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

//! The socket of an upgraded connection, taken over from actix-http: the
//! client's bytes for [`super::Inbound`], and a write side for the
//! connection's [`super::SendQueue`].
//!
//! A plain TCP socket is shared rather than split: tokio reads and writes
//! it through `&self`, so a hub can write a frame to it from the hub's own
//! thread — one `send` per subscriber, as a bare broadcast does — instead
//! of waking the connection's worker to copy the frame into actix-http's
//! write buffer. A TLS stream needs its session state for every write, so
//! only the connection's own task writes it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use actix_web::rt::net::TcpStream;
use actix_web::web::Bytes;
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};

/// Bytes read at once. On the stack: an idle connection holds no read buffer.
const READ_BYTES: usize = 4096;

type TlsStream = actix_tls::accept::rustls_0_23::TlsStream<TcpStream>;

/// The io types the server accepts, each split into the client's bytes and
/// where the connection's frames go.
pub trait Takeover: AsyncRead + AsyncWrite + Unpin + 'static {
    fn take_over(self) -> io::Result<(ReadSide, WriteSide)>;
}

// Frames go out as they come: Nagle's algorithm would hold a small frame
// behind an unacknowledged one for as long as the client delays its ACK.
impl Takeover for TcpStream {
    fn take_over(self) -> io::Result<(ReadSide, WriteSide)> {
        self.set_nodelay(true)?;
        let tcp = Arc::new(self);
        Ok((ReadSide::Tcp(Arc::clone(&tcp)), WriteSide::Tcp(tcp)))
    }
}

impl Takeover for TlsStream {
    fn take_over(self) -> io::Result<(ReadSide, WriteSide)> {
        let tcp = self.get_ref().0;
        tcp.set_nodelay(true)?;
        let raw = TcpStream::from_std(socket2::SockRef::from(tcp).try_clone()?.into())?;
        let (read, write) = tokio::io::split(self);
        Ok((ReadSide::Tls(read), WriteSide::Tls { write, raw }))
    }
}

/// The client's bytes, as a stream of chunks for [`super::Inbound`].
pub enum ReadSide {
    Tcp(Arc<TcpStream>),
    Tls(ReadHalf<TlsStream>),
}

impl Stream for ReadSide {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut buf = [0u8; READ_BYTES];
        let read = match self.get_mut() {
            Self::Tcp(tcp) => loop {
                ready!(tcp.poll_read_ready(cx))?;
                match tcp.try_read(&mut buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    result => break result?,
                }
            },
            Self::Tls(tls) => {
                let mut filled = ReadBuf::new(&mut buf);
                ready!(Pin::new(tls).poll_read(cx, &mut filled))?;
                filled.filled().len()
            }
        };
        Poll::Ready((read > 0).then(|| Ok(Bytes::copy_from_slice(&buf[..read]))))
    }
}

/// Where the connection's frames go.
pub enum WriteSide {
    Tcp(Arc<TcpStream>),
    Tls {
        write: WriteHalf<TlsStream>,
        /// A second handle on the TCP socket under the TLS session, to end
        /// the connection whoever holds the halves.
        raw: TcpStream,
    },
}

impl WriteSide {
    /// The socket a hub may write to from its own thread, if there is one.
    pub fn shared(&self) -> Option<Arc<TcpStream>> {
        match self {
            Self::Tcp(tcp) => Some(Arc::clone(tcp)),
            Self::Tls { .. } => None,
        }
    }

    /// The TCP socket itself, under TLS too.
    fn raw(&self) -> &TcpStream {
        match self {
            Self::Tcp(tcp) => tcp,
            Self::Tls { raw, .. } => raw,
        }
    }

    pub async fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Tcp(tcp) => {
                while !bytes.is_empty() {
                    tcp.writable().await?;
                    match tcp.try_write(bytes) {
                        Ok(written) => bytes = &bytes[written..],
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            Self::Tls { write, .. } => {
                write.write_all(bytes).await?;
                write.flush().await
            }
        }
    }

    /// Ends the connection for the client too, whoever else still holds the
    /// socket (a hub's queue, the session's read side), so that the session
    /// hears its end. After a clean close the server first says it is done
    /// sending (TLS `close_notify`, then a FIN) and reads what the client
    /// still sends, its close frame among it, for up to [`LINGER`]: a
    /// socket closed with unread bytes is reset, and a reset can overtake
    /// the close frame on its way.
    pub async fn shut_down(&mut self, cleanly: bool) {
        if cleanly {
            if let Self::Tls { write, .. } = self {
                let _ = tokio::time::timeout(LINGER, write.shutdown()).await;
            }
            let raw = self.raw();
            let _ = socket2::SockRef::from(raw).shutdown(std::net::Shutdown::Write);
            let _ = tokio::time::timeout(LINGER, discard_until_end(raw)).await;
        }
        let _ = socket2::SockRef::from(self.raw()).shutdown(std::net::Shutdown::Both);
    }
}

/// How long a closing connection reads what the client still sends.
const LINGER: Duration = Duration::from_secs(1);

async fn discard_until_end(tcp: &TcpStream) {
    loop {
        if tcp.readable().await.is_err() {
            return;
        }
        match discard(tcp) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Its buffer on the stack, not in the connection's future.
fn discard(tcp: &TcpStream) -> io::Result<usize> {
    tcp.try_read(&mut [0u8; READ_BYTES])
}

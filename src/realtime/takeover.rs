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

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use actix_web::rt::net::TcpStream;
use actix_web::web::Bytes;
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read at once. On the stack: an idle connection holds no read buffer.
const READ_BYTES: usize = 4096;

type TlsStream = actix_tls::accept::rustls_0_23::TlsStream<TcpStream>;

/// A TLS stream read by the session and written by the writer, each
/// holding the lock only while it polls. tokio's `split` does the same,
/// but its halves never lend the socket under the session, which the
/// writer needs to end the connection: a second handle on it cost every
/// TLS WebSocket a file descriptor and a registration with the reactor.
type SharedTls = Arc<Mutex<TlsStream>>;

fn lock(tls: &SharedTls) -> MutexGuard<'_, TlsStream> {
    // Poisoned only by a panic in the other side's poll, which ends its
    // task: this side still needs the socket, if only to end it.
    tls.lock().unwrap_or_else(|e| e.into_inner())
}

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
        self.get_ref().0.set_nodelay(true)?;
        let tls = Arc::new(Mutex::new(self));
        Ok((ReadSide::Tls(Arc::clone(&tls)), WriteSide::Tls(tls)))
    }
}

/// The client's bytes, as a stream of chunks for [`super::Inbound`].
pub enum ReadSide {
    Tcp(Arc<TcpStream>),
    Tls(SharedTls),
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
                ready!(Pin::new(&mut *lock(tls)).poll_read(cx, &mut filled))?;
                filled.filled().len()
            }
        };
        Poll::Ready((read > 0).then(|| Ok(Bytes::copy_from_slice(&buf[..read]))))
    }
}

/// Where the connection's frames go.
pub enum WriteSide {
    Tcp(Arc<TcpStream>),
    Tls(SharedTls),
}

impl WriteSide {
    /// The socket a hub may write to from its own thread, if there is one.
    pub fn shared(&self) -> Option<Arc<TcpStream>> {
        match self {
            Self::Tcp(tcp) => Some(Arc::clone(tcp)),
            Self::Tls(_) => None,
        }
    }

    /// Shuts the TCP socket itself down, under TLS too.
    fn shut(&self, how: std::net::Shutdown) {
        let _ = match self {
            Self::Tcp(tcp) => socket2::SockRef::from(tcp.as_ref()).shutdown(how),
            Self::Tls(tls) => socket2::SockRef::from(lock(tls).get_ref().0).shutdown(how),
        };
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
            Self::Tls(tls) => {
                while !bytes.is_empty() {
                    match poll_fn(|cx| Pin::new(&mut *lock(tls)).poll_write(cx, bytes)).await? {
                        0 => return Err(io::ErrorKind::WriteZero.into()),
                        written => bytes = &bytes[written..],
                    }
                }
                poll_fn(|cx| Pin::new(&mut *lock(tls)).poll_flush(cx)).await
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
            if let Self::Tls(tls) = self {
                let close_notify = poll_fn(|cx| Pin::new(&mut *lock(tls)).poll_shutdown(cx));
                let _ = tokio::time::timeout(LINGER, close_notify).await;
            }
            self.shut(std::net::Shutdown::Write);
            match self {
                Self::Tcp(tcp) => {
                    let _ = tokio::time::timeout(LINGER, discard_until_end(tcp)).await;
                }
                Self::Tls(tls) => {
                    let read = |buf: &mut [u8]| {
                        use std::io::Read;
                        (&*socket2::SockRef::from(lock(tls).get_ref().0)).read(buf)
                    };
                    let _ = tokio::time::timeout(LINGER, poll_until_end(read)).await;
                }
            }
        }
        self.shut(std::net::Shutdown::Both);
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

/// [`discard_until_end`] for a socket under TLS, which lives inside the
/// stream's lock: waiting for its readiness would take the session's place
/// to be woken (and a second handle to wait on, a descriptor), so this
/// tries a non-blocking `read` every few milliseconds instead.
async fn poll_until_end(mut read: impl FnMut(&mut [u8]) -> io::Result<usize>) {
    loop {
        match read(&mut [0u8; READ_BYTES]) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    /// The linger under TLS reads what the client sends, waiting between
    /// reads, until the client ends its side.
    #[tokio::test]
    async fn polling_reads_until_the_client_ends_its_side() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let client = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(30)).await;
                client.write_all(&[1; 100]).await.unwrap();
            }
            client.shutdown().await.unwrap();
            client
        });
        let mut read_bytes = 0;
        let read = |buf: &mut [u8]| {
            let read = (&*socket2::SockRef::from(&server)).read(buf);
            if let Ok(n) = read {
                read_bytes += n;
            }
            read
        };
        tokio::time::timeout(Duration::from_secs(5), poll_until_end(read))
            .await
            .expect("the end is seen");
        assert_eq!(read_bytes, 300);
        drop(client.await.unwrap());
    }
}

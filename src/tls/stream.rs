//! A connection that is plain TCP or TLS, whole ([`Stream`], for startup)
//! or split for the relay ([`ReadHalf`], [`WriteHalf`]).
//!
//! A TLS write is only done once its records are on the socket: rustls
//! takes plaintext into its buffer and may leave records there when the
//! socket is full, and the relay never flushes a TCP socket, so a
//! [`WriteHalf`] write flushes before it reports the bytes taken. Until
//! then it answers `Pending`, holding the count: the caller must come back
//! with the same bytes first, as the relay and `write_all` do (the relay
//! advances its buffer only by what a write reports).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

/// A whole connection, before the relay splits it.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The two halves the relay polls at once.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Plain(tcp) => {
                let (rd, wr) = tcp.into_split();
                (ReadHalf::Plain(rd), WriteHalf::Plain(wr))
            }
            Stream::Tls(tls) => {
                let (rd, wr) = tokio::io::split(*tls);
                (ReadHalf::Tls(rd), WriteHalf::Tls { half: wr, taken: 0 })
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The reading half of a [`Stream`].
#[derive(Debug)]
pub enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
}

impl ReadHalf {
    /// Reads what is there without waiting: `WouldBlock` when nothing is.
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ReadHalf::Plain(rd) => rd.try_read(buf),
            ReadHalf::Tls(rd) => {
                let mut buf = ReadBuf::new(buf);
                match Pin::new(rd).poll_read(&mut Context::from_waker(Waker::noop()), &mut buf) {
                    Poll::Ready(Ok(())) => Ok(buf.filled().len()),
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }

    /// Waits until a read would find something (or the end). Over TLS it
    /// returns at once: what the socket holds may not make a whole record.
    pub async fn ready(&self) -> io::Result<()> {
        match self {
            ReadHalf::Plain(rd) => rd.readable().await,
            ReadHalf::Tls(_) => Ok(()),
        }
    }

    /// Reads into `buf`, first giving it room for at least half of `want`
    /// more bytes ([`make_room`]). Every read into a buffer that frames
    /// are split off goes through here.
    pub async fn read_with_room(&mut self, buf: &mut BytesMut, want: usize) -> io::Result<usize> {
        make_room(buf, want);
        self.read_buf(buf).await
    }
}

/// Gives `buf` room for at least half of `want` more bytes before a read.
/// Frames are split off the front of the buffer as they are taken, so its
/// room shrinks with every message; left alone, a read would take only the
/// few bytes left at its end, and a message would arrive in several reads
/// (64 bytes at a time once the buffer is full). The memory is reused in
/// place, what is unread moved to the front, unless a split-off frame
/// still holds it; then a buffer of `want` is allocated.
fn make_room(buf: &mut BytesMut, want: usize) {
    if buf.capacity() - buf.len() < want / 2 {
        buf.reserve(want.saturating_sub(buf.len()).max(want / 2));
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(rd) => Pin::new(rd).poll_read(cx, buf),
            ReadHalf::Tls(rd) => Pin::new(rd).poll_read(cx, buf),
        }
    }
}

/// The writing half of a [`Stream`]; see the module's note on TLS writes.
#[derive(Debug)]
pub enum WriteHalf {
    Plain(OwnedWriteHalf),
    Tls {
        half: tokio::io::WriteHalf<TlsStream<TcpStream>>,
        /// Bytes rustls took whose records are not all on the socket yet.
        taken: usize,
    },
}

impl WriteHalf {
    /// Writes what the socket takes without waiting: `WouldBlock` when it
    /// takes nothing now.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            WriteHalf::Plain(wr) => wr.try_write(buf),
            WriteHalf::Tls { .. } => {
                let mut cx = Context::from_waker(Waker::noop());
                match Pin::new(self).poll_write(&mut cx, buf) {
                    Poll::Ready(result) => result,
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(wr) => Pin::new(wr).poll_write(cx, buf),
            WriteHalf::Tls { half, taken } => {
                if *taken == 0 {
                    match Pin::new(&mut *half).poll_write(cx, buf) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Ok(0)),
                        Poll::Ready(Ok(n)) => *taken = n,
                        other => return other,
                    }
                }
                match Pin::new(half).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        // Never more than this caller offered (a caller that
                        // broke the contract loses bytes, but nothing panics).
                        let n = (*taken).min(buf.len());
                        *taken -= n;
                        Poll::Ready(Ok(n))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(wr) => Pin::new(wr).poll_flush(cx),
            WriteHalf::Tls { half, .. } => Pin::new(half).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(wr) => Pin::new(wr).poll_shutdown(cx),
            WriteHalf::Tls { half, .. } => Pin::new(half).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WANT: usize = 4096;

    /// A buffer of `WANT` whose first `taken` of `filled` bytes were split off.
    fn taken(filled: usize, taken: usize) -> (BytesMut, BytesMut, *const u8) {
        let mut buf = BytesMut::with_capacity(WANT);
        let start = buf.as_ptr();
        buf.extend((0..filled).map(|i| i as u8));
        let frames = buf.split_to(taken);
        (buf, frames, start)
    }

    #[test]
    fn a_read_gets_room_for_a_whole_message_however_much_was_taken_before() {
        let unread: Vec<u8> = (3990..4000).map(|i| i as u8).collect();
        // An idle session's buffer takes its memory when it first reads.
        let mut idle = BytesMut::new();
        make_room(&mut idle, WANT);
        assert!(idle.capacity() >= WANT);

        // Taken frames that are gone: the memory is reused in place, the
        // unread start of the next message moved to its front.
        let (mut buf, frames, start) = taken(4000, 3990);
        drop(frames);
        assert!(buf.capacity() - buf.len() < 200);
        make_room(&mut buf, WANT);
        assert_eq!(buf.as_ptr(), start);
        assert!(buf.capacity() - buf.len() >= WANT / 2);
        assert_eq!(&buf[..], &unread[..]);

        // A frame still held keeps that memory: a new buffer of `WANT`.
        let (mut buf, frames, start) = taken(4000, 3990);
        make_room(&mut buf, WANT);
        assert_ne!(buf.as_ptr(), start);
        assert!(buf.capacity() >= WANT);
        assert_eq!(&buf[..], &unread[..]);
        assert_eq!(frames.len(), 3990);

        // Room enough already: nothing moves.
        let (mut buf, _frames, _) = taken(1000, 990);
        let (at, room) = (buf.as_ptr(), buf.capacity());
        make_room(&mut buf, WANT);
        assert_eq!((buf.as_ptr(), buf.capacity()), (at, room));

        // A large message still arriving grows its buffer.
        let (mut buf, _frames, _) = taken(4000, 1000);
        make_room(&mut buf, WANT);
        assert!(buf.capacity() - buf.len() >= WANT / 2);
        assert_eq!(buf.len(), 3000);
    }
}

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

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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

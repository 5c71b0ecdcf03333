//! The relay loop's socket operations: reading the client (taking buffer
//! memory only when there is something to read), the session's server
//! halves when it has a connection, and writes that never wait.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::tls::{ReadHalf, WriteHalf};

/// Reads from the client. A buffer with no memory (a session that has not
/// sent anything since it logged in) takes its memory only once the client
/// has something to read: idle clients are held by the thousand.
pub(super) async fn client_read(rd: &mut ReadHalf, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() == 0 {
        rd.ready().await?;
        buf.reserve(crate::frontend::CLIENT_BUFFER);
    }
    rd.read_buf(buf).await
}

/// Writes to the session's server, or waits forever when it has none.
pub(super) async fn server_write(wr: Option<&mut WriteHalf>, buf: &[u8]) -> std::io::Result<usize> {
    match wr {
        Some(wr) => wr.write(buf).await,
        None => std::future::pending().await,
    }
}

/// Reads from the session's server, or waits forever when it has none.
pub(super) async fn server_read(
    rd: Option<(&mut ReadHalf, &mut BytesMut)>,
) -> std::io::Result<usize> {
    match rd {
        Some((rd, pending)) => rd.read_buf(pending).await,
        None => std::future::pending().await,
    }
}

/// Writes as much of `buf` as the socket takes without waiting; the relay
/// loop writes the rest when the socket is writable again.
/// Returns how much it wrote.
pub(super) fn write_now(wr: &mut WriteHalf, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.is_empty() {
        return Ok(0);
    }
    match wr.try_write(buf) {
        Ok(0) => Err(std::io::ErrorKind::WriteZero.into()),
        Ok(n) => {
            buf.advance(n);
            Ok(n)
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e),
    }
}

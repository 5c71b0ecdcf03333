//! The relay loop's socket operations: reading the client (taking buffer
//! memory only when there is something to read), the session's server
//! halves when it has a connection, and writes that never wait.

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;

use crate::backend::SERVER_BUFFER;
use crate::tls::{ReadHalf, WriteHalf};

/// Reads from the client. A buffer with no memory (a session that has not
/// sent anything since it logged in) takes its memory only once the client
/// has something to read: idle clients are held by the thousand.
pub(super) async fn client_read(rd: &mut ReadHalf, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() == 0 {
        rd.ready().await?;
    }
    rd.read_with_room(buf, crate::frontend::CLIENT_BUFFER).await
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
        Some((rd, pending)) => rd.read_with_room(pending, SERVER_BUFFER).await,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_message_arrives_in_one_read_when_the_buffer_was_nearly_full() {
        use tokio::io::AsyncWriteExt;
        use tokio::net::{TcpListener, TcpStream};

        use crate::tls::Stream;

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (ours, _) = listener.accept().await.unwrap();
        let (mut rd, _wr) = Stream::Plain(ours).split();
        let message = [b'Q'; 109];
        for want in [crate::frontend::CLIENT_BUFFER, SERVER_BUFFER] {
            // Earlier messages took all but 6 bytes of the buffer's room.
            let mut buf = BytesMut::with_capacity(want);
            buf.resize(want - 6, 0);
            drop(buf.split());
            peer.write_all(&message).await.unwrap();
            let n = if want == crate::frontend::CLIENT_BUFFER {
                client_read(&mut rd, &mut buf).await.unwrap()
            } else {
                server_read(Some((&mut rd, &mut buf))).await.unwrap()
            };
            assert_eq!(n, message.len(), "one read for the whole message");
            assert_eq!(&buf[..], &message[..]);
        }
    }
}

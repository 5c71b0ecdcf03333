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
    }
    make_room(buf, crate::frontend::CLIENT_BUFFER);
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
        Some((rd, pending)) => {
            make_room(pending, crate::frontend::SERVER_BUFFER);
            rd.read_buf(pending).await
        }
        None => std::future::pending().await,
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
        for want in [
            crate::frontend::CLIENT_BUFFER,
            crate::frontend::SERVER_BUFFER,
        ] {
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

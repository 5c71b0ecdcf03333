//! Whether a pooled server connection can serve the next client, and
//! making it so: a look for anything its server said while it sat idle,
//! and the reset that forgets the last session's state.

use tokio::io::AsyncWriteExt;

use super::ServerConn;
use crate::protocol::{cstr, take_frame, TxnStatus};

/// The statement that makes a used server connection like a new one.
const RESET_QUERY: &[u8] = b"Q\0\0\0\x10DISCARD ALL\0";
/// A reset reply is a handful of small messages.
const MAX_RESET_REPLY: usize = 64 * 1024;

/// Whether an idle connection is still usable: the server may have closed
/// it (idle timeout, pg_terminate_backend) or said something while it sat
/// in the pool. Only a ParameterStatus is harmless; it is kept for the client.
pub(super) fn still_open(conn: &mut ServerConn) -> bool {
    // Small: it is zeroed on every checkout, and almost always nothing is read.
    let mut buf = [0u8; 256];
    loop {
        match conn.rd.try_read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => conn.pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(_) => return false,
        }
    }
    only_parameter_status(&conn.pending)
}

/// Whether `pending` holds nothing but whole ParameterStatus messages: the
/// one thing a server says unprompted that the next client may be shown.
fn only_parameter_status(pending: &[u8]) -> bool {
    let mut rest = pending;
    while let Some(header) = rest.get(..5) {
        let len = crate::protocol::be_i32(&header[1..5]);
        let Some(next) = usize::try_from(len)
            .ok()
            .filter(|&len| header[0] == b'S' && len >= 4)
            .and_then(|len| rest.get(1 + len..))
        else {
            return false;
        };
        rest = next;
    }
    rest.is_empty()
}

/// Runs the reset query and reads its reply; updates the connection's
/// reported parameters from the ParameterStatus messages it brings.
///
/// Only a clean `DISCARD ALL` makes a connection reusable. That is also what
/// keeps a batch the client abandoned before Sync from being committed:
/// PostgreSQL refuses DISCARD ALL inside the still-open pipeline, the
/// connection is closed, and the server rolls the batch back. Never "fix" a
/// failed reset with a Sync or ROLLBACK first.
pub(super) async fn reset(conn: &mut ServerConn) -> Result<(), &'static str> {
    // ParameterStatus messages that arrived while idle are dropped with the state.
    while let Some(frame) =
        take_frame(&mut conn.pending, MAX_RESET_REPLY).map_err(|_| "invalid reply")?
    {
        if frame[0] != b'S' {
            return Err("unread server data");
        }
    }
    if !conn.pending.is_empty() {
        return Err("unread server data");
    }
    conn.wr
        .write_all(RESET_QUERY)
        .await
        .map_err(|_| "write failed")?;
    loop {
        while let Some(frame) =
            take_frame(&mut conn.pending, MAX_RESET_REPLY).map_err(|_| "invalid reply")?
        {
            let body = &frame[5..];
            match frame[0] {
                b'S' => note_parameter(conn, body),
                b'E' => return Err("reset query failed"),
                // Anything asynchronous left over (a notification) must not reach the next client.
                b'A' => return Err("notification pending"),
                b'Z' => {
                    return match (TxnStatus::of_ready(body), conn.pending.is_empty()) {
                        (Some(TxnStatus::Idle), true) => {
                            conn.forget_state();
                            Ok(())
                        }
                        _ => Err("not idle after reset"),
                    }
                }
                _ => {}
            }
        }
        match conn
            .rd
            .read_with_room(&mut conn.pending, crate::backend::SERVER_BUFFER)
            .await
        {
            Ok(n) if n > 0 => {}
            _ => return Err("connection closed"),
        }
    }
}

fn note_parameter(conn: &mut ServerConn, body: &[u8]) {
    let Some((name, rest)) = cstr(body) else {
        return;
    };
    let Some((value, _)) = cstr(rest) else {
        return;
    };
    match conn.params.iter_mut().find(|(n, _)| n == name) {
        Some(entry) => entry.1 = value.to_owned(),
        None => conn.params.push((name.to_owned(), value.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::only_parameter_status;

    #[test]
    fn only_whole_parameter_status_messages_are_harmless() {
        let status: &[u8] = b"S\0\0\0\x0aab\0cd\0";
        assert!(only_parameter_status(b""));
        assert!(only_parameter_status(status));
        assert!(only_parameter_status(&[status, status].concat()));
        assert!(!only_parameter_status(&status[..7]), "a partial message");
        assert!(!only_parameter_status(b"E\0\0\0\x04"), "an error");
        assert!(!only_parameter_status(b"S\0\0\0\x02"), "a bad length");
    }
}

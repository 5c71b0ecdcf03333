//! Re-establishing a client session's state on a server connection before
//! it serves that session: the settings it lacks (one simple Query) and the
//! prepared statements it lacks (their Parse or PREPARE again, then Sync).
//! The replies are read here and never reach the client; an error is
//! handed back whole so the client can be told what the server said.
//! [`query_lsn`] asks a connection where the WAL stands, the same way, and
//! [`run`] runs a statement of the proxy's own.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use super::ServerConn;
use crate::protocol::{messages, take_frame, TxnStatus};
use crate::topology::Lsn;

/// Replies to a replay are small; a bigger one is a broken server.
const MAX_REPLY: usize = 1 << 20;
/// A resent request's rows are as large as the client's were.
const MAX_RESENT_FRAME: usize = 1 << 30;

/// One prepared statement to create again.
#[derive(Debug, Clone)]
pub struct Statement<'a> {
    pub name: &'a str,
    pub fingerprint: u64,
    /// A Parse frame, or a Query frame holding a SQL PREPARE.
    pub source: &'a Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The server refused part of it; the raw ErrorResponse frame.
    #[error("the server refused to restore the session's state")]
    Refused(Bytes),
    #[error("server connection lost while restoring the session's state")]
    Lost,
}

/// Sends `settings` (SQL), closes `stale` statements (ones the client has
/// closed and is about to prepare again), sends `statements`, and reads
/// every reply. On
/// success the connection records what it now has: `wanted` settings and
/// the statements' fingerprints. After an error the connection's state is
/// unknown and it must not be used again.
pub async fn replay(
    conn: &mut ServerConn,
    settings: Option<String>,
    wanted: &[(String, crate::classify::SettingValue)],
    stale: &[&str],
    statements: &[Statement<'_>],
) -> Result<(), ReplayError> {
    let mut out = BytesMut::new();
    let mut ready_expected = 0;
    if let Some(sql) = &settings {
        messages::query(&mut out, sql);
        ready_expected += 1;
    }
    let mut extended = false;
    for name in stale {
        close_statement(&mut out, name);
        extended = true;
    }
    for s in statements {
        if conn.carried.prepared.contains_key(s.name) && !s.name.is_empty() {
            close_statement(&mut out, s.name);
            extended = true;
        }
        out.extend_from_slice(s.source);
        match s.source.first() {
            Some(b'Q') => ready_expected += 1,
            _ => extended = true,
        }
    }
    if extended {
        out.extend_from_slice(&[b'S', 0, 0, 0, 4]);
        ready_expected += 1;
    }
    if ready_expected == 0 {
        return Ok(());
    }
    conn.wr
        .write_all(&out)
        .await
        .map_err(|_| ReplayError::Lost)?;
    read_replies(conn, ready_expected, |_| {}).await?;
    if settings.is_some() {
        conn.carried.settings = wanted.to_vec();
    }
    for name in stale {
        conn.carried.prepared.remove(*name);
    }
    for s in statements {
        conn.carried
            .prepared
            .insert(s.name.to_owned(), s.fingerprint);
    }
    Ok(())
}

/// Runs `sql` (one simple Query); nothing reaches the client.
pub async fn run(conn: &mut ServerConn, sql: &str) -> Result<(), ReplayError> {
    send_query(conn, sql).await?;
    read_replies(conn, 1, |_| {}).await
}

/// Sends one request of the client's again (a transaction replayed after
/// a failover) and reads its reply up to its ReadyForQuery, showing every
/// frame before that to `seen`; the status it left. Nothing reaches the
/// client.
pub async fn resend(
    conn: &mut ServerConn,
    request: &[u8],
    mut seen: impl FnMut(&[u8]),
) -> Result<TxnStatus, ReplayError> {
    conn.wr
        .write_all(request)
        .await
        .map_err(|_| ReplayError::Lost)?;
    loop {
        let frame =
            take_frame(&mut conn.pending, MAX_RESENT_FRAME).map_err(|_| ReplayError::Lost)?;
        let Some(frame) = frame else {
            match conn
                .rd
                .read_with_room(&mut conn.pending, super::SERVER_BUFFER)
                .await
            {
                Ok(n) if n > 0 => continue,
                _ => return Err(ReplayError::Lost),
            }
        };
        if frame[0] == b'Z' {
            return Ok(TxnStatus::of_ready(&frame[5..]).unwrap_or_default());
        }
        seen(&frame);
    }
}

/// Sends `sql` as one simple Query.
async fn send_query(conn: &mut ServerConn, sql: &str) -> Result<(), ReplayError> {
    let mut out = BytesMut::new();
    messages::query(&mut out, sql);
    conn.wr.write_all(&out).await.map_err(|_| ReplayError::Lost)
}

/// Runs `sql`, a query of one row and one `pg_lsn` column, and returns
/// the position (`None` when it is NULL). Nothing reaches the client.
pub async fn query_lsn(conn: &mut ServerConn, sql: &str) -> Result<Option<Lsn>, ReplayError> {
    send_query(conn, sql).await?;
    let mut value = None;
    read_replies(conn, 1, |frame| {
        if frame[0] == b'D' {
            value =
                first_column(&frame[5..]).and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
        }
    })
    .await?;
    Ok(value)
}

/// The first column of a DataRow body; `None` when NULL or malformed.
fn first_column(body: &[u8]) -> Option<&[u8]> {
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    body.get(6..6 + usize::try_from(len).ok()?)
}

/// Reads replies until `ready_expected` ReadyForQuery, showing every other
/// frame to `seen`. The first ErrorResponse makes it fail once all are in;
/// what did succeed is then unknown and the caller closes the connection.
async fn read_replies(
    conn: &mut ServerConn,
    mut ready_expected: usize,
    mut seen: impl FnMut(&[u8]),
) -> Result<(), ReplayError> {
    let mut refused = None;
    while ready_expected > 0 {
        let frame = take_frame(&mut conn.pending, MAX_REPLY).map_err(|_| ReplayError::Lost)?;
        let Some(frame) = frame else {
            match conn
                .rd
                .read_with_room(&mut conn.pending, super::SERVER_BUFFER)
                .await
            {
                Ok(n) if n > 0 => continue,
                _ => return Err(ReplayError::Lost),
            }
        };
        match frame[0] {
            b'Z' => ready_expected -= 1,
            b'E' if refused.is_none() => refused = Some(frame.freeze()),
            _ => seen(&frame),
        }
    }
    match refused {
        Some(error) => Err(ReplayError::Refused(error)),
        None => Ok(()),
    }
}

fn close_statement(out: &mut BytesMut, name: &str) {
    out.put_u8(b'C');
    out.put_i32((4 + 1 + name.len() + 1) as i32);
    out.put_u8(b'S');
    out.put_slice(name.as_bytes());
    out.put_u8(0);
}

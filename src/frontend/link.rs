//! The session's link to a server: the one server connection attached to
//! it (if any) and the bookkeeping that goes with it — the node it is on,
//! the bytes waiting to go to it, the requests in flight on it, where a
//! cancel goes, and whether it said FATAL.
//!
//! A request that may be sent again elsewhere ([`super::retry`]) keeps its
//! bytes until the first byte of its reply is passed on; a FATAL error
//! ending the connection is held back from the client, whose session may
//! outlive the connection.
//!
//! The link outlives the connections it carries (its buffers keep their
//! capacity from one to the next). Counting requests and cutting the
//! server's stream at ReadyForQuery (`Requests`) is pure and tested
//! without a socket; the session does the I/O.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::watch;

use super::cancel::{CancelHandle, CancelTarget};
use crate::backend::ServerConn;
use crate::classify::SessionEffect;
use crate::frontend::on_wake::OnWake;
use crate::protocol::{FrameScanner, ScanError, TxnStatus};
use crate::tls::{ReadHalf, WriteHalf};

/// Server frames are trusted in size (PostgreSQL caps them at 1 GiB) and
/// stream through, so only this sanity bound applies.
const MAX_SERVER_FRAME: usize = 1 << 30;
/// A ReadyForQuery frame's length: tag, length, status.
const READY_LEN: usize = 6;

/// Where the session is in its conversation with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the client; the last ReadyForQuery said this.
    Ready(TxnStatus),
    /// Requests (Query or Sync) sent whose ReadyForQuery has not come back.
    Busy { outstanding: u32 },
}

/// A request sent and not yet answered, with what it will change once it is.
#[derive(Debug, Default)]
pub struct Sent {
    pub effects: Vec<SessionEffect>,
    /// It ran on the primary and may have written.
    pub on_primary: bool,
    /// It is one ROLLBACK statement: whatever its transaction wrote is undone.
    pub rolls_back: bool,
    /// Statements it creates (name, fingerprint); the first `parse_ok`
    /// were confirmed by the server.
    pub parsed: Vec<(String, u64)>,
    pub parse_ok: usize,
    /// The server reported an error for it.
    pub failed: bool,
    /// It ends with a Sync of the proxy's own: its ReadyForQuery is not
    /// the client's and is not relayed.
    pub own_sync: bool,
    /// Sent outside any transaction and begins none: losing the
    /// connection loses no transaction, only this request's answer.
    pub autocommit: bool,
    /// Its bytes, while none of its reply has reached the client: a read
    /// that may be sent again elsewhere if its connection fails first.
    pub copy: Option<Bytes>,
    /// When the client's request became due (for the latency histogram).
    pub due_at: Option<std::time::Instant>,
    /// Part of its reply has reached the client.
    pub replied: bool,
}

/// What was in flight on a connection that broke.
#[derive(Debug)]
pub struct Lost {
    pub node: Option<usize>,
    /// Requests sent and not answered, oldest first.
    pub sent: Vec<Sent>,
    /// The FATAL error the server ended with, held back from the client.
    pub fatal: Option<Bytes>,
}

/// One request answered: what was sent and the status it left.
#[derive(Debug)]
pub struct Answer {
    /// The node it ran on.
    pub node: usize,
    pub sent: Option<Sent>,
    pub status: TxnStatus,
}

/// The requests in flight on a connection, and how far its replies have
/// been passed on (pure).
#[derive(Debug)]
struct Requests {
    phase: Phase,
    inflight: VecDeque<Sent>,
    frames: FrameScanner,
    /// The server sent a FATAL or PANIC error: the connection is ending.
    fatal_seen: bool,
    /// That error, not passed on: the connection ends, and the session
    /// decides what the client hears (drivers take a FATAL as the end of
    /// their own connection).
    withheld: Option<Bytes>,
    /// Requests ever sent on the connection: the front one is number
    /// `sent_count - inflight.len()`.
    sent_count: u64,
}

impl Requests {
    fn new() -> Requests {
        Requests {
            phase: Phase::Ready(TxnStatus::Idle),
            inflight: VecDeque::new(),
            frames: FrameScanner::new(MAX_SERVER_FRAME),
            fatal_seen: false,
            withheld: None,
            sent_count: 0,
        }
    }

    /// `requests` requests (ReadyForQuery each) went out as `sent`; the
    /// rest of a flushed batch joins the request it completes.
    fn sent(&mut self, sent: Sent, requests: u32, continuing: bool) {
        match self.inflight.back_mut().filter(|_| continuing) {
            Some(last) => {
                last.effects.extend(sent.effects);
                last.parsed.extend(sent.parsed);
                last.on_primary |= sent.on_primary;
                last.rolls_back = false;
                last.autocommit &= sent.autocommit;
                last.copy = None;
            }
            None => {
                self.sent_count += 1;
                self.inflight.push_back(sent);
            }
        }
        if requests > 0 {
            self.phase = Phase::Busy {
                outstanding: self.outstanding() + requests,
            };
        }
    }

    fn outstanding(&self) -> u32 {
        match self.phase {
            Phase::Busy { outstanding } => outstanding,
            Phase::Ready(_) => 0,
        }
    }

    /// Moves whole or streaming frames from `pending` to `out` up to and
    /// including the next ReadyForQuery, noting errors and confirmed
    /// parses; the status when a ReadyForQuery was passed on. A FATAL error
    /// stops the relay and is withheld.
    fn relay(
        &mut self,
        pending: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<Option<(Option<Sent>, TxnStatus)>, ScanError> {
        if self.withheld.is_some() {
            return Ok(None);
        }
        let mut ready = None;
        let mut errors = 0u32;
        let mut fatal = false;
        let mut withheld = 0usize;
        let mut parse_ok = 0usize;
        let n = self.frames.scan(
            pending,
            |tag| matches!(tag, b'Z' | b'E' | b'1'),
            |frame| match frame.tag {
                b'Z' => {
                    ready = Some(TxnStatus::of_ready(frame.body).unwrap_or_default());
                    false
                }
                b'1' => {
                    parse_ok += 1;
                    true
                }
                _ => {
                    errors += 1;
                    let this_fatal = is_fatal(frame.body);
                    fatal |= this_fatal;
                    if this_fatal {
                        withheld = frame.body.len() + 5;
                    }
                    withheld == 0
                }
            },
        )?;
        let front = self.inflight.front();
        let own_sync = ready.is_some() && front.is_some_and(|s| s.own_sync);
        // The ReadyForQuery, or a withheld error, is the last frame scanned.
        let mut relayed = n - withheld - if own_sync { READY_LEN } else { 0 };
        if withheld > 0 {
            self.withheld = Some(Bytes::copy_from_slice(&pending[n - withheld..n]));
            if front.is_some_and(|s| s.copy.is_some()) {
                // What the server flushed as it ended (a BindComplete, say)
                // is part of a reply that will come again from elsewhere.
                relayed = 0;
            }
        }
        out.extend_from_slice(&pending[..relayed]);
        pending.advance(n);
        self.fatal_seen |= fatal;
        if let Some(sent) = self.inflight.front_mut() {
            sent.parse_ok += parse_ok;
            sent.failed |= errors > 0;
            if relayed > 0 {
                // Part of its reply reached the client: never sent again.
                sent.copy = None;
                sent.replied = true;
            }
        }
        let Some(status) = ready else {
            return Ok(None);
        };
        self.phase = match self.phase {
            Phase::Busy { outstanding } if outstanding > 1 => Phase::Busy {
                outstanding: outstanding - 1,
            },
            _ => Phase::Ready(status),
        };
        Ok(Some((self.inflight.pop_front(), status)))
    }
}

/// The attached connection and its node.
#[derive(Debug)]
struct Attached {
    conn: Box<ServerConn>,
    node: usize,
}

/// The session's side of its server connection.
pub struct ServerLink {
    attached: Option<Attached>,
    /// Bytes waiting to be written to the server.
    out: BytesMut,
    requests: Requests,
    cancel: CancelHandle,
    /// A cancel came while the session was getting a connection: it is
    /// passed on once the batch has been written to that connection.
    cancel_owed: bool,
    /// Resolves when nodes are fenced or the epoch moves. Made once and
    /// kept across the relay loop's turns (a `changed()` made afresh every
    /// turn would join and leave the watch's waiters every time), and
    /// polled only once the watch has woken it.
    fences: Fences,
}

/// A wait for the next fence change that hands its receiver back.
pub type Fences = OnWake<watch::Receiver<u64>>;

/// Waits on `fences` for its next change; never resolves once the topology
/// is gone (the proxy is stopping).
fn watch_fences(mut fences: watch::Receiver<u64>) -> Fences {
    OnWake::new(async move {
        if fences.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        fences
    })
}

/// The link's halves for one turn of the relay loop.
pub struct LinkIo<'a> {
    pub read: Option<(&'a mut ReadHalf, &'a mut BytesMut)>,
    pub write: Option<&'a mut WriteHalf>,
    pub out: &'a mut BytesMut,
    pub fences: &'a mut Fences,
}

impl ServerLink {
    /// A link carrying the session's first connection, `conn` on `node`,
    /// whose cancel target is already set.
    pub fn new(
        mut conn: Box<ServerConn>,
        node: usize,
        cancel: CancelHandle,
        fences: watch::Receiver<u64>,
    ) -> ServerLink {
        // Anything the server sent past its startup ReadyForQuery is relayed first.
        conn.pending.reserve(crate::backend::SERVER_BUFFER);
        ServerLink {
            attached: Some(Attached { conn, node }),
            // Grows with the first batch: an idle session holds no buffer.
            out: BytesMut::new(),
            requests: Requests::new(),
            cancel,
            cancel_owed: false,
            fences: watch_fences(fences),
        }
    }

    /// Waits for the next fence change after the one just handled.
    pub fn rearm_fences(&mut self, fences: watch::Receiver<u64>) {
        self.fences = watch_fences(fences);
    }

    /// The node of the attached connection.
    pub fn node(&self) -> Option<usize> {
        self.attached.as_ref().map(|a| a.node)
    }

    pub fn conn(&self) -> Option<&ServerConn> {
        self.attached.as_ref().map(|a| &*a.conn)
    }

    pub fn conn_mut(&mut self) -> Option<&mut ServerConn> {
        self.attached.as_mut().map(|a| &mut *a.conn)
    }

    pub fn phase(&self) -> Phase {
        self.requests.phase
    }

    /// Requests whose ReadyForQuery has not come back.
    pub fn outstanding(&self) -> u32 {
        self.requests.outstanding()
    }

    pub fn fatal_seen(&self) -> bool {
        self.requests.fatal_seen
    }

    /// The server ended the connection with a FATAL error that was held
    /// back from the client.
    pub fn withheld(&self) -> Option<&Bytes> {
        self.requests.withheld.as_ref()
    }

    /// The number of the oldest request in flight on this connection,
    /// while it keeps its bytes (none of its reply has been passed on).
    pub fn kept_front(&self) -> Option<u64> {
        let r = &self.requests;
        let front = r.inflight.front()?;
        front.copy.as_ref()?;
        Some(r.sent_count - r.inflight.len() as u64)
    }

    /// The requests in flight, oldest first.
    pub fn in_flight(&self) -> impl Iterator<Item = &Sent> {
        self.requests.inflight.iter()
    }

    /// Every request in flight keeps its bytes (each a read sent outside a
    /// transaction, none of whose reply went out): a read that follows
    /// them may be sent again with them.
    pub fn all_kept(&self) -> bool {
        self.requests.inflight.iter().all(|s| s.copy.is_some())
    }

    /// The connection broke: it is closed, and what was in flight on it is
    /// handed back; the link is as it was before its first connection.
    pub fn lose(&mut self) -> Lost {
        let node = self.node();
        drop(self.detach());
        self.out.clear();
        let requests = std::mem::replace(&mut self.requests, Requests::new());
        Lost {
            node,
            sent: requests.inflight.into(),
            fatal: requests.withheld,
        }
    }

    /// Part of a server frame has gone to the client and the rest not.
    pub fn mid_frame(&self) -> bool {
        self.requests.frames.mid_frame()
    }

    /// Bytes waiting to go to the server.
    pub fn out(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// Nothing between the session and the connection: idle outside a
    /// transaction, nothing to write, nothing half read.
    pub fn quiet(&self) -> bool {
        self.requests.phase == Phase::Ready(TxnStatus::Idle)
            && self.out.is_empty()
            && !self.mid_frame()
            && self.conn().is_some_and(|c| c.pending.is_empty())
    }

    /// No request is waiting for its reply either.
    pub fn settled(&self) -> bool {
        self.requests.inflight.is_empty()
    }

    /// The session is getting a connection for a batch: a cancel that
    /// arrives meanwhile is kept for it.
    pub fn connecting(&self) {
        self.cancel.connecting();
    }

    /// Makes `conn` (on `node`) the session's connection.
    pub fn attach(&mut self, conn: Box<ServerConn>, node: usize) {
        self.cancel_owed = self.cancel.set_target(conn.key.map(|key| CancelTarget {
            host: conn.host.clone(),
            port: conn.port,
            key,
        }));
        self.attached = Some(Attached { conn, node });
    }

    /// Where a cancel for the attached connection goes.
    pub fn cancel_target(&self) -> Option<CancelTarget> {
        let conn = self.conn()?;
        Some(CancelTarget {
            host: conn.host.clone(),
            port: conn.port,
            key: conn.key?,
        })
    }

    /// Cancels stop going anywhere (the session is ending).
    pub fn clear_cancel_target(&self) {
        self.cancel.set_target(None);
    }

    /// Takes the connection off the link (to pool or close it); cancels
    /// have nowhere to go until the next one.
    pub fn detach(&mut self) -> Option<(Box<ServerConn>, usize)> {
        let attached = self.attached.take()?;
        self.cancel.set_target(None);
        Some((attached.conn, attached.node))
    }

    /// A cancel owed to the connection, once the batch it was meant for
    /// has been written (earlier, it would stop nothing).
    pub fn owed_cancel(&mut self) -> Option<CancelTarget> {
        if !self.cancel_owed || !self.out.is_empty() {
            return None;
        }
        self.cancel_owed = false;
        self.cancel_target()
    }

    /// Requests of the proxy's own, whose replies the client never sees,
    /// left the connection at `status` (a transaction moved to another node).
    pub fn resume(&mut self, status: TxnStatus) {
        self.requests.phase = Phase::Ready(status);
    }

    /// Notes a request written to `out`.
    pub fn sent(&mut self, sent: Sent, requests: u32, continuing: bool) {
        self.requests.sent(sent, requests, continuing);
    }

    /// Passes the server's replies on to `client` up to the next
    /// ReadyForQuery; the answer when one came.
    pub fn relay(&mut self, client: &mut BytesMut) -> Result<Option<Answer>, ScanError> {
        let Some(att) = self.attached.as_mut() else {
            return Ok(None);
        };
        let answered = self.requests.relay(&mut att.conn.pending, client)?;
        Ok(answered.map(|(sent, status)| Answer {
            node: att.node,
            sent,
            status,
        }))
    }

    /// The halves the relay loop waits on.
    pub fn io(&mut self) -> LinkIo<'_> {
        let (read, write) = match self.attached.as_mut() {
            Some(att) => {
                let conn = &mut att.conn;
                (Some((&mut conn.rd, &mut conn.pending)), Some(&mut conn.wr))
            }
            None => (None, None),
        };
        LinkIo {
            read,
            write,
            out: &mut self.out,
            fences: &mut self.fences,
        }
    }
}

/// Whether an ErrorResponse body has severity FATAL or PANIC.
pub fn is_fatal(body: &[u8]) -> bool {
    error_field(body, b'V')
        .or_else(|| error_field(body, b'S'))
        .is_some_and(|severity| matches!(severity, "FATAL" | "PANIC"))
}

/// One field of an ErrorResponse body (`C` the SQLSTATE, `M` the message...).
pub fn error_field(body: &[u8], field: u8) -> Option<&str> {
    let mut rest = body;
    while let [code, tail @ ..] = rest {
        if *code == 0 {
            break;
        }
        let (value, after) = crate::protocol::cstr(tail)?;
        if *code == field {
            return Some(value);
        }
        rest = after;
    }
    None
}

#[cfg(test)]
#[path = "link_tests.rs"]
mod tests;

//! The per-client relay loop, with read/write splitting.
//!
//! Client messages are gathered into batches (up to a Query or a Sync: one
//! request, one ReadyForQuery). Each batch is classified and routed as a
//! whole, then relayed as bytes to the server connection chosen for it;
//! server replies are relayed back as bytes. Between transactions the
//! server connection goes back to the pool, so the next batch may run on
//! another node: the session's settings and prepared statements are
//! replayed there first ([`crate::backend::replay`]).
//!
//! Both directions move at once, so a pipelined batch whose results fill
//! the socket buffers cannot deadlock. A batch never overtakes the replies
//! of an earlier one: while replies are outstanding, a batch that cannot
//! run on the same connection waits.

mod dispatch;
mod reads;

use dispatch::Outcome;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tracing::{debug, info, Span};

use super::cancel::{CancelHandle, CancelTarget};
use super::classifier::Classifier;
use super::collect::Collector;
use super::state::SessionState;
use super::{Connected, Shared};
use crate::backend::pool::PoolKey;
use crate::backend::{self, ServerConn};
use crate::classify::SessionEffect;
use crate::protocol::{messages, FrameScanner, ScanError, Sqlstate, TxnStatus};
use crate::route::ReadChoice;
use crate::topology::Lsn;

/// Stop reading from one side while this much is waiting to be written to
/// the other: backpressure instead of unbounded buffering.
const HIGH_WATER: usize = 256 * 1024;
/// How long a closing session may take to deliver its last words.
const FINAL_FLUSH: Duration = Duration::from_secs(5);
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);
/// Server frames are trusted in size (PostgreSQL caps them at 1 GiB) and
/// stream through, so only this sanity bound applies.
const MAX_SERVER_FRAME: usize = 1 << 30;
const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

/// Where the session is in its conversation with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the client; the last ReadyForQuery said this.
    Ready(TxnStatus),
    /// Requests (Query or Sync) sent whose ReadyForQuery has not come back.
    Busy { outstanding: u32 },
}

/// Why a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    ClientTerminated,
    ClientGone,
    ServerGone,
    ClientProtocolError,
    Shutdown,
}

/// What woke the relay loop.
enum Event {
    WroteClient(std::io::Result<usize>),
    WroteServer(std::io::Result<usize>),
    ReadServer(std::io::Result<usize>),
    ReadClient(std::io::Result<usize>),
    /// A node was fenced or the epoch moved.
    Fenced,
    Shutdown,
}

/// The client's half of the relay.
pub struct ClientIo {
    pub rd: OwnedReadHalf,
    pub wr: OwnedWriteHalf,
    /// Bytes read from the client and not yet taken into a batch.
    pub inbuf: BytesMut,
    /// Bytes waiting to be written to the client.
    pub out: BytesMut,
}

/// How the session logs in to any node.
#[derive(Debug, Clone)]
pub struct SessionLogin {
    pub client_user: String,
    pub server_user: String,
    pub server_password: Option<String>,
    /// Every startup parameter sent to servers (user included).
    pub params: Vec<(String, String)>,
    pub database: String,
}

/// The server connection serving the session right now.
struct Attached {
    conn: ServerConn,
    node: usize,
}

/// What the session has written that its causal reads have not located in
/// the WAL yet.
#[derive(Debug)]
struct Writes {
    /// Something may have committed since the session's write position
    /// was last learned.
    unlocated: bool,
    /// The open transaction has written: `unlocated` once it ends, unless
    /// it rolls back.
    in_transaction: bool,
    /// The transaction status of the last ReadyForQuery.
    last_status: u8,
}

impl Default for Writes {
    fn default() -> Writes {
        Writes {
            unlocated: false,
            in_transaction: false,
            last_status: b'I',
        }
    }
}

impl Writes {
    /// `sent` was answered with transaction status `status`.
    fn note(&mut self, sent: &Sent, status: u8) {
        let before = std::mem::replace(&mut self.last_status, status);
        if sent.on_primary {
            let opens = matches!(sent.effects.first(), Some(SessionEffect::Begin { .. }));
            let commits = sent
                .effects
                .iter()
                .any(|e| matches!(e, SessionEffect::Commit | SessionEffect::Chain));
            if (before != b'I' || opens) && !commits {
                self.in_transaction = true;
            } else {
                self.unlocated = true;
            }
        }
        if status == b'I' {
            self.unlocated |= std::mem::take(&mut self.in_transaction) && !sent.rolls_back;
        }
    }
}

/// A request sent and not yet answered, with what it will change once it is.
#[derive(Debug, Default)]
struct Sent {
    effects: Vec<SessionEffect>,
    /// It ran on the primary and may have written.
    on_primary: bool,
    /// It is one ROLLBACK statement: whatever its transaction wrote is undone.
    rolls_back: bool,
    /// Statements it creates; the first `parse_ok` were confirmed.
    parsed: Vec<(String, u64)>,
    parse_ok: usize,
    failed: bool,
}

pub struct Session {
    id: u64,
    shared: Arc<Shared>,
    client: ClientIo,
    server: Option<Attached>,
    server_frames: FrameScanner,
    to_server: BytesMut,
    phase: Phase,
    server_said_fatal: bool,
    cancel: CancelHandle,
    span: Span,
    login: SessionLogin,
    /// Pool keys of every node, in topology order.
    keys: Vec<PoolKey>,
    state: SessionState,
    classifier: Classifier,
    collector: Collector,
    inflight: VecDeque<Sent>,
    /// The client cancelled while the session was getting a connection:
    /// cancel on that connection once the batch has been written to it.
    cancel_owed: bool,
    /// How fresh the session's reads must be, as it chose with `SET palisade.*`.
    reads: ReadChoice,
    /// At or past the session's last write that has been located.
    write_lsn: Option<Lsn>,
    /// Writes not yet located in the WAL.
    writes: Writes,
    fences: watch::Receiver<u64>,
}

impl Session {
    pub fn new(
        id: u64,
        shared: Arc<Shared>,
        client: ClientIo,
        connected: Connected,
        classifier: Classifier,
        span: Span,
    ) -> Session {
        let Connected {
            mut server,
            node,
            cancel,
            login,
        } = connected;
        // Anything the server sent past its startup ReadyForQuery is relayed first.
        server.pending.reserve(16 * 1024);
        let keys = shared
            .topology
            .load()
            .nodes
            .iter()
            .map(|n| PoolKey::new(&n.host, n.port, &login.client_user, &login.params))
            .collect();
        Session {
            id,
            collector: Collector::new(shared.config.proxy.max_message_size),
            classifier,
            fences: shared.topology.fence_changes(),
            shared,
            span,
            client,
            server: Some(Attached { conn: server, node }),
            server_frames: FrameScanner::new(MAX_SERVER_FRAME),
            to_server: BytesMut::with_capacity(16 * 1024),
            phase: Phase::Ready(TxnStatus::Idle),
            server_said_fatal: false,
            cancel,
            login,
            keys,
            state: SessionState::default(),
            inflight: VecDeque::new(),
            cancel_owed: false,
            reads: ReadChoice::default(),
            write_lsn: None,
            writes: Writes::default(),
        }
    }

    /// Relays until either side ends the session.
    pub async fn run(mut self) -> End {
        let end = self.relay().await;
        let reusable = self.server_reusable(&end);
        self.finish(&end, reusable).await;
        if let Some(att) = &self.server {
            let left = match self.phase {
                Phase::Busy { outstanding } => outstanding,
                Phase::Ready(_) => 0,
            };
            self.shared.loads.done(att.node, left);
        }
        if reusable {
            self.release();
        }
        self.server = None;
        if self.state.is_stateful() {
            tokio::spawn(self.shared.pool.clone().release_owner(self.id));
        }
        end
    }

    /// A server connection can serve another client when this one left it
    /// idle: outside a transaction, nothing in flight, nothing half-sent.
    fn server_reusable(&self, end: &End) -> bool {
        matches!(end, End::ClientTerminated | End::ClientGone)
            && self.phase == Phase::Ready(TxnStatus::Idle)
            && !self.collector.continues()
            && self.to_server.is_empty()
            && !self.server_said_fatal
            && !self.server_frames.mid_frame()
            && self
                .server
                .as_ref()
                .is_some_and(|s| s.conn.pending.is_empty())
    }

    async fn relay(&mut self) -> End {
        // The startup connection is not the client's until it asks for something.
        self.maybe_release();
        // Made once: re-arming a watch waiter on every message costs more than the rest of the loop.
        let mut shutdown = self.shared.shutdown.clone();
        let stop = async move {
            let _ = shutdown.wait_for(|stopping| *stopping).await;
        };
        tokio::pin!(stop);
        loop {
            if let Err(end) = self.advance().await {
                return end;
            }
            if let Err(end) = self.step(stop.as_mut()).await {
                return end;
            }
        }
    }

    /// Does whatever needs no waiting for the network: gathers client
    /// frames into batches and dispatches every batch that may go now.
    async fn advance(&mut self) -> Result<(), End> {
        loop {
            if !self.collector.is_due() {
                self.collect()?;
            }
            if !self.collector.is_due() || self.dispatch().await? == Outcome::Waiting {
                break;
            }
        }
        if let Some(att) = &self.server {
            write_now(&att.conn.wr, &mut self.to_server).map_err(|_| End::ServerGone)?;
        }
        self.pay_owed_cancel();
        write_now(&self.client.wr, &mut self.client.out).map_err(|_| End::ClientGone)
    }

    /// Sends a cancel that arrived while connecting, once the batch it was
    /// meant for has reached the server (earlier, it would stop nothing).
    fn pay_owed_cancel(&mut self) {
        if !self.cancel_owed || !self.to_server.is_empty() {
            return;
        }
        self.cancel_owed = false;
        if let Some((conn, key)) = self
            .server
            .as_ref()
            .and_then(|att| Some((&att.conn, att.conn.key?)))
        {
            let (host, port) = (conn.host.clone(), conn.port);
            debug!(parent: &self.span, "passing on a cancel that came while connecting");
            tokio::spawn(async move {
                let _ = backend::cancel(&host, port, key, CANCEL_TIMEOUT).await;
            });
        }
    }

    /// Waits for the next thing that can happen and handles it.
    async fn step(&mut self, stop: Pin<&mut impl Future<Output = ()>>) -> Result<(), End> {
        let Session {
            client,
            server,
            to_server,
            collector,
            fences,
            ..
        } = self;
        let attached = server.is_some();
        let read_client = !collector.is_due() && client.inbuf.len() < HIGH_WATER;
        let read_server = client.out.len() < HIGH_WATER;
        let write_server = !to_server.is_empty();
        let (server_rd, server_wr) = match server {
            Some(att) => {
                let conn = &mut att.conn;
                (Some((&mut conn.rd, &mut conn.pending)), Some(&mut conn.wr))
            }
            None => (None, None),
        };
        let event = tokio::select! {
            biased;
            r = client.wr.write(&client.out), if !client.out.is_empty() => Event::WroteClient(r),
            r = server_write(server_wr, to_server), if write_server => Event::WroteServer(r),
            r = server_read(server_rd), if read_server => Event::ReadServer(r),
            r = client.rd.read_buf(&mut client.inbuf), if read_client => Event::ReadClient(r),
            Ok(()) = fences.changed(), if attached => Event::Fenced,
            () = stop => Event::Shutdown,
        };
        match event {
            Event::WroteClient(Ok(n)) if n > 0 => self.client.out.advance(n),
            Event::WroteServer(Ok(n)) if n > 0 => self.to_server.advance(n),
            Event::ReadServer(Ok(n)) if n > 0 => self.on_server_bytes()?,
            Event::ReadClient(Ok(n)) if n > 0 => {}
            Event::WroteClient(_) | Event::ReadClient(_) => return Err(End::ClientGone),
            Event::WroteServer(_) | Event::ReadServer(_) => return Err(End::ServerGone),
            Event::Shutdown => return Err(End::Shutdown),
            Event::Fenced => return self.leave_fenced_node(),
        }
        Ok(())
    }

    /// The session's server was just fenced: between transactions it moves
    /// on quietly (its next batch goes to the epoch's primary); in the
    /// middle of one the transaction is lost with the node, and the client
    /// is told so as if the connection had dropped.
    fn leave_fenced_node(&mut self) -> Result<(), End> {
        let topology = self.shared.topology.load();
        let Some(att) = &self.server else {
            return Ok(());
        };
        if !topology.nodes.get(att.node).is_some_and(|n| n.fenced) {
            return Ok(());
        }
        info!(parent: &self.span, server = %self.node_name(), epoch = topology.epoch, "server fenced");
        if self.phase == Phase::Ready(TxnStatus::Idle) && !self.collector.continues() {
            self.drop_server();
            return Ok(());
        }
        Err(End::ServerGone)
    }

    fn refuse_client_frame(&mut self, state: Sqlstate, message: &str) {
        info!(parent: &self.span, error = message, "closing client after a bad message");
        messages::error(&mut self.client.out, true, state, message);
    }

    fn refuse_scan(&mut self, e: &ScanError) -> End {
        let state = match e {
            ScanError::TooLarge { .. } => Sqlstate::ProgramLimitExceeded,
            ScanError::BadLength { .. } => Sqlstate::ProtocolViolation,
        };
        self.refuse_client_frame(state, &e.to_string());
        End::ClientProtocolError
    }

    /// Moves server bytes to the client, settling each answered request.
    fn on_server_bytes(&mut self) -> Result<(), End> {
        loop {
            let Some(att) = self.server.as_mut() else {
                return Ok(());
            };
            let mut ready = None;
            let mut errors = 0u32;
            let mut fatal = false;
            let mut parse_ok = 0usize;
            let scanned = self.server_frames.scan(
                &att.conn.pending,
                |tag| matches!(tag, b'Z' | b'E' | b'1'),
                |frame| match frame.tag {
                    b'Z' => {
                        ready = Some(frame.body.first().copied().unwrap_or(b'I'));
                        false
                    }
                    b'1' => {
                        parse_ok += 1;
                        true
                    }
                    _ => {
                        errors += 1;
                        fatal |= is_fatal(frame.body);
                        true
                    }
                },
            );
            // Server lengths are only sanity-checked, but a server that breaks
            // framing cannot be relayed any further.
            let n = match scanned {
                Ok(n) => n,
                Err(e) => {
                    info!(parent: &self.span, error = %e, "server sent an invalid frame");
                    return Err(End::ServerGone);
                }
            };
            self.client.out.extend_from_slice(&att.conn.pending[..n]);
            att.conn.pending.advance(n);
            self.server_said_fatal |= fatal;
            if let Some(sent) = self.inflight.front_mut() {
                sent.parse_ok += parse_ok;
                sent.failed |= errors > 0;
            }
            match ready {
                Some(status) => self.on_ready(status),
                None => break,
            }
        }
        self.maybe_release();
        Ok(())
    }

    /// One request answered: settle what it changed.
    fn on_ready(&mut self, status: u8) {
        let Some(att) = self.server.as_mut() else {
            return;
        };
        self.shared.loads.done(att.node, 1);
        self.phase = match self.phase {
            Phase::Busy { outstanding } if outstanding > 1 => Phase::Busy {
                outstanding: outstanding - 1,
            },
            _ => Phase::Ready(TxnStatus::from_byte(status)),
        };
        let Some(sent) = self.inflight.pop_front() else {
            return;
        };
        self.writes.note(&sent, status);
        if sent.failed {
            for (name, fingerprint) in sent.parsed.iter().skip(sent.parse_ok) {
                if att.conn.prepared.get(name) == Some(fingerprint) {
                    att.conn.prepared.remove(name);
                }
                self.state.unprepare(name, *fingerprint);
            }
        }
        if sent.effects.is_empty() && !sent.failed && status == b'T' {
            return;
        }
        self.state.settle(&sent.effects, sent.failed, status);
        if !sent.failed {
            for effect in &sent.effects {
                match effect {
                    SessionEffect::Deallocate { name: Some(name) } => {
                        att.conn.prepared.remove(name);
                    }
                    SessionEffect::Deallocate { name: None } => att.conn.prepared.clear(),
                    _ => {}
                }
            }
        }
        if att.conn.settings != self.state.settings() {
            att.conn.settings = self.state.settings().to_vec();
        }
        if self.state.take_catalog_changed() {
            self.classifier.functions_changed();
        }
    }

    /// Hands the server connection back to the pool once the session has
    /// left it idle and nothing ties the session to it.
    fn maybe_release(&mut self) {
        let idle = self.phase == Phase::Ready(TxnStatus::Idle)
            && self.inflight.is_empty()
            && !self.collector.continues()
            && !self.state.is_pinned()
            && self.to_server.is_empty()
            && !self.server_frames.mid_frame()
            && self
                .server
                .as_ref()
                .is_some_and(|s| s.conn.pending.is_empty());
        if idle {
            self.release();
        }
    }

    /// Returns the server connection to the pool, tagged with this session
    /// when it carries the session's state.
    fn release(&mut self) {
        if let Some(mut att) = self.server.take() {
            att.conn.owner = if self.state.is_stateful() { self.id } else { 0 };
            self.cancel.set_target(None);
            if let Some(key) = self.keys.get(att.node) {
                self.shared.pool.check_in(key, att.conn);
            }
        }
    }

    /// Makes `conn` the session's server connection (on node `node`).
    fn attach(&mut self, conn: ServerConn, node: usize) {
        self.cancel_owed = self.cancel.set_target(conn.key.map(|key| CancelTarget {
            host: conn.host.clone(),
            port: conn.port,
            key,
        }));
        self.server = Some(Attached { conn, node });
    }

    fn node_name(&self) -> String {
        let topology = self.shared.topology.load();
        self.server
            .as_ref()
            .and_then(|s| topology.nodes.get(s.node))
            .map_or_else(|| "server".to_owned(), |n| n.name.clone())
    }

    /// Says goodbye on both sides according to why the session ended.
    async fn finish(&mut self, end: &End, reusable: bool) {
        let busy = matches!(self.phase, Phase::Busy { .. });
        match end {
            End::ClientTerminated | End::ClientGone if reusable => {}
            End::ClientTerminated => {
                if let Some(att) = self.server.as_mut() {
                    // Whatever the client sent before Terminate still goes first.
                    self.to_server.extend_from_slice(&TERMINATE);
                    let _ = att.conn.wr.write_all(&self.to_server).await;
                }
            }
            End::ClientGone => {
                if let Some(att) = self.server.as_ref().filter(|_| busy) {
                    // Closing the socket does not stop a running query: cancel it.
                    if let Some(key) = att.conn.key {
                        debug!(parent: &self.span, "client left mid-query; cancelling it on the server");
                        let _ = backend::cancel(&att.conn.host, att.conn.port, key, CANCEL_TIMEOUT)
                            .await;
                    }
                }
            }
            End::ServerGone => {
                let name = self.node_name();
                if !self.server_said_fatal && !self.server_frames.mid_frame() {
                    let message = format!(
                        "server connection to {name} was lost{}",
                        if busy {
                            " while a query was running"
                        } else {
                            ""
                        }
                    );
                    messages::error(
                        &mut self.client.out,
                        true,
                        Sqlstate::ConnectionFailure,
                        &message,
                    );
                }
                info!(parent: &self.span, server = %name, "server connection lost");
            }
            End::Shutdown => {
                if !self.server_frames.mid_frame() {
                    messages::error(
                        &mut self.client.out,
                        true,
                        Sqlstate::AdminShutdown,
                        "terminating connection because the proxy is shutting down",
                    );
                }
                if let Some(att) = self.server.as_mut() {
                    let _ = att.conn.wr.write_all(&TERMINATE).await;
                }
            }
            End::ClientProtocolError => {
                if let Some(att) = self.server.as_mut() {
                    let _ = att.conn.wr.write_all(&TERMINATE).await;
                }
            }
        }
        self.cancel.set_target(None);
        if !self.client.out.is_empty() && *end != End::ClientGone {
            let _ =
                tokio::time::timeout(FINAL_FLUSH, self.client.wr.write_all(&self.client.out)).await;
        }
        let _ = self.client.wr.shutdown().await;
    }
}

/// Writes to the session's server, or waits forever when it has none.
async fn server_write(wr: Option<&mut OwnedWriteHalf>, buf: &[u8]) -> std::io::Result<usize> {
    match wr {
        Some(wr) => wr.write(buf).await,
        None => std::future::pending().await,
    }
}

/// Reads from the session's server, or waits forever when it has none.
async fn server_read(rd: Option<(&mut OwnedReadHalf, &mut BytesMut)>) -> std::io::Result<usize> {
    match rd {
        Some((rd, pending)) => rd.read_buf(pending).await,
        None => std::future::pending().await,
    }
}

/// Writes as much of `buf` as the socket takes without waiting; the relay
/// loop writes the rest when the socket is writable again.
fn write_now(wr: &OwnedWriteHalf, buf: &mut BytesMut) -> std::io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    match wr.try_write(buf) {
        Ok(0) => Err(std::io::ErrorKind::WriteZero.into()),
        Ok(n) => {
            buf.advance(n);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether an ErrorResponse body has severity FATAL or PANIC.
fn is_fatal(body: &[u8]) -> bool {
    let mut rest = body;
    while let [code, tail @ ..] = rest {
        if *code == 0 {
            break;
        }
        let Some((value, after)) = crate::protocol::cstr(tail) else {
            break;
        };
        if matches!(*code, b'S' | b'V') {
            return matches!(value, "FATAL" | "PANIC");
        }
        rest = after;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_errors_are_recognised() {
        assert!(is_fatal(b"SFATAL\0VFATAL\0C57P01\0Mbye\0\0"));
        assert!(is_fatal(b"VPANIC\0\0"));
        assert!(!is_fatal(b"SERROR\0VERROR\0C42601\0Msyntax\0\0"));
        assert!(!is_fatal(b""));
        assert!(!is_fatal(b"S"));
    }

    fn sent(on_primary: bool, effects: Vec<SessionEffect>, rolls_back: bool) -> Sent {
        Sent {
            effects,
            on_primary,
            rolls_back,
            ..Sent::default()
        }
    }

    #[test]
    fn writes_count_once_they_may_have_committed() {
        let begin = SessionEffect::Begin { read_only: false };
        let mut w = Writes::default();
        w.note(&sent(false, vec![], false), b'I');
        assert!(!w.unlocated, "a read on a replica");
        w.note(&sent(true, vec![], false), b'I');
        assert!(w.unlocated, "an autocommit write");

        // BEGIN; INSERT; COMMIT in three requests.
        let mut w = Writes::default();
        w.note(&sent(true, vec![begin.clone()], false), b'T');
        w.note(&sent(true, vec![], false), b'T');
        assert!(!w.unlocated && w.in_transaction, "not committed yet");
        w.note(&sent(true, vec![SessionEffect::Commit], false), b'I');
        assert!(w.unlocated && !w.in_transaction);

        // BEGIN; INSERT; then an error and ROLLBACK.
        let mut w = Writes::default();
        w.note(&sent(true, vec![begin.clone()], false), b'T');
        w.note(&sent(true, vec![], false), b'E');
        w.note(&sent(true, vec![SessionEffect::Rollback], true), b'I');
        assert!(!w.unlocated && !w.in_transaction, "rolled back");

        // One string that commits and opens another transaction, then a
        // ROLLBACK of only the second: the first still counts.
        let mut w = Writes::default();
        w.note(
            &sent(
                true,
                vec![begin.clone(), SessionEffect::Commit, begin],
                false,
            ),
            b'T',
        );
        w.note(&sent(true, vec![SessionEffect::Rollback], true), b'I');
        assert!(w.unlocated);
    }
}

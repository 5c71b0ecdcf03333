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
//!
//! A read whose server connection breaks or stalls before any of its reply
//! went out is sent again elsewhere, and a server connection lost outside
//! a transaction does not end the session ([`super::retry`]); one lost in
//! a transaction neither: the transaction is replayed (opt-in) or the
//! client told it is lost (`session/replay_txn.rs`).
//!
//! This file is the loop: it moves bytes and reacts to events. The parts
//! it drives own the rest: [`super::collect`] turns client frames into
//! batches, [`crate::route`] decides where each goes, [`super::link`] keeps
//! the server connection and its requests, [`super::state`] the session's
//! own state; the request path in call order is in `session/dispatch.rs`,
//! lost and stalled connections in `session/retry.rs`.

mod clock;
mod connect;
mod dispatch;
mod finish;
mod io;
mod reads;
mod replay_txn;
mod retry;
mod tally;

use clock::{ClientClock, Watch};
use connect::pool_keys;
use dispatch::Outcome;
use io::{client_read, server_read, server_write, write_now};
use tally::Tally;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, Span};

use super::classifier::Classifier;
use super::collect::Collector;
use super::link::{Answer, LinkIo, Phase, ServerLink};
use super::on_wake::OnWake;
use super::registry::{Client, ClientState};
use super::state::SessionState;
use super::{ConfigCache, Connected, Shared};
use crate::backend;
use crate::backend::pool::PoolKey;
use crate::protocol::{messages, ScanError, Sqlstate, TxnStatus};
use crate::tls::{ReadHalf, WriteHalf};
use crate::topology::TopologyCache;

/// Stop reading the server while this much is waiting to be written to the
/// client: backpressure instead of unbounded buffering.
const HIGH_WATER: usize = 256 * 1024;
/// How long a closing session may take to deliver its last words.
const FINAL_FLUSH: Duration = Duration::from_secs(5);
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);
const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

/// Why a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    ClientTerminated,
    ClientGone,
    ServerGone,
    ClientProtocolError,
    /// Idle outside a transaction past `client_idle_timeout_ms`.
    IdleTimeout,
    /// Between transactions during the drain, or still open when it ran out.
    Shutdown,
}

/// What woke the relay loop.
enum Event {
    WroteClient(std::io::Result<usize>),
    WroteServer(std::io::Result<usize>),
    ReadServer(std::io::Result<usize>),
    ReadClient(std::io::Result<usize>),
    /// A node was fenced or the epoch moved (the receiver, to wait again).
    Fenced(tokio::sync::watch::Receiver<u64>),
    /// A read has had no reply for `routing.replica_stall_ms`.
    Stalled,
    /// The client's clock ran out on what it timed.
    ClientClock(Watch),
    /// The proxy began draining.
    Drain,
    Shutdown,
}

/// The client's half of the relay (plain TCP or TLS).
pub struct ClientIo {
    pub rd: ReadHalf,
    pub wr: WriteHalf,
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
    /// How the session proves `server_user` to every node (in memory only).
    pub server_secret: Option<crate::backend::ServerSecret>,
    /// Every startup parameter sent to servers (user included).
    pub params: Vec<(String, String)>,
    pub database: String,
}

/// One client's session: the relay loop's state, in parts that each own
/// one concern.
pub struct Session {
    id: u64,
    shared: Arc<Shared>,
    /// The topology snapshot and the settings in force, as of the last
    /// look (one atomic load each while nothing new was published).
    topology: TopologyCache,
    config: ConfigCache,
    span: Span,
    client: ClientIo,
    /// How client frames become batches.
    collector: Collector,
    classifier: Classifier,
    /// The server connection and its bookkeeping.
    link: ServerLink,
    /// Settings, prepared statements, pins, read choices, write positions.
    state: SessionState,
    login: SessionLogin,
    /// Pool keys of every node, in topology order.
    keys: Vec<PoolKey>,
    /// Reads being sent again, and the stall timer.
    retry: retry::Retry,
    /// The open transaction's record for replay, and what is owed since
    /// one was lost.
    txn: replay_txn::Txn,
    /// The proxy is draining: the session ends at its next transaction boundary.
    draining: bool,
    /// Where the console sees what the session is doing.
    pub(super) listed: Arc<Client>,
    /// What the session did, for its last log line.
    tally: Tally,
}

impl Session {
    pub fn new(
        id: u64,
        shared: Arc<Shared>,
        client: ClientIo,
        connected: Connected,
        classifier: Classifier,
        (listed, span): (Arc<Client>, Span),
    ) -> Session {
        let mut client = client;
        // The login's buffers go: a session that sits idle holds none until
        // its client sends something (see `client_read`).
        if client.inbuf.is_empty() {
            client.inbuf = BytesMut::new();
        }
        if client.out.is_empty() {
            client.out = BytesMut::new();
        }
        let Connected {
            server,
            node,
            cancel,
            login,
        } = connected;
        let mut topology = shared.topology.cache();
        let mut config = shared.config_cache();
        let keys = pool_keys(topology.load(), &login, &shared.pool);
        let settings = config.load();
        Session {
            id,
            collector: Collector::new(settings.proxy.max_message_size),
            classifier,
            link: ServerLink::new(server, node, cancel, shared.topology.fence_changes()),
            retry: retry::Retry::new(settings),
            txn: replay_txn::Txn::new(settings.failover.replay_limit()),
            topology,
            config,
            shared,
            span,
            client,
            login,
            keys,
            state: SessionState::default(),
            draining: false,
            listed,
            tally: Tally::default(),
        }
    }

    /// Relays until either side ends the session.
    pub async fn run(mut self) -> End {
        let end = self.relay().await;
        let reusable = self.server_reusable(&end);
        self.finish(&end, reusable).await;
        if let Some(node) = self.link.node() {
            self.shared.loads.done(node, self.link.outstanding());
        }
        self.tell_counters();
        if reusable {
            self.release();
        }
        drop(self.link.detach());
        if self.state.is_stateful() {
            tokio::spawn(self.shared.pool.clone().release_owner(self.id));
        }
        let c = &self.listed;
        info!(
            parent: &self.span,
            user = %c.user,
            database = %c.database,
            client = %c.addr,
            duration_ms = c.started.elapsed().as_millis() as u64,
            queries = self.tally.requests,
            bytes_in = self.tally.bytes_in,
            bytes_out = self.tally.bytes_out,
            ?end,
            "session ended"
        );
        end
    }

    /// A server connection can serve another client when this one left it
    /// idle: outside a transaction, nothing in flight, nothing half-sent.
    fn server_reusable(&self, end: &End) -> bool {
        matches!(
            end,
            End::ClientTerminated | End::ClientGone | End::IdleTimeout
        ) && self.link.quiet()
            && !self.collector.continues()
            && !self.link.fatal_seen()
    }

    async fn relay(&mut self) -> End {
        // The startup connection is not the client's until it asks for something.
        self.maybe_release();
        // Made once: re-arming a watch waiter on every message costs more than the rest of the loop.
        let mut shutdown = self.shared.shutdown.clone();
        let mut drain = self.shared.drain.subscribe();
        let stop = async move {
            tokio::select! {
                _ = shutdown.wait_for(|stopping| *stopping) => Event::Shutdown,
                _ = drain.wait_for(|draining| *draining) => Event::Drain,
            }
        };
        let mut stop = OnWake::new(stop);
        let mut clock = ClientClock::new(&self.config.load().proxy);
        loop {
            if self.draining && self.between() {
                return End::Shutdown;
            }
            if let Err(end) = self.advance().await {
                return end;
            }
            self.publish_state();
            match self.step(&mut stop, &mut clock).await {
                Err(end) => return end,
                Ok(false) => {}
                // A session in a transaction or a query finishes it; only
                // the end of the drain stops it now.
                Ok(true) => {
                    debug!(parent: &self.span, "draining: ending at the transaction's end");
                    self.draining = true;
                    let mut shutdown = self.shared.shutdown.clone();
                    stop = OnWake::new(async move {
                        let _ = shutdown.wait_for(|stopping| *stopping).await;
                        Event::Shutdown
                    });
                }
            }
        }
    }

    /// Tells the console what the session is doing now.
    fn publish_state(&self) {
        let state = match self.link.phase() {
            Phase::Busy { .. } => ClientState::Active,
            Phase::Ready(TxnStatus::Idle) => ClientState::Idle,
            Phase::Ready(TxnStatus::InTransaction) => ClientState::IdleInTransaction,
            Phase::Ready(TxnStatus::Failed) => ClientState::IdleInFailed,
        };
        self.listed.publish(state, self.link.node());
    }

    /// Between transactions, with every request answered and no batch half
    /// received: a session the drain may end.
    fn between(&self) -> bool {
        self.link.phase() == Phase::Ready(TxnStatus::Idle)
            && self.link.settled()
            && !self.collector.continues()
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
        let io = self.link.io();
        if let Some(wr) = io.write {
            if write_now(wr, io.out).is_err() {
                self.server_lost()?;
            }
        }
        super::shed(self.link.out());
        self.pay_owed_cancel();
        let wrote =
            write_now(&mut self.client.wr, &mut self.client.out).map_err(|_| End::ClientGone)?;
        self.tally.bytes_out += wrote as u64;
        super::shed(&mut self.client.out);
        Ok(())
    }

    /// Sends a cancel that arrived while connecting, once the batch it was
    /// meant for has reached the server (earlier, it would stop nothing).
    fn pay_owed_cancel(&mut self) {
        if let Some(target) = self.link.owed_cancel() {
            debug!(parent: &self.span, "passing on a cancel that came while connecting");
            let tls = self.shared.pool.tls().clone();
            tokio::spawn(async move {
                let _ =
                    backend::cancel(&target.host, target.port, target.key, &tls, CANCEL_TIMEOUT)
                        .await;
            });
        }
    }

    /// Waits for the next thing that can happen and handles it; `Ok(true)`
    /// when the drain began.
    async fn step(
        &mut self,
        stop: &mut OnWake<Event>,
        clock: &mut ClientClock,
    ) -> Result<bool, End> {
        let Session {
            client,
            link,
            collector,
            retry,
            ..
        } = self;
        let attached = link.node().is_some();
        // Until a batch is due the collector has taken every whole frame,
        // so what is left is part of one frame, capped at max_message_size
        // by its length: keep reading (a message over any buffer mark must
        // still arrive whole, and a client leaving mid-message must be seen).
        let read_client = !collector.is_due();
        let read_server = client.out.len() < HIGH_WATER;
        // Between transactions with every request answered.
        let between = link.phase() == Phase::Ready(TxnStatus::Idle)
            && link.settled()
            && !collector.continues();
        let LinkIo {
            read: server_rd,
            write: server_wr,
            out: to_server,
            fences,
        } = link.io();
        let write_server = !to_server.is_empty();
        let timed = clock.watch(if read_client && !client.inbuf.is_empty() {
            Watch::Partial
        } else if read_client && between && client.out.is_empty() && !write_server {
            Watch::Idle
        } else {
            Watch::Off
        });
        let event = tokio::select! {
            biased;
            r = client.wr.write(&client.out), if !client.out.is_empty() => Event::WroteClient(r),
            r = server_write(server_wr, to_server), if write_server => Event::WroteServer(r),
            r = server_read(server_rd), if read_server => Event::ReadServer(r),
            r = client_read(&mut client.rd, &mut client.inbuf), if read_client => Event::ReadClient(r),
            fences = fences, if attached => Event::Fenced(fences),
            () = retry.stalled() => Event::Stalled,
            watch = clock.expired(), if timed => Event::ClientClock(watch),
            event = stop => event,
        };
        match event {
            Event::WroteClient(Ok(n)) if n > 0 => {
                self.tally.bytes_out += n as u64;
                self.client.out.advance(n);
                super::shed(&mut self.client.out);
            }
            Event::WroteServer(Ok(n)) if n > 0 => {
                self.link.out().advance(n);
                super::shed(self.link.out());
            }
            Event::ReadServer(Ok(n)) if n > 0 => self.on_server_bytes()?,
            Event::ReadClient(Ok(n)) if n > 0 => {
                self.tally.bytes_in += n as u64;
                clock.heard();
            }
            Event::WroteClient(_) | Event::ReadClient(_) => return Err(End::ClientGone),
            Event::WroteServer(_) | Event::ReadServer(_) => {
                return self.server_lost().map(|()| false)
            }
            Event::Shutdown => return Err(End::Shutdown),
            Event::Drain if self.between() => return Err(End::Shutdown),
            Event::Drain => return Ok(true),
            Event::Fenced(fences) => {
                self.link.rearm_fences(fences);
                return self.leave_fenced_node().map(|()| false);
            }
            Event::Stalled => return self.on_stall().map(|()| false),
            Event::ClientClock(watch) => return Err(self.client_timed_out(watch)),
        }
        Ok(false)
    }

    /// The client's clock ran out: a message left half sent breaks the
    /// protocol (08P01); an idle session ends as PostgreSQL's
    /// `idle_session_timeout` ends it (57P05).
    fn client_timed_out(&mut self, watch: Watch) -> End {
        let proxy = &self.shared.config().proxy;
        if watch == Watch::Partial {
            let message = format!(
                "incomplete message from client: nothing more arrived within client_message_timeout_ms ({} ms)",
                proxy.client_message_timeout_ms
            );
            self.refuse_client_frame(Sqlstate::ProtocolViolation, &message);
            return End::ClientProtocolError;
        }
        debug!(parent: &self.span, idle_ms = proxy.client_idle_timeout_ms, "closing an idle session");
        messages::error(
            &mut self.client.out,
            true,
            Sqlstate::IdleSessionTimeout,
            "terminating connection due to idle-session timeout",
        );
        End::IdleTimeout
    }

    /// The session's server was just fenced (or removed by a reload, and
    /// the session is between transactions): between transactions it moves
    /// on quietly (its next batch goes to the epoch's primary); what is in
    /// flight there is lost with the node, as if the connection had
    /// dropped (see [`Self::server_lost`]).
    fn leave_fenced_node(&mut self) -> Result<(), End> {
        let topology = Arc::clone(self.topology.load());
        let Some(node) = self.link.node() else {
            return Ok(());
        };
        let Some(n) = topology.nodes.get(node).filter(|n| n.fenced || n.removed) else {
            return Ok(());
        };
        let between =
            self.link.phase() == Phase::Ready(TxnStatus::Idle) && !self.collector.continues();
        if n.removed && !between {
            // A node a reload removed still runs: what is under way on it
            // finishes there, and the connection goes back at its end.
            return Ok(());
        }
        info!(parent: &self.span, server = %self.node_name(), epoch = topology.epoch, removed = n.removed, "server fenced or removed");
        if between {
            self.drop_server();
            return Ok(());
        }
        // Requests in flight are lost with the node: a read goes elsewhere,
        // an autocommit write gets an error, a transaction ends.
        self.server_lost()
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
            let start = self.client.out.len();
            match self.link.relay(&mut self.client.out) {
                Ok(Some(answer)) => {
                    self.record_reply(start, Some(answer.status));
                    self.settle(answer);
                }
                Ok(None) => {
                    self.record_reply(start, None);
                    break;
                }
                // Server lengths are only sanity-checked, but a server that
                // breaks framing cannot be relayed any further.
                Err(e) => {
                    info!(parent: &self.span, error = %e, "server sent an invalid frame");
                    return Err(End::ServerGone);
                }
            }
        }
        if self.link.withheld().is_some() {
            // The server said FATAL: its connection is ending.
            return self.server_lost();
        }
        self.arm_stall();
        self.maybe_release();
        Ok(())
    }

    /// One request answered: settle what it changed.
    fn settle(&mut self, answer: Answer) {
        self.shared.loads.done(answer.node, 1);
        self.tally.requests += 1;
        self.retry.tries.settled();
        if answer.status == TxnStatus::Idle {
            self.tell_counters();
        }
        let (Some(sent), Some(conn)) = (answer.sent, self.link.conn_mut()) else {
            return;
        };
        if let Some(due) = sent.due_at.filter(|_| !sent.own_sync) {
            self.shared.counters.answered(due.elapsed());
        }
        if self.state.answered(&sent, answer.status, &mut conn.carried) {
            // Before the client hears of it: any read it sends after sees it.
            self.shared.commits.committed();
        }
        if self.state.take_catalog_changed() {
            self.classifier.functions_changed();
        }
        if answer.status == TxnStatus::Idle {
            self.classifier.idle();
        }
    }

    /// Hands the server connection back to the pool once the session has
    /// left it idle and nothing ties the session to it.
    fn maybe_release(&mut self) {
        let idle = self.link.quiet()
            && self.link.settled()
            && !self.collector.continues()
            && !self.state.is_pinned();
        if idle {
            self.release();
        }
    }

    /// Returns the server connection to the pool, tagged with this session
    /// when it carries the session's state.
    fn release(&mut self) {
        if let Some((mut conn, node)) = self.link.detach() {
            conn.owner = if self.state.is_stateful() { self.id } else { 0 };
            if let Some(key) = self.keys.get(node) {
                self.shared.pool.check_in(key, conn);
            }
        }
    }

    fn node_name(&self) -> String {
        let topology = self.shared.topology.load();
        self.link
            .node()
            .and_then(|node| topology.nodes.get(node))
            .map_or_else(|| "server".to_owned(), |n| n.name.clone())
    }
}

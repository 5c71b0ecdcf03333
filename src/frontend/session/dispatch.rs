//! The request path of a session, in call order: gather client frames into
//! a batch ([`Session::collect`]), decide where it runs
//! ([`Session::decide`], on top of the pure [`crate::route`]), make sure
//! that server connection carries the session's state, and send.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info};

use super::{reads, Phase, Sent, Session, TxnStatus};
use crate::backend::pool::CheckoutError;
use crate::backend::replay::{self, ReplayError};
use crate::backend::ServerConn;
use crate::backend::{ConnectError, Login};
use crate::classify::{Class, Classification, Hint, PinReason, Reason, SessionEffect};
use crate::frontend::batch::Plan;
use crate::frontend::batch::{fingerprint, parse_message, Message};
use crate::frontend::local;
use crate::frontend::state::{settings_delta, Prepared, SessionState};
use crate::protocol::{messages, take_frame, Sqlstate};
use crate::topology::Lsn;

/// A batch bigger than this goes out before its Sync, to the primary, so
/// that a client streaming a huge pipeline is not buffered whole.
const MAX_BATCH: usize = 1 << 20;
const CLOSE_COMPLETE: [u8; 5] = [b'3', 0, 0, 0, 4];

/// Where the batch at hand goes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decision {
    /// The connection the session holds.
    Stay,
    /// Not yet: replies to earlier requests must come back first.
    Hold,
    /// A connection to this node.
    Node(usize),
    /// A replica that may not have replayed `lsn` yet: ask it, and wait.
    Await { node: usize, lsn: Lsn },
    /// A write while a planned switchover holds writes: ask again shortly.
    Pause,
    /// Nowhere: the client gets this error for the batch.
    Refuse(Sqlstate, String),
}

impl Session {
    /// Takes client frames into the batch until one is due.
    pub(super) fn collect(&mut self) -> Result<(), super::End> {
        while !self.batch_due {
            let frame = match take_frame(&mut self.client.inbuf, self.max_message_size) {
                Ok(Some(frame)) => frame.freeze(),
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.refuse_scan(&e)),
            };
            let message = match parse_message(frame[0], &frame[5..]) {
                Ok(m) => m,
                Err(e) => {
                    self.refuse_client_frame(Sqlstate::ProtocolViolation, &e.to_string());
                    return Err(super::End::ClientProtocolError);
                }
            };
            if self.skipping {
                if message == Message::Sync {
                    self.skipping = false;
                    messages::ready_for_query(&mut self.client.out, b'I');
                }
                continue;
            }
            if self.batch.is_empty() {
                self.refresh_volatile();
            }
            match message {
                Message::Terminate => return Err(super::End::ClientTerminated),
                Message::Copy if self.batch.is_empty() => {
                    // COPY data follows the request that started the COPY.
                    if self.server.is_some() {
                        self.to_server.extend_from_slice(&frame);
                    }
                    continue;
                }
                Message::Query { sql } => {
                    match local::parse(sql) {
                        Some(command) if self.plan.messages == 0 => self.plan.local = Some(command),
                        Some(_) => self.plan.local_misplaced = true,
                        None => self.plan_query(sql, &frame),
                    }
                    self.plan.requests += 1;
                    self.batch_due = true;
                }
                Message::Parse { name, sql } => {
                    self.plan.local_misplaced |= local::parse(sql).is_some();
                    let classification = self.classify(sql);
                    self.plan.write |= classification.class == Class::Write;
                    let prepared = Prepared {
                        fingerprint: fingerprint(&frame),
                        source: frame.clone(),
                        classification,
                    };
                    self.plan.parsed.push((name.to_owned(), prepared));
                }
                Message::Bind { portal, statement } => {
                    self.plan_use(statement);
                    self.plan
                        .portals
                        .push((portal.to_owned(), statement.to_owned()));
                }
                Message::Describe {
                    statement: Some(statement),
                } => self.plan_use(statement),
                Message::Execute { portal } => {
                    let executed = self.plan.portal(portal).and_then(|statement| {
                        self.plan
                            .parsed(statement)
                            .or_else(|| self.state.statement(statement))
                            .map(|p| Arc::clone(&p.classification))
                    });
                    match executed {
                        Some(c) => {
                            self.plan.hint(c.hint);
                            self.plan.execute(c.class == Class::Write, &c.effects, 1);
                        }
                        None => self.plan.execute(false, &[], 1),
                    }
                }
                Message::Close { statement } => {
                    self.plan.closes += 1;
                    if let Some(statement) = statement {
                        self.plan.closed.push(statement.to_owned());
                    }
                }
                Message::Sync => {
                    self.plan.requests += 1;
                    self.batch_due = true;
                }
                Message::Flush => self.batch_due = true,
                // A function call or anything unknown: the primary judges it.
                Message::Other => self.plan.write = true,
                Message::Copy | Message::Describe { .. } => {}
            }
            self.plan.messages += 1;
            self.batch.extend_from_slice(&frame);
            if self.batch.len() > MAX_BATCH {
                self.plan.write = true;
                self.batch_due = true;
            }
        }
        Ok(())
    }

    /// Picks up a newer VOLATILE function list, dropping classifications
    /// made with the old one.
    fn refresh_volatile(&mut self) {
        let published = self.shared.catalog.published();
        if published == self.catalog_seen {
            return;
        }
        self.catalog_seen = published;
        if let Some(current) = self.shared.catalog.current(&self.login.database) {
            if current.generation != self.volatile.generation {
                self.volatile = current;
                self.cache.clear();
            }
        }
    }

    /// Classifies (or recalls) one statement string.
    fn classify(&mut self, sql: &str) -> Arc<Classification> {
        let c = self.cache.get_or_classify(sql, &self.volatile.names);
        if c.reason == Reason::Unparsable {
            self.shared.unparsable.fetch_add(1, Ordering::Relaxed);
            debug!(parent: &self.span, sql, "statement not understood; it runs on the primary");
        }
        c
    }

    fn plan_query(&mut self, sql: &str, frame: &Bytes) {
        let c = self.classify(sql);
        self.plan.has_query = true;
        self.plan.hint(c.hint);
        self.plan.local_misplaced |= c.effects.iter().any(|e| match e {
            SessionEffect::Set { name, .. } | SessionEffect::Reset { name: Some(name) } => {
                local::is_proxy_setting(name)
            }
            _ => false,
        });
        let mut write = c.class == Class::Write;
        if let Reason::ExecutePrepared(name) = &c.reason {
            // EXECUTE runs whatever was prepared: route by that.
            let prepared = self.state.statement(name).map(|p| p.classification.class);
            let only_execute =
                c.statements == 1 && c.effects.is_empty() && c.hint != Some(Hint::Primary);
            if only_execute && prepared == Some(Class::Read) {
                write = false;
            }
            if prepared.is_some() {
                self.plan.need(name);
            }
        }
        let mut texts = None;
        for effect in &c.effects {
            if let SessionEffect::Prepare { name, class } = effect {
                // Replayed as the client's own string when it is the only
                // statement, else as the PREPARE alone.
                let source = if c.statements == 1 {
                    Some(frame.clone())
                } else {
                    texts
                        .get_or_insert_with(|| crate::classify::prepare_texts(sql))
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, text)| query_frame(text))
                };
                let Some(source) = source else {
                    // Nothing recreates it alone: the session stays put.
                    self.plan
                        .effects
                        .push(SessionEffect::Pin(PinReason::Explicit));
                    continue;
                };
                let prepared = Prepared {
                    fingerprint: fingerprint(&source),
                    source,
                    classification: Arc::new(Classification {
                        class: *class,
                        reason: Reason::ExecutePrepared(name.clone()),
                        hint: None,
                        effects: Vec::new(),
                        statements: 1,
                    }),
                };
                self.plan.parsed.push((name.clone(), prepared));
            }
        }
        if matches!(&c.reason, Reason::SideEffectFunction(f) if f == "set_config") {
            // Session state we cannot replay.
            self.plan
                .effects
                .push(SessionEffect::Pin(PinReason::Explicit));
        }
        self.plan.execute(write, &c.effects, c.statements);
    }

    /// The batch uses a prepared statement it did not create itself.
    fn plan_use(&mut self, statement: &str) {
        if let Some(p) = self.plan.parsed(statement) {
            self.plan.write |= p.classification.class == Class::Write;
            return;
        }
        match self.state.statement(statement) {
            Some(p) => {
                self.plan.write |= p.classification.class == Class::Write;
                self.plan.need(statement);
            }
            // The server will say it does not exist; the primary is as good as any.
            None => self.plan.write = true,
        }
    }

    /// Sends the due batch where it belongs. `false` when it has to wait
    /// for replies to earlier requests.
    pub(super) async fn dispatch(&mut self) -> Result<bool, super::End> {
        if (self.plan.local.is_some() || self.plan.local_misplaced) && !self.open_batch {
            if matches!(self.phase, Phase::Busy { .. }) {
                // Its answer must not overtake replies still due.
                return Ok(false);
            }
            self.answer_local().await;
            // Locating the last write may have taken a connection.
            self.maybe_release();
            return Ok(true);
        }
        if self.reload_functions && self.phase == Phase::Ready(TxnStatus::Idle) {
            self.reload_functions = false;
            self.volatile = self.shared.catalog.reload(&self.login.database).await;
            self.cache.clear();
            self.requalify()?;
            if !self.batch_due {
                return Ok(false);
            }
        }
        if self.server.is_none() && self.plan.only_closes() {
            // Between transactions nothing needs a server for this: closed
            // statements are forgotten here, and their copies on pooled
            // connections are closed when the name is prepared again.
            for name in self.plan.closed.drain(..) {
                self.state.close(&name);
            }
            for _ in 0..self.plan.closes {
                self.client.out.extend_from_slice(&CLOSE_COMPLETE);
            }
            self.clear_batch();
            messages::ready_for_query(&mut self.client.out, b'I');
            return Ok(true);
        }
        if self.needs_write_lsn() && !self.learn_write_lsn().await {
            return Ok(true);
        }
        let mut decision = self.decide_past_pause().await;
        if let Decision::Await { node, lsn } = decision {
            let held = self.server.as_ref().map(|s| s.node);
            decision = if held != Some(node) && !self.connect_to(node).await {
                return Ok(true);
            } else if self.await_replay(lsn).await {
                Decision::Stay
            } else {
                // Another replica may be shown fresh by now; else on_no_replica.
                let topology = self.shared.topology.load();
                let level = self.read_level().unwrap_or_default();
                match self.fresh_target(&topology, level, self.shared.peek_ticket()) {
                    Decision::Node(node) if self.server.as_ref().map(|s| s.node) == Some(node) => {
                        Decision::Stay
                    }
                    other => other,
                }
            };
        }
        match decision {
            Decision::Hold => return Ok(false),
            Decision::Refuse(state, message) => {
                self.refuse_batch(state, &message);
                return Ok(true);
            }
            Decision::Node(node) => {
                if !self.connect_to(node).await {
                    return Ok(true);
                }
            }
            Decision::Stay | Decision::Await { .. } | Decision::Pause => {}
        }
        if let Some(att) = &self.server {
            if !self.plan.write && self.plan.begin.is_none() {
                self.warn_if_cut_off(att.node);
            }
        }
        if !self.open_batch && !self.bring_state().await? {
            return Ok(true);
        }
        self.send();
        Ok(true)
    }

    /// After a reload of the VOLATILE list, classify the waiting batch
    /// again: its frames go back in front of the unread input.
    fn requalify(&mut self) -> Result<(), super::End> {
        let mut input = bytes::BytesMut::with_capacity(self.batch.len() + self.client.inbuf.len());
        input.extend_from_slice(&self.batch);
        input.extend_from_slice(&self.client.inbuf);
        self.client.inbuf = input;
        self.clear_batch();
        self.collect()
    }

    pub(super) fn clear_batch(&mut self) {
        self.batch.clear();
        self.plan.clear();
        self.batch_due = false;
    }

    /// [`Self::decide`], waiting out a planned switchover's pause (at most
    /// the failover timeout and a second): the write then goes to the new
    /// primary instead of failing.
    async fn decide_past_pause(&self) -> Decision {
        let limit = self.shared.config.failover.failover_timeout() + Duration::from_secs(1);
        let deadline = Instant::now() + limit;
        loop {
            match self.decide() {
                Decision::Pause if Instant::now() < deadline => {
                    tokio::time::sleep(reads::PAUSE_POLL).await;
                }
                Decision::Pause => {
                    return Decision::Refuse(
                        Sqlstate::ConnectionFailure,
                        format!("writes stayed paused for a switchover longer than {limit:?}"),
                    )
                }
                other => return other,
            }
        }
    }

    /// Where the due batch runs.
    fn decide(&self) -> Decision {
        if self.open_batch {
            return Decision::Stay;
        }
        let topology = self.shared.topology.load();
        let held = self.server.as_ref().map(|s| s.node);
        match (self.phase, held) {
            (Phase::Ready(TxnStatus::InTransaction | TxnStatus::Failed), Some(_)) => {
                return Decision::Stay
            }
            (Phase::Busy { .. }, Some(node)) => {
                let on_primary = topology.primary() == Some(node);
                // Catching a connection up needs it to itself: not while replies are due.
                let lacks = self
                    .server
                    .as_ref()
                    .is_some_and(|s| !Catchup::of(&self.state, &self.plan, &s.conn).is_empty());
                let fits = on_primary || (!self.plan.write && self.plan.begin.is_none());
                return if fits && !lacks {
                    Decision::Stay
                } else {
                    Decision::Hold
                };
            }
            _ => {}
        }
        let decision = match self.read_level() {
            Some(level) => self.read_target(&topology, level),
            None => reads::write_target(&topology),
        };
        match decision {
            Decision::Node(node) if held == Some(node) => Decision::Stay,
            other => other,
        }
    }

    /// Swaps the session's server connection for one to `node`. `false`
    /// when none could be had (the client has been told).
    pub(super) async fn connect_to(&mut self, node: usize) -> bool {
        self.release();
        self.cancel.connecting();
        let Some(key) = self.keys.get(node) else {
            self.refuse_batch(Sqlstate::Internal, "node missing from the session's keys");
            return false;
        };
        let login = Login {
            user: &self.login.server_user,
            password: self.login.server_password.as_deref(),
            params: &self.login.params,
        };
        match self.shared.pool.checkout(key, self.id, &login).await {
            Ok(conn) => {
                self.attach(conn, node);
                true
            }
            Err(e) => {
                self.cancel.set_target(None);
                let state = match &e {
                    CheckoutError::Exhausted { .. } => Sqlstate::TooManyConnections,
                    CheckoutError::Connect(ConnectError::Refused { .. }) => {
                        Sqlstate::UnableToConnect
                    }
                    CheckoutError::Connect(_) => Sqlstate::UnableToConnect,
                };
                info!(parent: &self.span, node, error = %e, "no server connection for a batch");
                self.refuse_batch(state, &e.to_string());
                false
            }
        }
    }

    /// Replays on the session's connection the settings and prepared
    /// statements the batch needs and the connection lacks. `false` when
    /// the batch was refused instead.
    async fn bring_state(&mut self) -> Result<bool, super::End> {
        let Some(att) = self.server.as_mut() else {
            return Ok(true);
        };
        let catchup = Catchup::of(&self.state, &self.plan, &att.conn);
        if catchup.is_empty() {
            return Ok(true);
        }
        let Catchup {
            settings,
            stale,
            statements,
        } = catchup;
        let wanted = self.state.settings();
        let result = replay::replay(&mut att.conn, settings, wanted, &stale, &statements).await;
        drop((stale, statements));
        let in_transaction = self.phase != Phase::Ready(TxnStatus::Idle);
        let Err(e) = result else {
            return Ok(true);
        };
        debug!(parent: &self.span, error = %e, "the session's state could not be restored");
        if in_transaction {
            if let ReplayError::Refused(error) = e {
                self.client.out.extend_from_slice(&error);
            }
            // The connection's state is unknown now: it is closed, not pooled.
            self.drop_server();
            return Err(super::End::ServerGone);
        }
        self.give_up_server(e);
        Ok(false)
    }

    /// Sends the due batch on the session's connection, noting what it changes.
    fn send(&mut self) {
        let plan = &mut self.plan;
        let Some(att) = self.server.as_mut() else {
            return;
        };
        let continuing = self.open_batch;
        if plan.has_query {
            att.conn.prepared.remove("");
            self.state.close("");
        }
        for name in plan.closed.drain(..) {
            att.conn.prepared.remove(&name);
            self.state.close(&name);
        }
        let mut parsed = Vec::with_capacity(plan.parsed.len());
        for (name, prepared) in plan.parsed.drain(..) {
            att.conn.prepared.insert(name.clone(), prepared.fingerprint);
            parsed.push((name.clone(), prepared.fingerprint));
            self.state.prepare(name, prepared);
        }
        for effect in &plan.effects {
            if let SessionEffect::Pin(reason) = effect {
                self.state.pin(*reason);
            }
        }
        let topology = self.shared.topology.load();
        let reads_only =
            !plan.write && plan.begin.is_none() && self.phase == Phase::Ready(TxnStatus::Idle);
        // Where a write lands in the WAL is learned when a read needs it.
        let on_primary = topology.primary() == Some(att.node) && !reads_only;
        let rolls_back = plan.statements == 1 && plan.effects == [SessionEffect::Rollback];
        self.to_server.extend_from_slice(&self.batch);
        self.batch.clear();
        self.batch_due = false;
        let requests = plan.requests;
        self.shared.loads.sent(att.node, requests);
        let effects = std::mem::take(&mut plan.effects);
        match self.inflight.back_mut().filter(|_| continuing) {
            Some(sent) => {
                sent.effects.extend(effects);
                sent.parsed.extend(parsed);
                sent.on_primary |= on_primary;
                sent.rolls_back = false;
            }
            None => self.inflight.push_back(Sent {
                effects,
                parsed,
                on_primary,
                rolls_back,
                ..Sent::default()
            }),
        }
        self.open_batch = requests == 0;
        if requests > 0 {
            self.phase = match self.phase {
                Phase::Busy { outstanding } => Phase::Busy {
                    outstanding: outstanding + requests,
                },
                Phase::Ready(_) => Phase::Busy {
                    outstanding: requests,
                },
            };
        }
        plan.clear();
    }

    /// The batch cannot run: the client gets an error and, if the batch is
    /// whole, ReadyForQuery; otherwise its frames are dropped up to Sync.
    pub(super) fn refuse_batch(&mut self, state: Sqlstate, message: &str) {
        messages::error(&mut self.client.out, false, state, message);
        self.refuse_batch_quietly();
    }

    pub(super) fn refuse_batch_quietly(&mut self) {
        let whole = self.plan.requests > 0;
        if whole {
            messages::ready_for_query(&mut self.client.out, b'I');
        } else {
            self.skipping = true;
        }
        self.clear_batch();
    }

    /// Closes the session's server connection without pooling it.
    pub(super) fn drop_server(&mut self) {
        if let Some(att) = self.server.take() {
            self.cancel.set_target(None);
            drop(att);
        }
    }
}

/// What a connection must be told before it can serve the batch at hand.
struct Catchup<'a> {
    /// The settings delta, when its settings differ from the session's.
    settings: Option<String>,
    /// Names the batch prepares anew that the connection still holds.
    stale: Vec<&'a str>,
    /// Statements the batch uses that the connection lacks.
    statements: Vec<replay::Statement<'a>>,
}

impl<'a> Catchup<'a> {
    fn of(state: &'a SessionState, plan: &'a Plan, conn: &ServerConn) -> Catchup<'a> {
        let settings = if conn.settings != state.settings() {
            settings_delta(&conn.settings, state.settings())
        } else {
            None
        };
        let statements = plan
            .needs
            .iter()
            .filter_map(|name| {
                let p = state.statement(name)?;
                (conn.prepared.get(name) != Some(&p.fingerprint)).then_some(replay::Statement {
                    name,
                    fingerprint: p.fingerprint,
                    source: &p.source,
                })
            })
            .collect();
        let stale = plan
            .parsed
            .iter()
            .filter(|(name, _)| !name.is_empty() && conn.prepared.contains_key(name))
            .map(|(name, _)| name.as_str())
            .collect();
        Catchup {
            settings,
            stale,
            statements,
        }
    }

    fn is_empty(&self) -> bool {
        self.settings.is_none() && self.stale.is_empty() && self.statements.is_empty()
    }
}

/// A simple Query message holding `sql`.
fn query_frame(sql: &str) -> Bytes {
    let mut frame = bytes::BytesMut::with_capacity(sql.len() + 6);
    messages::query(&mut frame, sql);
    frame.freeze()
}

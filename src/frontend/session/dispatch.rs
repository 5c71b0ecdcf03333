//! The request path of a session, in call order: gather client frames into
//! a batch ([`Session::collect`], driving the pure collector), decide where
//! it runs ([`Session::decide`] hands the facts to [`crate::route::decide`])
//! and do what the decision says ([`Session::reach_target`]), make sure
//! that server connection carries the session's state, and send.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, Span};

use super::{reads, Session};
use crate::backend::replay::{self, ReplayError};
use crate::backend::Carried;
use crate::classify::{Classification, Reason, SessionEffect};
use crate::frontend::batch::Plan;
use crate::frontend::classifier::{Classifier, TextFrom};
use crate::frontend::collect::{CollectError, Collected, Judge};
use crate::frontend::counters::{self, Waited};
use crate::frontend::link::{is_fatal, Phase, Sent};
use crate::frontend::registry::ClientState;
use crate::frontend::state::{Catchup, Prepared, SessionState};
use crate::frontend::Shared;
use crate::protocol::{messages, Sqlstate, TxnStatus};
use crate::route::{self, BatchFacts, Decision, NoRoute, Purpose, SessionFacts, Tried, Wait};

const CLOSE_COMPLETE: [u8; 5] = [b'3', 0, 0, 0, 4];

/// What [`Session::dispatch`] did with the due batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Sent to a server.
    Sent,
    /// The client was told why it cannot run.
    Refused,
    /// The proxy answered it itself.
    Answered,
    /// Not yet: replies to earlier requests must come back first, or the
    /// batch needs more client input.
    Waiting,
}

/// What became of catching a connection up with the session's state.
enum Brought {
    Ready,
    /// The batch was refused (the client has been told).
    Refused,
    /// The connection (to this node) broke: the batch goes elsewhere.
    Lost(Option<usize>),
}

/// What the collector asks while it plans a batch, answered from the
/// session's classifier and prepared statements.
struct Judging<'a> {
    classifier: &'a mut Classifier,
    state: &'a SessionState,
    shared: &'a Shared,
    span: &'a Span,
}

impl Judge for Judging<'_> {
    fn batch_starts(&mut self) {
        self.classifier.refresh();
    }

    fn classify(&mut self, sql: &str, from: TextFrom) -> Arc<Classification> {
        let c = self.classifier.classify(sql, from);
        if c.reason == Reason::Unparsable {
            self.shared.unparsable.fetch_add(1, Ordering::Relaxed);
            debug!(parent: self.span, sql, "statement not understood; it runs on the primary");
        }
        c
    }

    fn statement(&self, name: &str) -> Option<&Prepared> {
        self.state.statement(name)
    }
}

impl Session {
    /// Takes client frames into the batch until one is due or the input
    /// runs out.
    pub(super) fn collect(&mut self) -> Result<(), super::End> {
        loop {
            let mut judge = Judging {
                classifier: &mut self.classifier,
                state: &self.state,
                shared: &self.shared,
                span: &self.span,
            };
            match self.collector.collect(&mut self.client.inbuf, &mut judge) {
                Ok(Collected::Due | Collected::NeedInput) => return Ok(()),
                Ok(Collected::Copy(frame)) => {
                    // COPY data is not a request: it cannot be replayed.
                    self.txn.record.spoil();
                    if self.link.node().is_some() {
                        self.link.out().extend_from_slice(&frame);
                    }
                }
                Ok(Collected::Synced) => messages::ready(&mut self.client.out, TxnStatus::Idle),
                Ok(Collected::Terminate) => return Err(super::End::ClientTerminated),
                Err(CollectError::Frame(e)) => return Err(self.refuse_scan(&e)),
                Err(CollectError::Malformed(e)) => {
                    self.refuse_client_frame(Sqlstate::ProtocolViolation, &e.to_string());
                    return Err(super::End::ClientProtocolError);
                }
            }
        }
    }

    /// Sends the due batch where it belongs.
    pub(super) async fn dispatch(&mut self) -> Result<Outcome, super::End> {
        if let Some(outcome) = self.recover_transaction().await {
            return Ok(outcome);
        }
        let plan = self.collector.plan();
        if (plan.local.is_some() || plan.local_misplaced) && !self.collector.continues() {
            if matches!(self.link.phase(), Phase::Busy { .. }) {
                // Its answer must not overtake replies still due.
                return Ok(Outcome::Waiting);
            }
            Box::pin(self.answer_local()).await;
            // Locating the last write may have taken a connection.
            self.maybe_release();
            return Ok(Outcome::Answered);
        }
        if self.link.phase() == Phase::Ready(TxnStatus::Idle) && self.classifier.take_reclassify() {
            // The batch was classified with the old list: collect it again.
            self.collector.unread(&mut self.client.inbuf);
            self.collect()?;
            if !self.collector.is_due() {
                return Ok(Outcome::Waiting);
            }
        }
        if self.link.node().is_none() && self.collector.plan().only_closes() {
            // Between transactions nothing needs a server for this: closed
            // statements are forgotten here, and their copies on pooled
            // connections are closed when the name is prepared again.
            let plan = self.collector.plan_mut();
            for name in plan.closed.drain(..) {
                self.state.close(&name);
            }
            for _ in 0..plan.closes {
                self.client.out.extend_from_slice(&CLOSE_COMPLETE);
            }
            self.collector.finish_unsent();
            messages::ready(&mut self.client.out, TxnStatus::Idle);
            return Ok(Outcome::Answered);
        }
        if self.shared.pause.is_on()
            && self.link.phase() == Phase::Ready(TxnStatus::Idle)
            && !self.collector.continues()
        {
            Box::pin(self.hold()).await?;
        }
        self.tally.due_at.get_or_insert_with(Instant::now);
        if let Some(outcome) = self.reach_ready().await? {
            if !matches!(outcome, Outcome::Waiting) {
                self.tally.due_at = None;
            }
            return Ok(outcome);
        }
        self.send();
        Ok(Outcome::Sent)
    }

    /// The console paused new transactions: waits for `RESUME`, or ends
    /// the session if the proxy drains meanwhile.
    async fn hold(&mut self) -> Result<(), super::End> {
        debug!(parent: &self.span, "paused: holding the next transaction until RESUME");
        let listed = self.listed.clone();
        listed.publish(ClientState::Paused, self.link.node());
        let mut drain = self.shared.drain.subscribe();
        let drained = async move {
            let _ = drain.wait_for(|draining| *draining).await;
        };
        tokio::select! {
            () = self.shared.pause.resumed() => Ok(()),
            () = drained => Err(super::End::Shutdown),
        }
    }

    /// Gets the session onto the due batch's connection with the state the
    /// batch needs there. A connection lost while catching up (nothing of
    /// the batch sent yet) is left for another one, as a lost read's would
    /// be. `None` once the batch may be sent.
    async fn reach_ready(&mut self) -> Result<Option<Outcome>, super::End> {
        loop {
            if let Some(outcome) = self.reach_target().await {
                return Ok(Some(outcome));
            }
            if let Some(node) = self.link.node() {
                let plan = self.collector.plan();
                if !plan.write && plan.begin.is_none() {
                    self.warn_if_cut_off(node);
                } else {
                    self.warn_if_store_lost();
                }
            }
            if self.collector.continues() {
                return Ok(None);
            }
            match self.bring_state().await? {
                Brought::Ready => return Ok(None),
                Brought::Refused => return Ok(Some(Outcome::Refused)),
                Brought::Lost(node) => self.retry.tries.retried(node),
            }
        }
    }

    /// Gets the session onto the connection [`route::decide`] picks for the
    /// due batch, doing what it says to wait for on the way. `None` once
    /// the session holds that connection; otherwise what became of the batch.
    async fn reach_target(&mut self) -> Option<Outcome> {
        let mut tried = Tried {
            avoid: self.retry.tries.avoid(),
            ..Tried::default()
        };
        // A causal read's wait for a replica, until it ends one way or another.
        let mut waiting = false;
        loop {
            let decision = self.decide(tried);
            match &decision {
                Decision::Primary(_) => {
                    waited(&self.shared.counters, &mut waiting, Waited::Primary)
                }
                Decision::Replica(_) => {
                    waited(&self.shared.counters, &mut waiting, Waited::Replica)
                }
                Decision::Refuse(_) => {
                    waited(&self.shared.counters, &mut waiting, Waited::TimedOut)
                }
                Decision::Wait(Wait::CommitPosition { .. } | Wait::Replay { .. }) => waiting = true,
                _ => {}
            }
            match decision {
                Decision::Stay => return None,
                Decision::Primary(node) => match self.reach_primary(node, &mut tried).await {
                    Some(reached) => return (!reached).then_some(Outcome::Refused),
                    // Gone, with nothing of the batch sent: look again.
                    None => tokio::time::sleep(reads::PAUSE_POLL).await,
                },
                Decision::Move(primary) => return Box::pin(self.move_transaction(primary)).await,
                Decision::Replica(node) => {
                    if self.connect_replica(node).await {
                        return None;
                    }
                    // The next candidate, or what on_no_replica says.
                    if !tried.avoid.insert(node) {
                        return (!self.connect_to(node).await).then_some(Outcome::Refused);
                    }
                }
                Decision::Refuse(reason) => {
                    self.refuse_route(&reason);
                    return Some(Outcome::Refused);
                }
                Decision::Wait(Wait::Replies) => return Some(Outcome::Waiting),
                Decision::Wait(Wait::WritePosition { primary }) => {
                    if !Box::pin(self.learn_write_lsn(primary)).await {
                        return Some(Outcome::Refused);
                    }
                }
                Decision::Wait(Wait::CommitPosition { count, within }) => {
                    tried.commits_waited = !self.shared.commits.sampled(count, within).await;
                }
                Decision::Wait(Wait::Pause { since }) => {
                    tried.paused_since = Some(since);
                    tokio::time::sleep(reads::PAUSE_POLL).await;
                }
                Decision::Wait(Wait::Replay { node, lsn, within }) => {
                    if self.link.node() != Some(node) && !self.connect_replica(node).await {
                        if !tried.avoid.insert(node) {
                            return Some(Outcome::Refused);
                        }
                        continue;
                    }
                    if Box::pin(self.await_replay(lsn, within)).await {
                        waited(&self.shared.counters, &mut waiting, Waited::Replica);
                        return None;
                    }
                    if self.link.node().is_none() {
                        // It did not answer at all: not a candidate again.
                        let _ = tried.avoid.insert(node);
                    }
                    // Another replica may be shown fresh by now; else on_no_replica.
                    tried.replay_waited = true;
                }
            }
        }
    }

    /// What routing makes of the due batch now.
    fn decide(&mut self, tried: Tried) -> Decision {
        let topology = self.topology.load();
        let ready = match self.link.phase() {
            Phase::Ready(status) => Some(status),
            Phase::Busy { .. } => None,
        };
        // Only asked while replies are due: that is when it costs a look.
        let plan = self.collector.plan();
        let continues = self.collector.continues();
        let lacks_state = !continues
            && ready.is_none()
            && self
                .link
                .conn()
                .is_some_and(|conn| !Catchup::of(&self.state, plan, &conn.carried).is_empty());
        let batch = BatchFacts {
            purpose: Purpose::Batch,
            write: plan.write,
            begin: plan.begin,
            txn_needs_primary: plan.txn_needs_primary,
            hint: plan.level,
            executes: plan.executes,
            continues,
            lacks_state,
            tried,
        };
        let session = SessionFacts {
            ready,
            held: self.link.node(),
            pinned: self.state.is_pinned(),
            read_only_default: self.state.read_only_default(),
            serializable_default: self.state.serializable_default(),
            begun_only: self.state.begun_only().is_some(),
            choice: self.state.reads,
            write_lsn: self.state.write_lsn,
            unlocated_writes: self.state.writes.unlocated,
            commits: self.shared.commits.position(),
        };
        let policy = Shared::policy(self.config.load());
        route::decide(
            &batch,
            &session,
            &policy,
            topology,
            &*self.shared,
            Instant::now(),
        )
    }

    /// Moves the open transaction, which has run nothing but its BEGIN on
    /// a replica, to `primary`: ROLLBACK on the replica, then the BEGIN
    /// again on a connection to the primary that carries the session's
    /// state, all with replies the client never sees. `None` once there;
    /// otherwise the batch was refused and the client told that its
    /// transaction is over.
    async fn move_transaction(&mut self, primary: usize) -> Option<Outcome> {
        let begin = self.state.begun_only()?.to_owned();
        debug!(parent: &self.span, primary, "moving a transaction that has only begun to the primary");
        let rolled_back = match self.link.conn_mut() {
            Some(conn) => replay::run(conn, "ROLLBACK").await,
            None => Err(ReplayError::Lost),
        };
        // Whatever follows, the transaction on the replica is over.
        self.link.resume(TxnStatus::Idle);
        self.state
            .settle(&[SessionEffect::Rollback], false, TxnStatus::Idle);
        if let Err(e) = rolled_back {
            self.give_up_server(e);
            return Some(Outcome::Refused);
        }
        if !self.connect_to(primary).await {
            return Some(Outcome::Refused);
        }
        match self.bring_state().await {
            Ok(Brought::Ready) => {}
            Ok(Brought::Lost(_)) => {
                let message = "server connection to the primary was lost";
                self.refuse_batch(Sqlstate::ConnectionFailure, message);
                return Some(Outcome::Refused);
            }
            Ok(Brought::Refused) | Err(_) => return Some(Outcome::Refused),
        }
        let begun = match self.link.conn_mut() {
            Some(conn) => replay::run(conn, &begin).await,
            None => Err(ReplayError::Lost),
        };
        if let Err(e) = begun {
            self.give_up_server(e);
            return Some(Outcome::Refused);
        }
        self.link.resume(TxnStatus::InTransaction);
        let begin_effect = SessionEffect::Begin { read_only: false };
        self.state
            .settle(&[begin_effect], false, TxnStatus::InTransaction);
        None
    }

    /// The batch cannot run anywhere: the client is told why.
    pub(super) fn refuse_route(&mut self, reason: &NoRoute) {
        self.refuse_batch(super::super::refusal_state(reason), &reason.to_string());
    }

    /// Replays on the session's connection the settings and prepared
    /// statements the batch needs and the connection lacks.
    async fn bring_state(&mut self) -> Result<Brought, super::End> {
        let Some(conn) = self.link.conn_mut() else {
            return Ok(Brought::Ready);
        };
        let catchup = Catchup::of(&self.state, self.collector.plan(), &conn.carried);
        if catchup.is_empty() {
            return Ok(Brought::Ready);
        }
        let Catchup {
            settings,
            stale,
            statements,
        } = catchup;
        let wanted = self.state.settings();
        let result = Box::pin(replay::replay(conn, settings, wanted, &stale, &statements)).await;
        drop((stale, statements));
        let in_transaction = self.link.phase() != Phase::Ready(TxnStatus::Idle);
        let Err(e) = result else {
            return Ok(Brought::Ready);
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
        let lost = match &e {
            ReplayError::Lost => true,
            ReplayError::Refused(error) => is_fatal(error.get(5..).unwrap_or_default()),
        };
        if lost && self.retry.tries.left() {
            let node = self.link.node();
            self.drop_server();
            return Ok(Brought::Lost(node));
        }
        self.give_up_server(e);
        Ok(Brought::Refused)
    }

    /// Sends the due batch on the session's connection, noting what it changes.
    fn send(&mut self) {
        let continuing = self.collector.continues();
        let ready_idle = self.link.phase() == Phase::Ready(TxnStatus::Idle);
        // Behind requests that are all outside a transaction (none began one).
        let behind_autocommit = matches!(self.link.phase(), Phase::Busy { .. })
            && self.link.in_flight().all(|s| s.autocommit);
        let Some(node) = self.link.node() else {
            return;
        };
        let starts = self.record_start(node, (ready_idle || behind_autocommit) && !continuing);
        let plan = self.collector.plan_mut();
        let Some(conn) = self.link.conn_mut() else {
            return;
        };
        let parsed = record_statements(plan, &mut conn.carried, &mut self.state);
        // A BEGIN alone between transactions leaves a transaction that
        // may still move; anything else executed means it has run more
        // (preparing and describing run nothing).
        if plan.executes {
            let alone = ready_idle && !continuing && plan.statements == 1;
            self.state.sending(plan.begin_sql.take().filter(|_| alone));
        }
        // The rest of a flushed batch is outside a transaction if its first part was.
        let autocommit = plan.begin.is_none() && (continuing || ready_idle || behind_autocommit);
        let keep = autocommit
            && !continuing
            && !plan.write
            && plan.requests > 0
            && !self.state.is_pinned()
            && (ready_idle || self.link.all_kept());
        let reads_only = !plan.write && plan.begin.is_none() && ready_idle;
        // Where a write lands in the WAL is learned when a read needs it.
        let to_primary = self.topology.load().primary() == Some(node);
        let on_primary = to_primary && !reads_only;
        let why = counters::why(plan, !autocommit, self.state.is_pinned(), to_primary);
        let rolls_back = plan.statements == 1 && plan.effects == [SessionEffect::Rollback];
        let own_sync = ready_idle && self.collector.may_close_with_own_sync();
        let plan = self.collector.plan_mut();
        let requests = plan.requests + u32::from(own_sync);
        let effects = std::mem::take(&mut plan.effects);
        self.shared.loads.sent(node, requests);
        self.shared.counters.routed(node, why, requests);
        let start = self.link.out().len();
        let copy = if own_sync {
            self.collector.sent_with_own_sync(self.link.out());
            None
        } else if keep {
            Some(self.collector.sent_keeping(self.link.out()))
        } else {
            self.collector.sent(self.link.out());
            None
        };
        self.record_request(start, &parsed, continuing, starts);
        let sent = Sent {
            effects,
            parsed,
            on_primary,
            rolls_back,
            own_sync,
            autocommit,
            copy,
            due_at: self.tally.due_at.take(),
            ..Sent::default()
        };
        self.link.sent(sent, requests, continuing);
        self.arm_stall();
    }

    /// The batch cannot run: the client gets an error and, if the batch is
    /// whole, ReadyForQuery; otherwise its frames are dropped up to Sync.
    pub(super) fn refuse_batch(&mut self, state: Sqlstate, message: &str) {
        messages::error(&mut self.client.out, false, state, message);
        self.refuse_batch_quietly();
    }

    pub(super) fn refuse_batch_quietly(&mut self) {
        self.retry.tries.settled();
        if self.collector.finish_unsent() {
            messages::ready(&mut self.client.out, TxnStatus::Idle);
        }
    }

    /// Closes the session's server connection without pooling it.
    pub(super) fn drop_server(&mut self) {
        drop(self.link.detach());
    }
}

/// Counts how a causal read's wait ended, if one was under way.
fn waited(counters: &counters::Counters, waiting: &mut bool, outcome: Waited) {
    if std::mem::take(waiting) {
        counters.waited(outcome);
    }
}

/// Moves what the batch prepares, closes and pins into the session's state
/// and the connection's record; the (name, fingerprint) of each statement
/// it parses, for its request.
fn record_statements(
    plan: &mut Plan,
    carried: &mut Carried,
    state: &mut SessionState,
) -> Vec<(String, u64)> {
    if plan.has_query {
        carried.prepared.remove("");
        state.close("");
    }
    for name in plan.closed.drain(..) {
        carried.prepared.remove(&name);
        state.close(&name);
    }
    let mut parsed = Vec::with_capacity(plan.parsed.len());
    for (name, prepared) in plan.parsed.drain(..) {
        // The record moves to the session's state; the connection and
        // the request only note its name and fingerprint.
        carried.prepared.insert(name.clone(), prepared.fingerprint);
        parsed.push((name.clone(), prepared.fingerprint));
        state.prepare(name, prepared);
    }
    for effect in &plan.effects {
        if let SessionEffect::Pin(reason) = effect {
            state.pin(*reason);
        }
    }
    parsed
}

//! A transaction whose server connection was lost, the I/O half (the
//! record is [`crate::frontend::txn_record`]'s).
//!
//! A COMMIT in flight is never sent again: its outcome is unknown (08007)
//! and the session is outside a transaction. Otherwise, with
//! `failover.transaction_replay` on and the transaction recorded, the
//! requests in flight go back in front of the client's input, and before
//! the next batch runs the transaction is replayed on the primary (a new
//! one after a failover, waited for up to `failover_wait_ms`): the session's
//! state as the transaction found it, then every answered request, each
//! reply's checksum compared with the one the client got. Equal, the batch
//! goes on there as if nothing had happened. Different, failed, or not
//! replayable: the client gets 40001 (08006 with replay off) and is in a
//! failed transaction until it ends it, as PostgreSQL would leave it after
//! an error; its ROLLBACK is answered here. Anything else gets the
//! loss's SQLSTATE again (not PostgreSQL's 25P02: a driver may not have
//! looked at the first error — tokio-postgres ignores the replies to its
//! Close requests — and 40001 is what tells it to retry); a COMMIT gets it
//! and ends the transaction (PostgreSQL would say ROLLBACK, which drivers
//! take for success).

use std::collections::HashMap;
use std::time::Instant;

use tracing::info;

use super::dispatch::Outcome;
use super::{reads, Session};
use crate::backend::replay::{self, ReplayError};
use crate::backend::Carried;
use crate::classify::SessionEffect;
use crate::frontend::link::error_field;
use crate::frontend::txn_record::{Checksum, Lost, Open, Recorder};
use crate::protocol::{messages, Sqlstate, TxnStatus};

const LOST: &str = "connection to the primary was lost; the transaction is rolled back";
const NOT_REPLAYED: &str =
    "the transaction could not be replayed after a failover (its results differ or it was not recorded); it is rolled back";

/// The session's transaction record and what is owed since one was lost.
pub(super) struct Txn {
    pub(super) record: Recorder,
    pending: Pending,
}

enum Pending {
    None,
    /// To replay before the next batch runs.
    Replay {
        open: Open,
        at_loss: Carried,
    },
    /// Lost: the client is in a failed transaction; each request hears
    /// this SQLSTATE until it ends it.
    Aborted(Sqlstate),
}

/// Why a replay did not bring the transaction back.
enum Failed {
    /// The connection it ran on was lost too: try the primary again.
    Lost,
    Differs(String),
}

impl Txn {
    pub(super) fn new(limit: Option<usize>) -> Txn {
        Txn {
            record: Recorder::new(limit),
            pending: Pending::None,
        }
    }
}

impl Session {
    /// The connection holding a transaction broke (and the session may go
    /// on: nothing half relayed, not pinned). See the module's rules.
    pub(super) fn lose_transaction(&mut self) {
        let name = self.node_name();
        if let Some(node) = self.link.node() {
            self.shared.loads.done(node, self.link.outstanding());
        }
        let at_loss = self
            .link
            .conn()
            .map(|c| c.carried.clone())
            .unwrap_or_default();
        let record = self.txn.record.lost();
        let lost = self.link.lose();
        self.retry.tries.settled();
        self.retry.disarm();
        if lost
            .sent
            .iter()
            .any(|s| s.effects.contains(&SessionEffect::Commit))
        {
            info!(parent: &self.span, server = %name, "server connection lost during COMMIT: its outcome is unknown");
            let out = &mut self.client.out;
            for sent in &lost.sent {
                let (state, message) = super::retry::unknown_outcome(sent, &name);
                messages::error(out, false, state, &message);
                messages::ready(out, TxnStatus::Idle);
            }
            self.state
                .settle(&[SessionEffect::Rollback], false, TxnStatus::Idle);
            return;
        }
        let replied = lost.sent.iter().any(|s| s.replied);
        let ended_on_purpose = ended_on_purpose(lost.fatal.as_deref());
        let state = match record {
            _ if ended_on_purpose => Sqlstate::ConnectionFailure,
            // Every request in flight is the transaction's own (none ahead
            // of its BEGIN still waits for its reply).
            Lost::Open { open, in_flight } if !replied && in_flight.len() == lost.sent.len() => {
                info!(parent: &self.span, server = %name, answered = open.entries.len(), in_flight = in_flight.len(), "server connection lost in a transaction: replaying it before the next request");
                self.collector.take_back(&in_flight, &mut self.client.inbuf);
                self.txn.pending = Pending::Replay { open, at_loss };
                return;
            }
            Lost::Off => Sqlstate::ConnectionFailure,
            Lost::Open { .. } | Lost::Spoiled => Sqlstate::SerializationFailure,
        };
        info!(parent: &self.span, server = %name, code = state.code(), "server connection lost in a transaction: it is rolled back");
        self.txn.pending = Pending::Aborted(state);
        for _ in &lost.sent {
            self.tell_aborted(state);
            messages::ready(&mut self.client.out, TxnStatus::Failed);
        }
    }

    /// Before the due batch runs: a lost transaction replayed, or the
    /// batch answered as a failed transaction would answer it. `None` when
    /// the batch goes on as usual.
    pub(super) async fn recover_transaction(&mut self) -> Option<Outcome> {
        match std::mem::replace(&mut self.txn.pending, Pending::None) {
            Pending::None => None,
            Pending::Aborted(state) => self.while_aborted(state),
            Pending::Replay { open, at_loss } => {
                let began = Instant::now();
                match self.replay_transaction(&open, at_loss).await {
                    Ok(()) => {
                        info!(parent: &self.span, requests = open.entries.len(), took_ms = began.elapsed().as_millis() as u64, "transaction replayed on the primary");
                        self.txn.record.resume(open);
                        None
                    }
                    Err(why) => {
                        info!(parent: &self.span, why, "transaction replay failed: 40001");
                        self.drop_server();
                        let state = Sqlstate::SerializationFailure;
                        self.while_aborted(state)
                    }
                }
            }
        }
    }

    /// The client is in a transaction that was lost: its ROLLBACK ends
    /// it, its COMMIT ends it with the error, anything else is refused.
    fn while_aborted(&mut self, state: Sqlstate) -> Option<Outcome> {
        let plan = self.collector.plan();
        let lone = |effect| plan.statements == 1 && plan.effects[..] == [effect];
        if lone(SessionEffect::Commit) {
            // PostgreSQL answers it with a ROLLBACK tag, which drivers take
            // for success; and a driver may not have looked at the error
            // (tokio-postgres ignores its Close requests' replies). So a
            // COMMIT hears why, and the transaction is over.
            self.state
                .settle(&[SessionEffect::Rollback], false, TxnStatus::Idle);
            self.tell_aborted(state);
            self.retry.tries.settled();
            if self.collector.finish_unsent() {
                messages::ready(&mut self.client.out, TxnStatus::Idle);
            }
            return Some(Outcome::Refused);
        }
        if lone(SessionEffect::Rollback) {
            self.state
                .settle(&[SessionEffect::Rollback], false, TxnStatus::Idle);
            if !plan.has_query {
                // An extended-protocol ROLLBACK: a server answers it (there
                // is no transaction in progress there).
                return None;
            }
            messages::command_complete(&mut self.client.out, "ROLLBACK");
            self.retry.tries.settled();
            if self.collector.finish_unsent() {
                messages::ready(&mut self.client.out, TxnStatus::Idle);
            }
            return Some(Outcome::Answered);
        }
        self.txn.pending = Pending::Aborted(state);
        self.tell_aborted(state);
        self.retry.tries.settled();
        if self.collector.finish_unsent() {
            messages::ready(&mut self.client.out, TxnStatus::Failed);
        }
        Some(Outcome::Refused)
    }

    /// The ERROR a request in a lost transaction gets: why it was lost.
    fn tell_aborted(&mut self, state: Sqlstate) {
        let message = if state == Sqlstate::ConnectionFailure {
            LOST
        } else {
            NOT_REPLAYED
        };
        messages::error(&mut self.client.out, false, state, message);
    }

    /// Replays `open` on the primary, waiting for one (a new one after a
    /// failover) up to `failover_wait_ms`.
    async fn replay_transaction(&mut self, open: &Open, at_loss: Carried) -> Result<(), String> {
        let began = Instant::now();
        let wait = self.config.load().failover.failover_wait();
        loop {
            let primary = self.topology.load().primary();
            if let Some(node) = primary {
                let within = self.config.load().proxy.connect_timeout();
                if let Some(Ok(())) = self.checkout(node, within).await {
                    match self.replay_on_connection(open, &at_loss).await {
                        Ok(status) => {
                            if let Some(conn) = self.link.conn_mut() {
                                conn.carried = at_loss;
                            }
                            self.link.resume(status);
                            return Ok(());
                        }
                        Err(Failed::Differs(why)) => return Err(why),
                        Err(Failed::Lost) => self.drop_server(),
                    }
                }
            }
            if began.elapsed() >= wait {
                return Err("no primary to replay on within failover_wait_ms".into());
            }
            tokio::time::sleep(reads::PAUSE_POLL).await;
        }
    }

    /// On the attached connection: the session's state as the transaction
    /// found it, then its answered requests, each checked against the
    /// reply the client got. The status the last one left.
    async fn replay_on_connection(
        &mut self,
        open: &Open,
        at_loss: &Carried,
    ) -> Result<TxnStatus, Failed> {
        let Some(conn) = self.link.conn_mut() else {
            return Err(Failed::Lost);
        };
        // Statements held when it began, and those brought in during it,
        // but not those its own requests prepare.
        let parsed = open.parsed();
        let mut wanted: HashMap<&str, u64> = HashMap::new();
        for (name, fingerprint) in &open.begin.prepared {
            wanted.insert(name, *fingerprint);
        }
        for (name, fingerprint) in &at_loss.prepared {
            wanted.insert(name, *fingerprint);
        }
        let statements: Vec<replay::Statement<'_>> = wanted
            .into_iter()
            .filter(|(name, fingerprint)| {
                !name.is_empty()
                    && !parsed.contains(name)
                    && conn.carried.prepared.get(*name) != Some(fingerprint)
            })
            .filter_map(|(name, fingerprint)| {
                let p = self.state.statement(name)?;
                (p.fingerprint == fingerprint).then_some(replay::Statement {
                    name,
                    fingerprint,
                    source: &p.source,
                })
            })
            .collect();
        let settings =
            crate::frontend::state::settings_delta(&conn.carried.settings, &open.begin.settings);
        // Names its requests prepare that this connection holds (from an
        // earlier turn of this session) are closed first.
        let stale: Vec<&str> = parsed
            .iter()
            .copied()
            .filter(|name| conn.carried.prepared.contains_key(*name))
            .collect();
        replay::replay(conn, settings, &open.begin.settings, &stale, &statements)
            .await
            .map_err(|e| match e {
                ReplayError::Lost => Failed::Lost,
                ReplayError::Refused(_) => {
                    Failed::Differs("the session's state was refused".into())
                }
            })?;
        let mut status = TxnStatus::Idle;
        for (i, (request, expected)) in open.answered().enumerate() {
            let mut sum = Checksum::default();
            status = replay::resend(conn, request, |frame| sum.add(frame))
                .await
                .map_err(|_| Failed::Lost)?;
            if sum.finish(status) != expected {
                return Err(Failed::Differs(format!(
                    "request {} of the transaction answered differently",
                    i + 1
                )));
            }
        }
        Ok(status)
    }

    /// Notes a request just written to the server (from `start` in the
    /// link's buffer) in the transaction's record.
    pub(super) fn record_request(
        &mut self,
        start: usize,
        parsed: &[(String, u64)],
        continuing: bool,
        starts: Option<(Carried, usize)>,
    ) {
        if !self.txn.record.on() {
            return;
        }
        let names = parsed.iter().map(|(name, _)| name.clone()).collect();
        let request = self.link.out().get(start..).unwrap_or_default();
        self.txn.record.sent(request, names, continuing, starts);
    }

    /// What the connection holds before a request that may open a
    /// transaction the record can follow, and how many requests are in
    /// flight ahead of it: sent on the primary outside a transaction
    /// (`outside`), when replay is on.
    pub(super) fn record_start(&mut self, node: usize, outside: bool) -> Option<(Carried, usize)> {
        let follow =
            self.txn.record.on() && outside && self.topology.load().primary() == Some(node);
        let conn = self.link.conn().filter(|_| follow)?;
        Some((conn.carried.clone(), self.link.in_flight().count()))
    }

    /// Bytes relayed to the client from `start` in its buffer, and the
    /// status of the ReadyForQuery that ended them if one did.
    pub(super) fn record_reply(&mut self, start: usize, status: Option<TxnStatus>) {
        if !self.txn.record.on() {
            return;
        }
        let empty = Carried::default();
        if !self.txn.record.recording() {
            if let Some(status) = status {
                self.txn.record.answered(status, &empty);
            }
            return;
        }
        let relayed = self.client.out.get(start..).unwrap_or_default();
        self.txn.record.relayed(relayed);
        if let Some(status) = status {
            let now = self.link.conn().map_or(&empty, |c| &c.carried);
            self.txn.record.answered(status, now);
        }
    }
}

/// The server ended the connection for a reason of the transaction's own
/// (`idle_in_transaction_session_timeout`'s 25P03, say) rather than its
/// own going away (57P01 terminated or shut down, 57P02 crashed, 57P03
/// not accepting connections; or no word at all): not to be undone by
/// replaying it.
fn ended_on_purpose(fatal: Option<&[u8]>) -> bool {
    let code = fatal.and_then(|frame| error_field(frame.get(5..)?, b'C'));
    code.is_some_and(|code| !matches!(code, "57P01" | "57P02" | "57P03"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn only_a_server_going_away_leaves_a_transaction_to_replay() {
        let fatal = |state| {
            let mut frame = BytesMut::new();
            messages::error(&mut frame, true, state, "bye");
            frame
        };
        assert!(!ended_on_purpose(None), "closed without a word");
        assert!(!ended_on_purpose(Some(&fatal(Sqlstate::AdminShutdown))));
        assert!(!ended_on_purpose(Some(&fatal(Sqlstate::CannotConnectNow))));
        assert!(ended_on_purpose(Some(&fatal(Sqlstate::IdleSessionTimeout))));
        assert!(ended_on_purpose(Some(&fatal(Sqlstate::ProtocolViolation))));
    }
}

//! How fresh a session's reads are: where a read may run under the
//! session's consistency level ([`Session::read_target`]), learning where
//! the session's last write is in the WAL, waiting for a replica to replay
//! it, and the `palisade.*` settings the proxy answers itself.

use std::time::{Duration, Instant};

use tracing::debug;

use super::dispatch::Decision;
use super::{Phase, Session, TxnStatus};
use crate::backend::replay::{self, ReplayError};
use crate::config::{Consistency, OnNoReplica};
use crate::frontend::freshness::Need;
use crate::frontend::local::{self, Command, Param, SetError};
use crate::protocol::{messages, Sqlstate};
use crate::route::{self, NoRoute};
use crate::topology::{Lsn, Role, Topology};

/// Between two looks at a replica's replay position, once the first few
/// looks (back to back: a replica on a fast link replays a commit within a
/// round trip or two) have not found it there.
const REPLAY_POLL: Duration = Duration::from_millis(1);
const QUICK_LOOKS: u32 = 4;

/// Between two looks at whether a switchover still holds writes.
pub(super) const PAUSE_POLL: Duration = Duration::from_millis(10);

/// At or past every commit the primary has acknowledged: its WAL insert
/// position (unlike the write position, it covers asynchronous commits).
const WRITE_POSITION: &str = "SELECT pg_current_wal_insert_lsn()";
const REPLAY_POSITION: &str = "SELECT pg_last_wal_replay_lsn()";

impl Session {
    /// The consistency of the due batch's reads; `None` when the batch is
    /// not a read (it writes, or the session is pinned to the primary).
    pub(super) fn read_level(&self) -> Option<Consistency> {
        let read = if self.state.is_pinned() {
            false
        } else if let Some(read_only) = self.plan.begin {
            read_only || self.state.read_only_default()
        } else {
            !self.plan.write
        };
        read.then(|| {
            self.plan
                .level
                .or(self.reads.level)
                .unwrap_or(self.shared.config.consistency.level)
        })
    }

    /// Where a read at `level` runs: a replica fresh enough for it, one
    /// to wait for, or what `on_no_replica` says.
    pub(super) fn read_target(&self, topology: &Topology, level: Consistency) -> Decision {
        if level == Consistency::Strong {
            return primary_read_target(topology);
        }
        let config = &self.shared.config.consistency;
        let need = Need::of(level, &self.reads, self.write_lsn, config);
        // A batch that only prepares takes the ticket of the execution
        // that follows it, so both land on the same node.
        let ticket = if self.plan.executes {
            self.shared.next_ticket()
        } else {
            self.shared.peek_ticket()
        };
        if let (Some(lsn), false) = (need.min_lsn, config.causal_wait_ms == 0) {
            // Published positions trail by up to a probe: the balancer
            // spreads over every replica close enough to have the position
            // by now, not only the ones already shown past it (that would
            // send a session's reads to whichever was probed last), and
            // the one picked is asked when it is not shown there yet.
            let wait = config.causal_wait();
            let picked = self.pick(topology, ticket, |i| {
                need.worth_waiting_for(&topology.nodes[i], wait)
            });
            match picked {
                Err(e) => return Decision::Refuse(Sqlstate::ConnectionFailure, e.to_string()),
                Ok(Some(node))
                    if Some(node) == topology.primary() || need.admits(&topology.nodes[node]) =>
                {
                    return Decision::Node(node)
                }
                Ok(Some(node)) => return Decision::Await { node, lsn },
                Ok(None) => {}
            }
        }
        self.fresh_target(topology, level, ticket)
    }

    /// A replica that the published topology shows fresh enough for a read
    /// at `level`, else what `on_no_replica` says.
    pub(super) fn fresh_target(
        &self,
        topology: &Topology,
        level: Consistency,
        ticket: u64,
    ) -> Decision {
        let config = &self.shared.config.consistency;
        let need = Need::of(level, &self.reads, self.write_lsn, config);
        match self.pick(topology, ticket, |i| need.admits(&topology.nodes[i])) {
            Err(e) => Decision::Refuse(Sqlstate::ConnectionFailure, e.to_string()),
            Ok(Some(node)) => Decision::Node(node),
            Ok(None) => self.no_fresh_replica(topology, level),
        }
    }

    /// The balancer's pick among the replicas `eligible` admits (and the
    /// primary, when it takes reads); `None` when only the primary is left
    /// and it is no read candidate.
    fn pick(
        &self,
        topology: &Topology,
        ticket: u64,
        eligible: impl Fn(usize) -> bool,
    ) -> Result<Option<usize>, NoRoute> {
        let policy = &self.shared.read_policy;
        let picked = route::route_read(
            topology,
            policy,
            ticket,
            |n| self.shared.loads.outstanding(n),
            eligible,
        );
        picked.map(|t| {
            let left = Some(t.node) == topology.primary() && policy.primary_read_weight == 0;
            (!left).then_some(t.node)
        })
    }

    /// No replica may serve the read: the primary does, or the client is
    /// told, as `consistency.on_no_replica` says.
    pub(super) fn no_fresh_replica(&self, topology: &Topology, level: Consistency) -> Decision {
        match self.shared.config.consistency.on_no_replica {
            OnNoReplica::Primary => primary_read_target(topology),
            OnNoReplica::Error => Decision::Refuse(
                Sqlstate::ObjectNotInPrerequisiteState,
                format!(
                    "no replica is fresh enough for a {} read, and consistency.on_no_replica = error",
                    level.name()
                ),
            ),
        }
    }

    /// The due batch is a read that needs the position of the session's
    /// last write, which has not been located yet.
    pub(super) fn needs_write_lsn(&self) -> bool {
        self.writes.unlocated
            && !self.open_batch
            && self.phase == Phase::Ready(TxnStatus::Idle)
            && self.read_level() == Some(Consistency::Causal)
    }

    /// Asks the primary where its WAL stands: at or past the session's
    /// last commit, since that commit was acknowledged before the client
    /// sent what it sends now. `false` when the batch was refused instead.
    pub(super) async fn learn_write_lsn(&mut self) -> bool {
        let topology = self.shared.topology.load();
        let Some(primary) = topology.primary() else {
            self.refuse_batch(Sqlstate::ConnectionFailure, "no primary is available");
            return false;
        };
        if self.server.as_ref().map(|s| s.node) != Some(primary) && !self.connect_to(primary).await
        {
            return false;
        }
        let Some(att) = self.server.as_mut() else {
            return false;
        };
        match replay::query_lsn(&mut att.conn, WRITE_POSITION).await {
            Ok(Some(lsn)) => {
                let lsn = lsn.before_page_header();
                self.write_lsn = self.write_lsn.max(Some(lsn));
                self.writes.unlocated = false;
                true
            }
            Ok(None) => {
                self.refuse_batch(
                    Sqlstate::Internal,
                    "the primary did not say where its WAL is",
                );
                false
            }
            Err(e) => {
                self.give_up_server(e);
                false
            }
        }
    }

    /// Waits until the session's replica has replayed `lsn`, for at most
    /// `consistency.causal_wait_ms`. `false` when it did not (the
    /// connection may be gone).
    pub(super) async fn await_replay(&mut self, lsn: Lsn) -> bool {
        let deadline = Instant::now() + self.shared.config.consistency.causal_wait();
        let mut looks = 0;
        loop {
            let Some(att) = self.server.as_mut() else {
                return false;
            };
            match replay::query_lsn(&mut att.conn, REPLAY_POSITION).await {
                Ok(Some(at)) if at >= lsn => return true,
                Ok(_) => {}
                Err(e) => {
                    debug!(parent: &self.span, error = %e, "replica did not say where its replay is");
                    self.drop_server();
                    return false;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            looks += 1;
            if looks > QUICK_LOOKS {
                tokio::time::sleep(REPLAY_POLL).await;
            }
        }
    }

    /// A read is about to run on a replica that has lost its primary (only
    /// `partition_mode = available` allows it): the client is told.
    pub(super) fn warn_if_cut_off(&mut self, node: usize) {
        let topology = self.shared.topology.load();
        let Some(n) = topology.nodes.get(node) else {
            return;
        };
        if n.role == Role::Replica && !n.replication.streaming {
            messages::notice(
                &mut self.client.out,
                &format!(
                    "replica {} is not streaming from its primary: this read may return stale data",
                    n.name
                ),
            );
        }
    }

    /// Answers one of the proxy's own commands (the due batch).
    pub(super) async fn answer_local(&mut self) {
        let status = match self.phase {
            Phase::Ready(status) => status,
            Phase::Busy { .. } => TxnStatus::Idle,
        };
        if !self.plan.local_misplaced
            && self.plan.local == Some(Command::Show(Param::LastWriteLsn))
            && self.writes.unlocated
            && status == TxnStatus::Idle
            && !self.learn_write_lsn().await
        {
            return;
        }
        let command = self.plan.local.take();
        let whole = self.plan.requests > 0;
        let refused = self.plan.local_misplaced;
        self.clear_batch();
        let out = &mut self.client.out;
        match command {
            _ if refused => messages::error(
                out,
                false,
                Sqlstate::FeatureNotSupported,
                "palisade.* settings are answered by Palisade itself: send each alone, as a simple query (not prepared)",
            ),
            None => {}
            Some(_) if status == TxnStatus::Failed => messages::error(
                out,
                false,
                Sqlstate::InFailedTransaction,
                "current transaction is aborted, commands ignored until end of transaction block",
            ),
            Some(Command::Set(param, value)) => match self.reads.set(param, value.as_deref()) {
                Ok(()) => messages::command_complete(out, if value.is_some() { "SET" } else { "RESET" }),
                Err(e) => {
                    let state = match e {
                        SetError::Invalid { .. } => Sqlstate::InvalidParameterValue,
                        SetError::ReadOnly(_) => Sqlstate::CantChangeRuntimeParam,
                    };
                    messages::error(out, false, state, &e.to_string());
                }
            },
            Some(Command::Show(param)) => {
                let value = match param {
                    Param::Consistency => self
                        .reads
                        .level
                        .unwrap_or(self.shared.config.consistency.level)
                        .name()
                        .to_owned(),
                    Param::MaxStaleness => local::show_duration(
                        self.reads.max_staleness.or(Some(Duration::from_millis(
                            self.shared.config.consistency.max_lag_ms,
                        ))),
                    ),
                    Param::MinLsn => self.reads.min_lsn.unwrap_or_default().to_string(),
                    Param::LastWriteLsn => self.write_lsn.unwrap_or_default().to_string(),
                };
                messages::text_result(out, &[param.name()], &[vec![Some(value)]], "SHOW");
            }
        }
        if whole {
            messages::ready_for_query(out, status.byte());
        } else {
            self.skipping = true;
        }
    }

    /// The session's server connection failed while the proxy itself was
    /// using it, outside any transaction: it is closed, and the batch at
    /// hand is refused with what the server said.
    pub(super) fn give_up_server(&mut self, e: ReplayError) {
        match e {
            ReplayError::Refused(error) => self.client.out.extend_from_slice(&error),
            ReplayError::Lost => {
                let message = format!("server connection to {} was lost", self.node_name());
                messages::error(
                    &mut self.client.out,
                    false,
                    Sqlstate::ConnectionFailure,
                    &message,
                );
            }
        }
        self.drop_server();
        self.refuse_batch_quietly();
    }
}

/// A write's node, or the reason there is none.
pub(super) fn write_target(topology: &Topology) -> Decision {
    match route::route_write(topology) {
        Ok(t) => Decision::Node(t.node),
        Err(NoRoute::Paused) => Decision::Pause,
        Err(e) => Decision::Refuse(Sqlstate::ConnectionFailure, e.to_string()),
    }
}

/// A read's node when it runs on the primary: the epoch's primary, whether
/// or not writes are open (a switchover's pause holds writes, not reads).
fn primary_read_target(topology: &Topology) -> Decision {
    match topology.primary() {
        Some(node) => Decision::Node(node),
        None => Decision::Refuse(Sqlstate::ConnectionFailure, NoRoute::NoPrimary.to_string()),
    }
}

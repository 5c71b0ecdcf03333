//! How fresh a session's reads are, the I/O half (where they may run is
//! [`crate::route`]'s): learning where the session's last write is in the
//! WAL, waiting for a replica to replay it, and the `palisade.*` settings
//! the proxy answers itself.

use std::time::{Duration, Instant};

use tracing::debug;

use super::Session;
use crate::backend::replay::{self, ReplayError};
use crate::frontend::link::Phase;
use crate::frontend::local::{self, Command, Param, SetError};
use crate::protocol::{messages, Sqlstate, TxnStatus};
use crate::route;
use crate::topology::{Lsn, Role};

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
    /// Asks the primary where its WAL stands: at or past the session's
    /// last commit, since that commit was acknowledged before the client
    /// sent what it sends now. `false` when the batch was refused instead.
    pub(super) async fn learn_write_lsn(&mut self, primary: usize) -> bool {
        if self.link.node() != Some(primary) && !self.connect_to(primary).await {
            return false;
        }
        let Some(conn) = self.link.conn_mut() else {
            return false;
        };
        match replay::query_lsn(conn, WRITE_POSITION).await {
            Ok(Some(lsn)) => {
                let lsn = lsn.before_page_header();
                self.state.write_lsn = self.state.write_lsn.max(Some(lsn));
                self.state.writes.unlocated = false;
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
    /// `within`. `false` when it did not (the connection may be gone).
    pub(super) async fn await_replay(&mut self, lsn: Lsn, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut looks = 0;
        loop {
            let Some(conn) = self.link.conn_mut() else {
                return false;
            };
            // A frozen replica never answers: each look gets the whole wait at most.
            let look = tokio::time::timeout(within, replay::query_lsn(conn, REPLAY_POSITION));
            match look.await {
                Ok(Ok(Some(at))) if at >= lsn => return true,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    debug!(parent: &self.span, error = %e, "replica did not say where its replay is");
                    self.drop_server();
                    return false;
                }
                Err(_) => {
                    debug!(parent: &self.span, "replica did not say where its replay is in time");
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
        let topology = self.topology.load();
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

    /// A write is about to go out while this proxy has lost etcd beyond the
    /// grace period (only `partition_mode = available` lets it): the
    /// client is told.
    pub(super) fn warn_if_store_lost(&mut self) {
        if self.shared.admin.epoch_store_lost() {
            messages::notice(
                &mut self.client.out,
                "this proxy has lost etcd: the write goes to the last epoch's primary, which the other proxies may have replaced (partition_mode = available)",
            );
        }
    }

    /// Answers one of the proxy's own commands (the due batch).
    pub(super) async fn answer_local(&mut self) {
        let status = match self.link.phase() {
            Phase::Ready(status) => status,
            Phase::Busy { .. } => TxnStatus::Idle,
        };
        let plan = self.collector.plan();
        if !plan.local_misplaced
            && plan.local == Some(Command::Show(Param::LastWriteLsn))
            && self.state.writes.unlocated
            && status == TxnStatus::Idle
        {
            let located = match route::locate_writes(self.topology.load()) {
                Ok(primary) => self.learn_write_lsn(primary).await,
                Err(reason) => {
                    self.refuse_route(&reason);
                    false
                }
            };
            if !located {
                return;
            }
        }
        let plan = self.collector.plan_mut();
        let command = plan.local.take();
        let refused = plan.local_misplaced;
        let whole = self.collector.finish_unsent();
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
            Some(Command::Set(param, value)) => match self.state.reads.set(param, value.as_deref()) {
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
                        .state
                        .reads
                        .level
                        .unwrap_or(self.config.load().consistency.level)
                        .name()
                        .to_owned(),
                    Param::MaxStaleness => local::show_duration(
                        self.state.reads.max_staleness.or(Some(Duration::from_millis(
                            self.config.load().consistency.max_lag_ms,
                        ))),
                    ),
                    Param::MinLsn => self.state.reads.min_lsn.unwrap_or_default().to_string(),
                    Param::LastWriteLsn => self.state.write_lsn.unwrap_or_default().to_string(),
                };
                messages::text_result(out, &[param.name()], &[vec![Some(value)]], "SHOW");
            }
        }
        if whole {
            messages::ready(out, status);
        }
    }

    /// The session's server connection failed while the proxy itself was
    /// using it, outside any transaction: it is closed, and the batch at
    /// hand is refused with what the server said.
    pub(super) fn give_up_server(&mut self, e: ReplayError) {
        match e {
            ReplayError::Refused(error) => super::retry::pass_error(&mut self.client.out, &error),
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

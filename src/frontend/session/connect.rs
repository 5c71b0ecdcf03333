//! Getting the session a server connection for its batch: the primary
//! (waiting out its death while a failover may bring another), a replica
//! within its own deadline (the read goes on to the next candidate), and
//! telling the client when there is none.

use std::time::{Duration, Instant};

use tracing::{debug, info};

use super::{Session, SessionLogin};
use crate::backend::pool::{CheckoutError, PoolKey, ServerPool};
use crate::backend::{ConnectError, Login};
use crate::protocol::Sqlstate;
use crate::route::Tried;
use crate::topology::Topology;

impl Session {
    /// Swaps the session's server connection for one to the primary
    /// `node`. A primary that cannot be reached at all (refused, timed
    /// out: it has just died, and nothing of the batch reached it) is
    /// looked for again, `None`, while the batch has waited less than
    /// `failover.failover_wait_ms`: the topology may show a new one by
    /// then. Otherwise as [`Self::connect_to`].
    pub(super) async fn reach_primary(&mut self, node: usize, tried: &mut Tried) -> Option<bool> {
        let within = self.config.load().proxy.connect_timeout();
        let result = self.checkout(node, within).await;
        if let Some(Err(CheckoutError::Connect(
            e @ (ConnectError::Io { .. } | ConnectError::Timeout { .. }),
        ))) = &result
        {
            let since = *tried.paused_since.get_or_insert_with(Instant::now);
            if since.elapsed() < self.config.load().failover.failover_wait() {
                debug!(parent: &self.span, node, error = %e, "the primary cannot be reached; waiting for it or a new one");
                return None;
            }
        }
        Some(self.checked_out(node, result))
    }

    /// Swaps the session's server connection for one to `node`. `false`
    /// when none could be had (the client has been told).
    pub(super) async fn connect_to(&mut self, node: usize) -> bool {
        let within = self.config.load().proxy.connect_timeout();
        let result = self.checkout(node, within).await;
        self.checked_out(node, result)
    }

    /// What a checkout for a batch came to: `false`, with the client told
    /// why, when it gave no connection.
    fn checked_out(&mut self, node: usize, result: Option<Result<(), CheckoutError>>) -> bool {
        match result {
            None => {
                self.refuse_batch(Sqlstate::Internal, "node missing from the session's keys");
                false
            }
            Some(Ok(())) => true,
            Some(Err(e)) => {
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

    /// [`Self::connect_to`] replica `node` for a read, within
    /// `proxy.replica_connect_timeout_ms`. `false` when none could be had:
    /// the read goes to the next candidate, the client is told nothing.
    pub(super) async fn connect_replica(&mut self, node: usize) -> bool {
        let within = self.config.load().proxy.replica_connect_timeout();
        match self.checkout(node, within).await {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                info!(parent: &self.span, node, error = %e, "no replica connection for a read; trying the next candidate");
                false
            }
            None => false,
        }
    }

    /// Checks out a connection to `node` (opened or reset within `within`)
    /// and attaches it, in place of the session's; `None` when the node
    /// has no pool key.
    pub(super) async fn checkout(
        &mut self,
        node: usize,
        within: Duration,
    ) -> Option<Result<(), CheckoutError>> {
        self.release();
        self.link.connecting();
        self.refresh_keys(node);
        let key = self.keys.get(node)?;
        let login = Login {
            user: &self.login.server_user,
            secret: self.login.server_secret.as_ref(),
            params: &self.login.params,
        };
        let checked_out = self
            .shared
            .pool
            .checkout_within(key, self.id, &login, within)
            .await;
        Some(match checked_out {
            Ok(conn) => {
                self.link.attach(conn, node);
                Ok(())
            }
            Err(e) => {
                self.link.clear_cancel_target();
                Err(e)
            }
        })
    }

    /// Makes the pool keys afresh when `node` has none or its slot now
    /// names another address (a reload added or replaced it).
    fn refresh_keys(&mut self, node: usize) {
        let topology = self.topology.load();
        let current = match (self.keys.get(node), topology.nodes.get(node)) {
            (Some(k), Some(n)) => k.port == n.port && k.host == n.host,
            _ => false,
        };
        if !current {
            self.keys = pool_keys(topology, &self.login, &self.shared.pool);
        }
    }
}

/// The pool key of each node slot, for this session's login.
pub(super) fn pool_keys(
    topology: &Topology,
    login: &SessionLogin,
    pool: &ServerPool,
) -> Vec<PoolKey> {
    topology
        .nodes
        .iter()
        .map(|n| {
            pool.shared_key(PoolKey::new(
                &n.host,
                n.port,
                &login.client_user,
                &login.params,
            ))
        })
        .collect()
}

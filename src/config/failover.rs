//! `[failover]`: failure detection, promotion, fencing and rejoin settings,
//! and their rules, some of which depend on `[monitor]` and the node count.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, positive, ConfigError, MonitorConfig};

/// Whether Palisade promotes a replica by itself when the primary fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailoverMode {
    /// A confirmed primary failure promotes the best replica.
    #[default]
    Automatic,
    /// Nothing is promoted until an operator runs `SWITCHOVER`; until then
    /// the cluster is read-only.
    Manual,
    /// Palisade promotes and fences nothing: another HA manager (Patroni,
    /// a managed service, an operator) does, and Palisade follows it,
    /// learning the primary from the nodes (`pg_is_in_recovery()` and the
    /// timeline). A node that claims to be a primary on an older timeline
    /// than another never gets writes.
    Follow,
}

/// Where the epoch record lives, and so how many proxies may share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// `state_file` (or memory): one proxy decides alone.
    #[default]
    File,
    /// etcd: several proxies share the epoch; one leader at a time decides.
    Etcd,
}

/// How commits wait for replicas, and so which replicas may be promoted
/// without losing an acknowledged commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicationMode {
    /// Commits do not wait for replicas (availability; a failover may lose
    /// the last commits).
    #[default]
    Async,
    /// Commits wait for one healthy replica; with none healthy the primary
    /// drops to async rather than block writes.
    Sync,
    /// Commits always wait for a replica, even when none is healthy
    /// (consistency: writes block).
    SyncStrict,
}

/// Failure detection, promotion, fencing and recovery of the old primary.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    pub mode: FailoverMode,
    /// The primary must have missed its probes this long (and the replicas
    /// must have stopped streaming from it) before it is declared failed.
    /// Also how long a planned switchover may pause writes.
    pub failover_timeout_ms: u64,
    /// While there is no primary to write to (it is down, unreachable, or
    /// a failover is promoting another), statements that need one wait this
    /// long for it before they are refused; 0 refuses them at once.
    pub failover_wait_ms: u64,
    /// A transaction open on a primary that is lost before its COMMIT is
    /// replayed on the new primary from what was recorded, if every reply
    /// comes out the same (otherwise the client gets 40001).
    pub transaction_replay: bool,
    /// A transaction whose requests add up to more than this is not
    /// recorded (it cannot be replayed).
    pub replay_max_bytes: u64,
    /// No replica further behind the last known primary position than this
    /// is promoted; the cluster stays read-only instead.
    pub max_lag_on_failover_bytes: u64,
    /// Where the epoch and its primary are persisted; without one they live
    /// only in memory and a restarted proxy learns the primary afresh.
    pub state_file: Option<PathBuf>,
    /// `file` (the `state_file`, one proxy) or `etcd` (several proxies).
    pub store: StoreKind,
    /// etcd's client URLs (`http://host:2379`, or `https://` with TLS).
    pub etcd_endpoints: Vec<String>,
    /// The key prefix of this cluster's records in etcd; every proxy of the
    /// cluster uses the same one, and no other cluster does.
    pub etcd_prefix: String,
    /// This proxy's name among its peers (default: hostname and listen port).
    pub etcd_name: Option<String>,
    pub etcd_user: Option<String>,
    pub etcd_password: Option<String>,
    /// A CA certificate (PEM) to verify etcd's TLS certificate with.
    pub etcd_ca_file: Option<PathBuf>,
    /// How long a proxy that lost etcd keeps routing writes to the last
    /// epoch's primary before `consistency.partition_mode` applies.
    pub etcd_grace_ms: u64,
    /// A fenced old primary is brought back as a replica without an operator.
    pub auto_rejoin: bool,
    pub replication_mode: ReplicationMode,
    /// Run to fence a node (e.g. stop the server, STONITH), on top of making
    /// it read-only when it is reachable.
    pub fence_command: Option<String>,
    /// Run to turn a fenced old primary into a replica of the new one
    /// (pg_rewind, standby.signal, primary_conninfo).
    pub rejoin_command: Option<String>,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            mode: FailoverMode::Automatic,
            failover_timeout_ms: 5_000,
            failover_wait_ms: 15_000,
            transaction_replay: false,
            replay_max_bytes: 1024 * 1024,
            max_lag_on_failover_bytes: 16 * 1024 * 1024,
            state_file: None,
            store: StoreKind::File,
            etcd_endpoints: Vec::new(),
            etcd_prefix: "/palisade/default".to_owned(),
            etcd_name: None,
            etcd_user: None,
            etcd_password: None,
            etcd_ca_file: None,
            etcd_grace_ms: 10_000,
            auto_rejoin: false,
            replication_mode: ReplicationMode::Async,
            fence_command: None,
            rejoin_command: None,
        }
    }
}

impl FailoverConfig {
    pub fn failover_timeout(&self) -> Duration {
        Duration::from_millis(self.failover_timeout_ms)
    }

    pub fn failover_wait(&self) -> Duration {
        Duration::from_millis(self.failover_wait_ms)
    }

    /// How many request bytes a transaction may record for replay; `None`
    /// when replay is off.
    pub fn replay_limit(&self) -> Option<usize> {
        self.transaction_replay
            .then(|| usize::try_from(self.replay_max_bytes).unwrap_or(usize::MAX))
    }

    pub fn etcd_grace(&self) -> Duration {
        Duration::from_millis(self.etcd_grace_ms)
    }

    /// `monitor` bounds the timeout from below; sync modes need `node_count` ≥ 2.
    pub(super) fn validate(
        &self,
        monitor: &MonitorConfig,
        node_count: usize,
    ) -> Result<(), ConfigError> {
        positive("failover.failover_timeout_ms", self.failover_timeout_ms)?;
        positive("failover.replay_max_bytes", self.replay_max_bytes)?;
        // Fewer probes than the health threshold would declare a failure on
        // a blip the monitor itself does not yet count as one.
        let min = monitor
            .probe_interval_ms
            .saturating_mul(monitor.health_threshold.into());
        if self.failover_timeout_ms < min {
            return Err(invalid(
                "failover.failover_timeout_ms",
                format!(
                    "must be at least monitor.probe_interval_ms × monitor.health_threshold ({min})"
                ),
            ));
        }
        // A hung primary is only noticed once a probe has timed out.
        if self.failover_timeout_ms <= monitor.probe_timeout_ms {
            return Err(invalid(
                "failover.failover_timeout_ms",
                format!(
                    "must be greater than monitor.probe_timeout_ms ({})",
                    monitor.probe_timeout_ms
                ),
            ));
        }
        if let Some(path) = &self.state_file {
            let text = path.to_string_lossy();
            if text.trim().is_empty() || text.ends_with('/') || path.file_name().is_none() {
                return Err(invalid(
                    "failover.state_file",
                    "must name a file, e.g. /var/lib/palisade/state.toml",
                ));
            }
        }
        self.validate_etcd()?;
        for (key, command) in [
            ("failover.fence_command", &self.fence_command),
            ("failover.rejoin_command", &self.rejoin_command),
        ] {
            if command.as_deref().is_some_and(|c| c.trim().is_empty()) {
                return Err(invalid(key, "must not be empty; leave it out instead"));
            }
        }
        if self.replication_mode != ReplicationMode::Async && node_count < 2 {
            return Err(invalid(
                "failover.replication_mode",
                "sync and sync_strict need at least two nodes",
            ));
        }
        Ok(())
    }

    fn validate_etcd(&self) -> Result<(), ConfigError> {
        if self.store != StoreKind::Etcd {
            return Ok(());
        }
        if self.etcd_endpoints.is_empty() {
            return Err(invalid(
                "failover.etcd_endpoints",
                "store = \"etcd\" needs at least one endpoint, e.g. [\"http://127.0.0.1:2379\"]",
            ));
        }
        if !self.etcd_prefix.starts_with('/') || self.etcd_prefix.ends_with('/') {
            return Err(invalid(
                "failover.etcd_prefix",
                "must start with / and not end with one, e.g. /palisade/main",
            ));
        }
        if self.etcd_user.is_some() != self.etcd_password.is_some() {
            return Err(invalid(
                "failover.etcd_user",
                "etcd_user and etcd_password go together",
            ));
        }
        if self.state_file.is_some() {
            return Err(invalid(
                "failover.state_file",
                "the epoch is kept in etcd with store = \"etcd\"; leave state_file out",
            ));
        }
        positive("failover.etcd_grace_ms", self.etcd_grace_ms)
    }
}

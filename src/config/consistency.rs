//! `[consistency]`: the levels a session may ask for, what a read does when
//! no replica is fresh enough, how partitioned replicas serve, and the rules
//! on the section's limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// The longest accepted `consistency.causal_wait_ms`.
const MAX_CAUSAL_WAIT_MS: u64 = 60_000;
/// The largest accepted `consistency.max_lag_ms`, as `SET palisade.max_staleness` allows.
const MAX_LAG_MS: u64 = 604_800_000;

/// How fresh a replica must be to serve a session's read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Every read on the primary.
    Strong,
    /// A read sees every write acknowledged through this proxy before the
    /// read arrived, on any connection: a replica serves it only once it
    /// has replayed them.
    #[default]
    #[serde(rename = "read-after-commit", alias = "read_after_commit")]
    ReadAfterCommit,
    /// Read-your-writes: a replica serves a session's read only once it has
    /// replayed that session's last write.
    Causal,
    /// Replicas within `max_lag_bytes` and `max_lag_ms`.
    Bounded,
    /// Any healthy replica.
    Eventual,
}

impl Consistency {
    pub fn name(self) -> &'static str {
        match self {
            Consistency::Strong => "strong",
            Consistency::ReadAfterCommit => "read-after-commit",
            Consistency::Causal => "causal",
            Consistency::Bounded => "bounded",
            Consistency::Eventual => "eventual",
        }
    }

    /// The level named `name` (as in config, `SET palisade.consistency` and
    /// hints; `read_after_commit` is taken too).
    pub fn from_name(name: &str) -> Option<Consistency> {
        let name = if name.eq_ignore_ascii_case("read_after_commit") {
            "read-after-commit"
        } else {
            name
        };
        [
            Consistency::Strong,
            Consistency::ReadAfterCommit,
            Consistency::Causal,
            Consistency::Bounded,
            Consistency::Eventual,
        ]
        .into_iter()
        .find(|c| c.name().eq_ignore_ascii_case(name))
    }
}

/// What a read does when no replica is fresh enough for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnNoReplica {
    /// The primary serves it (always fresh; the availability choice).
    #[default]
    Primary,
    /// The client gets an error (keeps the primary for writes; the CP choice).
    Error,
}

/// Reads on a replica whose WAL receiver has stopped streaming (it has lost
/// its primary, so nobody knows how stale it is); and writes on a proxy
/// that has lost etcd for longer than `failover.etcd_grace_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionMode {
    /// It serves no reads until it streams again; the proxy cut off from
    /// etcd refuses writes until etcd answers (consistency).
    #[default]
    Consistent,
    /// It keeps serving `eventual` reads, each with a NOTICE saying its data
    /// may be stale; the proxy cut off from etcd keeps writing to the last
    /// epoch's primary (availability).
    Available,
}

/// Which replicas may serve a read, by how fresh they are.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsistencyConfig {
    /// The level of a session that has not chosen one.
    pub level: Consistency,
    /// `bounded`: the most a replica's replay may be behind, in WAL bytes.
    pub max_lag_bytes: u64,
    /// `bounded`: the most a replica's data may be stale, in milliseconds.
    pub max_lag_ms: u64,
    /// `read-after-commit` and `causal`: how long a read waits for a
    /// replica to replay the writes it must see (and, for
    /// `read-after-commit`, for their position to be sampled) before the
    /// primary serves it.
    pub causal_wait_ms: u64,
    pub on_no_replica: OnNoReplica,
    pub partition_mode: PartitionMode,
}

impl Default for ConsistencyConfig {
    fn default() -> Self {
        ConsistencyConfig {
            level: Consistency::ReadAfterCommit,
            max_lag_bytes: 16 * 1024 * 1024,
            max_lag_ms: 1_000,
            causal_wait_ms: 50,
            on_no_replica: OnNoReplica::Primary,
            partition_mode: PartitionMode::Consistent,
        }
    }
}

impl ConsistencyConfig {
    pub fn causal_wait(&self) -> Duration {
        Duration::from_millis(self.causal_wait_ms)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        // A causal read holds its client that long before the primary serves it.
        if self.causal_wait_ms > MAX_CAUSAL_WAIT_MS {
            return Err(invalid(
                "consistency.causal_wait_ms",
                format!("must be at most {MAX_CAUSAL_WAIT_MS}"),
            ));
        }
        if self.max_lag_ms > MAX_LAG_MS {
            return Err(invalid(
                "consistency.max_lag_ms",
                format!("must be at most {MAX_LAG_MS} (a week)"),
            ));
        }
        Ok(())
    }
}

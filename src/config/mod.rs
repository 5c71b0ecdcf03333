//! Configuration: TOML in, a validated [`Config`] out.
//!
//! Every rule fails hard with the key's dotted name and the rule it broke, so
//! `palisade check-config` and a proxy start both refuse a bad file with a
//! message an operator can act on. Defaults live next to their fields.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The smallest and largest accepted `proxy.max_message_size` (PostgreSQL's
/// own cap on a message is 1 GiB).
const MIN_MESSAGE_SIZE: usize = 8 * 1024;
const MAX_MESSAGE_SIZE: usize = 1 << 30;

/// The largest accepted `nodes[i].weight`: enough to express any useful ratio
/// while keeping the sum over many nodes far from overflow.
const MAX_NODE_WEIGHT: u32 = 1000;

/// The longest accepted `consistency.causal_wait_ms`.
const MAX_CAUSAL_WAIT_MS: u64 = 60_000;
/// The largest accepted `consistency.max_lag_ms`, as `SET palisade.max_staleness` allows.
const MAX_LAG_MS: u64 = 604_800_000;

/// A config file that cannot be used, naming the key and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub rule: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.rule)
    }
}

impl std::error::Error for ConfigError {}

fn invalid(key: impl Into<String>, rule: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        rule: rule.into(),
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub backend: BackendConfig,
    #[serde(default)]
    pub monitor: MonitorConfig,
    #[serde(default)]
    pub pool: PoolConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub consistency: ConsistencyConfig,
    #[serde(default)]
    pub failover: FailoverConfig,
    #[serde(default)]
    pub nodes: Vec<NodeConfig>,
    #[serde(default)]
    pub users: Vec<UserConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address clients connect to.
    pub listen: String,
    /// Client connections beyond this are refused with 53300.
    pub max_client_connections: usize,
    /// Largest message accepted from a client or a server, in bytes.
    pub max_message_size: usize,
    /// A client must finish startup and authentication within this time.
    pub startup_timeout_ms: u64,
    /// Opening (and authenticating) a server connection must finish within this time.
    pub connect_timeout_ms: u64,
    /// Threads relaying traffic. 1 (the default) runs everything on one
    /// thread, like PgBouncer: on a machine whose cores PostgreSQL needs,
    /// cross-thread wake-ups cost more than a second thread gains.
    pub worker_threads: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "127.0.0.1:6432".into(),
            max_client_connections: 1000,
            max_message_size: 128 * 1024 * 1024,
            startup_timeout_ms: 10_000,
            connect_timeout_ms: 5_000,
            worker_threads: 1,
        }
    }
}

impl ProxyConfig {
    pub fn startup_timeout(&self) -> Duration {
        Duration::from_millis(self.startup_timeout_ms)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

/// Credentials of Palisade's own control-plane connections (probes).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    pub user: String,
    pub password: Option<String>,
    pub database: String,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            user: "postgres".into(),
            password: None,
            database: "postgres".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// How often every node is probed.
    pub probe_interval_ms: u64,
    /// A probe that takes longer than this counts as failed.
    pub probe_timeout_ms: u64,
    /// A node's health flips after this many probe results in a row.
    pub health_threshold: u32,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            probe_interval_ms: 250,
            probe_timeout_ms: 1_000,
            health_threshold: 3,
        }
    }
}

impl MonitorConfig {
    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.probe_interval_ms)
    }

    pub fn probe_timeout(&self) -> Duration {
        Duration::from_millis(self.probe_timeout_ms)
    }
}

/// Server connections: how many may be open, and which idle ones are kept for reuse.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Idle connections kept per (node, startup parameters); 0 turns reuse off.
    pub max_idle_per_key: usize,
    /// An idle connection older than this is closed.
    pub idle_timeout_ms: u64,
    /// The most server connections open at once per (node, server user,
    /// database), idle or busy.
    pub max_server_connections: usize,
    /// How long a client waits for a server connection when
    /// `max_server_connections` is reached.
    pub acquire_timeout_ms: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_idle_per_key: 64,
            idle_timeout_ms: 60_000,
            max_server_connections: 100,
            acquire_timeout_ms: 5_000,
        }
    }
}

impl PoolConfig {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }
}

/// How reads are spread over the nodes that may serve them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum LoadBalance {
    /// Each candidate in turn; weights only matter at 0 (excluded).
    #[default]
    #[serde(rename = "round-robin")]
    RoundRobin,
    /// Candidates in proportion to their weights.
    #[serde(rename = "weighted")]
    Weighted,
    /// The candidate with the fewest requests in flight.
    #[serde(rename = "least-outstanding")]
    LeastOutstanding,
}

/// Read routing and statement classification.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    pub load_balance: LoadBalance,
    /// When greater than 0 the primary serves reads too, with this weight.
    pub primary_read_weight: u32,
    /// Classified statements remembered by text; 0 turns the cache off.
    pub classify_cache_size: usize,
    /// How often the list of VOLATILE user functions is reloaded from the primary.
    pub function_refresh_ms: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            load_balance: LoadBalance::RoundRobin,
            primary_read_weight: 0,
            classify_cache_size: 4096,
            function_refresh_ms: 60_000,
        }
    }
}

impl RoutingConfig {
    pub fn function_refresh(&self) -> Duration {
        Duration::from_millis(self.function_refresh_ms)
    }
}

/// How fresh a replica must be to serve a session's read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Every read on the primary.
    Strong,
    /// Read-your-writes: a replica serves a session's read only once it has
    /// replayed that session's last write.
    #[default]
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
            Consistency::Causal => "causal",
            Consistency::Bounded => "bounded",
            Consistency::Eventual => "eventual",
        }
    }

    /// The level named `name` (as in config, `SET palisade.consistency` and hints).
    pub fn from_name(name: &str) -> Option<Consistency> {
        [
            Consistency::Strong,
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
/// its primary, so nobody knows how stale it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionMode {
    /// It serves no reads until it streams again (consistency).
    #[default]
    Consistent,
    /// It keeps serving `eventual` reads, each with a NOTICE saying its data
    /// may be stale (availability).
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
    /// `causal`: how long a read waits for a replica to replay the
    /// session's last write before the primary serves it.
    pub causal_wait_ms: u64,
    pub on_no_replica: OnNoReplica,
    pub partition_mode: PartitionMode,
}

impl Default for ConsistencyConfig {
    fn default() -> Self {
        ConsistencyConfig {
            level: Consistency::Causal,
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
}

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
    /// No replica further behind the last known primary position than this
    /// is promoted; the cluster stays read-only instead.
    pub max_lag_on_failover_bytes: u64,
    /// Where the epoch and its primary are persisted; without one they live
    /// only in memory and a restarted proxy learns the primary afresh.
    pub state_file: Option<PathBuf>,
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
            max_lag_on_failover_bytes: 16 * 1024 * 1024,
            state_file: None,
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
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Defaults to `host:port`.
    pub name: Option<String>,
    pub host: String,
    pub port: u16,
    /// Share of reads this node serves as a replica (see `routing.load_balance`);
    /// 0 means it never serves reads as a replica.
    #[serde(default = "default_node_weight")]
    pub weight: u32,
}

fn default_node_weight() -> u32 {
    1
}

impl NodeConfig {
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}:{}", self.host, self.port))
    }
}

/// How a client user proves who it is to Palisade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum AuthMethod {
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "trust")]
    Trust,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    #[serde(default)]
    pub auth: AuthMethod,
    /// Cleartext password: verifies the client and logs in to PostgreSQL.
    pub password: Option<String>,
    /// PostgreSQL-format verifier (`SCRAM-SHA-256$iter:salt$stored:server`).
    pub scram_verifier: Option<String>,
    /// Role used on PostgreSQL; defaults to `name`.
    pub server_user: Option<String>,
    /// Password for PostgreSQL when it differs from `password`.
    pub server_password: Option<String>,
}

impl UserConfig {
    pub fn server_user(&self) -> &str {
        self.server_user.as_deref().unwrap_or(&self.name)
    }

    pub fn server_password(&self) -> Option<&str> {
        self.server_password.as_deref().or(self.password.as_deref())
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(path.display().to_string(), format!("cannot read: {e}")))?;
        Config::parse(&text)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let span = e.span().map(|s| line_of(text, s.start)).unwrap_or_default();
            invalid(format!("toml{span}"), e.message().trim_end().to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.proxy.listen.parse().map_err(|_| {
            invalid(
                "proxy.listen",
                "must be an IP address and port, e.g. 127.0.0.1:6432",
            )
        })
    }

    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        let p = &self.proxy;
        if p.max_client_connections == 0 {
            return Err(invalid(
                "proxy.max_client_connections",
                "must be at least 1",
            ));
        }
        if !(MIN_MESSAGE_SIZE..=MAX_MESSAGE_SIZE).contains(&p.max_message_size) {
            return Err(invalid(
                "proxy.max_message_size",
                format!("must be between {MIN_MESSAGE_SIZE} and {MAX_MESSAGE_SIZE} bytes"),
            ));
        }
        if !(1..=1024).contains(&p.worker_threads) {
            return Err(invalid(
                "proxy.worker_threads",
                "must be between 1 and 1024",
            ));
        }
        positive("proxy.startup_timeout_ms", p.startup_timeout_ms)?;
        positive("proxy.connect_timeout_ms", p.connect_timeout_ms)?;
        positive("monitor.probe_interval_ms", self.monitor.probe_interval_ms)?;
        positive("monitor.probe_timeout_ms", self.monitor.probe_timeout_ms)?;
        positive("pool.idle_timeout_ms", self.pool.idle_timeout_ms)?;
        positive("pool.acquire_timeout_ms", self.pool.acquire_timeout_ms)?;
        if self.pool.max_server_connections == 0 {
            return Err(invalid("pool.max_server_connections", "must be at least 1"));
        }
        positive(
            "routing.function_refresh_ms",
            self.routing.function_refresh_ms,
        )?;
        if self.routing.primary_read_weight > MAX_NODE_WEIGHT {
            return Err(invalid(
                "routing.primary_read_weight",
                format!("must be at most {MAX_NODE_WEIGHT}"),
            ));
        }
        positive(
            "monitor.health_threshold",
            self.monitor.health_threshold.into(),
        )?;
        if self.backend.user.is_empty() {
            return Err(invalid("backend.user", "must not be empty"));
        }
        self.validate_consistency()?;
        self.validate_nodes()?;
        self.validate_failover()?;
        self.validate_users()
    }

    fn validate_consistency(&self) -> Result<(), ConfigError> {
        let c = &self.consistency;
        // A causal read holds its client that long before the primary serves it.
        if c.causal_wait_ms > MAX_CAUSAL_WAIT_MS {
            return Err(invalid(
                "consistency.causal_wait_ms",
                format!("must be at most {MAX_CAUSAL_WAIT_MS}"),
            ));
        }
        if c.max_lag_ms > MAX_LAG_MS {
            return Err(invalid(
                "consistency.max_lag_ms",
                format!("must be at most {MAX_LAG_MS} (a week)"),
            ));
        }
        Ok(())
    }

    fn validate_failover(&self) -> Result<(), ConfigError> {
        let f = &self.failover;
        positive("failover.failover_timeout_ms", f.failover_timeout_ms)?;
        // Fewer probes than the health threshold would declare a failure on
        // a blip the monitor itself does not yet count as one.
        let min = self
            .monitor
            .probe_interval_ms
            .saturating_mul(self.monitor.health_threshold.into());
        if f.failover_timeout_ms < min {
            return Err(invalid(
                "failover.failover_timeout_ms",
                format!(
                    "must be at least monitor.probe_interval_ms × monitor.health_threshold ({min})"
                ),
            ));
        }
        // A hung primary is only noticed once a probe has timed out.
        if f.failover_timeout_ms <= self.monitor.probe_timeout_ms {
            return Err(invalid(
                "failover.failover_timeout_ms",
                format!(
                    "must be greater than monitor.probe_timeout_ms ({})",
                    self.monitor.probe_timeout_ms
                ),
            ));
        }
        if let Some(path) = &f.state_file {
            let text = path.to_string_lossy();
            if text.trim().is_empty() || text.ends_with('/') || path.file_name().is_none() {
                return Err(invalid(
                    "failover.state_file",
                    "must name a file, e.g. /var/lib/palisade/state.toml",
                ));
            }
        }
        for (key, command) in [
            ("failover.fence_command", &f.fence_command),
            ("failover.rejoin_command", &f.rejoin_command),
        ] {
            if command.as_deref().is_some_and(|c| c.trim().is_empty()) {
                return Err(invalid(key, "must not be empty; leave it out instead"));
            }
        }
        if f.replication_mode != ReplicationMode::Async && self.nodes.len() < 2 {
            return Err(invalid(
                "failover.replication_mode",
                "sync and sync_strict need at least two nodes",
            ));
        }
        Ok(())
    }

    fn validate_nodes(&self) -> Result<(), ConfigError> {
        if self.nodes.is_empty() {
            return Err(invalid("nodes", "at least one node is required"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.host.trim().is_empty() {
                return Err(invalid(format!("nodes[{i}].host"), "must not be empty"));
            }
            if node.port == 0 {
                return Err(invalid(
                    format!("nodes[{i}].port"),
                    "must be between 1 and 65535",
                ));
            }
            if node.weight > MAX_NODE_WEIGHT {
                return Err(invalid(
                    format!("nodes[{i}].weight"),
                    format!("must be at most {MAX_NODE_WEIGHT}"),
                ));
            }
            if !seen.insert(node.display_name()) {
                return Err(invalid(
                    format!("nodes[{i}].name"),
                    format!("duplicate node name {:?}", node.display_name()),
                ));
            }
        }
        Ok(())
    }

    fn validate_users(&self) -> Result<(), ConfigError> {
        if self.users.is_empty() {
            return Err(invalid("users", "at least one user is required"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, user) in self.users.iter().enumerate() {
            let key = |field: &str| format!("users[{i}].{field}");
            if user.name.is_empty() {
                return Err(invalid(key("name"), "must not be empty"));
            }
            if !seen.insert(user.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!("duplicate user {:?}", user.name),
                ));
            }
            if let Some(verifier) = &user.scram_verifier {
                if crate::frontend::auth::parse_scram_verifier(verifier).is_none() {
                    return Err(invalid(
                        key("scram_verifier"),
                        "must look like SCRAM-SHA-256$<iterations>:<salt>$<storedkey>:<serverkey>",
                    ));
                }
            }
            match user.auth {
                AuthMethod::Trust => {}
                AuthMethod::ScramSha256 => {
                    if user.password.is_none() && user.scram_verifier.is_none() {
                        return Err(invalid(
                            key("password"),
                            "scram-sha-256 needs `password` or `scram_verifier`",
                        ));
                    }
                }
                AuthMethod::Md5 => {
                    if user.password.is_none() {
                        return Err(invalid(key("password"), "md5 needs `password`"));
                    }
                }
            }
        }
        Ok(())
    }
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(key, "must be greater than 0"));
    }
    Ok(())
}

fn line_of(text: &str, offset: usize) -> String {
    let line = text[..offset.min(text.len())].matches('\n').count() + 1;
    format!(" (line {line})")
}

#[cfg(test)]
mod tests;

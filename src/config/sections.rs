//! The plain settings sections — `[proxy]`, `[backend]`, `[monitor]`,
//! `[pool]` and `[routing]` — with their defaults and the durations they
//! hold as milliseconds. Their rules are checked by
//! [`Config::validate`](super::Config::validate).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ServerTlsMode;
use super::{invalid, positive, ConfigError};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address clients connect to.
    pub listen: String,
    /// Logged-in clients (console included); a connection arriving while
    /// they are all taken is refused at once with 53300.
    pub max_client_connections: usize,
    /// Largest message accepted from a client or a server, in bytes.
    pub max_message_size: usize,
    /// A client must finish startup and authentication within this time.
    pub startup_timeout_ms: u64,
    /// Connections still starting up or authenticating; past this many the
    /// oldest is closed to make room (an idle socket cannot lock others out).
    pub max_pending_logins: usize,
    /// The first failed login from an address delays that address's next
    /// logins this long; each further failure doubles it. 0 turns it off.
    pub login_failure_delay_ms: u64,
    /// The most that delay grows to; a login that would wait longer is
    /// refused at once with 53300.
    pub max_login_failure_delay_ms: u64,
    /// A logged-in client that sends part of a message and then nothing
    /// more for this long is closed with 08P01.
    pub client_message_timeout_ms: u64,
    /// A session idle outside a transaction this long is closed with
    /// 57P05; 0 (the default) never closes idle sessions.
    pub client_idle_timeout_ms: u64,
    /// Opening (and authenticating) a server connection must finish within this time.
    pub connect_timeout_ms: u64,
    /// The same for a replica a read is sent to: past it the read goes to
    /// the next candidate instead of failing.
    pub replica_connect_timeout_ms: u64,
    /// Threads relaying traffic. 1 (the default) runs everything on one
    /// thread, like PgBouncer: on a machine whose cores PostgreSQL needs,
    /// cross-thread wake-ups cost more than a second thread gains.
    pub worker_threads: usize,
    /// On SIGTERM, SIGINT or the console's `SHUTDOWN WAIT_FOR_CLIENTS`,
    /// transactions and queries in flight get this long to finish before
    /// their sessions are ended too.
    pub shutdown_timeout_ms: u64,
    /// How log lines are written to stderr: `text` or `json` (one object
    /// a line). Read at start.
    pub log_format: LogFormat,
    /// Listen with SO_REUSEPORT, so a second Palisade can listen on the
    /// same address (a rolling restart): a draining proxy then closes its
    /// listener, leaving new connections to the other, instead of refusing
    /// them with 57P03.
    pub reuse_port: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "127.0.0.1:6432".into(),
            max_client_connections: 1000,
            max_message_size: 128 * 1024 * 1024,
            startup_timeout_ms: 5_000,
            max_pending_logins: 100,
            login_failure_delay_ms: 100,
            max_login_failure_delay_ms: 5_000,
            client_message_timeout_ms: 30_000,
            client_idle_timeout_ms: 0,
            connect_timeout_ms: 5_000,
            replica_connect_timeout_ms: 1_000,
            worker_threads: 1,
            shutdown_timeout_ms: 30_000,
            log_format: LogFormat::Text,
            reuse_port: false,
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

    pub fn replica_connect_timeout(&self) -> Duration {
        Duration::from_millis(self.replica_connect_timeout_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    pub fn client_message_timeout(&self) -> Duration {
        Duration::from_millis(self.client_message_timeout_ms)
    }

    /// `None` when idle sessions are never closed.
    pub fn client_idle_timeout(&self) -> Option<Duration> {
        (self.client_idle_timeout_ms > 0)
            .then(|| Duration::from_millis(self.client_idle_timeout_ms))
    }

    /// The rules on the connection limits.
    pub(super) fn validate_limits(&self) -> Result<(), ConfigError> {
        if self.max_pending_logins == 0 {
            return Err(invalid("proxy.max_pending_logins", "must be at least 1"));
        }
        positive(
            "proxy.client_message_timeout_ms",
            self.client_message_timeout_ms,
        )?;
        if self.max_login_failure_delay_ms < self.login_failure_delay_ms {
            return Err(invalid(
                "proxy.max_login_failure_delay_ms",
                format!(
                    "must be at least proxy.login_failure_delay_ms ({})",
                    self.login_failure_delay_ms
                ),
            ));
        }
        Ok(())
    }
}

/// Credentials of Palisade's own control-plane connections (probes), and
/// TLS for every connection to PostgreSQL.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    /// TLS to the nodes, for sessions and the control plane alike.
    pub server_tls: ServerTlsMode,
    /// PEM CA certificates the nodes' certificates must chain to (`verify-full`).
    pub server_ca_file: Option<PathBuf>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            user: "postgres".into(),
            password: None,
            database: "postgres".into(),
            server_tls: ServerTlsMode::Disable,
            server_ca_file: None,
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
    /// Classified statements remembered per database, keyed by the
    /// statement's shape (see `classify::ClassifyCache`); 0 turns the
    /// cache off.
    pub classify_cache_size: usize,
    /// How often the list of VOLATILE user functions is reloaded from the primary.
    pub function_refresh_ms: u64,
    /// A read outside a transaction that has had no reply for this long
    /// from a replica the monitor no longer vouches for (suspect or down)
    /// is cancelled there and sent to another node; 0 turns it off.
    pub replica_stall_ms: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            load_balance: LoadBalance::RoundRobin,
            primary_read_weight: 0,
            classify_cache_size: 4096,
            function_refresh_ms: 60_000,
            replica_stall_ms: 2_000,
        }
    }
}

impl RoutingConfig {
    pub fn function_refresh(&self) -> Duration {
        Duration::from_millis(self.function_refresh_ms)
    }

    /// `None` when stalled reads are left alone.
    pub fn replica_stall(&self) -> Option<Duration> {
        (self.replica_stall_ms > 0).then(|| Duration::from_millis(self.replica_stall_ms))
    }
}

//! Configuration: TOML in, a validated [`Config`] out.
//!
//! Every rule fails hard with the key's dotted name and the rule it broke, so
//! `palisade check-config` and a proxy start both refuse a bad file with a
//! message an operator can act on. Defaults live next to their fields.
//!
//! Each section's types, defaults and rules live in their own file; this
//! module owns [`Config`] itself, loading, the error type and the rules on
//! the plain settings sections.

mod admin;
mod auth;
mod consistency;
mod failover;
mod http;
mod nodes;
mod sections;
mod tls;
mod users;
mod verifier;

pub use admin::{AdminConfig, ConsoleAccess};
pub use auth::{AuthConfig, DEFAULT_AUTH_QUERY};
pub use consistency::{Consistency, ConsistencyConfig, OnNoReplica, PartitionMode};
pub use failover::{FailoverConfig, FailoverMode, ReplicationMode, StoreKind};
pub use http::HttpConfig;
pub use nodes::NodeConfig;
pub use sections::{
    BackendConfig, LoadBalance, LogFormat, MonitorConfig, PoolConfig, ProxyConfig, RoutingConfig,
};
pub use tls::{ServerTlsMode, TlsConfig, TlsMode};
pub use users::{AuthMethod, UserConfig};
pub use verifier::{parse_scram_verifier, StoredVerifier};

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use nodes::MAX_NODE_WEIGHT;

/// The smallest and largest accepted `proxy.max_message_size` (PostgreSQL's
/// own cap on a message is 1 GiB).
const MIN_MESSAGE_SIZE: usize = 8 * 1024;
const MAX_MESSAGE_SIZE: usize = 1 << 30;

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
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    /// The file it was read from (what `RELOAD` and SIGHUP read again).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(path.display().to_string(), format!("cannot read: {e}")))?;
        let mut config = Config::parse(&text)?;
        config.source = Some(path.to_owned());
        Ok(config)
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
        self.http.listen_addr()?;
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
        p.validate_limits()?;
        positive("proxy.connect_timeout_ms", p.connect_timeout_ms)?;
        positive(
            "proxy.replica_connect_timeout_ms",
            p.replica_connect_timeout_ms,
        )?;
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
        self.consistency.validate()?;
        self.tls.validate()?;
        tls::validate_server(&self.backend)?;
        nodes::validate(&self.nodes)?;
        self.failover.validate(&self.monitor, self.nodes.len())?;
        self.admin.validate()?;
        self.auth.validate()?;
        users::validate(&self.users, self.auth.enabled())
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

#[cfg(test)]
impl Config {
    /// The least a config can say: one node, one user, defaults otherwise.
    pub(crate) fn minimal() -> Config {
        Config::parse(
            r#"
            [backend]
            user = "u"
            [[nodes]]
            host = "127.0.0.1"
            port = 1
            [[users]]
            name = "app"
            password = "secret"
            "#,
        )
        .expect("config")
    }
}

/// Every setting of `config` as (dotted key, value), in file order: tables
/// joined with `.`, arrays of tables as `key[i]`, strings unquoted. Keys
/// `hide` names show `********` instead of their value.
pub fn settings(
    config: &Config,
    hide: impl Fn(&str) -> bool,
) -> Result<Vec<(String, String)>, toml::ser::Error> {
    let mut rows = Vec::new();
    flatten(
        String::new(),
        &toml::Value::try_from(config)?,
        &hide,
        &mut rows,
    );
    Ok(rows)
}

fn flatten(
    key: String,
    value: &toml::Value,
    hide: &impl Fn(&str) -> bool,
    rows: &mut Vec<(String, String)>,
) {
    let join = |sub: &str| {
        if key.is_empty() {
            sub.to_owned()
        } else {
            format!("{key}.{sub}")
        }
    };
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table {
                if hide(k) {
                    rows.push((join(k), "********".to_owned()));
                } else {
                    flatten(join(k), v, hide, rows);
                }
            }
        }
        toml::Value::Array(items) if items.iter().all(toml::Value::is_table) => {
            for (i, v) in items.iter().enumerate() {
                flatten(format!("{key}[{i}]"), v, hide, rows);
            }
        }
        toml::Value::String(s) => rows.push((key, s.clone())),
        other => rows.push((key, other.to_string())),
    }
}

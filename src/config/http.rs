//! `[http]`: the monitoring endpoint (Prometheus metrics, health and role
//! checks, the status page). Off unless `listen` is set.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the HTTP endpoint, e.g. `127.0.0.1:7432`; empty (the
    /// default) serves no HTTP at all.
    pub listen: String,
}

impl HttpConfig {
    /// Where to listen, or `None` when the endpoint is off.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.listen.is_empty() {
            return Ok(None);
        }
        self.listen.parse().map(Some).map_err(|_| {
            invalid(
                "http.listen",
                "must be an IP address and port, e.g. 127.0.0.1:7432, or empty to serve no HTTP",
            )
        })
    }
}

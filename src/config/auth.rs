//! `[auth]`: users looked up on the primary (the auth query), for roles not
//! listed in `[[users]]`. Off unless `auth_user` is set.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// PostgreSQL's own catalog of passwords; a SECURITY DEFINER function over
/// it lets `auth_user` be an unprivileged role (see the README).
pub const DEFAULT_AUTH_QUERY: &str = "SELECT usename, passwd FROM pg_shadow WHERE usename = $1";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The role that runs `auth_query` on the primary; unset turns lookups off.
    pub auth_user: Option<String>,
    /// `auth_user`'s own password on the primary.
    pub auth_password: Option<String>,
    /// Returns (name, SCRAM verifier or md5 hash) for the role named by `$1`.
    pub auth_query: String,
    /// How long a looked-up secret is trusted before it is fetched again.
    pub auth_cache_ms: u64,
    /// The database `auth_query` runs in; defaults to `backend.database`.
    pub auth_database: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            auth_user: None,
            auth_password: None,
            auth_query: DEFAULT_AUTH_QUERY.into(),
            auth_cache_ms: 30_000,
            auth_database: None,
        }
    }
}

impl AuthConfig {
    /// Whether roles missing from `[[users]]` are looked up on the primary.
    pub fn enabled(&self) -> bool {
        self.auth_user.is_some()
    }

    pub fn cache_ttl(&self) -> Duration {
        Duration::from_millis(self.auth_cache_ms)
    }

    /// A role found missing is asked about again sooner: one created just
    /// after a failed attempt should not wait out the whole TTL.
    pub fn negative_ttl(&self) -> Duration {
        self.cache_ttl().min(Duration::from_secs(1))
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.auth_user.as_deref() == Some("") {
            return Err(invalid("auth.auth_user", "must not be empty"));
        }
        if self.auth_query.trim().is_empty() {
            return Err(invalid("auth.auth_query", "must not be empty"));
        }
        if self.auth_database.as_deref() == Some("") {
            return Err(invalid("auth.auth_database", "must not be empty"));
        }
        if self.auth_cache_ms == 0 {
            return Err(invalid("auth.auth_cache_ms", "must be greater than 0"));
        }
        Ok(())
    }
}

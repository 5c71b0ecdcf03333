//! `[admin]`: who may use the admin console (the virtual database
//! `palisade`), with PgBouncer's names. `admin_users` may run every console
//! command, `stats_users` only the `SHOW`s; nobody else may run anything.

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// May run every console command: SWITCHOVER, REJOIN and the SHOWs.
    pub admin_users: Vec<String>,
    /// May only read: the SHOWs.
    pub stats_users: Vec<String>,
}

/// What a user may do in the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConsoleAccess {
    /// Listed nowhere: every command is refused.
    None,
    /// In `stats_users`: SHOW only.
    Stats,
    /// In `admin_users`: everything.
    Admin,
}

impl AdminConfig {
    pub fn access(&self, user: &str) -> ConsoleAccess {
        let listed = |users: &[String]| users.iter().any(|u| u == user);
        if listed(&self.admin_users) {
            ConsoleAccess::Admin
        } else if listed(&self.stats_users) {
            ConsoleAccess::Stats
        } else {
            ConsoleAccess::None
        }
    }

    /// Names non-empty, and each user in one list only (which role it has
    /// must not depend on which list is read first).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (list, users) in [
            ("admin.admin_users", &self.admin_users),
            ("admin.stats_users", &self.stats_users),
        ] {
            if let Some(i) = users.iter().position(String::is_empty) {
                return Err(invalid(format!("{list}[{i}]"), "must not be empty"));
            }
        }
        if let Some(user) = self
            .stats_users
            .iter()
            .find(|u| self.admin_users.contains(u))
        {
            return Err(invalid(
                "admin.stats_users",
                format!("{user:?} is also in admin.admin_users; list each user once"),
            ));
        }
        Ok(())
    }
}

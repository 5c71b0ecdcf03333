//! `[[users]]`: who may log in to Palisade, how each proves it, the role and
//! password used on PostgreSQL, and the rules on the list.

use serde::{Deserialize, Serialize};

use super::verifier::parse_scram_verifier;
use super::{invalid, ConfigError};

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

/// At least one user (unless users are looked up on the server); names unique and non-empty; each with the secret its
/// method needs, and any stored verifier in PostgreSQL's format.
pub(super) fn validate(users: &[UserConfig], auth_query: bool) -> Result<(), ConfigError> {
    if users.is_empty() && !auth_query {
        return Err(invalid(
            "users",
            "at least one user is required (or `auth.auth_user` to look users up)",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, user) in users.iter().enumerate() {
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
            if parse_scram_verifier(verifier).is_none() {
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

//! `[tls]` (TLS between clients and Palisade) and the `backend.server_tls`
//! settings (TLS between Palisade and PostgreSQL), with their rules. Loading
//! the files they name is [`crate::tls`]'s job, at start and on reload.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{invalid, BackendConfig, ConfigError};

/// Whether clients may, or must, speak TLS to Palisade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum TlsMode {
    /// SSLRequest is answered `N`; no certificate is needed.
    #[serde(rename = "disable")]
    Disable,
    /// SSLRequest is answered `S`; cleartext clients are still served.
    #[serde(rename = "allow")]
    Allow,
    /// Cleartext startups are refused with 28000, as PostgreSQL's `hostssl`
    /// refuses them (cancel requests excepted: libpq sends those in the clear).
    #[serde(rename = "require")]
    Require,
}

/// `[tls]`: the certificate Palisade shows clients.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Unset: `allow` when a certificate is configured, else `disable`.
    pub mode: Option<TlsMode>,
    /// PEM certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

impl TlsConfig {
    /// The mode in force, the default included.
    pub fn mode(&self) -> TlsMode {
        match (self.mode, &self.cert_file) {
            (Some(mode), _) => mode,
            (None, Some(_)) => TlsMode::Allow,
            (None, None) => TlsMode::Disable,
        }
    }

    /// A certificate and its key come together, and a mode that answers
    /// `S` needs them.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => return Err(invalid("tls.key_file", "required with tls.cert_file")),
            (None, Some(_)) => return Err(invalid("tls.cert_file", "required with tls.key_file")),
            (None, None) if self.mode() != TlsMode::Disable => {
                return Err(invalid(
                    "tls.cert_file",
                    "required when tls.mode is \"allow\" or \"require\"",
                ))
            }
            _ => {}
        }
        Ok(())
    }
}

/// How Palisade's connections to PostgreSQL (sessions' and the control
/// plane's) use TLS; libpq's `sslmode` of the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum ServerTlsMode {
    #[default]
    #[serde(rename = "disable")]
    Disable,
    /// TLS when the server offers it, cleartext when it answers `N`.
    #[serde(rename = "prefer")]
    Prefer,
    /// TLS or no connection; the server's certificate is not checked.
    #[serde(rename = "require")]
    Require,
    /// TLS with a certificate signed by `server_ca_file` for the node's host.
    #[serde(rename = "verify-full")]
    VerifyFull,
}

/// `verify-full` needs a CA to verify with, and only it uses one.
pub(super) fn validate_server(backend: &BackendConfig) -> Result<(), ConfigError> {
    match (backend.server_tls, &backend.server_ca_file) {
        (ServerTlsMode::VerifyFull, None) => Err(invalid(
            "backend.server_ca_file",
            "required when backend.server_tls = \"verify-full\"",
        )),
        (ServerTlsMode::VerifyFull, Some(_)) | (_, None) => Ok(()),
        (_, Some(_)) => Err(invalid(
            "backend.server_ca_file",
            "only used with backend.server_tls = \"verify-full\"",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const BASE: &str = r#"
[[nodes]]
host = "127.0.0.1"
port = 5432

[[users]]
name = "app"
password = "secret"
"#;

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("{extra}\n{BASE}"))
    }

    fn rejected(extra: &str) -> String {
        parse(extra).expect_err("config should be rejected").key
    }

    #[test]
    fn tls_is_off_by_default_and_allowed_once_a_certificate_is_set() {
        let c = parse("").unwrap();
        assert_eq!(c.tls.mode(), TlsMode::Disable);
        assert_eq!(c.backend.server_tls, ServerTlsMode::Disable);
        let c = parse("[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"").unwrap();
        assert_eq!(c.tls.mode(), TlsMode::Allow);
        let c = parse("[tls]\nmode = \"require\"\ncert_file = \"c\"\nkey_file = \"k\"").unwrap();
        assert_eq!(c.tls.mode(), TlsMode::Require);
        let c = parse("[tls]\nmode = \"disable\"\ncert_file = \"c\"\nkey_file = \"k\"").unwrap();
        assert_eq!(c.tls.mode(), TlsMode::Disable);
    }

    #[test]
    fn a_certificate_needs_its_key_and_allow_or_require_need_both() {
        assert_eq!(rejected("[tls]\ncert_file = \"c.pem\""), "tls.key_file");
        assert_eq!(rejected("[tls]\nkey_file = \"k.pem\""), "tls.cert_file");
        assert_eq!(rejected("[tls]\nmode = \"require\""), "tls.cert_file");
        assert_eq!(rejected("[tls]\nmode = \"allow\""), "tls.cert_file");
        assert!(rejected("[tls]\nmode = \"sometimes\"").starts_with("toml"));
    }

    #[test]
    fn verify_full_needs_a_ca_file_and_only_it_takes_one() {
        for mode in ["disable", "prefer", "require"] {
            let c = parse(&format!("[backend]\nserver_tls = \"{mode}\"")).unwrap();
            assert_ne!(c.backend.server_tls, ServerTlsMode::VerifyFull);
            let with_ca = format!("[backend]\nserver_tls = \"{mode}\"\nserver_ca_file = \"ca\"");
            assert_eq!(rejected(&with_ca), "backend.server_ca_file");
        }
        assert_eq!(
            rejected("[backend]\nserver_tls = \"verify-full\""),
            "backend.server_ca_file"
        );
        let c = parse("[backend]\nserver_tls = \"verify-full\"\nserver_ca_file = \"ca\"").unwrap();
        assert_eq!(c.backend.server_tls, ServerTlsMode::VerifyFull);
        assert!(rejected("[backend]\nserver_tls = \"verify-ca\"").starts_with("toml"));
    }
}

//! Users looked up on the primary (`[auth]`): runs `auth_query` as
//! `auth_user` for a role missing from `[[users]]` and caches what it
//! returns, a SCRAM verifier or an md5 hash, for `auth_cache_ms`. A role
//! found missing is cached too, for at most a second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::config::{parse_scram_verifier, AuthConfig, Config, StoredVerifier};
use crate::tls::ServerTls;
use crate::topology::TopologyHandle;

/// A role's password as PostgreSQL stores it.
#[derive(Clone, PartialEq, Eq)]
pub enum Stored {
    Scram(StoredVerifier),
    /// `md5` + hex(md5(password + role name)).
    Md5(String),
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stored::Scram(_) => "Scram(********)",
            Stored::Md5(_) => "Md5(********)",
        })
    }
}

impl Stored {
    /// `None` for a role without a usable password: NULL, or a format no
    /// login can be checked against.
    pub fn parse(passwd: Option<&str>) -> Option<Stored> {
        let passwd = passwd?;
        if let Some(v) = parse_scram_verifier(passwd) {
            return Some(Stored::Scram(v));
        }
        let hex = passwd.strip_prefix("md5")?;
        (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Stored::Md5(passwd.to_ascii_lowercase()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("no primary to run the auth query on")]
    NoPrimary,
    #[error("auth query on {node}: {source}")]
    Query {
        node: String,
        source: tokio_postgres::Error,
    },
    #[error("auth query on {node} timed out")]
    Timeout { node: String },
}

struct Cached {
    at: Instant,
    stored: Option<Stored>,
}

/// The auth_user's connection, kept for the next lookup on the same node.
struct Open {
    node: (String, u16),
    client: tokio_postgres::Client,
}

pub struct UserLookup {
    auth: AuthConfig,
    database: String,
    timeout: Duration,
    tls: ServerTls,
    topology: TopologyHandle,
    cache: Mutex<HashMap<String, Cached>>,
    conn: tokio::sync::Mutex<Option<Open>>,
}

impl UserLookup {
    /// `None` when `[auth]` is off.
    pub fn new(config: &Config, tls: ServerTls, topology: TopologyHandle) -> Option<UserLookup> {
        config.auth.enabled().then(|| UserLookup {
            auth: config.auth.clone(),
            database: config
                .auth
                .auth_database
                .clone()
                .unwrap_or_else(|| config.backend.database.clone()),
            timeout: config.proxy.connect_timeout() + config.monitor.probe_timeout(),
            tls,
            topology,
            cache: Mutex::new(HashMap::new()),
            conn: tokio::sync::Mutex::new(None),
        })
    }

    /// `user`'s stored password, from the cache while it is fresh.
    pub async fn find(&self, user: &str) -> Result<Option<Stored>, LookupError> {
        if let Some(hit) = self.cached(user) {
            return Ok(hit);
        }
        let stored = self.query(user).await?;
        debug!(user, found = stored.is_some(), "auth query");
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // Entries past their TTL go, so unknown names cannot pile up.
        let ttl = self.auth.cache_ttl();
        cache.retain(|_, c| now.duration_since(c.at) < ttl);
        cache.insert(
            user.to_owned(),
            Cached {
                at: now,
                stored: stored.clone(),
            },
        );
        Ok(stored)
    }

    fn cached(&self, user: &str) -> Option<Option<Stored>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let entry = cache.get(user)?;
        let ttl = match entry.stored {
            Some(_) => self.auth.cache_ttl(),
            None => self.auth.negative_ttl(),
        };
        (entry.at.elapsed() < ttl).then(|| entry.stored.clone())
    }

    async fn query(&self, user: &str) -> Result<Option<Stored>, LookupError> {
        let topology = self.topology.load();
        let primary = topology.primary().ok_or(LookupError::NoPrimary)?;
        let node = &topology.nodes[primary];
        let key = (node.host.clone(), node.port);
        let name = format!("{}:{}", node.host, node.port);
        let work = async {
            let mut conn = self.conn.lock().await;
            let reusable = conn
                .as_ref()
                .is_some_and(|o| o.node == key && !o.client.is_closed());
            if !reusable {
                *conn = Some(Open {
                    client: self.connect(&key).await?,
                    node: key.clone(),
                });
            }
            let client = &conn.as_ref().expect("opened above").client;
            let rows = client
                .query(self.auth.auth_query.as_str(), &[&user])
                .await?;
            let passwd = match rows.first() {
                Some(row) => row.try_get::<_, Option<String>>(1)?,
                None => None,
            };
            Ok(Stored::parse(passwd.as_deref()))
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result.map_err(|source| {
                warn!(node = %name, error = %source, "auth query failed");
                LookupError::Query { node: name, source }
            }),
            Err(_) => Err(LookupError::Timeout { node: name }),
        }
    }

    async fn connect(
        &self,
        (host, port): &(String, u16),
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut pg = tokio_postgres::Config::new();
        pg.host(host)
            .port(*port)
            .user(self.auth.auth_user.as_deref().unwrap_or_default())
            .dbname(&self.database)
            .application_name("palisade-auth")
            .connect_timeout(self.timeout);
        if let Some(password) = &self.auth.auth_password {
            pg.password(password);
        }
        let tls = self.tls.postgres(&mut pg);
        let (client, connection) = pg.connect(tls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "auth query connection closed");
            }
        });
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_passwords_parse_as_postgres_keeps_them() {
        let scram = "SCRAM-SHA-256$4096:AQIDBAUGBwgJCgsMDQ4PEA==$8rrDg00OqaiWXJ7p+sCgHEIaBSHY89ZJl3mfIsf32oY=:05L1f+yZbiN8O0AnO40Og85NNRhvzTS57naKRWCcsIA=";
        assert!(matches!(Stored::parse(Some(scram)), Some(Stored::Scram(_))));
        let md5 = "md5ABCDEF0123456789abcdef0123456789";
        assert_eq!(
            Stored::parse(Some(md5)),
            Some(Stored::Md5(md5.to_ascii_lowercase()))
        );
        for unusable in [None, Some(""), Some("md5xyz"), Some("cleartext")] {
            assert_eq!(Stored::parse(unusable), None, "{unusable:?}");
        }
    }
}

//! The failover's hands: what the driver does to nodes on the state
//! machine's behalf, over short-lived connections of the control plane's own
//! (tokio-postgres). Each call is one action against one node; none decides
//! anything, and each either succeeds or says who failed and why.
//!
//! - [`NodeAdmin::promote`]: `pg_promote(wait => true)`, then the read-only
//!   default a fence may have left is taken back, and a checkpoint records
//!   the new timeline (pg_rewind needs it to rewind the old primary).
//! - [`NodeAdmin::repoint`]: `primary_conninfo` aimed at another node (its
//!   other settings kept), reloaded.
//! - [`NodeAdmin::fence`]: made read-only by default, reloaded, and every
//!   client session on it ended.
//! - [`NodeAdmin::set_sync_standbys`]: the primary's
//!   `synchronous_standby_names`.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};
use tracing::debug;

/// One action on one node failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{node}: {what}: {cause}")]
pub struct ActionError {
    pub node: String,
    pub what: &'static str,
    pub cause: String,
}

/// How to reach one node as the control plane.
#[derive(Debug, Clone)]
pub struct NodeAdmin {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    /// Connecting, and each statement, must finish within this.
    pub timeout: Duration,
}

impl NodeAdmin {
    fn fail(&self, what: &'static str, cause: impl ToString) -> ActionError {
        ActionError {
            node: self.name.clone(),
            what,
            cause: cause.to_string(),
        }
    }

    async fn connect(&self, what: &'static str) -> Result<Client, ActionError> {
        let mut pg = tokio_postgres::Config::new();
        pg.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.database)
            .application_name("palisade-failover")
            .connect_timeout(self.timeout);
        if let Some(p) = &self.password {
            pg.password(p);
        }
        let (client, connection) = tokio::time::timeout(self.timeout, pg.connect(NoTls))
            .await
            .map_err(|_| self.fail(what, "connection timed out"))?
            .map_err(|e| self.fail(what, describe(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "failover connection ended");
            }
        });
        Ok(client)
    }

    /// Runs `sql` statement by statement (ALTER SYSTEM cannot run in a
    /// multi-statement string's implicit transaction).
    async fn run(&self, what: &'static str, sql: &[&str]) -> Result<(), ActionError> {
        let client = self.connect(what).await?;
        for statement in sql {
            tokio::time::timeout(self.timeout, client.batch_execute(statement))
                .await
                .map_err(|_| self.fail(what, format!("{}: timed out", shown(statement))))?
                .map_err(|e| self.fail(what, format!("{}: {}", shown(statement), describe(&e))))?;
        }
        Ok(())
    }

    /// Promotes the node (a replica) and waits until it is a primary; a
    /// read-only default left by an earlier fence is taken back.
    pub async fn promote(&self, wait: Duration) -> Result<(), ActionError> {
        const WHAT: &str = "promote";
        let client = self.connect(WHAT).await?;
        let seconds = i32::try_from(wait.as_secs().max(1)).unwrap_or(i32::MAX);
        let promoted = tokio::time::timeout(
            wait + self.timeout,
            client.query_one("SELECT pg_promote(true, $1)", &[&seconds]),
        )
        .await
        .map_err(|_| self.fail(WHAT, "pg_promote timed out"))?
        .map_err(|e| self.fail(WHAT, describe(&e)))?;
        if !promoted.try_get::<_, bool>(0).unwrap_or(false) {
            return Err(self.fail(WHAT, format!("not promoted within {wait:?}")));
        }
        drop(client);
        // The checkpoint writes the new timeline into the control file,
        // where pg_rewind looks when the old primary is rejoined.
        self.run(
            WHAT,
            &[
                "ALTER SYSTEM RESET default_transaction_read_only",
                "SELECT pg_reload_conf()",
                "CHECKPOINT",
            ],
        )
        .await
    }

    /// Points the node's WAL receiver at `host:port`, keeping the rest of
    /// its `primary_conninfo` (user, password, application_name, ...).
    pub async fn repoint(&self, host: &str, port: u16) -> Result<(), ActionError> {
        const WHAT: &str = "repoint";
        let client = self.connect(WHAT).await?;
        let current: String = tokio::time::timeout(
            self.timeout,
            client.query_one("SELECT current_setting('primary_conninfo')", &[]),
        )
        .await
        .map_err(|_| self.fail(WHAT, "timed out"))?
        .map_err(|e| self.fail(WHAT, describe(&e)))?
        .try_get(0)
        .map_err(|e| self.fail(WHAT, e))?;
        drop(client);
        let conninfo = with_address(&current, host, port).map_err(|e| self.fail(WHAT, e))?;
        let set = format!(
            "ALTER SYSTEM SET primary_conninfo = {}",
            quote_literal(&conninfo)
        );
        self.run(WHAT, &[&set, "SELECT pg_reload_conf()"]).await
    }

    /// Fences the node: read-only by default from now on (persisted, so a
    /// restart keeps it), reloaded, and its client sessions ended. A
    /// transaction already open keeps its mode, which is why the sessions go.
    pub async fn fence(&self) -> Result<(), ActionError> {
        self.run(
            "fence",
            &[
                "ALTER SYSTEM SET default_transaction_read_only = on",
                "SELECT pg_reload_conf()",
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            ],
        )
        .await
    }

    /// Sets the primary's `synchronous_standby_names` to any one of
    /// `standbys` (their application names), or to nothing (asynchronous).
    pub async fn set_sync_standbys(&self, standbys: &[String]) -> Result<(), ActionError> {
        let value = sync_standby_names(standbys);
        let set = format!(
            "ALTER SYSTEM SET synchronous_standby_names = {}",
            quote_literal(&value)
        );
        self.run(
            "set synchronous_standby_names",
            &[&set, "SELECT pg_reload_conf()"],
        )
        .await
    }
}

/// The text of a server error, or the client's own.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// `ANY 1 ("a", "b")`, or empty for none.
pub fn sync_standby_names(standbys: &[String]) -> String {
    if standbys.is_empty() {
        return String::new();
    }
    let names: Vec<String> = standbys
        .iter()
        .map(|n| format!("\"{}\"", n.replace('"', "\"\"")))
        .collect();
    format!("ANY 1 ({})", names.join(", "))
}

/// A statement as an error shows it: an `ALTER SYSTEM SET`'s value is left
/// out (`primary_conninfo` holds the replication password).
fn shown(statement: &str) -> &str {
    match statement.split_once(" = ") {
        Some((setting, _)) if statement.starts_with("ALTER SYSTEM SET ") => setting,
        _ => statement,
    }
}

/// A SQL string literal.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A libpq connection string's `key=value` pairs, values unquoted.
fn parse_conninfo(conninfo: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("missing \"=\" after {key:?} in primary_conninfo"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err("unterminated quoted value in primary_conninfo".into()),
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err("trailing backslash in primary_conninfo".into()),
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// `conninfo` with its host and port replaced (added when missing) and
/// every other key kept; `hostaddr` goes, as it would still name the old node.
pub fn with_address(conninfo: &str, host: &str, port: u16) -> Result<String, String> {
    let mut pairs: Vec<(String, String)> = parse_conninfo(conninfo)?
        .into_iter()
        .filter(|(k, _)| !matches!(k.as_str(), "host" | "hostaddr" | "port"))
        .collect();
    pairs.insert(0, ("port".into(), port.to_string()));
    pairs.insert(0, ("host".into(), host.to_owned()));
    Ok(pairs
        .iter()
        .map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
        .collect::<Vec<_>>()
        .join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repointing_keeps_everything_but_the_address() {
        let old = "user=postgres password='se cr\\'et' host=127.0.0.1 port=5432 application_name=node1 sslmode=prefer";
        let new = with_address(old, "127.0.0.1", 6000).unwrap();
        assert_eq!(
            new,
            "host='127.0.0.1' port='6000' user='postgres' password='se cr\\'et' application_name='node1' sslmode='prefer'"
        );
        let pairs = parse_conninfo(&new).unwrap();
        assert!(pairs.contains(&("password".into(), "se cr'et".into())));
        // Empty (a node that never replicated): just the address.
        assert_eq!(with_address("", "h", 1).unwrap(), "host='h' port='1'");
        assert_eq!(
            with_address("hostaddr=10.0.0.1 host = a port= 2", "b", 3).unwrap(),
            "host='b' port='3'"
        );
        for bad in ["host", "host='x", "a=b c"] {
            assert!(with_address(bad, "h", 1).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_show_a_setting_without_its_value() {
        let set = "ALTER SYSTEM SET primary_conninfo = 'password=s3cret host=h'";
        assert_eq!(shown(set), "ALTER SYSTEM SET primary_conninfo");
        let terminate = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE a = 'b'";
        assert_eq!(shown(terminate), terminate);
    }

    #[test]
    fn sync_standby_names_quote_each_standby() {
        assert_eq!(sync_standby_names(&[]), "");
        assert_eq!(
            sync_standby_names(&["node1".into(), "we\"ird".into()]),
            "ANY 1 (\"node1\", \"we\"\"ird\")"
        );
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}

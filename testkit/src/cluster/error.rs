//! The one error type of the cluster harness: each variant says what failed and keeps its cause.

use std::io;
use std::time::Duration;

/// Why a local cluster, or one of its nodes, could not be started, stopped or queried.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No PostgreSQL server binaries on this machine. Never a reason to skip a test.
    #[error(
        "PostgreSQL server binaries not found (searched: {searched}); set PG_BIN to the \
         directory holding `postgres` and `initdb`, or install postgresql \
         (e.g. apt-get install -y postgresql)"
    )]
    NoPostgres { searched: String },

    /// Running as root, but there is no unprivileged OS user to run the servers as.
    #[error(
        "running as root, and PostgreSQL refuses to run as root, but OS user `{user}` \
         does not exist (installing postgresql creates it)"
    )]
    NoOsUser { user: String },

    /// An external command (initdb, pg_basebackup, psql, ...) exited unsuccessfully.
    #[error("{what} failed ({status}): {stderr}")]
    Command {
        what: String,
        status: String,
        stderr: String,
    },

    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },

    /// Something did not happen in time; `log_tail` holds the node's last log lines, if any.
    #[error(
        "timed out after {waited:?} waiting for {what}{}",
        tail_suffix(log_tail)
    )]
    Timeout {
        what: String,
        waited: Duration,
        log_tail: String,
    },

    /// A postmaster exited while we waited for it to accept connections.
    #[error(
        "{node}: postmaster exited during startup ({status}){}",
        tail_suffix(log_tail)
    )]
    Exited {
        node: String,
        status: String,
        log_tail: String,
    },

    /// A signal was requested for a node whose postmaster is not running.
    #[error("{node}: postmaster is not running")]
    NotRunning { node: String },

    /// No `etcd` binary: the multi-proxy tests and `palisade demo --proxies` need one.
    #[error(
        "etcd not found (searched: {searched}); set ETCD_BIN to it, or install the Debian \
         package etcd-server (apt-get install -y etcd-server)"
    )]
    NoEtcd { searched: String },

    /// A node index past the end of the cluster.
    #[error("no node {index}: the cluster has {count} nodes")]
    NoSuchNode { index: usize, count: usize },
}

impl ClusterError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        ClusterError::Io {
            what: what.into(),
            source,
        }
    }
}

fn tail_suffix(log_tail: &str) -> String {
    if log_tail.is_empty() {
        String::new()
    } else {
        format!("; last log lines:\n{log_tail}")
    }
}

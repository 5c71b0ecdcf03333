//! Idle server connections kept for the next client.
//!
//! A client that leaves while its server connection is idle (outside a
//! transaction, nothing in flight) hands the connection back instead of
//! closing it. Before anyone else may use it, it is reset with `DISCARD
//! ALL` (settings, prepared statements, temporary tables, LISTEN, advisory
//! locks): off the client's path, in a task of its own. Connections are
//! keyed by node and the complete startup parameters, so a reused
//! connection looks exactly like a fresh one with the same startup packet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use super::ServerConn;
use crate::config::PoolConfig;
use crate::protocol::{cstr, take_frame};

/// The statement that makes a used server connection like a new one.
const RESET_QUERY: &[u8] = b"Q\0\0\0\x10DISCARD ALL\0";
/// A reset reply is a handful of small messages.
const MAX_RESET_REPLY: usize = 64 * 1024;

/// Which connections are interchangeable: same node, same startup packet,
/// and logged in for the same Palisade user (two users mapped to one server
/// role still never share a login).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub host: String,
    pub port: u16,
    pub client_user: String,
    /// Every startup parameter sent to the server, sorted by name.
    pub params: Vec<(String, String)>,
}

impl PoolKey {
    pub fn new(host: &str, port: u16, client_user: &str, params: &[(String, String)]) -> PoolKey {
        let mut params = params.to_vec();
        params.sort();
        PoolKey {
            host: host.to_owned(),
            port,
            client_user: client_user.to_owned(),
            params,
        }
    }
}

struct Idle {
    conn: ServerConn,
    since: Instant,
}

pub struct ServerPool {
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    max_idle_per_key: usize,
    idle_timeout: Duration,
    reset_timeout: Duration,
}

impl ServerPool {
    pub fn new(config: &PoolConfig, reset_timeout: Duration) -> ServerPool {
        ServerPool {
            idle: Mutex::new(HashMap::new()),
            max_idle_per_key: config.max_idle_per_key,
            idle_timeout: config.idle_timeout(),
            reset_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Vec<Idle>>> {
        // Every update is a single push, pop or retain: a panic cannot leave it half-done.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle connection for `key`, most recently used first.
    pub fn take(&self, key: &PoolKey) -> Option<ServerConn> {
        let mut idle = self.lock();
        let conns = idle.get_mut(key)?;
        while let Some(entry) = conns.pop() {
            if entry.since.elapsed() < self.idle_timeout {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Resets `conn` and keeps it for the next client with the same key;
    /// a connection that does not reset cleanly is closed instead.
    pub async fn put_back(self: Arc<Self>, key: PoolKey, mut conn: ServerConn) {
        if self.max_idle_per_key == 0 {
            return;
        }
        match tokio::time::timeout(self.reset_timeout, reset(&mut conn)).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                debug!(host = %key.host, port = key.port, reason, "server connection not reusable");
                return;
            }
            Err(_) => {
                debug!(host = %key.host, port = key.port, "server reset timed out");
                return;
            }
        }
        let mut idle = self.lock();
        let conns = idle.entry(key).or_default();
        if conns.len() < self.max_idle_per_key {
            conns.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle for longer than the timeout.
    pub fn prune(&self) {
        let mut idle = self.lock();
        for conns in idle.values_mut() {
            conns.retain(|c| c.since.elapsed() < self.idle_timeout);
        }
        idle.retain(|_, conns| !conns.is_empty());
    }
}

/// Runs the reset query and reads its reply; updates the connection's
/// reported parameters from the ParameterStatus messages it brings.
///
/// Only a clean `DISCARD ALL` makes a connection reusable. That is also what
/// keeps a batch the client abandoned before Sync from being committed:
/// PostgreSQL refuses DISCARD ALL inside the still-open pipeline, the
/// connection is closed, and the server rolls the batch back. Never "fix" a
/// failed reset with a Sync or ROLLBACK first.
async fn reset(conn: &mut ServerConn) -> Result<(), &'static str> {
    if !conn.pending.is_empty() {
        return Err("unread server data");
    }
    conn.wr
        .write_all(RESET_QUERY)
        .await
        .map_err(|_| "write failed")?;
    loop {
        while let Some(frame) =
            take_frame(&mut conn.pending, MAX_RESET_REPLY).map_err(|_| "invalid reply")?
        {
            let body = &frame[5..];
            match frame[0] {
                b'S' => note_parameter(conn, body),
                b'E' => return Err("reset query failed"),
                // Anything asynchronous left over (a notification) must not reach the next client.
                b'A' => return Err("notification pending"),
                b'Z' => {
                    return match (body.first(), conn.pending.is_empty()) {
                        (Some(b'I'), true) => Ok(()),
                        _ => Err("not idle after reset"),
                    }
                }
                _ => {}
            }
        }
        match conn.rd.read_buf(&mut conn.pending).await {
            Ok(n) if n > 0 => {}
            _ => return Err("connection closed"),
        }
    }
}

fn note_parameter(conn: &mut ServerConn, body: &[u8]) {
    let Some((name, rest)) = cstr(body) else {
        return;
    };
    let Some((value, _)) = cstr(rest) else {
        return;
    };
    match conn.params.iter_mut().find(|(n, _)| n == name) {
        Some(entry) => entry.1 = value.to_owned(),
        None => conn.params.push((name.to_owned(), value.to_owned())),
    }
}

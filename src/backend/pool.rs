//! Server connections shared by client sessions (transaction pooling).
//!
//! A session checks a connection out for one transaction (or one batch
//! outside a transaction) and checks it back in as soon as the server says
//! it is idle. Connections are keyed by node and the complete startup
//! parameters, so any connection of a key looks like a fresh one with the
//! same startup packet once reset.
//!
//! A connection remembers which session's state it carries (`owner`): a
//! session gets its own connections back first, without a reset, then a
//! clean one, then a new one; only at the cap does another session's
//! connection change hands, reset with `DISCARD ALL` first.
//! Connections of a session that left are reset off anyone's path, in a
//! task of their own. Every (node, user, database) has a cap on open
//! connections; a checkout at the cap waits for one to come back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use super::{ConnectError, Login, ServerConn};
use crate::config::PoolConfig;
use crate::tls::ServerTls;

mod key;
mod reuse;

pub use key::{KeyParts, PoolKey};
use key::{LimitKey, Prehashed};
use reuse::{reset, still_open};

/// The cap of one (node, user, database), and a bell rung whenever one of
/// its connections comes back idle or closes.
struct Limit {
    permits: Arc<Semaphore>,
    returned: Notify,
    /// Clients waiting for a connection at the cap (for the console).
    waiting: AtomicUsize,
}

/// Counts one of something (a client waiting at the cap, a checkout
/// looking) for as long as it is kept.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(count: &'a AtomicUsize) -> Counted<'a> {
        count.fetch_add(1, Ordering::SeqCst);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One (node, user, database) of the pool as the console's `SHOW POOLS`
/// lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    /// Server connections open, idle or in use.
    pub open: usize,
    pub idle: usize,
    /// Clients waiting at `pool.max_server_connections`.
    pub waiting: usize,
}

/// An idle pooled server connection, for `SHOW SERVERS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleServer {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    pub idle_for: Duration,
    /// PostgreSQL's process id for the connection, when it said.
    pub pid: Option<i32>,
}

struct Idle {
    /// Boxed: it moves in and out of the pool on every request.
    conn: Box<ServerConn>,
    since: Instant,
}

/// Whether a checkout may take another session's idle connection. Only at
/// the cap: it must be reset, and its owner's prepared statements made
/// again on the next one it gets, so under the cap a new connection is
/// cheaper (sessions taking each other's in turn never settle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Others {
    Keep,
    Take,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("no server connection to {host}:{port} became free within {waited:?} (pool.max_server_connections is {max})")]
    Exhausted {
        host: String,
        port: u16,
        max: usize,
        waited: Duration,
    },
}

pub struct ServerPool {
    idle: Mutex<Prehashed<PoolKey, Vec<Idle>>>,
    limits: Mutex<Prehashed<LimitKey, Arc<Limit>>>,
    /// Checkouts past their common case, which may wait for a `returned`
    /// bell: while there are none, a check-in rings no bell.
    looking: AtomicUsize,
    max_idle_per_key: usize,
    max_server_connections: usize,
    idle_timeout: Duration,
    acquire_timeout: Duration,
    reset_timeout: Duration,
    connect_timeout: Duration,
    /// TLS to the nodes, for connections and cancel requests.
    tls: ServerTls,
}

impl ServerPool {
    pub fn new(config: &PoolConfig, connect_timeout: Duration, tls: ServerTls) -> ServerPool {
        ServerPool {
            idle: Mutex::default(),
            limits: Mutex::default(),
            looking: AtomicUsize::new(0),
            max_idle_per_key: config.max_idle_per_key,
            max_server_connections: config.max_server_connections,
            idle_timeout: config.idle_timeout(),
            acquire_timeout: config.acquire_timeout(),
            reset_timeout: connect_timeout,
            connect_timeout,
            tls,
        }
    }

    /// The pool's own copy of `key` when it holds connections for one
    /// like it: sessions of the same login then share one key, not a copy
    /// each (idle clients are held by the thousand).
    pub fn shared_key(&self, key: PoolKey) -> PoolKey {
        self.idle()
            .get_key_value(&key)
            .map_or(key, |(shared, _)| shared.clone())
    }

    /// How connections (and cancel requests) to the nodes use TLS.
    pub fn tls(&self) -> &ServerTls {
        &self.tls
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Prehashed<PoolKey, Vec<Idle>>> {
        // Every update is a single push, pop or retain: a panic cannot leave it half-done.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn limit(&self, key: &LimitKey) -> Arc<Limit> {
        let mut limits = self.limits.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(limit) = limits.get(key) {
            return Arc::clone(limit);
        }
        limits
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Limit {
                    permits: Arc::new(Semaphore::new(self.max_server_connections)),
                    returned: Notify::new(),
                    waiting: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    /// Server connections open to `host:port` now, idle or busy, over
    /// every user and database (for the admin console).
    pub fn open_connections(&self, host: &str, port: u16) -> usize {
        let limits = self.limits.lock().unwrap_or_else(PoisonError::into_inner);
        limits
            .iter()
            .filter(|(k, _)| k.host == host && k.port == port)
            .map(|(_, l)| {
                self.max_server_connections
                    .saturating_sub(l.permits.available_permits())
            })
            .sum()
    }

    /// Of those, the ones idle in the pool now (for the metrics).
    pub fn idle_connections(&self, host: &str, port: u16) -> usize {
        self.idle()
            .iter()
            .filter(|(k, _)| k.host == host && k.port == port)
            .map(|(_, conns)| conns.len())
            .sum()
    }

    /// Every (node, user, database) that has had a connection, sorted.
    pub fn stats(&self) -> Vec<PoolStats> {
        let limits: Vec<(LimitKey, Arc<Limit>)> = self
            .limits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, l)| (k.clone(), l.clone()))
            .collect();
        let mut idle: HashMap<LimitKey, usize> = HashMap::new();
        for (key, conns) in self.idle().iter() {
            *idle.entry(key.limit().clone()).or_default() += conns.len();
        }
        let mut stats: Vec<PoolStats> = limits
            .into_iter()
            .map(|(key, limit)| PoolStats {
                open: self
                    .max_server_connections
                    .saturating_sub(limit.permits.available_permits()),
                idle: idle.get(&key).copied().unwrap_or(0),
                waiting: limit.waiting.load(Ordering::Relaxed),
                host: key.host,
                port: key.port,
                user: key.user,
                database: key.database,
            })
            .collect();
        stats.sort_by(|a, b| {
            (a.port, &a.host, &a.user, &a.database).cmp(&(b.port, &b.host, &b.user, &b.database))
        });
        stats
    }

    /// The idle connections in the pool now.
    pub fn idle_servers(&self) -> Vec<IdleServer> {
        let now = Instant::now();
        let idle = self.idle();
        let mut servers: Vec<IdleServer> = idle
            .iter()
            .flat_map(|(key, conns)| {
                let limit = key.limit();
                conns.iter().map(move |c| IdleServer {
                    host: limit.host.clone(),
                    port: limit.port,
                    user: limit.user.clone(),
                    database: limit.database.clone(),
                    idle_for: now.duration_since(c.since),
                    pid: c.conn.key.map(|k| k.pid),
                })
            })
            .collect();
        servers.sort_by_key(|s| (s.port, s.idle_for));
        servers
    }

    /// A connection for `key` on behalf of session `owner`: one of its own
    /// idle ones, else a clean one, else another session's (reset first),
    /// else a new one; at the cap, waits up to `pool.acquire_timeout_ms`.
    pub async fn checkout(
        &self,
        key: &PoolKey,
        owner: u64,
        login: &Login<'_>,
    ) -> Result<Box<ServerConn>, CheckoutError> {
        self.checkout_within(key, owner, login, self.connect_timeout)
            .await
    }

    /// [`Self::checkout`], with opening or resetting a connection bounded by
    /// `within` instead of the connect timeout (a replica a read may skip).
    pub async fn checkout_within(
        &self,
        key: &PoolKey,
        owner: u64,
        login: &Login<'_>,
        within: Duration,
    ) -> Result<Box<ServerConn>, CheckoutError> {
        // The common case first: an idle connection that needs no reset,
        // no cap bookkeeping, nothing to wait for.
        if let Some(Idle { mut conn, .. }) = self.take_idle(key, owner, Others::Keep) {
            if still_open(&mut conn) {
                return Ok(conn);
            }
        }
        // Every await of the rest lives in its own allocation, made only
        // when needed: an idle session's task stays small.
        Box::pin(self.checkout_slow(key, owner, login, within)).await
    }

    /// [`Self::checkout_within`] past its common case: a connection to
    /// check or reset, a new one, or a wait at the cap.
    async fn checkout_slow(
        &self,
        key: &PoolKey,
        owner: u64,
        login: &Login<'_>,
        within: Duration,
    ) -> Result<Box<ServerConn>, CheckoutError> {
        let deadline = tokio::time::Instant::now() + self.acquire_timeout;
        // Counted before the first look at the idle list (see `check_in`).
        let _looking = Counted::new(&self.looking);
        let limit_key = key.limit();
        let limit = self.limit(limit_key);
        loop {
            // Register for the bell before looking, so a return in between is not missed.
            let returned = limit.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            // Under the cap, a new connection rather than another session's.
            let permit = limit.permits.clone().try_acquire_owned().ok();
            let others = if permit.is_some() {
                Others::Keep
            } else {
                Others::Take
            };
            if let Some(conn) = self.take_idle(key, owner, others) {
                drop(permit);
                match self.claim(conn, owner, within).await {
                    Some(conn) => return Ok(conn),
                    None => continue,
                }
            }
            if let Some(permit) = permit {
                return self.open(key, login, permit, within).await;
            }
            if self.evict_other(key, limit_key) {
                continue;
            }
            let counted = Counted::new(&limit.waiting);
            let waited = tokio::select! {
                permit = limit.permits.clone().acquire_owned() => permit.ok(),
                () = &mut returned => None,
                () = tokio::time::sleep_until(deadline) => {
                    return Err(CheckoutError::Exhausted {
                        host: key.host.clone(),
                        port: key.port,
                        max: self.max_server_connections,
                        waited: self.acquire_timeout,
                    })
                }
            };
            drop(counted);
            if let Some(permit) = waited {
                return self.open(key, login, permit, within).await;
            }
        }
    }

    async fn open(
        &self,
        key: &PoolKey,
        login: &Login<'_>,
        permit: OwnedSemaphorePermit,
        within: Duration,
    ) -> Result<Box<ServerConn>, CheckoutError> {
        let mut conn = super::connect(&key.host, key.port, login, &self.tls, within).await?;
        conn.permit = Some(permit);
        Ok(Box::new(conn))
    }

    /// Makes a taken idle connection fit for `owner`: a reset when it
    /// carries another session's state. `None` when it turned out unusable.
    async fn claim(&self, idle: Idle, owner: u64, within: Duration) -> Option<Box<ServerConn>> {
        let Idle { mut conn, .. } = idle;
        // Even one back from a batch a moment ago: its server may have
        // ended it since (a terminated backend, a failover), and a write
        // sent on it could not be sent again. Cheap: unless the reactor saw
        // the socket become readable, no system call is made.
        if !still_open(&mut conn) {
            return None;
        }
        if conn.owner != 0 && conn.owner != owner {
            match tokio::time::timeout(within, reset(&mut conn)).await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => {
                    debug!(host = %conn.host, port = conn.port, reason, "server connection not reusable");
                    return None;
                }
                Err(_) => return None,
            }
        }
        Some(conn)
    }

    /// An idle connection for `key`: `owner`'s own first, then a clean one,
    /// then, if `others` says so, another session's; most recently used
    /// first within each.
    fn take_idle(&self, key: &PoolKey, owner: u64, others: Others) -> Option<Idle> {
        let mut idle = self.idle();
        let conns = idle.get_mut(key)?;
        let now = Instant::now();
        // Checked in in time order: the ones idle too long come first.
        let stale = |c: &Idle| now.duration_since(c.since) >= self.idle_timeout;
        if conns.first().is_some_and(stale) {
            let expired = conns.partition_point(stale);
            conns.drain(..expired);
        }
        let pick = conns
            .iter()
            .rposition(|c| c.conn.owner == owner)
            .or_else(|| conns.iter().rposition(|c| c.conn.owner == 0))
            .or_else(|| {
                conns
                    .len()
                    .checked_sub(1)
                    .filter(|_| others == Others::Take)
            })?;
        Some(conns.remove(pick))
    }

    /// Closes one idle connection of the same (node, user, database) but
    /// another startup packet, to make room under the cap.
    fn evict_other(&self, key: &PoolKey, limit: &LimitKey) -> bool {
        let mut idle = self.idle();
        for (other, conns) in idle.iter_mut() {
            if other != key && other.limit() == limit && !conns.is_empty() {
                conns.remove(0);
                return true;
            }
        }
        false
    }

    /// Takes back a connection the session has left idle. It keeps the
    /// session's state (and tag) until someone else needs it.
    pub fn check_in(&self, key: &PoolKey, conn: Box<ServerConn>) {
        {
            let mut idle = self.idle();
            let conns = match idle.get_mut(key) {
                Some(conns) => conns,
                None => idle.entry(key.clone()).or_default(),
            };
            if conns.len() < self.max_idle_per_key {
                conns.push(Idle {
                    conn,
                    since: Instant::now(),
                });
            }
        }
        // A checkout that looked at the list before the push counted
        // itself first, so it is seen here (the list's lock orders the
        // two) and woken; one that looks after finds the connection.
        if self.looking.load(Ordering::SeqCst) > 0 {
            self.limit(key.limit()).returned.notify_one();
        }
    }

    /// Resets `conn` and keeps it for the next client with the same key;
    /// a connection that does not reset cleanly is closed instead. For the
    /// last connection of a session that has ended.
    pub async fn put_back(self: Arc<Self>, key: PoolKey, mut conn: Box<ServerConn>) {
        if self.max_idle_per_key > 0 {
            match tokio::time::timeout(self.reset_timeout, reset(&mut conn)).await {
                Ok(Ok(())) => return self.check_in(&key, conn),
                Ok(Err(reason)) => {
                    debug!(host = %key.host, port = key.port, reason, "server connection not reusable")
                }
                Err(_) => debug!(host = %key.host, port = key.port, "server reset timed out"),
            }
        }
        drop(conn);
        self.limit(key.limit()).returned.notify_one();
    }

    /// Forgets that session `owner` exists: its idle connections are reset
    /// now, so nobody pays for that on their way to a query.
    pub async fn release_owner(self: Arc<Self>, owner: u64) {
        let taken: Vec<(PoolKey, Box<ServerConn>)> = {
            let mut idle = self.idle();
            let mut taken = Vec::new();
            for (key, conns) in idle.iter_mut() {
                let mut i = 0;
                while i < conns.len() {
                    if conns[i].conn.owner == owner {
                        taken.push((key.clone(), conns.remove(i).conn));
                    } else {
                        i += 1;
                    }
                }
            }
            taken
        };
        for (key, conn) in taken {
            self.clone().put_back(key, conn).await;
        }
    }

    /// Closes connections idle for longer than the timeout.
    pub fn prune(&self) {
        let mut idle = self.idle();
        for conns in idle.values_mut() {
            conns.retain(|c| c.since.elapsed() < self.idle_timeout);
        }
        idle.retain(|_, conns| !conns.is_empty());
    }
}

//! The sessions open now, for the console's `SHOW CLIENTS` and `SHOW
//! SERVERS`: who each one is (set once at login) and what it is doing
//! (two relaxed stores per turn of its relay loop, read only by the
//! console).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// What a session is doing, as `pg_stat_activity.state` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    Idle = 0,
    Active = 1,
    IdleInTransaction = 2,
    /// In a transaction that failed.
    IdleInFailed = 3,
    /// Its next transaction held by the console's `PAUSE`.
    Paused = 4,
}

impl ClientState {
    pub fn name(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Active => "active",
            ClientState::IdleInTransaction => "idle in transaction",
            ClientState::IdleInFailed => "idle in transaction (aborted)",
            ClientState::Paused => "paused",
        }
    }

    fn from_u8(v: u8) -> ClientState {
        match v {
            1 => ClientState::Active,
            2 => ClientState::IdleInTransaction,
            3 => ClientState::IdleInFailed,
            4 => ClientState::Paused,
            _ => ClientState::Idle,
        }
    }
}

const NO_NODE: usize = usize::MAX;

/// One session: who, and what it is doing now.
#[derive(Debug)]
pub struct Client {
    pub id: u64,
    pub user: String,
    pub database: String,
    pub addr: SocketAddr,
    pub started: Instant,
    state: AtomicU8,
    node: AtomicUsize,
}

impl Client {
    /// What the session is doing, and on which node (topology index) its
    /// server connection is, if it holds one.
    pub fn publish(&self, state: ClientState, node: Option<usize>) {
        self.state.store(state as u8, Ordering::Relaxed);
        self.node.store(node.unwrap_or(NO_NODE), Ordering::Relaxed);
    }

    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn node(&self) -> Option<usize> {
        Some(self.node.load(Ordering::Relaxed)).filter(|n| *n != NO_NODE)
    }
}

/// The open sessions by id.
#[derive(Debug, Default)]
pub struct Registry {
    clients: Mutex<BTreeMap<u64, Arc<Client>>>,
}

impl Registry {
    /// Lists a session until [`Registry::remove`].
    pub fn add(&self, id: u64, user: &str, database: &str, addr: SocketAddr) -> Arc<Client> {
        let client = Arc::new(Client {
            id,
            user: user.to_owned(),
            database: database.to_owned(),
            addr,
            started: Instant::now(),
            state: AtomicU8::new(ClientState::Idle as u8),
            node: AtomicUsize::new(NO_NODE),
        });
        self.lock().insert(id, client.clone());
        client
    }

    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// The sessions open now, oldest first.
    pub fn list(&self) -> Vec<Arc<Client>> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Client>>> {
        // Every update is one insert or remove: a panic cannot leave it half-done.
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

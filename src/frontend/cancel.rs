//! Query cancellation across the proxy.
//!
//! Each client session gets Palisade's own BackendKeyData; the registry maps
//! it to whichever server connection currently serves that session, so a
//! CancelRequest sent to the proxy reaches the right backend even after the
//! session has moved between nodes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::Rng;
use tracing::debug;

use crate::backend::{self, BackendKey};
use crate::tls::ServerTls;

/// Where a session's running query can be cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    pub host: Arc<str>,
    pub port: u16,
    pub key: BackendKey,
}

#[derive(Debug, Default)]
struct Entry {
    target: Option<CancelTarget>,
    /// The session is getting a server connection for a batch it has taken.
    connecting: bool,
    /// A CancelRequest came while `connecting`: it is owed to the new connection.
    owed: bool,
}

/// One session's place in the registry. The session updates it on every
/// request without touching the registry's map.
#[derive(Debug)]
struct Slot {
    secret: i32,
    entry: Mutex<Entry>,
}

impl Slot {
    fn entry(&self) -> std::sync::MutexGuard<'_, Entry> {
        // Every update is a few plain stores: a panic cannot leave it half-done.
        self.entry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug, Default)]
pub struct CancelRegistry {
    sessions: Mutex<HashMap<i32, Arc<Slot>>>,
}

/// A session's registration; removed from the registry when dropped.
#[derive(Debug)]
pub struct CancelHandle {
    registry: Arc<CancelRegistry>,
    slot: Arc<Slot>,
    pub key: BackendKey,
}

impl CancelHandle {
    /// Points cancellation at the server connection now serving the
    /// session. `true` when a cancel arrived while the session was
    /// connecting: the caller owes it to `target` once the batch is sent.
    pub fn set_target(&self, target: Option<CancelTarget>) -> bool {
        let mut entry = self.slot.entry();
        let owed = entry.owed && target.is_some();
        entry.target = target;
        entry.connecting = false;
        entry.owed = false;
        owed
    }

    /// The session has a batch to run and no connection yet: a cancel that
    /// arrives now is kept for the connection it gets.
    pub fn connecting(&self) {
        let mut entry = self.slot.entry();
        entry.target = None;
        entry.connecting = true;
        entry.owed = false;
    }

    pub fn target(&self) -> Option<CancelTarget> {
        self.slot.entry().target.clone()
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.key.pid);
    }
}

impl CancelRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Arc<Slot>>> {
        // A panic elsewhere cannot leave the map half-updated: every update is one insert/remove.
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new session under a fresh, unique key.
    pub fn register(self: &Arc<Self>) -> CancelHandle {
        let mut rng = rand::rng();
        let mut sessions = self.lock();
        let pid = loop {
            let pid = rng.random_range(1..i32::MAX);
            if !sessions.contains_key(&pid) {
                break pid;
            }
        };
        let slot = Arc::new(Slot {
            secret: rng.random(),
            entry: Mutex::default(),
        });
        sessions.insert(pid, slot.clone());
        CancelHandle {
            registry: self.clone(),
            key: BackendKey {
                pid,
                secret: slot.secret,
            },
            slot,
        }
    }

    /// Handles a client's CancelRequest. Unknown keys are ignored silently,
    /// as PostgreSQL does, so the request cannot probe for sessions.
    pub async fn cancel(&self, key: BackendKey, tls: &ServerTls, timeout: Duration) {
        let slot = self.lock().get(&key.pid).cloned();
        let target = slot.filter(|s| s.secret == key.secret).and_then(|s| {
            let mut e = s.entry();
            e.owed |= e.connecting;
            e.target.clone()
        });
        if let Some(t) = target {
            if let Err(e) = backend::cancel(&t.host, t.port, t.key, tls, timeout).await {
                debug!(host = %t.host, port = t.port, error = %e, "cancel request failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_dropped_handles_unregister() {
        let registry = Arc::new(CancelRegistry::default());
        let a = registry.register();
        let b = registry.register();
        assert_ne!(a.key.pid, b.key.pid);
        let target = CancelTarget {
            host: "127.0.0.1".into(),
            port: 5432,
            key: BackendKey { pid: 7, secret: 8 },
        };
        assert!(!a.set_target(Some(target.clone())));
        assert_eq!(a.target(), Some(target));
        assert_eq!(b.target(), None);
        let pid = a.key.pid;
        drop(a);
        assert!(!registry.lock().contains_key(&pid));
    }

    #[tokio::test]
    async fn a_cancel_while_connecting_is_owed_to_the_next_connection() {
        let registry = Arc::new(CancelRegistry::default());
        let session = registry.register();
        let target = CancelTarget {
            host: "127.0.0.1".into(),
            port: 5432,
            key: BackendKey { pid: 7, secret: 8 },
        };
        let wait = Duration::from_millis(10);
        // Idle, with no connection: a cancel has nothing to stop and is not kept.
        registry
            .cancel(session.key, &ServerTls::disabled(), wait)
            .await;
        assert!(!session.set_target(Some(target.clone())));
        session.connecting();
        // A wrong secret is ignored even while connecting.
        let forged = BackendKey {
            pid: session.key.pid,
            secret: session.key.secret.wrapping_add(1),
        };
        registry.cancel(forged, &ServerTls::disabled(), wait).await;
        session.connecting();
        assert!(!session.set_target(Some(target.clone())));
        session.connecting();
        registry
            .cancel(session.key, &ServerTls::disabled(), wait)
            .await;
        assert!(session.set_target(Some(target.clone())));
        // Paid once: the next connection owes nothing.
        session.connecting();
        assert!(!session.set_target(Some(target)));
        // A failed connect clears the debt.
        session.connecting();
        registry
            .cancel(session.key, &ServerTls::disabled(), wait)
            .await;
        assert!(!session.set_target(None));
    }
}

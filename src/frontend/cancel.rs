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

/// Where a session's running query can be cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    pub host: String,
    pub port: u16,
    pub key: BackendKey,
}

#[derive(Debug)]
struct Entry {
    secret: i32,
    target: Option<CancelTarget>,
}

#[derive(Debug, Default)]
pub struct CancelRegistry {
    sessions: Mutex<HashMap<i32, Entry>>,
}

/// A session's registration; removed from the registry when dropped.
#[derive(Debug)]
pub struct CancelHandle {
    registry: Arc<CancelRegistry>,
    pub key: BackendKey,
}

impl CancelHandle {
    /// Points cancellation at the server connection now serving the session.
    pub fn set_target(&self, target: Option<CancelTarget>) {
        let mut sessions = self.registry.lock();
        if let Some(entry) = sessions.get_mut(&self.key.pid) {
            entry.target = target;
        }
    }

    pub fn target(&self) -> Option<CancelTarget> {
        self.registry
            .lock()
            .get(&self.key.pid)
            .and_then(|e| e.target.clone())
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.key.pid);
    }
}

impl CancelRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Entry>> {
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
        let secret = rng.random();
        sessions.insert(
            pid,
            Entry {
                secret,
                target: None,
            },
        );
        CancelHandle {
            registry: self.clone(),
            key: BackendKey { pid, secret },
        }
    }

    /// Handles a client's CancelRequest. Unknown keys are ignored silently,
    /// as PostgreSQL does, so the request cannot probe for sessions.
    pub async fn cancel(&self, key: BackendKey, timeout: Duration) {
        let target = {
            let sessions = self.lock();
            match sessions.get(&key.pid) {
                Some(e) if e.secret == key.secret => e.target.clone(),
                _ => None,
            }
        };
        if let Some(t) = target {
            if let Err(e) = backend::cancel(&t.host, t.port, t.key, timeout).await {
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
        a.set_target(Some(target.clone()));
        assert_eq!(a.target(), Some(target));
        assert_eq!(b.target(), None);
        let pid = a.key.pid;
        drop(a);
        assert!(!registry.lock().contains_key(&pid));
    }
}

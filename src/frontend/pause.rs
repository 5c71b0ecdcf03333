//! The console's `PAUSE` and `RESUME`: while paused, a session holds its
//! next batch that would start a transaction (the one in progress runs to
//! its end) until `RESUME`, or until the drain ends it. Sessions check one
//! relaxed atomic per new transaction.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

#[derive(Debug)]
pub struct Pause {
    on: AtomicBool,
    changed: watch::Sender<bool>,
}

impl Default for Pause {
    fn default() -> Self {
        Pause {
            on: AtomicBool::new(false),
            changed: watch::channel(false).0,
        }
    }
}

impl Pause {
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Pauses (`true`) or resumes; `false` when it already was so.
    pub fn set(&self, on: bool) -> bool {
        self.on.store(on, Ordering::Relaxed);
        self.changed
            .send_if_modified(|was| std::mem::replace(was, on) != on)
    }

    /// Resolves once resumed (at once when not paused).
    pub async fn resumed(&self) {
        let mut changed = self.changed.subscribe();
        let _ = changed.wait_for(|on| !*on).await;
    }
}

//! The one timer a session keeps on its client, armed only while there is
//! something to time: while part of a message is buffered, the rest must
//! come within `client_message_timeout_ms` of the last bytes (else FATAL
//! 08P01); while the session is idle outside a transaction, the next
//! request must come within `client_idle_timeout_ms`, when that is set
//! (else FATAL 57P05). Whole messages arriving on a busy session never
//! touch it.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::config::ProxyConfig;

/// What the client is being timed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Watch {
    Off,
    /// The rest of a message.
    Partial,
    /// The next request of an idle session.
    Idle,
}

pub(super) struct ClientClock {
    timer: Pin<Box<Sleep>>,
    watching: Watch,
    message_timeout: Duration,
    idle_timeout: Option<Duration>,
}

impl ClientClock {
    pub(super) fn new(proxy: &ProxyConfig) -> ClientClock {
        ClientClock {
            // Not polled until armed.
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            watching: Watch::Off,
            message_timeout: proxy.client_message_timeout(),
            idle_timeout: proxy.client_idle_timeout(),
        }
    }

    /// Times the client for `watch` from now, unless it already is; `true`
    /// when the timer runs.
    pub(super) fn watch(&mut self, watch: Watch) -> bool {
        let limit = match watch {
            Watch::Off => None,
            Watch::Partial => Some(self.message_timeout),
            Watch::Idle => self.idle_timeout,
        };
        let watch = if limit.is_some() { watch } else { Watch::Off };
        if watch != self.watching {
            if let Some(limit) = limit {
                self.timer.as_mut().reset(Instant::now() + limit);
            }
            self.watching = watch;
        }
        watch != Watch::Off
    }

    /// The client sent something: whatever is timed starts afresh.
    pub(super) fn heard(&mut self) {
        self.watching = Watch::Off;
    }

    /// Resolves when the armed timer runs out, saying what it timed.
    pub(super) async fn expired(&mut self) -> Watch {
        self.timer.as_mut().await;
        self.watching
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(idle_ms: u64) -> ClientClock {
        ClientClock::new(&ProxyConfig {
            client_message_timeout_ms: 50,
            client_idle_timeout_ms: idle_ms,
            ..ProxyConfig::default()
        })
    }

    #[tokio::test]
    async fn a_partial_message_runs_out_unless_more_arrives() {
        let mut c = clock(0);
        assert!(!c.watch(Watch::Idle), "idle timeout off");
        assert!(!c.watch(Watch::Off));
        assert!(c.watch(Watch::Partial));
        let began = Instant::now();
        tokio::time::sleep(Duration::from_millis(30)).await;
        // More bytes, still partial: timed afresh.
        c.heard();
        assert!(c.watch(Watch::Partial));
        assert_eq!(c.expired().await, Watch::Partial);
        assert!(began.elapsed() >= Duration::from_millis(75));
    }

    #[tokio::test]
    async fn an_idle_session_is_timed_only_with_an_idle_timeout() {
        let mut c = clock(20);
        assert!(c.watch(Watch::Idle));
        let began = Instant::now();
        assert_eq!(c.expired().await, Watch::Idle);
        assert!(began.elapsed() >= Duration::from_millis(20));
    }
}

//! What `read-after-commit` reads need: every commit acknowledged through
//! this proxy, counted ([`CommitLog::committed`]), and a WAL position of the
//! primary's at or past all of them, sampled by one task for every reader
//! that needs it ([`Sampler`]).
//!
//! A session bumps the count when a commit is answered, before the client
//! sees the answer. A read takes the count when it arrives; any primary
//! position sampled after the count reached that value covers every write
//! acknowledged before the read arrived. While nothing is written the
//! sample stays current and a read costs two atomic loads; after a write,
//! the readers that arrive meanwhile share the sampler's next round trip.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{watch, Notify};
use tracing::debug;

use crate::config::{Config, NodeConfig};
use crate::route::CommitPosition;
use crate::tls::ServerTls;
use crate::topology::{Lsn, TopologyHandle};

/// After a failed sample, the sampler waits this long before the next try
/// (readers waiting meanwhile fall back after `causal_wait_ms`).
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// At or past every commit the primary has acknowledged (see
/// [`Lsn::before_page_header`]).
const WRITE_POSITION: &str = "SELECT pg_current_wal_insert_lsn()::text";

/// The proxy-wide commit count and the latest sample of the primary's
/// position that covers it.
#[derive(Debug, Default)]
pub struct CommitLog {
    count: AtomicU64,
    /// The count every commit before which `lsn` covers.
    sampled: AtomicU64,
    lsn: AtomicU64,
    /// Wakes the sampler.
    wanted: Notify,
    /// Wakes readers after each sample.
    landed: Notify,
}

impl CommitLog {
    /// A commit was acknowledged (call before the client is told).
    pub fn committed(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// Commits acknowledged through the proxy so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Where acknowledged commits stand for a read arriving now.
    pub fn position(&self) -> CommitPosition {
        let count = self.count.load(Ordering::SeqCst);
        if count == 0 {
            return CommitPosition::Nothing;
        }
        if self.sampled.load(Ordering::SeqCst) >= count {
            CommitPosition::At(Lsn(self.lsn.load(Ordering::SeqCst)))
        } else {
            CommitPosition::Unsampled(count)
        }
    }

    /// Waits for a sample that covers `count`, for at most `within`;
    /// `false` when none came in time.
    pub async fn sampled(&self, count: u64, within: Duration) -> bool {
        tokio::time::timeout(within, async {
            loop {
                let landed = self.landed.notified();
                tokio::pin!(landed);
                landed.as_mut().enable();
                if self.sampled.load(Ordering::SeqCst) >= count {
                    return;
                }
                self.wanted.notify_one();
                landed.await;
            }
        })
        .await
        .is_ok()
    }

    /// The sampler found the primary at `lsn` after the count reached `count`.
    fn record(&self, count: u64, lsn: Lsn) {
        // The position first: a reader that sees the count sees it too.
        self.lsn.fetch_max(lsn.0, Ordering::SeqCst);
        self.sampled.fetch_max(count, Ordering::SeqCst);
        self.landed.notify_waiters();
    }
}

/// Samples the primary's WAL position whenever a reader needs one, one
/// query at a time: readers that arrive while it runs wait for the next.
pub struct Sampler {
    log: Arc<CommitLog>,
    /// One connection per node (by address, so a node a reload adds gets
    /// one too), opened the first time it is the primary.
    pools: HashMap<(String, u16), Pool>,
    config: Arc<Config>,
    tls: ServerTls,
    topology: TopologyHandle,
    timeout: Duration,
}

impl Sampler {
    pub fn new(
        log: Arc<CommitLog>,
        config: &Arc<Config>,
        tls: &ServerTls,
        topology: TopologyHandle,
    ) -> Sampler {
        Sampler {
            log,
            pools: HashMap::new(),
            config: config.clone(),
            tls: tls.clone(),
            topology,
            timeout: config.proxy.connect_timeout() + config.monitor.probe_timeout(),
        }
    }

    /// Samples on demand until `shutdown`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = self.log.wanted.notified() => {}
                _ = shutdown.changed() => return,
            }
            let count = self.log.count.load(Ordering::SeqCst);
            if self.log.sampled.load(Ordering::SeqCst) >= count {
                continue;
            }
            match self.sample().await {
                Some(lsn) => self.log.record(count, lsn),
                None => tokio::time::sleep(RETRY_PAUSE).await,
            }
        }
    }

    /// The primary's WAL insert position now; `None` when there is no
    /// primary or it did not answer in time.
    async fn sample(&mut self) -> Option<Lsn> {
        let topology = self.topology.load();
        let primary = topology.primary()?;
        let node = &topology.nodes[primary];
        let (config, tls) = (&self.config, &self.tls);
        let pool = self
            .pools
            .entry((node.host.clone(), node.port))
            .or_insert_with(|| {
                let at = NodeConfig {
                    name: None,
                    host: node.host.clone(),
                    port: node.port,
                    weight: node.weight,
                };
                super::monitor::probe_pool(config, tls, &at, "palisade-commits")
            });
        let query = async {
            let client = pool.get().await.ok()?;
            let row = client.query_one(WRITE_POSITION, &[]).await.ok()?;
            row.get::<_, Option<String>>(0)?.parse::<Lsn>().ok()
        };
        let lsn = tokio::time::timeout(self.timeout, query)
            .await
            .ok()
            .flatten();
        if lsn.is_none() {
            debug!(node = primary, "the primary did not say where its WAL is");
        }
        lsn.map(Lsn::before_page_header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_needs_a_sample_taken_after_the_commits_before_it() {
        let log = CommitLog::default();
        assert_eq!(log.position(), CommitPosition::Nothing, "nothing written");
        log.committed();
        log.committed();
        assert_eq!(log.position(), CommitPosition::Unsampled(2));
        log.record(1, Lsn(100));
        assert_eq!(
            log.position(),
            CommitPosition::Unsampled(2),
            "a sample taken after one commit does not cover two"
        );
        log.record(2, Lsn(150));
        assert_eq!(log.position(), CommitPosition::At(Lsn(150)));
        log.record(1, Lsn(120));
        assert_eq!(
            log.position(),
            CommitPosition::At(Lsn(150)),
            "a late, older sample moves nothing back"
        );
        log.committed();
        assert_eq!(log.position(), CommitPosition::Unsampled(3));
    }

    #[tokio::test]
    async fn readers_wait_for_a_covering_sample_or_give_up() {
        let log = Arc::new(CommitLog::default());
        log.committed();
        let waiting = {
            let log = log.clone();
            tokio::spawn(async move { log.sampled(1, Duration::from_secs(10)).await })
        };
        // The reader asks the sampler: play its part.
        log.wanted.notified().await;
        log.record(1, Lsn(10));
        assert!(waiting.await.unwrap(), "woken by the sample");
        assert!(log.sampled(1, Duration::ZERO).await, "covered already");
        log.committed();
        assert!(
            !log.sampled(2, Duration::from_millis(20)).await,
            "no sampler: gives up after its wait"
        );
    }
}

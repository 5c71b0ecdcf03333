//! Health and replication probes: one [`Prober`] per node asks, on an
//! interval and over a connection of its own (deadpool-postgres), whether
//! the node is in recovery, where its WAL stands, whether its WAL receiver
//! streams and from where, and (a primary) which standbys are synchronous.
//!
//! Every probe has one deadline, `probe_timeout_ms`, whatever it waits
//! for: a node that does not answer in time is reported at once (the state
//! machine makes it suspect). A connection that is merely slow is kept, and
//! the next probe asks on it again; one that stays silent longer than a
//! connect may take is replaced. Opening a connection runs in a task of
//! its own, so a probe that gives up does not abandon it: there is at most
//! one connect under way per node, not one per probe.
//!
//! Probers only probe and report ([`ProbeResult`]); they count nothing. The
//! failover state machine ([`super::failover`]) owns health, and the driver
//! ([`super::driver`]) publishes what it decides. The proxy spawns them.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::failover::{NodeId, Probe, Report, Upstream, WalReceiver};
use crate::config::{Config, NodeConfig};
use crate::tls::ServerTls;

/// One probe's answer about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub node: NodeId,
    pub result: Probe,
}

/// One round trip for everything a probe asks. `pg_current_wal_lsn()`
/// fails during recovery, so each node is asked only what its role has.
/// The WAL receiver's status needs superuser or pg_read_all_stats.
const PROBE: &str = "SELECT pg_is_in_recovery(), \
    (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text, \
    pg_last_wal_receive_lsn()::text, \
    coalesce((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false), \
    (SELECT sender_host FROM pg_stat_wal_receiver), \
    (SELECT sender_port FROM pg_stat_wal_receiver), \
    ARRAY(SELECT application_name::text FROM pg_stat_replication \
          WHERE sync_state IN ('sync', 'quorum') ORDER BY 1), \
    (CASE WHEN NOT pg_is_in_recovery() THEN \
       ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END)";

/// What starts a prober: the settings every prober shares and where they
/// report. The proxy starts one per configured node; the driver starts one
/// for a node a reload adds.
#[derive(Clone)]
pub struct ProberKit {
    pub config: Arc<Config>,
    pub tls: ServerTls,
    pub results: mpsc::Sender<ProbeResult>,
    pub shutdown: watch::Receiver<bool>,
}

impl ProberKit {
    /// A prober for `config` (node index `node`), stopped by `stop` or at
    /// shutdown.
    pub fn prober(&self, node: NodeId, config: &NodeConfig, stop: CancellationToken) -> Prober {
        let c = &self.config;
        Prober {
            node,
            pool: probe_pool(c, &self.tls, config, "palisade-monitor"),
            interval: c.monitor.probe_interval(),
            connect_timeout: c.proxy.connect_timeout(),
            timeout: c.monitor.probe_timeout(),
            link: Link::Closed,
            results: self.results.clone(),
            shutdown: self.shutdown.clone(),
            stop,
            said: None,
        }
    }
}

/// A one-connection pool to `node` with the backend's credentials.
pub(super) fn probe_pool(
    config: &Config,
    tls: &ServerTls,
    n: &NodeConfig,
    application: &str,
) -> Pool {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&n.host)
        .port(n.port)
        .user(&config.backend.user)
        .dbname(&config.backend.database)
        .application_name(application)
        .connect_timeout(config.proxy.connect_timeout());
    if let Some(password) = &config.backend.password {
        pg.password(password);
    }
    let tls = tls.postgres(&mut pg);
    let manager = Manager::from_config(
        pg,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    // The builder only fails without a runtime, which we always have here.
    Pool::builder(manager)
        .max_size(1)
        .build()
        .expect("deadpool builder with a tokio runtime")
}

/// Probes one node on an interval; see [`Prober::run`].
pub struct Prober {
    node: usize,
    pool: Pool,
    interval: Duration,
    /// Opening the probe connection (TCP + authentication) may take this
    /// long, and an open one may stay silent this long before it is replaced...
    connect_timeout: Duration,
    /// ...while each probe gives up after this long.
    timeout: Duration,
    link: Link,
    results: mpsc::Sender<ProbeResult>,
    shutdown: watch::Receiver<bool>,
    /// Cancelled when a reload removes the node.
    stop: CancellationToken,
    /// The last connection error logged as a warning: a new cause (TLS
    /// refused, a certificate that does not verify) is said once, not on
    /// every probe.
    said: Option<String>,
}

/// The prober's connection to its node.
enum Link {
    /// None: the next probe starts opening one.
    Closed,
    /// Being opened (bounded by the connect timeout) in a task of its own;
    /// `None` when that failed.
    Opening(JoinHandle<Result<Object, String>>),
    Open {
        /// Boxed: a pooled client is large, and the prober keeps its link.
        client: Box<Object>,
        /// Since when a probe on it has gone unanswered.
        silent_since: Option<Instant>,
    },
}

impl Drop for Prober {
    fn drop(&mut self) {
        if let Link::Opening(task) = &self.link {
            task.abort();
        }
    }
}

impl Prober {
    /// The node this prober asks about, by index.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Probes until shutdown, sending every result.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.changed() => return,
                () = self.stop.cancelled() => return,
            }
            let result = ProbeResult {
                node: self.node,
                result: match self.probe().await {
                    Some(report) => Probe::Reachable(report),
                    None => Probe::Unreachable,
                },
            };
            if self.stop.is_cancelled() || self.results.send(result).await.is_err() {
                return;
            }
        }
    }

    /// One probe, answered or given up on within the probe timeout.
    async fn probe(&mut self) -> Option<Report> {
        let deadline = Instant::now() + self.timeout;
        let (client, silent_since) = self.connection(deadline).await?;
        let error = match timeout_at(deadline, client.query_one(PROBE, &[])).await {
            Ok(Ok(row)) => {
                let answer = report(&row);
                self.link = Link::Open {
                    client,
                    silent_since: None,
                };
                return answer;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => {
                // Slow is not broken: the next probe asks on it again (its
                // question queues behind this one), unless it has been
                // silent for longer than opening a new one may take.
                let since = silent_since.unwrap_or(deadline - self.timeout);
                debug!(
                    node = self.node,
                    silent_ms = since.elapsed().as_millis(),
                    "probe timed out"
                );
                if since.elapsed() < self.connect_timeout {
                    self.link = Link::Open {
                        client,
                        silent_since: Some(since),
                    };
                    return None;
                }
                "silent for longer than the connect timeout".to_owned()
            }
        };
        debug!(node = self.node, %error, "probe query failed");
        // A broken or stuck connection must not be reused by the next probe.
        drop(Object::take(*client));
        None
    }

    /// The open connection (with since when it has been silent), or one
    /// opened by `deadline`; `None` when there is none yet (a connect
    /// still under way is kept for the next probe).
    async fn connection(&mut self, deadline: Instant) -> Option<(Box<Object>, Option<Instant>)> {
        let mut opening = match std::mem::replace(&mut self.link, Link::Closed) {
            Link::Open {
                client,
                silent_since,
            } if !client.is_closed() => return Some((client, silent_since)),
            Link::Open { client, .. } => {
                drop(Object::take(*client));
                self.open()
            }
            Link::Closed => self.open(),
            Link::Opening(task) => task,
        };
        match timeout_at(deadline, &mut opening).await {
            Ok(Ok(Ok(client))) => {
                self.said = None;
                Some((Box::new(client), None))
            }
            Ok(Ok(Err(error))) => {
                // A new cause (TLS refused, a certificate that does not
                // verify) is said once, not on every probe.
                if self.said.as_ref() != Some(&error) {
                    warn!(node = self.node, %error, "probe connection failed");
                    self.said = Some(error);
                } else {
                    debug!(node = self.node, %error, "probe connection failed");
                }
                None
            }
            Ok(Err(e)) => {
                debug!(node = self.node, error = %e, "probe connection task failed");
                None
            }
            Err(_) => {
                debug!(node = self.node, "probe connection not open yet");
                self.link = Link::Opening(opening);
                None
            }
        }
    }

    /// Starts opening a connection, bounded by the connect timeout (the
    /// driver's own timeout bounds only the TCP connect, not a server that
    /// accepts and then says nothing).
    fn open(&self) -> JoinHandle<Result<Object, String>> {
        let pool = self.pool.clone();
        let within = self.connect_timeout;
        tokio::spawn(async move {
            match tokio::time::timeout(within, pool.get()).await {
                Ok(Ok(client)) => Ok(client),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_owned()),
            }
        })
    }
}

/// Reads a probe's row; `None` when it is not what [`PROBE`] returns.
fn report(row: &tokio_postgres::Row) -> Option<Report> {
    let lsn = |i: usize| {
        row.try_get::<_, Option<&str>>(i)
            .ok()
            .flatten()
            .and_then(|t| t.parse().ok())
    };
    let upstream = match (
        row.try_get::<_, Option<String>>(4).ok().flatten(),
        row.try_get::<_, Option<i32>>(5).ok().flatten(),
    ) {
        (Some(host), Some(port)) => u16::try_from(port)
            .ok()
            .map(|port| Upstream::Addr { host, port }),
        _ => None,
    };
    Some(Report {
        in_recovery: row.try_get(0).ok()?,
        lsn: lsn(1),
        receive_lsn: lsn(2),
        receiver: WalReceiver {
            streaming: row.try_get(3).ok()?,
            upstream,
        },
        sync_standbys: row.try_get(6).unwrap_or_default(),
        timeline: row
            .try_get::<_, Option<i32>>(7)
            .ok()
            .flatten()
            .and_then(|t| u32::try_from(t).ok()),
    })
}

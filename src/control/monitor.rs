//! Health and replication probes: one task per node asks, on an interval
//! and over a connection of its own (deadpool-postgres), whether the node is
//! in recovery, where its WAL stands and whether its WAL receiver streams;
//! the driver ([`super::driver`]) folds the answers into the published
//! [`Topology`] with the pure helpers here ([`apply`], [`measure_lag`]).
//!
//! The driver is the only writer of the topology; probe tasks only report.
//! Replication lag is worked out there too, from a short history of the
//! primary's WAL positions ([`WalHistory`]), so that an idle primary never
//! makes its replicas look stale.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_postgres::NoTls;
use tracing::{debug, info, warn};

use super::driver::{Driver, Request, Wiring};
use super::epoch::{EpochStore, MemoryStore, StateFile};
use super::operator::NodeOperator;
use crate::config::Config;
use crate::topology::{Lsn, Replication, Role, Topology, TopologyHandle};

/// One probe's answer about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub node: usize,
    /// `None` when the node did not answer.
    pub report: Option<NodeReport>,
}

/// What a node that answered said about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeReport {
    pub in_recovery: bool,
    /// A primary's current WAL (write) position; a replica's replay position.
    pub lsn: Option<Lsn>,
    /// A replica's last WAL position received and flushed.
    pub receive_lsn: Option<Lsn>,
    /// A replica's WAL receiver is streaming.
    pub streaming: bool,
    /// Where a replica's WAL receiver connects, as it names it.
    pub upstream: Option<(String, u16)>,
    /// A primary's standbys that may acknowledge synchronous commits
    /// (`sync_state` sync or quorum), by application name.
    pub sync_standbys: Vec<String>,
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
          WHERE sync_state IN ('sync', 'quorum') ORDER BY 1)";

/// Owns the probe tasks and the driver; dropping it stops them.
pub struct Monitor {
    tasks: JoinSet<()>,
}

impl Monitor {
    /// Starts probing every configured node and the driver that publishes
    /// into `topology`. Returns once every node has been probed once, so the
    /// first published snapshot already knows the primary.
    pub async fn start(
        config: Arc<Config>,
        topology: TopologyHandle,
        commands: mpsc::Receiver<Request>,
        operator: Arc<dyn NodeOperator>,
        shutdown: watch::Receiver<bool>,
    ) -> Monitor {
        let (tx, rx) = mpsc::channel(64);
        let (first_round_tx, mut first_round) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for (node, _) in config.nodes.iter().enumerate() {
            let pool = probe_pool(&config, node);
            let prober = Prober {
                node,
                pool,
                interval: config.monitor.probe_interval(),
                connect_timeout: config.proxy.connect_timeout(),
                timeout: config.monitor.probe_timeout(),
                results: tx.clone(),
                shutdown: shutdown.clone(),
            };
            tasks.spawn(prober.run());
        }
        let store: Arc<dyn EpochStore> = match &config.failover.state_file {
            Some(path) => Arc::new(StateFile::new(path)),
            None => Arc::new(MemoryStore::default()),
        };
        let driver = Driver::new(
            config,
            Wiring {
                topology,
                results: rx,
                commands,
                store,
                operator,
                first_round: first_round_tx,
                shutdown,
            },
        );
        tasks.spawn(driver.run());
        let _ = first_round.wait_for(|done| *done).await;
        Monitor { tasks }
    }

    /// Waits for the tasks to notice shutdown and end.
    pub async fn join(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

fn probe_pool(config: &Config, node: usize) -> Pool {
    let n = &config.nodes[node];
    let mut pg = tokio_postgres::Config::new();
    pg.host(&n.host)
        .port(n.port)
        .user(&config.backend.user)
        .dbname(&config.backend.database)
        .application_name("palisade-monitor")
        .connect_timeout(config.proxy.connect_timeout());
    if let Some(password) = &config.backend.password {
        pg.password(password);
    }
    let manager = Manager::from_config(
        pg,
        NoTls,
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

struct Prober {
    node: usize,
    pool: Pool,
    interval: Duration,
    /// Opening the probe connection (TCP + authentication) may take this long...
    connect_timeout: Duration,
    /// ...and the probe query this long.
    timeout: Duration,
    results: mpsc::Sender<ProbeResult>,
    shutdown: watch::Receiver<bool>,
}

impl Prober {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.changed() => return,
            }
            let report = self.probe().await;
            let result = ProbeResult {
                node: self.node,
                report,
            };
            if self.results.send(result).await.is_err() {
                return;
            }
        }
    }

    async fn probe(&self) -> Option<NodeReport> {
        let client = match tokio::time::timeout(self.connect_timeout, self.pool.get()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                debug!(node = self.node, error = %e, "probe connection failed");
                return None;
            }
            Err(_) => {
                debug!(node = self.node, "probe connection timed out");
                return None;
            }
        };
        let query = client.query_one(PROBE, &[]);
        let error = match tokio::time::timeout(self.timeout, query).await {
            Ok(Ok(row)) => return report(&row),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        debug!(node = self.node, %error, "probe query failed");
        // A broken or stuck connection must not be reused by the next probe.
        drop(deadpool_postgres::Object::take(client));
        None
    }
}

/// Reads a probe's row; `None` when it is not what [`PROBE`] returns.
fn report(row: &tokio_postgres::Row) -> Option<NodeReport> {
    let lsn = |i: usize| {
        row.try_get::<_, Option<&str>>(i)
            .ok()
            .flatten()
            .and_then(|t| t.parse().ok())
    };
    Some(NodeReport {
        in_recovery: row.try_get(0).ok()?,
        lsn: lsn(1),
        receive_lsn: lsn(2),
        streaming: row.try_get(3).ok()?,
        upstream: match (
            row.try_get::<_, Option<String>>(4).ok().flatten(),
            row.try_get::<_, Option<i32>>(5).ok().flatten(),
        ) {
            (Some(host), Some(port)) => u16::try_from(port).ok().map(|p| (host, p)),
            _ => None,
        },
        sync_standbys: row.try_get(6).unwrap_or_default(),
    })
}

/// Probe results in a row for one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streak {
    answered: u32,
    failed: u32,
}

/// Folds one probe result into a topology (pure). Health flips only after
/// `threshold` results in a row, so one lost probe does not take a node out
/// of routing; a node never reached before counts as up on first contact.
pub fn apply(
    current: &Topology,
    streaks: &mut [Streak],
    result: &ProbeResult,
    threshold: u32,
) -> Topology {
    let mut next = current.clone();
    let (Some(node), Some(streak)) = (
        next.nodes.get_mut(result.node),
        streaks.get_mut(result.node),
    ) else {
        return next;
    };
    match &result.report {
        Some(report) => {
            *streak = Streak {
                answered: streak.answered.saturating_add(1),
                failed: 0,
            };
            if node.role == Role::Unknown || streak.answered >= threshold {
                node.healthy = true;
            }
            node.role = if report.in_recovery {
                Role::Replica
            } else {
                Role::Primary
            };
            node.replication = Replication {
                lsn: report.lsn,
                receive_lsn: report.receive_lsn,
                streaming: report.streaming,
                // Worked out by `measure_lag`, against the primary.
                lag_bytes: node.replication.lag_bytes,
                lag_ms: node.replication.lag_ms,
            };
        }
        None => {
            *streak = Streak {
                answered: 0,
                failed: streak.failed.saturating_add(1),
            };
            if streak.failed >= threshold {
                node.healthy = false;
            }
        }
    }
    next
}

/// The primary's WAL positions over the last while, each with the moment it
/// was first seen: when the primary first went past a position tells how
/// long a replica that stopped there has been stale.
#[derive(Debug, Default)]
pub struct WalHistory {
    /// Oldest first; positions strictly increasing.
    samples: VecDeque<(Instant, Lsn)>,
}

/// Samples kept: at four probes a second, over an hour of a busy primary;
/// a replica further behind has its lag counted from the oldest one kept.
const HISTORY_SAMPLES: usize = 16_384;

impl WalHistory {
    /// Notes that the primary's WAL was at `lsn` at `now`.
    pub fn record(&mut self, now: Instant, lsn: Lsn) {
        match self.samples.back() {
            Some(&(_, last)) if lsn <= last => {
                // Unchanged, or a new primary whose WAL is behind the old
                // one's (after a failover): start over from it.
                if lsn < last {
                    self.samples.clear();
                    self.samples.push_back((now, lsn));
                }
            }
            _ => {
                if self.samples.len() == HISTORY_SAMPLES {
                    self.samples.pop_front();
                }
                self.samples.push_back((now, lsn));
            }
        }
    }

    /// How long data replayed up to `replay` has been stale at `now`: since
    /// the primary was first seen past it. Zero when the primary has
    /// written nothing beyond it; `None` before the primary was seen.
    pub fn staleness(&self, replay: Lsn, now: Instant) -> Option<Duration> {
        let &(_, newest) = self.samples.back()?;
        if replay >= newest {
            return Some(Duration::ZERO);
        }
        let first_past = self.samples.partition_point(|&(_, lsn)| lsn <= replay);
        let (since, _) = self.samples[first_past.min(self.samples.len() - 1)];
        Some(now.saturating_duration_since(since))
    }
}

/// Works out every replica's lag against the healthy primary's position
/// (pure but for the history it extends). Without a known primary position
/// lags are unknown, which `bounded` reads treat as too stale.
pub fn measure_lag(topology: &mut Topology, history: &mut WalHistory, now: Instant) {
    let primary_lsn = topology.primary_lsn();
    if let Some(lsn) = primary_lsn {
        history.record(now, lsn);
    }
    for node in &mut topology.nodes {
        let r = &mut node.replication;
        let (bytes, ms) = match (node.role, primary_lsn, r.lsn) {
            (Role::Primary, _, _) => (None, None),
            (_, Some(primary), Some(replay)) => (
                Some(primary.0.saturating_sub(replay.0)),
                history
                    .staleness(replay, now)
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            ),
            _ => (None, None),
        };
        r.lag_bytes = bytes;
        r.lag_ms = ms;
    }
}

pub(crate) fn log_change(before: &Topology, after: &Topology, node: usize) {
    let (b, a) = (&before.nodes[node], &after.nodes[node]);
    if b.healthy == a.healthy && b.role == a.role {
        if b.replication.streaming != a.replication.streaming {
            info!(node = %a.name, streaming = a.replication.streaming, "WAL receiver changed");
        }
        return;
    }
    if a.healthy {
        info!(node = %a.name, role = ?a.role, was = ?b.role, "node is up");
    } else {
        warn!(node = %a.name, role = ?a.role, "node is down");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::NodeState;

    fn topo() -> Topology {
        Topology {
            epoch: 0,
            leader: Some(0),
            writes: Default::default(),
            nodes: (0..2)
                .map(|i| NodeState {
                    name: format!("n{i}"),
                    host: "h".into(),
                    port: 1,
                    role: Role::Unknown,
                    healthy: false,
                    weight: 1,
                    replication: Default::default(),
                    fenced: false,
                })
                .collect(),
        }
    }

    fn is_up_primary(t: &Topology, node: usize) -> bool {
        t.nodes[node].healthy && t.nodes[node].role == Role::Primary
    }

    fn up(node: usize, in_recovery: bool) -> ProbeResult {
        ProbeResult {
            node,
            report: Some(NodeReport {
                in_recovery,
                ..NodeReport::default()
            }),
        }
    }

    fn down(node: usize) -> ProbeResult {
        ProbeResult { node, report: None }
    }

    fn at(node: usize, in_recovery: bool, lsn: u64) -> ProbeResult {
        ProbeResult {
            node,
            report: Some(NodeReport {
                in_recovery,
                lsn: Some(Lsn(lsn)),
                receive_lsn: in_recovery.then_some(Lsn(lsn)),
                streaming: in_recovery,
                ..NodeReport::default()
            }),
        }
    }

    #[test]
    fn first_contact_sets_role_and_health_at_once() {
        let mut streaks = vec![Streak::default(); 2];
        let t = apply(&topo(), &mut streaks, &up(1, false), 3);
        assert!(is_up_primary(&t, 1));
        let t = apply(&t, &mut streaks, &up(0, true), 3);
        assert_eq!(t.nodes[0].role, Role::Replica);
        assert!(t.nodes[0].healthy);
    }

    #[test]
    fn health_flips_only_after_threshold_results_in_a_row() {
        let mut streaks = vec![Streak::default(); 2];
        let mut t = apply(&topo(), &mut streaks, &up(1, false), 3);
        // Two failures, then an answer: still up all along.
        for result in [down(1), down(1), up(1, false), down(1), down(1)] {
            t = apply(&t, &mut streaks, &result, 3);
            assert!(is_up_primary(&t, 1), "after {result:?}");
        }
        t = apply(&t, &mut streaks, &down(1), 3);
        assert!(!t.nodes[1].healthy, "third failure in a row");
        assert_eq!(t.nodes[1].role, Role::Primary, "role is kept while down");
        for _ in 0..2 {
            t = apply(&t, &mut streaks, &up(1, false), 3);
            assert!(!t.nodes[1].healthy, "not back before three answers");
        }
        t = apply(&t, &mut streaks, &up(1, false), 3);
        assert!(is_up_primary(&t, 1));
    }

    #[test]
    fn results_for_unknown_nodes_change_nothing() {
        let mut streaks = vec![Streak::default(); 2];
        let t = apply(&topo(), &mut streaks, &up(9, false), 3);
        assert_eq!(t, topo());
    }

    #[test]
    fn probes_carry_wal_positions_into_the_topology() {
        let mut streaks = vec![Streak::default(); 2];
        let t = apply(&topo(), &mut streaks, &at(0, false, 500), 3);
        let t = apply(&t, &mut streaks, &at(1, true, 300), 3);
        assert_eq!(t.primary_lsn(), Some(Lsn(500)));
        let r = t.nodes[1].replication;
        assert_eq!(
            (r.lsn, r.receive_lsn, r.streaming),
            (Some(Lsn(300)), Some(Lsn(300)), true)
        );
        let t = apply(&t, &mut streaks, &down(1), 3);
        assert_eq!(
            t.nodes[1].replication, r,
            "a lost probe keeps what was known"
        );
    }

    #[test]
    fn staleness_counts_from_when_the_primary_first_went_past_the_replica() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut h = WalHistory::default();
        assert_eq!(h.staleness(Lsn(1), t0), None, "no primary position yet");
        h.record(ms(0), Lsn(100));
        h.record(ms(250), Lsn(100));
        h.record(ms(500), Lsn(200));
        h.record(ms(750), Lsn(300));
        assert_eq!(
            h.staleness(Lsn(300), ms(10_000)),
            Some(Duration::ZERO),
            "caught up"
        );
        assert_eq!(
            h.staleness(Lsn(400), ms(10_000)),
            Some(Duration::ZERO),
            "ahead of the sample"
        );
        assert_eq!(
            h.staleness(Lsn(200), ms(1_000)),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            h.staleness(Lsn(150), ms(1_000)),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            h.staleness(Lsn(100), ms(1_000)),
            Some(Duration::from_millis(500)),
            "the unchanged sample is not a new one"
        );
        assert_eq!(
            h.staleness(Lsn(10), ms(1_000)),
            Some(Duration::from_millis(1_000)),
            "from the oldest sample kept"
        );
        // A new primary behind the old one's position starts the history over.
        h.record(ms(2_000), Lsn(50));
        assert_eq!(
            h.staleness(Lsn(10), ms(2_100)),
            Some(Duration::from_millis(100))
        );
    }

    #[test]
    fn an_idle_primary_leaves_a_caught_up_replica_at_zero_lag() {
        let t0 = Instant::now();
        let mut streaks = vec![Streak::default(); 2];
        let mut history = WalHistory::default();
        let mut t = topo();
        for step in 0..40u64 {
            let now = t0 + Duration::from_millis(250 * step);
            // The primary writes during the first second, then idles.
            let lsn = 1_000 + 100 * step.min(4);
            t = apply(&t, &mut streaks, &at(0, false, lsn), 3);
            // The replica replays a probe behind.
            let replayed = 1_000 + 100 * step.saturating_sub(1).min(4);
            t = apply(&t, &mut streaks, &at(1, true, replayed), 3);
            measure_lag(&mut t, &mut history, now);
            let r = t.nodes[1].replication;
            if step < 5 {
                assert!(r.lag_bytes.unwrap() <= 100, "step {step}: {r:?}");
            } else {
                assert_eq!(
                    (r.lag_bytes, r.lag_ms),
                    (Some(0), Some(0)),
                    "idle at step {step}"
                );
            }
        }
        assert_eq!(
            t.nodes[0].replication.lag_ms, None,
            "the primary has no lag"
        );
    }

    #[test]
    fn a_stuck_replica_grows_stale_while_the_primary_writes() {
        let t0 = Instant::now();
        let mut streaks = vec![Streak::default(); 2];
        let mut history = WalHistory::default();
        let mut t = apply(&topo(), &mut streaks, &at(1, true, 1_000), 3);
        for step in 0..8u64 {
            t = apply(&t, &mut streaks, &at(0, false, 1_000 + 10 * step), 3);
            measure_lag(&mut t, &mut history, t0 + Duration::from_millis(250 * step));
        }
        let r = t.nodes[1].replication;
        assert_eq!(r.lag_bytes, Some(70));
        assert_eq!(
            r.lag_ms,
            Some(1_500),
            "since the primary passed 1000 at 250 ms"
        );
        // Without a primary, lag is unknown.
        t = apply(&t, &mut streaks, &down(0), 1);
        measure_lag(&mut t, &mut history, t0 + Duration::from_secs(3));
        assert_eq!(
            (
                t.nodes[1].replication.lag_bytes,
                t.nodes[1].replication.lag_ms
            ),
            (None, None)
        );
    }
}

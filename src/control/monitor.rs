//! Health probes: one task per node asks `pg_is_in_recovery()` on an
//! interval over a connection of its own (deadpool-postgres), and a single
//! driver folds the results into the published [`Topology`].
//!
//! The driver is the only writer of the topology; probe tasks only report.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_postgres::NoTls;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::topology::{Role, Topology, TopologyHandle};

/// One probe's answer about one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeResult {
    pub node: usize,
    /// `Some(in_recovery)` when the node answered, `None` when it did not.
    pub in_recovery: Option<bool>,
}

/// Owns the probe tasks and the driver; dropping it stops them.
pub struct Monitor {
    tasks: JoinSet<()>,
}

impl Monitor {
    /// Starts probing every configured node and publishing into `topology`.
    /// Returns once every node has been probed once, so the first published
    /// snapshot already knows the primary.
    pub async fn start(
        config: &Config,
        topology: TopologyHandle,
        shutdown: watch::Receiver<bool>,
    ) -> Monitor {
        let (tx, rx) = mpsc::channel(64);
        let (first_round_tx, mut first_round) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for (node, _) in config.nodes.iter().enumerate() {
            let pool = probe_pool(config, node);
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
        let driver = Driver {
            topology,
            results: rx,
            streaks: vec![Streak::default(); config.nodes.len()],
            threshold: config.monitor.health_threshold,
            unseen: config.nodes.len(),
            seen: vec![false; config.nodes.len()],
            first_round: first_round_tx,
            shutdown,
        };
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
            let in_recovery = self.probe().await;
            let result = ProbeResult {
                node: self.node,
                in_recovery,
            };
            if self.results.send(result).await.is_err() {
                return;
            }
        }
    }

    async fn probe(&self) -> Option<bool> {
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
        let query = client.query_one("SELECT pg_is_in_recovery()", &[]);
        let error = match tokio::time::timeout(self.timeout, query).await {
            Ok(Ok(row)) => return row.try_get(0).ok(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        debug!(node = self.node, %error, "probe query failed");
        // A broken or stuck connection must not be reused by the next probe.
        drop(deadpool_postgres::Object::take(client));
        None
    }
}

struct Driver {
    topology: TopologyHandle,
    results: mpsc::Receiver<ProbeResult>,
    streaks: Vec<Streak>,
    threshold: u32,
    unseen: usize,
    seen: Vec<bool>,
    first_round: watch::Sender<bool>,
    shutdown: watch::Receiver<bool>,
}

impl Driver {
    async fn run(mut self) {
        loop {
            let result = tokio::select! {
                r = self.results.recv() => match r {
                    Some(r) => r,
                    None => return,
                },
                _ = self.shutdown.changed() => return,
            };
            let current = self.topology.load();
            let next = apply(&current, &mut self.streaks, result, self.threshold);
            if next != *current {
                log_change(&current, &next, result.node);
                self.topology.publish(next);
            }
            if !self.seen[result.node] {
                self.seen[result.node] = true;
                self.unseen -= 1;
                if self.unseen == 0 {
                    let _ = self.first_round.send(true);
                }
            }
        }
    }
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
    result: ProbeResult,
    threshold: u32,
) -> Topology {
    let mut next = current.clone();
    let (Some(node), Some(streak)) = (
        next.nodes.get_mut(result.node),
        streaks.get_mut(result.node),
    ) else {
        return next;
    };
    match result.in_recovery {
        Some(in_recovery) => {
            *streak = Streak {
                answered: streak.answered.saturating_add(1),
                failed: 0,
            };
            if node.role == Role::Unknown || streak.answered >= threshold {
                node.healthy = true;
            }
            node.role = if in_recovery {
                Role::Replica
            } else {
                Role::Primary
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

fn log_change(before: &Topology, after: &Topology, node: usize) {
    let (b, a) = (&before.nodes[node], &after.nodes[node]);
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
            nodes: (0..2)
                .map(|i| NodeState {
                    name: format!("n{i}"),
                    host: "h".into(),
                    port: 1,
                    role: Role::Unknown,
                    healthy: false,
                    weight: 1,
                    replication: Default::default(),
                })
                .collect(),
        }
    }

    fn up(node: usize, in_recovery: bool) -> ProbeResult {
        ProbeResult {
            node,
            in_recovery: Some(in_recovery),
        }
    }

    fn down(node: usize) -> ProbeResult {
        ProbeResult {
            node,
            in_recovery: None,
        }
    }

    #[test]
    fn first_contact_sets_role_and_health_at_once() {
        let mut streaks = vec![Streak::default(); 2];
        let t = apply(&topo(), &mut streaks, up(1, false), 3);
        assert_eq!(t.primary(), Some(1));
        let t = apply(&t, &mut streaks, up(0, true), 3);
        assert_eq!(t.nodes[0].role, Role::Replica);
        assert!(t.nodes[0].healthy);
    }

    #[test]
    fn health_flips_only_after_threshold_results_in_a_row() {
        let mut streaks = vec![Streak::default(); 2];
        let mut t = apply(&topo(), &mut streaks, up(1, false), 3);
        // Two failures, then an answer: still up all along.
        for result in [down(1), down(1), up(1, false), down(1), down(1)] {
            t = apply(&t, &mut streaks, result, 3);
            assert_eq!(t.primary(), Some(1), "after {result:?}");
        }
        t = apply(&t, &mut streaks, down(1), 3);
        assert_eq!(t.primary(), None, "third failure in a row");
        assert_eq!(t.nodes[1].role, Role::Primary, "role is kept while down");
        for _ in 0..2 {
            t = apply(&t, &mut streaks, up(1, false), 3);
            assert_eq!(t.primary(), None, "not back before three answers");
        }
        t = apply(&t, &mut streaks, up(1, false), 3);
        assert_eq!(t.primary(), Some(1));
    }

    #[test]
    fn results_for_unknown_nodes_change_nothing() {
        let mut streaks = vec![Streak::default(); 2];
        let t = apply(&topo(), &mut streaks, up(9, false), 3);
        assert_eq!(t, topo());
    }
}

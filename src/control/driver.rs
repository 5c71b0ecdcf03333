//! The control plane's single writer. One task feeds the failover state
//! machine ([`failover::step`]) with probe results, ticks, action outcomes
//! and operator commands, carries out the actions it returns (persist the
//! epoch, then publish; promote, repoint, fence, rejoin on tracked tasks of
//! their own), keeps the primary's `synchronous_standby_names` in line with
//! the replication mode, and after every step publishes the whole
//! [`Topology`] read off the machine's state ([`super::snapshot`]), with lag
//! measured ([`super::lag`]). The proxy wires it ([`Wiring`]).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::epoch::EpochStore;
use super::failover::{self, Action, Event, NodeId, Phase, Probe};
use super::fencing::{self, NodeAdmin};
use super::handle::{Command, Request};
use super::journal::{Count, Journal};
use super::lag::{measure_lag, WalHistory};
use super::monitor::{ProbeResult, ProberKit};
use super::operator::NodeOperator;
use super::peers::{encode_command, News, PeerView, Relay};
use super::refresher::FunctionsLoaded;
use super::snapshot::{log_changes, snapshot};
use crate::config::{Config, NodeConfig, PartitionMode};
use crate::tls::ServerTls;
use crate::topology::{Refusal, Topology, TopologyHandle, WriteState};

/// The outcome of work the driver handed to a task.
enum Outcome {
    Machine(Event),
    SyncSet {
        primary: NodeId,
        names: String,
        ok: bool,
    },
}

/// How often the state machine is ticked between probe results.
const TICK: Duration = Duration::from_millis(100);
/// A failed `synchronous_standby_names` change is retried after this.
const SYNC_RETRY: Duration = Duration::from_secs(1);

pub struct Driver {
    config: Arc<Config>,
    topology: TopologyHandle,
    results: mpsc::Receiver<ProbeResult>,
    commands: mpsc::Receiver<Request>,
    functions: mpsc::UnboundedReceiver<FunctionsLoaded>,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    outcome_tx: mpsc::UnboundedSender<Outcome>,
    history: WalHistory,
    machine: Option<failover::State>,
    /// Writes refused for a reason of the driver's own (no epoch record).
    broken: Option<String>,
    store: Arc<dyn EpochStore>,
    /// Action tasks, so that shutdown waits for them.
    tracker: TaskTracker,
    /// Every node slot, by index: the configured nodes, and a vacant slot
    /// for each one a reload removed.
    nodes: Vec<NodeConfig>,
    admins: Vec<NodeAdmin>,
    /// Each slot's prober, stopped when a reload removes its node.
    probers: Vec<CancellationToken>,
    kit: ProberKit,
    operator: Arc<dyn NodeOperator>,
    clock: Instant,
    /// The `synchronous_standby_names` last set, and on which primary.
    sync_applied: Option<(NodeId, String)>,
    sync_busy_until: Option<Instant>,
    unseen: usize,
    seen: Vec<bool>,
    first_round: watch::Sender<bool>,
    shutdown: watch::Receiver<bool>,
    journal: Arc<Journal>,
    shared: Option<Coordination>,
    /// Writes refused because the shared store is out of reach
    /// (`partition_mode = consistent`).
    cut_off: Option<String>,
}

/// How the driver hears from the proxies sharing the epoch, and tells
/// them what it sees.
pub struct Coordination {
    pub news: mpsc::Receiver<News>,
    pub view: watch::Sender<PeerView>,
    /// Operator commands to and from the leader.
    pub relay: Arc<dyn Relay>,
}

/// What [`Driver::new`] is wired to.
pub struct Wiring {
    pub topology: TopologyHandle,
    pub results: mpsc::Receiver<ProbeResult>,
    pub commands: mpsc::Receiver<Request>,
    /// Catalog loads to publish beside the topology.
    pub functions: mpsc::UnboundedReceiver<FunctionsLoaded>,
    pub store: Arc<dyn EpochStore>,
    pub operator: Arc<dyn NodeOperator>,
    /// Told once every node has been probed and the result published.
    pub first_round: watch::Sender<bool>,
    /// Where the tasks carrying out actions are spawned.
    pub tracker: TaskTracker,
    /// TLS for the failover's own connections (fencing, promotion).
    pub tls: ServerTls,
    pub shutdown: watch::Receiver<bool>,
    /// The failover log (`SHOW EVENTS`).
    pub journal: Arc<Journal>,
    /// What starts a prober for a node a reload adds.
    pub kit: ProberKit,
    /// The configured nodes' probers, by index.
    pub probers: Vec<CancellationToken>,
    /// With `store = "etcd"`: the etcd session's news and this proxy's report.
    pub shared: Option<Coordination>,
}

impl Driver {
    pub fn new(config: Arc<Config>, wiring: Wiring) -> Driver {
        let (outcome_tx, outcomes) = mpsc::unbounded_channel();
        let nodes = config.nodes.len();
        let admins = config
            .nodes
            .iter()
            .map(|n| node_admin(&config, &wiring.tls, n))
            .collect();
        Driver {
            machine: Some(failover::State::new(failover::Settings::from_config(
                &config,
            ))),
            nodes: config.nodes.clone(),
            config,
            topology: wiring.topology,
            results: wiring.results,
            commands: wiring.commands,
            functions: wiring.functions,
            outcomes,
            outcome_tx,
            history: WalHistory::default(),
            broken: None,
            store: wiring.store,
            tracker: wiring.tracker,
            admins,
            probers: wiring.probers,
            kit: wiring.kit,
            operator: wiring.operator,
            clock: Instant::now(),
            sync_applied: None,
            sync_busy_until: None,
            unseen: nodes,
            seen: vec![false; nodes],
            first_round: wiring.first_round,
            shutdown: wiring.shutdown,
            journal: wiring.journal,
            shared: wiring.shared,
            cut_off: None,
        }
    }

    pub async fn run(mut self) {
        let loaded = {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.load()).await
        };
        let record = match loaded {
            Ok(Ok(record)) => record,
            Ok(Err(e)) if self.shared.is_some() => {
                // Shared through etcd, nothing is decided without it: the
                // epoch is learned once etcd answers; until then no writes.
                warn!(error = %e, "cannot load the epoch from etcd yet; writes wait for it");
                None
            }
            Ok(Err(e)) => {
                // Without the record the proxy cannot know which node it
                // fenced: it takes no writes rather than guess.
                error!(error = %e, "cannot load the epoch state; writes stay refused");
                self.broken = Some(e.to_string());
                self.publish();
                let _ = self.first_round.send(true);
                loop {
                    tokio::select! {
                        Some(loaded) = self.functions.recv() => self.publish_functions(loaded),
                        _ = self.shutdown.changed() => return,
                    }
                }
            }
            Err(e) => {
                error!(error = %e, "epoch state load panicked");
                return;
            }
        };
        self.feed(Event::Loaded(record)).await;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = self.results.recv() => match r {
                    Some(r) => self.on_probe(r).await,
                    None => return,
                },
                Some(outcome) = self.outcomes.recv() => self.on_outcome(outcome).await,
                Some(request) = self.commands.recv() => self.on_command(request).await,
                Some(loaded) = self.functions.recv() => self.publish_functions(loaded),
                Some(news) = next_news(&mut self.shared) => self.on_news(news).await,
                _ = tick.tick() => {
                    let now = self.now();
                    self.feed(Event::Tick { now }).await;
                }
                _ = self.shutdown.changed() => return,
            }
        }
    }

    /// Publishes a catalog load beside the topology.
    fn publish_functions(&self, loaded: FunctionsLoaded) {
        self.topology
            .publish_functions(&loaded.database, loaded.published);
        if let Some(ack) = loaded.ack {
            let _ = ack.send(());
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn on_probe(&mut self, probe: ProbeResult) {
        let node = probe.node;
        let at = self.now();
        let primary = self.machine.as_ref().and_then(failover::State::primary);
        let sync = match &probe.result {
            Probe::Reachable(r) if !r.in_recovery && primary == Some(node) => {
                Some(self.node_ids(&r.sync_standbys))
            }
            _ => None,
        };
        self.feed(Event::Probe {
            node,
            at,
            result: probe.result,
        })
        .await;
        if let Some(nodes) = sync {
            self.feed(Event::SyncStandbys { nodes }).await;
        }
        // Health, roles and positions change with every probe.
        self.publish();
        if self.seen.get(node) == Some(&false) {
            self.seen[node] = true;
            self.unseen -= 1;
            if self.unseen == 0 {
                let _ = self.first_round.send(true);
            }
        }
    }

    fn node_ids(&self, names: &[String]) -> BTreeSet<NodeId> {
        names
            .iter()
            .filter_map(|name| {
                let machine = self.machine.as_ref()?;
                machine.node_named(name)
            })
            .collect()
    }

    async fn on_outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Machine(event) => {
                self.feed(event).await;
            }
            Outcome::SyncSet { primary, names, ok } => {
                if ok {
                    info!(node = %self.admins[primary].name, synchronous_standby_names = %names, "replication mode applied");
                    self.sync_applied = Some((primary, names));
                    self.sync_busy_until = None;
                } else {
                    self.sync_busy_until = Some(Instant::now() + SYNC_RETRY);
                }
            }
        }
    }

    async fn on_command(&mut self, request: Request) {
        let Some(request) = self.forward(request) else {
            return;
        };
        let (event, started) = match &request.command {
            Command::Nodes(nodes) => {
                let answer = self.reconfigure(nodes).await;
                let _ = request.reply.send(answer);
                return;
            }
            Command::Switchover(target) => {
                let target = match target {
                    None => None,
                    Some(name) => match self.node_named(name) {
                        Ok(node) => Some(node),
                        Err(e) => {
                            let _ = request.reply.send(Err(e));
                            return;
                        }
                    },
                };
                (Event::Switchover { target }, "switchover started")
            }
            Command::Rejoin(name) => match self.node_named(name) {
                Ok(node) => (Event::Rejoin { node }, "rejoin started"),
                Err(e) => {
                    let _ = request.reply.send(Err(e));
                    return;
                }
            },
        };
        let refused = self.feed(event).await;
        let epoch = self.topology.load().epoch;
        let asked = match &request.command {
            Command::Switchover(None) => "SWITCHOVER".to_owned(),
            Command::Switchover(Some(to)) => format!("SWITCHOVER TO {to}"),
            Command::Rejoin(node) => format!("REJOIN {node}"),
            Command::Nodes(_) => "RELOAD".to_owned(),
        };
        let outcome = refused.as_deref().unwrap_or(started);
        self.journal
            .record(epoch, None, format!("{asked}: {outcome}"));
        let _ = request.reply.send(match refused {
            Some(reason) => Err(reason),
            None => Ok(started.to_owned()),
        });
    }

    fn node_named(&self, name: &str) -> Result<NodeId, String> {
        self.machine
            .as_ref()
            .and_then(|m| m.node_named(name))
            .ok_or_else(|| format!("no node is named {name:?}"))
    }

    /// Runs `event` and everything it leads to through the state machine,
    /// publishing when it published; returns the reason of a refused
    /// operator command, if one was.
    async fn feed(&mut self, event: Event) -> Option<String> {
        let mut queue = VecDeque::from([event]);
        let mut refused = None;
        while let Some(event) = queue.pop_front() {
            let Some(state) = self.machine.take() else {
                return refused;
            };
            let (state, actions) = failover::step(state, event);
            self.machine = Some(state);
            for action in actions {
                match action {
                    Action::PersistEpoch { epoch, primary } => {
                        let done = self.persist(epoch, primary).await;
                        self.count_promotion(&done);
                        queue.push_back(done);
                    }
                    Action::PublishTopology(published) => {
                        info!(epoch = published.epoch, primary = ?published.primary.map(|p| &self.admins[p].name), writes = ?published.writes, fenced = ?published.fenced, "topology");
                        self.publish();
                    }
                    Action::CommandRefused { reason } => {
                        warn!(%reason, "operator command refused");
                        refused = Some(reason);
                    }
                    other => {
                        match other {
                            Action::Fence(_) => self.journal.count(Count::Fence),
                            Action::Rejoin { .. } => self.journal.count(Count::Rejoin),
                            _ => {}
                        }
                        self.spawn(other);
                    }
                }
            }
        }
        refused
    }

    /// A failover's or switchover's epoch made durable: one more of them.
    fn count_promotion(&self, persisted: &Event) {
        let phase = self.machine.as_ref().map(failover::State::phase);
        match (persisted, phase) {
            (Event::PersistDone { .. }, Some(Phase::Failover(_))) => {
                self.journal.count(Count::Failover);
            }
            (Event::PersistDone { .. }, Some(Phase::Switchover(_))) => {
                self.journal.count(Count::Switchover);
            }
            _ => {}
        }
    }

    async fn persist(&self, epoch: u64, primary: NodeId) -> Event {
        let name = self.admins[primary].name.clone();
        let store = self.store.clone();
        let stored = tokio::task::spawn_blocking(move || store.store(epoch, &name)).await;
        match stored {
            Ok(Ok(())) => Event::PersistDone { epoch },
            Ok(Err(e)) => {
                error!(epoch, error = %e, "cannot persist the epoch");
                Event::PersistFailed { epoch }
            }
            Err(e) => {
                error!(epoch, error = %e, "persisting the epoch panicked");
                Event::PersistFailed { epoch }
            }
        }
    }

    /// Carries out an action that talks to a node, on a task of its own;
    /// its outcome comes back as an event.
    fn spawn(&self, action: Action) {
        let tx = self.outcome_tx.clone();
        let admins = self.admins.clone();
        let nodes = self.nodes.clone();
        let operator = self.operator.clone();
        let promote_wait = self
            .config
            .failover
            .failover_timeout()
            .max(Duration::from_secs(5));
        let done = move |event| {
            let _ = tx.send(Outcome::Machine(event));
        };
        self.tracker.spawn(async move {
            match action {
                Action::Promote(node) => {
                    info!(node = %admins[node].name, "promoting");
                    match admins[node].promote(promote_wait).await {
                        Ok(()) => done(Event::Promoted { node }),
                        Err(e) => {
                            warn!(error = %e, "promotion failed");
                            done(Event::PromoteFailed { node });
                        }
                    }
                }
                Action::Repoint { replica, to } => {
                    let target = &admins[to];
                    match admins[replica].repoint(&target.host, target.port).await {
                        Ok(()) => done(Event::RepointDone { replica, to }),
                        Err(e) => {
                            warn!(error = %e, "repoint failed");
                            done(Event::RepointFailed { replica, to });
                        }
                    }
                }
                Action::Fence(node) => {
                    let by_sql = admins[node].fence().await;
                    let by_hook = operator.fence(&nodes[node]).await;
                    match (&by_sql, &by_hook) {
                        (Ok(()), _) | (_, Ok(true)) => {
                            info!(node = %admins[node].name, "fenced");
                            done(Event::FenceDone { node });
                        }
                        _ => {
                            warn!(node = %admins[node].name, sql = ?by_sql.err(), hook = ?by_hook.err(), "fencing failed");
                            done(Event::FenceFailed { node });
                        }
                    }
                }
                Action::Rejoin { node, to } => {
                    info!(node = %admins[node].name, to = %admins[to].name, "rejoining");
                    if let Err(e) = operator.rejoin(&nodes[node], &nodes[to]).await {
                        warn!(node = %admins[node].name, error = %e, "rejoin failed");
                        done(Event::RejoinFailed { node });
                    }
                }
                Action::PersistEpoch { .. }
                | Action::PublishTopology(_)
                | Action::CommandRefused { .. } => {}
            }
        });
    }

    /// Publishes the topology the state machine's state describes, with
    /// lag measured, when it differs from the current one, and keeps the
    /// replication mode applied to its primary.
    fn publish(&mut self) {
        let Some(machine) = &self.machine else { return };
        let current = self.topology.load();
        let mut next = snapshot(machine, &current, self.broken.as_deref());
        if let Some(reason) = &self.cut_off {
            next.writes = WriteState::Refused(Refusal::ReadOnly(reason.clone()));
        }
        measure_lag(&mut next, &mut self.history, Instant::now());
        if let Some(shared) = &self.shared {
            let view = PeerView {
                epoch: machine.epoch(),
                primary_lost: machine.primary_lost(),
            };
            shared
                .view
                .send_if_modified(|v| std::mem::replace(v, view) != view);
        }
        if next != *current {
            log_changes(&current, &next);
            self.journal.record_changes(&current, &next);
            self.sync_replication(&next);
            self.topology.publish(next);
        }
    }

    /// Keeps the primary's `synchronous_standby_names` at what
    /// [`sync_standbys`] says, one change at a time.
    fn sync_replication(&mut self, topology: &Topology) {
        let Some((primary, standbys)) =
            sync_standbys(self.config.failover.replication_mode, topology)
        else {
            return;
        };
        let names = fencing::sync_standby_names(&standbys);
        let wanted = Some((primary, names.clone()));
        if self.sync_applied == wanted || self.sync_busy_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        // One change at a time: busy until its outcome arrives.
        self.sync_busy_until = Some(Instant::now() + Duration::from_secs(3600));
        let admin = self.admins[primary].clone();
        let tx = self.outcome_tx.clone();
        self.tracker.spawn(async move {
            let ok = match admin.set_sync_standbys(&standbys).await {
                Ok(()) => true,
                Err(e) => {
                    warn!(error = %e, "cannot set synchronous_standby_names");
                    false
                }
            };
            let _ = tx.send(Outcome::SyncSet { primary, names, ok });
        });
    }
}

/// How the failover's actions reach `node`.
fn node_admin(config: &Config, tls: &ServerTls, node: &NodeConfig) -> NodeAdmin {
    NodeAdmin {
        name: node.display_name(),
        host: node.host.clone(),
        port: node.port,
        user: config.backend.user.clone(),
        password: config.backend.password.clone(),
        database: config.backend.database.clone(),
        tls: tls.clone(),
        timeout: config
            .proxy
            .connect_timeout()
            .max(config.monitor.probe_timeout()),
    }
}

mod members;
mod shared;

use shared::next_news;
mod standbys;

pub use standbys::sync_standbys;

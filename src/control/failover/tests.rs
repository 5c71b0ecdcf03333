//! Scenarios driven through [`step`] by a small simulator: a model of the
//! cluster (which nodes run, hang, are cut off from the proxy, stream from
//! whom, how far each has got) turned into probe events every tick, with the
//! state machine's actions carried out on the model. Every run checks that an
//! epoch is published only once persisted, and that client writes only ever
//! reach the persisted primary of the epoch, one node per epoch.

use super::*;
use crate::config::ReplicationMode;
use std::collections::{BTreeMap, VecDeque};

const TICK: u64 = 250;
const TIMEOUT: u64 = 2_000;

fn settings(nodes: usize) -> Settings {
    Settings {
        nodes: (0..nodes)
            .map(|i| NodeAddr {
                name: format!("n{i}"),
                host: format!("10.0.0.{i}"),
                port: 5432,
            })
            .collect(),
        mode: FailoverMode::Automatic,
        replication_mode: ReplicationMode::Async,
        failover_timeout_ms: TIMEOUT,
        max_lag_on_failover_bytes: 1 << 20,
        auto_rejoin: false,
        health_threshold: 3,
        shared: false,
    }
}

#[derive(Debug, Clone)]
struct SimNode {
    up: bool,
    /// SIGSTOPped since then: the proxy's probes time out, and replicas keep
    /// a connection that looks alive for `receiver_timeout`.
    hung_since: Option<u64>,
    in_recovery: bool,
    /// A primary's current position; a replica's replay position.
    lsn: u64,
    upstream: Option<NodeId>,
    read_only: bool,
    /// Replay speed in bytes per tick; `None` keeps up at once.
    apply_per_tick: Option<u64>,
    fail_promote: bool,
    /// The timeline a primary writes on; promotion moves past every one.
    timeline: u32,
}

struct Sim {
    state: Option<State>,
    settings: Settings,
    now: u64,
    nodes: Vec<SimNode>,
    /// Nodes the proxy cannot reach (the replicas still can).
    proxy_cut: BTreeSet<NodeId>,
    receiver_timeout: u64,
    /// Replicas name their upstream by an address no node has.
    foreign_upstream: bool,
    store: Option<EpochRecord>,
    persist_failures: u32,
    hold_persist: bool,
    hold_promote_of: Option<NodeId>,
    /// A rejoined node comes back in recovery but not streaming.
    rejoin_breaks: bool,
    published: Option<Published>,
    /// Every action, with the time it was emitted.
    log: Vec<(u64, Action)>,
    refusals: Vec<String>,
    /// Client bytes written per tick while writes are open.
    write_bytes: u64,
    /// Accepted writes: (time, epoch, node).
    writes: Vec<(u64, u64, NodeId)>,
    writers_by_epoch: BTreeMap<u64, NodeId>,
    /// The target's shortfall (primary LSN − target LSN) at each promotion.
    promote_gaps: Vec<(NodeId, u64)>,
}

impl Sim {
    /// Node 0 is the primary, the others stream from it; the proxy starts
    /// with no state file and adopts node 0 as the primary of epoch 1.
    fn new(nodes: usize) -> Sim {
        Sim::with(settings(nodes))
    }

    fn with(settings: Settings) -> Sim {
        let nodes = (0..settings.nodes.len())
            .map(|i| SimNode {
                up: true,
                hung_since: None,
                in_recovery: i != 0,
                lsn: 1_000,
                upstream: (i != 0).then_some(0),
                read_only: false,
                apply_per_tick: None,
                fail_promote: false,
                timeline: 1,
            })
            .collect();
        let mut sim = Sim {
            state: Some(State::new(settings.clone())),
            settings,
            now: 0,
            nodes,
            proxy_cut: BTreeSet::new(),
            receiver_timeout: 0,
            foreign_upstream: false,
            store: None,
            persist_failures: 0,
            hold_persist: false,
            hold_promote_of: None,
            rejoin_breaks: false,
            published: None,
            log: Vec::new(),
            refusals: Vec::new(),
            write_bytes: 100,
            writes: Vec::new(),
            writers_by_epoch: BTreeMap::new(),
            promote_gaps: Vec::new(),
        };
        sim.deliver(Event::Loaded(None));
        sim
    }

    /// Starts in the steady state: epoch 1, node 0 primary, writes open.
    fn steady(settings: Settings) -> Sim {
        let mut sim = Sim::with(settings);
        sim.run_until(2_000, "node 0 adopted", |s| s.writes_open());
        // Long enough for every replica to count as healthy.
        sim.run(1_000);
        assert_eq!(sim.epoch(), 1);
        assert_eq!(sim.primary(), Some(0));
        sim
    }

    fn state(&self) -> &State {
        self.state.as_ref().expect("state present between steps")
    }

    fn epoch(&self) -> u64 {
        self.published.as_ref().map_or(0, |p| p.epoch)
    }

    fn primary(&self) -> Option<NodeId> {
        self.published.as_ref().and_then(|p| p.primary)
    }

    fn writes_state(&self) -> Option<WriteState> {
        self.published.as_ref().map(|p| p.writes.clone())
    }

    fn writes_open(&self) -> bool {
        self.writes_state() == Some(WriteState::Open)
    }

    fn fenced(&self) -> BTreeSet<NodeId> {
        self.published
            .as_ref()
            .map(|p| p.fenced.clone())
            .unwrap_or_default()
    }

    fn crash(&mut self, node: NodeId) {
        self.nodes[node].up = false;
    }

    fn hang(&mut self, node: NodeId) {
        self.nodes[node].hung_since = Some(self.now);
    }

    /// Starts a stopped node again, as it was (an old primary comes back
    /// as a primary).
    fn restart_node(&mut self, node: NodeId) {
        self.nodes[node].up = true;
        self.nodes[node].hung_since = None;
    }

    /// The proxy process restarts: everything in memory is lost, the state
    /// file is read back.
    fn restart_proxy(&mut self) {
        self.state = Some(State::new(self.settings.clone()));
        self.published = None;
        self.deliver(Event::Loaded(self.store.clone()));
    }

    fn answers(&self, node: NodeId) -> bool {
        let n = &self.nodes[node];
        n.up && n.hung_since.is_none()
    }

    fn streaming(&self, node: NodeId) -> bool {
        let n = &self.nodes[node];
        let Some(up) = n.upstream else {
            return false;
        };
        let u = &self.nodes[up];
        let upstream_alive = match u.hung_since {
            Some(since) => self.now - since < self.receiver_timeout,
            None => u.up,
        };
        self.answers(node) && n.in_recovery && upstream_alive && !u.in_recovery
    }

    fn probe(&self, node: NodeId) -> Probe {
        if !self.answers(node) || self.proxy_cut.contains(&node) {
            return Probe::Unreachable;
        }
        let n = &self.nodes[node];
        let streaming = self.streaming(node);
        let upstream = n.upstream.filter(|_| streaming).map(|u| {
            if self.foreign_upstream {
                Upstream::Addr {
                    host: "elsewhere".into(),
                    port: 1,
                }
            } else {
                let a = &self.settings.nodes[u];
                Upstream::Addr {
                    host: a.host.clone(),
                    port: a.port,
                }
            }
        });
        Probe::Reachable(Report {
            in_recovery: n.in_recovery,
            lsn: Some(Lsn(n.lsn)),
            receive_lsn: n.in_recovery.then_some(Lsn(n.lsn)),
            receiver: WalReceiver {
                streaming,
                upstream,
            },
            sync_standbys: Vec::new(),
            timeline: (!n.in_recovery).then_some(n.timeline),
        })
    }

    fn replicate(&mut self) {
        for node in 0..self.nodes.len() {
            if !self.streaming(node) {
                continue;
            }
            let Some(up) = self.nodes[node].upstream else {
                continue;
            };
            let target = self.nodes[up].lsn;
            let n = &mut self.nodes[node];
            n.lsn = match n.apply_per_tick {
                None => target.max(n.lsn),
                Some(rate) => target.min(n.lsn + rate).max(n.lsn),
            };
        }
    }

    /// A client writes through the proxy: to the published primary, only
    /// while writes are open, and only if it is reachable and writable.
    fn client_writes(&mut self) {
        let Some(p) = self.published.clone() else {
            return;
        };
        let (WriteState::Open, Some(primary)) = (&p.writes, p.primary) else {
            return;
        };
        if self.write_bytes == 0 || !self.answers(primary) || self.proxy_cut.contains(&primary) {
            return;
        }
        assert!(!p.fenced.contains(&primary), "writes open on a fenced node");
        let record = self
            .store
            .as_ref()
            .expect("writes before any epoch is stored");
        assert_eq!(
            record.primary, self.settings.nodes[primary].name,
            "writes routed to a node that is not the persisted primary"
        );
        let n = &mut self.nodes[primary];
        if n.in_recovery || n.read_only {
            return;
        }
        n.lsn += self.write_bytes;
        let writer = *self.writers_by_epoch.entry(p.epoch).or_insert(primary);
        assert_eq!(
            writer, primary,
            "two nodes took writes in epoch {}",
            p.epoch
        );
        self.writes.push((self.now, p.epoch, primary));
    }

    fn tick(&mut self) {
        self.now += TICK;
        self.replicate();
        self.client_writes();
        for node in 0..self.nodes.len() {
            let result = self.probe(node);
            let at = self.now;
            self.deliver(Event::Probe { node, at, result });
        }
        let now = self.now;
        self.deliver(Event::Tick { now });
    }

    fn run(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.tick();
        }
    }

    fn run_until(&mut self, ms: u64, what: &str, done: impl Fn(&Sim) -> bool) {
        let end = self.now + ms;
        while !done(self) {
            assert!(
                self.now < end,
                "not reached within {ms} ms: {what}\nphase {:?}\npublished {:?}\nrefusals {:?}\nlast actions {:?}",
                self.state().phase(),
                self.published,
                self.refusals,
                &self.log[self.log.len().saturating_sub(6)..]
            );
            self.tick();
        }
    }

    fn deliver(&mut self, event: Event) {
        let mut queue = VecDeque::from([event]);
        let mut steps = 0;
        while let Some(event) = queue.pop_front() {
            steps += 1;
            assert!(
                steps < 1_000,
                "actions and outcomes loop: {:?}",
                self.log.last()
            );
            let state = self.state.take().expect("state present between steps");
            let (state, actions) = step(state, event);
            self.state = Some(state);
            for action in actions {
                self.log.push((self.now, action.clone()));
                queue.extend(self.execute(action));
            }
        }
    }

    fn execute(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::PersistEpoch { epoch, primary } => self.persist(epoch, primary),
            Action::PublishTopology(p) => {
                self.publish(p);
                None
            }
            Action::Promote(node) => self.promote(node),
            Action::Repoint { replica, to } => {
                if !self.answers(replica) {
                    return Some(Event::RepointFailed { replica, to });
                }
                self.nodes[replica].upstream = Some(to);
                Some(Event::RepointDone { replica, to })
            }
            Action::Fence(node) => {
                if !self.answers(node) || self.proxy_cut.contains(&node) {
                    return Some(Event::FenceFailed { node });
                }
                self.nodes[node].read_only = true;
                Some(Event::FenceDone { node })
            }
            Action::Rejoin { node, to } => {
                if !self.answers(node) {
                    return Some(Event::RejoinFailed { node });
                }
                let lsn = self.nodes[to].lsn;
                let n = &mut self.nodes[node];
                n.in_recovery = true;
                n.read_only = false;
                n.lsn = lsn;
                n.upstream = (!self.rejoin_breaks).then_some(to);
                None
            }
            Action::CommandRefused { reason } => {
                self.refusals.push(reason);
                None
            }
        }
    }

    /// The epoch store: held, failing, or recording `epoch` (always above
    /// what it held).
    fn persist(&mut self, epoch: u64, primary: NodeId) -> Option<Event> {
        if self.hold_persist {
            return None;
        }
        if self.persist_failures > 0 {
            self.persist_failures -= 1;
            return Some(Event::PersistFailed { epoch });
        }
        let stored = self.store.as_ref().map_or(0, |r| r.epoch);
        assert!(epoch > stored, "epoch {epoch} persisted after {stored}");
        self.store = Some(EpochRecord {
            epoch,
            primary: self.settings.nodes[primary].name.clone(),
        });
        Some(Event::PersistDone { epoch })
    }

    /// The published snapshot, checked against the store: never an epoch
    /// that is not persisted, nor a primary other than the stored one.
    fn publish(&mut self, p: Published) {
        let stored = self.store.as_ref().map_or(0, |r| r.epoch);
        assert!(
            p.epoch <= stored,
            "epoch {} published before it was persisted (stored {stored})",
            p.epoch
        );
        if let Some(primary) = p.primary {
            let record = self.store.as_ref().expect("a primary implies a record");
            if p.epoch == stored {
                assert_eq!(record.primary, self.settings.nodes[primary].name);
            }
        }
        self.published = Some(p);
    }

    /// Promotes `node` if it answers, noting how far behind the primary
    /// it was.
    fn promote(&mut self, node: NodeId) -> Option<Event> {
        if self.hold_promote_of == Some(node) {
            return None;
        }
        let primary_lsn = self
            .nodes
            .iter()
            .filter(|n| !n.in_recovery)
            .map(|n| n.lsn)
            .max()
            .unwrap_or(0);
        let n = &mut self.nodes[node];
        let ok = n.up && n.hung_since.is_none() && !n.fail_promote;
        if !ok {
            return Some(Event::PromoteFailed { node });
        }
        self.promote_gaps
            .push((node, primary_lsn.saturating_sub(n.lsn)));
        n.in_recovery = false;
        n.upstream = None;
        let timeline = self.nodes.iter().map(|n| n.timeline).max().unwrap_or(1) + 1;
        self.nodes[node].timeline = timeline;
        Some(Event::Promoted { node })
    }

    fn actions(&self) -> impl Iterator<Item = &Action> {
        self.log.iter().map(|(_, a)| a)
    }

    fn promotions(&self) -> Vec<NodeId> {
        self.actions()
            .filter_map(|a| match a {
                Action::Promote(n) => Some(*n),
                _ => None,
            })
            .collect()
    }

    fn persisted(&self) -> Vec<(u64, NodeId)> {
        self.actions()
            .filter_map(|a| match a {
                Action::PersistEpoch { epoch, primary } => Some((*epoch, *primary)),
                _ => None,
            })
            .collect()
    }

    fn fences_of(&self, node: NodeId) -> usize {
        self.actions()
            .filter(|a| **a == Action::Fence(node))
            .count()
    }

    fn first(&self, wanted: &Action) -> Option<(usize, u64)> {
        self.log
            .iter()
            .position(|(_, a)| a == wanted)
            .map(|i| (i, self.log[i].0))
    }

    fn writes_to_since(&self, node: NodeId, since: u64) -> usize {
        self.writes
            .iter()
            .filter(|(at, _, n)| *n == node && *at > since)
            .count()
    }

    fn command(&mut self, event: Event) {
        self.deliver(event);
    }
}

/// Node 2 ends up with the most WAL: node 1 replays slower than it is written.
fn node_2_ahead(sim: &mut Sim) {
    sim.nodes[1].apply_per_tick = Some(40);
    sim.run(1_000);
    assert!(sim.nodes[2].lsn > sim.nodes[1].lsn);
}

#[test]
fn bootstrap_adopts_the_one_primary_as_epoch_1() {
    let sim = Sim::steady(settings(3));
    assert_eq!(
        sim.persisted(),
        [(1, 0)],
        "persisted before it was published"
    );
    assert!(sim.fenced().is_empty());
    assert_eq!(sim.state().phase(), &Phase::Steady { confirmed: true });
}

#[test]
fn primary_crash_promotes_the_most_advanced_replica_and_repoints_the_rest() {
    let mut sim = Sim::steady(settings(3));
    node_2_ahead(&mut sim);
    let crashed_at = sim.now;
    sim.crash(0);
    sim.run_until(TIMEOUT + 2_000, "writes open after failover", |s| {
        s.epoch() == 2 && s.writes_open()
    });
    let recovered = sim.now - crashed_at;
    assert!(recovered <= TIMEOUT + 4 * TICK, "took {recovered} ms");
    let (_, promoted_at) = sim.first(&Action::Promote(2)).expect("node 2 promoted");
    assert!(
        promoted_at - crashed_at >= TIMEOUT,
        "promoted {} ms after the crash, before failover_timeout",
        promoted_at - crashed_at
    );
    assert_eq!(sim.promotions(), [2]);
    assert_eq!(sim.persisted(), [(1, 0), (2, 2)]);
    assert_eq!(sim.primary(), Some(2));
    assert_eq!(sim.fenced(), BTreeSet::from([0]));
    sim.run(1_000);
    assert!(sim.first(&Action::Repoint { replica: 1, to: 2 }).is_some());
    assert!(sim.streaming(1), "node 1 streams from the new primary");
    assert_eq!(sim.nodes[1].upstream, Some(2));
    assert!(sim.writes_to_since(2, crashed_at) > 0);
    assert_eq!(sim.writes_to_since(0, crashed_at), 0);
}

#[test]
fn primary_hang_fails_over_only_once_the_replicas_stop_streaming() {
    let mut sim = Sim::steady(settings(3));
    // The replicas notice a hung primary later than the proxy does.
    sim.receiver_timeout = 2 * TIMEOUT;
    let hung_at = sim.now;
    sim.hang(0);
    sim.run(TIMEOUT + 1_000);
    assert!(sim.promotions().is_empty(), "replicas still stream from it");
    assert_eq!(
        sim.writes_state(),
        Some(WriteState::Refused(Refusal::PrimaryUnreachable))
    );
    sim.run_until(2 * TIMEOUT, "failover after the hang", |s| {
        s.epoch() == 2 && s.writes_open()
    });
    let (_, promoted_at) = sim.first(&Action::Promote(1)).expect("node 1 promoted");
    assert!(promoted_at - hung_at >= 2 * TIMEOUT);
    assert_eq!(sim.fenced(), BTreeSet::from([0]));
    // The hung process wakes up still believing it is the primary.
    sim.restart_node(0);
    sim.run(1_000);
    assert!(sim.nodes[0].read_only, "fenced actively once it answers");
    assert_eq!(sim.primary(), Some(1));
    assert_eq!(sim.writes_to_since(0, hung_at), 0);
}

#[test]
fn proxy_cut_off_from_the_primary_refuses_writes_and_promotes_nothing() {
    let mut sim = Sim::steady(settings(3));
    let cut_at = sim.now;
    sim.proxy_cut.insert(0);
    sim.run(5 * TIMEOUT);
    assert_eq!(sim.persisted(), [(1, 0)], "no new epoch");
    assert!(sim.promotions().is_empty());
    assert_eq!(
        sim.writes_state(),
        Some(WriteState::Refused(Refusal::PrimaryUnreachable))
    );
    assert!(sim.fenced().is_empty());
    assert_eq!(sim.writes_to_since(0, cut_at), 0);
    sim.proxy_cut.clear();
    sim.run(TICK);
    assert!(
        sim.writes_open(),
        "writes open again once the proxy sees it"
    );
    assert_eq!(sim.primary(), Some(0));
}

#[test]
fn an_unknown_upstream_counts_as_the_primary_and_prevents_failover() {
    let mut sim = Sim::steady(settings(3));
    sim.foreign_upstream = true;
    sim.proxy_cut.insert(0);
    sim.run(3 * TIMEOUT);
    assert!(sim.promotions().is_empty());
}

#[test]
fn a_flapping_primary_does_not_fail_over() {
    let mut sim = Sim::steady(settings(3));
    for _ in 0..10 {
        // Down for less than failover_timeout, then answering again: the
        // miss count starts over each time.
        sim.crash(0);
        sim.run(TIMEOUT - 2 * TICK);
        assert!(!sim.writes_open(), "writes refused while it is down");
        sim.restart_node(0);
        sim.run(TICK);
        assert!(sim.writes_open(), "writes open as soon as it answers");
    }
    assert!(sim.promotions().is_empty());
    assert_eq!(sim.persisted(), [(1, 0)]);
}

#[test]
fn a_flapping_old_primary_does_not_cause_a_second_failover() {
    let mut sim = Sim::steady(settings(3));
    sim.crash(0);
    sim.run_until(TIMEOUT + 2_000, "failover", |s| {
        s.epoch() == 2 && s.writes_open()
    });
    let failed_over_at = sim.now;
    for round in 1..=5 {
        sim.restart_node(0);
        sim.run(2 * TICK);
        assert_eq!(sim.fences_of(0), round + 1, "fenced again on each return");
        assert!(sim.fenced().contains(&0));
        sim.crash(0);
        sim.run(TIMEOUT);
    }
    assert_eq!(sim.promotions(), [1], "one failover only");
    assert_eq!(sim.epoch(), 2);
    assert!(sim.writes_open());
    assert_eq!(sim.writes_to_since(0, failed_over_at - TIMEOUT), 0);
}

#[test]
fn a_flapping_replica_is_not_a_candidate() {
    let mut sim = Sim::steady(settings(3));
    node_2_ahead(&mut sim);
    sim.crash(0);
    // Node 2 has the most WAL but answers only every other probe.
    for _ in 0..(TIMEOUT + 2_000) / TICK {
        sim.nodes[2].up = !sim.nodes[2].up;
        sim.tick();
    }
    assert_eq!(sim.promotions(), [1]);
    assert_eq!(sim.primary(), Some(1));
}

#[test]
fn a_candidate_that_fails_to_promote_is_replaced_by_the_next() {
    let mut sim = Sim::steady(settings(3));
    node_2_ahead(&mut sim);
    sim.nodes[2].fail_promote = true;
    sim.crash(0);
    sim.run_until(TIMEOUT + 2_000, "second candidate promoted", |s| {
        s.primary() == Some(1) && s.writes_open()
    });
    assert_eq!(sim.promotions(), [2, 1]);
    assert_eq!(
        sim.persisted(),
        [(1, 0), (2, 2), (3, 1)],
        "a new epoch each"
    );
    assert_eq!(sim.epoch(), 3);
    sim.run(1_000);
    assert_eq!(sim.fenced(), BTreeSet::from([0]), "node 2 is a replica");
    assert_eq!(
        sim.nodes[2].upstream,
        Some(1),
        "and follows the new primary"
    );
}

#[test]
fn a_candidate_that_dies_during_promotion_is_replaced_and_fenced_if_it_returns_a_primary() {
    let mut sim = Sim::steady(settings(3));
    node_2_ahead(&mut sim);
    sim.hold_promote_of = Some(2);
    sim.crash(0);
    sim.run_until(TIMEOUT + 2_000, "node 2 chosen", |s| s.promotions() == [2]);
    assert_eq!(sim.epoch(), 2);
    assert_eq!(
        sim.writes_state(),
        Some(WriteState::Refused(Refusal::FailingOver))
    );
    sim.crash(2);
    sim.run_until(TIMEOUT, "node 1 promoted", |s| {
        s.primary() == Some(1) && s.writes_open()
    });
    assert_eq!(sim.persisted(), [(1, 0), (2, 2), (3, 1)]);
    // Its promotion went through after all before it died.
    sim.nodes[2].in_recovery = false;
    sim.nodes[2].upstream = None;
    sim.restart_node(2);
    sim.run(1_000);
    assert!(sim.fenced().contains(&2));
    assert!(sim.nodes[2].read_only);
    assert_eq!(sim.primary(), Some(1));
}

#[test]
fn of_two_nodes_claiming_primary_the_one_of_the_epoch_stays() {
    let mut sim = Sim::steady(settings(3));
    let split_at = sim.now;
    // Someone promotes node 1 behind the proxy's back.
    sim.nodes[1].in_recovery = false;
    sim.nodes[1].upstream = None;
    sim.run(1_000);
    assert_eq!(sim.fences_of(1), 1);
    assert!(sim.nodes[1].read_only);
    assert_eq!(sim.fenced(), BTreeSet::from([1]));
    assert_eq!(sim.primary(), Some(0));
    assert_eq!(sim.epoch(), 1);
    assert!(sim.writes_open());
    assert_eq!(sim.writes_to_since(1, split_at), 0);
    assert!(sim.writes_to_since(0, split_at) > 0);
    assert!(sim.streaming(2), "node 2 keeps streaming from node 0");
}

#[test]
fn bootstrap_with_two_primaries_stays_read_only_until_one_is_demoted() {
    let mut s = settings(3);
    s.failover_timeout_ms = TIMEOUT;
    let mut sim = Sim::with(s);
    sim.nodes[1].in_recovery = false;
    sim.nodes[1].upstream = None;
    sim.run(2_000);
    assert!(sim.persisted().is_empty());
    match sim.writes_state() {
        Some(WriteState::Refused(Refusal::ReadOnly(reason))) => {
            assert!(reason.contains("n0, n1"), "{reason}")
        }
        other => panic!("expected read-only, got {other:?}"),
    }
    sim.nodes[1].in_recovery = true;
    sim.nodes[1].upstream = Some(0);
    sim.run(TICK);
    assert_eq!(sim.persisted(), [(1, 0)]);
    assert!(sim.writes_open());
}

#[test]
fn restart_after_the_epoch_is_persisted_finishes_the_promotion() {
    let mut sim = Sim::steady(settings(3));
    node_2_ahead(&mut sim);
    sim.hold_promote_of = Some(2);
    let crashed_at = sim.now;
    sim.crash(0);
    sim.run_until(TIMEOUT + 2_000, "promotion sent", |s| s.promotions() == [2]);
    assert_eq!(sim.store.as_ref().map(|r| r.epoch), Some(2));
    // The proxy dies with the promotion in flight (lost), and the old
    // primary comes back while it is down.
    sim.hold_promote_of = None;
    sim.restart_node(0);
    sim.restart_proxy();
    assert_eq!(sim.epoch(), 2, "the persisted epoch is published at once");
    assert_eq!(sim.primary(), Some(2));
    assert!(!sim.writes_open());
    sim.run_until(2_000, "promotion finished", |s| s.writes_open());
    assert_eq!(sim.promotions(), [2, 2]);
    sim.run(TICK);
    assert!(sim.fenced().contains(&0));
    assert!(sim.nodes[0].read_only);
    assert_eq!(sim.writes_to_since(0, crashed_at), 0);
    assert!(sim.writes_to_since(2, crashed_at) > 0);
}

#[test]
fn restart_before_the_epoch_is_persisted_fails_over_afresh() {
    let mut sim = Sim::steady(settings(3));
    sim.hold_persist = true;
    let crashed_at = sim.now;
    sim.crash(0);
    sim.run_until(TIMEOUT + 2_000, "persist sent", |s| {
        s.persisted().len() == 2
    });
    assert!(
        sim.promotions().is_empty(),
        "nothing promoted before persisting"
    );
    assert_eq!(sim.epoch(), 1, "an epoch not acknowledged is not published");
    sim.hold_persist = false;
    sim.restart_proxy();
    assert_eq!(sim.epoch(), 1);
    assert!(!sim.writes_open());
    sim.run_until(TIMEOUT + 2_000, "failover after restart", |s| {
        s.epoch() == 2 && s.writes_open()
    });
    assert_eq!(sim.promotions(), [1]);
    assert_eq!(sim.writes_to_since(0, crashed_at), 0);
}

#[test]
fn restart_after_failover_keeps_the_returning_old_primary_fenced() {
    let mut sim = Sim::steady(settings(3));
    let crashed_at = sim.now;
    sim.crash(0);
    sim.run_until(TIMEOUT + 2_000, "failover", |s| {
        s.epoch() == 2 && s.writes_open()
    });
    sim.restart_node(0);
    sim.nodes[0].read_only = false; // e.g. its data directory restored
    sim.restart_proxy();
    for _ in 0..8 {
        sim.tick();
        assert_ne!(sim.primary(), Some(0));
    }
    assert!(sim.fenced().contains(&0));
    assert!(sim.nodes[0].read_only);
    assert!(sim.writes_open());
    assert_eq!(sim.writes_to_since(0, crashed_at), 0);
}

#[test]
fn a_replica_too_far_behind_is_not_promoted_and_says_why() {
    let mut s = settings(3);
    s.max_lag_on_failover_bytes = 1_000;
    let mut sim = Sim::steady(s);
    for n in [1, 2] {
        sim.nodes[n].apply_per_tick = Some(10);
    }
    // 90 bytes a tick further behind: past 1000 within 12 ticks.
    sim.run(5_000);
    sim.crash(0);
    sim.run(3 * TIMEOUT);
    assert!(sim.promotions().is_empty());
    assert_eq!(sim.epoch(), 1);
    match sim.writes_state() {
        Some(WriteState::Refused(Refusal::ReadOnly(reason))) => {
            assert!(reason.contains("max_lag_on_failover_bytes"), "{reason}");
            assert!(reason.contains("behind"), "{reason}");
        }
        other => panic!("expected read-only, got {other:?}"),
    }
    sim.restart_node(0);
    sim.run(TICK);
    assert!(sim.writes_open(), "the old primary is back in charge");
    assert_eq!(sim.primary(), Some(0));
}

#[test]
fn manual_mode_never_promotes_by_itself_and_switchover_does() {
    let mut s = settings(3);
    s.mode = FailoverMode::Manual;
    let mut sim = Sim::steady(s);
    sim.crash(0);
    sim.run(5 * TIMEOUT);
    assert!(sim.promotions().is_empty());
    match sim.writes_state() {
        Some(WriteState::Refused(Refusal::ReadOnly(reason))) => {
            assert!(reason.contains("manual"), "{reason}")
        }
        other => panic!("expected read-only, got {other:?}"),
    }
    sim.command(Event::Switchover { target: Some(0) });
    assert_eq!(sim.refusals.len(), 1, "the failed primary is no target");
    sim.command(Event::Switchover { target: Some(2) });
    sim.run_until(2_000, "node 2 promoted", |s| s.writes_open());
    assert_eq!(sim.promotions(), [2]);
    assert_eq!(sim.epoch(), 2);
    assert_eq!(sim.fenced(), BTreeSet::from([0]));
}

#[test]
fn switchover_pauses_writes_waits_for_the_target_and_fences_before_promoting() {
    let mut sim = Sim::steady(settings(3));
    sim.nodes[1].apply_per_tick = Some(60);
    sim.run(2_000);
    let behind = sim.nodes[0].lsn - sim.nodes[1].lsn;
    assert!(behind > 0);
    let asked_at = sim.now;
    sim.command(Event::Switchover { target: Some(1) });
    assert_eq!(sim.writes_state(), Some(WriteState::Paused));
    sim.run_until(TIMEOUT, "switchover done", |s| {
        s.epoch() == 2 && s.writes_open()
    });
    let (persist, _) = sim
        .first(&Action::PersistEpoch {
            epoch: 2,
            primary: 1,
        })
        .expect("epoch 2 persisted");
    let (fence, _) = sim.first(&Action::Fence(0)).expect("old primary fenced");
    let (promote, promoted_at) = sim.first(&Action::Promote(1)).expect("target promoted");
    assert!(
        persist < fence && fence < promote,
        "persist, fence, promote"
    );
    assert!(promoted_at > asked_at, "waited for the target to catch up");
    assert_eq!(sim.promote_gaps, [(1, 0)], "no WAL lost");
    let paused = sim
        .writes
        .iter()
        .filter(|(at, _, _)| *at > asked_at && *at <= promoted_at)
        .count();
    assert_eq!(paused, 0, "no writes while paused");
    assert!(sim.refusals.is_empty());
    assert_eq!(sim.fenced(), BTreeSet::from([0]));
    sim.run(1_000);
    assert_eq!(sim.nodes[2].upstream, Some(1));
    assert!(sim.writes_to_since(1, promoted_at) > 0);
}

#[test]
fn a_switchover_whose_target_cannot_catch_up_is_abandoned() {
    let mut sim = Sim::steady(settings(3));
    sim.nodes[1].apply_per_tick = Some(0);
    sim.run(1_000);
    sim.command(Event::Switchover { target: Some(1) });
    sim.run(TIMEOUT + TICK);
    assert_eq!(sim.refusals.len(), 1, "{:?}", sim.refusals);
    assert!(sim.refusals[0].contains("catch up"), "{:?}", sim.refusals);
    assert!(sim.writes_open(), "writes resume on the old primary");
    assert_eq!(sim.epoch(), 1);
    assert_eq!(sim.fences_of(0), 0);
    assert!(sim.promotions().is_empty());
}

#[test]
fn switchover_to_a_bad_target_or_without_one_is_checked() {
    let mut sim = Sim::steady(settings(3));
    for target in [0, 7] {
        sim.command(Event::Switchover {
            target: Some(target),
        });
    }
    assert_eq!(sim.refusals.len(), 2);
    assert!(sim.refusals[0].contains("primary"), "{:?}", sim.refusals);
    assert!(sim.writes_open());
    sim.command(Event::Switchover { target: None });
    sim.run_until(TIMEOUT, "switchover to the best replica", |s| {
        s.epoch() == 2 && s.writes_open()
    });
    assert_eq!(sim.promotions(), [1]);
}

/// Fails node 0 over to node 1 and brings node 0 back as a primary.
fn failed_over_with_old_primary_back(s: Settings) -> Sim {
    let mut sim = Sim::steady(s);
    sim.crash(0);
    sim.run_until(TIMEOUT + 2_000, "failover", |s| {
        s.epoch() == 2 && s.writes_open()
    });
    sim.restart_node(0);
    sim.run(1_000);
    assert!(sim.fenced().contains(&0));
    sim
}

#[test]
fn rejoin_brings_a_fenced_old_primary_back_once_it_streams() {
    let mut sim = failed_over_with_old_primary_back(settings(3));
    assert!(
        !sim.actions().any(|a| matches!(a, Action::Rejoin { .. })),
        "not without auto_rejoin"
    );
    sim.command(Event::Rejoin { node: 2 });
    assert!(sim.refusals[0].contains("not fenced"), "{:?}", sim.refusals);
    sim.command(Event::Rejoin { node: 0 });
    assert!(sim.first(&Action::Rejoin { node: 0, to: 1 }).is_some());
    assert!(sim.fenced().contains(&0), "fenced until it streams");
    sim.tick();
    assert!(sim.fenced().is_empty(), "unfenced once it streams");
    assert!(sim.streaming(0));
}

#[test]
fn a_rejoined_node_that_does_not_stream_stays_fenced() {
    let mut sim = failed_over_with_old_primary_back(settings(3));
    sim.rejoin_breaks = true;
    sim.command(Event::Rejoin { node: 0 });
    sim.run(2 * TIMEOUT);
    assert!(sim.nodes[0].in_recovery);
    assert!(sim.fenced().contains(&0));
}

#[test]
fn auto_rejoin_brings_the_old_primary_back_by_itself() {
    let mut s = settings(3);
    s.auto_rejoin = true;
    let mut sim = Sim::steady(s);
    sim.crash(0);
    sim.run_until(TIMEOUT + 2_000, "failover", |s| {
        s.epoch() == 2 && s.writes_open()
    });
    assert!(
        !sim.actions().any(|a| matches!(a, Action::Rejoin { .. })),
        "not while it is down"
    );
    sim.restart_node(0);
    sim.run_until(2_000, "rejoined", |s| s.fenced().is_empty());
    let (fence, _) = sim.first(&Action::Fence(0)).expect("fenced first");
    let (rejoin, _) = sim
        .first(&Action::Rejoin { node: 0, to: 1 })
        .expect("rejoined");
    assert!(fence < rejoin);
    assert!(sim.streaming(0));
    assert_eq!(sim.epoch(), 2);
}

#[test]
fn sync_mode_promotes_only_a_synchronous_standby() {
    let mut s = settings(3);
    s.replication_mode = ReplicationMode::Sync;
    let mut sim = Sim::steady(s);
    sim.command(Event::SyncStandbys {
        nodes: BTreeSet::from([1]),
    });
    node_2_ahead(&mut sim);
    sim.crash(0);
    sim.run_until(TIMEOUT + 2_000, "failover", |s| {
        s.epoch() == 2 && s.writes_open()
    });
    assert_eq!(sim.promotions(), [1], "node 2 has more WAL but was async");
}

#[test]
fn sync_mode_without_a_synchronous_standby_stays_read_only() {
    let mut s = settings(3);
    s.replication_mode = ReplicationMode::SyncStrict;
    let mut sim = Sim::steady(s);
    sim.crash(0);
    sim.run(3 * TIMEOUT);
    assert!(sim.promotions().is_empty());
    match sim.writes_state() {
        Some(WriteState::Refused(Refusal::ReadOnly(reason))) => {
            assert!(reason.contains("synchronous"), "{reason}")
        }
        other => panic!("expected read-only, got {other:?}"),
    }
}

#[test]
fn a_failed_persist_is_retried_with_a_new_epoch_and_never_published() {
    let mut sim = Sim::steady(settings(3));
    sim.persist_failures = 1;
    sim.crash(0);
    sim.run_until(TIMEOUT + 2_000, "persist failed", |s| {
        s.persisted().len() == 2
    });
    match sim.writes_state() {
        Some(WriteState::Refused(Refusal::ReadOnly(reason))) => {
            assert!(reason.contains("could not persist"), "{reason}")
        }
        other => panic!("expected read-only, got {other:?}"),
    }
    sim.run_until(TIMEOUT + 1_000, "failover", |s| s.writes_open());
    assert_eq!(sim.persisted(), [(1, 0), (2, 1), (3, 1)]);
    assert_eq!(sim.epoch(), 3);
    let published: Vec<u64> = sim
        .actions()
        .filter_map(|a| match a {
            Action::PublishTopology(p) => Some(p.epoch),
            _ => None,
        })
        .collect();
    assert!(!published.contains(&2), "{published:?}");
}

#[test]
fn nothing_is_decided_before_the_state_is_loaded_and_strays_are_ignored() {
    let s = settings(2);
    let state = State::new(s);
    let up = |in_recovery| {
        Probe::Reachable(Report {
            in_recovery,
            lsn: Some(Lsn(1)),
            ..Report::default()
        })
    };
    let (state, actions) = step(
        state,
        Event::Probe {
            node: 0,
            at: 1,
            result: up(false),
        },
    );
    assert!(actions.is_empty(), "{actions:?}");
    let (state, actions) = step(
        state,
        Event::Probe {
            node: 9,
            at: 2,
            result: up(false),
        },
    );
    assert!(actions.is_empty());
    let (state, _) = step(
        state,
        Event::Probe {
            node: 1,
            at: 2,
            result: up(true),
        },
    );
    let (state, actions) = step(
        state,
        Event::Loaded(Some(EpochRecord {
            epoch: 4,
            primary: "n0".into(),
        })),
    );
    assert_eq!(
        actions,
        [Action::PublishTopology(Published {
            epoch: 4,
            primary: Some(0),
            writes: WriteState::Open,
            fenced: BTreeSet::new(),
        })]
    );
    // Outcomes nobody asked for change nothing.
    let mut state = state;
    for event in [
        Event::PersistDone { epoch: 9 },
        Event::Promoted { node: 1 },
        Event::PromoteFailed { node: 1 },
        Event::FenceDone { node: 1 },
        Event::RepointDone { replica: 1, to: 0 },
        Event::RejoinFailed { node: 1 },
        Event::Loaded(None),
    ] {
        let before = state.clone();
        let (next, actions) = step(state, event.clone());
        assert!(actions.is_empty(), "{event:?}: {actions:?}");
        assert_eq!(next, before, "{event:?}");
        state = next;
    }
    assert_eq!(state.epoch(), 4);
}

#[test]
fn a_persisted_primary_missing_from_the_config_is_learned_in_a_newer_epoch() {
    let mut sim = Sim::new(2);
    sim.store = Some(EpochRecord {
        epoch: 7,
        primary: "gone".into(),
    });
    sim.restart_proxy();
    sim.run_until(2_000, "adopted", |s| s.writes_open());
    assert_eq!(sim.epoch(), 8);
    assert_eq!(sim.primary(), Some(0));
}

/// One probe of `node` at `at`: a replica's answer, or none.
fn probe_at(state: State, node: NodeId, at: u64, answered: bool) -> State {
    let result = if answered {
        Probe::Reachable(Report {
            in_recovery: true,
            lsn: Some(Lsn(at)),
            ..Report::default()
        })
    } else {
        Probe::Unreachable
    };
    step(state, Event::Probe { node, at, result }).0
}

fn healthy(state: &State, node: NodeId) -> bool {
    state.node(node).is_some_and(|v| v.healthy)
}

#[test]
fn health_counts_up_at_first_contact_then_flips_only_after_threshold_results_in_a_row() {
    let (mut state, _) = step(State::new(settings(2)), Event::Loaded(None));
    assert!(!healthy(&state, 1), "never heard from");
    let mut at = 0;
    let mut probe = |state: State, answered: bool| {
        at += 1;
        probe_at(state, 1, at, answered)
    };
    state = probe(state, true);
    assert!(healthy(&state, 1), "first contact counts at once");
    // Two misses, an answer, two misses: still up all along.
    for answered in [false, false, true, false, false] {
        state = probe(state, answered);
        assert!(healthy(&state, 1), "after a probe answered={answered}");
    }
    state = probe(state, false);
    assert!(!healthy(&state, 1), "third miss in a row");
    let kept = state.node(1).and_then(|v| v.report.clone());
    assert!(
        kept.is_some_and(|r| r.in_recovery),
        "the last report is kept"
    );
    for _ in 0..2 {
        state = probe(state, true);
        assert!(!healthy(&state, 1), "not back before three answers");
    }
    state = probe(state, true);
    assert!(healthy(&state, 1), "third answer in a row");
}

#[test]
fn a_threshold_of_one_flips_health_with_every_result() {
    let mut s = settings(2);
    s.health_threshold = 1;
    let (mut state, _) = step(State::new(s), Event::Loaded(None));
    for (at, answered) in [(1, true), (2, false), (3, true), (4, false)] {
        state = probe_at(state, 1, at, answered);
        assert_eq!(healthy(&state, 1), answered, "at {at}");
    }
}

#[test]
fn an_overtaken_probe_result_changes_no_health() {
    let (mut state, _) = step(State::new(settings(2)), Event::Loaded(None));
    state = probe_at(state, 1, 10, true);
    for _ in 0..3 {
        state = probe_at(state, 1, 5, false);
    }
    assert!(
        healthy(&state, 1),
        "answers older than the last are ignored"
    );
}

#[test]
fn a_promoted_node_is_the_primary_in_the_step_that_opens_writes() {
    let mut sim = Sim::steady(settings(3));
    sim.hold_promote_of = Some(2);
    node_2_ahead(&mut sim);
    sim.crash(0);
    sim.run_until(TIMEOUT + 2_000, "node 2 chosen", |s| s.promotions() == [2]);
    assert!(
        !sim.state().is_primary(2),
        "still a replica by its last probe"
    );
    // pg_promote returned; no probe has seen the node since.
    sim.hold_promote_of = None;
    sim.nodes[2].in_recovery = false;
    sim.nodes[2].upstream = None;
    sim.deliver(Event::Promoted { node: 2 });
    assert!(sim.writes_open());
    assert_eq!(sim.primary(), Some(2));
    let view = sim.state().node(2).expect("node 2");
    assert!(view.report.as_ref().is_some_and(|r| r.in_recovery));
    assert!(sim.state().is_primary(2), "known a primary at once");
    assert!(!sim.state().is_primary(1));
    // A probe sent before the promotion finished does not undo it...
    let mut state = sim.state.take().expect("state");
    let at = sim.now + 1;
    state = probe_at(state, 2, at, true);
    assert!(state.is_primary(2));
    // ...and the node's own answer takes over from there.
    let answer = Probe::Reachable(Report {
        lsn: Some(Lsn(1)),
        ..Report::default()
    });
    let (state, _) = step(
        state,
        Event::Probe {
            node: 2,
            at: at + 1,
            result: answer,
        },
    );
    assert!(state.is_primary(2));
    assert_eq!(state.node(2).map(|v| v.healthy), Some(true));
}

mod membership;

fn shared(nodes: usize) -> Settings {
    Settings {
        shared: true,
        ..settings(nodes)
    }
}

fn record(epoch: u64, primary: &str) -> EpochRecord {
    EpochRecord {
        epoch,
        primary: primary.to_owned(),
    }
}

impl Sim {
    /// Another proxy made `epoch` with `primary` durable in the shared store.
    fn learn(&mut self, epoch: u64, primary: &str) {
        self.store = Some(record(epoch, primary));
        self.deliver(Event::Learned(record(epoch, primary)));
    }
}

/// Actions that change a node or the store, as opposed to publishing.
fn acts(sim: &Sim) -> usize {
    sim.actions()
        .filter(|a| !matches!(a, Action::PublishTopology(_)))
        .count()
}

#[test]
fn a_proxy_sharing_the_epoch_decides_nothing_without_the_lead() {
    let mut sim = Sim::with(shared(3));
    sim.run(3_000);
    assert_eq!(
        (sim.epoch(), acts(&sim)),
        (0, 0),
        "no adoption by a follower"
    );
    sim.learn(1, "n0");
    sim.run_until(1_000, "writes open on the learned epoch", |s| {
        s.writes_open()
    });
    assert_eq!(sim.primary(), Some(0));
    sim.crash(0);
    sim.run(3 * TIMEOUT);
    assert_eq!(acts(&sim), 0, "a follower promotes and fences nothing");
    assert_eq!(
        sim.state().writes(),
        WriteState::Refused(Refusal::PrimaryUnreachable)
    );
    assert!(sim.state().primary_lost(), "what it reports to its peers");
    sim.command(Event::Switchover { target: None });
    assert!(sim.refusals.last().unwrap().contains("does not lead"));
}

#[test]
fn a_learned_epoch_moves_writes_and_fences_the_old_primary_at_once() {
    let mut sim = Sim::with(shared(3));
    sim.learn(1, "n0");
    sim.run_until(1_000, "writes open", |s| s.writes_open());
    // Another proxy failed over to n2: the model is what it left.
    sim.nodes[2].in_recovery = false;
    sim.nodes[2].upstream = None;
    sim.learn(2, "n2");
    assert_eq!((sim.epoch(), sim.primary()), (2, Some(2)));
    assert_eq!(sim.fenced(), BTreeSet::from([0]));
    sim.run_until(1_000, "writes open on n2", |s| s.writes_open());
    assert_eq!(sim.published.as_ref().unwrap().primary, Some(2));
    // An older or equal epoch changes nothing.
    sim.deliver(Event::Learned(record(1, "n0")));
    sim.deliver(Event::Learned(record(2, "n1")));
    assert_eq!((sim.epoch(), sim.primary()), (2, Some(2)));
    assert_eq!(acts(&sim), 0, "the leader fences, not this proxy");
}

#[test]
fn the_leader_fails_over_only_once_its_peers_agree() {
    let mut sim = Sim::with(shared(3));
    let lead_alone = Mandate {
        lead: true,
        agreed_down: false,
    };
    sim.deliver(Event::Mandate(lead_alone));
    sim.run_until(2_000, "the leader adopts n0", |s| s.writes_open());
    sim.run(1_000);
    sim.crash(0);
    sim.run(3 * TIMEOUT);
    assert_eq!((sim.epoch(), sim.promotions()), (1, vec![]));
    sim.deliver(Event::Mandate(Mandate::ALONE));
    sim.run_until(TIMEOUT, "failed over once the peers agree", |s| {
        s.epoch() == 2 && s.writes_open()
    });
    assert_eq!(sim.promotions().len(), 1);
}

#[test]
fn a_new_leader_finishes_a_promotion_its_predecessor_persisted() {
    let mut sim = Sim::with(shared(3));
    sim.learn(1, "n0");
    sim.run_until(1_000, "writes open", |s| s.writes_open());
    sim.crash(0);
    // The old leader persisted epoch 2 for n1 and died before promoting it.
    sim.learn(2, "n1");
    sim.run(TIMEOUT);
    assert_eq!(sim.promotions(), Vec::<NodeId>::new(), "followers wait");
    sim.deliver(Event::Mandate(Mandate::ALONE));
    sim.run_until(TIMEOUT, "n1 promoted by the new leader", |s| {
        s.primary() == Some(1) && s.writes_open()
    });
    assert_eq!((sim.promotions(), sim.epoch()), (vec![1], 2));
}

fn following(nodes: usize) -> Settings {
    Settings {
        mode: FailoverMode::Follow,
        ..settings(nodes)
    }
}

impl Sim {
    /// An HA manager promotes `node` by hand: a new timeline, no upstream;
    /// the other replicas follow it.
    fn promote_by_hand(&mut self, node: NodeId) {
        let timeline = self.nodes.iter().map(|n| n.timeline).max().unwrap_or(1) + 1;
        let n = &mut self.nodes[node];
        (n.in_recovery, n.upstream, n.timeline) = (false, None, timeline);
        for (i, other) in self.nodes.iter_mut().enumerate() {
            if i != node && other.in_recovery {
                other.upstream = Some(node);
            }
        }
    }

    /// Ticks `ticks` times; how many of them left writes open to `node`.
    fn ticks_writing_to(&mut self, node: NodeId, ticks: usize) -> usize {
        (0..ticks)
            .filter(|_| {
                self.tick();
                self.published
                    .as_ref()
                    .is_some_and(|p| p.writes == WriteState::Open && p.primary == Some(node))
            })
            .count()
    }
}

#[test]
fn following_adopts_a_hand_promoted_primary_within_two_probes_and_acts_on_nothing() {
    for old_stays_up in [false, true] {
        let mut sim = Sim::steady(following(3));
        if old_stays_up {
            // Made read-only, it still says it is a primary, on the old timeline.
            sim.nodes[0].read_only = true;
        } else {
            sim.crash(0);
        }
        sim.promote_by_hand(2);
        let writes_to_old = sim.ticks_writing_to(0, 2);
        assert_eq!(writes_to_old, 0, "old primary up: {old_stays_up}");
        assert_eq!((sim.epoch(), sim.primary()), (2, Some(2)));
        assert!(sim.writes_open(), "writes open on the new primary");
        assert_eq!(sim.ticks_writing_to(0, 20), 0);
        assert_eq!(
            sim.fenced().contains(&0),
            old_stays_up,
            "routed nothing while it claims"
        );
        let acted = sim
            .actions()
            .filter(|a| !matches!(a, Action::PublishTopology(_) | Action::PersistEpoch { .. }))
            .count();
        assert_eq!(acted, 0, "following promotes, fences and re-points nothing");
    }
}

#[test]
fn following_never_fails_over_and_refuses_operator_commands() {
    let mut sim = Sim::steady(following(3));
    sim.crash(0);
    sim.run(3 * TIMEOUT);
    assert_eq!((sim.epoch(), sim.promotions()), (1, vec![]));
    assert!(!sim.writes_open());
    sim.command(Event::Switchover { target: Some(1) });
    assert!(sim.refusals.last().unwrap().contains("follow"));
}

#[test]
fn following_starts_on_the_newest_timeline_of_two_claimants() {
    let mut sim = Sim::with(following(3));
    sim.nodes[1].in_recovery = false;
    sim.nodes[1].upstream = None;
    sim.nodes[1].timeline = 3;
    sim.nodes[0].read_only = true;
    sim.run_until(2_000, "adopted", |s| s.writes_open());
    assert_eq!(sim.primary(), Some(1));
    assert!(sim.fenced().contains(&0));
}

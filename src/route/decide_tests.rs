//! Every routing rule as a table: consistency level × transaction state ×
//! pins × hints × lag × health × partition mode × failover state.
//! Node 0 is the primary, nodes 1 and 2 replicas; the primary's WAL is at
//! 100; the read ticket starts at 0, so round-robin takes the first
//! candidate.

use std::cell::Cell;

use super::*;
use crate::config::{LoadBalance, PartitionMode};
use crate::topology::{NodeState, Refusal, Replication, Role};

use Consistency::{Bounded, Causal, Eventual, ReadAfterCommit, Strong};

/// The published topology a row routes against.
#[derive(Debug, Clone, Copy)]
enum Cl {
    /// Everything healthy, both replicas caught up.
    Fresh,
    /// Replica 1 far behind (5000 bytes, 3 s), replica 2 caught up.
    R1Behind,
    /// Both replicas far behind.
    BothBehind,
    /// Both replicas just behind: at 90, 10 bytes and 20 ms.
    Catching,
    /// Both replicas close in bytes (100) but stale in time (3 s), at 95.
    Stale,
    /// Both replicas streaming, lag not probed yet.
    UnknownLag,
    /// Both replicas healthy but not streaming (they lost their primary).
    CutOff,
    /// Both replicas unhealthy.
    ReplicasDown,
    /// Replica 1 unhealthy.
    R1Down,
    /// Replica 1 missed its last probe (still healthy): suspect.
    R1Suspect,
    /// Replica 1's replay stopped at 60 while the primary went on to 100:
    /// its lag grows (40 bytes, 10 s); replica 2 caught up.
    R1Stuck,
    /// The primary unhealthy, writes still open (before the control plane acts).
    PrimaryDown,
    /// The primary unhealthy and writes refused: a failover is under way.
    Failover,
    /// A planned switchover holds writes.
    Paused,
    /// Everything healthy, writes refused (read-only until an operator acts).
    ReadOnly,
    /// The epoch's primary is fenced.
    Fenced,
    /// No primary chosen for the epoch.
    NoLeader,
    /// Nothing healthy, writes refused.
    Nothing,
    /// Nothing healthy, writes still open.
    Dark,
}

pub(super) fn node(
    role: Role,
    healthy: bool,
    lsn: u64,
    streaming: bool,
    lag: Option<(u64, u64)>,
) -> NodeState {
    NodeState {
        name: format!("{role:?}"),
        host: "127.0.0.1".into(),
        port: 1,
        role,
        healthy,
        suspect: false,
        weight: 1,
        replication: Replication {
            lsn: Some(Lsn(lsn)),
            receive_lsn: Some(Lsn(lsn)),
            streaming,
            lag_bytes: lag.map(|l| l.0),
            lag_ms: lag.map(|l| l.1),
        },
        fenced: false,
        removed: false,
    }
}

/// The nodes, write state and leader of a cluster.
type Parts = (Vec<NodeState>, WriteState, Option<usize>);

fn down(mut n: NodeState) -> NodeState {
    n.healthy = false;
    n
}

/// Clusters of a healthy primary and two replicas alike, writes open.
fn alike(cl: Cl) -> Option<NodeState> {
    Some(match cl {
        Cl::BothBehind => node(Role::Replica, true, 50, true, Some((5000, 3000))),
        Cl::Catching => node(Role::Replica, true, 90, true, Some((10, 20))),
        Cl::Stale => node(Role::Replica, true, 95, true, Some((100, 3000))),
        Cl::UnknownLag => node(Role::Replica, true, 100, true, None),
        Cl::CutOff => node(Role::Replica, true, 100, false, None),
        Cl::ReplicasDown => down(node(Role::Replica, true, 100, true, Some((0, 0)))),
        _ => return None,
    })
}

fn parts(cl: Cl) -> Parts {
    let primary = node(Role::Primary, true, 100, false, None);
    let fresh = node(Role::Replica, true, 100, true, Some((0, 0)));
    let far = node(Role::Replica, true, 50, true, Some((5000, 3000)));
    let pair = vec![primary.clone(), fresh.clone(), fresh.clone()];
    if let Some(replica) = alike(cl) {
        return (
            vec![primary, replica.clone(), replica],
            WriteState::Open,
            Some(0),
        );
    }
    match cl {
        Cl::R1Behind => (vec![primary, far, fresh], WriteState::Open, Some(0)),
        Cl::R1Down => (
            vec![primary, down(fresh.clone()), fresh],
            WriteState::Open,
            Some(0),
        ),
        Cl::R1Suspect => {
            let suspect = NodeState {
                suspect: true,
                ..fresh.clone()
            };
            (vec![primary, suspect, fresh], WriteState::Open, Some(0))
        }
        Cl::R1Stuck => {
            let stuck = node(Role::Replica, true, 60, true, Some((40, 10_000)));
            (vec![primary, stuck, fresh], WriteState::Open, Some(0))
        }
        Cl::PrimaryDown => (
            vec![down(primary), fresh.clone(), fresh],
            WriteState::Open,
            Some(0),
        ),
        Cl::Failover => (
            vec![down(primary), fresh.clone(), fresh],
            WriteState::Refused(Refusal::FailingOver),
            Some(0),
        ),
        Cl::Paused => (pair, WriteState::Paused, Some(0)),
        Cl::ReadOnly => (
            pair,
            WriteState::Refused(Refusal::ReadOnly("read-only until an operator acts".into())),
            Some(0),
        ),
        Cl::Fenced => {
            let mut p = primary;
            p.fenced = true;
            (vec![p, fresh.clone(), fresh], WriteState::Open, Some(0))
        }
        Cl::NoLeader => (pair, WriteState::Open, None),
        Cl::Nothing | Cl::Dark => {
            let writes = match cl {
                Cl::Nothing => WriteState::Refused(Refusal::NoPrimary),
                _ => WriteState::Open,
            };
            (pair.into_iter().map(down).collect(), writes, Some(0))
        }
        _ => (pair, WriteState::Open, Some(0)),
    }
}

fn topology(cl: Cl) -> Topology {
    let (nodes, writes, leader) = parts(cl);
    Topology {
        epoch: 7,
        leader,
        writes,
        nodes,
    }
}

/// The config a row routes under: the defaults but for one rule.
#[derive(Debug, Clone, Copy)]
enum Cf {
    /// Level causal (the rows name read-after-commit per session), 50 ms causal wait, bounded at 1000 bytes and 500 ms,
    /// on_no_replica primary, partition consistent, round-robin, the
    /// primary takes no reads.
    Default,
    NoReplicaError,
    Available,
    /// causal_wait_ms = 0: causal reads never wait.
    NoWait,
    /// The primary is a read candidate (weight 1).
    PrimaryReads,
    /// Least-outstanding, with 3 requests on replica 1 and 1 on replica 2.
    LeastOut,
    LevelStrong,
    LevelEventual,
}

fn config(cf: Cf) -> (ConsistencyConfig, ReadPolicy) {
    let mut c = ConsistencyConfig {
        max_lag_bytes: 1000,
        max_lag_ms: 500,
        causal_wait_ms: 50,
        level: Causal,
        ..ConsistencyConfig::default()
    };
    let mut p = ReadPolicy {
        balance: LoadBalance::RoundRobin,
        primary_read_weight: 0,
    };
    match cf {
        Cf::Default => {}
        Cf::NoReplicaError => c.on_no_replica = OnNoReplica::Error,
        Cf::Available => c.partition_mode = PartitionMode::Available,
        Cf::NoWait => c.causal_wait_ms = 0,
        Cf::PrimaryReads => p.primary_read_weight = 1,
        Cf::LeastOut => p.balance = LoadBalance::LeastOutstanding,
        Cf::LevelStrong => c.level = Strong,
        Cf::LevelEventual => c.level = Eventual,
    }
    (c, p)
}

/// A switchover's pause the batch has met before.
#[derive(Debug, Clone, Copy)]
enum Pz {
    Never,
    /// It met it just now.
    Just,
    /// It met it 10 s ago (the limits are 2 s for a pause, 3 s for a failover).
    Long,
}

const PAUSE_LIMIT: Duration = Duration::from_secs(2);
/// How long a batch waits for a primary during a failover in every row.
const FAILOVER_WAIT: Duration = Duration::from_secs(3);

/// A batch.
#[derive(Debug, Clone, Copy)]
struct B(BatchFacts, Pz);

const NO_TRY: Tried = Tried {
    paused_since: None,
    replay_waited: false,
    commits_waited: false,
    avoid: NodeSet(0),
};

/// A read that executes.
const READ: B = B(
    BatchFacts {
        purpose: Purpose::Batch,
        write: false,
        begin: None,
        txn_needs_primary: false,
        hint: None,
        executes: true,
        continues: false,
        lacks_state: false,
        tried: NO_TRY,
    },
    Pz::Never,
);
const WRITE: B = READ.write();
const BEGIN: B = READ.begin(false);
const BEGIN_RO: B = READ.begin(true);
/// A batch that only prepares and describes.
const PREPARE: B = B(
    BatchFacts {
        executes: false,
        ..READ.0
    },
    Pz::Never,
);
const STARTUP: B = B(
    BatchFacts {
        purpose: Purpose::Startup,
        ..READ.0
    },
    Pz::Never,
);

impl B {
    const fn write(mut self) -> B {
        self.0.write = true;
        self
    }
    const fn begin(mut self, read_only: bool) -> B {
        self.0.begin = Some(read_only);
        self
    }
    /// It makes its transaction SERIALIZABLE or READ WRITE.
    const fn needs_primary(mut self) -> B {
        self.0.txn_needs_primary = true;
        self
    }
    const fn hint(mut self, level: Consistency) -> B {
        self.0.hint = Some(level);
        self
    }
    const fn cont(mut self) -> B {
        self.0.continues = true;
        self
    }
    const fn lacks(mut self) -> B {
        self.0.lacks_state = true;
        self
    }
    const fn waited(mut self) -> B {
        self.0.tried.replay_waited = true;
        self
    }
    const fn unsampled(mut self) -> B {
        self.0.tried.commits_waited = true;
        self
    }
    /// Node `node` failed this batch already.
    const fn avoid(mut self, node: usize) -> B {
        self.0.tried.avoid = NodeSet(self.0.tried.avoid.0 | 1 << node);
        self
    }
    const fn paused(mut self, pz: Pz) -> B {
        self.1 = pz;
        self
    }
}

/// A session.
#[derive(Debug, Clone, Copy)]
struct S(SessionFacts);

const IDLE: S = S(SessionFacts {
    ready: Some(TxnStatus::Idle),
    held: None,
    pinned: false,
    read_only_default: false,
    serializable_default: false,
    begun_only: false,
    choice: ReadChoice {
        level: None,
        max_staleness: None,
        min_lsn: None,
    },
    write_lsn: None,
    unlocated_writes: false,
    commits: CommitPosition::Nothing,
});

impl S {
    const fn on(mut self, node: usize) -> S {
        self.0.held = Some(node);
        self
    }
    const fn txn(mut self) -> S {
        self.0.ready = Some(TxnStatus::InTransaction);
        self
    }
    const fn failed(mut self) -> S {
        self.0.ready = Some(TxnStatus::Failed);
        self
    }
    const fn busy(mut self) -> S {
        self.0.ready = None;
        self
    }
    const fn pinned(mut self) -> S {
        self.0.pinned = true;
        self
    }
    const fn ro_default(mut self) -> S {
        self.0.read_only_default = true;
        self
    }
    const fn serializable(mut self) -> S {
        self.0.serializable_default = true;
        self
    }
    /// Its transaction has run nothing but its BEGIN.
    const fn begun(mut self) -> S {
        self.0.begun_only = true;
        self
    }
    const fn level(mut self, level: Consistency) -> S {
        self.0.choice.level = Some(level);
        self
    }
    const fn staleness(mut self, ms: u64) -> S {
        self.0.choice.max_staleness = Some(Duration::from_millis(ms));
        self
    }
    const fn floor(mut self, lsn: u64) -> S {
        self.0.choice.min_lsn = Some(Lsn(lsn));
        self
    }
    const fn wrote(mut self, lsn: u64) -> S {
        self.0.write_lsn = Some(Lsn(lsn));
        self
    }
    const fn unlocated(mut self) -> S {
        self.0.unlocated_writes = true;
        self
    }
    /// The proxy's commits are sampled at `lsn`.
    const fn committed(mut self, lsn: u64) -> S {
        self.0.commits = CommitPosition::At(Lsn(lsn));
        self
    }
    /// The proxy has acknowledged 3 commits since its last sample.
    const fn unsampled(mut self) -> S {
        self.0.commits = CommitPosition::Unsampled(3);
        self
    }
}

const EVENTUAL: S = IDLE.level(Eventual);
const BOUNDED: S = IDLE.level(Bounded);
const STRONG: S = IDLE.level(Strong);
const RAC: S = IDLE.level(ReadAfterCommit);

/// A refusal's reason, without its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    NoPrimary,
    Paused,
    TooLong,
    Refused,
    NoNode,
    NoFresh(Consistency),
}

/// An expected decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ex {
    Stay,
    P(usize),
    R(usize),
    /// The transaction moves to the primary `n`.
    M(usize),
    Replies,
    Locate(usize),
    Replay(usize, u64),
    /// Wait for a sample of the proxy's commits covering this count.
    Sample(u64),
    Pause,
    No(Why),
}

use Ex::{Locate, No, Pause, Replay, Replies, Sample, Stay, M, P, R};

fn expected_of(d: &Decision) -> Ex {
    match d {
        Decision::Stay => Stay,
        Decision::Primary(n) => P(*n),
        Decision::Replica(n) => R(*n),
        Decision::Move(n) => M(*n),
        Decision::Wait(Wait::Replies) => Replies,
        Decision::Wait(Wait::WritePosition { primary }) => Locate(*primary),
        Decision::Wait(Wait::Replay { node, lsn, .. }) => Replay(*node, lsn.0),
        Decision::Wait(Wait::CommitPosition { count, .. }) => Sample(*count),
        Decision::Wait(Wait::Pause { .. }) => Pause,
        Decision::Refuse(reason) => No(match reason {
            NoRoute::NoPrimary => Why::NoPrimary,
            NoRoute::Paused => Why::Paused,
            NoRoute::PausedTooLong(_) => Why::TooLong,
            NoRoute::Refused(_) => Why::Refused,
            NoRoute::NoNode => Why::NoNode,
            NoRoute::NoFreshReplica(level) => Why::NoFresh(*level),
        }),
    }
}

/// Loads in flight per node and the read counter.
struct Counters {
    outstanding: [u32; 3],
    tickets: Cell<u64>,
}

impl Loads for Counters {
    fn outstanding(&self, node: usize) -> u32 {
        self.outstanding.get(node).copied().unwrap_or(0)
    }
    fn next_ticket(&self) -> u64 {
        let t = self.tickets.get();
        self.tickets.set(t + 1);
        t
    }
    fn peek_ticket(&self) -> u64 {
        self.tickets.get()
    }
}

fn run(cl: Cl, cf: Cf, b: B, s: S, loads: &Counters, now: Instant) -> Decision {
    let (consistency, reads) = config(cf);
    let policy = Policy {
        consistency: &consistency,
        reads,
        pause_limit: PAUSE_LIMIT,
        failover_wait: FAILOVER_WAIT,
    };
    let mut batch = b.0;
    batch.tried.paused_since = match b.1 {
        Pz::Never => None,
        Pz::Just => Some(now),
        Pz::Long => Some(now - Duration::from_secs(10)),
    };
    decide(&batch, &s.0, &policy, &topology(cl), loads, now)
}

fn counters(cf: Cf) -> Counters {
    Counters {
        outstanding: match cf {
            Cf::LeastOut => [0, 3, 1],
            _ => [0; 3],
        },
        tickets: Cell::new(0),
    }
}

type Row = (&'static str, Cl, Cf, B, S, Ex);

use Cf::{Available, LeastOut, LevelEventual, LevelStrong, NoReplicaError, NoWait, PrimaryReads};

#[rustfmt::skip]
const ROWS: &[Row] = &[
    // Writes go to the epoch's primary while writes are open.
    ("write: primary", Cl::Fresh, Cf::Default, WRITE, IDLE, P(0)),
    ("write: already on the primary", Cl::Fresh, Cf::Default, WRITE, IDLE.on(0), Stay),
    ("write: held replica is left", Cl::Fresh, Cf::Default, WRITE, IDLE.on(1), P(0)),
    ("write: primary down, writes open: waits for a failover", Cl::PrimaryDown, Cf::Default, WRITE, IDLE, Pause),
    ("write: primary down, writes open: waited too long", Cl::PrimaryDown, Cf::Default, WRITE.paused(Pz::Long), IDLE, No(Why::NoPrimary)),
    ("write: failover under way: waits for a failover", Cl::Failover, Cf::Default, WRITE, IDLE, Pause),
    ("write: failover under way: waited too long", Cl::Failover, Cf::Default, WRITE.paused(Pz::Long), IDLE, No(Why::Refused)),
    ("write: pause met just now waits", Cl::Paused, Cf::Default, WRITE, IDLE, Pause),
    ("write: pause within the limit waits", Cl::Paused, Cf::Default, WRITE.paused(Pz::Just), IDLE, Pause),
    ("write: pause past the limit refuses", Cl::Paused, Cf::Default, WRITE.paused(Pz::Long), IDLE, No(Why::TooLong)),
    ("write: pause on the primary still waits", Cl::Paused, Cf::Default, WRITE, IDLE.on(0), Pause),
    ("write: a primary back within the wait", Cl::Fresh, Cf::Default, WRITE.paused(Pz::Just), IDLE, P(0)),
    ("write: read-only cluster", Cl::ReadOnly, Cf::Default, WRITE, IDLE, No(Why::Refused)),
    ("write: fenced primary: waits for a failover", Cl::Fenced, Cf::Default, WRITE, IDLE, Pause),
    ("write: fenced primary: waited too long", Cl::Fenced, Cf::Default, WRITE.paused(Pz::Long), IDLE, No(Why::NoPrimary)),
    ("write: no leader: waits for a failover", Cl::NoLeader, Cf::Default, WRITE, IDLE, Pause),
    ("write: no leader: waited too long", Cl::NoLeader, Cf::Default, WRITE.paused(Pz::Long), IDLE, No(Why::NoPrimary)),
    ("write: nothing healthy: waits for a failover", Cl::Nothing, Cf::Default, WRITE, IDLE, Pause),
    ("write: nothing healthy: waited too long", Cl::Nothing, Cf::Default, WRITE.paused(Pz::Long), IDLE, No(Why::Refused)),
    ("write: dark, writes open: waits for a failover", Cl::Dark, Cf::Default, WRITE, IDLE, Pause),
    ("write: dark, writes open: waited too long", Cl::Dark, Cf::Default, WRITE.paused(Pz::Long), IDLE, No(Why::NoPrimary)),
    ("write: replicas down", Cl::ReplicasDown, Cf::Default, WRITE, IDLE, P(0)),
    ("write: replicas cut off", Cl::CutOff, Cf::Default, WRITE, IDLE, P(0)),
    ("write: replica lag is irrelevant", Cl::R1Behind, Cf::Default, WRITE, IDLE, P(0)),
    ("write: a replica hint does not move it", Cl::Fresh, Cf::Default, WRITE.hint(Eventual), IDLE, P(0)),
    ("write: eventual session", Cl::Fresh, Cf::Default, WRITE, EVENTUAL, P(0)),
    ("write: pinned session", Cl::Fresh, Cf::Default, WRITE, IDLE.pinned(), P(0)),
    ("write: primary takes reads too", Cl::Fresh, PrimaryReads, WRITE, IDLE, P(0)),
    ("write: partition available", Cl::CutOff, Available, WRITE, IDLE, P(0)),
    ("write: not a causal read, no locating", Cl::Fresh, Cf::Default, WRITE, IDLE.unlocated(), P(0)),
    // Strong reads run on the primary, paused or not.
    ("strong: primary", Cl::Fresh, Cf::Default, READ, STRONG, P(0)),
    ("strong: on the primary", Cl::Fresh, Cf::Default, READ, STRONG.on(0), Stay),
    ("strong: held replica is left", Cl::Fresh, Cf::Default, READ, STRONG.on(1), P(0)),
    ("strong: primary down: waits for a failover", Cl::PrimaryDown, Cf::Default, READ, STRONG, Pause),
    ("strong: primary down: waited too long", Cl::PrimaryDown, Cf::Default, READ.paused(Pz::Long), STRONG, No(Why::NoPrimary)),
    ("strong: failover: waits for a failover", Cl::Failover, Cf::Default, READ, STRONG, Pause),
    ("strong: failover: waited too long", Cl::Failover, Cf::Default, READ.paused(Pz::Long), STRONG, No(Why::NoPrimary)),
    ("strong: a pause holds writes, not reads", Cl::Paused, Cf::Default, READ, STRONG, P(0)),
    ("strong: read-only cluster still reads", Cl::ReadOnly, Cf::Default, READ, STRONG, P(0)),
    ("strong: fenced primary: waits for a failover", Cl::Fenced, Cf::Default, READ, STRONG, Pause),
    ("strong: fenced primary: waited too long", Cl::Fenced, Cf::Default, READ.paused(Pz::Long), STRONG, No(Why::NoPrimary)),
    ("strong: replicas down", Cl::ReplicasDown, Cf::Default, READ, STRONG, P(0)),
    ("strong: config level", Cl::Fresh, LevelStrong, READ, IDLE, P(0)),
    ("strong: session level beats the config", Cl::Fresh, LevelStrong, READ, EVENTUAL, R(1)),
    ("strong: hint beats the session", Cl::Fresh, Cf::Default, READ.hint(Strong), EVENTUAL, P(0)),
    ("strong: on_no_replica is not asked", Cl::Fresh, NoReplicaError, READ, STRONG, P(0)),
    ("strong: unlocated writes are not located", Cl::Fresh, Cf::Default, READ, STRONG.unlocated(), P(0)),
    ("strong: primary reads weight changes nothing", Cl::Fresh, PrimaryReads, READ, STRONG, P(0)),
    // Eventual reads: any healthy streaming replica.
    ("eventual: first replica", Cl::Fresh, Cf::Default, READ, EVENTUAL, R(1)),
    ("eventual: lag is fine", Cl::R1Behind, Cf::Default, READ, EVENTUAL, R(1)),
    ("eventual: both behind is fine", Cl::BothBehind, Cf::Default, READ, EVENTUAL, R(1)),
    ("eventual: unknown lag is fine", Cl::UnknownLag, Cf::Default, READ, EVENTUAL, R(1)),
    ("eventual: cut off replicas are not", Cl::CutOff, Cf::Default, READ, EVENTUAL, P(0)),
    ("eventual: cut off, partition available", Cl::CutOff, Available, READ, EVENTUAL, R(1)),
    ("eventual: cut off, on_no_replica error", Cl::CutOff, NoReplicaError, READ, EVENTUAL, No(Why::NoFresh(Eventual))),
    ("eventual: replicas down, primary serves", Cl::ReplicasDown, Cf::Default, READ, EVENTUAL, P(0)),
    ("eventual: replicas down, error", Cl::ReplicasDown, NoReplicaError, READ, EVENTUAL, No(Why::NoFresh(Eventual))),
    ("eventual: one replica down", Cl::R1Down, Cf::Default, READ, EVENTUAL, R(2)),
    ("eventual: a suspect replica gets no new reads", Cl::R1Suspect, Cf::Default, READ, EVENTUAL, R(2)),
    ("eventual: a suspect replica, least outstanding", Cl::R1Suspect, LeastOut, READ, EVENTUAL, R(2)),
    ("eventual: a replica that failed the batch", Cl::Fresh, Cf::Default, READ.avoid(1), EVENTUAL, R(2)),
    ("eventual: every replica failed it, primary", Cl::Fresh, Cf::Default, READ.avoid(1).avoid(2), EVENTUAL, P(0)),
    ("eventual: every replica failed it, error", Cl::Fresh, NoReplicaError, READ.avoid(1).avoid(2), EVENTUAL, No(Why::NoFresh(Eventual))),
    ("eventual: one failed, the other suspect", Cl::R1Suspect, Cf::Default, READ.avoid(2), EVENTUAL, P(0)),
    ("eventual: the primary is never avoided", Cl::Fresh, PrimaryReads, READ.avoid(0), EVENTUAL, P(0)),
    ("eventual: held on a replica that failed it", Cl::Fresh, Cf::Default, READ.avoid(1), EVENTUAL.on(1), R(2)),
    ("strong: a failed primary connection is tried afresh", Cl::Fresh, Cf::Default, READ.avoid(0), STRONG, P(0)),
    ("write: avoiding changes nothing", Cl::Fresh, Cf::Default, WRITE.avoid(0).avoid(1), IDLE, P(0)),
    ("eventual: primary down", Cl::PrimaryDown, Cf::Default, READ, EVENTUAL, R(1)),
    ("eventual: failover", Cl::Failover, Cf::Default, READ, EVENTUAL, R(1)),
    ("eventual: paused", Cl::Paused, Cf::Default, READ, EVENTUAL, R(1)),
    ("eventual: read-only cluster", Cl::ReadOnly, Cf::Default, READ, EVENTUAL, R(1)),
    ("eventual: fenced primary", Cl::Fenced, Cf::Default, READ, EVENTUAL, R(1)),
    ("eventual: no leader", Cl::NoLeader, Cf::Default, READ, EVENTUAL, R(1)),
    ("eventual: nothing healthy: waits for a failover", Cl::Nothing, Cf::Default, READ, EVENTUAL, Pause),
    ("eventual: nothing healthy: waited too long", Cl::Nothing, Cf::Default, READ.paused(Pz::Long), EVENTUAL, No(Why::NoNode)),
    ("eventual: nothing healthy, error: waits for a failover", Cl::Nothing, NoReplicaError, READ, EVENTUAL, Pause),
    ("eventual: nothing healthy, error: waited too long", Cl::Nothing, NoReplicaError, READ.paused(Pz::Long), EVENTUAL, No(Why::NoNode)),
    ("eventual: on the picked replica", Cl::Fresh, Cf::Default, READ, EVENTUAL.on(1), Stay),
    ("eventual: on another replica", Cl::Fresh, Cf::Default, READ, EVENTUAL.on(2), R(1)),
    ("eventual: on the primary", Cl::Fresh, Cf::Default, READ, EVENTUAL.on(0), R(1)),
    ("eventual: config level", Cl::Fresh, LevelEventual, READ, IDLE, R(1)),
    ("eventual: replica hint", Cl::Fresh, Cf::Default, READ.hint(Eventual), STRONG, R(1)),
    ("eventual: hint beats a strong config", Cl::Fresh, LevelStrong, READ.hint(Eventual), IDLE, R(1)),
    ("eventual: primary reads, ticket 0", Cl::Fresh, PrimaryReads, READ, EVENTUAL, P(0)),
    ("eventual: primary reads, replicas down", Cl::ReplicasDown, PrimaryReads, READ, EVENTUAL, P(0)),
    ("eventual: primary reads, primary down", Cl::PrimaryDown, PrimaryReads, READ, EVENTUAL, R(1)),
    ("eventual: least outstanding", Cl::Fresh, LeastOut, READ, EVENTUAL, R(2)),
    ("eventual: least outstanding, one down", Cl::R1Down, LeastOut, READ, EVENTUAL, R(2)),
    ("eventual: fenced primary, replicas down: waits for a failover", Cl::Dark, Cf::Default, READ, EVENTUAL, Pause),
    ("eventual: fenced primary, replicas down: waited too long", Cl::Dark, Cf::Default, READ.paused(Pz::Long), EVENTUAL, No(Why::NoNode)),
    ("eventual: a floor skips a replica behind it", Cl::R1Behind, Cf::Default, READ, EVENTUAL.floor(80), R(2)),
    ("eventual: a floor no replica reached", Cl::BothBehind, Cf::Default, READ, EVENTUAL.floor(80), P(0)),
    ("eventual: a floor a replica is close to", Cl::Catching, Cf::Default, READ, EVENTUAL.floor(95), Replay(1, 95)),
    ("eventual: a floor, no waiting", Cl::Catching, NoWait, READ, EVENTUAL.floor(95), P(0)),
    ("eventual: the session's writes do not count", Cl::BothBehind, Cf::Default, READ, EVENTUAL.wrote(100), R(1)),
    ("eventual: only preparing", Cl::Fresh, Cf::Default, PREPARE, EVENTUAL, R(1)),
    // Bounded reads: replicas known to be within the lag bounds.
    ("bounded: fresh", Cl::Fresh, Cf::Default, READ, BOUNDED, R(1)),
    ("bounded: skips the lagging replica", Cl::R1Behind, Cf::Default, READ, BOUNDED, R(2)),
    ("bounded: skips a replica whose replay stopped", Cl::R1Stuck, Cf::Default, READ, BOUNDED, R(2)),
    ("bounded: skips a suspect replica", Cl::R1Suspect, Cf::Default, READ, BOUNDED, R(2)),
    ("bounded: avoids a replica that failed it", Cl::Fresh, Cf::Default, READ.avoid(1), BOUNDED, R(2)),
    ("bounded: both behind", Cl::BothBehind, Cf::Default, READ, BOUNDED, P(0)),
    ("bounded: both behind, error", Cl::BothBehind, NoReplicaError, READ, BOUNDED, No(Why::NoFresh(Bounded))),
    ("bounded: just behind is within bounds", Cl::Catching, Cf::Default, READ, BOUNDED, R(1)),
    ("bounded: unknown lag is not", Cl::UnknownLag, Cf::Default, READ, BOUNDED, P(0)),
    ("bounded: cut off", Cl::CutOff, Cf::Default, READ, BOUNDED, P(0)),
    ("bounded: cut off, available, lag unknown", Cl::CutOff, Available, READ, BOUNDED, P(0)),
    ("bounded: stale in time", Cl::Stale, Cf::Default, READ, BOUNDED, P(0)),
    ("bounded: stale in time, session allows 5 s", Cl::Stale, Cf::Default, READ, BOUNDED.staleness(5000), R(1)),
    ("bounded: bytes still bind a loose session", Cl::BothBehind, Cf::Default, READ, BOUNDED.staleness(5000), P(0)),
    ("bounded: a tight session bound", Cl::Catching, Cf::Default, READ, BOUNDED.staleness(10), P(0)),
    ("bounded: replicas down", Cl::ReplicasDown, Cf::Default, READ, BOUNDED, P(0)),
    ("bounded: hint", Cl::R1Behind, Cf::Default, READ.hint(Bounded), EVENTUAL, R(2)),
    ("bounded: nothing healthy: waits for a failover", Cl::Nothing, Cf::Default, READ, BOUNDED, Pause),
    ("bounded: nothing healthy: waited too long", Cl::Nothing, Cf::Default, READ.paused(Pz::Long), BOUNDED, No(Why::NoNode)),
    ("bounded: floor reached", Cl::Fresh, Cf::Default, READ, BOUNDED.floor(95), R(1)),
    ("bounded: floor close", Cl::Catching, Cf::Default, READ, BOUNDED.floor(95), Replay(1, 95)),
    ("bounded: on another replica", Cl::Fresh, Cf::Default, READ, BOUNDED.on(2), R(1)),
    ("bounded: paused", Cl::Paused, Cf::Default, READ, BOUNDED, R(1)),
    ("bounded: primary down", Cl::PrimaryDown, Cf::Default, READ, BOUNDED, R(1)),
    ("bounded: primary down, none in bounds: waits for a failover", Cl::Dark, Cf::Default, READ, BOUNDED, Pause),
    ("bounded: primary down, none in bounds: waited too long", Cl::Dark, Cf::Default, READ.paused(Pz::Long), BOUNDED, No(Why::NoNode)),
    ("bounded: least outstanding", Cl::Fresh, LeastOut, READ, BOUNDED, R(2)),
    // Causal reads: a replica that has replayed the session's last write.
    ("causal: no writes yet", Cl::Fresh, Cf::Default, READ, IDLE, R(1)),
    ("causal: no writes, lag is fine", Cl::BothBehind, Cf::Default, READ, IDLE, R(1)),
    ("causal: write replayed", Cl::Fresh, Cf::Default, READ, IDLE.wrote(100), R(1)),
    ("causal: write replayed on one", Cl::R1Behind, Cf::Default, READ, IDLE.wrote(100), R(2)),
    ("causal: a stopped replay is not waited for", Cl::R1Stuck, Cf::Default, READ, IDLE.wrote(100), R(2)),
    ("causal: a stopped replay, no waiting", Cl::R1Stuck, NoWait, READ, IDLE.wrote(100), R(2)),
    ("causal: a suspect replica is not waited for", Cl::R1Suspect, Cf::Default, READ, IDLE.wrote(100), R(2)),
    ("causal: the other close one is waited for", Cl::Catching, Cf::Default, READ.avoid(1), IDLE.wrote(100), Replay(2, 100)),
    ("causal: replicas far behind", Cl::BothBehind, Cf::Default, READ, IDLE.wrote(100), P(0)),
    ("causal: far behind, error", Cl::BothBehind, NoReplicaError, READ, IDLE.wrote(100), No(Why::NoFresh(Causal))),
    ("causal: close behind is waited for", Cl::Catching, Cf::Default, READ, IDLE.wrote(100), Replay(1, 100)),
    ("causal: waited in vain, primary", Cl::Catching, Cf::Default, READ.waited(), IDLE.wrote(100), P(0)),
    ("causal: waited in vain, error", Cl::Catching, NoReplicaError, READ.waited(), IDLE.wrote(100), No(Why::NoFresh(Causal))),
    ("causal: waited, another shown fresh", Cl::Fresh, Cf::Default, READ.waited(), IDLE.wrote(100), R(1)),
    ("causal: waited, on the fresh one", Cl::Fresh, Cf::Default, READ.waited(), IDLE.wrote(100).on(1), Stay),
    ("causal: no waiting configured", Cl::Catching, NoWait, READ, IDLE.wrote(100), P(0)),
    ("causal: no waiting, fresh replica", Cl::Fresh, NoWait, READ, IDLE.wrote(100), R(1)),
    ("causal: waiting on the held replica", Cl::Catching, Cf::Default, READ, IDLE.wrote(100).on(1), Replay(1, 100)),
    ("causal: on the fresh replica", Cl::Fresh, Cf::Default, READ, IDLE.wrote(100).on(1), Stay),
    ("causal: on the primary, replica fresh", Cl::Fresh, Cf::Default, READ, IDLE.wrote(100).on(0), R(1)),
    ("causal: cut off, but shown past the write", Cl::CutOff, Cf::Default, READ, IDLE.wrote(100), R(1)),
    ("causal: cut off, short of the write", Cl::CutOff, Cf::Default, READ, IDLE.wrote(120), P(0)),
    ("causal: cut off, available", Cl::CutOff, Available, READ, IDLE.wrote(100), R(1)),
    ("causal: unknown lag, replayed", Cl::UnknownLag, Cf::Default, READ, IDLE.wrote(100), R(1)),
    ("causal: a floor past the write", Cl::Fresh, Cf::Default, READ, IDLE.wrote(100).floor(120), Replay(1, 120)),
    ("causal: a floor before the write", Cl::Catching, Cf::Default, READ, IDLE.wrote(100).floor(80), Replay(1, 100)),
    ("causal: primary down", Cl::PrimaryDown, Cf::Default, READ, IDLE.wrote(100), R(1)),
    ("causal: nothing healthy: waits for a failover", Cl::Nothing, Cf::Default, READ, IDLE.wrote(100), Pause),
    ("causal: nothing healthy: waited too long", Cl::Nothing, Cf::Default, READ.paused(Pz::Long), IDLE.wrote(100), No(Why::NoNode)),
    ("causal: primary reads, ticket 0", Cl::Catching, PrimaryReads, READ, IDLE.wrote(100), P(0)),
    ("causal: least outstanding waits on the idler", Cl::Catching, LeastOut, READ, IDLE.wrote(100), Replay(2, 100)),
    ("causal: hint with an eventual session", Cl::Catching, Cf::Default, READ.hint(Causal), EVENTUAL.wrote(100), Replay(1, 100)),
    ("causal: fenced primary", Cl::Fenced, Cf::Default, READ, IDLE.wrote(100), R(1)),
    ("causal: replicas down", Cl::ReplicasDown, Cf::Default, READ, IDLE.wrote(100), P(0)),
    ("causal: one down, other close", Cl::R1Down, Cf::Default, READ, IDLE.wrote(100), R(2)),
    ("causal: stale in time is too far to wait", Cl::Stale, Cf::Default, READ, IDLE.wrote(100), P(0)),
    // Read-after-commit reads: a replica that has replayed every commit
    // the proxy acknowledged, on any connection.
    ("rac: nothing committed", Cl::BothBehind, Cf::Default, READ, RAC, R(1)),
    ("rac: commits replayed", Cl::Fresh, Cf::Default, READ, RAC.committed(100), R(1)),
    ("rac: replayed on one", Cl::R1Behind, Cf::Default, READ, RAC.committed(100), R(2)),
    ("rac: a stopped replay is avoided", Cl::R1Stuck, Cf::Default, READ, RAC.committed(100), R(2)),
    ("rac: older commits, a stopped replay still serves", Cl::R1Stuck, Cf::Default, READ, RAC.committed(50), R(1)),
    ("rac: close behind is waited for", Cl::Catching, Cf::Default, READ, RAC.committed(100), Replay(1, 100)),
    ("rac: far behind, primary", Cl::BothBehind, Cf::Default, READ, RAC.committed(100), P(0)),
    ("rac: far behind, error", Cl::BothBehind, NoReplicaError, READ, RAC.committed(100), No(Why::NoFresh(ReadAfterCommit))),
    ("rac: waited in vain, primary", Cl::Catching, Cf::Default, READ.waited(), RAC.committed(100), P(0)),
    ("rac: the session's own write counts too", Cl::Catching, Cf::Default, READ, RAC.committed(80).wrote(100), Replay(1, 100)),
    ("rac: unlocated own writes need no locating", Cl::Fresh, Cf::Default, READ, RAC.committed(100).unlocated(), R(1)),
    ("rac: unsampled commits wait for a sample", Cl::Fresh, Cf::Default, READ, RAC.unsampled(), Sample(3)),
    ("rac: unsampled on a held replica", Cl::Fresh, Cf::Default, READ, RAC.unsampled().on(1), Sample(3)),
    ("rac: sample waited in vain, primary", Cl::Fresh, Cf::Default, READ.unsampled(), RAC.unsampled(), P(0)),
    ("rac: sample waited in vain, error", Cl::Fresh, NoReplicaError, READ.unsampled(), RAC.unsampled(), No(Why::NoFresh(ReadAfterCommit))),
    ("rac: unsampled, primary down: its last position binds", Cl::PrimaryDown, Cf::Default, READ, RAC.unsampled(), R(1)),
    ("rac: unsampled, failing over", Cl::Failover, Cf::Default, READ, RAC.unsampled(), R(1)),
    ("rac: unsampled, nothing healthy: waits for a failover", Cl::Nothing, Cf::Default, READ, RAC.unsampled(), Pause),
    ("rac: unsampled, nothing healthy: waited too long", Cl::Nothing, Cf::Default, READ.paused(Pz::Long), RAC.unsampled(), No(Why::NoNode)),
    ("rac: by hint", Cl::Catching, Cf::Default, READ.hint(ReadAfterCommit), EVENTUAL.committed(100), Replay(1, 100)),
    ("rac: a causal hint ignores others' commits", Cl::BothBehind, Cf::Default, READ.hint(Causal), RAC.committed(100), R(1)),
    ("rac: eventual ignores them", Cl::BothBehind, Cf::Default, READ, EVENTUAL.unsampled(), R(1)),
    ("rac: writes are not held up", Cl::Fresh, Cf::Default, WRITE, RAC.unsampled(), P(0)),
    ("rac: a transaction stays", Cl::Fresh, Cf::Default, READ, RAC.unsampled().txn().on(1), Stay),
    ("rac: follows replies due", Cl::Fresh, Cf::Default, READ, RAC.unsampled().busy().on(1), Stay),
    ("rac: read-only transaction samples", Cl::Fresh, Cf::Default, BEGIN_RO, RAC.unsampled(), Sample(3)),
    ("rac: pinned reads on the primary", Cl::Fresh, Cf::Default, READ, RAC.unsampled().pinned(), P(0)),
    ("rac: cut off, available", Cl::CutOff, Available, READ, RAC.committed(100), R(1)),
    // Causal reads locate the session's writes first.
    ("locate: unlocated writes", Cl::Fresh, Cf::Default, READ, IDLE.unlocated(), Locate(0)),
    ("locate: held replica", Cl::Fresh, Cf::Default, READ, IDLE.unlocated().on(1), Locate(0)),
    ("locate: paused writes still locate", Cl::Paused, Cf::Default, READ, IDLE.unlocated(), Locate(0)),
    ("locate: no primary: waits for a failover", Cl::PrimaryDown, Cf::Default, READ, IDLE.unlocated(), Pause),
    ("locate: no primary: waited too long", Cl::PrimaryDown, Cf::Default, READ.paused(Pz::Long), IDLE.unlocated(), No(Why::NoPrimary)),
    ("locate: fenced primary: waits for a failover", Cl::Fenced, Cf::Default, READ, IDLE.unlocated(), Pause),
    ("locate: fenced primary: waited too long", Cl::Fenced, Cf::Default, READ.paused(Pz::Long), IDLE.unlocated(), No(Why::NoPrimary)),
    ("locate: causal by hint", Cl::Fresh, Cf::Default, READ.hint(Causal), EVENTUAL.unlocated(), Locate(0)),
    ("locate: not for eventual", Cl::Fresh, Cf::Default, READ, EVENTUAL.unlocated(), R(1)),
    ("locate: not for bounded", Cl::Fresh, Cf::Default, READ, BOUNDED.unlocated(), R(1)),
    ("locate: not in a transaction", Cl::Fresh, Cf::Default, READ, IDLE.unlocated().txn().on(1), Stay),
    ("locate: not while replies are due", Cl::Fresh, Cf::Default, READ, IDLE.unlocated().busy().on(1), Stay),
    ("locate: not for a pinned session", Cl::Fresh, Cf::Default, READ, IDLE.unlocated().pinned(), P(0)),
    ("locate: read-only transaction", Cl::Fresh, Cf::Default, BEGIN_RO, IDLE.unlocated(), Locate(0)),
    // Transactions stay where they began.
    ("txn: read stays on the primary", Cl::Fresh, Cf::Default, READ, EVENTUAL.txn().on(0), Stay),
    ("txn: write stays on the primary", Cl::Fresh, Cf::Default, WRITE, IDLE.txn().on(0), Stay),
    ("txn: read-only transaction stays on a replica", Cl::Fresh, Cf::Default, WRITE, IDLE.txn().on(1), Stay),
    ("txn: failed stays until rollback", Cl::Fresh, Cf::Default, READ, IDLE.failed().on(1), Stay),
    ("txn: failed write stays", Cl::Fresh, Cf::Default, WRITE, IDLE.failed().on(0), Stay),
    ("txn: a pause does not interrupt it", Cl::Paused, Cf::Default, WRITE, IDLE.txn().on(0), Stay),
    ("txn: nor a failover", Cl::Failover, Cf::Default, WRITE, IDLE.txn().on(0), Stay),
    ("txn: strong read stays on a replica", Cl::Fresh, Cf::Default, READ, STRONG.txn().on(1), Stay),
    ("txn: no connection held routes afresh", Cl::Fresh, Cf::Default, READ, EVENTUAL.txn(), R(1)),
    // A read-only transaction made SERIALIZABLE or READ WRITE after its
    // BEGIN needs the primary: it moves there while it has run nothing else.
    ("txn: only begun on a replica, needing the primary, moves", Cl::Fresh, Cf::Default, WRITE.needs_primary(), IDLE.txn().on(1).begun(), M(0)),
    ("txn: only begun, a read moves nowhere", Cl::Fresh, Cf::Default, READ, IDLE.txn().on(1).begun(), Stay),
    ("txn: only begun, a write moves nowhere", Cl::Fresh, Cf::Default, WRITE, IDLE.txn().on(2).begun(), Stay),
    ("txn: needing the primary after running more stays", Cl::Fresh, Cf::Default, WRITE.needs_primary(), IDLE.txn().on(1), Stay),
    ("txn: needing the primary, on it already", Cl::Fresh, Cf::Default, WRITE.needs_primary(), IDLE.txn().on(0).begun(), Stay),
    ("txn: needing the primary, none chosen", Cl::NoLeader, Cf::Default, WRITE.needs_primary(), IDLE.txn().on(1).begun(), Stay),
    ("txn: needing the primary, a pause does not hold it", Cl::Paused, Cf::Default, WRITE.needs_primary(), IDLE.txn().on(1).begun(), M(0)),
    ("txn: needing the primary, failed", Cl::Fresh, Cf::Default, WRITE.needs_primary(), IDLE.failed().on(1).begun(), Stay),
    ("txn: needing the primary, replies due first", Cl::Fresh, Cf::Default, WRITE.needs_primary(), IDLE.busy().on(1).begun(), Replies),
    // Replies due: follow them on the same connection, or wait.
    ("busy: write follows on the primary", Cl::Fresh, Cf::Default, WRITE, IDLE.busy().on(0), Stay),
    ("busy: read follows on the primary", Cl::Fresh, Cf::Default, READ, EVENTUAL.busy().on(0), Stay),
    ("busy: read follows on a replica", Cl::Fresh, Cf::Default, READ, EVENTUAL.busy().on(1), Stay),
    ("busy: strong read follows on a replica", Cl::Fresh, Cf::Default, READ, STRONG.busy().on(1), Stay),
    ("busy: write waits on a replica", Cl::Fresh, Cf::Default, WRITE, IDLE.busy().on(1), Replies),
    ("busy: begin waits on a replica", Cl::Fresh, Cf::Default, BEGIN, IDLE.busy().on(1), Replies),
    ("busy: read-only begin waits too", Cl::Fresh, Cf::Default, BEGIN_RO, EVENTUAL.busy().on(1), Replies),
    ("busy: lacking state waits", Cl::Fresh, Cf::Default, READ.lacks(), EVENTUAL.busy().on(1), Replies),
    ("busy: lacking state waits on the primary", Cl::Fresh, Cf::Default, WRITE.lacks(), IDLE.busy().on(0), Replies),
    ("busy: write on a primary gone down waits", Cl::PrimaryDown, Cf::Default, WRITE, IDLE.busy().on(0), Replies),
    ("busy: with nothing held routes afresh", Cl::Fresh, Cf::Default, READ, EVENTUAL.busy(), R(1)),
    ("busy: pinned read follows on the primary", Cl::Fresh, Cf::Default, READ, IDLE.pinned().busy().on(0), Stay),
    // The rest of a batch already partly sent follows it.
    ("continues: read", Cl::Fresh, Cf::Default, READ.cont(), IDLE.busy().on(1), Stay),
    ("continues: write on a replica", Cl::Fresh, Cf::Default, WRITE.cont(), IDLE.busy().on(1), Stay),
    ("continues: nothing healthy", Cl::Nothing, Cf::Default, WRITE.cont(), IDLE.busy().on(0), Stay),
    ("continues: lacking state", Cl::Fresh, Cf::Default, READ.cont().lacks(), IDLE.busy().on(1), Stay),
    ("continues: paused", Cl::Paused, Cf::Default, WRITE.cont(), IDLE.on(0), Stay),
    // Pins and transactions: what is a read.
    ("pinned: read goes to the primary", Cl::Fresh, Cf::Default, READ, EVENTUAL.pinned(), P(0)),
    ("pinned: on the primary", Cl::Fresh, Cf::Default, READ, EVENTUAL.pinned().on(0), Stay),
    ("pinned: primary down: waits for a failover", Cl::PrimaryDown, Cf::Default, READ, EVENTUAL.pinned(), Pause),
    ("pinned: primary down: waited too long", Cl::PrimaryDown, Cf::Default, READ.paused(Pz::Long), EVENTUAL.pinned(), No(Why::NoPrimary)),
    ("pinned: a read waits out a pause", Cl::Paused, Cf::Default, READ, EVENTUAL.pinned(), Pause),
    ("pinned: a replica hint changes nothing", Cl::Fresh, Cf::Default, READ.hint(Eventual), IDLE.pinned(), P(0)),
    ("pinned: read-only transaction too", Cl::Fresh, Cf::Default, BEGIN_RO, EVENTUAL.pinned(), P(0)),
    ("serializable default: a read on the primary", Cl::Fresh, Cf::Default, READ, EVENTUAL.serializable(), P(0)),
    ("serializable default: a read-only transaction too", Cl::Fresh, Cf::Default, BEGIN_RO, EVENTUAL.serializable(), P(0)),
    ("serializable default: strong reads unchanged", Cl::Fresh, Cf::Default, READ, STRONG.serializable(), P(0)),
    ("begin: a transaction goes to the primary", Cl::Fresh, Cf::Default, BEGIN, EVENTUAL, P(0)),
    ("begin: paused", Cl::Paused, Cf::Default, BEGIN, EVENTUAL, Pause),
    ("begin: read only on a replica", Cl::Fresh, Cf::Default, BEGIN_RO, EVENTUAL, R(1)),
    ("begin: read only, strong", Cl::Fresh, Cf::Default, BEGIN_RO, STRONG, P(0)),
    ("begin: read only, causal, replicas behind", Cl::BothBehind, Cf::Default, BEGIN_RO, IDLE.wrote(100), P(0)),
    ("begin: read only, paused", Cl::Paused, Cf::Default, BEGIN_RO, EVENTUAL, R(1)),
    ("begin: read only by default", Cl::Fresh, Cf::Default, BEGIN, EVENTUAL.ro_default(), R(1)),
    ("begin: read only, with a write in it", Cl::Fresh, Cf::Default, BEGIN_RO.write(), EVENTUAL, R(1)),
    ("begin: read only, made serializable in the same batch", Cl::Fresh, Cf::Default, BEGIN_RO.needs_primary(), EVENTUAL, P(0)),
    ("begin: serializable or read write despite a read-only default", Cl::Fresh, Cf::Default, BEGIN.needs_primary(), EVENTUAL.ro_default(), P(0)),
    ("ro default: a plain read", Cl::Fresh, Cf::Default, READ, EVENTUAL.ro_default(), R(1)),
    ("ro default: a plain write", Cl::Fresh, Cf::Default, WRITE, EVENTUAL.ro_default(), P(0)),
    // A new session opens on the primary, or anywhere while writes are shut.
    ("startup: the primary", Cl::Fresh, Cf::Default, STARTUP, IDLE, P(0)),
    ("startup: replicas down", Cl::ReplicasDown, Cf::Default, STARTUP, IDLE, P(0)),
    ("startup: replicas cut off", Cl::CutOff, Cf::Default, STARTUP, IDLE, P(0)),
    ("startup: primary down", Cl::PrimaryDown, Cf::Default, STARTUP, IDLE, R(1)),
    ("startup: failover", Cl::Failover, Cf::Default, STARTUP, IDLE, R(1)),
    ("startup: paused", Cl::Paused, Cf::Default, STARTUP, IDLE, R(1)),
    ("startup: read-only", Cl::ReadOnly, Cf::Default, STARTUP, IDLE, R(1)),
    ("startup: fenced primary", Cl::Fenced, Cf::Default, STARTUP, IDLE, R(1)),
    ("startup: no leader", Cl::NoLeader, Cf::Default, STARTUP, IDLE, R(1)),
    ("startup: nothing healthy", Cl::Nothing, Cf::Default, STARTUP, IDLE, No(Why::Refused)),
    ("startup: dark, writes open", Cl::Dark, Cf::Default, STARTUP, IDLE, No(Why::NoPrimary)),
    ("startup: primary reads, failover", Cl::Failover, PrimaryReads, STARTUP, IDLE, R(1)),
    ("startup: lagging replicas are fine", Cl::BothBehind, Cf::Default, STARTUP, IDLE, P(0)),
    ("startup: least outstanding ignores loads", Cl::Failover, LeastOut, STARTUP, IDLE, R(1)),
    ("startup: the session's facts are not asked", Cl::Fresh, Cf::Default, STARTUP, EVENTUAL.busy().on(1), P(0)),
];

#[test]
fn every_rule_decides_as_the_table_says() {
    assert!(ROWS.len() >= 150, "{} rows", ROWS.len());
    let now = Instant::now();
    let mut wrong = Vec::new();
    for &(name, cl, cf, b, s, expected) in ROWS {
        let got = run(cl, cf, b, s, &counters(cf), now);
        if expected_of(&got) != expected {
            wrong.push(format!("{name}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn startup_refusals_give_the_writes_reason() {
    let (consistency, reads) = config(Cf::Default);
    let policy = Policy {
        consistency: &consistency,
        reads,
        pause_limit: PAUSE_LIMIT,
        failover_wait: FAILOVER_WAIT,
    };
    let mut dark = topology(Cl::Dark);
    dark.writes = WriteState::Paused;
    let got = decide(
        &STARTUP.0,
        &IDLE.0,
        &policy,
        &dark,
        &counters(Cf::Default),
        Instant::now(),
    );
    assert_eq!(got, Decision::Refuse(NoRoute::Paused));
    let got = run(
        Cl::Nothing,
        Cf::Default,
        STARTUP,
        IDLE,
        &counters(Cf::Default),
        Instant::now(),
    );
    assert_eq!(got, Decision::Refuse(NoRoute::Refused(Refusal::NoPrimary)));
}

#[test]
fn a_read_that_executes_takes_a_ticket_and_a_retry_does_not() {
    let now = Instant::now();
    let loads = counters(Cf::Default);
    run(Cl::Fresh, Cf::Default, READ, EVENTUAL, &loads, now);
    assert_eq!(loads.tickets.get(), 1, "an execution takes one");
    run(Cl::Fresh, Cf::Default, PREPARE, EVENTUAL, &loads, now);
    assert_eq!(loads.tickets.get(), 1, "a prepare peeks at the execution's");
    run(
        Cl::Catching,
        Cf::Default,
        READ.waited(),
        IDLE.wrote(100),
        &loads,
        now,
    );
    assert_eq!(loads.tickets.get(), 1, "a retry after a wait peeks");
    for (b, s) in [(WRITE, IDLE), (READ, STRONG), (READ, IDLE.unlocated())] {
        run(Cl::Fresh, Cf::Default, b, s, &loads, now);
    }
    assert_eq!(
        loads.tickets.get(),
        1,
        "writes, strong reads and locating take none"
    );
    // Consecutive executions spread round-robin.
    assert_eq!(
        run(Cl::Fresh, Cf::Default, READ, EVENTUAL, &loads, now),
        Decision::Replica(2)
    );
}

#[test]
fn a_wait_carries_the_causal_wait_and_a_pause_its_start() {
    let now = Instant::now();
    let got = run(
        Cl::Catching,
        Cf::Default,
        READ,
        IDLE.wrote(100),
        &counters(Cf::Default),
        now,
    );
    assert_eq!(
        got,
        Decision::Wait(Wait::Replay {
            node: 1,
            lsn: Lsn(100),
            within: Duration::from_millis(50)
        })
    );
    let got = run(
        Cl::Paused,
        Cf::Default,
        WRITE,
        IDLE,
        &counters(Cf::Default),
        now,
    );
    assert_eq!(got, Decision::Wait(Wait::Pause { since: now }));
    let earlier = now - Duration::from_secs(1);
    let mut batch = WRITE;
    batch.0.tried.paused_since = Some(earlier);
    let (consistency, reads) = config(Cf::Default);
    let policy = Policy {
        consistency: &consistency,
        reads,
        pause_limit: PAUSE_LIMIT,
        failover_wait: FAILOVER_WAIT,
    };
    let got = decide(
        &batch.0,
        &IDLE.0,
        &policy,
        &topology(Cl::Paused),
        &counters(Cf::Default),
        now,
    );
    assert_eq!(
        got,
        Decision::Wait(Wait::Pause { since: earlier }),
        "the first meeting counts"
    );
    let got = run(
        Cl::Paused,
        Cf::Default,
        WRITE.paused(Pz::Long),
        IDLE,
        &counters(Cf::Default),
        now,
    );
    assert_eq!(got, Decision::Refuse(NoRoute::PausedTooLong(PAUSE_LIMIT)));
}

#[test]
fn read_levels_follow_hint_session_then_config() {
    let (consistency, reads) = config(Cf::LevelEventual);
    let policy = Policy {
        consistency: &consistency,
        reads,
        pause_limit: PAUSE_LIMIT,
        failover_wait: FAILOVER_WAIT,
    };
    assert_eq!(read_level(&READ.0, &IDLE.0, &policy), Some(Eventual));
    assert_eq!(read_level(&READ.0, &BOUNDED.0, &policy), Some(Bounded));
    assert_eq!(
        read_level(&READ.hint(Strong).0, &BOUNDED.0, &policy),
        Some(Strong)
    );
    assert_eq!(read_level(&WRITE.0, &IDLE.0, &policy), None);
    assert_eq!(read_level(&READ.0, &IDLE.pinned().0, &policy), None);
    assert_eq!(read_level(&BEGIN.0, &IDLE.0, &policy), None);
    assert_eq!(
        read_level(&BEGIN.0, &IDLE.ro_default().0, &policy),
        Some(Eventual)
    );
}

//! Routing: where a batch runs, decided in one pure function, [`decide`].
//!
//! Every routing rule lives here: writes go to the primary of the epoch
//! while writes are open; a transaction and a pipelined batch stay on the
//! connection they started on; reads go to a replica fresh enough for the
//! session's consistency level ([`Need`]), chosen by the balancer
//! ([`pick`]), or to the primary as `consistency.on_no_replica` says;
//! a causal read may wait for a replica to replay the session's last
//! write, a read-after-commit read for one to replay every write the proxy
//! has acknowledged; a switchover's pause holds writes for a while; a new session
//! opens on the primary, or anywhere while the primary takes no writes.
//!
//! No I/O, no clock, no locks: the caller hands in what it knows about the
//! batch ([`BatchFacts`]) and the session ([`SessionFacts`]), the config's
//! rules ([`Policy`]), the published [`Topology`], the balancer's counters
//! ([`Loads`]) and the time. A refusal carries a [`NoRoute`] reason; the
//! frontend turns it into a SQLSTATE and a message at the edge.

mod balance;
mod freshness;

use std::time::{Duration, Instant};

use crate::config::{Consistency, ConsistencyConfig, OnNoReplica};
use crate::protocol::TxnStatus;
use crate::topology::{Lsn, Refusal, Topology, WriteState};

pub use balance::{pick, ReadPolicy};
pub use freshness::{CommitPosition, Need, ReadChoice, Written};

/// The balancer's view of the data plane: requests in flight per node and
/// the shared read counter. Plain counters, read without waiting; taking a
/// ticket is the one thing [`decide`] changes outside its answer.
pub trait Loads {
    /// Requests in flight on `node` (least-outstanding balancing).
    fn outstanding(&self, node: usize) -> u32;
    /// Takes the next read ticket (it drives round-robin across sessions).
    fn next_ticket(&self) -> u64;
    /// The ticket the next read will take, without taking it.
    fn peek_ticket(&self) -> u64;
}

/// The config's routing rules.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub consistency: &'a ConsistencyConfig,
    pub reads: ReadPolicy,
    /// How long a write waits out a switchover's pause before it is refused.
    pub pause_limit: Duration,
    /// How long a batch that needs the primary waits while there is none
    /// (it is down, unreachable, or a failover is promoting another)
    /// before it is refused with the reason.
    pub failover_wait: Duration,
}

/// What the decision is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Purpose {
    /// A batch of client requests.
    #[default]
    Batch,
    /// The first server connection of a new session: the primary, or while
    /// it takes no writes any node (reads work, writes get the reason when
    /// they come).
    Startup,
}

/// What the caller knows about the batch at hand.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchFacts {
    pub purpose: Purpose,
    /// Some part writes (or might): only the primary may run it.
    pub write: bool,
    /// It begins a transaction; `Some(true)` when READ ONLY was asked for.
    pub begin: Option<bool>,
    /// It makes its transaction SERIALIZABLE or READ WRITE, which no hot
    /// standby runs (`SET TRANSACTION ISOLATION LEVEL SERIALIZABLE`).
    pub txn_needs_primary: bool,
    /// A hint in what it executes named the consistency of its reads.
    pub hint: Option<Consistency>,
    /// It runs something rather than only preparing: it takes a ticket,
    /// so that the prepare before it and it land on the same node.
    pub executes: bool,
    /// Part of it went out already (Flush): the rest follows.
    pub continues: bool,
    /// The held connection lacks settings or statements it needs (only
    /// looked at while replies are due: catching up needs the connection
    /// to itself).
    pub lacks_state: bool,
    /// What deciding for it has already met.
    pub tried: Tried,
}

/// What earlier decisions for the same batch led to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tried {
    /// When it first found the primary's writes held: a switchover's
    /// pause, or no primary while a failover may bring one.
    pub paused_since: Option<Instant>,
    /// A replica was waited for and did not replay in time: only replicas
    /// the topology shows fresh now are taken, with no waiting.
    pub replay_waited: bool,
    /// The position of the proxy's commits was waited for and not sampled
    /// in time: no replica is known to be fresh enough.
    pub commits_waited: bool,
    /// Replicas that failed it already (no connection in time, or the
    /// connection broke before any of its reply was relayed): they are
    /// not read candidates for it. The primary is never avoided; a read
    /// that must run there gets a fresh connection.
    pub avoid: NodeSet,
}

/// A few nodes by index: the first 64 (a node past them is never in it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeSet(u64);

impl NodeSet {
    /// Adds `node`; `false` when it is past the nodes a set can hold.
    pub fn insert(&mut self, node: usize) -> bool {
        match 1u64.checked_shl(u32::try_from(node).unwrap_or(u32::MAX)) {
            Some(bit) => {
                self.0 |= bit;
                true
            }
            None => false,
        }
    }

    pub fn contains(self, node: usize) -> bool {
        1u64.checked_shl(u32::try_from(node).unwrap_or(u32::MAX))
            .is_some_and(|bit| self.0 & bit != 0)
    }
}

/// What the caller knows about the session.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionFacts {
    /// The status of the last ReadyForQuery when no replies are due;
    /// `None` while some are.
    pub ready: Option<TxnStatus>,
    /// The node of the server connection the session holds.
    pub held: Option<usize>,
    /// Something ties the session to the primary (LISTEN, temp tables, …).
    pub pinned: bool,
    /// `default_transaction_read_only` is on.
    pub read_only_default: bool,
    /// `default_transaction_isolation` is serializable: hot standbys refuse
    /// every transaction it starts, implicit ones included.
    pub serializable_default: bool,
    /// The open transaction has run nothing but its BEGIN: it can begin
    /// again on another node.
    pub begun_only: bool,
    /// What it chose with `SET palisade.*`.
    pub choice: ReadChoice,
    /// At or past its last write that has been located.
    pub write_lsn: Option<Lsn>,
    /// Something it wrote may have committed since `write_lsn` was learned.
    pub unlocated_writes: bool,
    /// Where the commits acknowledged through the proxy stand.
    pub commits: CommitPosition,
}

/// Where the batch goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The connection the session holds.
    Stay,
    /// A connection to the primary, node `n`.
    Primary(usize),
    /// A connection to replica `n`.
    Replica(usize),
    /// The open transaction, which has run nothing but its BEGIN on a
    /// replica, needs the primary `n` for what comes next: it is rolled
    /// back there and begun again on the primary.
    Move(usize),
    /// Not yet: what to wait for, then decide again.
    Wait(Wait),
    /// Nowhere: the client gets an error for the batch.
    Refuse(NoRoute),
}

/// What a batch waits for before it can go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Replies to earlier requests must come back first.
    Replies,
    /// Learn on the primary where the session's writes are in the WAL (a
    /// causal read needs it).
    WritePosition { primary: usize },
    /// Wait, for at most `within`, for a sample of the primary's position
    /// taken once the proxy's commit count reached `count` (a
    /// read-after-commit read needs it); if none comes, decide again with
    /// `commits_waited`.
    CommitPosition { count: u64, within: Duration },
    /// Ask replica `node` until it has replayed `lsn`, for at most
    /// `within`; it then serves the read (its published position may be
    /// a probe old). If it does not, decide again with `replay_waited`.
    Replay {
        node: usize,
        lsn: Lsn,
        within: Duration,
    },
    /// A switchover's pause or a failover holds writes: ask again
    /// shortly, with `paused_since`.
    Pause { since: Instant },
}

/// Why no node can serve a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoRoute {
    #[error("no primary is available")]
    NoPrimary,
    /// A planned switchover holds writes for a moment.
    #[error("writes are paused for a switchover")]
    Paused,
    #[error("writes stayed paused for a switchover longer than {0:?}")]
    PausedTooLong(Duration),
    #[error("writes are refused: {0}")]
    Refused(Refusal),
    #[error("no node is available to serve the read")]
    NoNode,
    /// No replica is fresh enough and `on_no_replica = error`.
    #[error("no replica is fresh enough for a {} read, and consistency.on_no_replica = error", .0.name())]
    NoFreshReplica(Consistency),
}

/// Where the batch runs: every routing rule, in order.
pub fn decide(
    batch: &BatchFacts,
    session: &SessionFacts,
    policy: &Policy,
    topology: &Topology,
    loads: &impl Loads,
    now: Instant,
) -> Decision {
    if batch.purpose == Purpose::Startup {
        return open_session(policy, topology, loads);
    }
    if batch.continues {
        return Decision::Stay;
    }
    if let Some(decision) = follow_held(batch, session, topology) {
        return decision;
    }
    let decision = match read_level(batch, session, policy) {
        Some(Consistency::Causal)
            if session.unlocated_writes && session.ready == Some(TxnStatus::Idle) =>
        {
            match locate_writes(topology) {
                Ok(primary) => Decision::Wait(Wait::WritePosition { primary }),
                Err(e) => hold(batch, now, policy.failover_wait, e),
            }
        }
        Some(level @ Consistency::ReadAfterCommit)
            if matches!(session.commits, CommitPosition::Unsampled(_)) =>
        {
            match session.commits {
                CommitPosition::Unsampled(_) if topology.primary().is_none() => {
                    // Nobody to sample: the last position the primary
                    // reported is the best bound there is.
                    let commits = topology
                        .leader_lsn()
                        .map_or(CommitPosition::Nothing, CommitPosition::At);
                    let session = SessionFacts {
                        commits,
                        ..*session
                    };
                    read_target(level, batch, &session, policy, topology, loads, now)
                }
                CommitPosition::Unsampled(count) if !batch.tried.commits_waited => {
                    let within = policy.consistency.causal_wait();
                    Decision::Wait(Wait::CommitPosition { count, within })
                }
                _ => no_fresh_replica(level, batch, policy, topology, now),
            }
        }
        Some(level) => read_target(level, batch, session, policy, topology, loads, now),
        None => write_target(batch, policy, topology, now),
    };
    match decision {
        Decision::Primary(n) | Decision::Replica(n) if session.held == Some(n) => Decision::Stay,
        other => other,
    }
}

/// Where the session's last writes are located: on the primary, whose WAL
/// is at or past every commit it has acknowledged.
pub fn locate_writes(topology: &Topology) -> Result<usize, NoRoute> {
    topology.primary().ok_or(NoRoute::NoPrimary)
}

/// The consistency of the batch's reads; `None` when it is not a read (it
/// writes, the session is pinned to the primary, or its transactions are
/// serializable or explicitly READ WRITE, which no hot standby runs).
pub fn read_level(
    batch: &BatchFacts,
    session: &SessionFacts,
    policy: &Policy,
) -> Option<Consistency> {
    let read = if session.pinned || session.serializable_default || batch.txn_needs_primary {
        false
    } else if let Some(read_only) = batch.begin {
        read_only || session.read_only_default
    } else {
        !batch.write
    };
    read.then(|| {
        batch
            .hint
            .or(session.choice.level)
            .unwrap_or(policy.consistency.level)
    })
}

/// The rules of a held connection: a transaction stays on it, unless it
/// has run nothing but its BEGIN on a replica and now needs the primary;
/// while replies are due, a batch that fits there follows them (a batch
/// never overtakes an earlier one's replies), anything else waits.
fn follow_held(
    batch: &BatchFacts,
    session: &SessionFacts,
    topology: &Topology,
) -> Option<Decision> {
    match (session.ready, session.held) {
        (Some(TxnStatus::InTransaction), Some(node))
            if batch.txn_needs_primary && session.begun_only =>
        {
            Some(match topology.primary() {
                Some(primary) if primary != node => Decision::Move(primary),
                // On the primary already, or none to go to: the server says.
                _ => Decision::Stay,
            })
        }
        (Some(TxnStatus::InTransaction | TxnStatus::Failed), Some(_)) => Some(Decision::Stay),
        (None, Some(node)) => {
            let on_primary = topology.primary() == Some(node);
            let fits = on_primary || (!batch.write && batch.begin.is_none());
            Some(if fits && !batch.lacks_state {
                Decision::Stay
            } else {
                Decision::Wait(Wait::Replies)
            })
        }
        _ => None,
    }
}

/// A write goes to the epoch's primary while writes are open; a
/// switchover's pause is waited out for at most `pause_limit`, a missing
/// primary (down, unreachable, being failed over) for `failover_wait`.
fn write_target(
    batch: &BatchFacts,
    policy: &Policy,
    topology: &Topology,
    now: Instant,
) -> Decision {
    let missing = match &topology.writes {
        WriteState::Open => match topology.primary() {
            Some(node) => return Decision::Primary(node),
            None => NoRoute::NoPrimary,
        },
        WriteState::Paused => {
            let limit = policy.pause_limit;
            return hold(batch, now, limit, NoRoute::PausedTooLong(limit));
        }
        WriteState::Refused(reason @ Refusal::ReadOnly(_)) => {
            return Decision::Refuse(NoRoute::Refused(reason.clone()))
        }
        WriteState::Refused(reason) => NoRoute::Refused(reason.clone()),
    };
    hold(batch, now, policy.failover_wait, missing)
}

/// The batch waits (asking again shortly) until `limit` after it was
/// first held, then gets `reason`.
fn hold(batch: &BatchFacts, now: Instant, limit: Duration, reason: NoRoute) -> Decision {
    let since = batch.tried.paused_since.unwrap_or(now);
    if now < since + limit {
        Decision::Wait(Wait::Pause { since })
    } else {
        Decision::Refuse(reason)
    }
}

/// Where a read at `level` runs: a replica fresh enough for it, one to
/// wait for, or what `on_no_replica` says.
fn read_target(
    level: Consistency,
    batch: &BatchFacts,
    session: &SessionFacts,
    policy: &Policy,
    topology: &Topology,
    loads: &impl Loads,
    now: Instant,
) -> Decision {
    if level == Consistency::Strong {
        return primary_read(batch, policy, topology, now);
    }
    let config = policy.consistency;
    let written = Written {
        session: session.write_lsn,
        proxy: session.commits.lsn(),
    };
    let need = Need::of(level, &session.choice, written, config);
    let retry = batch.tried.replay_waited;
    let avoid = batch.tried.avoid;
    let ticket = if batch.executes && !retry {
        loads.next_ticket()
    } else {
        loads.peek_ticket()
    };
    if let (Some(lsn), false, false) = (need.min_lsn, config.causal_wait_ms == 0, retry) {
        // Published positions trail by up to a probe: the balancer spreads
        // over every replica close enough to have the position by now, not
        // only the ones already shown past it (that would send a session's
        // reads to whichever was probed last), and the one picked is asked
        // when it is not shown there yet.
        let within = config.causal_wait();
        let picked = pick_node(policy, topology, loads, ticket, |i| {
            !avoid.contains(i) && need.worth_waiting_for(&topology.nodes[i], within)
        });
        match picked {
            // Nobody to wait for: the replicas admitted now, if any.
            Err(_) | Ok(None) => {}
            Ok(Some(node)) if Some(node) == topology.primary() => return Decision::Primary(node),
            Ok(Some(node)) if need.admits(&topology.nodes[node]) => return Decision::Replica(node),
            Ok(Some(node)) => return Decision::Wait(Wait::Replay { node, lsn, within }),
        }
    }
    match pick_node(policy, topology, loads, ticket, |i| {
        !avoid.contains(i) && need.admits(&topology.nodes[i])
    }) {
        // No primary and no replica: a failover may bring one.
        Err(e) => hold(batch, now, policy.failover_wait, e),
        Ok(Some(node)) => node_decision(topology, node),
        Ok(None) => no_fresh_replica(level, batch, policy, topology, now),
    }
}

/// No replica is fresh enough for a read at `level`: `on_no_replica` says
/// what it gets.
fn no_fresh_replica(
    level: Consistency,
    batch: &BatchFacts,
    policy: &Policy,
    topology: &Topology,
    now: Instant,
) -> Decision {
    match policy.consistency.on_no_replica {
        OnNoReplica::Primary => primary_read(batch, policy, topology, now),
        OnNoReplica::Error => Decision::Refuse(NoRoute::NoFreshReplica(level)),
    }
}

/// The balancer's pick among the replicas `eligible` admits (and the
/// primary, when it takes reads); `None` when no replica may serve the
/// read but the primary could; an error when not even that.
fn pick_node(
    policy: &Policy,
    topology: &Topology,
    loads: &impl Loads,
    ticket: u64,
    eligible: impl Fn(usize) -> bool,
) -> Result<Option<usize>, NoRoute> {
    let outstanding = |n| loads.outstanding(n);
    match pick(topology, &policy.reads, ticket, outstanding, eligible) {
        Some(node) => Ok(Some(node)),
        None if topology.primary().is_some() => Ok(None),
        None => Err(NoRoute::NoNode),
    }
}

/// A read on the primary: the epoch's primary, whether or not writes are
/// open (a switchover's pause holds writes, not reads); with none, it
/// waits for a failover like a write.
fn primary_read(
    batch: &BatchFacts,
    policy: &Policy,
    topology: &Topology,
    now: Instant,
) -> Decision {
    match topology.primary() {
        Some(node) => Decision::Primary(node),
        None => hold(batch, now, policy.failover_wait, NoRoute::NoPrimary),
    }
}

/// A new session opens where writes go; while none do (unreachable,
/// failing over, paused) on any read candidate, so that its reads work;
/// with neither, it is refused with the writes' reason.
fn open_session(policy: &Policy, topology: &Topology, loads: &impl Loads) -> Decision {
    let write_error = match (&topology.writes, topology.primary()) {
        (WriteState::Open, Some(node)) => return Decision::Primary(node),
        (WriteState::Open, None) => NoRoute::NoPrimary,
        (WriteState::Paused, _) => NoRoute::Paused,
        (WriteState::Refused(reason), _) => NoRoute::Refused(reason.clone()),
    };
    let ticket = loads.next_ticket();
    match pick(topology, &policy.reads, ticket, |_| 0, |_| true).or(topology.primary()) {
        Some(node) => node_decision(topology, node),
        None => Decision::Refuse(write_error),
    }
}

fn node_decision(topology: &Topology, node: usize) -> Decision {
    if topology.primary() == Some(node) {
        Decision::Primary(node)
    } else {
        Decision::Replica(node)
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;

//! When a read is sent again because its server connection failed, and
//! what the client hears when a request cannot be (pure: the session does
//! the I/O in `session/retry.rs`).
//!
//! A request may be sent again when it is a read by classification, sent
//! outside a transaction (it begins none; the session is pinned to
//! nothing), and no byte of its reply has reached the client: until that
//! first byte the link keeps its bytes ([`super::link::Sent::copy`]; every
//! such batch is under the collector's 1 MiB cut, since a larger one is
//! sent to the primary as a write). When its connection breaks — closed,
//! reset, or ended with a FATAL error such as `pg_terminate_backend`'s
//! 57P01 — it is collected again and routed afresh with the broken replica
//! avoided ([`crate::route::Tried::avoid`]); the session's settings and
//! prepared statements are replayed on the new connection as for any
//! batch. A read that has had no reply for `routing.replica_stall_ms` on a
//! replica the monitor no longer vouches for ([`on_stall`]) is cancelled
//! there and sent again the same way. At most [`MAX_RETRIES`] times per
//! request; after that the client gets the error.
//!
//! A request outside a transaction that cannot be sent again (a write, or
//! part of its reply went out) gets an ERROR with the server's SQLSTATE (or
//! 08006) and the session goes on, as a client would after reconnecting;
//! a lost transaction is replayed or reported (`session/replay_txn.rs`);
//! only a pinned session (its temporary tables or LISTENs were on that
//! connection) or a frame cut in half end it.

use crate::route::NodeSet;
use crate::topology::{Role, Topology};

/// How many times a request is sent again before its error is the
/// client's.
pub const MAX_RETRIES: u8 = 2;

/// What the session knows when its server connection breaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LossFacts {
    /// Requests in flight on it.
    pub in_flight: usize,
    /// Every one keeps its bytes (a read none of whose reply went out).
    pub all_kept: bool,
    /// Every one was sent outside a transaction and begins none.
    pub all_autocommit: bool,
    /// One ends with the proxy's own Sync: the client expects its reply
    /// later, on a ReadyForQuery it has not asked for yet.
    pub own_sync: bool,
    /// Nothing in flight and no transaction open on it.
    pub idle: bool,
    /// Part of a server frame went to the client and the rest never will.
    pub mid_frame: bool,
    pub pinned: bool,
    /// The collector can take requests back: no batch has part of it out,
    /// no refused one is being skipped to its Sync.
    pub may_take_back: bool,
    /// Fewer than [`MAX_RETRIES`] retries so far.
    pub retries_left: bool,
}

/// What becomes of a broken connection's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Every request in flight is collected again and sent elsewhere.
    Retry,
    /// Each request in flight gets an error and ReadyForQuery (idle); the
    /// session goes on.
    Answer,
    /// A transaction was open on it: replayed, or the client is told it
    /// is lost (`session/replay_txn.rs`); the session goes on.
    Transaction,
    /// The session ends, as PostgreSQL would end it.
    End,
}

pub fn on_loss(f: &LossFacts) -> Loss {
    if f.mid_frame || f.pinned || f.own_sync || !f.may_take_back {
        return Loss::End;
    }
    if f.in_flight == 0 {
        return if f.idle {
            Loss::Answer
        } else {
            Loss::Transaction
        };
    }
    if f.all_kept && f.retries_left {
        Loss::Retry
    } else if f.all_autocommit {
        Loss::Answer
    } else {
        Loss::Transaction
    }
}

/// What to do about a read that has waited `replica_stall_ms` on `node`
/// without a byte of reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stalled {
    /// The monitor no longer vouches for the replica (suspect, down,
    /// fenced, or no longer a replica): cancel it and send it elsewhere.
    Move,
    /// The replica answers its probes: the read is merely slow. Look
    /// again later.
    Wait,
    /// It runs on the primary: nowhere is better.
    Stay,
}

pub fn on_stall(topology: &Topology, node: usize) -> Stalled {
    let Some(n) = topology.nodes.get(node) else {
        return Stalled::Move;
    };
    if topology.leader == Some(node) || n.role == Role::Primary && !n.fenced {
        Stalled::Stay
    } else if n.suspect || !n.healthy || n.fenced || n.role != Role::Replica {
        Stalled::Move
    } else {
        Stalled::Wait
    }
}

/// The session's retries of the requests at hand: how many, and which
/// replicas failed them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retries {
    avoid: NodeSet,
    done: u8,
}

impl Retries {
    /// Replicas the requests at hand must not be routed to.
    pub fn avoid(&self) -> NodeSet {
        self.avoid
    }

    pub fn left(&self) -> bool {
        self.done < MAX_RETRIES
    }

    /// The requests at hand are sent again; `node` failed them.
    pub fn retried(&mut self, node: Option<usize>) {
        self.done = self.done.saturating_add(1);
        if let Some(node) = node {
            // A node past the set's reach may be tried again: that costs
            // one more failure, never a wrong answer.
            let _ = self.avoid.insert(node);
        }
    }

    /// A request was answered (or refused): what follows starts afresh.
    pub fn settled(&mut self) {
        *self = Retries::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{NodeState, Replication};

    /// A read in flight on a broken connection, everything allowing a retry.
    const READ: LossFacts = LossFacts {
        in_flight: 1,
        all_kept: true,
        all_autocommit: true,
        own_sync: false,
        idle: false,
        mid_frame: false,
        pinned: false,
        may_take_back: true,
        retries_left: true,
    };

    #[rustfmt::skip]
    const LOSSES: &[(&str, LossFacts, Loss)] = &[
        ("a kept read is sent again", READ, Loss::Retry),
        ("two pipelined kept reads", LossFacts { in_flight: 2, ..READ }, Loss::Retry),
        ("no retries left: the error, session goes on", LossFacts { retries_left: false, ..READ }, Loss::Answer),
        ("part of its reply went out", LossFacts { all_kept: false, ..READ }, Loss::Answer),
        ("a write pipelined behind a read", LossFacts { in_flight: 2, all_kept: false, ..READ }, Loss::Answer),
        ("inside a transaction", LossFacts { all_kept: false, all_autocommit: false, ..READ }, Loss::Transaction),
        ("a frame cut in half", LossFacts { mid_frame: true, ..READ }, Loss::End),
        ("a pinned session", LossFacts { pinned: true, ..READ }, Loss::End),
        ("the proxy's own Sync in flight", LossFacts { own_sync: true, ..READ }, Loss::End),
        ("a flushed batch's rest to follow", LossFacts { may_take_back: false, ..READ }, Loss::End),
        ("idle, nothing in flight", LossFacts { in_flight: 0, idle: true, ..READ }, Loss::Answer),
        ("an idle transaction lost", LossFacts { in_flight: 0, all_kept: true, idle: false, ..READ }, Loss::Transaction),
    ];

    #[test]
    fn a_broken_connection_is_retried_answered_or_ends_the_session() {
        for (case, facts, expected) in LOSSES {
            assert_eq!(on_loss(facts), *expected, "{case}");
        }
    }

    fn node(role: Role, healthy: bool, suspect: bool, fenced: bool) -> NodeState {
        NodeState {
            name: "n".into(),
            host: "h".into(),
            port: 1,
            role,
            healthy,
            suspect,
            weight: 1,
            replication: Replication::default(),
            fenced,
            removed: false,
        }
    }

    #[test]
    fn a_stalled_read_moves_only_off_a_replica_the_monitor_doubts() {
        let t = |n: NodeState| Topology {
            epoch: 1,
            leader: Some(0),
            writes: Default::default(),
            nodes: vec![node(Role::Primary, true, false, false), n],
        };
        let r = Role::Replica;
        #[rustfmt::skip]
        let cases = [
            ("answers its probes", node(r, true, false, false), Stalled::Wait),
            ("suspect", node(r, true, true, false), Stalled::Move),
            ("down", node(r, false, false, false), Stalled::Move),
            ("fenced", node(Role::Primary, true, false, true), Stalled::Move),
            ("never heard from", node(Role::Unknown, false, false, false), Stalled::Move),
            ("promoted since", node(Role::Primary, true, false, false), Stalled::Stay),
        ];
        for (case, n, expected) in cases {
            assert_eq!(on_stall(&t(n), 1), expected, "{case}");
        }
        let suspect_primary = Topology {
            nodes: vec![node(Role::Primary, true, true, false)],
            ..t(node(r, true, false, false))
        };
        assert_eq!(on_stall(&suspect_primary, 0), Stalled::Stay);
        assert_eq!(on_stall(&suspect_primary, 7), Stalled::Move, "gone");
    }

    #[test]
    fn retries_are_counted_and_forgotten_once_settled() {
        let mut r = Retries::default();
        assert!(r.left());
        r.retried(Some(1));
        r.retried(Some(2));
        assert!(!r.left(), "at most {MAX_RETRIES}");
        assert!(r.avoid().contains(1) && r.avoid().contains(2));
        assert!(!r.avoid().contains(0));
        r.settled();
        assert_eq!(r, Retries::default());
        r.retried(None);
        assert_eq!(r.avoid(), NodeSet::default());
    }
}

//! The data plane's counters for `/metrics`: requests routed per node and
//! per reason, causal waits and how they ended, failed logins, bytes
//! relayed, and a latency histogram (the classify cache counts its own
//! hits and misses). Each is
//! a relaxed atomic bumped where the session already is (one add per
//! request sent, a few per answer); nothing is locked and nothing is
//! summed until a scrape reads them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::batch::Plan;
use crate::topology::MAX_NODES;

/// Why a request went where it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A read, to a replica (or the primary as a read candidate).
    Read,
    /// It writes (or might), so the primary.
    Write,
    /// Inside a transaction, or beginning one: where the transaction is.
    Txn,
    /// The session is tied to the primary (temp tables, LISTEN, …).
    Pin,
    /// A hint named the consistency of its reads.
    Hint,
    /// A read no replica could take, sent to the primary.
    Fallback,
    /// A statement the classifier could not parse, sent to the primary.
    Unparsable,
}

impl Why {
    pub const ALL: [Why; 7] = [
        Why::Read,
        Why::Write,
        Why::Txn,
        Why::Pin,
        Why::Hint,
        Why::Fallback,
        Why::Unparsable,
    ];

    /// The `reason` label.
    pub fn name(self) -> &'static str {
        match self {
            Why::Read => "read",
            Why::Write => "write",
            Why::Txn => "txn",
            Why::Pin => "pin",
            Why::Hint => "hint",
            Why::Fallback => "fallback",
            Why::Unparsable => "unparsable",
        }
    }
}

/// How a causal (read-your-writes or read-after-commit) wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// A replica caught up and served the read.
    Replica,
    /// No replica did in time; the read went to the primary.
    Primary,
    /// No replica did in time and `on_no_replica = error`.
    TimedOut,
}

impl Waited {
    pub const ALL: [Waited; 3] = [Waited::Replica, Waited::Primary, Waited::TimedOut];

    /// The `outcome` label.
    pub fn name(self) -> &'static str {
        match self {
            Waited::Replica => "replica",
            Waited::Primary => "primary",
            Waited::TimedOut => "timed_out",
        }
    }
}

/// The upper bounds of the latency histogram's buckets, in seconds
/// (the last, +Inf, is implied).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug)]
pub struct Counters {
    /// Per node slot, per [`Why`].
    routed: Vec<[AtomicU64; 7]>,
    waits: [AtomicU64; 3],
    auth_failures: AtomicU64,
    /// Client to proxy, proxy to client.
    bytes: [AtomicU64; 2],
    /// One per bucket, then +Inf; not cumulative.
    latency: [AtomicU64; 15],
    latency_sum_ns: AtomicU64,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            routed: (0..MAX_NODES).map(|_| Default::default()).collect(),
            waits: Default::default(),
            auth_failures: AtomicU64::new(0),
            bytes: Default::default(),
            latency: Default::default(),
            latency_sum_ns: AtomicU64::new(0),
        }
    }
}

fn add(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Counters {
    pub fn routed(&self, node: usize, why: Why, requests: u32) {
        if let Some(slot) = self.routed.get(node) {
            add(&slot[why as usize], u64::from(requests));
        }
    }

    pub fn routed_count(&self, node: usize, why: Why) -> u64 {
        self.routed
            .get(node)
            .map_or(0, |slot| get(&slot[why as usize]))
    }

    pub fn waited(&self, outcome: Waited) {
        add(&self.waits[outcome as usize], 1);
    }

    pub fn waits(&self, outcome: Waited) -> u64 {
        get(&self.waits[outcome as usize])
    }

    pub fn auth_failed(&self) {
        add(&self.auth_failures, 1);
    }

    pub fn auth_failures(&self) -> u64 {
        get(&self.auth_failures)
    }

    /// Bytes read from and written to clients since the session last said.
    pub fn relayed(&self, from_client: u64, to_client: u64) {
        add(&self.bytes[0], from_client);
        add(&self.bytes[1], to_client);
    }

    /// (from clients, to clients).
    pub fn bytes(&self) -> (u64, u64) {
        (get(&self.bytes[0]), get(&self.bytes[1]))
    }

    /// One request answered, `took` after it was due.
    pub fn answered(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|le| seconds <= *le)
            .unwrap_or(LATENCY_BUCKETS.len());
        add(&self.latency[bucket], 1);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.latency_sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Per bucket (not cumulative, +Inf last), and the sum in seconds.
    pub fn latency(&self) -> ([u64; 15], f64) {
        let counts = std::array::from_fn(|i| get(&self.latency[i]));
        (counts, get(&self.latency_sum_ns) as f64 / 1e9)
    }
}

/// Why the batch `plan` went where it went, the first rule that sent it
/// there: `in_txn` when it runs inside (or begins) a transaction, `pinned`
/// when the session is tied to the primary, `to_primary` when it went to
/// the primary.
pub fn why(plan: &Plan, in_txn: bool, pinned: bool, to_primary: bool) -> Why {
    if plan.unparsable {
        Why::Unparsable
    } else if plan.write {
        Why::Write
    } else if in_txn {
        Why::Txn
    } else if pinned && to_primary {
        Why::Pin
    } else if plan.level.is_some() {
        Why::Hint
    } else if to_primary {
        Why::Fallback
    } else {
        Why::Read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_the_first_bucket_that_holds_it() {
        let c = Counters::default();
        c.answered(Duration::from_micros(50));
        c.answered(Duration::from_micros(100));
        c.answered(Duration::from_millis(3));
        c.answered(Duration::from_secs(60));
        let (counts, sum) = c.latency();
        assert_eq!(counts[0], 2, "≤ 100 µs");
        assert_eq!(counts[5], 1, "≤ 5 ms");
        assert_eq!(counts[14], 1, "+Inf");
        assert_eq!(counts.iter().sum::<u64>(), 4);
        assert!((sum - 60.00315).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn the_reason_is_the_first_rule_that_sent_it() {
        let plan = |unparsable, write, hinted: bool| Plan {
            unparsable,
            write,
            level: hinted.then_some(crate::config::Consistency::Eventual),
            ..Plan::default()
        };
        let all = plan(true, true, true);
        assert_eq!(why(&all, true, true, true), Why::Unparsable);
        assert_eq!(why(&plan(false, true, true), true, true, true), Why::Write);
        let read = plan(false, false, false);
        assert_eq!(why(&read, true, false, false), Why::Txn);
        assert_eq!(why(&read, false, true, true), Why::Pin);
        assert_eq!(
            why(&plan(false, false, true), false, true, false),
            Why::Hint
        );
        assert_eq!(why(&read, false, false, true), Why::Fallback);
        assert_eq!(why(&read, false, false, false), Why::Read);
        let c = Counters::default();
        c.routed(3, Why::Hint, 2);
        c.routed(MAX_NODES, Why::Hint, 2);
        assert_eq!(c.routed_count(3, Why::Hint), 2);
        assert_eq!(c.routed_count(MAX_NODES, Why::Hint), 0);
    }
}

//! The load balancer: which of the candidates that may serve a read takes
//! it. Candidates are the healthy replicas with a weight above 0 that the
//! caller's `eligible` admits, and the primary when `primary_read_weight`
//! makes it one; a suspect node (it missed its last probe) is none; [`pick`] spreads reads over them by the [`ReadPolicy`].
//! What happens when there is no candidate is [`super::decide`]'s business.

use crate::config::{LoadBalance, RoutingConfig};
use crate::topology::{Role, Topology};

/// How reads are spread (built from [`RoutingConfig`] by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPolicy {
    pub balance: LoadBalance,
    /// When greater than 0 the primary is a read candidate with this weight.
    pub primary_read_weight: u32,
}

impl ReadPolicy {
    pub fn from_config(routing: &RoutingConfig) -> ReadPolicy {
        ReadPolicy {
            balance: routing.load_balance,
            primary_read_weight: routing.primary_read_weight,
        }
    }
}

/// Picks the candidate for a read; `None` when there is none. `ticket` is
/// a counter bumped per read (it drives round-robin and tie-breaks);
/// `outstanding(i)` is node i's number of in-flight requests
/// (least-outstanding); `eligible(i)` excludes replicas that are not fresh
/// enough, it is never asked about the primary.
///
/// Each closure is called at most once per node, so a caller reading shared
/// counters gets one consistent answer per node for the whole decision.
pub fn pick(
    topology: &Topology,
    policy: &ReadPolicy,
    ticket: u64,
    outstanding: impl Fn(usize) -> u32,
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    // This runs per query: candidates live on the stack unless the cluster is
    // larger than most deployments, when one allocation is acceptable.
    let count = topology.nodes.len();
    if count <= INLINE_CANDIDATES {
        let mut buf = [Candidate::EMPTY; INLINE_CANDIDATES];
        pick_read(topology, policy, ticket, &outstanding, &eligible, &mut buf)
    } else {
        let mut buf = vec![Candidate::EMPTY; count];
        pick_read(topology, policy, ticket, &outstanding, &eligible, &mut buf)
    }
}

/// Nodes handled without allocating in [`pick`]. Small: the buffer is
/// written on every read's decision.
const INLINE_CANDIDATES: usize = 8;

/// A node that may serve the read.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    node: usize,
    weight: u64,
    /// Only filled in for least-outstanding.
    outstanding: u32,
}

impl Candidate {
    const EMPTY: Candidate = Candidate {
        node: 0,
        weight: 0,
        outstanding: 0,
    };
}

/// Fills `buf` (at least as long as the topology) with the candidates and
/// picks one; `None` when there are none.
fn pick_read(
    topology: &Topology,
    policy: &ReadPolicy,
    ticket: u64,
    outstanding: &impl Fn(usize) -> u32,
    eligible: &impl Fn(usize) -> bool,
    buf: &mut [Candidate],
) -> Option<usize> {
    let primary = topology.primary();
    let mut n = 0;
    for (i, node) in topology.nodes.iter().enumerate() {
        let weight = if node.suspect {
            0
        } else if Some(i) == primary {
            policy.primary_read_weight
        } else if node.healthy && node.role == Role::Replica && node.weight > 0 && eligible(i) {
            node.weight
        } else {
            0
        };
        if weight == 0 {
            continue;
        }
        buf[n] = Candidate {
            node: i,
            weight: weight.into(),
            outstanding: match policy.balance {
                LoadBalance::LeastOutstanding => outstanding(i),
                _ => 0,
            },
        };
        n += 1;
    }
    let candidates = &buf[..n];
    if candidates.is_empty() {
        return None;
    }
    let pick = match policy.balance {
        LoadBalance::RoundRobin => candidates[nth(ticket, n)],
        LoadBalance::Weighted => weighted(candidates, ticket),
        LoadBalance::LeastOutstanding => least_outstanding(candidates, ticket),
    };
    Some(pick.node)
}

/// `ticket` modulo a non-zero count, as an index.
fn nth(ticket: u64, count: usize) -> usize {
    // A count always fits in u64 and the remainder is below it, so both casts
    // are lossless.
    (ticket % count as u64) as usize
}

/// Walks cumulative weights: over any `total` consecutive tickets each
/// candidate gets exactly its weight.
fn weighted(candidates: &[Candidate], ticket: u64) -> Candidate {
    let total = candidates
        .iter()
        .fold(0u64, |sum, c| sum.saturating_add(c.weight));
    let mut rest = ticket % total;
    for c in candidates {
        if rest < c.weight {
            return *c;
        }
        rest -= c.weight;
    }
    // Reached only if the total saturated, which bounded weights rule out.
    candidates[candidates.len() - 1]
}

/// The fewest in flight; equal loads rotate with the ticket so an idle
/// cluster (all zero) still spreads reads.
fn least_outstanding(candidates: &[Candidate], ticket: u64) -> Candidate {
    let least = candidates.iter().map(|c| c.outstanding).min().unwrap_or(0);
    let mut tied = candidates.iter().filter(|c| c.outstanding == least);
    let ties = tied.clone().count();
    tied.nth(nth(ticket, ties))
        .copied()
        .unwrap_or(candidates[0])
}

#[cfg(test)]
#[path = "balance_tests.rs"]
mod tests;

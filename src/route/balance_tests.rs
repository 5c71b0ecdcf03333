use super::*;
use crate::topology::NodeState;

use LoadBalance::{LeastOutstanding, RoundRobin, Weighted};

const P: Role = Role::Primary;
const R: Role = Role::Replica;
const U: Role = Role::Unknown;

/// A node: role, healthy, weight.
type Spec = (Role, bool, u32);

fn topo(epoch: u64, specs: &[Spec]) -> Topology {
    Topology {
        epoch,
        leader: specs.iter().position(|s| s.0 == P),
        writes: Default::default(),
        nodes: specs
            .iter()
            .enumerate()
            .map(|(i, &(role, healthy, weight))| NodeState {
                name: format!("n{i}"),
                host: "127.0.0.1".into(),
                port: 1,
                role,
                healthy,
                suspect: false,
                weight,
                replication: Default::default(),
                fenced: false,
                removed: false,
            })
            .collect(),
    }
}

fn policy(balance: LoadBalance, primary_read_weight: u32) -> ReadPolicy {
    ReadPolicy {
        balance,
        primary_read_weight,
    }
}

/// Routes a read with no load anywhere and every replica eligible.
fn read(t: &Topology, p: ReadPolicy, ticket: u64) -> Option<usize> {
    pick(t, &p, ticket, |_| 0, |_| true)
}

/// How many of tickets `0..reads` each node serves.
fn spread(t: &Topology, p: ReadPolicy, reads: u64) -> Vec<u64> {
    let mut counts = vec![0; t.nodes.len()];
    for ticket in 0..reads {
        counts[read(t, p, ticket).unwrap()] += 1;
    }
    counts
}

/// (case, nodes, balance, primary_read_weight, ticket, outstanding per node,
/// eligible per node, expected pick)
type ReadRow = (
    &'static str,
    &'static [Spec],
    LoadBalance,
    u32,
    u64,
    &'static [u32],
    &'static [bool],
    Option<usize>,
);

const IDLE: &[u32] = &[0; 4];
const ALL: &[bool] = &[true; 4];
const PRS: &[Spec] = &[(P, true, 1), (R, true, 1), (R, true, 1)];

#[rustfmt::skip]
const READS: &[ReadRow] = &[
    // Round-robin walks the candidates in node order.
    ("rr first", PRS, RoundRobin, 0, 0, IDLE, ALL, Some(1)),
    ("rr second", PRS, RoundRobin, 0, 1, IDLE, ALL, Some(2)),
    ("rr wraps", PRS, RoundRobin, 0, 2, IDLE, ALL, Some(1)),
    ("rr ignores weights above 0", &[(R, true, 9), (R, true, 1)], RoundRobin, 0, 1, IDLE, ALL, Some(1)),
    ("rr skips weight 0", &[(R, true, 0), (R, true, 1), (P, true, 1)], RoundRobin, 0, 0, IDLE, ALL, Some(1)),
    ("rr skips unhealthy", &[(R, false, 1), (R, true, 1), (P, true, 1)], RoundRobin, 0, 0, IDLE, ALL, Some(1)),
    ("rr skips unknown", &[(U, true, 1), (R, true, 1), (P, true, 1)], RoundRobin, 0, 0, IDLE, ALL, Some(1)),
    ("rr skips ineligible", &[(R, true, 1), (R, true, 1), (P, true, 1)], RoundRobin, 0, 0, IDLE, &[false, true, true], Some(1)),
    ("rr primary joins", PRS, RoundRobin, 5, 0, IDLE, ALL, Some(0)),
    ("rr primary joins, next", PRS, RoundRobin, 5, 1, IDLE, ALL, Some(1)),
    ("rr primary joins, last", PRS, RoundRobin, 5, 2, IDLE, ALL, Some(2)),
    ("primary is not asked eligible", PRS, RoundRobin, 1, 0, IDLE, &[false, false, false], Some(0)),
    // Weighted: 3:1 sends tickets 0..3 to the first, 3 to the second.
    ("weighted low ticket", &[(R, true, 3), (R, true, 1), (P, true, 1)], Weighted, 0, 2, IDLE, ALL, Some(0)),
    ("weighted high ticket", &[(R, true, 3), (R, true, 1), (P, true, 1)], Weighted, 0, 3, IDLE, ALL, Some(1)),
    ("weighted wraps", &[(R, true, 3), (R, true, 1), (P, true, 1)], Weighted, 0, 4, IDLE, ALL, Some(0)),
    ("weighted primary weight", &[(P, true, 1), (R, true, 1)], Weighted, 2, 1, IDLE, ALL, Some(0)),
    ("weighted primary weight, rest", &[(P, true, 1), (R, true, 1)], Weighted, 2, 2, IDLE, ALL, Some(1)),
    ("weighted skips weight 0", &[(R, true, 0), (R, true, 2), (P, true, 1)], Weighted, 0, 0, IDLE, ALL, Some(1)),
    ("weighted skips ineligible", &[(R, true, 5), (R, true, 1), (P, true, 1)], Weighted, 0, 0, IDLE, &[false, true, true], Some(1)),
    // Least-outstanding takes the least loaded candidate.
    ("lo least loaded", PRS, LeastOutstanding, 0, 0, &[0, 5, 2], ALL, Some(2)),
    ("lo counts a reading primary", PRS, LeastOutstanding, 1, 0, &[1, 5, 2], ALL, Some(0)),
    ("lo skips ineligible idle", &[(R, true, 1), (R, true, 1)], LeastOutstanding, 0, 0, &[0, 7], &[false, true], Some(1)),
    ("lo skips weight 0 idle", &[(R, true, 0), (R, true, 1)], LeastOutstanding, 0, 0, &[0, 7], ALL, Some(1)),
    ("lo skips unhealthy idle", &[(R, false, 1), (R, true, 1)], LeastOutstanding, 0, 0, &[0, 7], ALL, Some(1)),
    ("lo tie, ticket 0", &[(R, true, 1), (R, true, 1), (R, true, 1)], LeastOutstanding, 0, 0, &[2, 1, 1], ALL, Some(1)),
    ("lo tie, ticket 1", &[(R, true, 1), (R, true, 1), (R, true, 1)], LeastOutstanding, 0, 1, &[2, 1, 1], ALL, Some(2)),
    ("lo tie, ticket 2", &[(R, true, 1), (R, true, 1), (R, true, 1)], LeastOutstanding, 0, 2, &[2, 1, 1], ALL, Some(1)),
    // No candidate: what then is the caller's rule, not the balancer's.
    ("no candidate: no replicas", &[(P, true, 1)], RoundRobin, 0, 7, IDLE, ALL, None),
    ("no candidate: replicas down", &[(R, false, 1), (P, true, 1)], Weighted, 0, 7, IDLE, ALL, None),
    ("no candidate: replicas ineligible", &[(R, true, 1), (P, true, 1)], LeastOutstanding, 0, 7, IDLE, &[false, true], None),
    ("no candidate: replica weights 0", &[(R, true, 0), (P, true, 1)], RoundRobin, 0, 7, IDLE, ALL, None),
    ("no node: primary down", &[(R, false, 1), (P, false, 1)], RoundRobin, 0, 0, IDLE, ALL, None),
    ("no node: unknown only", &[(U, true, 1)], Weighted, 1, 0, IDLE, ALL, None),
    ("no node: empty", &[], LeastOutstanding, 1, 0, IDLE, ALL, None),
    ("no node: reading primary down", &[(P, false, 1)], RoundRobin, 3, 0, IDLE, ALL, None),
];

#[test]
fn reads_pick_the_expected_node() {
    for &(name, specs, balance, primary_weight, ticket, load, ok, ref expected) in READS {
        let t = topo(4, specs);
        let p = policy(balance, primary_weight);
        let got = pick(&t, &p, ticket, |i| load[i], |i| ok[i]);
        assert_eq!(got, *expected, "{name}");
    }
}

#[test]
fn eligible_is_never_asked_about_the_primary() {
    let t = topo(0, &[(P, true, 1), (R, true, 1), (R, true, 1)]);
    for balance in [RoundRobin, Weighted, LeastOutstanding] {
        for ticket in 0..6 {
            let got = pick(
                &t,
                &policy(balance, 1),
                ticket,
                |_| 0,
                |i| {
                    assert_ne!(i, 0, "asked about the primary");
                    true
                },
            );
            assert!(got.is_some());
        }
    }
}

/// (case, nodes, balance, primary_read_weight, reads, expected count per node)
type SpreadRow = (
    &'static str,
    &'static [Spec],
    LoadBalance,
    u32,
    u64,
    &'static [u64],
);

#[rustfmt::skip]
const SPREADS: &[SpreadRow] = &[
    ("rr even", PRS, RoundRobin, 0, 1000, &[0, 500, 500]),
    ("rr weights ignored", &[(R, true, 5), (R, true, 1)], RoundRobin, 0, 1000, &[500, 500]),
    ("rr with primary", PRS, RoundRobin, 9, 999, &[333, 333, 333]),
    ("weighted 3:1", &[(R, true, 3), (R, true, 1)], Weighted, 0, 1000, &[750, 250]),
    ("weighted with primary", &[(P, true, 1), (R, true, 2), (R, true, 1)], Weighted, 1, 1000, &[250, 500, 250]),
    ("weighted skips 0", &[(R, true, 0), (R, true, 4), (R, true, 1)], Weighted, 0, 1000, &[0, 800, 200]),
    ("lo idle spreads", &[(R, true, 1), (R, true, 1), (P, true, 1)], LeastOutstanding, 0, 1000, &[500, 500, 0]),
    ("lo idle with primary", PRS, LeastOutstanding, 1, 999, &[333, 333, 333]),
];

#[test]
fn reads_spread_over_many_tickets() {
    for &(name, specs, balance, primary_weight, reads, expected) in SPREADS {
        let got = spread(&topo(0, specs), policy(balance, primary_weight), reads);
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn weighted_is_exact_over_every_window_of_total_weight() {
    let t = topo(0, &[(R, true, 3), (R, true, 1)]);
    for start in 0..20u64 {
        let first = (start..start + 4)
            .filter(|&ticket| read(&t, policy(Weighted, 0), ticket) == Some(0))
            .count();
        assert_eq!(first, 3, "window starting at {start}");
    }
}

#[test]
fn extreme_tickets_and_weights_do_not_panic() {
    let t = topo(0, &[(P, true, 1), (R, true, u32::MAX), (R, true, u32::MAX)]);
    for balance in [RoundRobin, Weighted, LeastOutstanding] {
        for ticket in [0, 1, u64::MAX - 1, u64::MAX] {
            let got = pick(
                &t,
                &policy(balance, u32::MAX),
                ticket,
                |_| u32::MAX,
                |_| true,
            );
            assert!(got.is_some(), "{balance:?} ticket {ticket}");
        }
    }
}

#[test]
fn large_topologies_route_past_the_inline_buffer() {
    let mut specs = vec![(R, true, 1); INLINE_CANDIDATES * 2];
    specs.push((P, true, 1));
    let t = topo(0, &specs);
    let counts = spread(&t, policy(RoundRobin, 0), (INLINE_CANDIDATES * 2) as u64);
    assert!(counts[..INLINE_CANDIDATES * 2].iter().all(|&c| c == 1));
    assert_eq!(counts[INLINE_CANDIDATES * 2], 0);
    // The least loaded is past the inline buffer's end.
    let last = INLINE_CANDIDATES * 2 - 1;
    let got = pick(
        &t,
        &policy(LeastOutstanding, 0),
        0,
        |i| if i == last { 0 } else { 1 },
        |_| true,
    );
    assert_eq!(got, Some(last));
}

#[test]
fn read_policy_comes_from_routing_config() {
    let routing = RoutingConfig {
        load_balance: Weighted,
        primary_read_weight: 2,
        ..RoutingConfig::default()
    };
    assert_eq!(ReadPolicy::from_config(&routing), policy(Weighted, 2));
}

#[test]
fn a_suspect_node_gets_no_reads_until_it_answers() {
    let mut t = topo(0, &[(P, true, 1), (R, true, 1), (R, true, 3)]);
    t.nodes[1].suspect = true;
    for balance in [RoundRobin, Weighted, LeastOutstanding] {
        let got = spread(&t, policy(balance, 0), 8);
        assert_eq!(got, [0, 0, 8], "{balance:?}");
    }
    // A suspect primary is no read candidate either (writes still go to it).
    t.nodes[1].suspect = false;
    t.nodes[0].suspect = true;
    assert_eq!(spread(&t, policy(Weighted, 4), 8), [0, 2, 6]);
    // Every candidate suspect: none, and the caller falls back.
    for node in &mut t.nodes {
        node.suspect = true;
    }
    assert_eq!(read(&t, policy(RoundRobin, 1), 0), None);
    t.nodes[2].suspect = false;
    assert_eq!(read(&t, policy(RoundRobin, 1), 0), Some(2));
}

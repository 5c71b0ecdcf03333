//! `/metrics`: the proxy's counters and the published topology in
//! Prometheus/OpenMetrics text, read at scrape time. Nothing here runs on
//! the request path: the collector loads the counters the data plane keeps
//! anyway (relaxed atomics) and the current topology snapshot.
//!
//! Every name starts with `palisade_`; per-node series carry
//! `node="<name>"` (the node's configured name, else `host:port`).

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use crate::control::journal::Count;
use crate::frontend::counters::{Counters, Waited, Why, LATENCY_BUCKETS};
use crate::frontend::Shared;
use crate::topology::{NodeState, Role, Topology, WriteState};

/// A registry whose one collector reads `shared` on each scrape.
pub fn registry(shared: Arc<Shared>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProxyCollector { shared }));
    registry
}

struct ProxyCollector {
    shared: Arc<Shared>,
}

impl fmt::Debug for ProxyCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProxyCollector")
    }
}

impl Collector for ProxyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let topology = self.shared.topology.load();
        cluster(&mut encoder, &topology)?;
        nodes(&mut encoder, &topology)?;
        traffic(&mut encoder, &self.shared, &topology)?;
        routing(&mut encoder, &self.shared, &topology)?;
        control(&mut encoder, &self.shared)?;
        latency(&mut encoder, &self.shared.counters)
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// One metric family: its descriptor, then each series.
fn family<'a, M: EncodeMetric + TypedMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    series: impl IntoIterator<Item = (Labels<'a>, M)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, unit.as_ref(), M::TYPE)?;
    for (labels, metric) in series {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn node_label(n: &NodeState) -> Labels<'_> {
    vec![("node", n.name.as_str())]
}

fn gauge(value: impl Into<i64>) -> ConstGauge {
    ConstGauge::new(value.into())
}

fn clamp(value: u64) -> ConstGauge {
    gauge(i64::try_from(value).unwrap_or(i64::MAX))
}

/// The epoch and whether writes are open.
fn cluster(e: &mut DescriptorEncoder, t: &Topology) -> fmt::Result {
    family(
        e,
        "palisade_epoch",
        "Failover epoch: bumped by every promotion (failover or switchover).",
        None,
        [(vec![], clamp(t.epoch))],
    )?;
    let state = match t.writes {
        WriteState::Open => "open",
        WriteState::Paused => "paused",
        WriteState::Refused(_) => "refused",
    };
    family(
        e,
        "palisade_writes",
        "Whether the primary takes writes: 1 for the current state.",
        None,
        ["open", "paused", "refused"].map(|s| (vec![("state", s)], gauge(i64::from(s == state)))),
    )
}

/// What the monitor last saw of each node.
fn nodes(e: &mut DescriptorEncoder, t: &Topology) -> fmt::Result {
    let by_node = |value: &dyn Fn(&NodeState) -> Option<i64>| {
        t.configured()
            .filter_map(|(_, n)| value(n).map(|v| (node_label(n), gauge(v))))
            .collect::<Vec<_>>()
    };
    let roles = t.configured().flat_map(|(_, n)| {
        [Role::Primary, Role::Replica, Role::Unknown].map(|r| {
            let labels = vec![("node", n.name.as_str()), ("role", r.name())];
            (labels, gauge(i64::from(n.role == r)))
        })
    });
    family(
        e,
        "palisade_node_role",
        "The node's role as last probed: 1 for the current one.",
        None,
        roles,
    )?;
    let flag = |b: bool| Some(i64::from(b));
    family(
        e,
        "palisade_node_healthy",
        "1 while the node answers its probes.",
        None,
        by_node(&|n| flag(n.healthy)),
    )?;
    family(
        e,
        "palisade_node_fenced",
        "1 while the node is fenced (receives no traffic).",
        None,
        by_node(&|n| flag(n.fenced)),
    )?;
    let replica = |n: &NodeState| n.role == Role::Replica;
    family(
        e,
        "palisade_node_streaming",
        "1 while a replica's WAL receiver streams from a primary.",
        None,
        by_node(&|n| replica(n).then(|| i64::from(n.replication.streaming))),
    )?;
    let bytes = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
    family(
        e,
        "palisade_node_wal_position",
        "The primary's current WAL position; a replica's replay position.",
        Some(Unit::Bytes),
        by_node(&|n| bytes(n.replication.lsn.map(|l| l.0))),
    )?;
    family(
        e,
        "palisade_node_lag",
        "How far a replica's replay is behind the primary's WAL.",
        Some(Unit::Bytes),
        by_node(&|n| bytes(n.replication.lag_bytes)),
    )?;
    let seconds = t.configured().filter_map(|(_, n)| {
        let ms = n.replication.lag_ms?;
        Some((node_label(n), ConstGauge::new(ms as f64 / 1000.0)))
    });
    family(
        e,
        "palisade_node_lag",
        "How long a replica's data has been stale (0 once it has replayed all the primary wrote).",
        Some(Unit::Seconds),
        seconds,
    )
}

/// The data plane's counters: requests in flight, connections, commits.
fn traffic(e: &mut DescriptorEncoder, s: &Shared, t: &Topology) -> fmt::Result {
    let in_flight = t
        .configured()
        .map(|(i, n)| (node_label(n), gauge(s.loads.outstanding(i))));
    family(
        e,
        "palisade_requests_in_flight",
        "Requests sent to the node and not answered yet.",
        None,
        in_flight,
    )?;
    let servers = t.configured().flat_map(|(_, n)| {
        let open = s.pool.open_connections(&n.host, n.port);
        let idle = s.pool.idle_connections(&n.host, n.port);
        [("idle", idle), ("in_use", open.saturating_sub(idle))].map(|(state, count)| {
            (
                vec![("node", n.name.as_str()), ("state", state)],
                clamp(count as u64),
            )
        })
    });
    family(
        e,
        "palisade_server_connections",
        "Server connections open to the node, idle in the pool or in use.",
        None,
        servers,
    )?;
    let clients = [
        ("logged_in", s.admission.sessions()),
        ("logging_in", s.admission.logins_in_progress()),
    ];
    let clients = clients.map(|(state, count)| (vec![("state", state)], clamp(count as u64)));
    family(
        e,
        "palisade_client_connections",
        "Client connections: sessions, and logins in progress.",
        None,
        clients,
    )?;
    let unparsable = s.unparsable.load(std::sync::atomic::Ordering::Relaxed);
    family(
        e,
        "palisade_unparsable_statements",
        "Statements the classifier could not parse (sent to the primary).",
        None,
        [(vec![], ConstCounter::new(unparsable))],
    )?;
    family(
        e,
        "palisade_commits",
        "Commits acknowledged through the proxy.",
        None,
        [(vec![], ConstCounter::new(s.commits.count()))],
    )
}

/// Where requests went and why; causal waits; the classify cache; pool
/// waiters; failed logins; bytes relayed.
fn routing(e: &mut DescriptorEncoder, s: &Shared, t: &Topology) -> fmt::Result {
    let c = &s.counters;
    let by_reason = t.configured().flat_map(|(i, n)| {
        Why::ALL.map(|why| {
            let labels = vec![("node", n.name.as_str()), ("reason", why.name())];
            (labels, ConstCounter::new(c.routed_count(i, why)))
        })
    });
    family(
        e,
        "palisade_queries_routed",
        "Requests (a query or an extended-protocol batch) sent to the node, by why they went there: read, write, txn, pin, hint, fallback, unparsable.",
        None,
        by_reason,
    )?;
    let waits = Waited::ALL.map(|w| (vec![("outcome", w.name())], ConstCounter::new(c.waits(w))));
    family(
        e,
        "palisade_causal_waits",
        "Causal reads that waited for a replica, by how the wait ended: replica (it caught up), primary (fell back), timed_out (refused).",
        None,
        waits,
    )?;
    let cache = s.classify.stats();
    family(
        e,
        "palisade_classify_cache",
        "Statement classifications answered from the shared cache, by statement shape (hit), or parsed (miss).",
        None,
        [("hit", cache.hits), ("miss", cache.misses)].map(|(r, n)| (vec![("result", r)], ConstCounter::new(n))),
    )?;
    let stats = s.pool.stats();
    let waiters = t.configured().map(|(_, n)| {
        let waiting: usize = stats
            .iter()
            .filter(|p| p.host == n.host && p.port == n.port)
            .map(|p| p.waiting)
            .sum();
        (node_label(n), clamp(waiting as u64))
    });
    family(
        e,
        "palisade_pool_waiters",
        "Clients waiting for a server connection to the node at pool.max_server_connections.",
        None,
        waiters,
    )?;
    family(
        e,
        "palisade_auth_failures",
        "Client logins refused for a wrong password or an unknown user.",
        None,
        [(vec![], ConstCounter::new(c.auth_failures()))],
    )?;
    let (from, to) = c.bytes();
    family(
        e,
        "palisade_client",
        "Bytes relayed between clients and the proxy (counted at each transaction's end and when a session ends).",
        Some(Unit::Bytes),
        [("received", from), ("sent", to)]
            .map(|(d, n)| (vec![("direction", d)], ConstCounter::new(n))),
    )
}

/// The control plane's counts of what it did.
fn control(e: &mut DescriptorEncoder, s: &Shared) -> fmt::Result {
    let journal = s.admin.control().journal();
    for what in Count::ALL {
        let help = match what {
            Count::Failover => "Failovers: a failed primary replaced (the new epoch persisted).",
            Count::Switchover => {
                "Switchovers: a planned change of primary (the new epoch persisted)."
            }
            Count::Fence => "Nodes fenced (made read-only, sessions ended, fence_command run).",
            Count::Rejoin => "Rejoins started (a fenced node brought back as a replica).",
        };
        family(
            e,
            what.name(),
            help,
            None,
            [(vec![], ConstCounter::new(journal.counted(what)))],
        )?;
    }
    Ok(())
}

/// How long requests took through the proxy, from the moment a request
/// was due to its ReadyForQuery.
struct Latency {
    buckets: Vec<(f64, u64)>,
    sum: f64,
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let count = self.buckets.iter().map(|(_, n)| n).sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum, count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn latency(e: &mut DescriptorEncoder, c: &Counters) -> fmt::Result {
    let (counts, sum) = c.latency();
    let bounds = LATENCY_BUCKETS.iter().copied().chain([f64::INFINITY]);
    let buckets = bounds.zip(counts).collect();
    family(
        e,
        "palisade_request_duration",
        "Requests through the proxy, from when the request was due to its ReadyForQuery.",
        Some(Unit::Seconds),
        [(vec![], Latency { buckets, sum })],
    )
}

//! `/api/status`: what the status page draws, as JSON: the nodes with
//! role, health, WAL position and lag, where requests went, the sessions
//! open and whether writes are open. Read at request time off the same
//! counters as the metrics.

use serde::Serialize;

use crate::frontend::Shared;
use crate::topology::{Topology, WriteState};

#[derive(Debug, Serialize)]
pub struct Status {
    pub epoch: u64,
    /// The primary of the epoch while it is healthy.
    pub primary: Option<String>,
    /// `open`, `paused` or `refused`.
    pub writes: &'static str,
    /// Why writes are refused.
    pub writes_reason: Option<String>,
    /// What `/ready` answers.
    pub ready: bool,
    pub sessions: usize,
    pub logins_in_progress: usize,
    pub unparsable_statements: u64,
    pub commits: u64,
    pub nodes: Vec<NodeStatus>,
}

#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub address: String,
    pub role: &'static str,
    /// `up`, `down` or `fenced`.
    pub health: &'static str,
    pub weight: u32,
    pub lsn: Option<String>,
    /// A replica's WAL receiver is streaming (`None` for other roles).
    pub streaming: Option<bool>,
    pub lag_bytes: Option<u64>,
    pub lag_ms: Option<u64>,
    /// Requests sent to the node so far.
    pub routed: u64,
    pub in_flight: u32,
    pub server_connections: usize,
    pub idle_server_connections: usize,
}

/// The status now; `accepting` is false once shutdown has begun.
pub fn status(shared: &Shared, topology: &Topology, accepting: bool) -> Status {
    let (writes, writes_reason) = match &topology.writes {
        WriteState::Open => ("open", None),
        WriteState::Paused => ("paused", None),
        WriteState::Refused(reason) => ("refused", Some(reason.to_string())),
    };
    Status {
        epoch: topology.epoch,
        primary: topology.primary().map(|i| topology.nodes[i].name.clone()),
        writes,
        writes_reason,
        ready: super::checks::ready(topology, accepting).is_ok(),
        sessions: shared.admission.sessions(),
        logins_in_progress: shared.admission.logins_in_progress(),
        unparsable_statements: shared.unparsable.load(std::sync::atomic::Ordering::Relaxed),
        commits: shared.commits.count(),
        nodes: topology
            .configured()
            .map(|(i, n)| NodeStatus {
                name: n.name.clone(),
                address: format!("{}:{}", n.host, n.port),
                role: n.role.name(),
                health: n.health(),
                weight: n.weight,
                lsn: n.replication.lsn.map(|l| l.to_string()),
                streaming: (n.role == crate::topology::Role::Replica)
                    .then_some(n.replication.streaming),
                lag_bytes: n.replication.lag_bytes,
                lag_ms: n.replication.lag_ms,
                routed: shared.loads.routed(i),
                in_flight: shared.loads.outstanding(i),
                server_connections: shared.pool.open_connections(&n.host, n.port),
                idle_server_connections: shared.pool.idle_connections(&n.host, n.port),
            })
            .collect(),
    }
}

//! The published view of the cluster: which node is primary, which are
//! replicas, and whether each is healthy.
//!
//! The control plane is the only writer; it publishes a whole new snapshot
//! through [`TopologyHandle`] and the data plane reads whichever snapshot is
//! current when it routes. A snapshot is never mutated in place.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::NodeConfig;

/// What a node is, as last seen by the monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
    /// Never reached yet, so its role is not known.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub role: Role,
    pub healthy: bool,
    /// Share of reads while a replica (from config); 0 never serves reads as one.
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Bumped by every promotion; persisted before it is published.
    pub epoch: u64,
    pub nodes: Vec<NodeState>,
}

impl Topology {
    /// The starting view: every configured node, role unknown, unhealthy.
    pub fn from_config(nodes: &[NodeConfig]) -> Topology {
        Topology {
            epoch: 0,
            nodes: nodes
                .iter()
                .map(|n| NodeState {
                    name: n.display_name(),
                    host: n.host.clone(),
                    port: n.port,
                    role: Role::Unknown,
                    healthy: false,
                    weight: n.weight,
                })
                .collect(),
        }
    }

    /// The index of the healthy primary, if there is one.
    pub fn primary(&self) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.healthy && n.role == Role::Primary)
    }
}

/// Shared handle: the control plane stores, the data plane loads.
#[derive(Debug, Clone)]
pub struct TopologyHandle(Arc<ArcSwap<Topology>>);

impl TopologyHandle {
    pub fn new(initial: Topology) -> TopologyHandle {
        TopologyHandle(Arc::new(ArcSwap::from_pointee(initial)))
    }

    pub fn load(&self) -> Arc<Topology> {
        self.0.load_full()
    }

    /// Only the control plane's driver calls this.
    pub(crate) fn publish(&self, topology: Topology) {
        self.0.store(Arc::new(topology));
    }
}

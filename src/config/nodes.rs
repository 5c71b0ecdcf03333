//! `[[nodes]]`: the PostgreSQL servers Palisade fronts, their names and read
//! weights, and the rules on the list.

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// The largest accepted `nodes[i].weight`: enough to express any useful ratio
/// while keeping the sum over many nodes far from overflow.
pub(super) const MAX_NODE_WEIGHT: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Defaults to `host:port`.
    pub name: Option<String>,
    pub host: String,
    pub port: u16,
    /// Share of reads this node serves as a replica (see `routing.load_balance`);
    /// 0 means it never serves reads as a replica.
    #[serde(default = "default_node_weight")]
    pub weight: u32,
}

fn default_node_weight() -> u32 {
    1
}

impl NodeConfig {
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}:{}", self.host, self.port))
    }
}

/// At least one node; each with a host, a port and a weight in range, and a
/// name no other node has.
pub(super) fn validate(nodes: &[NodeConfig]) -> Result<(), ConfigError> {
    if nodes.is_empty() {
        return Err(invalid("nodes", "at least one node is required"));
    }
    if nodes.len() > crate::topology::MAX_NODES {
        return Err(invalid(
            "nodes",
            format!("at most {} nodes", crate::topology::MAX_NODES),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, node) in nodes.iter().enumerate() {
        if node.host.trim().is_empty() {
            return Err(invalid(format!("nodes[{i}].host"), "must not be empty"));
        }
        if node.port == 0 {
            return Err(invalid(
                format!("nodes[{i}].port"),
                "must be between 1 and 65535",
            ));
        }
        if node.weight > MAX_NODE_WEIGHT {
            return Err(invalid(
                format!("nodes[{i}].weight"),
                format!("must be at most {MAX_NODE_WEIGHT}"),
            ));
        }
        if !seen.insert(node.display_name()) {
            return Err(invalid(
                format!("nodes[{i}].name"),
                format!("duplicate node name {:?}", node.display_name()),
            ));
        }
    }
    Ok(())
}

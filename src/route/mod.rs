//! Pure routing: given the current topology, which node serves a statement.
//!
//! No I/O, no clock, no locks: the session asks, this module answers from the
//! snapshot it is handed. Today every statement goes to the primary; the
//! read/write split adds the statement's class and the session's state.

use crate::topology::Topology;

/// Where a statement goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Index into `Topology::nodes`.
    pub node: usize,
    pub epoch: u64,
}

/// Why no node can serve a statement right now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoRoute {
    #[error("no primary is available")]
    NoPrimary,
}

/// Picks the node for the session's next statement.
pub fn route(topology: &Topology) -> Result<Target, NoRoute> {
    let node = topology.primary().ok_or(NoRoute::NoPrimary)?;
    Ok(Target {
        node,
        epoch: topology.epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{NodeState, Role};

    fn node(role: Role, healthy: bool) -> NodeState {
        NodeState {
            name: format!("{role:?}"),
            host: "127.0.0.1".into(),
            port: 1,
            role,
            healthy,
        }
    }

    #[test]
    fn statements_go_to_the_healthy_primary() {
        let t = Topology {
            epoch: 3,
            nodes: vec![node(Role::Replica, true), node(Role::Primary, true)],
        };
        assert_eq!(route(&t), Ok(Target { node: 1, epoch: 3 }));
    }

    #[test]
    fn an_unhealthy_or_missing_primary_is_no_route() {
        let t = Topology {
            epoch: 0,
            nodes: vec![node(Role::Replica, true), node(Role::Primary, false)],
        };
        assert_eq!(route(&t), Err(NoRoute::NoPrimary));
    }
}

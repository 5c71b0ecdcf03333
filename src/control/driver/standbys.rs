//! Which standbys the primary's commits wait for, by replication mode.

use crate::config::ReplicationMode;
use crate::control::failover::NodeId;
use crate::topology::Topology;

/// The primary and the standbys its commits should wait for (any one of
/// them): in `sync` every healthy streaming replica, none when none is
/// (availability: the primary drops to asynchronous commits); in
/// `sync_strict` every replica that is not fenced, healthy or not
/// (consistency: commits wait until one is back). `None` in `async`, or
/// without a primary.
pub fn sync_standbys(mode: ReplicationMode, topology: &Topology) -> Option<(NodeId, Vec<String>)> {
    if mode == ReplicationMode::Async {
        return None;
    }
    let primary = topology.primary()?;
    let standbys = topology
        .nodes
        .iter()
        .enumerate()
        .filter(|&(i, n)| {
            i != primary
                && !n.fenced
                && (mode == ReplicationMode::SyncStrict || (n.healthy && n.replication.streaming))
        })
        .map(|(_, n)| n.name.clone())
        .collect();
    Some((primary, standbys))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{NodeState, Replication, Role, WriteState};

    fn node(name: &str, role: Role, healthy: bool, streaming: bool) -> NodeState {
        NodeState {
            name: name.into(),
            host: "127.0.0.1".into(),
            port: 1,
            role,
            healthy,
            suspect: false,
            weight: 1,
            replication: Replication {
                streaming,
                ..Replication::default()
            },
            fenced: false,
            removed: false,
        }
    }

    #[test]
    fn sync_modes_choose_which_standbys_commits_wait_for() {
        let mut t = Topology {
            epoch: 1,
            leader: Some(0),
            writes: WriteState::Open,
            nodes: vec![
                node("p", Role::Primary, true, false),
                node("a", Role::Replica, true, true),
                node("b", Role::Replica, false, false),
                node("c", Role::Replica, true, false),
                NodeState {
                    fenced: true,
                    ..node("old", Role::Primary, true, false)
                },
            ],
        };
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(sync_standbys(ReplicationMode::Async, &t), None);
        assert_eq!(
            sync_standbys(ReplicationMode::Sync, &t),
            Some((0, strings(&["a"])))
        );
        assert_eq!(
            sync_standbys(ReplicationMode::SyncStrict, &t),
            Some((0, strings(&["a", "b", "c"])))
        );
        // No healthy streaming replica: sync drops to async, sync_strict does not.
        t.nodes[1].replication.streaming = false;
        assert_eq!(sync_standbys(ReplicationMode::Sync, &t), Some((0, vec![])));
        assert_eq!(
            sync_standbys(ReplicationMode::SyncStrict, &t),
            Some((0, strings(&["a", "b", "c"])))
        );
        t.leader = None;
        assert_eq!(sync_standbys(ReplicationMode::Sync, &t), None);
    }
}

//! Nodes added and removed while the proxy runs (RELOAD). A node keeps its
//! index for as long as the proxy runs: a removed node leaves a vacant slot
//! that is never probed, counted, promoted or published as serving, and a
//! node added under a vacant slot's name takes that slot again; any other
//! is appended. The primary of the epoch, and a node a failover or
//! switchover is working on, cannot be removed.

use super::{Action, FailoverStage, NodeAddr, NodeId, NodeView, Phase, State};

impl State {
    /// Whether `node` was removed (its slot is vacant).
    pub fn removed(&self, node: NodeId) -> bool {
        self.view(node).is_some_and(|v| v.removed)
    }

    /// The node named `name` that is configured now.
    pub fn node_named(&self, name: &str) -> Option<NodeId> {
        (0..self.nodes.len()).find(|n| !self.removed(*n) && self.name(*n) == name)
    }

    /// Puts `addr` in the vacant slot of its name, or in a new slot.
    pub(super) fn add_node(&mut self, addr: NodeAddr, out: &mut Vec<Action>) {
        if self.node_named(&addr.name).is_some() {
            return out.push(Action::CommandRefused {
                reason: format!("node {} is configured already", addr.name),
            });
        }
        let vacant = (0..self.nodes.len()).find(|n| self.name(*n) == addr.name);
        let slot = vacant.unwrap_or(self.nodes.len());
        if slot == self.nodes.len() {
            self.settings.nodes.push(addr);
            self.nodes.push(NodeView::default());
        } else {
            self.settings.nodes[slot] = addr;
            self.nodes[slot] = NodeView::default();
        }
    }

    /// Vacates `node`'s slot, unless the failover logic still needs it.
    pub(super) fn remove_node(&mut self, node: NodeId, out: &mut Vec<Action>) {
        if let Some(why) = self.kept(node) {
            return out.push(Action::CommandRefused {
                reason: format!("node {} cannot be removed: {why}", self.name(node)),
            });
        }
        self.nodes[node] = NodeView {
            removed: true,
            ..NodeView::default()
        };
        self.fenced.remove(&node);
        self.sync_standbys.remove(&node);
    }

    /// Why `node` must stay, if it must.
    fn kept(&self, node: NodeId) -> Option<&'static str> {
        let busy = match &self.phase {
            Phase::Adopting { node: n, .. } => *n == node,
            Phase::Failover(f) => {
                f.old == Some(node)
                    || f.pinned == Some(node)
                    || matches!(f.stage, FailoverStage::Persisting { candidate, .. }
                        | FailoverStage::Promoting { candidate } if candidate == node)
            }
            Phase::Switchover(s) => s.old == node || s.target == node,
            _ => false,
        };
        if self.view(node).is_none_or(|v| v.removed) {
            Some("there is no such node")
        } else if self.primary == Some(node) || self.promoted == Some(node) {
            Some("it is the primary; switch over to another node first")
        } else if busy {
            Some("a failover or switchover is using it; try again once it is over")
        } else {
            None
        }
    }
}

//! The driver's side of a reload that changes the node set: the change is
//! tried on a copy of the state machine first (removing the primary is
//! refused, and then nothing changes), then fed for real; a new node gets a
//! slot, a prober and a place in the published topology, a removed one's
//! prober stops and its slot is published vacant, so sessions stop sending
//! it anything new and leave it at their transaction's end.

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{node_admin, Driver};
use crate::config::NodeConfig;
use crate::control::failover::{self, Action, Event, NodeAddr, NodeId};
use crate::topology::{NodeState, Replication, Role, MAX_NODES};

/// What a reload changes in the node set.
struct Change {
    removed: Vec<NodeId>,
    added: Vec<NodeConfig>,
}

impl Driver {
    /// Makes the configured nodes `nodes` (a reload): adds, removes and
    /// reweighs. Says what changed, or why nothing did.
    pub(super) async fn reconfigure(&mut self, nodes: &[NodeConfig]) -> Result<String, String> {
        let change = self.change(nodes)?;
        let mut said = Vec::new();
        for node in &change.removed {
            let name = self.nodes[*node].display_name();
            if let Some(reason) = self.feed(Event::RemoveNode { node: *node }).await {
                return Err(reason);
            }
            if let Some(stop) = self.probers.get(*node) {
                stop.cancel();
            }
            info!(node = %name, "node removed by a reload");
            said.push(format!("removed node {name}"));
        }
        for node in &change.added {
            if let Some(reason) = self.feed(Event::AddNode(addr(node))).await {
                return Err(reason);
            }
            self.start_node(node)?;
            said.push(format!("added node {}", node.display_name()));
        }
        if self.reweigh(nodes) {
            said.push("read weights set".to_owned());
        }
        self.publish();
        if said.is_empty() {
            said.push("the node set is unchanged".to_owned());
        }
        let said = said.join("; ");
        let epoch = self.topology.load().epoch;
        self.journal.record(epoch, None, format!("RELOAD: {said}"));
        Ok(said)
    }

    /// The nodes to remove and add, checked on a copy of the state machine
    /// (a node whose address changed is removed and added again).
    fn change(&self, nodes: &[NodeConfig]) -> Result<Change, String> {
        let machine = self
            .machine
            .as_ref()
            .ok_or("the control plane is not running")?;
        let same = |slot: NodeId, n: &NodeConfig| {
            let have = &self.nodes[slot];
            (have.host.as_str(), have.port) == (n.host.as_str(), n.port)
        };
        let removed: Vec<NodeId> = (0..self.nodes.len())
            .filter(|i| !machine.removed(*i))
            .filter(|i| {
                let name = self.nodes[*i].display_name();
                !nodes
                    .iter()
                    .any(|n| n.display_name() == name && same(*i, n))
            })
            .collect();
        let added: Vec<NodeConfig> = nodes
            .iter()
            .filter(|n| {
                machine
                    .node_named(&n.display_name())
                    .is_none_or(|i| removed.contains(&i))
            })
            .cloned()
            .collect();
        let mut trial = machine.clone();
        let events = removed
            .iter()
            .map(|node| Event::RemoveNode { node: *node })
            .chain(added.iter().map(|n| Event::AddNode(addr(n))));
        for event in events {
            let (next, actions) = failover::step(trial, event);
            trial = next;
            if let Some(reason) = actions.iter().find_map(|a| match a {
                Action::CommandRefused { reason } => Some(reason.clone()),
                _ => None,
            }) {
                return Err(reason);
            }
        }
        if trial.settings().nodes.len() > MAX_NODES {
            return Err(format!(
                "the proxy keeps at most {MAX_NODES} node slots (a removed node keeps its slot until a restart); restart to add more"
            ));
        }
        Ok(Change { removed, added })
    }

    /// Gives a node the state machine just added its slot's admin, prober
    /// and published entry.
    fn start_node(&mut self, node: &NodeConfig) -> Result<(), String> {
        let name = node.display_name();
        let slot = self
            .machine
            .as_ref()
            .and_then(|m| m.node_named(&name))
            .ok_or_else(|| format!("node {name} was not added"))?;
        let admin = node_admin(&self.config, &self.kit.tls, node);
        let stop = CancellationToken::new();
        if slot == self.nodes.len() {
            self.nodes.push(node.clone());
            self.admins.push(admin);
            self.probers.push(stop.clone());
            self.seen.push(true);
        } else {
            self.nodes[slot] = node.clone();
            self.admins[slot] = admin;
            self.probers[slot] = stop.clone();
        }
        let prober = self.kit.prober(slot, node, stop);
        self.tracker.spawn(prober.run());
        let mut next = (*self.topology.load()).clone();
        let entry = NodeState {
            name: name.clone(),
            host: node.host.clone(),
            port: node.port,
            role: Role::Unknown,
            healthy: false,
            suspect: false,
            weight: node.weight,
            replication: Replication::default(),
            fenced: false,
            removed: false,
        };
        match next.nodes.get_mut(slot) {
            Some(n) => *n = entry,
            None => next.nodes.push(entry),
        }
        self.topology.publish(next);
        info!(node = %name, slot, "node added by a reload");
        Ok(())
    }

    /// Sets the read weights of the nodes in `nodes`; whether one changed.
    fn reweigh(&mut self, nodes: &[NodeConfig]) -> bool {
        let current = self.topology.load();
        let mut next = (*current).clone();
        for n in &mut next.nodes {
            if let Some(c) = nodes.iter().find(|c| c.display_name() == n.name) {
                if !n.removed {
                    n.weight = c.weight;
                }
            }
        }
        let changed = next != *current;
        if changed {
            self.topology.publish(next);
        }
        changed
    }
}

fn addr(node: &NodeConfig) -> NodeAddr {
    NodeAddr {
        name: node.display_name(),
        host: node.host.clone(),
        port: node.port,
    }
}

//! `failover.mode = "follow"`: another HA manager (Patroni, a managed
//! service, an operator) promotes and fences; this proxy only follows. The
//! primary is the one node that answers as a primary on the newest
//! timeline among those that do; when it is not the epoch's primary, it is
//! adopted in a new epoch (persisted first, as always). A node that claims
//! to be a primary on an older timeline is routed nothing.

use super::{Action, FailoverMode, NodeId, Phase, State, Task};

impl State {
    pub(super) fn follows(&self) -> bool {
        self.settings.mode == FailoverMode::Follow
    }

    /// The timeline `node` last said it writes on; 0 when unknown.
    fn timeline(&self, node: NodeId) -> u32 {
        self.view(node)
            .and_then(|v| v.report.as_ref())
            .and_then(|r| r.timeline)
            .unwrap_or(0)
    }

    /// The nodes answering as primaries; when following, only those on the
    /// newest timeline among them.
    pub(super) fn claimants(&self) -> Vec<NodeId> {
        let all: Vec<NodeId> = (0..self.nodes.len())
            .filter(|n| self.nodes[*n].answering_as_primary())
            .collect();
        if !self.follows() {
            return all;
        }
        let newest = all.iter().map(|n| self.timeline(*n)).max();
        all.into_iter()
            .filter(|n| Some(self.timeline(*n)) == newest)
            .collect()
    }

    /// Adopts the one primary on the newest timeline when it is not the
    /// epoch's; confirms the epoch's primary when it is. None, or several
    /// on one timeline: nothing changes (writes stay where the epoch says,
    /// and are refused while its primary does not answer as one).
    pub(super) fn follow(&mut self, out: &mut Vec<Action>) {
        let [best] = self.claimants()[..] else {
            return;
        };
        if Some(best) == self.primary {
            self.phase = Phase::Steady { confirmed: true };
            return;
        }
        if !self.mandate.lead {
            return;
        }
        let Some(epoch) = self.next_epoch() else {
            return;
        };
        out.push(Action::PersistEpoch {
            epoch,
            primary: best,
        });
        self.phase = Phase::Adopting { node: best, epoch };
    }

    /// A node adopted as the primary is routed to, whatever it was before.
    pub(super) fn unfence_adopted(&mut self, node: NodeId) {
        if self.fenced.remove(&node) {
            if let Some(view) = self.nodes.get_mut(node) {
                view.fence = Task::Idle;
            }
        }
    }
}

//! Per-node chores that follow from the epoch: fencing every node that is
//! not the epoch's primary but says it is one, unfencing a node once it
//! streams from the primary as a replica, and re-pointing or rejoining nodes
//! to the primary. Each chore is sent once and retried only after it failed.

use super::{Action, NodeId, Phase, State, SwitchoverStage, Task};

impl State {
    pub(super) fn repoint_finished(&mut self, replica: NodeId, to: NodeId, ok: bool) {
        let retry_at = self.later();
        let current = self.primary == Some(to);
        if let Some(view) = self.nodes.get_mut(replica) {
            if view.repoint == Task::InFlight {
                view.repoint = match (ok, current) {
                    // Done until it is seen streaming from the primary.
                    (true, true) => Task::Done,
                    // Done for a primary that is no longer current: redo.
                    (true, false) => Task::Needed,
                    (false, _) => Task::Failed { retry_at },
                };
            }
        }
    }

    pub(super) fn fence_finished(&mut self, node: NodeId, ok: bool) {
        let retry_at = self.later();
        let now = self.now;
        if let Some(view) = self.nodes.get_mut(node) {
            if view.fence == Task::InFlight {
                view.fence = if ok {
                    Task::Done
                } else {
                    Task::Failed { retry_at }
                };
            }
        }
        // A failed fence does not stop a switchover: the epoch fences the old
        // primary for the proxy whatever it says, and the fence is retried.
        if let Phase::Switchover(s) = &mut self.phase {
            if s.old == node && s.stage == (SwitchoverStage::Fencing { done_at: None }) {
                s.stage = SwitchoverStage::Fencing { done_at: Some(now) };
            }
        }
    }

    pub(super) fn fence(&mut self, node: NodeId) {
        if self.fenced.insert(node) {
            if let Some(view) = self.nodes.get_mut(node) {
                view.fence = Task::Needed;
                view.repoint = Task::Idle;
                view.rejoin = Task::Idle;
            }
        }
    }

    /// Any node other than the epoch's primary that says it is a primary.
    pub(super) fn fence_claimants(&mut self) {
        let Some(primary) = self.primary else {
            return;
        };
        let claimants: Vec<NodeId> = (0..self.nodes.len())
            .filter(|n| *n != primary && self.nodes[*n].answering_as_primary())
            .collect();
        for node in claimants {
            self.fence(node);
        }
    }

    /// A fenced node that streams from the primary as a replica is safe again.
    pub(super) fn unfence_rejoined(&mut self) {
        let Some(primary) = self.primary else {
            return;
        };
        let back: Vec<NodeId> = self
            .fenced
            .iter()
            .copied()
            .filter(|n| {
                self.view(*n).is_some_and(|v| {
                    v.answering_as_replica()
                        && v.report
                            .as_ref()
                            .is_some_and(|r| self.streams_from(r, primary))
                })
            })
            .collect();
        for node in back {
            self.fenced.remove(&node);
            if let Some(view) = self.nodes.get_mut(node) {
                view.fence = Task::Idle;
                view.rejoin = Task::Idle;
                view.repoint = Task::Idle;
            }
        }
    }

    pub(super) fn emit_chores(&mut self, out: &mut Vec<Action>) {
        if !self.mandate.lead || self.follows() {
            return;
        }
        let now = self.now;
        let open = self.primary_open();
        for id in 0..self.nodes.len() {
            let fenced = self.fenced.contains(&id);
            // A replica streaming from a fenced node follows a dead timeline.
            let follows_fenced = self.nodes[id]
                .report
                .as_ref()
                .and_then(|r| r.receiver.upstream.as_ref())
                .and_then(|u| self.settings.resolve(u))
                .is_some_and(|u| self.fenced.contains(&u));
            let view = &mut self.nodes[id];
            if fenced {
                // A fence command may act on an unreachable node (STONITH);
                // failed attempts are retried only once the node answers.
                let due = view.fence == Task::Needed || (view.reachable && view.fence.due(now));
                if due {
                    view.fence = Task::InFlight;
                    out.push(Action::Fence(id));
                }
            }
            let Some(to) = open.filter(|p| *p != id) else {
                continue;
            };
            if fenced {
                let auto = self.settings.auto_rejoin
                    && view.reachable
                    && view.fence != Task::InFlight
                    && (view.rejoin == Task::Idle || view.rejoin.due(now));
                if auto {
                    view.rejoin = Task::InFlight;
                    out.push(Action::Rejoin { node: id, to });
                }
                continue;
            }
            if view.repoint == Task::Done && !follows_fenced {
                view.repoint = Task::Idle;
            }
            if follows_fenced && view.repoint == Task::Idle && view.answering_as_replica() {
                view.repoint = Task::Needed;
            }
            if view.reachable && view.repoint.due(now) {
                view.repoint = Task::InFlight;
                out.push(Action::Repoint { replica: id, to });
            }
        }
    }
}

//! The outcomes of the actions that move a failover on: an epoch made
//! durable or not, a promotion done or failed, a candidate abandoned.

use super::Action;
use super::{FailoverStage, NodeId, Phase, Refusal, State, SwitchoverStage, Task, WriteState};

impl State {
    /// The candidate failed or vanished: the next one gets a newer epoch.
    pub(super) fn abandon_candidate(&mut self, candidate: NodeId) {
        if let Phase::Failover(f) = &mut self.phase {
            f.excluded.insert(candidate);
            f.writes = WriteState::Refused(Refusal::FailingOver);
            f.stage = FailoverStage::Choosing {
                reason: None,
                retry_at: 0,
            };
        }
    }

    pub(super) fn persisted(&mut self, epoch: u64, out: &mut Vec<Action>) {
        match self.phase.clone() {
            Phase::Adopting { node, epoch: e } if e == epoch => {
                self.epoch = epoch;
                self.unfence_adopted(node);
                self.set_primary(node);
                self.phase = Phase::Steady { confirmed: true };
            }
            Phase::Failover(mut f) => {
                let FailoverStage::Persisting {
                    epoch: e,
                    candidate,
                } = f.stage
                else {
                    return;
                };
                if e != epoch {
                    return;
                }
                self.epoch = epoch;
                self.set_primary(candidate);
                if let Some(old) = f.old.take() {
                    self.fence(old);
                }
                f.stage = FailoverStage::Promoting { candidate };
                self.phase = Phase::Failover(f);
                out.push(Action::Promote(candidate));
            }
            Phase::Switchover(mut s) => {
                if s.stage != (SwitchoverStage::Persisting { epoch }) {
                    return;
                }
                self.epoch = epoch;
                self.set_primary(s.target);
                self.fence(s.old);
                s.stage = SwitchoverStage::Fencing { done_at: None };
                self.phase = Phase::Switchover(s);
            }
            _ => {}
        }
    }

    pub(super) fn persist_failed(&mut self, epoch: u64, out: &mut Vec<Action>) {
        let retry_at = self.later();
        match &mut self.phase {
            Phase::Adopting { epoch: e, .. } if *e == epoch => {
                self.phase = Phase::Bootstrapping {
                    reason: Some(format!("could not persist epoch {epoch}; retrying")),
                    retry_at,
                };
            }
            Phase::Failover(f) if f.stage_epoch() == Some(epoch) => {
                f.stage = FailoverStage::Choosing {
                    reason: Some(format!("could not persist epoch {epoch}; retrying")),
                    retry_at,
                };
            }
            Phase::Switchover(s) if s.stage == (SwitchoverStage::Persisting { epoch }) => {
                self.phase = Phase::Steady { confirmed: true };
                out.push(Action::CommandRefused {
                    reason: format!("switchover abandoned: could not persist epoch {epoch}"),
                });
            }
            _ => {}
        }
    }

    pub(super) fn promoted(&mut self, node: NodeId) {
        let Phase::Failover(f) = &self.phase else {
            return;
        };
        if f.stage != (FailoverStage::Promoting { candidate: node }) {
            return;
        }
        self.phase = Phase::Steady { confirmed: true };
        self.promoted = Some(node);
        self.primary_lost_since = None;
        self.primary_misses = 0;
        // Kept until now so that a next candidate could still be chosen by
        // it; the new primary reports its own.
        self.sync_standbys.clear();
        for (id, view) in self.nodes.iter_mut().enumerate() {
            if id != node && !self.fenced.contains(&id) {
                view.repoint = Task::Needed;
            }
        }
    }

    pub(super) fn promote_failed(&mut self, node: NodeId) {
        if let Phase::Failover(f) = &self.phase {
            if f.stage == (FailoverStage::Promoting { candidate: node }) {
                self.abandon_candidate(node);
            }
        }
    }
}

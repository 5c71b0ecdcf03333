//! Operator commands: a planned switchover (pause writes, wait for the
//! target to catch up, persist the new epoch, fence the old primary, let the
//! target replay its last WAL, promote) or, when the primary has failed, the
//! promotion an operator asks for; and rejoining a fenced node.

use std::collections::BTreeSet;

use super::{
    Action, Failover, FailoverStage, NodeId, Phase, Refusal, Report, State, Switchover,
    SwitchoverStage, Task, WriteState, EPOCHS_SPENT,
};

const NOT_LEADING: &str =
    "{}: this proxy does not lead the proxies sharing the epoch; run it on the leader (SHOW PEERS)";

const FOLLOWING: &str =
    "{}: failover.mode = follow: Palisade promotes and fences nothing; ask the HA manager it follows";

impl State {
    pub(super) fn switchover(&mut self, target: Option<NodeId>, out: &mut Vec<Action>) {
        let refuse = |out: &mut Vec<Action>, reason: String| {
            out.push(Action::CommandRefused { reason });
        };
        if self.follows() {
            return refuse(out, FOLLOWING.replace("{}", "switchover"));
        }
        if !self.mandate.lead {
            return refuse(out, NOT_LEADING.replace("{}", "switchover"));
        }
        let (Phase::Steady { .. }, Some(primary)) = (&self.phase, self.primary) else {
            return refuse(
                out,
                "switchover: a failover or switchover is in progress, or no primary is known yet"
                    .into(),
            );
        };
        if let Some(t) = target {
            if let Some(why) = self.ineligible(t, &BTreeSet::new()) {
                return refuse(out, format!("switchover: {why}"));
            }
        }
        if self.primary_open().is_none() {
            if !self.primary_failed() {
                return refuse(out, format!(
                    "switchover: the primary {} is unreachable from the proxy but not confirmed failed by the replicas",
                    self.name(primary)
                ));
            }
            // The primary is gone (failover = manual, or automatic refused):
            // the operator chooses to promote a replacement.
            self.phase = Phase::Failover(Failover {
                old: Some(primary),
                excluded: BTreeSet::new(),
                pinned: target,
                writes: WriteState::Refused(Refusal::FailingOver),
                stage: FailoverStage::Choosing {
                    reason: None,
                    retry_at: 0,
                },
            });
            return self.drive_failover(out);
        }
        // A planned switchover waits for its target to catch up, so how far
        // behind it is now does not matter.
        let best = || self.choose_candidate(&BTreeSet::new(), None, false);
        let target = match target.map_or_else(best, Ok) {
            Ok(t) => t,
            Err(why) => return refuse(out, format!("switchover: {why}")),
        };
        self.phase = Phase::Switchover(Switchover {
            old: primary,
            target,
            paused_at: self.now,
            deadline: self.later(),
            stage: SwitchoverStage::CatchingUp,
        });
    }

    pub(super) fn abort_switchover(&mut self, why: &str, out: &mut Vec<Action>) {
        self.phase = Phase::Steady { confirmed: true };
        out.push(Action::CommandRefused {
            reason: format!("switchover abandoned: {why}"),
        });
    }

    pub(super) fn drive_switchover(&mut self, out: &mut Vec<Action>) {
        let Phase::Switchover(s) = self.phase.clone() else {
            return;
        };
        let (Some(old), Some(target)) = (self.view(s.old), self.view(s.target)) else {
            return;
        };
        let target_lsn = target.report.as_ref().map(Report::wal).unwrap_or_default();
        let old_lsn = old.report.as_ref().map(Report::wal).unwrap_or_default();
        match s.stage {
            SwitchoverStage::CatchingUp => {
                if self.primary_misses >= self.settings.health_threshold {
                    return self.abort_switchover("the primary stopped answering", out);
                }
                if !target.answering_as_replica() {
                    return self.abort_switchover("the target is not a reachable replica", out);
                }
                // Only the primary's position after writes were paused counts.
                let fresh =
                    old.answering_as_primary() && old.probed_at.is_some_and(|at| at >= s.paused_at);
                if fresh && target_lsn >= old_lsn {
                    let Some(epoch) = self.next_epoch() else {
                        return self.abort_switchover(EPOCHS_SPENT, out);
                    };
                    out.push(Action::PersistEpoch {
                        epoch,
                        primary: s.target,
                    });
                    if let Phase::Switchover(s) = &mut self.phase {
                        s.stage = SwitchoverStage::Persisting { epoch };
                    }
                } else if self.now >= s.deadline {
                    self.abort_switchover(
                        "the target did not catch up within failover_timeout_ms",
                        out,
                    );
                }
            }
            SwitchoverStage::Persisting { .. } | SwitchoverStage::Fencing { done_at: None } => {}
            SwitchoverStage::Fencing {
                done_at: Some(done),
            } => {
                // What the old primary wrote between the pause and the fence
                // must reach the target too, unless it is gone or takes too long.
                let final_seen = old.probed_at.is_some_and(|at| at >= done);
                let caught_up = final_seen && (!old.reachable || target_lsn >= old_lsn);
                if caught_up || self.now >= done.saturating_add(self.timeout()) {
                    out.push(Action::Promote(s.target));
                    self.phase = Phase::Failover(Failover {
                        old: None,
                        excluded: BTreeSet::new(),
                        pinned: None,
                        writes: WriteState::Paused,
                        stage: FailoverStage::Promoting {
                            candidate: s.target,
                        },
                    });
                }
            }
        }
    }

    pub(super) fn rejoin(&mut self, node: NodeId, out: &mut Vec<Action>) {
        let reason = if self.follows() {
            FOLLOWING.replace("{}", "rejoin")
        } else if !self.mandate.lead {
            NOT_LEADING.replace("{}", "rejoin")
        } else if !self.fenced.contains(&node) {
            format!("rejoin: {} is not fenced", self.name(node))
        } else if let Some(to) = self.primary_open() {
            if let Some(view) = self.nodes.get_mut(node) {
                view.rejoin = Task::InFlight;
            }
            out.push(Action::Rejoin { node, to });
            return;
        } else {
            "rejoin: no primary is taking writes to rejoin to".to_owned()
        };
        out.push(Action::CommandRefused { reason });
    }
}

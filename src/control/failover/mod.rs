//! The failover state machine: which node is the primary of which epoch,
//! when a failed primary is replaced, which nodes are fenced, and whether
//! each node counts as healthy (its health flips only after
//! `health_threshold` probe results in a row; a node never heard from
//! before counts as up on first contact). The monitor only probes; this is
//! the one place that counts.
//!
//! It is pure: [`step`] folds one [`Event`] (a probe result, a tick, the
//! outcome of an earlier action, an operator command) into the [`State`] and
//! returns the [`Action`]s the driver must carry out. It reads no clock (time
//! arrives in events, in monotonic milliseconds) and does no I/O.
//!
//! Safety comes from the epoch. A decision to promote is persisted
//! ([`Action::PersistEpoch`]) before anything else happens, and an epoch is
//! published only after the driver has acknowledged it
//! ([`Event::PersistDone`]). Writes go only to the primary of the published
//! epoch; any other node that says it is a primary is fenced. So a proxy that
//! restarts at any point of a failover, and reloads the persisted record,
//! never sends writes to a node it had already replaced.
//!
//! The primary is declared failed only when it has not answered as a
//! primary for `failover_timeout` **and** every replica heard since then says
//! its WAL receiver no longer streams from it; a proxy that is merely cut off
//! refuses writes (08006) and promotes nothing.

use std::collections::BTreeSet;

use crate::config::FailoverMode;
pub(crate) use crate::control::epoch::EpochRecord;
use crate::topology::Lsn;

mod chores;
mod commands;
mod detect;
mod events;
mod follow;
mod health;
mod membership;
mod outcomes;
mod shared;

pub use crate::topology::{Refusal, WriteState};
pub use events::{
    Action, Event, Mandate, NodeAddr, Probe, Published, Report, Settings, Upstream, WalReceiver,
};

const EPOCHS_SPENT: &str = "the epoch counter is exhausted; reset the state file";

/// A node, by its index in the configured node list.
pub type NodeId = usize;

/// Progress of one per-node chore (fencing, re-pointing, rejoining).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Task {
    #[default]
    Idle,
    /// To be sent as soon as its conditions hold.
    Needed,
    InFlight,
    Done,
    Failed {
        retry_at: u64,
    },
}

impl Task {
    fn due(self, now: u64) -> bool {
        match self {
            Task::Needed => true,
            Task::Failed { retry_at } => now >= retry_at,
            _ => false,
        }
    }
}

/// What the state machine knows of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    /// The last answer, kept while the node is unreachable.
    pub report: Option<Report>,
    pub reachable: bool,
    /// Up for routing: flips only after `health_threshold` results in a row.
    pub healthy: bool,
    pub probed_at: Option<u64>,
    pub ok_streak: u32,
    pub miss_streak: u32,
    pub fence: Task,
    pub repoint: Task,
    pub rejoin: Task,
    /// Removed from the configuration: its slot is vacant (see
    /// [`membership`]).
    pub removed: bool,
}

impl NodeView {
    /// Healthy, but its last probe went unanswered: no new reads go to it
    /// while it is given `health_threshold` probes to come back.
    pub fn suspect(&self) -> bool {
        self.healthy && !self.reachable
    }

    fn answering_as_primary(&self) -> bool {
        self.reachable && self.report.as_ref().is_some_and(|r| !r.in_recovery)
    }

    fn answering_as_replica(&self) -> bool {
        self.reachable && self.report.as_ref().is_some_and(|r| r.in_recovery)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for [`Event::Loaded`].
    Loading,
    /// No epoch: waiting to see the one node that is a primary. `reason`
    /// says why none was adopted yet, when that needs an operator.
    Bootstrapping {
        reason: Option<String>,
        retry_at: u64,
    },
    /// The first epoch is being persisted with this node.
    Adopting {
        node: NodeId,
        epoch: u64,
    },
    /// The primary of the epoch is in charge (it may be unreachable).
    /// `confirmed` once it has answered as a primary since this state
    /// machine took over; until then a node still in recovery is a
    /// promotion that a restart interrupted.
    Steady {
        confirmed: bool,
    },
    Failover(Failover),
    Switchover(Switchover),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    /// The primary being replaced, fenced once the new epoch is durable;
    /// `None` when it is fenced already or was never a primary.
    pub old: Option<NodeId>,
    /// Candidates that failed to promote in this failover.
    pub excluded: BTreeSet<NodeId>,
    /// Only this node may be promoted (an operator's switchover target).
    pub pinned: Option<NodeId>,
    pub writes: WriteState,
    pub stage: FailoverStage,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailoverStage {
    /// Looking for a candidate; `reason` says why none qualifies.
    Choosing {
        reason: Option<String>,
        retry_at: u64,
    },
    Persisting {
        epoch: u64,
        candidate: NodeId,
    },
    Promoting {
        candidate: NodeId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switchover {
    pub old: NodeId,
    pub target: NodeId,
    pub paused_at: u64,
    pub deadline: u64,
    pub stage: SwitchoverStage,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchoverStage {
    /// Writes paused; waiting for the target to replay the primary's WAL.
    CatchingUp,
    Persisting {
        epoch: u64,
    },
    /// The old primary is being fenced; then the target replays what it
    /// wrote last before it is promoted.
    Fencing {
        done_at: Option<u64>,
    },
}

/// Everything the failover logic knows. Built with [`State::new`], changed
/// only by [`step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    settings: Settings,
    now: u64,
    nodes: Vec<NodeView>,
    /// The durable epoch (0: none) and its primary.
    epoch: u64,
    primary: Option<NodeId>,
    /// The highest epoch ever sent to be persisted; never reused.
    issued_epoch: u64,
    fenced: BTreeSet<NodeId>,
    sync_standbys: BTreeSet<NodeId>,
    /// The highest position the primary reported, and in which epoch.
    last_primary_lsn: Option<(u64, Lsn)>,
    /// Since when the primary has not answered as a primary.
    primary_lost_since: Option<u64>,
    primary_misses: u32,
    phase: Phase,
    /// Promoted by us and not probed since: a primary, whatever its last
    /// report (from before the promotion) said.
    promoted: Option<NodeId>,
    published: Option<Published>,
    mandate: Mandate,
}

/// Folds one event into the state; returns the new state and what to do.
pub fn step(state: State, event: Event) -> (State, Vec<Action>) {
    let mut state = state;
    let mut out = Vec::new();
    state.handle(event, &mut out);
    if state.phase != Phase::Loading {
        state.evaluate(&mut out);
        state.publish_if_changed(&mut out);
    }
    (state, out)
}

impl State {
    pub fn new(settings: Settings) -> State {
        let mandate = if settings.shared {
            Mandate::NONE
        } else {
            Mandate::ALONE
        };
        State {
            nodes: vec![NodeView::default(); settings.nodes.len()],
            settings,
            now: 0,
            epoch: 0,
            primary: None,
            issued_epoch: 0,
            fenced: BTreeSet::new(),
            sync_standbys: BTreeSet::new(),
            last_primary_lsn: None,
            primary_lost_since: None,
            primary_misses: 0,
            phase: Phase::Loading,
            promoted: None,
            published: None,
            mandate,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn primary(&self) -> Option<NodeId> {
        self.primary
    }

    pub fn fenced(&self) -> &BTreeSet<NodeId> {
        &self.fenced
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn node(&self, node: NodeId) -> Option<&NodeView> {
        self.nodes.get(node)
    }

    /// The last published snapshot.
    pub fn published(&self) -> Option<&Published> {
        self.published.as_ref()
    }

    fn timeout(&self) -> u64 {
        self.settings.failover_timeout_ms
    }

    /// When something failed now is tried again.
    fn later(&self) -> u64 {
        self.now.saturating_add(self.timeout())
    }

    /// A fresh epoch for the next decision; `None` once the counter is
    /// spent (only a corrupt or hostile state file gets there).
    fn next_epoch(&mut self) -> Option<u64> {
        self.issued_epoch = self.issued_epoch.checked_add(1)?;
        Some(self.issued_epoch)
    }

    fn name(&self, node: NodeId) -> &str {
        self.settings.node_name(node).unwrap_or("?")
    }

    fn view(&self, node: NodeId) -> Option<&NodeView> {
        self.nodes.get(node)
    }

    fn handle(&mut self, event: Event, out: &mut Vec<Action>) {
        match event {
            Event::Loaded(record) => self.load(record),
            Event::Probe { node, at, result } => {
                self.now = self.now.max(at);
                self.observe(node, at, result);
            }
            Event::SyncStandbys { nodes } => {
                if matches!(self.phase, Phase::Steady { confirmed: true }) {
                    self.sync_standbys = nodes;
                }
            }
            Event::Tick { now } => self.now = self.now.max(now),
            Event::PersistDone { epoch } => self.persisted(epoch, out),
            Event::PersistFailed { epoch } => self.persist_failed(epoch, out),
            Event::Promoted { node } => self.promoted(node),
            Event::PromoteFailed { node } => self.promote_failed(node),
            Event::RepointDone { replica, to } => self.repoint_finished(replica, to, true),
            Event::RepointFailed { replica, to } => self.repoint_finished(replica, to, false),
            Event::FenceDone { node } => self.fence_finished(node, true),
            Event::FenceFailed { node } => self.fence_finished(node, false),
            Event::RejoinFailed { node } => {
                let retry_at = self.later();
                if let Some(v) = self.nodes.get_mut(node) {
                    if v.rejoin == Task::InFlight {
                        v.rejoin = Task::Failed { retry_at };
                    }
                }
            }
            Event::Switchover { target } => self.switchover(target, out),
            Event::Rejoin { node } => self.rejoin(node, out),
            Event::AddNode(addr) => self.add_node(addr, out),
            Event::RemoveNode { node } => self.remove_node(node, out),
            Event::Mandate(mandate) => self.mandate = mandate,
            Event::Learned(record) => self.learn(record),
        }
    }

    fn load(&mut self, record: Option<EpochRecord>) {
        if self.phase != Phase::Loading {
            return;
        }
        let bootstrap = Phase::Bootstrapping {
            reason: None,
            retry_at: 0,
        };
        let Some(record) = record else {
            self.phase = bootstrap;
            return;
        };
        self.epoch = record.epoch;
        self.issued_epoch = record.epoch;
        match self.settings.node_named(&record.primary) {
            Some(primary) => {
                self.set_primary(primary);
                self.phase = Phase::Steady { confirmed: false };
            }
            // The configuration no longer has that node: learn the primary
            // afresh, in a newer epoch.
            None => self.phase = bootstrap,
        }
    }

    /// Makes `primary` the primary of the current epoch and restarts the
    /// tracking of its health from its last probe.
    fn set_primary(&mut self, primary: NodeId) {
        self.primary = Some(primary);
        self.primary_lost_since = None;
        self.primary_misses = 0;
        let lost = self
            .view(primary)
            .filter(|v| !v.answering_as_primary())
            .map(|v| (v.probed_at.map(|_| self.now), v.miss_streak));
        if let Some((since, misses)) = lost {
            self.primary_lost_since = since;
            self.primary_misses = misses;
        }
    }

    fn evaluate(&mut self, out: &mut Vec<Action>) {
        match &self.phase {
            Phase::Loading | Phase::Adopting { .. } => {}
            Phase::Bootstrapping { .. } => self.bootstrap(out),
            Phase::Steady { confirmed } => self.steady(*confirmed, out),
            Phase::Failover(_) => self.drive_failover(out),
            Phase::Switchover(_) => self.drive_switchover(out),
        }
        self.fence_claimants();
        self.unfence_rejoined();
        self.emit_chores(out);
    }

    fn bootstrap(&mut self, out: &mut Vec<Action>) {
        let Phase::Bootstrapping { retry_at, .. } = self.phase else {
            return;
        };
        let waiting = self.now < retry_at
            || self
                .nodes
                .iter()
                .any(|v| v.probed_at.is_none() && !v.removed);
        if waiting || !self.mandate.lead {
            return;
        }
        let claimants = self.claimants();
        match claimants[..] {
            [] => {
                self.phase = Phase::Bootstrapping {
                    reason: None,
                    retry_at,
                }
            }
            [node] => match self.next_epoch() {
                Some(epoch) => {
                    out.push(Action::PersistEpoch {
                        epoch,
                        primary: node,
                    });
                    self.phase = Phase::Adopting { node, epoch };
                }
                None => {
                    self.phase = Phase::Bootstrapping {
                        reason: Some(EPOCHS_SPENT.to_owned()),
                        retry_at: u64::MAX,
                    }
                }
            },
            _ => {
                let names: Vec<&str> = claimants.iter().map(|n| self.name(*n)).collect();
                let reason = format!(
                    "{} all claim to be the primary and no epoch is recorded; demote all but one",
                    names.join(", ")
                );
                self.phase = Phase::Bootstrapping {
                    reason: Some(reason),
                    retry_at,
                };
            }
        }
    }

    fn steady(&mut self, confirmed: bool, out: &mut Vec<Action>) {
        let Some(primary) = self.primary else {
            return;
        };
        let Some(view) = self.view(primary) else {
            return;
        };
        if self.follows() {
            return self.follow(out);
        }
        if !confirmed {
            if view.answering_as_primary() {
                self.phase = Phase::Steady { confirmed: true };
            } else if view.answering_as_replica() && self.mandate.lead {
                // Persisted before it was promoted, then the proxy restarted:
                // finish the promotion that epoch stands for.
                out.push(Action::Promote(primary));
                self.phase = Phase::Failover(Failover {
                    old: None,
                    excluded: BTreeSet::new(),
                    pinned: None,
                    writes: WriteState::Refused(Refusal::FailingOver),
                    stage: FailoverStage::Promoting { candidate: primary },
                });
                return;
            }
        }
        let agreed = self.mandate.lead && self.mandate.agreed_down;
        if self.settings.mode == FailoverMode::Automatic && agreed && self.primary_failed() {
            self.phase = Phase::Failover(Failover {
                old: Some(primary),
                excluded: BTreeSet::new(),
                pinned: None,
                writes: WriteState::Refused(Refusal::FailingOver),
                stage: FailoverStage::Choosing {
                    reason: None,
                    retry_at: 0,
                },
            });
            self.drive_failover(out);
        }
    }

    fn drive_failover(&mut self, out: &mut Vec<Action>) {
        let Phase::Failover(f) = &self.phase else {
            return;
        };
        match f.stage {
            FailoverStage::Choosing { retry_at, .. } => {
                if self
                    .primary
                    .and_then(|p| self.view(p))
                    .is_some_and(NodeView::answering_as_primary)
                {
                    // Back before anything was decided: nothing to replace.
                    self.phase = Phase::Steady { confirmed: true };
                    return;
                }
                if self.now < retry_at || !self.mandate.lead {
                    return;
                }
                let choice = self.choose_candidate(&f.excluded, f.pinned, true);
                let choice = choice.and_then(|c| match self.next_epoch() {
                    Some(epoch) => Ok((c, epoch)),
                    None => Err(EPOCHS_SPENT.to_owned()),
                });
                let stage = match choice {
                    Ok((candidate, epoch)) => {
                        out.push(Action::PersistEpoch {
                            epoch,
                            primary: candidate,
                        });
                        FailoverStage::Persisting { epoch, candidate }
                    }
                    Err(reason) => FailoverStage::Choosing {
                        reason: Some(reason),
                        retry_at,
                    },
                };
                if let Phase::Failover(f) = &mut self.phase {
                    f.stage = stage;
                }
            }
            FailoverStage::Persisting { .. } => {}
            FailoverStage::Promoting { candidate } => {
                let gone = self
                    .view(candidate)
                    .is_none_or(|v| v.miss_streak >= self.settings.health_threshold);
                if gone {
                    self.abandon_candidate(candidate);
                    self.drive_failover(out);
                }
            }
        }
    }

    /// Whether writes may go to the primary, and if not why.
    pub fn writes(&self) -> WriteState {
        let failed_manual = self.settings.mode == FailoverMode::Manual && self.primary_failed();
        match &self.phase {
            Phase::Loading | Phase::Adopting { .. } => WriteState::Refused(Refusal::NoPrimary),
            Phase::Bootstrapping { reason, .. } => WriteState::Refused(
                reason
                    .clone()
                    .map_or(Refusal::NoPrimary, Refusal::ReadOnly),
            ),
            Phase::Steady { .. } if failed_manual => WriteState::Refused(Refusal::ReadOnly(format!(
                "the primary {} has failed and failover = manual: run SWITCHOVER to promote a replica",
                self.primary.map_or("?", |p| self.name(p))
            ))),
            Phase::Steady { confirmed } => {
                if *confirmed && self.primary_misses < self.settings.health_threshold {
                    WriteState::Open
                } else if *confirmed || self.primary_lost_since.is_some() {
                    WriteState::Refused(Refusal::PrimaryUnreachable)
                } else {
                    WriteState::Refused(Refusal::NoPrimary)
                }
            }
            Phase::Failover(f) => match &f.stage {
                FailoverStage::Choosing {
                    reason: Some(reason),
                    ..
                } => WriteState::Refused(Refusal::ReadOnly(reason.clone())),
                _ => f.writes.clone(),
            },
            Phase::Switchover(_) => WriteState::Paused,
        }
    }

    fn publish_if_changed(&mut self, out: &mut Vec<Action>) {
        let next = Published {
            epoch: self.epoch,
            primary: self.primary,
            writes: self.writes(),
            fenced: self.fenced.clone(),
        };
        if self.published.as_ref() != Some(&next) {
            out.push(Action::PublishTopology(next.clone()));
            self.published = Some(next);
        }
    }
}

impl Failover {
    fn stage_epoch(&self) -> Option<u64> {
        match self.stage {
            FailoverStage::Persisting { epoch, .. } => Some(epoch),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;

//! The failover log the console's `SHOW EVENTS` reads: what changed in
//! each published topology (epoch, primary, writes, a node's role or
//! health) and the operator commands the driver took, the last
//! [`KEPT`] of them, newest last.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use crate::topology::{Topology, WriteState};

/// Events kept; older ones are dropped.
pub const KEPT: usize = 200;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub at: SystemTime,
    /// The epoch it happened in.
    pub epoch: u64,
    /// The node it concerns, if one.
    pub node: Option<String>,
    pub event: String,
}

#[derive(Debug, Default)]
pub struct Journal {
    entries: Mutex<VecDeque<Entry>>,
    /// Failovers, switchovers, fences and rejoins so far (`/metrics`).
    counts: [AtomicU64; 4],
}

/// What the driver counts for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// A failover's new epoch was persisted.
    Failover,
    /// A switchover's new epoch was persisted.
    Switchover,
    /// A node was fenced.
    Fence,
    /// A rejoin was started.
    Rejoin,
}

impl Count {
    pub const ALL: [Count; 4] = [
        Count::Failover,
        Count::Switchover,
        Count::Fence,
        Count::Rejoin,
    ];

    /// The metric's name.
    pub fn name(self) -> &'static str {
        match self {
            Count::Failover => "palisade_failovers",
            Count::Switchover => "palisade_switchovers",
            Count::Fence => "palisade_fences",
            Count::Rejoin => "palisade_rejoins",
        }
    }
}

impl Journal {
    pub fn count(&self, what: Count) {
        self.counts[what as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn counted(&self, what: Count) -> u64 {
        self.counts[what as usize].load(Ordering::Relaxed)
    }

    pub fn record(&self, epoch: u64, node: Option<&str>, event: impl Into<String>) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() == KEPT {
            entries.pop_front();
        }
        entries.push_back(Entry {
            at: SystemTime::now(),
            epoch,
            node: node.map(str::to_owned),
            event: event.into(),
        });
    }

    /// Records what changed from `before` to `after`.
    pub fn record_changes(&self, before: &Topology, after: &Topology) {
        for (node, event) in changes(before, after) {
            self.record(after.epoch, node.as_deref(), event);
        }
    }

    /// The events kept, oldest first.
    pub fn entries(&self) -> Vec<Entry> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.iter().cloned().collect()
    }
}

fn writes(state: &WriteState) -> String {
    match state {
        WriteState::Open => "writes open".into(),
        WriteState::Paused => "writes paused (switchover)".into(),
        WriteState::Refused(why) => format!("writes refused: {why}"),
    }
}

/// What changed, as (node, event).
pub fn changes(before: &Topology, after: &Topology) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    if before.epoch != after.epoch {
        out.push((
            None,
            format!("epoch {} (was {})", after.epoch, before.epoch),
        ));
    }
    if before.leader != after.leader {
        let leader = after.leader.and_then(|l| after.nodes.get(l));
        out.push(match leader {
            Some(n) => (Some(n.name.clone()), "is the epoch's primary".into()),
            None => (None, "no primary".into()),
        });
    }
    if before.writes != after.writes {
        out.push((None, writes(&after.writes)));
    }
    for (b, a) in before.nodes.iter().zip(&after.nodes) {
        if a.removed || b.removed {
            continue;
        }
        if b.role != a.role {
            let event = format!("role {} (was {})", a.role.name(), b.role.name());
            out.push((Some(a.name.clone()), event));
        }
        if b.health() != a.health() {
            let event = format!("{} (was {})", a.health(), b.health());
            out.push((Some(a.name.clone()), event));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;
    use crate::topology::{Refusal, Role};

    #[test]
    fn a_failover_is_recorded_as_what_changed() {
        let nodes: Vec<NodeConfig> = ["a", "b"]
            .iter()
            .map(|n| NodeConfig {
                name: Some((*n).into()),
                host: "h".into(),
                port: 5432,
                weight: 1,
            })
            .collect();
        let mut before = Topology::from_config(&nodes);
        before.leader = Some(0);
        before.nodes[0].role = Role::Primary;
        before.nodes[0].healthy = true;
        before.nodes[1].role = Role::Replica;
        before.nodes[1].healthy = true;
        let mut after = before.clone();
        after.epoch = 1;
        after.leader = Some(1);
        after.writes = WriteState::Refused(Refusal::FailingOver);
        after.nodes[0].healthy = false;
        after.nodes[1].role = Role::Primary;
        let journal = Journal::default();
        journal.record_changes(&before, &after);
        journal.record_changes(&after, &after);
        let got: Vec<(Option<String>, String)> = journal
            .entries()
            .into_iter()
            .map(|e| (e.node, e.event))
            .collect();
        let want = [
            (None, "epoch 1 (was 0)"),
            (Some("b"), "is the epoch's primary"),
            (
                None,
                "writes refused: a failover is promoting a new primary",
            ),
            (Some("a"), "down (was up)"),
            (Some("b"), "role primary (was replica)"),
        ]
        .map(|(n, e)| (n.map(str::to_owned), e.to_owned()));
        assert_eq!(got, want);
    }

    #[test]
    fn only_the_last_events_are_kept() {
        let journal = Journal::default();
        for i in 0..KEPT + 5 {
            journal.record(0, None, i.to_string());
        }
        let entries = journal.entries();
        assert_eq!(entries.len(), KEPT);
        assert_eq!(entries[0].event, "5");
    }
}

//! The topology the driver publishes, read off the failover state machine
//! (pure): epoch, primary, write state and fences from what it last
//! published; each node's role, health and WAL positions from what it
//! knows of the node. Lag is added afterwards ([`super::lag`]), because it
//! needs a clock. Nothing here counts or decides: the state machine did.

use tracing::{info, warn};

use super::failover::State;
use crate::topology::{NodeState, Refusal, Replication, Role, Topology, WriteState};

/// `base` (the configured nodes, as last published) with everything the
/// state machine knows. `broken` refuses writes for a reason of the
/// driver's own (the epoch record could not be loaded).
pub fn snapshot(state: &State, base: &Topology, broken: Option<&str>) -> Topology {
    let mut next = base.clone();
    for (i, node) in next.nodes.iter_mut().enumerate() {
        let Some(view) = state.node(i) else { continue };
        if view.removed {
            *node = NodeState {
                removed: true,
                healthy: false,
                suspect: false,
                fenced: false,
                weight: 0,
                role: Role::Unknown,
                replication: Replication::default(),
                ..node.clone()
            };
            continue;
        }
        node.removed = false;
        node.healthy = view.healthy;
        node.suspect = view.suspect();
        node.fenced = state.fenced().contains(&i);
        let Some(report) = &view.report else { continue };
        node.role = if state.is_primary(i) {
            Role::Primary
        } else {
            Role::Replica
        };
        node.replication = Replication {
            lsn: report.lsn,
            receive_lsn: report.receive_lsn,
            streaming: report.receiver.streaming,
            // Worked out against the primary when published.
            lag_bytes: node.replication.lag_bytes,
            lag_ms: node.replication.lag_ms,
        };
    }
    if let Some(p) = state.published() {
        next.epoch = p.epoch;
        next.leader = p.primary;
        next.writes = p.writes.clone();
    }
    if let Some(reason) = broken {
        next.leader = None;
        next.writes = WriteState::Refused(Refusal::ReadOnly(reason.to_owned()));
    }
    next
}

/// Logs the nodes that came up, fell under suspicion or went down, or
/// whose WAL receiver started or stopped, between two snapshots.
pub fn log_changes(before: &Topology, after: &Topology) {
    for (b, a) in before.nodes.iter().zip(&after.nodes) {
        if a.removed || b.removed {
            continue;
        }
        if b.healthy == a.healthy && b.role == a.role {
            if a.suspect && !b.suspect {
                warn!(node = %a.name, role = ?a.role, "node missed a probe: suspect, no new reads");
            } else if b.suspect && !a.suspect && a.healthy {
                info!(node = %a.name, role = ?a.role, "node answers again");
            }
            if b.replication.streaming != a.replication.streaming {
                info!(node = %a.name, streaming = a.replication.streaming, "WAL receiver changed");
            }
        } else if a.healthy {
            info!(node = %a.name, role = ?a.role, was = ?b.role, "node is up");
        } else {
            warn!(node = %a.name, role = ?a.role, "node is down");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FailoverMode, ReplicationMode};
    use crate::control::epoch::EpochRecord;
    use crate::control::failover::{step, Event, NodeAddr, Probe, Report, Settings};
    use crate::topology::Lsn;

    fn settings() -> Settings {
        Settings {
            nodes: (0..2)
                .map(|i| NodeAddr {
                    name: format!("n{i}"),
                    host: "h".into(),
                    port: 5432 + i as u16,
                })
                .collect(),
            mode: FailoverMode::Automatic,
            replication_mode: ReplicationMode::Async,
            failover_timeout_ms: 1_000,
            max_lag_on_failover_bytes: 1 << 20,
            auto_rejoin: false,
            health_threshold: 2,
            shared: false,
        }
    }

    fn base() -> Topology {
        Topology {
            epoch: 0,
            leader: None,
            writes: WriteState::Refused(Refusal::NoPrimary),
            nodes: (0..2)
                .map(|i| NodeState {
                    name: format!("n{i}"),
                    host: "h".into(),
                    port: 5432 + i as u16,
                    role: Role::Unknown,
                    healthy: false,
                    suspect: false,
                    weight: 1,
                    replication: Replication::default(),
                    fenced: false,
                    removed: false,
                })
                .collect(),
        }
    }

    fn answer(in_recovery: bool, lsn: u64) -> Probe {
        Probe::Reachable(Report {
            in_recovery,
            lsn: Some(Lsn(lsn)),
            receive_lsn: in_recovery.then_some(Lsn(lsn)),
            ..Report::default()
        })
    }

    #[test]
    fn the_snapshot_shows_what_the_state_machine_knows() {
        let record = EpochRecord {
            epoch: 3,
            primary: "n0".into(),
        };
        let (state, _) = step(State::new(settings()), Event::Loaded(Some(record)));
        let t = snapshot(&state, &base(), None);
        assert_eq!(t.nodes, base().nodes, "nothing heard yet");
        let (state, _) = step(
            state,
            Event::Probe {
                node: 0,
                at: 1,
                result: answer(false, 500),
            },
        );
        let (state, _) = step(
            state,
            Event::Probe {
                node: 1,
                at: 1,
                result: answer(true, 300),
            },
        );
        let t = snapshot(&state, &base(), None);
        assert_eq!((t.epoch, t.leader, t.primary()), (3, Some(0), Some(0)));
        assert_eq!(t.writes, WriteState::Open);
        assert_eq!(t.primary_lsn(), Some(Lsn(500)));
        assert_eq!(t.nodes[1].role, Role::Replica);
        assert!(t.nodes[1].healthy);
        assert_eq!(t.nodes[1].replication.receive_lsn, Some(Lsn(300)));
        // One lost probe of two: still up but suspect at once, and what
        // was known is kept.
        let missed = |state, at| {
            step(
                state,
                Event::Probe {
                    node: 1,
                    at,
                    result: Probe::Unreachable,
                },
            )
            .0
        };
        let state = missed(state, 2);
        let after = snapshot(&state, &t, None);
        assert!(after.nodes[1].healthy && after.nodes[1].suspect);
        assert_eq!(
            NodeState {
                suspect: false,
                ..after.nodes[1].clone()
            },
            t.nodes[1]
        );
        // An answer clears the suspicion; two misses in a row make it down.
        let (again, _) = step(
            state.clone(),
            Event::Probe {
                node: 1,
                at: 3,
                result: answer(true, 300),
            },
        );
        assert_eq!(snapshot(&again, &t, None).nodes[1], t.nodes[1]);
        let down = snapshot(&missed(state.clone(), 3), &t, None);
        assert!(!down.nodes[1].healthy && !down.nodes[1].suspect);
        let broken = snapshot(&state, &t, Some("no state file"));
        assert_eq!((broken.leader, broken.primary()), (None, None));
        assert_eq!(
            broken.writes,
            WriteState::Refused(Refusal::ReadOnly("no state file".into()))
        );
    }
}

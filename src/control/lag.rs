//! Replication lag, worked out by the driver when it publishes: each
//! replica's distance from the healthy primary's WAL position in bytes, and
//! how long its data has been stale, from a short history of the primary's
//! positions ([`WalHistory`]), so that an idle primary never makes its
//! replicas look stale. Pure but for the history it extends and the
//! moment it is given.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::topology::{Lsn, Role, Topology};

/// The primary's WAL positions over the last while, each with the moment it
/// was first seen: when the primary first went past a position tells how
/// long a replica that stopped there has been stale.
#[derive(Debug, Default)]
pub struct WalHistory {
    /// Oldest first; positions strictly increasing.
    samples: VecDeque<(Instant, Lsn)>,
}

/// Samples kept: at four probes a second, over an hour of a busy primary;
/// a replica further behind has its lag counted from the oldest one kept.
const HISTORY_SAMPLES: usize = 16_384;

impl WalHistory {
    /// Notes that the primary's WAL was at `lsn` at `now`.
    pub fn record(&mut self, now: Instant, lsn: Lsn) {
        match self.samples.back() {
            Some(&(_, last)) if lsn <= last => {
                // Unchanged, or a new primary whose WAL is behind the old
                // one's (after a failover): start over from it.
                if lsn < last {
                    self.samples.clear();
                    self.samples.push_back((now, lsn));
                }
            }
            _ => {
                if self.samples.len() == HISTORY_SAMPLES {
                    self.samples.pop_front();
                }
                self.samples.push_back((now, lsn));
            }
        }
    }

    /// How long data replayed up to `replay` has been stale at `now`: since
    /// the primary was first seen past it. Zero when the primary has
    /// written nothing beyond it; `None` before the primary was seen.
    pub fn staleness(&self, replay: Lsn, now: Instant) -> Option<Duration> {
        let &(_, newest) = self.samples.back()?;
        if replay >= newest {
            return Some(Duration::ZERO);
        }
        let first_past = self.samples.partition_point(|&(_, lsn)| lsn <= replay);
        let (since, _) = self.samples[first_past.min(self.samples.len() - 1)];
        Some(now.saturating_duration_since(since))
    }
}

/// Works out every replica's lag against the healthy primary's position
/// (pure but for the history it extends). Without a known primary position
/// lags are unknown, which `bounded` reads treat as too stale.
pub fn measure_lag(topology: &mut Topology, history: &mut WalHistory, now: Instant) {
    let primary_lsn = topology.primary_lsn();
    if let Some(lsn) = primary_lsn {
        history.record(now, lsn);
    }
    for node in &mut topology.nodes {
        let r = &mut node.replication;
        let (bytes, ms) = match (node.role, primary_lsn, r.lsn) {
            (Role::Primary, _, _) => (None, None),
            (_, Some(primary), Some(replay)) => (
                Some(primary.0.saturating_sub(replay.0)),
                history
                    .staleness(replay, now)
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            ),
            _ => (None, None),
        };
        r.lag_bytes = bytes;
        r.lag_ms = ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{NodeState, Replication};

    fn topo() -> Topology {
        let node = |i: usize, role| NodeState {
            name: format!("n{i}"),
            host: "h".into(),
            port: 1,
            role,
            healthy: true,
            suspect: false,
            weight: 1,
            replication: Replication::default(),
            fenced: false,
            removed: false,
        };
        Topology {
            epoch: 1,
            leader: Some(0),
            writes: Default::default(),
            nodes: vec![node(0, Role::Primary), node(1, Role::Replica)],
        }
    }

    fn at(t: &mut Topology, node: usize, lsn: u64) {
        t.nodes[node].replication.lsn = Some(Lsn(lsn));
    }

    #[test]
    fn staleness_counts_from_when_the_primary_first_went_past_the_replica() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut h = WalHistory::default();
        assert_eq!(h.staleness(Lsn(1), t0), None, "no primary position yet");
        h.record(ms(0), Lsn(100));
        h.record(ms(250), Lsn(100));
        h.record(ms(500), Lsn(200));
        h.record(ms(750), Lsn(300));
        assert_eq!(
            h.staleness(Lsn(300), ms(10_000)),
            Some(Duration::ZERO),
            "caught up"
        );
        assert_eq!(
            h.staleness(Lsn(400), ms(10_000)),
            Some(Duration::ZERO),
            "ahead of the sample"
        );
        assert_eq!(
            h.staleness(Lsn(200), ms(1_000)),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            h.staleness(Lsn(150), ms(1_000)),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            h.staleness(Lsn(100), ms(1_000)),
            Some(Duration::from_millis(500)),
            "the unchanged sample is not a new one"
        );
        assert_eq!(
            h.staleness(Lsn(10), ms(1_000)),
            Some(Duration::from_millis(1_000)),
            "from the oldest sample kept"
        );
        // A new primary behind the old one's position starts the history over.
        h.record(ms(2_000), Lsn(50));
        assert_eq!(
            h.staleness(Lsn(10), ms(2_100)),
            Some(Duration::from_millis(100))
        );
    }

    #[test]
    fn an_idle_primary_leaves_a_caught_up_replica_at_zero_lag() {
        let t0 = Instant::now();
        let mut history = WalHistory::default();
        let mut t = topo();
        for step in 0..40u64 {
            let now = t0 + Duration::from_millis(250 * step);
            // The primary writes during the first second, then idles.
            at(&mut t, 0, 1_000 + 100 * step.min(4));
            // The replica replays a probe behind.
            at(&mut t, 1, 1_000 + 100 * step.saturating_sub(1).min(4));
            measure_lag(&mut t, &mut history, now);
            let r = t.nodes[1].replication;
            if step < 5 {
                assert!(r.lag_bytes.unwrap() <= 100, "step {step}: {r:?}");
            } else {
                assert_eq!(
                    (r.lag_bytes, r.lag_ms),
                    (Some(0), Some(0)),
                    "idle at step {step}"
                );
            }
        }
        assert_eq!(
            t.nodes[0].replication.lag_ms, None,
            "the primary has no lag"
        );
    }

    #[test]
    fn a_stuck_replica_grows_stale_while_the_primary_writes() {
        let t0 = Instant::now();
        let mut history = WalHistory::default();
        let mut t = topo();
        at(&mut t, 1, 1_000);
        for step in 0..8u64 {
            at(&mut t, 0, 1_000 + 10 * step);
            measure_lag(&mut t, &mut history, t0 + Duration::from_millis(250 * step));
        }
        let r = t.nodes[1].replication;
        assert_eq!(r.lag_bytes, Some(70));
        assert_eq!(
            r.lag_ms,
            Some(1_500),
            "since the primary passed 1000 at 250 ms"
        );
        // Without a healthy primary, lag is unknown.
        t.nodes[0].healthy = false;
        measure_lag(&mut t, &mut history, t0 + Duration::from_secs(3));
        let r = t.nodes[1].replication;
        assert_eq!((r.lag_bytes, r.lag_ms), (None, None));
    }
}

//! What probes tell the state machine: each node's health (it flips only
//! after `health_threshold` results in a row; a node never heard from
//! before counts as up on first contact), its last report (kept while it
//! is unreachable), whether it answers as a primary, and how long the
//! primary of the epoch has not.

use super::{NodeId, Probe, Report, State, Task};

impl State {
    /// Whether `node` answers as a primary, as far as the state machine
    /// knows: its last report said so, or it was promoted since.
    pub fn is_primary(&self, node: NodeId) -> bool {
        self.promoted == Some(node)
            || self
                .view(node)
                .and_then(|v| v.report.as_ref())
                .is_some_and(|r| !r.in_recovery)
    }

    pub(super) fn observe(&mut self, node: NodeId, at: u64, result: Probe) {
        let fenced = self.fenced.contains(&node);
        let Some(view) = self.nodes.get_mut(node).filter(|v| !v.removed) else {
            return;
        };
        if view.probed_at.is_some_and(|last| at < last) {
            return; // an answer overtaken by a newer one
        }
        let was_reachable = view.reachable;
        let threshold = self.settings.health_threshold;
        view.probed_at = Some(at);
        match result {
            Probe::Unreachable => {
                view.reachable = false;
                view.ok_streak = 0;
                view.miss_streak = view.miss_streak.saturating_add(1);
                if view.miss_streak >= threshold {
                    view.healthy = false;
                }
            }
            Probe::Reachable(report) => {
                // A fenced node seen again may have been restarted, or could
                // not be fenced while it was away: fence it now.
                let again = matches!(view.fence, Task::Done | Task::Failed { .. });
                if fenced && !was_reachable && !report.in_recovery && again {
                    view.fence = Task::Needed;
                }
                view.reachable = true;
                view.miss_streak = 0;
                view.ok_streak = view.ok_streak.saturating_add(1);
                // First contact counts at once: there is no health to keep.
                if view.report.is_none() || view.ok_streak >= threshold {
                    view.healthy = true;
                }
                view.report = Some(report);
            }
        }
        // A probe sent before the promotion finished may still say "in
        // recovery": only an answer as a primary, or none, replaces it.
        if self.promoted == Some(node) && !view.answering_as_replica() {
            self.promoted = None;
        }
        if self.primary == Some(node) {
            self.observe_primary(node, at);
        }
    }

    fn observe_primary(&mut self, node: NodeId, at: u64) {
        let Some(view) = self.view(node) else {
            return;
        };
        if view.answering_as_primary() {
            let lsn = view.report.as_ref().map(Report::wal).unwrap_or_default();
            self.last_primary_lsn = match self.last_primary_lsn {
                Some((epoch, seen)) if epoch == self.epoch => Some((epoch, seen.max(lsn))),
                _ => Some((self.epoch, lsn)),
            };
            self.primary_lost_since = None;
            self.primary_misses = 0;
        } else {
            self.primary_lost_since.get_or_insert(at);
            self.primary_misses = self.primary_misses.saturating_add(1);
        }
    }
}

//! Failure detection and the choice of a replacement: when the primary
//! counts as failed (silent for `failover_timeout` and confirmed by the
//! replicas), and which replica may be promoted.

use std::collections::BTreeSet;

use super::{NodeId, Phase, Report, State};
use crate::config::ReplicationMode;

impl State {
    /// Whether a replica's receiver streams from `node` (an unknown upstream
    /// counts as `node`).
    pub(super) fn streams_from(&self, report: &Report, node: NodeId) -> bool {
        report.receiver.streaming
            && report
                .receiver
                .upstream
                .as_ref()
                .and_then(|u| self.settings.resolve(u))
                .is_none_or(|n| n == node)
    }

    pub(super) fn primary_open(&self) -> Option<NodeId> {
        let primary = self.primary?;
        let up = matches!(self.phase, Phase::Steady { confirmed: true })
            && self.view(primary)?.answering_as_primary();
        up.then_some(primary)
    }

    /// The primary has not answered for `failover_timeout`, and every
    /// replica heard from since then has stopped streaming from it.
    pub(super) fn primary_failed(&self) -> bool {
        let (Some(primary), Some(since)) = (self.primary, self.primary_lost_since) else {
            return false;
        };
        if self.now.saturating_sub(since) < self.timeout() {
            return false;
        }
        let mut voters = self.nodes.iter().enumerate().filter(|(id, v)| {
            *id != primary
                && !self.fenced.contains(id)
                && v.answering_as_replica()
                && v.probed_at.is_some_and(|at| at >= since)
        });
        let mut any = false;
        let confirmed = voters.all(|(_, v)| {
            any = true;
            v.report
                .as_ref()
                .is_some_and(|r| !self.streams_from(r, primary))
        });
        any && confirmed
    }

    /// Why `node` may not be promoted now, if it may not.
    pub(super) fn ineligible(&self, node: NodeId, excluded: &BTreeSet<NodeId>) -> Option<String> {
        let name = self.name(node);
        let Some(view) = self.view(node) else {
            return Some(format!("there is no node {node}"));
        };
        let why = if view.removed {
            "it was removed from the configuration"
        } else if Some(node) == self.primary {
            "it is the primary"
        } else if self.fenced.contains(&node) {
            "it is fenced"
        } else if excluded.contains(&node) {
            "it failed to promote"
        } else if !view.answering_as_replica() {
            "it is not a reachable replica"
        } else if view.ok_streak < self.settings.health_threshold {
            "it has not answered enough probes in a row to count as healthy"
        } else if self.settings.replication_mode != ReplicationMode::Async
            && !self.sync_standbys.contains(&node)
        {
            "it was not a synchronous standby"
        } else {
            return None;
        };
        Some(format!("{name} cannot be promoted: {why}"))
    }

    /// The healthy replica with the most WAL, unless (when `lag_matters`)
    /// it lacks too much of what the primary last had.
    pub(super) fn choose_candidate(
        &self,
        excluded: &BTreeSet<NodeId>,
        pinned: Option<NodeId>,
        lag_matters: bool,
    ) -> Result<NodeId, String> {
        if let Some(pinned) = pinned {
            if let Some(why) = self.ineligible(pinned, excluded) {
                return Err(why);
            }
        }
        let best = (0..self.nodes.len())
            .filter(|n| pinned.is_none_or(|p| p == *n))
            .filter(|n| self.ineligible(*n, excluded).is_none())
            .filter_map(|n| Some((self.view(n)?.report.as_ref()?.position(), n)))
            .max_by_key(|(position, n)| (*position, std::cmp::Reverse(*n)));
        let Some((position, node)) = best else {
            return Err(match self.settings.replication_mode {
                ReplicationMode::Async => "no healthy replica can be promoted".to_owned(),
                _ => "no healthy replica that was a synchronous standby can be promoted".to_owned(),
            });
        };
        let reference = self
            .last_primary_lsn
            .map(|(_, lsn)| lsn)
            .unwrap_or(position);
        let behind = reference.0.saturating_sub(position.0);
        if lag_matters && behind > self.settings.max_lag_on_failover_bytes {
            return Err(format!(
                "the best replica {} is {behind} bytes behind the primary's last known position {reference}, more than max_lag_on_failover_bytes ({})",
                self.name(node),
                self.settings.max_lag_on_failover_bytes
            ));
        }
        Ok(node)
    }
}

//! Sharing the epoch with other proxies (`store = "etcd"`): an epoch
//! another proxy made durable is taken over as it stands, and what this
//! proxy may decide comes from its [`super::Mandate`].

use super::{EpochRecord, Phase, State, Task};

impl State {
    /// Takes over a newer epoch made durable by another proxy: its primary
    /// is the only one that may take writes, and the one it replaced is
    /// fenced at once. The leader that wrote it promotes and fences; this
    /// proxy only routes by it.
    pub(super) fn learn(&mut self, record: EpochRecord) {
        if record.epoch <= self.epoch || self.phase == Phase::Loading {
            return;
        }
        let Some(primary) = self.settings.node_named(&record.primary) else {
            return;
        };
        self.epoch = record.epoch;
        self.issued_epoch = self.issued_epoch.max(record.epoch);
        if self.fenced.remove(&primary) {
            if let Some(view) = self.nodes.get_mut(primary) {
                view.fence = Task::Idle;
            }
        }
        if let Some(old) = self.primary.filter(|old| *old != primary) {
            self.fence(old);
        }
        self.promoted = None;
        self.set_primary(primary);
        let confirmed = self
            .view(primary)
            .is_some_and(super::NodeView::answering_as_primary);
        self.phase = Phase::Steady { confirmed };
    }

    /// Whether this proxy decides (always, alone); a proxy that does not
    /// hands operator commands to the one that does.
    pub fn leads(&self) -> bool {
        self.mandate.lead
    }

    /// Whether this proxy has lost the primary: it has not answered as a
    /// primary since its last probes. What it reports to its peers.
    pub fn primary_lost(&self) -> bool {
        self.primary.is_some() && self.primary_lost_since.is_some()
    }
}

//! Per-node counters kept by the data plane: requests in flight (for the
//! least-outstanding balancer) and requests routed (for the admin view).
//! Plain atomics: every session updates them, nobody waits on them.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

#[derive(Debug)]
pub struct NodeLoads {
    outstanding: Vec<AtomicU32>,
    routed: Vec<AtomicU64>,
}

impl NodeLoads {
    pub fn new(nodes: usize) -> NodeLoads {
        NodeLoads {
            outstanding: (0..nodes).map(|_| AtomicU32::new(0)).collect(),
            routed: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// `requests` were sent to `node`.
    pub fn sent(&self, node: usize, requests: u32) {
        if let (Some(o), Some(r)) = (self.outstanding.get(node), self.routed.get(node)) {
            o.fetch_add(requests, Ordering::Relaxed);
            r.fetch_add(u64::from(requests), Ordering::Relaxed);
        }
    }

    /// `requests` sent to `node` were answered (or abandoned).
    pub fn done(&self, node: usize, requests: u32) {
        if let Some(o) = self.outstanding.get(node) {
            // Never below zero, whatever the order of updates.
            let _ = o.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(requests))
            });
        }
    }

    pub fn outstanding(&self, node: usize) -> u32 {
        self.outstanding
            .get(node)
            .map_or(0, |o| o.load(Ordering::Relaxed))
    }

    pub fn routed(&self, node: usize) -> u64 {
        self.routed
            .get(node)
            .map_or(0, |r| r.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_in_flight_and_routed_requests() {
        let loads = NodeLoads::new(2);
        loads.sent(1, 3);
        loads.done(1, 1);
        assert_eq!(loads.outstanding(1), 2);
        assert_eq!(loads.routed(1), 3);
        loads.done(1, 5);
        assert_eq!(loads.outstanding(1), 0);
        // Out of range is ignored, not a panic.
        loads.sent(7, 1);
        assert_eq!(loads.outstanding(7), 0);
    }
}

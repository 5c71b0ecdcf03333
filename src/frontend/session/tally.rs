//! What a session did (requests answered, bytes moved to and from the
//! client) for its last log line, and what of it the proxy-wide counters
//! for `/metrics` have been told.

use std::time::Instant;

use super::Session;

/// Requests answered and bytes moved to and from the client; what of
/// them the proxy-wide counters have been told; when the request being
/// routed became due.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Tally {
    pub(super) requests: u64,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    told: (u64, u64),
    /// When the request being routed became due.
    pub(super) due_at: Option<Instant>,
}

impl Session {
    /// Adds what the session relayed since it last said to the proxy-wide
    /// counters (at transaction ends and when it ends).
    pub(super) fn tell_counters(&mut self) {
        let t = &mut self.tally;
        let (bytes_in, bytes_out) = t.told;
        self.shared
            .counters
            .relayed(t.bytes_in - bytes_in, t.bytes_out - bytes_out);
        t.told = (t.bytes_in, t.bytes_out);
    }
}

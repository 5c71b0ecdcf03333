//! The PostgreSQL wire protocol, as much of it as a relay needs.
//!
//! Frames are checked before they are parsed and every length is capped
//! ([`scan`]); the startup packets that precede framing are read by
//! [`startup`]; the few messages Palisade writes itself (errors, the startup
//! reply, ReadyForQuery) are encoded with pgwire's message types in
//! [`messages`]. Everything else crosses the proxy as raw bytes.

pub mod messages;
pub mod scan;
pub mod startup;

pub use messages::Sqlstate;
pub use scan::{take_frame, FrameScanner, ScanError};

/// A transaction status as ReadyForQuery reports it. Decoded here once:
/// everything past the protocol holds this, never the byte.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TxnStatus {
    #[default]
    Idle,
    InTransaction,
    Failed,
}

impl TxnStatus {
    /// The status in a ReadyForQuery body; `None` when it holds none of
    /// the three.
    pub fn of_ready(body: &[u8]) -> Option<TxnStatus> {
        match body.first() {
            Some(b'I') => Some(TxnStatus::Idle),
            Some(b'T') => Some(TxnStatus::InTransaction),
            Some(b'E') => Some(TxnStatus::Failed),
            _ => None,
        }
    }

    /// The status byte of a ReadyForQuery body (anything unknown is idle,
    /// as PostgreSQL sends only these three).
    pub fn from_byte(b: u8) -> TxnStatus {
        match b {
            b'T' => TxnStatus::InTransaction,
            b'E' => TxnStatus::Failed,
            _ => TxnStatus::Idle,
        }
    }
}

/// Reads a big-endian i32 from the first four bytes of `b`.
///
/// Callers check the length first; a short slice reads as zero-padded.
pub fn be_i32(b: &[u8]) -> i32 {
    let mut word = [0u8; 4];
    let n = b.len().min(4);
    word[..n].copy_from_slice(&b[..n]);
    i32::from_be_bytes(word)
}

/// Splits a NUL-terminated string off the front of `b`.
pub fn cstr(b: &[u8]) -> Option<(&str, &[u8])> {
    // Statement and portal names are mostly empty: one look settles
    // those without setting up a vector search.
    let end = match b.first() {
        Some(0) => 0,
        _ => memchr::memchr(0, b)?,
    };
    let s = std::str::from_utf8(&b[..end]).ok()?;
    Some((s, &b[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_for_query_bodies_decode() {
        assert_eq!(TxnStatus::of_ready(b"I"), Some(TxnStatus::Idle));
        assert_eq!(TxnStatus::of_ready(b"T"), Some(TxnStatus::InTransaction));
        assert_eq!(TxnStatus::of_ready(b"E"), Some(TxnStatus::Failed));
        assert_eq!(TxnStatus::of_ready(b"X"), None);
        assert_eq!(TxnStatus::of_ready(b""), None);
        assert_eq!(TxnStatus::from_byte(b'X'), TxnStatus::Idle);
    }

    #[test]
    fn strings_end_at_their_nul_wherever_it_is() {
        for len in [0, 1, 2, 100] {
            let mut b = vec![b'a'; len];
            b.extend_from_slice(b"\0rest");
            let (s, rest) = cstr(&b).unwrap_or_else(|| panic!("length {len}"));
            assert_eq!((s.len(), rest), (len, &b"rest"[..]), "length {len}");
            // Without the NUL there is no string, however long.
            assert_eq!(cstr(&b[..len]), None, "length {len}, unterminated");
        }
        assert_eq!(cstr(b"\xff\0"), None, "not UTF-8");
    }
}

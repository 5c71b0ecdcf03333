//! The published view of the cluster: which node is the primary of the
//! current epoch, which are replicas, whether each is healthy and how far
//! each replica has got, which nodes are fenced, and whether writes are open.
//!
//! The control plane is the only writer; it publishes a whole new snapshot
//! through [`TopologyHandle`] and the data plane reads whichever snapshot is
//! current when it routes. A snapshot is never mutated in place.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::NodeConfig;

/// What a node is, as last seen by the monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
    /// Never reached yet, so its role is not known.
    Unknown,
}

/// A WAL position (PostgreSQL's `pg_lsn`) as a byte offset; written
/// `X/Y` in hex like PostgreSQL writes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The text is not a `pg_lsn` (`X/Y`, each 1 to 8 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid WAL position {0:?}: expected the form X/Y in hex, e.g. 0/3000060")]
pub struct BadLsn(pub String);

impl FromStr for Lsn {
    type Err = BadLsn;

    fn from_str(s: &str) -> Result<Lsn, BadLsn> {
        let bad = || BadLsn(s.to_owned());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let half = |part: &str| {
            let ok = (1..=8).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_hexdigit());
            ok.then(|| u64::from_str_radix(part, 16).ok()).flatten()
        };
        match (half(hi), half(lo)) {
            (Some(hi), Some(lo)) => Ok(Lsn(hi << 32 | lo)),
            _ => Err(bad()),
        }
    }
}

/// Where a node's WAL stands, as last probed. Everything is `None` (and
/// `streaming` false) until a probe has told.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replication {
    /// The primary's current WAL position; a replica's replay position
    /// (what its queries can see).
    pub lsn: Option<Lsn>,
    /// A replica's last received (flushed) WAL position.
    pub receive_lsn: Option<Lsn>,
    /// A replica's WAL receiver is streaming from a primary.
    pub streaming: bool,
    /// How far a replica's replay is behind the primary's WAL, in bytes.
    pub lag_bytes: Option<u64>,
    /// How long a replica's data has been stale: now minus the time the
    /// primary first went past the replica's replay position. Zero once
    /// the replica has replayed all the primary has written, however long
    /// the primary has been idle.
    pub lag_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub role: Role,
    pub healthy: bool,
    /// Share of reads while a replica (from config); 0 never serves reads as one.
    pub weight: u32,
    pub replication: Replication,
    /// Receives no traffic at all: a node that claims to be a primary but
    /// is not the primary of the current epoch.
    pub fenced: bool,
}

/// Whether the primary of the epoch takes writes now. The failover state
/// machine decides it; the data plane routes by it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum WriteState {
    #[default]
    Open,
    /// A planned switchover: writes wait for the new primary, they do not fail.
    Paused,
    /// Writes fail, for this reason.
    Refused(Refusal),
}

/// Why writes are refused. Its text is what clients are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not yet known which node is the primary.
    NoPrimary,
    /// The proxy cannot reach the primary (08006 to writes); no failover
    /// while the replicas still stream from it.
    PrimaryUnreachable,
    /// A failover is promoting a replica.
    FailingOver,
    /// The cluster stays read-only until an operator acts, for this reason.
    ReadOnly(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::NoPrimary => "no primary is known yet",
            Refusal::PrimaryUnreachable => "the primary is unreachable from the proxy (its replicas still stream from it, so it is not failed over)",
            Refusal::FailingOver => "a failover is promoting a new primary",
            Refusal::ReadOnly(reason) => reason,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Bumped by every promotion; persisted before it is published.
    pub epoch: u64,
    /// The primary of the epoch, as the failover state machine decided:
    /// the only node that may receive writes.
    pub leader: Option<usize>,
    pub writes: WriteState,
    pub nodes: Vec<NodeState>,
}

impl Topology {
    /// The starting view: every configured node, role unknown, unhealthy.
    pub fn from_config(nodes: &[NodeConfig]) -> Topology {
        Topology {
            epoch: 0,
            leader: None,
            writes: WriteState::Refused(Refusal::NoPrimary),
            nodes: nodes
                .iter()
                .map(|n| NodeState {
                    name: n.display_name(),
                    host: n.host.clone(),
                    port: n.port,
                    role: Role::Unknown,
                    healthy: false,
                    weight: n.weight,
                    replication: Replication::default(),
                    fenced: false,
                })
                .collect(),
        }
    }

    /// The primary of the epoch while it is healthy, answers as a primary
    /// and is not fenced. (Whether it takes writes now is [`Self::writes`].)
    pub fn primary(&self) -> Option<usize> {
        let i = self.leader?;
        let n = self.nodes.get(i)?;
        (n.healthy && n.role == Role::Primary && !n.fenced).then_some(i)
    }

    /// The healthy primary's current WAL position, when probed.
    pub fn primary_lsn(&self) -> Option<Lsn> {
        self.nodes.get(self.primary()?)?.replication.lsn
    }
}

/// Shared handle: the control plane stores, the data plane loads.
#[derive(Debug, Clone)]
pub struct TopologyHandle(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    current: ArcSwap<Topology>,
    /// Bumped when the epoch or the fenced nodes change, so that sessions
    /// holding a connection to a node just fenced let go of it at once.
    fences: watch::Sender<u64>,
}

impl TopologyHandle {
    pub fn new(initial: Topology) -> TopologyHandle {
        TopologyHandle(Arc::new(Shared {
            current: ArcSwap::from_pointee(initial),
            fences: watch::channel(0).0,
        }))
    }

    pub fn load(&self) -> Arc<Topology> {
        self.0.current.load_full()
    }

    /// Changes whenever a node is fenced or unfenced or the epoch moves.
    pub fn fence_changes(&self) -> watch::Receiver<u64> {
        self.0.fences.subscribe()
    }

    /// Only the control plane's driver calls this.
    pub(crate) fn publish(&self, topology: Topology) {
        let before = self.0.current.swap(Arc::new(topology));
        let after = self.0.current.load();
        let fenced = |t: &Topology| t.nodes.iter().map(|n| n.fenced).collect::<Vec<_>>();
        if before.epoch != after.epoch || fenced(&before) != fenced(&after) {
            self.0.fences.send_modify(|n| *n += 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_reads_and_writes_like_postgresql() {
        for (text, value) in [
            ("0/0", 0),
            ("0/3000060", 0x0300_0060),
            ("16/B374D848", 0x16_B374_D848),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
        ] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn, Lsn(value), "{text}");
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!(" 0/a ".parse(), Ok(Lsn(10)), "lower case and blanks");
        for bad in [
            "",
            "0",
            "/1",
            "1/",
            "x/1",
            "1/2/3",
            "123456789/0",
            "-1/0",
            "+1/0",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} accepted");
        }
        assert!(Lsn(1) < Lsn(0x1_0000_0000));
    }
}

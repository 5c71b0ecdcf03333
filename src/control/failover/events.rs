//! What goes in and out of the state machine: the settings it runs with,
//! the events it is fed (probe results, ticks, outcomes, operator commands)
//! and the actions and published snapshot it answers with.

use std::collections::BTreeSet;

use super::NodeId;
use crate::config::{Config, FailoverMode, ReplicationMode, StoreKind};
use crate::control::epoch::EpochRecord;
use crate::topology::{Lsn, WriteState};

/// How a node is known: its configured name (persisted) and address (what
/// replicas name as their upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddr {
    pub name: String,
    pub host: String,
    pub port: u16,
}

/// What the state machine needs from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub nodes: Vec<NodeAddr>,
    pub mode: FailoverMode,
    pub replication_mode: ReplicationMode,
    /// How long the primary must have failed to answer before it may be
    /// declared failed; also the longest a switchover pauses writes, and the
    /// pause before a failed action is retried.
    pub failover_timeout_ms: u64,
    pub max_lag_on_failover_bytes: u64,
    pub auto_rejoin: bool,
    /// Probe results in a row before a node counts as healthy (a candidate)
    /// or a primary's misses refuse writes.
    pub health_threshold: u32,
    /// The epoch is shared with other proxies (`store = "etcd"`): this one
    /// decides only with a [`Mandate`] from them.
    pub shared: bool,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        let f = &config.failover;
        Settings {
            nodes: config
                .nodes
                .iter()
                .map(|n| NodeAddr {
                    name: n.display_name(),
                    host: n.host.clone(),
                    port: n.port,
                })
                .collect(),
            mode: f.mode,
            replication_mode: f.replication_mode,
            failover_timeout_ms: f.failover_timeout_ms,
            max_lag_on_failover_bytes: f.max_lag_on_failover_bytes,
            auto_rejoin: f.auto_rejoin,
            health_threshold: config.monitor.health_threshold.max(1),
            shared: f.store == StoreKind::Etcd,
        }
    }

    pub fn node_name(&self, node: NodeId) -> Option<&str> {
        self.nodes.get(node).map(|n| n.name.as_str())
    }

    pub(super) fn node_named(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.name == name)
    }

    pub(super) fn resolve(&self, upstream: &Upstream) -> Option<NodeId> {
        match upstream {
            Upstream::Node(node) => (*node < self.nodes.len()).then_some(*node),
            Upstream::Addr { host, port } => self
                .nodes
                .iter()
                .position(|n| n.host == *host && n.port == *port),
        }
    }
}

/// Where a replica's WAL receiver streams from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    Node(NodeId),
    /// As `pg_stat_wal_receiver` names it; matched against the nodes.
    Addr {
        host: String,
        port: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WalReceiver {
    pub streaming: bool,
    /// `None` when not known; a streaming receiver with an unknown or
    /// unmatched upstream is taken to stream from the primary (the cautious
    /// reading: it keeps the primary alive).
    pub upstream: Option<Upstream>,
}

/// What a node that answered a probe said about itself: the one report
/// the monitor sends, the state machine keeps, and the snapshot shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub in_recovery: bool,
    /// A primary's current WAL (write) position; a replica's replay
    /// position. `None` when the node did not say.
    pub lsn: Option<Lsn>,
    /// A replica's last WAL position received and flushed.
    pub receive_lsn: Option<Lsn>,
    pub receiver: WalReceiver,
    /// A primary's standbys that may acknowledge synchronous commits
    /// (`sync_state` sync or quorum), by application name.
    pub sync_standbys: Vec<String>,
    /// A primary's timeline (of its current WAL); `None` for a replica or
    /// when not known. Promotion moves a node to a newer timeline.
    pub timeline: Option<u32>,
}

impl Report {
    /// The WAL position reported, 0 when none was.
    pub(super) fn wal(&self) -> Lsn {
        self.lsn.unwrap_or_default()
    }

    /// How much WAL the node holds: what it would have if promoted now.
    pub(super) fn position(&self) -> Lsn {
        self.wal().max(self.receive_lsn.unwrap_or(self.wal()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// No answer within the probe timeout (down, hung, or cut off).
    Unreachable,
    Reachable(Report),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The persisted record, read once at start; nothing is decided before.
    Loaded(Option<EpochRecord>),
    Probe {
        node: NodeId,
        at: u64,
        result: Probe,
    },
    /// The primary's synchronous standbys, as it reports them; in sync modes
    /// only these may be promoted.
    SyncStandbys {
        nodes: BTreeSet<NodeId>,
    },
    Tick {
        now: u64,
    },
    PersistDone {
        epoch: u64,
    },
    PersistFailed {
        epoch: u64,
    },
    Promoted {
        node: NodeId,
    },
    PromoteFailed {
        node: NodeId,
    },
    RepointDone {
        replica: NodeId,
        to: NodeId,
    },
    RepointFailed {
        replica: NodeId,
        to: NodeId,
    },
    FenceDone {
        node: NodeId,
    },
    FenceFailed {
        node: NodeId,
    },
    /// The rejoin command failed; success shows in the node's probes.
    RejoinFailed {
        node: NodeId,
    },
    /// Operator: planned switchover, or promotion of a failed primary's
    /// replacement when `failover = manual`.
    Switchover {
        target: Option<NodeId>,
    },
    /// Operator: bring a fenced node back as a replica.
    Rejoin {
        node: NodeId,
    },
    /// RELOAD: a node joins (a vacant slot of its name, or a new one).
    AddNode(NodeAddr),
    /// RELOAD: a node leaves; refused for the primary.
    RemoveNode {
        node: NodeId,
    },
    /// What the proxies sharing the epoch allow this one to decide.
    Mandate(Mandate),
    /// An epoch another proxy made durable in the shared store.
    Learned(EpochRecord),
}

/// What a proxy sharing the epoch with others may decide. A proxy alone
/// always leads and needs no one's agreement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mandate {
    /// It holds the leadership: it alone adopts, fails over, switches over,
    /// promotes, fences, re-points and rejoins.
    pub lead: bool,
    /// A majority of the live proxies report the primary lost, so a
    /// failover the replicas confirm may start.
    pub agreed_down: bool,
}

impl Mandate {
    pub const ALONE: Mandate = Mandate {
        lead: true,
        agreed_down: true,
    };
    pub const NONE: Mandate = Mandate {
        lead: false,
        agreed_down: false,
    };
}

/// The state machine's part of the published topology; its epoch is
/// always persisted. Kept once, in the [`super::State`]; the action that
/// announces a change carries a copy for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub epoch: u64,
    /// The primary of the epoch: the only node that may receive writes.
    pub primary: Option<NodeId>,
    pub writes: WriteState,
    /// Nodes that receive no traffic at all.
    pub fenced: BTreeSet<NodeId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Make `epoch` with `primary` durable, then answer PersistDone/Failed.
    PersistEpoch {
        epoch: u64,
        primary: NodeId,
    },
    PublishTopology(Published),
    /// `pg_promote(wait => true)`.
    Promote(NodeId),
    /// Point a replica's primary_conninfo at the new primary.
    Repoint {
        replica: NodeId,
        to: NodeId,
    },
    /// Make the node read-only, end its sessions, run the fence command.
    Fence(NodeId),
    /// Turn a fenced node into a replica of `to` (rewind, standby).
    Rejoin {
        node: NodeId,
        to: NodeId,
    },
    /// An operator command was not carried out, and why.
    CommandRefused {
        reason: String,
    },
}

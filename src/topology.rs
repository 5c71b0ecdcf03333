//! The published view of the cluster: which node is the primary of the
//! current epoch, which are replicas, whether each is healthy and how far
//! each replica has got, which nodes are fenced, and whether writes are open.
//!
//! Beside it, published by the same writer, each database's catalog of
//! VOLATILE functions ([`PublishedFunctions`]), which a session reads
//! through a [`FunctionView`] and asks to have refreshed without waiting.
//!
//! The control plane is the only writer; it publishes a whole new snapshot
//! through [`TopologyHandle`] and the data plane reads whichever snapshot is
//! current when it routes. A snapshot is never mutated in place.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::{ArcSwap, Cache};
use tokio::sync::{mpsc, watch};

use crate::config::NodeConfig;

/// The most node slots a proxy keeps: configured nodes, and the vacant
/// slots of nodes a reload removed (kept so that indexes stay stable).
pub const MAX_NODES: usize = 64;

/// What a node is, as last seen by the monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
    /// Never reached yet, so its role is not known.
    Unknown,
}

impl Role {
    /// How the console, the metrics and the status page write it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Unknown => "unknown",
        }
    }
}

/// A WAL position (PostgreSQL's `pg_lsn`) as a byte offset; written
/// `X/Y` in hex like PostgreSQL writes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

/// PostgreSQL's WAL page size (XLOG_BLCKSZ, fixed at compile time: 8 KiB
/// in every packaged build).
const WAL_PAGE: u64 = 8192;
/// The headers at the start of a WAL page: the short one, and the long one
/// that opens a segment (SizeOfXLogShortPHD, SizeOfXLogLongPHD).
const PAGE_HEADERS: [u64; 2] = [24, 40];

impl Lsn {
    /// The end of the WAL written before this insert position.
    ///
    /// `pg_current_wal_insert_lsn()` names the next byte a record may use,
    /// which on a fresh page is past the page header, while a replica's
    /// replay position is the end of the last record, the page boundary
    /// itself. An idle primary whose WAL ends on a page boundary (every one
    /// right after a segment switch or a base backup) would otherwise stay
    /// a header ahead of every replica for as long as nothing writes. A
    /// replica at that boundary has everything: no record ends inside a
    /// header, and a record continued onto the page ends past it.
    pub fn before_page_header(self) -> Lsn {
        let offset = self.0 % WAL_PAGE;
        if PAGE_HEADERS.contains(&offset) {
            Lsn(self.0 - offset)
        } else {
            self
        }
    }
}

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
    /// Healthy, but its last probe missed its deadline: it gets no new
    /// reads until it answers again (it is down after `health_threshold`
    /// misses in a row).
    pub suspect: bool,
    /// Share of reads while a replica (from config); 0 never serves reads as one.
    pub weight: u32,
    pub replication: Replication,
    /// Receives no traffic at all: a node that claims to be a primary but
    /// is not the primary of the current epoch.
    pub fenced: bool,
    /// Removed from the configuration by a reload: a vacant slot, kept so
    /// that node indexes stay stable; it serves nothing and is not shown.
    pub removed: bool,
}

impl NodeState {
    /// `fenced`, `up` or `down`, as the console and the status page show it.
    pub fn health(&self) -> &'static str {
        match (self.fenced, self.healthy) {
            (true, _) => "fenced",
            (false, true) if self.suspect => "suspect",
            (false, true) => "up",
            (false, false) => "down",
        }
    }
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
                    suspect: false,
                    weight: n.weight,
                    replication: Replication::default(),
                    fenced: false,
                    removed: false,
                })
                .collect(),
        }
    }

    /// The configured nodes with their indexes: every slot but the vacant
    /// ones of nodes a reload removed.
    pub fn configured(&self) -> impl Iterator<Item = (usize, &NodeState)> {
        self.nodes.iter().enumerate().filter(|(_, n)| !n.removed)
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

    /// The last WAL position the epoch's primary reported, healthy or not.
    pub fn leader_lsn(&self) -> Option<Lsn> {
        self.nodes.get(self.leader?)?.replication.lsn
    }
}

/// A session's copy of the current snapshot ([`TopologyHandle::cache`]).
pub type TopologyCache = Cache<Arc<ArcSwap<Topology>>, Arc<Topology>>;

/// Shared handle: the control plane stores, the data plane loads.
#[derive(Debug, Clone)]
pub struct TopologyHandle(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    current: Arc<ArcSwap<Topology>>,
    /// Bumped when the epoch or the fenced nodes change, so that sessions
    /// holding a connection to a node just fenced let go of it at once.
    fences: watch::Sender<u64>,
    functions: ArcSwap<HashMap<String, Arc<PublishedFunctions>>>,
    /// Bumped after every change to `functions`, so a reader can skip looking.
    functions_version: AtomicU64,
    /// Catalog loads started so far; a load's number is its generation.
    loads_started: AtomicU64,
    /// Databases whose catalog a session asked to have loaded again.
    refresh: mpsc::UnboundedSender<String>,
    /// Taken once, by the control plane's catalog refresher.
    refresh_requests: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
}

impl TopologyHandle {
    pub fn new(initial: Topology) -> TopologyHandle {
        let (refresh, requests) = mpsc::unbounded_channel();
        TopologyHandle(Arc::new(Shared {
            current: Arc::new(ArcSwap::from_pointee(initial)),
            fences: watch::channel(0).0,
            functions: ArcSwap::default(),
            functions_version: AtomicU64::new(0),
            loads_started: AtomicU64::new(0),
            refresh,
            refresh_requests: Mutex::new(Some(requests)),
        }))
    }

    pub fn load(&self) -> Arc<Topology> {
        self.0.current.load_full()
    }

    /// A copy of the current snapshot for one reader to keep: each look
    /// costs one atomic load while nothing new was published. It keeps the
    /// snapshot it last saw alive until its next look.
    pub fn cache(&self) -> TopologyCache {
        Cache::new(Arc::clone(&self.0.current))
    }

    /// Changes whenever a node is fenced, unfenced, added or removed, or the
    /// epoch moves.
    pub fn fence_changes(&self) -> watch::Receiver<u64> {
        self.0.fences.subscribe()
    }

    /// Only the control plane's driver calls this.
    pub(crate) fn publish(&self, topology: Topology) {
        let before = self.0.current.swap(Arc::new(topology));
        let after = self.0.current.load();
        let fenced = |t: &Topology| {
            t.nodes
                .iter()
                .map(|n| (n.fenced, n.removed))
                .collect::<Vec<_>>()
        };
        if before.epoch != after.epoch || fenced(&before) != fenced(&after) {
            self.0.fences.send_modify(|n| *n += 1);
        }
    }

    /// `database`'s published VOLATILE functions; `None` before a load of
    /// it succeeded.
    pub fn functions(&self, database: &str) -> Option<Arc<PublishedFunctions>> {
        self.0.functions.load().get(database).cloned()
    }

    /// Changes after every change to any database's published functions:
    /// one atomic load, for a per-batch check of whether to look again.
    pub fn functions_version(&self) -> u64 {
        self.0.functions_version.load(Ordering::Acquire)
    }

    /// Asks the control plane to load `database`'s functions again, without
    /// waiting. Returns the generation to wait past: a published
    /// generation above it comes from a load that started after this call.
    pub fn refresh_functions(&self, database: &str) -> u64 {
        let after = self.0.loads_started.load(Ordering::SeqCst);
        // Only gone when the proxy is shutting down.
        let _ = self.0.refresh.send(database.to_owned());
        after
    }

    /// The control plane's side: a load begins; returns its generation.
    pub(crate) fn start_functions_load(&self) -> u64 {
        self.0.loads_started.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The control plane's side: the sessions' refresh requests (once).
    pub(crate) fn take_refresh_requests(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        let mut requests = self
            .0
            .refresh_requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        requests.take()
    }

    /// Only the driver calls this: `database`'s functions as loaded now,
    /// or forgotten (`None`: the database does not exist). An older
    /// generation never replaces a newer one.
    pub(crate) fn publish_functions(&self, database: &str, loaded: Option<PublishedFunctions>) {
        self.0.functions.rcu(|all| {
            let mut next = HashMap::clone(all);
            match &loaded {
                Some(l)
                    if next
                        .get(database)
                        .is_some_and(|p| p.generation > l.generation) => {}
                Some(l) => {
                    next.insert(database.to_owned(), Arc::new(l.clone()));
                }
                None => {
                    next.remove(database);
                }
            }
            next
        });
        self.0.functions_version.fetch_add(1, Ordering::Release);
    }
}

/// One database's VOLATILE functions, as loaded at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolatileSet {
    /// 0 for "never loaded" (an empty set); otherwise increases every time a
    /// database's set is replaced, so a cache filled with one set can tell
    /// when it is stale.
    pub generation: u64,
    /// Folded with [`crate::classify::fold_name`]: every function's bare
    /// name and its `schema.name`.
    pub names: HashSet<String>,
}

/// One database's VOLATILE functions as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedFunctions {
    /// The number of the load this came from: above what
    /// [`TopologyHandle::refresh_functions`] returned once a load that
    /// started after the request has succeeded, changed or not.
    pub generation: u64,
    /// The set itself; its own generation moves only when the list changes.
    pub set: Arc<VolatileSet>,
}

/// A session's view of its database's VOLATILE functions: it reads the
/// published snapshot and never waits for the control plane. While
/// [`FunctionView::pending`], the set may predate a function the session
/// created (or the database was never loaded): a call of a function the
/// set cannot vouch for must go to the primary.
#[derive(Debug)]
pub struct FunctionView {
    topology: TopologyHandle,
    database: String,
    set: Arc<VolatileSet>,
    version: u64,
    /// Waiting for a published generation above this.
    pending_past: Option<u64>,
}

impl FunctionView {
    /// The view of `database`'s functions as published now; when nothing
    /// is, asks for a load and is pending until it lands.
    pub fn new(topology: &TopologyHandle, database: &str) -> FunctionView {
        let version = topology.functions_version();
        let (set, pending_past) = match topology.functions(database) {
            Some(p) => (Arc::clone(&p.set), None),
            None => (Arc::default(), Some(topology.refresh_functions(database))),
        };
        FunctionView {
            topology: topology.clone(),
            database: database.to_owned(),
            set,
            version,
            pending_past,
        }
    }

    /// The folded names to classify with.
    pub fn names(&self) -> &HashSet<String> {
        &self.set.names
    }

    /// Which list [`Self::names`] is: classifications made with another
    /// generation may not hold for it.
    pub fn generation(&self) -> u64 {
        self.set.generation
    }

    /// Picks up a newer published set (cheap when nothing was published);
    /// `true` when the list changed, so classifications made with the old
    /// one must be dropped.
    pub fn refresh(&mut self) -> bool {
        let version = self.topology.functions_version();
        if version == self.version {
            return false;
        }
        self.version = version;
        let Some(p) = self.topology.functions(&self.database) else {
            return false;
        };
        if self.pending_past.is_some_and(|past| p.generation > past) {
            self.pending_past = None;
        }
        if p.set.generation == self.set.generation {
            return false;
        }
        self.set = Arc::clone(&p.set);
        true
    }

    /// Function DDL (or an extension) committed through this session: asks
    /// for a reload and is pending until one that started after now is
    /// published.
    pub fn changed(&mut self) {
        self.pending_past = Some(self.topology.refresh_functions(&self.database));
    }

    /// Whether a called function missing from the set may still be VOLATILE.
    pub fn pending(&self) -> bool {
        self.pending_past.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(generation: u64, names: &[&str]) -> Arc<VolatileSet> {
        Arc::new(VolatileSet {
            generation,
            names: names.iter().map(|n| n.to_string()).collect(),
        })
    }

    fn publish(handle: &TopologyHandle, generation: u64, set: &Arc<VolatileSet>) {
        let set = Arc::clone(set);
        handle.publish_functions("db", Some(PublishedFunctions { generation, set }));
    }

    #[test]
    fn a_session_is_pending_until_a_load_started_after_its_request_is_published() {
        let handle = TopologyHandle::new(Topology::from_config(&[]));
        let mut requests = handle.take_refresh_requests().unwrap();
        assert!(handle.take_refresh_requests().is_none(), "taken once");

        // Nothing published: asks for a load and waits for it.
        let mut view = FunctionView::new(&handle, "db");
        assert!(view.pending() && view.names().is_empty());
        assert_eq!(requests.try_recv().as_deref(), Ok("db"));
        let first = handle.start_functions_load();
        let f = set(1, &["f"]);
        publish(&handle, first, &f);
        assert!(view.refresh(), "the list changed");
        assert!(!view.pending() && view.names().contains("f"));
        assert!(!view.refresh(), "nothing new published");

        // Function DDL while an older load is under way: that load does
        // not end the wait, even though it is published after the request.
        let older = handle.start_functions_load();
        view.changed();
        assert_eq!(requests.try_recv().as_deref(), Ok("db"));
        publish(&handle, older, &f);
        assert!(!view.refresh());
        assert!(
            view.pending(),
            "a load from before the DDL vouches for nothing"
        );
        // A newer load with the same list ends it without a new set.
        let newer = handle.start_functions_load();
        publish(&handle, newer, &f);
        assert!(!view.refresh(), "same list");
        assert!(!view.pending());

        // A view made now starts from what is published.
        let fresh = FunctionView::new(&handle, "db");
        assert!(!fresh.pending() && fresh.names().contains("f"));
        assert!(requests.try_recv().is_err(), "nothing to ask for");
    }

    #[test]
    fn an_older_load_never_replaces_a_newer_one_and_a_missing_database_is_forgotten() {
        let handle = TopologyHandle::new(Topology::from_config(&[]));
        let version = handle.functions_version();
        publish(&handle, 5, &set(2, &["g"]));
        publish(&handle, 4, &set(1, &["f"]));
        let p = handle.functions("db").unwrap();
        assert_eq!((p.generation, p.set.generation), (5, 2));
        assert!(handle.functions_version() > version);
        handle.publish_functions("db", None);
        assert!(handle.functions("db").is_none());
    }

    #[test]
    fn an_insert_position_past_a_page_header_is_the_boundary() {
        let segment = 0x4000000;
        assert_eq!(Lsn(segment + 40).before_page_header(), Lsn(segment));
        assert_eq!(
            Lsn(segment + 8192 + 24).before_page_header(),
            Lsn(segment + 8192)
        );
        for inside in [
            segment,
            segment + 48,
            segment + 8192 + 16,
            segment + 8192 + 8000,
        ] {
            assert_eq!(Lsn(inside).before_page_header(), Lsn(inside), "{inside:#x}");
        }
    }

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

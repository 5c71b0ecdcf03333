//! The catalog of user-defined VOLATILE functions, per database: the names
//! the classifier must treat as writes (`classify(sql, &set.names)`). Sets
//! are loaded from the current primary's `pg_proc` over a short-lived
//! connection of their own, kept per database (pg_proc is per database), and
//! replaced whole when a reload finds a different list. This is the
//! loader's own record; the data plane reads what the driver publishes
//! beside the topology ([`crate::topology::FunctionView`]), fed by the
//! refresher ([`super::refresher`]), which loads when a database is first
//! seen, after function DDL ran through the proxy, and on an interval for
//! DDL that did not.
//!
//! A failed load never empties a set that was loaded before: routing keeps
//! the last known list, and the next call tries again.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_postgres::error::SqlState;
use tracing::{debug, warn};

use crate::classify::fold_name;
use crate::config::Config;
use crate::tls::ServerTls;
use crate::topology::TopologyHandle;

/// Plain functions (not procedures, aggregates or window functions) that
/// PostgreSQL marks VOLATILE, outside the built-in schemas.
const VOLATILE_FUNCTIONS_SQL: &str = "\
    SELECT n.nspname, p.proname \
    FROM pg_catalog.pg_proc p \
    JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
    WHERE p.provolatile = 'v' AND p.prokind = 'f' \
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')";

/// Most databases whose load state is tracked. Database names come from
/// clients; names the server does not know are forgotten at once, and this
/// caps the rest (e.g. names asked for while the primary is unreachable).
const MAX_TRACKED_DATABASES: usize = 4096;

/// The refresher never spins faster than this, whatever it is given.
pub(crate) const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(10);

pub use crate::topology::VolatileSet;

/// How one load of a database's set ended.
#[derive(Debug, Clone)]
pub(crate) enum Loaded {
    /// Read from the primary just now (changed or not).
    Fresh(Arc<VolatileSet>),
    /// The load failed; this is what was known before (maybe empty).
    Kept(Arc<VolatileSet>),
    /// The database does not exist: nothing is kept for it.
    Forgotten,
}

impl Loaded {
    fn set(self, empty: &Arc<VolatileSet>) -> Arc<VolatileSet> {
        match self {
            Loaded::Fresh(set) | Loaded::Kept(set) => set,
            Loaded::Forgotten => Arc::clone(empty),
        }
    }
}

/// Why a load failed. Every variant may succeed on a later try except
/// [`LoadError::Query`] with `database_missing()`.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("no healthy primary in the topology")]
    NoPrimary,
    #[error("connecting to {node} timed out after {timeout:?}")]
    ConnectTimeout { node: String, timeout: Duration },
    #[error("connecting to {node} failed: {source}")]
    Connect {
        node: String,
        source: tokio_postgres::Error,
    },
    #[error("the catalog query on {node} timed out after {timeout:?}")]
    QueryTimeout { node: String, timeout: Duration },
    #[error("the catalog query on {node} failed: {source}")]
    Query {
        node: String,
        source: tokio_postgres::Error,
    },
}

impl LoadError {
    /// The server said the database does not exist (a client's typo, or it
    /// was dropped): there is nothing to keep for it.
    fn database_missing(&self) -> bool {
        match self {
            LoadError::Connect { source, .. } | LoadError::Query { source, .. } => {
                source.code() == Some(&SqlState::INVALID_CATALOG_NAME)
            }
            _ => false,
        }
    }
}

/// How to reach the primary: from the config, fixed for the catalog's life.
struct Settings {
    tls: ServerTls,
    user: String,
    password: Option<String>,
    connect_timeout: Duration,
    query_timeout: Duration,
}

/// Serialises the loads of one database and remembers how the last one ended.
struct Slot {
    /// Loads finished (successfully or not); lets a caller that waited for
    /// someone else's load take its result instead of loading again.
    finished: AtomicU64,
    /// Held for the whole load; holds the last load's answer.
    last: tokio::sync::Mutex<Arc<VolatileSet>>,
}

/// The VOLATILE function sets of every database seen so far. Share it
/// through an `Arc`.
pub struct FunctionCatalog {
    settings: Settings,
    topology: TopologyHandle,
    /// The latest loaded set per database, replaced whole (read per query).
    sets: ArcSwap<HashMap<String, Arc<VolatileSet>>>,
    /// Databases seen so far, each with its load lock.
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// The last generation handed out (global, so also increasing per database).
    generation: AtomicU64,
    /// The answer before any load succeeded.
    empty: Arc<VolatileSet>,
}

impl FunctionCatalog {
    pub fn new(config: &Config, tls: ServerTls, topology: TopologyHandle) -> FunctionCatalog {
        FunctionCatalog {
            settings: Settings {
                tls,
                user: config.backend.user.clone(),
                password: config.backend.password.clone(),
                connect_timeout: config.proxy.connect_timeout(),
                query_timeout: config.monitor.probe_timeout(),
            },
            topology,
            sets: ArcSwap::default(),
            slots: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            empty: Arc::new(VolatileSet::default()),
        }
    }

    /// The set for `database`: on first use waits for the first load (one
    /// load per database at a time; concurrent first callers share it);
    /// afterwards returns the latest loaded set at once. A failed load yields
    /// the previous set, or an empty one with generation 0, and is retried on
    /// the next call.
    pub async fn volatile(&self, database: &str) -> Arc<VolatileSet> {
        if let Some(set) = self.current(database) {
            return set;
        }
        self.load(database, true).await.set(&self.empty)
    }

    /// The latest loaded set, without waiting; `None` before the first
    /// successful load of `database`.
    pub fn current(&self, database: &str) -> Option<Arc<VolatileSet>> {
        self.sets.load().get(database).cloned()
    }

    /// Loads `database`'s set again now (function DDL or CREATE EXTENSION
    /// ran) and returns it. The generation increases only if the list
    /// changed; on failure this is the previous set.
    pub async fn reload(&self, database: &str) -> Arc<VolatileSet> {
        self.load(database, false).await.set(&self.empty)
    }

    /// [`FunctionCatalog::reload`], saying how the load ended.
    pub(crate) async fn reload_outcome(&self, database: &str) -> Loaded {
        self.load(database, false).await
    }

    /// Every database whose set is loaded or being loaded.
    pub(crate) fn databases(&self) -> Vec<String> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.keys().cloned().collect()
    }

    /// One load of `database`, serialised with the others of the same
    /// database. With `share`, a caller that waited while another load of the
    /// database finished takes that load's answer instead of loading again.
    async fn load(&self, database: &str, share: bool) -> Loaded {
        // The server would take an empty name as the user's database:
        // nothing a session can be connected to under this name.
        if database.is_empty() {
            return Loaded::Kept(Arc::clone(&self.empty));
        }
        let slot = self.slot(database);
        let seen = slot.finished.load(Ordering::Acquire);
        let mut last = slot.last.lock().await;
        if share {
            if slot.finished.load(Ordering::Acquire) != seen {
                return Loaded::Kept(Arc::clone(&last));
            }
            if let Some(set) = self.current(database) {
                return Loaded::Kept(set);
            }
        }
        let loaded = match self.fetch(database).await {
            Ok(names) => Loaded::Fresh(self.store(database, names)),
            Err(e) => {
                let previous = self.current(database);
                if e.database_missing() {
                    // Client-supplied names end here when mistyped: not a warning.
                    debug!(database, error = %e, "no such database: forgetting its volatile functions");
                    self.forget(database);
                    Loaded::Forgotten
                } else {
                    let kept_generation = previous.as_ref().map_or(0, |s| s.generation);
                    warn!(database, error = %e, kept_generation, "could not load volatile functions");
                    Loaded::Kept(previous.unwrap_or_else(|| Arc::clone(&self.empty)))
                }
            }
        };
        *last = loaded.clone().set(&self.empty);
        slot.finished.fetch_add(1, Ordering::Release);
        loaded
    }

    /// `database`'s load slot, tracked from now on if there is room.
    fn slot(&self, database: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get(database) {
            return Arc::clone(slot);
        }
        let slot = Arc::new(Slot {
            finished: AtomicU64::new(0),
            last: tokio::sync::Mutex::new(Arc::clone(&self.empty)),
        });
        if slots.len() < MAX_TRACKED_DATABASES {
            slots.insert(database.to_owned(), Arc::clone(&slot));
        } else {
            // Untracked: loads still work, but are neither shared nor refreshed.
            debug!(
                database,
                "too many databases tracked for volatile functions"
            );
        }
        slot
    }

    /// Publishes a loaded list, keeping the current set (and generation)
    /// when nothing changed.
    fn store(&self, database: &str, names: HashSet<String>) -> Arc<VolatileSet> {
        if let Some(current) = self.current(database) {
            if current.names == names {
                return current;
            }
        }
        let set = Arc::new(VolatileSet {
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            names,
        });
        // Loads of one database are serialised by its slot, except across a
        // forget; never let an older generation replace a newer one.
        self.sets.rcu(|sets| {
            let mut next = HashMap::clone(sets);
            match next.get(database) {
                Some(newer) if newer.generation > set.generation => {}
                _ => {
                    next.insert(database.to_owned(), Arc::clone(&set));
                }
            }
            next
        });
        debug!(
            database,
            generation = set.generation,
            names = set.names.len(),
            "volatile functions loaded"
        );
        set
    }

    fn forget(&self, database: &str) {
        self.sets.rcu(|sets| {
            let mut next = HashMap::clone(sets);
            next.remove(database);
            next
        });
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.remove(database);
    }

    /// Reads the list from the current primary over a connection of its own.
    async fn fetch(&self, database: &str) -> Result<HashSet<String>, LoadError> {
        let topology = self.topology.load();
        let node = topology
            .primary()
            .and_then(|i| topology.nodes.get(i))
            .ok_or(LoadError::NoPrimary)?;
        let name = node.name.clone();
        let s = &self.settings;
        let mut pg = tokio_postgres::Config::new();
        pg.host(&node.host)
            .port(node.port)
            .user(&s.user)
            .dbname(database)
            .application_name("palisade-catalog")
            .connect_timeout(s.connect_timeout);
        if let Some(password) = &s.password {
            pg.password(password);
        }
        let tls = s.tls.postgres(&mut pg);
        // The outer bound covers authentication too, not just TCP.
        let (client, connection) =
            match tokio::time::timeout(s.connect_timeout, pg.connect(tls)).await {
                Ok(Ok(pair)) => pair,
                Ok(Err(source)) => return Err(LoadError::Connect { node: name, source }),
                Err(_) => {
                    return Err(LoadError::ConnectTimeout {
                        node: name,
                        timeout: s.connect_timeout,
                    })
                }
            };
        // The connection is driven here rather than in a spawned task, so
        // nothing outlives the load: both end when this returns.
        let rows = drive(connection, client.query(VOLATILE_FUNCTIONS_SQL, &[]));
        let rows = match tokio::time::timeout(s.query_timeout, rows).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(source)) => return Err(LoadError::Query { node: name, source }),
            Err(_) => {
                return Err(LoadError::QueryTimeout {
                    node: name,
                    timeout: s.query_timeout,
                })
            }
        };
        let mut names = HashSet::with_capacity(rows.len().saturating_mul(2));
        for row in rows {
            let (schema, function): (String, String) = match (row.try_get(0), row.try_get(1)) {
                (Ok(schema), Ok(function)) => (schema, function),
                (Err(source), _) | (_, Err(source)) => {
                    return Err(LoadError::Query { node: name, source })
                }
            };
            let function = fold_name(&function);
            names.insert(format!("{}.{function}", fold_name(&schema)));
            names.insert(function);
        }
        Ok(names)
    }
}

/// Runs `request` while polling `connection`, which carries its messages.
async fn drive<C, R, T>(connection: C, request: R) -> Result<T, tokio_postgres::Error>
where
    C: Future<Output = Result<(), tokio_postgres::Error>>,
    R: Future<Output = Result<T, tokio_postgres::Error>>,
{
    tokio::pin!(connection);
    tokio::pin!(request);
    tokio::select! {
        biased;
        result = &mut request => result,
        ended = &mut connection => match ended {
            // The connection's own error explains the failure best.
            Err(e) => Err(e),
            // Closed cleanly: the request fails on its own now.
            Ok(()) => request.await,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Topology;

    fn catalog() -> FunctionCatalog {
        let config = Config::minimal();
        let topology = TopologyHandle::new(Topology::from_config(&config.nodes));
        FunctionCatalog::new(&config, ServerTls::disabled(), topology)
    }

    #[tokio::test]
    async fn without_a_primary_the_set_is_empty_and_nothing_is_kept() {
        let catalog = catalog();
        let set = catalog.volatile("app").await;
        assert_eq!(*set, VolatileSet::default());
        assert!(catalog.current("app").is_none());
        // Still tracked: the refresher and the next call try again.
        assert_eq!(catalog.databases(), vec!["app".to_owned()]);
    }

    #[tokio::test]
    async fn an_empty_database_name_loads_nothing() {
        let catalog = catalog();
        assert_eq!(catalog.volatile("").await.generation, 0);
        assert!(catalog.databases().is_empty());
    }

    #[tokio::test]
    async fn a_failed_load_keeps_the_previous_set() {
        let catalog = catalog();
        let loaded = catalog.store("app", HashSet::from(["f".to_owned()]));
        let after = catalog.reload("app").await;
        assert!(Arc::ptr_eq(&loaded, &after));
        assert!(Arc::ptr_eq(&loaded, &catalog.current("app").unwrap()));
    }

    #[test]
    fn an_unchanged_list_keeps_its_generation_and_a_changed_one_bumps_it() {
        let catalog = catalog();
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
        let first = catalog.store("db", names(&["f", "public.f"]));
        assert_eq!(first.generation, 1);
        let same = catalog.store("db", names(&["public.f", "f"]));
        assert!(Arc::ptr_eq(&first, &same));
        let changed = catalog.store("db", names(&["g"]));
        assert!(changed.generation > first.generation);
        assert!(Arc::ptr_eq(&catalog.current("db").unwrap(), &changed));
        let other = catalog.store("other", names(&["g"]));
        assert!(other.generation > changed.generation);
        catalog.forget("db");
        assert!(catalog.current("db").is_none());
        assert!(catalog.current("other").is_some());
    }
}

//! One session's statement classification: the classify cache its
//! database's sessions share ([`Caches`]), the session's own copy of its
//! last Parse text and what it came to, and the session's view of that
//! database's VOLATILE functions.
//!
//! This is the one place that knows where that list comes from: the control
//! plane publishes it beside the topology ([`FunctionView`]); the session
//! looks at it (lock-free) when a batch begins and never waits for it. After
//! function DDL committed through the session, the list is asked for again,
//! and until a load that started after the DDL is published, a read calling
//! a function the list cannot vouch for goes to the primary.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Shared;
use crate::classify::{self, Class, Classification, ClassifyCache, Functions, Reason};
use crate::topology::FunctionView;

/// One classify cache per database, shared by that database's sessions.
#[derive(Debug, Default)]
pub struct Caches(Mutex<HashMap<String, Arc<ClassifyCache>>>);

impl Caches {
    /// `database`'s cache, made with `capacity` entries if it is the first.
    fn of(&self, database: &str, capacity: usize) -> Arc<ClassifyCache> {
        let mut caches = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cache) = caches.get(database) {
            return Arc::clone(cache);
        }
        let cache = Arc::new(ClassifyCache::new(capacity));
        caches.insert(database.to_owned(), Arc::clone(&cache));
        cache
    }

    /// Hits and misses over every database's cache.
    pub fn stats(&self) -> classify::CacheStats {
        let caches = self.0.lock().unwrap_or_else(|e| e.into_inner());
        caches
            .values()
            .map(|c| c.stats())
            .fold(Default::default(), |a, b| classify::CacheStats {
                hits: a.hits + b.hits,
                misses: a.misses + b.misses,
            })
    }
}

/// What carried a statement's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextFrom {
    /// A simple Query: its text carries its literals, and seldom repeats.
    Query,
    /// A Parse: drivers send one text again and again, with other
    /// parameters each time (an unnamed statement per query).
    Parse,
}

/// The longest Parse text a session remembers as its last.
const LAST_MAX: usize = 256;

pub struct Classifier {
    cache: Arc<ClassifyCache>,
    functions: FunctionView,
    /// The Parse classified last: drivers that send one text again and
    /// again (an unnamed statement per query, as pgbench `-M extended`
    /// and many ORMs do) skip its shape and the shared cache.
    last: Last,
    /// Function DDL succeeded; its transaction may still be open.
    ddl_seen: bool,
    /// The list was asked for again: the batch waiting to be routed was
    /// classified with the old one.
    reclassify_due: bool,
}

impl Classifier {
    /// The classifier of a session on `database`, with its VOLATILE list as
    /// published now (asked for, and pending, when nothing is yet).
    pub fn open(shared: &Shared, database: &str) -> Classifier {
        Classifier::with(
            shared
                .classify
                .of(database, shared.config().routing.classify_cache_size),
            FunctionView::new(&shared.topology, database),
        )
    }

    fn with(cache: Arc<ClassifyCache>, functions: FunctionView) -> Classifier {
        Classifier {
            cache,
            functions,
            last: Last::default(),
            ddl_seen: false,
            reclassify_due: false,
        }
    }

    /// Classifies (or recalls) one statement string, sent in `from`.
    /// While the list may predate a function just created, a read that
    /// calls a function the list does not know is a write.
    pub fn classify(&mut self, sql: &str, from: TextFrom) -> Arc<Classification> {
        let functions = Functions {
            generation: self.functions.generation(),
            names: self.functions.names(),
        };
        let pending = self.functions.pending();
        // Not while pending: what the copy says, the list may not vouch for.
        let remember = from == TextFrom::Parse && !pending;
        if remember {
            if let Some(c) = self.last.recall(sql, functions.generation) {
                self.cache.count_hit();
                return c;
            }
        }
        let c = self.cache.get_or_classify(sql, functions);
        if remember {
            self.last.keep(sql, functions.generation, &c);
        }
        if !(pending && c.is_read()) {
            return c;
        }
        vouched(sql, c)
    }

    /// Picks up a newer list if one was published (the cache's entries
    /// made with the old one no longer serve this session).
    pub fn refresh(&mut self) {
        self.functions.refresh();
    }

    /// Function DDL ran through the session.
    pub fn functions_changed(&mut self) {
        self.ddl_seen = true;
    }

    /// The session is between transactions: DDL seen since the last time
    /// has committed, so the list is asked for again (without waiting).
    pub fn idle(&mut self) {
        if std::mem::take(&mut self.ddl_seen) {
            self.functions.changed();
            self.reclassify_due = true;
        }
    }

    /// Whether the batch waiting to be routed must be classified again
    /// (once: the flag is cleared).
    pub fn take_reclassify(&mut self) -> bool {
        std::mem::take(&mut self.reclassify_due)
    }
}

/// A session's last Parse text and what it came to, with the function
/// list it was classified with.
#[derive(Default)]
struct Last {
    sql: String,
    generation: u64,
    classification: Option<Arc<Classification>>,
}

impl Last {
    fn recall(&self, sql: &str, generation: u64) -> Option<Arc<Classification>> {
        let c = self.classification.as_ref()?;
        (self.generation == generation && self.sql == sql).then(|| Arc::clone(c))
    }

    /// Remembers `sql` in place of the last one (its buffer reused: no
    /// allocation per statement), unless it is too long to be worth it.
    fn keep(&mut self, sql: &str, generation: u64, c: &Arc<Classification>) {
        if sql.len() > LAST_MAX {
            self.classification = None;
            return;
        }
        self.sql.clear();
        self.sql.push_str(sql);
        self.generation = generation;
        self.classification = Some(Arc::clone(c));
    }
}

/// A read classified while the VOLATILE list may predate a function just
/// created: a write when it calls a function the list does not know. Out
/// of line and cold: it parses, and its stack frame is large.
#[cold]
#[inline(never)]
fn vouched(sql: &str, c: Arc<Classification>) -> Arc<Classification> {
    match classify::first_unlisted_call(sql) {
        Some(name) => Arc::new(Classification {
            class: Class::Write,
            reason: Reason::VolatileFunction(name),
            ..Classification::clone(&c)
        }),
        None => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::VolatileSet;
    use crate::topology::{PublishedFunctions, Topology, TopologyHandle};

    fn publish(handle: &TopologyHandle, generation: u64, names: &[&str]) {
        let set = Arc::new(VolatileSet {
            generation,
            names: names.iter().map(|n| (*n).to_owned()).collect(),
        });
        handle.publish_functions("db", Some(PublishedFunctions { generation, set }));
    }

    fn classifier(handle: &TopologyHandle) -> Classifier {
        Classifier::with(
            Arc::new(ClassifyCache::new(16)),
            FunctionView::new(handle, "db"),
        )
    }

    #[test]
    fn sessions_of_one_database_share_a_cache_and_count_together() {
        let caches = Caches::default();
        let (a, b) = (caches.of("db", 8), caches.of("db", 8));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &caches.of("other", 8)));
        let handle = TopologyHandle::new(Topology::from_config(&[]));
        publish(&handle, 1, &[]);
        let mut first = Classifier::with(a, FunctionView::new(&handle, "db"));
        let mut second = Classifier::with(b, FunctionView::new(&handle, "db"));
        first.classify("SELECT v FROM t WHERE k = 1", TextFrom::Query);
        second.classify("SELECT v FROM t WHERE k = 2", TextFrom::Query);
        let stats = caches.stats();
        assert_eq!((stats.hits, stats.misses), (1, 1), "parsed once for both");
    }

    #[test]
    fn a_parse_sent_again_is_classified_once_by_the_session() {
        let handle = TopologyHandle::new(Topology::from_config(&[]));
        publish(&handle, 1, &[]);
        // No shared cache: every lookup there parses.
        let cache = Arc::new(ClassifyCache::new(0));
        let mut c = Classifier::with(Arc::clone(&cache), FunctionView::new(&handle, "db"));
        let counts = || {
            let s = cache.stats();
            (s.hits, s.misses)
        };
        let sql = "SELECT v FROM t WHERE k = $1";
        c.classify(sql, TextFrom::Parse);
        assert_eq!(c.classify(sql, TextFrom::Parse).class, Class::Read);
        assert_eq!(counts(), (1, 1), "the second from the session's copy");
        c.classify("SELECT 2", TextFrom::Parse);
        c.classify(sql, TextFrom::Parse);
        assert_eq!(counts(), (1, 3), "only the last statement is kept");
        let long = format!("SELECT '{}'", "x".repeat(LAST_MAX));
        c.classify(&long, TextFrom::Parse);
        c.classify(&long, TextFrom::Parse);
        assert_eq!(counts(), (1, 5), "too long to keep");
        c.classify("SELECT 3", TextFrom::Query);
        c.classify("SELECT 3", TextFrom::Query);
        assert_eq!(counts(), (1, 7), "a Query's text is not kept");
    }

    #[test]
    fn a_new_list_drops_what_the_old_one_classified() {
        let handle = TopologyHandle::new(Topology::from_config(&[]));
        publish(&handle, 1, &[]);
        let mut c = classifier(&handle);
        assert_eq!(
            c.classify("SELECT bump()", TextFrom::Parse).class,
            Class::Read
        );
        publish(&handle, 2, &["bump"]);
        assert_eq!(
            c.classify("SELECT bump()", TextFrom::Parse).class,
            Class::Read,
            "not looked at until a batch begins"
        );
        c.refresh();
        assert_eq!(
            c.classify("SELECT bump()", TextFrom::Parse).class,
            Class::Write
        );
    }

    #[test]
    fn after_function_ddl_unknown_calls_go_to_the_primary_until_a_new_list_lands() {
        let handle = TopologyHandle::new(Topology::from_config(&[]));
        publish(&handle, 1, &[]);
        let mut c = classifier(&handle);
        c.functions_changed();
        assert_eq!(
            c.classify("SELECT made_just_now()", TextFrom::Parse).class,
            Class::Read,
            "not committed yet"
        );
        c.idle();
        assert!(c.take_reclassify());
        assert!(!c.take_reclassify(), "once");
        assert_eq!(
            c.classify("SELECT made_just_now()", TextFrom::Parse).class,
            Class::Write
        );
        assert_eq!(
            c.classify("SELECT 1", TextFrom::Query).class,
            Class::Read,
            "no call: nothing to vouch for"
        );
        publish(&handle, 2, &[]);
        c.refresh();
        assert_eq!(
            c.classify("SELECT made_just_now()", TextFrom::Parse).class,
            Class::Read
        );
    }
}

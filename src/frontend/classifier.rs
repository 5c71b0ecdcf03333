//! One session's statement classification: its classify cache and the view
//! of its database's VOLATILE functions the cache was filled with.
//!
//! This is the one place that knows where that list comes from: the control
//! plane publishes it beside the topology ([`FunctionView`]); the session
//! looks at it (lock-free) when a batch begins and never waits for it. After
//! function DDL committed through the session, the list is asked for again,
//! and until a load that started after the DDL is published, a read calling
//! a function the list cannot vouch for goes to the primary.

use std::sync::Arc;

use super::Shared;
use crate::classify::{self, CacheStats, Class, Classification, ClassifyCache, Reason};
use crate::topology::FunctionView;

pub struct Classifier {
    cache: ClassifyCache,
    functions: FunctionView,
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
            ClassifyCache::new(shared.config().routing.classify_cache_size),
            FunctionView::new(&shared.topology, database),
        )
    }

    fn with(cache: ClassifyCache, functions: FunctionView) -> Classifier {
        Classifier {
            cache,
            functions,
            ddl_seen: false,
            reclassify_due: false,
        }
    }

    /// Classifies (or recalls) one statement string. While the list may
    /// predate a function just created, a read that calls a function the
    /// list does not know is a write.
    pub fn classify(&mut self, sql: &str) -> Arc<Classification> {
        let c = self.cache.get_or_classify(sql, self.functions.names());
        if !(self.functions.pending() && c.is_read()) {
            return c;
        }
        match classify::first_unlisted_call(sql) {
            Some(name) => Arc::new(Classification {
                class: Class::Write,
                reason: Reason::VolatileFunction(name),
                ..Classification::clone(&c)
            }),
            None => c,
        }
    }

    /// The cache's hits and misses so far.
    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Picks up a newer list if one was published, dropping
    /// classifications made with the old one.
    pub fn refresh(&mut self) {
        if self.functions.refresh() {
            self.cache.clear();
        }
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
        Classifier::with(ClassifyCache::new(16), FunctionView::new(handle, "db"))
    }

    #[test]
    fn a_new_list_drops_what_the_old_one_classified() {
        let handle = TopologyHandle::new(Topology::from_config(&[]));
        publish(&handle, 1, &[]);
        let mut c = classifier(&handle);
        assert_eq!(c.classify("SELECT bump()").class, Class::Read);
        publish(&handle, 2, &["bump"]);
        assert_eq!(
            c.classify("SELECT bump()").class,
            Class::Read,
            "not looked at until a batch begins"
        );
        c.refresh();
        assert_eq!(c.classify("SELECT bump()").class, Class::Write);
    }

    #[test]
    fn after_function_ddl_unknown_calls_go_to_the_primary_until_a_new_list_lands() {
        let handle = TopologyHandle::new(Topology::from_config(&[]));
        publish(&handle, 1, &[]);
        let mut c = classifier(&handle);
        c.functions_changed();
        assert_eq!(
            c.classify("SELECT made_just_now()").class,
            Class::Read,
            "not committed yet"
        );
        c.idle();
        assert!(c.take_reclassify());
        assert!(!c.take_reclassify(), "once");
        assert_eq!(c.classify("SELECT made_just_now()").class, Class::Write);
        assert_eq!(
            c.classify("SELECT 1").class,
            Class::Read,
            "no call: nothing to vouch for"
        );
        publish(&handle, 2, &[]);
        c.refresh();
        assert_eq!(c.classify("SELECT made_just_now()").class, Class::Read);
    }
}

//! One session's statement classification: its classify cache and the
//! VOLATILE-function list the cache was filled with.
//!
//! This is the one place that knows where that list comes from: the
//! control plane's function catalog, waited for when the session opens,
//! looked at (lock-free) when a batch begins, and reloaded after function
//! DDL ran through the session. Changing how the list reaches the data
//! plane is a change to this file alone: callers hand in [`Shared`] and
//! the database, never the catalog.

use std::sync::Arc;

use super::Shared;
use crate::classify::{Classification, ClassifyCache};
use crate::control::functions::VolatileSet;

pub struct Classifier {
    cache: ClassifyCache,
    volatile: Arc<VolatileSet>,
    /// The catalog's `published` count when `volatile` was last checked.
    seen: u64,
    /// Function DDL succeeded: reload the list before routing again.
    reload_due: bool,
}

impl Classifier {
    /// The classifier of a session on `database`, with its VOLATILE list
    /// (loaded on the database's first use).
    pub async fn open(shared: &Shared, database: &str) -> Classifier {
        let volatile = shared.catalog.volatile(database).await;
        Classifier::with(
            ClassifyCache::new(shared.config.routing.classify_cache_size),
            volatile,
        )
    }

    fn with(cache: ClassifyCache, volatile: Arc<VolatileSet>) -> Classifier {
        Classifier {
            cache,
            volatile,
            seen: 0,
            reload_due: false,
        }
    }

    /// Classifies (or recalls) one statement string.
    pub fn classify(&mut self, sql: &str) -> Arc<Classification> {
        self.cache.get_or_classify(sql, &self.volatile.names)
    }

    /// Picks up a newer list if one was published, dropping
    /// classifications made with the old one.
    pub fn refresh(&mut self, shared: &Shared, database: &str) {
        let catalog = &shared.catalog;
        let published = catalog.published();
        if published == self.seen {
            return;
        }
        self.seen = published;
        if let Some(current) = catalog.current(database) {
            self.replace(current);
        }
    }

    /// Function DDL ran through the session: its own next batch must see
    /// the new list, so it is reloaded before routing again.
    pub fn functions_changed(&mut self) {
        self.reload_due = true;
    }

    pub fn reload_due(&self) -> bool {
        self.reload_due
    }

    /// Reloads the list now (after function DDL).
    pub async fn reload(&mut self, shared: &Shared, database: &str) {
        self.reload_due = false;
        self.volatile = shared.catalog.reload(database).await;
        self.cache.clear();
    }

    fn replace(&mut self, current: Arc<VolatileSet>) {
        if current.generation != self.volatile.generation {
            self.volatile = current;
            self.cache.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Class;

    fn set(generation: u64, names: &[&str]) -> Arc<VolatileSet> {
        Arc::new(VolatileSet {
            generation,
            names: names.iter().map(|n| (*n).to_owned()).collect(),
        })
    }

    #[test]
    fn a_new_list_drops_what_the_old_one_classified() {
        let mut c = Classifier::with(ClassifyCache::new(16), set(1, &[]));
        assert_eq!(c.classify("SELECT bump()").class, Class::Read);
        c.replace(set(1, &["bump"]));
        assert_eq!(
            c.classify("SELECT bump()").class,
            Class::Read,
            "the same generation is the same list"
        );
        c.replace(set(2, &["bump"]));
        assert_eq!(c.classify("SELECT bump()").class, Class::Write);
    }

    #[test]
    fn function_ddl_makes_a_reload_due() {
        let mut c = Classifier::with(ClassifyCache::new(16), set(0, &[]));
        assert!(!c.reload_due());
        c.functions_changed();
        assert!(c.reload_due());
    }
}

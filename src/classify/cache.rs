//! A bounded cache of classifications keyed by the exact statement text, so
//! that the statements an application repeats are parsed once. Two hash-map
//! generations make an approximate LRU with O(1) operations and no extra
//! bookkeeping: new entries go to `young`; when `young` is full it becomes
//! `old` (the previous `old` is dropped); a hit in `old` moves the entry back
//! to `young`. Entries not used during two generations are forgotten.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{classify, Classification};

/// Statements longer than this are classified but not cached: long texts are
/// mostly one-off (bulk INSERTs) and would crowd out the statements that repeat.
pub const MAX_CACHED_SQL_LEN: usize = 16 * 1024;

/// Hit and miss counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

#[derive(Debug)]
pub struct ClassifyCache {
    /// Entries per generation; the cache holds at most twice this.
    generation: usize,
    young: HashMap<Box<str>, Arc<Classification>>,
    old: HashMap<Box<str>, Arc<Classification>>,
    stats: CacheStats,
}

impl ClassifyCache {
    /// A cache holding at most `capacity` entries (rounded up to an even
    /// number); 0 disables caching.
    pub fn new(capacity: usize) -> Self {
        let generation = capacity.div_ceil(2);
        Self {
            generation,
            young: HashMap::with_capacity(generation.min(4096)),
            old: HashMap::new(),
            stats: CacheStats::default(),
        }
    }

    /// The cached classification of `sql`, classifying it on a miss.
    /// `volatile` must be the list the cache was filled with: call
    /// [`ClassifyCache::clear`] whenever it changes.
    pub fn get_or_classify(
        &mut self,
        sql: &str,
        volatile: &HashSet<String>,
    ) -> Arc<Classification> {
        if let Some(hit) = self.young.get(sql) {
            self.stats.hits += 1;
            return Arc::clone(hit);
        }
        if let Some((key, hit)) = self.old.remove_entry(sql) {
            self.stats.hits += 1;
            self.insert(key, Arc::clone(&hit));
            return hit;
        }
        self.stats.misses += 1;
        let classified = Arc::new(classify(sql, volatile));
        if self.generation > 0 && sql.len() <= MAX_CACHED_SQL_LEN {
            self.insert(sql.into(), Arc::clone(&classified));
        }
        classified
    }

    /// Forgets everything (the volatile function list changed).
    pub fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
    }

    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    fn insert(&mut self, key: Box<str>, value: Arc<Classification>) {
        if self.young.len() >= self.generation {
            self.old = std::mem::take(&mut self.young);
            self.young.reserve(self.generation.min(4096));
        }
        self.young.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Class;

    fn none() -> HashSet<String> {
        HashSet::new()
    }

    #[test]
    fn hit_returns_the_same_classification() {
        let mut cache = ClassifyCache::new(4);
        let a = cache.get_or_classify("SELECT 1", &none());
        let b = cache.get_or_classify("SELECT 1", &none());
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(cache.stats(), CacheStats { hits: 1, misses: 1 });
    }

    #[test]
    fn bounded_and_evicts_the_least_recently_used() {
        let mut cache = ClassifyCache::new(4); // two generations of two
        let v = none();
        cache.get_or_classify("SELECT 1", &v);
        cache.get_or_classify("SELECT 2", &v);
        cache.get_or_classify("SELECT 3", &v); // young {1,2} becomes old
        cache.get_or_classify("SELECT 1", &v); // promoted from old
        assert_eq!(cache.stats().hits, 1);
        cache.get_or_classify("SELECT 4", &v); // young {3,1} becomes old; 2 is dropped
        assert!(cache.len() <= 4);
        let misses = cache.stats().misses;
        cache.get_or_classify("SELECT 1", &v);
        cache.get_or_classify("SELECT 3", &v);
        assert_eq!(cache.stats().misses, misses, "recent entries survive");
        cache.get_or_classify("SELECT 2", &v);
        assert_eq!(
            cache.stats().misses,
            misses + 1,
            "the oldest entry was evicted"
        );
        for i in 0..100 {
            cache.get_or_classify(&format!("SELECT {i}"), &v);
            assert!(cache.len() <= 4);
        }
    }

    #[test]
    fn clear_forgets_everything() {
        let mut cache = ClassifyCache::new(8);
        let mut volatile = none();
        assert_eq!(
            cache.get_or_classify("SELECT f()", &volatile).class,
            Class::Read
        );
        volatile.insert("f".into());
        // Stale until cleared, which is why the caller must clear.
        assert_eq!(
            cache.get_or_classify("SELECT f()", &volatile).class,
            Class::Read
        );
        cache.clear();
        assert!(cache.is_empty());
        assert_eq!(
            cache.get_or_classify("SELECT f()", &volatile).class,
            Class::Write
        );
    }

    #[test]
    fn zero_capacity_and_long_statements_are_not_cached() {
        let mut cache = ClassifyCache::new(0);
        cache.get_or_classify("SELECT 1", &none());
        assert!(cache.is_empty());
        let mut cache = ClassifyCache::new(8);
        let long = format!("SELECT 1 /* {} */", "x".repeat(MAX_CACHED_SQL_LEN));
        cache.get_or_classify(&long, &none());
        assert!(cache.is_empty());
    }
}

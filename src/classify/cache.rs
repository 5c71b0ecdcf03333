//! A bounded cache of classifications, shared by every session of a
//! database, so that a statement an application repeats is parsed once for
//! all of them. Entries are keyed by the statement's shape (its literals
//! made canonical, [`super::shape`]) when the classification cannot depend
//! on a literal's value, and by the exact text otherwise (SET, set_config,
//! anything with session effects): `... WHERE aid = 17` and `... WHERE aid
//! = 42` share one entry. Each entry remembers the VOLATILE function list
//! (its generation) it was classified with and serves only sessions that
//! classify with that list.
//!
//! Two hash-map generations make an approximate LRU with O(1) operations
//! and no extra bookkeeping: new entries go to `young`; when `young` is full
//! it becomes `old` (the previous `old` is dropped); a hit in `old` moves the
//! entry back to `young`. Entries not used during two generations are
//! forgotten. One mutex guards the maps; it is held for a lookup or an
//! insert, never while parsing.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::shape::{literal_free, shape};
use super::{classify, Classification};

/// Statements longer than this are classified but not cached: long texts are
/// mostly one-off (bulk INSERTs) and would crowd out the statements that repeat.
pub const MAX_CACHED_SQL_LEN: usize = 16 * 1024;

thread_local! {
    /// Where a lookup writes the statement's shape: one buffer per thread,
    /// so neither a lookup nor an idle session holds one of its own.
    static SHAPE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Hit and miss counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

/// The VOLATILE function list a statement is classified with: the folded
/// names, and the generation that tells one list from another.
#[derive(Debug, Clone, Copy)]
pub struct Functions<'a> {
    pub generation: u64,
    pub names: &'a HashSet<String>,
}

#[derive(Debug)]
pub struct ClassifyCache {
    maps: Mutex<Generations>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Debug)]
struct Generations {
    /// Entries per generation; the cache holds at most twice this.
    size: usize,
    young: Texts,
    old: Texts,
}

/// Statement texts to entries. foldhash, seeded at random: a lookup hashes
/// the whole statement, on every request.
type Texts = HashMap<Box<str>, Entry, foldhash::fast::RandomState>;

#[derive(Debug, Clone)]
struct Entry {
    classification: Arc<Classification>,
    /// The generation of the function list it was classified with.
    functions: u64,
    /// Filed under its shape: it serves every statement of that shape.
    by_shape: bool,
}

impl ClassifyCache {
    /// A cache holding at most `capacity` entries (rounded up to an even
    /// number); 0 disables caching.
    pub fn new(capacity: usize) -> Self {
        Self {
            maps: Mutex::new(Generations {
                size: capacity.div_ceil(2),
                young: Texts::default(),
                old: Texts::default(),
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The cached classification of `sql`, classifying it on a miss.
    pub fn get_or_classify(&self, sql: &str, functions: Functions<'_>) -> Arc<Classification> {
        // The shape a miss files its result under (none: not cached).
        let mut shaped = None;
        if sql.len() <= MAX_CACHED_SQL_LEN {
            let hit = SHAPE.with_borrow_mut(|buf| {
                let key = shape(sql, buf)?;
                let hit = self.recall(sql, key, functions);
                if hit.is_none() {
                    shaped = Some(key.to_owned());
                }
                hit
            });
            if let Some(hit) = hit {
                self.count_hit();
                return hit;
            }
        }
        self.classify_and_file(sql, shaped, functions)
    }

    /// A miss: parses `sql` and files the result. Out of line and cold:
    /// the parser's large stack frame is paid only when it runs, not on
    /// every lookup.
    #[cold]
    #[inline(never)]
    fn classify_and_file(
        &self,
        sql: &str,
        shaped: Option<String>,
        functions: Functions<'_>,
    ) -> Arc<Classification> {
        self.misses.fetch_add(1, Ordering::Relaxed);
        let classified = Arc::new(classify(sql, functions.names));
        if let Some(key) = shaped {
            let by_shape = literal_free(&classified);
            let key = if by_shape { key } else { sql.to_owned() };
            let entry = Entry {
                classification: Arc::clone(&classified),
                functions: functions.generation,
                by_shape,
            };
            self.lock().insert(key.into_boxed_str(), entry);
        }
        classified
    }

    /// The entry that serves `sql` (whose shape is `key`): one filed under
    /// the shape, or one filed under the exact text.
    fn recall(
        &self,
        sql: &str,
        key: &str,
        functions: Functions<'_>,
    ) -> Option<Arc<Classification>> {
        let mut maps = self.lock();
        let current = |e: &Entry| e.functions == functions.generation;
        if let Some(hit) = maps
            .get(key)
            .filter(|e| current(e) && (e.by_shape || key == sql))
        {
            return Some(hit.classification);
        }
        if key == sql {
            return None;
        }
        maps.get(sql).filter(current).map(|e| e.classification)
    }

    /// Counts a hit: a lookup here, or a caller's copy of an earlier answer.
    pub fn count_hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        let maps = self.lock();
        maps.young.len() + maps.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // The maps stay consistent whatever panicked while they were held.
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Generations {
    /// The entry under `key`, moved back to `young` if it was in `old`.
    fn get(&mut self, key: &str) -> Option<Entry> {
        if let Some(hit) = self.young.get(key) {
            return Some(hit.clone());
        }
        let (key, hit) = self.old.remove_entry(key)?;
        self.insert(key, hit.clone());
        Some(hit)
    }

    fn insert(&mut self, key: Box<str>, entry: Entry) {
        if self.size == 0 {
            return;
        }
        if self.young.len() >= self.size {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Class, SessionEffect};

    fn with<'a>(generation: u64, names: &'a HashSet<String>) -> Functions<'a> {
        Functions { generation, names }
    }

    #[test]
    fn statements_differing_only_in_literals_share_one_entry() {
        let cache = ClassifyCache::new(8);
        let none = HashSet::new();
        let a = cache.get_or_classify("SELECT v FROM t WHERE k = 1", with(0, &none));
        let b = cache.get_or_classify("SELECT v FROM t WHERE k = 2", with(0, &none));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(cache.stats(), CacheStats { hits: 1, misses: 1 });
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn classifications_with_values_are_kept_by_exact_text() {
        let cache = ClassifyCache::new(8);
        let none = HashSet::new();
        let value = |sql: &str| match &cache.get_or_classify(sql, with(0, &none)).effects[..] {
            [SessionEffect::Set { value, .. }] => value.unquoted().to_owned(),
            other => panic!("{other:?}"),
        };
        assert_eq!(value("SET work_mem = '64MB'"), "64MB");
        assert_eq!(
            value("SET work_mem = '1GB'"),
            "1GB",
            "not the other's value"
        );
        assert_eq!(value("SET work_mem = ''"), "");
        assert_eq!(value("SET work_mem = '64MB'"), "64MB");
        assert_eq!(cache.stats().hits, 1);
    }

    #[test]
    fn an_entry_serves_only_the_function_list_it_was_made_with() {
        let cache = ClassifyCache::new(8);
        let none = HashSet::new();
        let listed: HashSet<String> = ["f".to_owned()].into();
        assert_eq!(
            cache.get_or_classify("SELECT f(1)", with(1, &none)).class,
            Class::Read
        );
        assert_eq!(
            cache.get_or_classify("SELECT f(2)", with(2, &listed)).class,
            Class::Write
        );
        assert_eq!(
            cache.get_or_classify("SELECT f(3)", with(2, &listed)).class,
            Class::Write
        );
        assert_eq!(cache.stats(), CacheStats { hits: 1, misses: 2 });
    }

    #[test]
    fn bounded_and_evicts_the_least_recently_used() {
        let cache = ClassifyCache::new(4); // two generations of two
        let none = HashSet::new();
        let v = with(0, &none);
        let misses = |sql: &str| {
            let before = cache.stats().misses;
            cache.get_or_classify(sql, v);
            cache.stats().misses - before
        };
        misses("SELECT a");
        misses("SELECT b");
        misses("SELECT c"); // young {a,b} becomes old
        assert_eq!(misses("SELECT a"), 0, "promoted from old");
        misses("SELECT d"); // young {c,a} becomes old; b is dropped
        assert_eq!(
            misses("SELECT a") + misses("SELECT c"),
            0,
            "recent entries survive"
        );
        assert_eq!(misses("SELECT b"), 1, "the oldest entry was evicted");
        for i in 0..100 {
            cache.get_or_classify(&format!("SELECT c{i}"), v);
            assert!(cache.len() <= 4);
        }
    }

    #[test]
    fn zero_capacity_and_long_statements_are_not_cached() {
        let none = HashSet::new();
        let cache = ClassifyCache::new(0);
        cache.get_or_classify("SELECT 1", with(0, &none));
        assert!(cache.is_empty());
        let cache = ClassifyCache::new(8);
        let long = format!("SELECT 1 /* {} */", "x".repeat(MAX_CACHED_SQL_LEN));
        cache.get_or_classify(&long, with(0, &none));
        assert!(cache.is_empty());
    }
}

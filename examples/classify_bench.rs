//! Times the classification hit path (through `ClassifyCache`) against the
//! miss path (`classify`, which tokenizes, parses and walks the statement)
//! for a few typical pgbench and ORM statements, and the hit path of
//! simple-protocol statements whose literals differ every time (they share
//! one entry by their shape).
//!
//! `cargo run --release --example classify_bench [N]` (default N = 1,000,000).

use std::collections::HashSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use palisade::classify::{classify, ClassifyCache, Functions};

const STATEMENTS: &[&str] = &[
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
    "BEGIN",
    "SELECT \"users\".* FROM \"users\" WHERE \"users\".\"id\" = $1 LIMIT $2",
    "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id \
     WHERE o.status = ANY($1) AND c.email ILIKE $2 AND o.meta->>'channel' = $3 \
     ORDER BY o.created_at DESC LIMIT 20 OFFSET $4",
];

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let volatile: HashSet<String> = ["audit_log", "public.audit_log"]
        .iter()
        .map(|s| s.to_string())
        .collect();

    let functions = Functions {
        generation: 1,
        names: &volatile,
    };
    let cache = ClassifyCache::new(1024);
    for sql in STATEMENTS {
        cache.get_or_classify(sql, functions);
    }
    let hit = time(n, STATEMENTS, |sql| {
        black_box(cache.get_or_classify(black_box(sql), functions));
    });
    let miss = time(n, STATEMENTS, |sql| {
        black_box(classify(black_box(sql), &volatile));
    });
    let literals: Vec<String> = (0..1000)
        .map(|aid| format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"))
        .collect();
    let literals: Vec<&str> = literals.iter().map(String::as_str).collect();
    let shaped = time(n, &literals, |sql| {
        black_box(cache.get_or_classify(black_box(sql), functions));
    });

    let per_op = |d: Duration| d.as_nanos() as f64 / n as f64;
    println!("statements: {} (round-robin), N = {n}", STATEMENTS.len());
    println!(
        "hit  (ClassifyCache::get_or_classify): {:10.1} ns/op",
        per_op(hit)
    );
    println!(
        "miss (classify):                       {:10.1} ns/op",
        per_op(miss)
    );
    println!(
        "hit by shape (pgbench -S, simple):     {:10.1} ns/op",
        per_op(shaped)
    );
    println!("speed-up: {:.0}x", per_op(miss) / per_op(hit));
}

fn time(n: usize, statements: &[&str], mut op: impl FnMut(&str)) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        op(statements[i % statements.len()]);
    }
    start.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade::classify::Class;

    /// The timed statements are the ones the proxy will see most: make sure
    /// they are classified as the router needs them.
    #[test]
    fn timed_statements_classify_as_expected() {
        let expected = [
            Class::Read,
            Class::Write,
            Class::Write,
            Class::Write,
            Class::Read,
            Class::Read,
        ];
        let cache = ClassifyCache::new(16);
        let none = HashSet::new();
        let functions = Functions {
            generation: 0,
            names: &none,
        };
        for (sql, class) in STATEMENTS.iter().zip(expected) {
            assert_eq!(classify(sql, &none).class, class, "{sql}");
            assert_eq!(cache.get_or_classify(sql, functions).class, class, "{sql}");
        }
    }
}

//! Faults a select-only load through Palisade must not see: a replica
//! frozen (its postmaster and backends SIGSTOPped, as a VM pause or a
//! storage stall looks), and every replica backend of the load terminated
//! over and over. pgbench drives the load; each test reports its figures
//! (failed transactions, worst and 99th-percentile latency, time until the
//! frozen node is suspect) for BENCHMARKS.md.
//!
//! Each test has a cluster of its own (a primary and two replicas) and runs
//! alone (`SERIAL`), so that it freezes nothing another test uses and its
//! latencies are not another test's. The proxy runs with `palisade demo`'s
//! defaults.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade::config::Config;
use palisade::proxy::Proxy;
use palisade::topology::Role;
use palisade_testkit::{signal, LocalCluster};
use support::demo::demo_config;
use support::harness::{connect_node, wait_topology};
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

const DB: &str = "bench";

/// A cluster of the test's own, with pgbench's tables (scale 1) on every
/// node, and a proxy in front of it with the demo's config.
async fn setup() -> (Arc<LocalCluster>, Proxy, Config) {
    let cluster = tokio::task::spawn_blocking(|| LocalCluster::start(Default::default()))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot start a cluster: {e}"));
    let cluster = Arc::new(cluster);
    cluster.psql(0, &format!("CREATE DATABASE {DB}")).unwrap();
    let config = demo_config(&cluster, "127.0.0.1:0".parse().unwrap());
    let proxy = Proxy::start(config.clone()).await.expect("proxy starts");
    wait_topology(&proxy, "every node up", |t| {
        t.primary().is_some() && t.nodes.iter().all(|n| n.healthy)
    })
    .await;
    let port = proxy.local_addr().port();
    let c = cluster.clone();
    let init = tokio::task::spawn_blocking(move || pgbench(&c, port, &["-i", "-q", "-s", "1", DB]));
    let (ok, out) = init.await.unwrap();
    assert!(ok, "pgbench -i failed:\n{out}");
    wait_topology(&proxy, "the replicas to replay pgbench's tables", |t| {
        t.nodes
            .iter()
            .all(|n| n.role == Role::Primary || n.replication.lag_bytes == Some(0))
    })
    .await;
    (cluster, proxy, config)
}

/// Runs pgbench against the proxy; whether it exited 0 (no client
/// aborted, no failed transaction) and everything it printed.
fn pgbench(cluster: &LocalCluster, port: u16, args: &[&str]) -> (bool, String) {
    let output = Command::new(cluster.bin_dir().join("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", cluster.superuser()])
        .args(args)
        .env("PGPASSWORD", cluster.password())
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap_or_else(|e| panic!("cannot run pgbench: {e}"));
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A select-only run of `seconds` with 8 clients, every transaction's
/// latency logged under `dir`.
fn select_only(cluster: &LocalCluster, port: u16, mode: &str, seconds: u64, dir: &Path) -> Run {
    let prefix = dir.join("txn");
    let (ok, text) = pgbench(
        cluster,
        port,
        &[
            "-S",
            "-M",
            mode,
            "-c",
            "8",
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-P",
            "1",
            "--log",
            &format!("--log-prefix={}", prefix.display()),
            DB,
        ],
    );
    let latencies = logged_latencies(dir);
    Run {
        ok,
        text,
        latencies,
    }
}

/// What a pgbench run came to.
struct Run {
    ok: bool,
    text: String,
    /// Every transaction's latency, in microseconds, sorted; a failed one
    /// counts as `u64::MAX`.
    latencies: Vec<u64>,
}

impl Run {
    /// The count after `label` in pgbench's report.
    fn reported(&self, label: &str) -> Option<u64> {
        let line = self.text.lines().find(|l| l.starts_with(label))?;
        line[label.len()..].split_whitespace().next()?.parse().ok()
    }

    fn worst(&self) -> Duration {
        Duration::from_micros(self.latencies.last().copied().unwrap_or(0))
    }

    fn p99(&self) -> Duration {
        let i = (self.latencies.len() * 99 / 100).min(self.latencies.len().saturating_sub(1));
        Duration::from_micros(self.latencies.get(i).copied().unwrap_or(0))
    }

    /// No client aborted and no transaction failed; returns how many
    /// transactions ran.
    fn assert_no_failure(&self, what: &str) -> u64 {
        assert!(self.ok, "{what}: pgbench reported errors:\n{}", self.text);
        assert_eq!(
            self.reported("number of failed transactions:"),
            Some(0),
            "{what}:\n{}",
            self.text
        );
        assert!(!self.text.contains("aborted"), "{what}:\n{}", self.text);
        let processed = self
            .reported("number of transactions actually processed:")
            .unwrap_or(0);
        assert_eq!(
            processed,
            self.latencies.len() as u64,
            "{what}: every transaction logged"
        );
        assert!(
            self.latencies.iter().all(|&l| l != u64::MAX),
            "{what}: a failed transaction in the log"
        );
        processed
    }

    /// The lowest transactions per second of pgbench's progress reports.
    fn slowest_second(&self) -> f64 {
        self.text
            .lines()
            .filter(|l| l.starts_with("progress:"))
            .filter_map(|l| {
                l.split(", ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .fold(f64::INFINITY, f64::min)
    }
}

/// The latencies in pgbench's per-transaction logs under `dir` (each line:
/// client, transaction, latency in µs or "failed", ...), sorted.
fn logged_latencies(dir: &Path) -> Vec<u64> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            if let Some(time) = line.split_whitespace().nth(2) {
                all.push(time.parse().unwrap_or(u64::MAX));
            }
        }
    }
    all.sort_unstable();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_costs_select_only_load_no_failed_transaction() {
    let _serial = SERIAL.lock().await;
    let (cluster, proxy, config) = setup().await;
    let port = proxy.local_addr().port();
    let dir = tempfile::tempdir().unwrap();
    let (freeze_at, frozen_for) = (Duration::from_secs(3), Duration::from_secs(15));
    let run_for = freeze_at + frozen_for + Duration::from_secs(3);
    let (c, logs) = (cluster.clone(), dir.path().to_owned());
    let load = tokio::task::spawn_blocking(move || {
        select_only(&c, port, "simple", run_for.as_secs(), &logs)
    });

    tokio::time::sleep(freeze_at).await;
    let frozen = cluster.node(1);
    frozen.signal_server(signal::SIGSTOP).unwrap();
    let began = Instant::now();
    let suspected = until(began, frozen_for, || {
        let n = &proxy.topology().nodes[1];
        n.suspect || !n.healthy
    })
    .await;
    let down = until(began, frozen_for, || !proxy.topology().nodes[1].healthy).await;
    tokio::time::sleep(frozen_for.saturating_sub(began.elapsed())).await;
    frozen.signal_server(signal::SIGCONT).unwrap();
    let run = load.await.unwrap();

    let m = &config.monitor;
    let probe_timeout = Duration::from_millis(m.probe_timeout_ms);
    let stall = Duration::from_millis(config.routing.replica_stall_ms);
    let processed = run.assert_no_failure("replica frozen");
    eprintln!(
        "replica frozen {frozen_for:?} under pgbench -S -c 8: {processed} transactions, 0 failed; \
         worst latency {:?}, p99 {:?}; slowest second {:.0} tps; \
         suspect after {suspected:?}, down after {down:?}",
        run.worst(),
        run.p99(),
        run.slowest_second(),
    );
    // A probe starts within an interval of the freeze and gives up at its deadline.
    let detection = Duration::from_millis(m.probe_interval_ms) + probe_timeout;
    assert!(
        suspected < detection + Duration::from_millis(500),
        "suspect after {suspected:?}, the probes allow {detection:?}"
    );
    // Each probe of a frozen node ends at its deadline: no connect timeout
    // (5 s) per probe.
    let threshold = detection * m.health_threshold;
    assert!(
        down < threshold + Duration::from_secs(1),
        "down after {down:?}, {} probes take {threshold:?}",
        m.health_threshold
    );
    let bound = 2 * probe_timeout + stall + Duration::from_secs(1);
    assert!(
        run.worst() < bound,
        "worst latency {:?} over {bound:?}",
        run.worst()
    );
    // With `palisade demo`'s defaults (this config), no read waits out a
    // freeze: none takes 3 s.
    assert!(
        run.worst() < Duration::from_secs(3),
        "worst latency {:?} under a frozen replica with the demo's defaults",
        run.worst()
    );
    wait_topology(&proxy, "the thawed replica to be up again", |t| {
        t.nodes[1].healthy && !t.nodes[1].suspect
    })
    .await;
}

/// How long after `began` `check` first holds (polled every 5 ms), or
/// `Duration::MAX` when it does not within `limit`.
async fn until(began: Instant, limit: Duration, check: impl Fn() -> bool) -> Duration {
    loop {
        if check() {
            return began.elapsed();
        }
        if began.elapsed() > limit {
            return Duration::MAX;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Terminates, every 200 ms until `stop`, every backend application
/// `pgbench` has on the replicas; counts them in `terminated`.
async fn terminate_replica_backends(
    cluster: Arc<LocalCluster>,
    stop: Arc<AtomicBool>,
    terminated: Arc<AtomicU64>,
) {
    let mut replicas = Vec::new();
    for node in cluster.replicas() {
        replicas.push(connect_node(&cluster, node).await.unwrap());
    }
    let sql = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
               WHERE application_name = 'pgbench' AND pid <> pg_backend_pid()";
    while !stop.load(Ordering::Relaxed) {
        for replica in &replicas {
            let n: i64 = replica.query_one(sql, &[]).await.unwrap().get(0);
            terminated.fetch_add(n.unsigned_abs(), Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_backends_terminated_every_200ms_cost_no_failed_transaction() {
    let _serial = SERIAL.lock().await;
    let (cluster, proxy, _) = setup().await;
    let port = proxy.local_addr().port();
    for mode in ["simple", "prepared"] {
        let dir = tempfile::tempdir().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let terminated = Arc::new(AtomicU64::new(0));
        let killer = tokio::spawn(terminate_replica_backends(
            cluster.clone(),
            stop.clone(),
            terminated.clone(),
        ));
        let (c, logs) = (cluster.clone(), dir.path().to_owned());
        let run = tokio::task::spawn_blocking(move || select_only(&c, port, mode, 10, &logs))
            .await
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        killer.await.unwrap();
        let terminated = terminated.load(Ordering::Relaxed);
        let processed = run.assert_no_failure(mode);
        eprintln!(
            "-M {mode}: {terminated} replica backends terminated in 10 s of pgbench -S -c 8: \
             {processed} transactions, 0 failed; worst latency {:?}, p99 {:?}",
            run.worst(),
            run.p99(),
        );
        assert!(
            terminated >= 20,
            "{mode}: only {terminated} backends terminated"
        );
    }
}

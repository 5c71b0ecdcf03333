//! Automatic failover against real clusters: each test starts a cluster of
//! its own (a primary and two replicas), since it kills, freezes or cuts off
//! nodes, and runs alone (`SERIAL`) so that failure detection is not starved
//! of CPU by another test's cluster.
//!
//! Node 0 starts as the primary; the proxy's topology lists the nodes in
//! cluster order.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade::config::{AuthMethod, Config, ReplicationMode};
use palisade::proxy::Proxy;
use palisade::topology::WriteState;
use palisade_testkit::{signal, FaultyRelay, LocalCluster, LocalNode};
use support::demo::LocalRejoin;
use support::failover_cluster as cluster;
use support::harness::{
    client, connect_node, connect_with, console_url, proxy_config, sqlstate, url, user,
    wait_topology,
};
use support::nodes::{fresh_table, wait_until};
use tokio::sync::Mutex;
use tokio_postgres::Client;

static SERIAL: Mutex<()> = Mutex::const_new(());

/// The failure-detection budget the tests configure.
const FAILOVER_TIMEOUT_MS: u64 = 2_000;

/// Short probes and timeouts, the epoch kept in `state_dir`.
fn failover_config(cluster: &LocalCluster, state_dir: &std::path::Path) -> Config {
    let mut c = proxy_config(cluster);
    c.monitor.probe_timeout_ms = 500;
    c.monitor.health_threshold = 2;
    c.proxy.connect_timeout_ms = 1_000;
    c.failover.failover_timeout_ms = FAILOVER_TIMEOUT_MS;
    c.failover.state_file = Some(state_dir.join("palisade-state.toml"));
    c
}

async fn start(config: Config, cluster: &Arc<LocalCluster>) -> Proxy {
    let proxy = Proxy::start_with(config, Arc::new(LocalRejoin::new(cluster.clone())))
        .await
        .expect("proxy starts");
    wait_topology(&proxy, "a primary", |t| t.primary().is_some()).await;
    proxy
}

/// The superuser's connection string through `proxy`.
fn superuser_url(proxy: &Proxy, cluster: &LocalCluster) -> String {
    url(proxy, cluster.superuser(), cluster.password())
}

/// Retries `INSERT INTO t` through fresh connections to the proxy until one
/// succeeds; returns how long that took.
async fn write_until_accepted(proxy: &Proxy, cluster: &LocalCluster, table: &str) -> Duration {
    let began = Instant::now();
    loop {
        if let Ok((c, _)) = connect_with(&superuser_url(proxy, cluster)).await {
            if c.batch_execute(&format!("INSERT INTO {table} VALUES (-1)"))
                .await
                .is_ok()
            {
                return began.elapsed();
            }
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "no write accepted within 60 s: {:?}",
            proxy.topology()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `node` streams WAL from a primary listening on `port`.
async fn streams_from(node: &LocalNode, cluster: &LocalCluster, port: u16) -> bool {
    let Ok(c) = connect_node(cluster, node).await else {
        return false;
    };
    c.query_one(
        "SELECT coalesce((SELECT status = 'streaming' AND sender_port = $1 FROM pg_stat_wal_receiver), false)",
        &[&i32::from(port)],
    )
    .await
    .is_ok_and(|r| r.get(0))
}

/// A test's own cluster with a proxy in front of it (failover config, the
/// epoch kept in `dir`), a client through it, and the table `ft` that
/// [`write_until_accepted`] writes to; `serial` keeps other tests out.
struct Fixture {
    serial: tokio::sync::MutexGuard<'static, ()>,
    cluster: Arc<LocalCluster>,
    dir: tempfile::TempDir,
    proxy: Proxy,
    client: Client,
}

async fn fixture() -> Fixture {
    fixture_with(|_| {}).await
}

/// [`fixture`] with the proxy's config adjusted by `tweak`.
async fn fixture_with(tweak: impl FnOnce(&mut Config)) -> Fixture {
    let serial = SERIAL.lock().await;
    let cluster = cluster();
    let dir = tempfile::tempdir().unwrap();
    let mut config = failover_config(&cluster, dir.path());
    tweak(&mut config);
    let proxy = start(config, &cluster).await;
    let client = client(&proxy, &cluster, "failover").await;
    fresh_table(&client, "ft", "i int").await;
    Fixture {
        serial,
        cluster,
        dir,
        proxy,
        client,
    }
}

/// The port of the node that served a read through `c`.
async fn read_port(c: &Client) -> u16 {
    served_port(c, "SELECT inet_server_port()").await
}

/// The port of the node that takes `c`'s writes.
async fn primary_port(c: &Client) -> u16 {
    served_port(c, "/* palisade: primary */ SELECT inet_server_port()").await
}

async fn served_port(c: &Client, sql: &str) -> u16 {
    let port: i32 = c.query_one(sql, &[]).await.unwrap().get(0);
    u16::try_from(port).unwrap()
}

/// Waits until the primary's `synchronous_standby_names` satisfies `check`.
async fn wait_sync_standbys(cluster: &LocalCluster, what: &str, check: impl Fn(&str) -> bool) {
    let primary = connect_node(cluster, cluster.primary()).await.unwrap();
    wait_until(what, Duration::from_secs(30), || async {
        let names: String = primary
            .query_one("SHOW synchronous_standby_names", &[])
            .await
            .unwrap()
            .get(0);
        check(&names)
    })
    .await;
}

/// Stops (or starts) every replica, off the runtime the proxy runs on.
async fn replicas_running(cluster: &Arc<LocalCluster>, running: bool) {
    let cluster = cluster.clone();
    tokio::task::spawn_blocking(move || {
        for replica in cluster.replicas() {
            if running {
                replica.start().unwrap();
            } else {
                replica.stop().unwrap();
            }
        }
    })
    .await
    .unwrap();
}

/// Runs the shared checks after the primary (node 0) failed: a replica is
/// promoted in a new epoch, the other streams from it, writes are accepted
/// again, and the old primary is fenced in the published topology.
async fn assert_failed_over(proxy: &Proxy, cluster: &LocalCluster, began: Instant) -> usize {
    let took = write_until_accepted(proxy, cluster, "ft").await;
    let elapsed = began.elapsed();
    let t = proxy.topology();
    let new = t.primary().expect("a new primary");
    eprintln!(
        "failover: writes accepted again {:.1} s after the failure ({:.1} s of retrying); new primary node{new}, epoch {}",
        elapsed.as_secs_f64(),
        took.as_secs_f64(),
        t.epoch
    );
    assert_ne!(new, 0, "a replica was promoted");
    assert!(t.epoch >= 2, "promotion bumps the epoch: {t:?}");
    assert!(
        elapsed < Duration::from_millis(FAILOVER_TIMEOUT_MS) + Duration::from_secs(10),
        "writes took {elapsed:?} to come back"
    );
    let other = 3 - new;
    let new_port = cluster.node(new).port;
    wait_until(
        &format!("node{other} to stream from the new primary node{new}"),
        Duration::from_secs(30),
        || streams_from(cluster.node(other), cluster, new_port),
    )
    .await;
    new
}

#[tokio::test]
async fn a_killed_primary_is_replaced_and_writes_resume() {
    let f = fixture().await;
    let (cluster, proxy) = (&f.cluster, &f.proxy);
    let c = &f.client;
    assert_eq!(proxy.topology().epoch, 1, "the first epoch names node0");

    cluster.primary().kill(signal::SIGKILL).unwrap();
    let began = Instant::now();
    let new = assert_failed_over(proxy, cluster, began).await;
    // The session that was connected before carries on, on the new primary.
    c.batch_execute("INSERT INTO ft VALUES (1)")
        .await
        .or_else(|e| {
            // Its server connection died with the old primary: a clean error once.
            assert_eq!(sqlstate(&e).get(..2), Some("08"), "{e:?}");
            Ok::<_, ()>(())
        })
        .unwrap();
    let c = client(proxy, cluster, "failover").await;
    let port = primary_port(&c).await;
    assert_eq!(port, cluster.node(new).port);
}

#[tokio::test]
async fn a_write_that_finds_its_primary_dead_waits_for_the_new_one() {
    // The monitor takes 5 s to believe the primary is down: meanwhile it is
    // still published as the primary, and a write cannot reach it.
    let f = fixture_with(|c| {
        c.monitor.health_threshold = 50;
        c.monitor.probe_interval_ms = 100;
        c.failover.failover_timeout_ms = 5_000;
        c.failover.failover_wait_ms = 60_000;
    })
    .await;
    let (cluster, proxy) = (&f.cluster, &f.proxy);
    let c = client(proxy, cluster, "failover-wait").await;
    let old = proxy.topology().primary();
    cluster.primary().kill(signal::SIGKILL).unwrap();
    // Past the pool's freshness window, so the write needs a new connection.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(proxy.topology().primary(), old, "not failed over yet");
    let began = Instant::now();
    c.batch_execute("INSERT INTO ft VALUES (7)")
        .await
        .expect("a write that never reached the dead primary runs on the new one");
    eprintln!("the write waited {:?} for the new primary", began.elapsed());
    let t = proxy.topology();
    assert_ne!(t.primary(), old, "it ran after the failover");
    let direct = connect_node(cluster, cluster.node(t.primary().unwrap()))
        .await
        .unwrap();
    let n: i64 = direct
        .query_one("SELECT count(*) FROM ft WHERE i = 7", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the row is on the new primary");
}

/// What one client saw across a primary kill: successes, and the SQLSTATE
/// of each failure.
#[derive(Default)]
struct Seen {
    ok: Vec<i64>,
    failed: Vec<String>,
}

/// Autocommit inserts (`writer`) or reads on one connection through the
/// proxy until `stop`; a failure is recorded, and the connection remade if
/// it is gone.
async fn keep_working(
    url: String,
    writer: bool,
    stop: Arc<AtomicBool>,
    next: Arc<AtomicU64>,
) -> Seen {
    let mut seen = Seen::default();
    let mut conn = Reconnecting { url, client: None };
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = conn.get().await else {
            continue;
        };
        let result = if writer {
            let id = next.fetch_add(1, Ordering::Relaxed) as i64;
            c.execute("INSERT INTO acked VALUES ($1)", &[&id])
                .await
                .map(|_| id)
        } else {
            c.query_one("SELECT count(*) FROM acked", &[])
                .await
                .map(|r| r.get(0))
        };
        match result {
            Ok(v) => seen.ok.push(v),
            Err(e) => {
                seen.failed.push(sqlstate(&e));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    seen
}

#[tokio::test]
async fn a_primary_killed_under_load_fails_no_read_and_only_the_writes_it_held() {
    let f = fixture_with(|c| c.failover.replication_mode = ReplicationMode::Sync).await;
    let (cluster, proxy) = (&f.cluster, &f.proxy);
    fresh_table(&f.client, "acked", "id bigint PRIMARY KEY").await;
    wait_sync_standbys(cluster, "synchronous standbys to be set", |n| {
        n.starts_with("ANY 1")
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(1));
    let (writers, readers) = (4, 4);
    let work: Vec<_> = (0..writers + readers)
        .map(|i| {
            let url = superuser_url(proxy, cluster);
            tokio::spawn(keep_working(url, i < writers, stop.clone(), next.clone()))
        })
        .collect();
    wait_until("200 inserts", Duration::from_secs(60), || async {
        next.load(Ordering::Relaxed) > 200
    })
    .await;
    cluster.primary().kill(signal::SIGKILL).unwrap();
    let began = Instant::now();
    let new = assert_failed_over(proxy, cluster, began).await;
    let after = next.load(Ordering::Relaxed);
    wait_until(
        "200 inserts after the failover",
        Duration::from_secs(60),
        || async { next.load(Ordering::Relaxed) > after + 200 },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for w in work {
        seen.push(w.await.unwrap());
    }
    let (wrote, read) = seen.split_at(writers);
    let acked: Vec<i64> = wrote.iter().flat_map(|s| s.ok.clone()).collect();
    let write_errors: Vec<&String> = wrote.iter().flat_map(|s| &s.failed).collect();
    let read_errors: Vec<&String> = read.iter().flat_map(|s| &s.failed).collect();
    let reads: usize = read.iter().map(|s| s.ok.len()).sum();
    eprintln!(
        "kill under load: {} inserts acknowledged, {} failed {write_errors:?}; {reads} reads, {} failed",
        acked.len(),
        write_errors.len(),
        read_errors.len()
    );
    let mut codes = read_errors.clone();
    codes.dedup();
    assert!(read_errors.is_empty(), "reads failed: {codes:?}");
    assert!(
        write_errors.len() <= writers,
        "only a write in flight on the dead primary may fail: {write_errors:?}"
    );
    // Class 08 from the proxy as an ERROR (the outcome is unknown): never
    // the dying server's FATAL, which the client library would take as
    // the end of its connection ("connection closed"), never a success
    // that was not one, never another error.
    assert!(
        write_errors.iter().all(|s| s.starts_with("08")),
        "a write the primary took down with it gets a class 08 error: {write_errors:?}"
    );
    let direct = connect_node(cluster, cluster.node(new)).await.unwrap();
    let present: i64 = direct
        .query_one("SELECT count(*) FROM acked WHERE id = ANY($1)", &[&acked])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        present as usize,
        acked.len(),
        "an acknowledged insert was lost"
    );
}

/// The status code of `GET path` on the monitoring endpoint at `addr`.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    String::from_utf8_lossy(&reply).into_owned()
}

async fn http_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    http_get(addr, path)
        .await
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The value of an unlabelled counter in a `/metrics` scrape.
async fn counter(addr: std::net::SocketAddr, metric: &str) -> f64 {
    let reply = http_get(addr, "/metrics").await;
    let (_, body) = reply.split_once("\r\n\r\n").expect("header and body");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("the exposition parses");
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric)
        .map(|s| match s.value {
            // OpenMetrics names a counter's family without `_total`, so
            // the parser leaves the sample untyped.
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{metric} is no counter: {other:?}"),
        })
        .unwrap_or_else(|| panic!("{metric} missing"))
}

#[tokio::test]
async fn ready_flips_to_503_while_the_primary_is_failed_over_and_back() {
    let f = fixture_with(|c| c.http.listen = "127.0.0.1:0".into()).await;
    let (cluster, proxy) = (&f.cluster, &f.proxy);
    let http = proxy.http_addr().expect("http endpoint on");
    assert_eq!(http_status(http, "/ready").await, 200);
    assert_eq!(http_status(http, "/primary").await, 200);
    assert_eq!(counter(http, "palisade_failovers_total").await, 0.0);
    cluster.primary().kill(signal::SIGKILL).unwrap();
    let began = Instant::now();
    wait_until("/ready to say 503", Duration::from_secs(30), || async {
        http_status(http, "/ready").await == 503
    })
    .await;
    assert_eq!(http_status(http, "/health").await, 200, "the process is up");
    wait_until(
        "/ready to say 200 again",
        Duration::from_secs(60),
        || async { http_status(http, "/ready").await == 200 },
    )
    .await;
    eprintln!(
        "/ready was 503 and back to 200 {:?} after the kill",
        began.elapsed()
    );
    let t = proxy.topology();
    assert_ne!(t.primary(), Some(0), "a replica was promoted: {t:?}");
    assert_eq!(http_status(http, "/primary").await, 200);
    assert_eq!(counter(http, "palisade_failovers_total").await, 1.0);
    assert_eq!(counter(http, "palisade_switchovers_total").await, 0.0);
    assert!(
        counter(http, "palisade_fences_total").await >= 1.0,
        "the old primary is fenced"
    );
}

#[tokio::test]
async fn a_hung_primary_is_replaced() {
    let f = fixture().await;
    let (cluster, proxy) = (&f.cluster, &f.proxy);

    cluster.primary().signal_server(signal::SIGSTOP).unwrap();
    let began = Instant::now();
    let new = assert_failed_over(proxy, cluster, began).await;
    // Thawed, the old primary still thinks it is a primary: it is fenced.
    cluster.primary().signal_server(signal::SIGCONT).unwrap();
    wait_topology(proxy, "node0 fenced", |t| t.nodes[0].fenced).await;
    assert_eq!(proxy.topology().primary(), Some(new));
}

#[tokio::test]
async fn a_proxy_cut_off_from_the_primary_does_not_fail_over() {
    let _serial = SERIAL.lock().await;
    let cluster = cluster();
    let dir = tempfile::tempdir().unwrap();
    let relay = FaultyRelay::start(
        format!("127.0.0.1:{}", cluster.primary().port)
            .parse()
            .unwrap(),
    );
    let mut config = failover_config(&cluster, dir.path());
    // The proxy reaches the primary only through the relay; the replicas
    // stream from it directly.
    config.nodes[0].port = relay.addr().port();
    // A write waits this long for a primary before it is refused.
    config.failover.failover_wait_ms = 1_000;
    let proxy = start(config, &cluster).await;
    let c = client(&proxy, &cluster, "failover").await;
    fresh_table(&c, "ft", "i int").await;
    let epoch = proxy.topology().epoch;

    relay.block();
    relay.cut();
    wait_topology(&proxy, "the primary to be unreachable", |t| {
        t.primary().is_none()
    })
    .await;
    let (c2, _) = connect_with(&superuser_url(&proxy, &cluster))
        .await
        .unwrap();
    let began = std::time::Instant::now();
    let err = c2
        .batch_execute("INSERT INTO ft VALUES (1)")
        .await
        .unwrap_err();
    assert_eq!(
        sqlstate(&err).get(..2),
        Some("08"),
        "writes get a connection error: {err:?}"
    );
    assert!(
        began.elapsed() >= Duration::from_millis(900),
        "the write waited failover_wait_ms for a primary first ({:?})",
        began.elapsed()
    );
    // Reads still work from the replicas.
    let in_recovery: bool = c2
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery);
    // Well past the failover timeout: nothing was promoted.
    tokio::time::sleep(Duration::from_millis(3 * FAILOVER_TIMEOUT_MS)).await;
    let t = proxy.topology();
    assert_eq!(t.epoch, epoch, "no new epoch: {t:?}");
    for replica in cluster.replicas() {
        let r = connect_node(&cluster, replica).await.unwrap();
        let still: bool = r
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get(0);
        assert!(still, "{} was promoted", replica.name);
    }

    relay.heal();
    wait_topology(&proxy, "the primary to be back", |t| t.primary() == Some(0)).await;
    write_until_accepted(&proxy, &cluster, "ft").await;
}

#[tokio::test]
async fn a_returning_old_primary_is_fenced_then_rejoined() {
    let f = fixture().await;
    let (cluster, proxy) = (&f.cluster, &f.proxy);

    cluster.primary().kill(signal::SIGKILL).unwrap();
    let new = assert_failed_over(proxy, cluster, Instant::now()).await;

    // The old primary comes back (after a crash it is still a primary).
    cluster.primary().start().unwrap();
    wait_topology(proxy, "node0 fenced", |t| t.nodes[0].fenced).await;
    let old = connect_node(cluster, cluster.primary()).await.unwrap();
    wait_until("node0 to be read-only", Duration::from_secs(30), || async {
        old.batch_execute("INSERT INTO ft VALUES (99)")
            .await
            .is_err()
    })
    .await;
    let old = connect_node(cluster, cluster.primary()).await.unwrap();
    let err = old
        .batch_execute("INSERT INTO ft VALUES (99)")
        .await
        .unwrap_err();
    assert_eq!(
        sqlstate(&err),
        "25006",
        "a write sent to it directly is refused: {err:?}"
    );
    // Nothing through the proxy reaches it.
    let c = client(proxy, cluster, "failover").await;
    let table = "fenced_probe";
    fresh_table(&c, table, "i int").await;
    for _ in 0..20 {
        let port = read_port(&c).await;
        assert_ne!(
            port,
            cluster.primary().port,
            "a read reached the fenced node"
        );
    }
    let port = primary_port(&c).await;
    assert_eq!(port, cluster.node(new).port);

    // REJOIN from the admin console: rewound, streaming, back in routing.
    let (console, _) = connect_with(&console_url(proxy, cluster)).await.unwrap();
    console.simple_query("REJOIN node0").await.unwrap();
    let new_port = cluster.node(new).port;
    wait_until(
        "node0 to stream from the new primary",
        Duration::from_secs(60),
        || streams_from(cluster.primary(), cluster, new_port),
    )
    .await;
    wait_topology(proxy, "node0 to be a healthy replica again", |t| {
        !t.nodes[0].fenced
            && t.nodes[0].healthy
            && t.nodes[0].replication.streaming
            && t.nodes[0].role == palisade::topology::Role::Replica
    })
    .await;
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        let port = read_port(&c).await;
        seen.insert(port);
    }
    assert!(
        seen.contains(&cluster.primary().port),
        "the rejoined node {} serves reads again: {seen:?}",
        cluster.primary().port
    );
}

/// A client through the proxy that reconnects once its connection dies
/// (as the old primary's sessions do in a failover).
struct Reconnecting {
    url: String,
    client: Option<Client>,
}

impl Reconnecting {
    /// The live client; `None`, after a short pause, when reconnecting failed.
    async fn get(&mut self) -> Option<&Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = connect_with(&self.url).await.ok().map(|(c, _)| c);
            if self.client.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.client.as_ref()
    }
}

/// Inserts ids through the proxy as fast as it accepts them, reconnecting
/// after errors, until `stop`; returns the ids whose commit was acknowledged.
async fn insert_loop(url: String, stop: Arc<AtomicBool>, next: Arc<AtomicU64>) -> Vec<i64> {
    let mut acked = Vec::new();
    let mut conn = Reconnecting { url, client: None };
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = conn.get().await else {
            continue;
        };
        let id = next.fetch_add(1, Ordering::Relaxed) as i64;
        match c.execute("INSERT INTO acked VALUES ($1)", &[&id]).await {
            Ok(_) => acked.push(id),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    acked
}

/// Points every replica's WAL receiver at `port` (a relay in front of the
/// primary) and waits until both stream through it.
async fn replicate_through(cluster: &LocalCluster, port: u16) {
    for replica in cluster.replicas() {
        let c = connect_node(cluster, replica).await.unwrap();
        let conninfo = format!(
            "host=127.0.0.1 port={port} user={} password={} application_name={}",
            cluster.superuser(),
            cluster.password(),
            replica.name
        );
        c.batch_execute(&format!("ALTER SYSTEM SET primary_conninfo = '{conninfo}'"))
            .await
            .unwrap();
        c.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    }
    for replica in cluster.replicas() {
        wait_until(
            &format!("{} to stream through the relay", replica.name),
            Duration::from_secs(30),
            || streams_from(replica, cluster, port),
        )
        .await;
    }
}

/// Runs acknowledged inserts through the proxy, then holds the replicas' WAL
/// stream (a relay between them and the primary blocks) while more are
/// tried, then kills the primary; returns (acknowledged, lost after the
/// failover). What the primary acknowledged while the stream was held
/// reached no replica, unless commits waited for one.
async fn acknowledged_inserts_across_a_kill(mode: ReplicationMode) -> (usize, usize) {
    let cluster = cluster();
    let dir = tempfile::tempdir().unwrap();
    let relay = FaultyRelay::start(
        format!("127.0.0.1:{}", cluster.primary().port)
            .parse()
            .unwrap(),
    );
    replicate_through(&cluster, relay.addr().port()).await;
    let mut config = failover_config(&cluster, dir.path());
    config.failover.replication_mode = mode;
    let proxy = start(config, &cluster).await;
    let c = client(&proxy, &cluster, "failover").await;
    fresh_table(&c, "acked", "id bigint PRIMARY KEY").await;
    fresh_table(&c, "ft", "i int").await;
    if mode != ReplicationMode::Async {
        wait_sync_standbys(&cluster, "synchronous standbys to be set", |n| {
            n.starts_with("ANY 1")
        })
        .await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(1));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(insert_loop(
                superuser_url(&proxy, &cluster),
                stop.clone(),
                next.clone(),
            ))
        })
        .collect();
    // Counted in inserts tried (nothing fails yet), not in seconds.
    let tried = || next.load(Ordering::Relaxed) - 1;
    wait_until("200 inserts", Duration::from_secs(60), || async {
        tried() >= 200
    })
    .await;
    relay.block();
    if mode == ReplicationMode::Async {
        // Commits go on without the replicas: what is acknowledged from now
        // on reached none of them.
        let blocked_at = tried();
        wait_until(
            "20 inserts while the WAL stream is held",
            Duration::from_secs(60),
            || async { tried() >= blocked_at + 20 },
        )
        .await;
    } else {
        // Commits wait for a replica: give them half a second in which an
        // acknowledgement could slip out unreplicated if they did not.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cluster.primary().kill(signal::SIGKILL).unwrap();
    relay.cut();
    assert_failed_over(&proxy, &cluster, Instant::now()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in workers {
        acked.extend(w.await.unwrap());
    }
    let c = client(&proxy, &cluster, "failover").await;
    let present: BTreeSet<i64> = c
        .query("/* palisade: primary */ SELECT id FROM acked", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost = acked.iter().filter(|id| !present.contains(id)).count();
    (acked.len(), lost)
}

#[tokio::test]
async fn sync_mode_loses_no_acknowledged_insert() {
    let _serial = SERIAL.lock().await;
    let (acked, lost) = acknowledged_inserts_across_a_kill(ReplicationMode::Sync).await;
    eprintln!("sync: {acked} inserts acknowledged, {lost} lost in the failover");
    assert!(acked > 100, "the workload ran: {acked}");
    assert_eq!(lost, 0, "sync mode lost {lost} acknowledged inserts");
}

#[tokio::test]
async fn async_mode_reports_what_a_failover_lost() {
    let _serial = SERIAL.lock().await;
    let (acked, lost) = acknowledged_inserts_across_a_kill(ReplicationMode::Async).await;
    eprintln!("async: {acked} inserts acknowledged, {lost} lost in the failover");
    assert!(acked > 100, "the workload ran: {acked}");
    // Commits did not wait for the blocked replicas: those acknowledged
    // while the stream was held are gone.
    assert!(
        lost > 0,
        "async mode lost nothing, so the test proves nothing about sync"
    );
}

#[tokio::test]
async fn concurrent_transfers_keep_the_total_across_a_failover() {
    let f = fixture().await;
    let (cluster, proxy) = (&f.cluster, &f.proxy);
    let c = &f.client;
    fresh_table(c, "accounts", "id int PRIMARY KEY, balance bigint NOT NULL").await;
    c.batch_execute("INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 20) g")
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4u64)
        .map(|w| {
            let url = superuser_url(proxy, cluster);
            let (stop, committed) = (stop.clone(), committed.clone());
            tokio::spawn(async move {
                let mut n = w;
                let mut conn = Reconnecting { url, client: None };
                while !stop.load(Ordering::Relaxed) {
                    let Some(c) = conn.get().await else {
                        continue;
                    };
                    n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let from = (n >> 33) % 20 + 1;
                    let to = (n >> 13) % 20 + 1;
                    let amount = (n >> 40) % 100;
                    let sql = format!(
                        "BEGIN; UPDATE accounts SET balance = balance - {amount} WHERE id = {from}; \
                         UPDATE accounts SET balance = balance + {amount} WHERE id = {to}; COMMIT"
                    );
                    match c.batch_execute(&sql).await {
                        Ok(()) => {
                            committed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            let _ = c.batch_execute("ROLLBACK").await;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            })
        })
        .collect();
    wait_until("100 transfers", Duration::from_secs(60), || async {
        committed.load(Ordering::Relaxed) >= 100
    })
    .await;
    cluster.primary().kill(signal::SIGKILL).unwrap();
    assert_failed_over(proxy, cluster, Instant::now()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let c = client(proxy, cluster, "failover").await;
    let row = c
        .query_one(
            "/* palisade: primary */ SELECT sum(balance)::bigint, count(*) FROM accounts",
            &[],
        )
        .await
        .unwrap();
    let (total, accounts): (i64, i64) = (row.get(0), row.get(1));
    eprintln!(
        "bank: {} transfers committed, total {total} over {accounts} accounts",
        committed.load(Ordering::Relaxed)
    );
    assert!(committed.load(Ordering::Relaxed) > 50, "the transfers ran");
    assert_eq!(
        (total, accounts),
        (20_000, 20),
        "money was created or destroyed"
    );
}

/// A SWITCHOVER from a user who may not run it (one in no `[admin]` list,
/// one that may only SHOW) is refused with 42501 and changes nothing.
async fn assert_switchover_denied(proxy: &Proxy) {
    let before = proxy.topology();
    for name in ["intruder", "watcher"] {
        let addr = proxy.local_addr();
        let conninfo = format!(
            "host={} port={} user={name} password=pw dbname=palisade",
            addr.ip(),
            addr.port()
        );
        let (console, _) = connect_with(&conninfo).await.unwrap();
        let err = console
            .simple_query("SWITCHOVER TO node2")
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&err), "42501", "{name}: {err:?}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = proxy.topology();
    assert_eq!(
        (after.epoch, after.primary(), after.writes.clone()),
        (before.epoch, before.primary(), before.writes.clone()),
        "a denied SWITCHOVER did nothing"
    );
}

#[tokio::test]
async fn a_planned_switchover_loses_nothing_and_pauses_writes() {
    let f = fixture_with(|c| {
        c.users
            .push(user("intruder", AuthMethod::ScramSha256, Some("pw")));
        c.users
            .push(user("watcher", AuthMethod::ScramSha256, Some("pw")));
        c.admin.stats_users = vec!["watcher".into()];
    })
    .await;
    let (cluster, proxy) = (&f.cluster, &f.proxy);
    assert_switchover_denied(proxy).await;
    let c = &f.client;
    fresh_table(c, "acked", "id bigint PRIMARY KEY").await;

    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(1));
    let worker = tokio::spawn(insert_loop(
        superuser_url(proxy, cluster),
        stop.clone(),
        next.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (console, _) = connect_with(&console_url(proxy, cluster)).await.unwrap();
    let began = Instant::now();
    console.simple_query("SWITCHOVER TO node2").await.unwrap();
    wait_topology(proxy, "node2 to be the primary", |t| t.primary() == Some(2)).await;
    let took = began.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = worker.await.unwrap();
    let present: BTreeSet<i64> = client(proxy, cluster, "failover")
        .await
        .query("/* palisade: primary */ SELECT id FROM acked", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost = acked.iter().filter(|id| !present.contains(id)).count();
    let attempted = next.load(Ordering::Relaxed) - 1;
    eprintln!(
        "switchover to node2 in {:.1} s: {} inserts acknowledged of {attempted} tried, {lost} lost",
        took.as_secs_f64(),
        acked.len()
    );
    assert_eq!(lost, 0, "a switchover loses nothing");
    assert!(
        attempted - acked.len() as u64 <= 4,
        "writes were paused, not failed: {} of {attempted} failed",
        attempted - acked.len() as u64
    );
    let t = proxy.topology();
    assert!(t.nodes[0].fenced, "the old primary is fenced: {t:?}");
}

#[tokio::test]
async fn a_restarted_proxy_keeps_the_epochs_primary() {
    let Fixture {
        serial: _serial,
        cluster,
        dir,
        proxy,
        client: _,
    } = fixture().await;
    cluster.primary().kill(signal::SIGKILL).unwrap();
    let new = assert_failed_over(&proxy, &cluster, Instant::now()).await;
    let epoch = proxy.topology().epoch;
    proxy.shutdown().await;

    // Both the old primary (back, still a primary) and the new one answer
    // as primaries when the proxy restarts: the persisted epoch decides.
    cluster.primary().start().unwrap();
    let proxy = start(failover_config(&cluster, dir.path()), &cluster).await;
    let t = proxy.topology();
    assert_eq!((t.primary(), t.epoch), (Some(new), epoch), "{t:?}");
    wait_topology(&proxy, "node0 fenced", |t| t.nodes[0].fenced).await;
    let c = client(&proxy, &cluster, "failover").await;
    let port = primary_port(&c).await;
    assert_eq!(port, cluster.node(new).port);
}

#[tokio::test]
async fn manual_mode_waits_for_the_operators_switchover() {
    let f = fixture_with(|c| c.failover.mode = palisade::config::FailoverMode::Manual).await;
    let (cluster, proxy) = (&f.cluster, &f.proxy);

    cluster.primary().kill(signal::SIGKILL).unwrap();
    wait_topology(
        proxy,
        "writes refused for the failed primary",
        |t| matches!(&t.writes, WriteState::Refused(reason) if reason.to_string().contains("SWITCHOVER")),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2 * FAILOVER_TIMEOUT_MS)).await;
    let t = proxy.topology();
    assert_eq!(t.epoch, 1, "nothing promoted by itself: {t:?}");
    let (c2, _) = connect_with(&superuser_url(proxy, cluster)).await.unwrap();
    let err = c2
        .batch_execute("INSERT INTO ft VALUES (1)")
        .await
        .unwrap_err();
    let message = err
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(
        message.contains("SWITCHOVER"),
        "the client is told why: {err:?}"
    );

    let (console, _) = connect_with(&console_url(proxy, cluster)).await.unwrap();
    console.simple_query("SWITCHOVER TO node2").await.unwrap();
    wait_topology(proxy, "node2 promoted", |t| t.primary() == Some(2)).await;
    write_until_accepted(proxy, cluster, "ft").await;
    assert_eq!(
        primary_port(&client(proxy, cluster, "failover").await).await,
        cluster.node(2).port
    );
}

#[tokio::test]
async fn auto_rejoin_brings_the_old_primary_back_by_itself() {
    let f = fixture_with(|c| c.failover.auto_rejoin = true).await;
    let (cluster, proxy) = (&f.cluster, &f.proxy);

    cluster.primary().kill(signal::SIGKILL).unwrap();
    let new = assert_failed_over(proxy, cluster, Instant::now()).await;
    cluster.primary().start().unwrap();
    let new_port = cluster.node(new).port;
    wait_until(
        "node0 to stream from the new primary",
        Duration::from_secs(60),
        || streams_from(cluster.primary(), cluster, new_port),
    )
    .await;
    wait_topology(proxy, "node0 back as a replica", |t| {
        !t.nodes[0].fenced && t.nodes[0].role == palisade::topology::Role::Replica
    })
    .await;
}

#[tokio::test]
async fn sync_drops_to_async_without_replicas_and_comes_back() {
    let f = fixture_with(|c| c.failover.replication_mode = ReplicationMode::Sync).await;
    let (cluster, proxy) = (&f.cluster, &f.proxy);
    wait_sync_standbys(cluster, "both replicas synchronous", |n| {
        n == "ANY 1 (\"node1\", \"node2\")"
    })
    .await;
    replicas_running(cluster, false).await;
    wait_sync_standbys(cluster, "asynchronous commits", str::is_empty).await;
    let insert = f.client.batch_execute("INSERT INTO ft VALUES (1)");
    tokio::time::timeout(Duration::from_secs(10), insert)
        .await
        .expect("with no replica, sync mode does not hold commits")
        .unwrap();
    replicas_running(cluster, true).await;
    wait_sync_standbys(cluster, "synchronous again", |n| n.starts_with("ANY 1")).await;
    assert_eq!(proxy.topology().epoch, 1, "no failover");
}

#[tokio::test]
async fn sync_strict_holds_commits_until_a_replica_returns() {
    let f = fixture_with(|c| c.failover.replication_mode = ReplicationMode::SyncStrict).await;
    let cluster = &f.cluster;
    wait_sync_standbys(cluster, "both replicas synchronous", |n| {
        n.starts_with("ANY 1")
    })
    .await;
    replicas_running(cluster, false).await;
    let mut insert = Box::pin(f.client.batch_execute("INSERT INTO ft VALUES (1)"));
    assert!(
        tokio::time::timeout(Duration::from_secs(3), &mut insert)
            .await
            .is_err(),
        "sync_strict acknowledged a commit no replica has"
    );
    wait_sync_standbys(cluster, "still synchronous", |n| n.starts_with("ANY 1")).await;
    replicas_running(cluster, true).await;
    tokio::time::timeout(Duration::from_secs(30), insert)
        .await
        .expect("the commit completes once a replica is back")
        .unwrap();
}

/// How many transactions a batch run across a primary kill runs in all.
const TRANSACTIONS: i64 = 200;

/// What became of one transaction run across a primary kill.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    /// Committed; `across` when it was open as the primary was killed.
    Committed {
        across: bool,
    },
    Failed(String),
}

/// One transaction on key `k`: BEGIN; INSERT; UPDATE; SELECT (sleeping a
/// little, so that some are open when the primary dies); COMMIT.
async fn one_transaction(c: &mut Client, k: i64) -> Result<(), tokio_postgres::Error> {
    let t = c.transaction().await?;
    t.execute("INSERT INTO replayed VALUES ($1, 0)", &[&k])
        .await?;
    t.execute("UPDATE replayed SET v = v + 1 WHERE k = $1", &[&k])
        .await?;
    let v: i32 = t
        .query_one(
            "SELECT v FROM replayed, pg_sleep(0.05) AS s WHERE k = $1",
            &[&k],
        )
        .await?
        .get(0);
    assert_eq!(v, 1, "the transaction sees its own writes once");
    t.commit().await
}

/// Runs transactions on fresh keys until [`TRANSACTIONS`] have been
/// started, reconnecting when the connection is gone.
async fn transaction_loop(
    url: String,
    next: Arc<AtomicU64>,
    killed: Arc<AtomicBool>,
) -> Vec<(i64, Fate)> {
    let mut fates = Vec::new();
    let mut client: Option<Client> = None;
    loop {
        if client.as_ref().is_none_or(Client::is_closed) {
            client = connect_with(&url).await.ok().map(|(c, _)| c);
        }
        let Some(c) = client.as_mut() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let k = next.fetch_add(1, Ordering::Relaxed) as i64;
        if k > TRANSACTIONS {
            return fates;
        }
        let before = !killed.load(Ordering::Relaxed);
        let fate = match one_transaction(c, k).await {
            Ok(()) => Fate::Committed {
                across: before && killed.load(Ordering::Relaxed),
            },
            Err(e) => Fate::Failed(sqlstate(&e)),
        };
        fates.push((k, fate));
    }
}

/// Runs [`TRANSACTIONS`] transactions from 8 clients with the primary
/// killed after 40; checks that each committed one is on the new primary
/// once and each one refused with 40001 is not, and returns the fates.
async fn transactions_across_a_kill(replay: bool) -> Vec<(i64, Fate)> {
    let f = fixture_with(|c| {
        c.failover.replication_mode = ReplicationMode::Sync;
        c.failover.transaction_replay = replay;
    })
    .await;
    let (cluster, proxy) = (&f.cluster, &f.proxy);
    fresh_table(&f.client, "replayed", "k bigint PRIMARY KEY, v int").await;
    wait_sync_standbys(cluster, "synchronous standbys to be set", |n| {
        n.starts_with("ANY 1")
    })
    .await;
    let next = Arc::new(AtomicU64::new(1));
    let killed = Arc::new(AtomicBool::new(false));
    let work: Vec<_> = (0..8)
        .map(|_| {
            let url = superuser_url(proxy, cluster);
            tokio::spawn(transaction_loop(url, next.clone(), killed.clone()))
        })
        .collect();
    wait_until("40 transactions", Duration::from_secs(60), || async {
        next.load(Ordering::Relaxed) > 40
    })
    .await;
    cluster.primary().kill(signal::SIGKILL).unwrap();
    killed.store(true, Ordering::Relaxed);
    let new = assert_failed_over(proxy, cluster, Instant::now()).await;
    let mut fates = Vec::new();
    for w in work {
        fates.extend(w.await.unwrap());
    }
    let direct = connect_node(cluster, cluster.node(new)).await.unwrap();
    let rows: Vec<(i64, i32)> = direct
        .query("SELECT k, v FROM replayed", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let present: BTreeSet<i64> = rows.iter().map(|(k, _)| *k).collect();
    assert!(
        rows.iter().all(|(_, v)| *v == 1),
        "an UPDATE applied twice: {rows:?}"
    );
    for (k, fate) in &fates {
        match fate {
            Fate::Committed { .. } => assert!(present.contains(k), "committed {k} was lost"),
            Fate::Failed(code) if code == "40001" => {
                assert!(!present.contains(k), "{k} got 40001 but was applied");
            }
            Fate::Failed(_) => {}
        }
    }
    let count = |f: &dyn Fn(&Fate) -> bool| fates.iter().filter(|(_, x)| f(x)).count();
    let failed: Vec<&str> = fates
        .iter()
        .filter_map(|(_, f)| match f {
            Fate::Failed(code) => Some(code.as_str()),
            Fate::Committed { .. } => None,
        })
        .collect();
    eprintln!(
        "transactions across a kill (replay {}): {} run, {} committed ({} of them open at the kill), failed {failed:?}; {} rows on the new primary",
        if replay { "on" } else { "off" },
        fates.len(),
        count(&|f| matches!(f, Fate::Committed { .. })),
        count(&|f| *f == Fate::Committed { across: true }),
        present.len()
    );
    assert_eq!(fates.len() as i64, TRANSACTIONS, "every transaction ran");
    fates
}

/// The SQLSTATEs of the transactions that failed.
fn failed_codes(fates: &[(i64, Fate)]) -> Vec<&String> {
    fates
        .iter()
        .filter_map(|(_, f)| match f {
            Fate::Failed(code) => Some(code),
            Fate::Committed { .. } => None,
        })
        .collect()
}

#[tokio::test]
async fn with_transaction_replay_transactions_open_across_a_kill_commit_once_or_get_40001_or_08007()
{
    let fates = transactions_across_a_kill(true).await;
    let failed = failed_codes(&fates);
    assert!(
        failed.iter().all(|c| *c == "40001" || *c == "08007"),
        "only 40001 or 08007: {failed:?}"
    );
    assert!(
        fates
            .iter()
            .any(|(_, f)| *f == Fate::Committed { across: true }),
        "some transaction open at the kill was replayed and committed"
    );
}

#[tokio::test]
async fn without_replay_transactions_open_across_a_kill_get_class_08() {
    let fates = transactions_across_a_kill(false).await;
    let failed = failed_codes(&fates);
    assert!(
        failed.iter().all(|c| c.starts_with("08")),
        "a transaction lost with the primary gets class 08: {failed:?}"
    );
}

/// One `INSERT` through a fresh connection to `url`: the port of the node
/// it landed on.
async fn insert_where(url: &str) -> Option<u16> {
    let (c, _) = connect_with(url).await.ok()?;
    let row = c
        .query_one(
            "INSERT INTO ft VALUES (2) RETURNING inet_server_port()",
            &[],
        )
        .await
        .ok()?;
    u16::try_from(row.get::<_, i32>(0)).ok()
}

#[tokio::test]
async fn follow_mode_follows_a_promotion_done_by_hand() {
    const PROBE_MS: u64 = 300;
    let f = fixture_with(|c| {
        c.failover.mode = palisade::config::FailoverMode::Follow;
        c.monitor.probe_interval_ms = PROBE_MS;
        c.failover.failover_wait_ms = 0;
    })
    .await;
    let (cluster, proxy) = (&f.cluster, &f.proxy);
    let url = superuser_url(proxy, cluster);
    assert_eq!(insert_where(&url).await, Some(cluster.node(0).port));
    // Writes keep coming while the HA manager steps the old primary down
    // and promotes node2.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (url, stop) = (url.clone(), stop.clone());
        async move {
            let mut landed = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                landed.extend(insert_where(&url).await.map(|port| (sent, port)));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            landed
        }
    });
    let c2 = cluster.clone();
    tokio::task::spawn_blocking(move || c2.primary().stop().unwrap())
        .await
        .unwrap();
    let stepped_down = Instant::now();
    let node2 = connect_node(cluster, cluster.node(2)).await.unwrap();
    node2.execute("SELECT pg_promote(true)", &[]).await.unwrap();
    let promoted = Instant::now();
    while proxy.topology().primary() != Some(2) || proxy.topology().writes != WriteState::Open {
        assert!(
            promoted.elapsed() < Duration::from_secs(10),
            "{:?}",
            proxy.topology()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let followed = promoted.elapsed();
    eprintln!(
        "followed {followed:?} after pg_promote returned ({:?} after the step-down)",
        stepped_down.elapsed()
    );
    assert!(
        followed <= Duration::from_millis(2 * PROBE_MS),
        "followed within two probe intervals: {followed:?}"
    );
    assert_eq!(insert_where(&url).await, Some(cluster.node(2).port));
    // The old primary comes back as a primary, on its old timeline: it is
    // routed nothing, and nothing is done to it.
    let c2 = cluster.clone();
    tokio::task::spawn_blocking(move || c2.primary().start().unwrap())
        .await
        .unwrap();
    wait_topology(proxy, "the old primary seen and fenced", |t| {
        t.nodes[0].fenced
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let landed = writer.await.unwrap();
    let old = cluster.node(0).port;
    let late: Vec<_> = landed
        .iter()
        .filter(|(sent, port)| *sent > stepped_down && *port == old)
        .collect();
    assert!(late.is_empty(), "writes reached the old primary: {late:?}");
    assert!(
        landed.iter().any(|(_, port)| *port == cluster.node(2).port),
        "writes went on, on node2"
    );
    let t = proxy.topology();
    assert_eq!((t.epoch, t.primary()), (2, Some(2)), "{t:?}");
    let old_primary = connect_node(cluster, cluster.node(0)).await.unwrap();
    let recovering: bool = old_primary
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    let read_only: String = old_primary
        .query_one("SHOW default_transaction_read_only", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        (recovering, read_only.as_str()),
        (false, "off"),
        "not fenced by Palisade"
    );
}

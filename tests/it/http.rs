//! The monitoring endpoint (`[http] listen`): health and role checks answer
//! with the right status codes, `/metrics` parses as Prometheus text with a
//! series per node, `/api/status` is JSON and `/` the status page. Requests
//! are plain HTTP/1.0 GETs over a TCP socket.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::harness::{client, start_proxy, wait_topology};
use crate::support::shared_cluster;
use palisade::config::Config;
use palisade::proxy::Proxy;
use palisade::topology::{Role, Topology};
use prometheus_parse::{Scrape, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub(crate) struct Reply {
    pub(crate) status: u16,
    content_type: String,
    body: String,
}

/// `GET path` on `addr`, read to the end (HTTP/1.0: the server closes).
pub(crate) async fn get(addr: SocketAddr, path: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect to http");
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("http reply within 10 s")
        .unwrap();
    let raw = String::from_utf8(raw).expect("utf-8 reply");
    let (head, body) = raw.split_once("\r\n\r\n").expect("header and body");
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    Reply {
        status: status.parse().unwrap(),
        content_type,
        body: body.to_owned(),
    }
}

fn with_http(config: &mut Config) {
    config.http.listen = "127.0.0.1:0".into();
}

fn http_addr(proxy: &Proxy) -> SocketAddr {
    proxy.http_addr().expect("http endpoint on")
}

/// Every node up, and every replica streaming.
fn settled(t: &Topology) -> bool {
    t.nodes.iter().all(|n| {
        n.healthy && (n.role == Role::Primary || n.role == Role::Replica && n.replication.streaming)
    })
}

async fn settled_proxy() -> Proxy {
    let proxy = start_proxy(shared_cluster(), with_http).await;
    wait_topology(&proxy, "every node up and streaming", settled).await;
    proxy
}

/// A strict scrape: every sample line parses, and the text ends in `# EOF`.
async fn scrape(addr: SocketAddr) -> Scrape {
    let reply = get(addr, "/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .content_type
            .starts_with("application/openmetrics-text"),
        "{}",
        reply.content_type
    );
    assert_eq!(reply.body.lines().last(), Some("# EOF"));
    let lines = reply.body.lines().map(|l| Ok(l.to_owned()));
    let scrape = Scrape::parse(lines).expect("exposition parses");
    let samples: Vec<&str> = reply.body.lines().filter(|l| !l.starts_with('#')).collect();
    // A histogram's bucket lines parse into one sample per series.
    let buckets = samples.iter().filter(|l| l.contains("_bucket{")).count();
    let histograms = samples.iter().filter(|l| l.contains("le=\"+Inf\"")).count();
    assert_eq!(
        scrape.samples.len(),
        samples.len() - buckets + histograms,
        "every sample line parsed:\n{}",
        reply.body
    );
    scrape
}

/// The value of `metric` with these labels (all of them), if present.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            ref other => panic!("{metric} is not a plain value: {other:?}"),
        })
}

fn sum(scrape: &Scrape, metric: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn health_and_role_checks_pass_on_a_healthy_cluster() {
    let proxy = settled_proxy().await;
    let addr = http_addr(&proxy);
    for path in [
        "/health",
        "/ready",
        "/primary",
        "/replica",
        "/replica?lag=1GB",
    ] {
        let reply = get(addr, path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    }
    let primary = get(addr, "/primary").await;
    assert!(
        primary.body.contains(&proxy.topology().nodes[0].name),
        "{}",
        primary.body
    );
    let bad = get(addr, "/replica?lag=lots").await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(get(addr, "/nothing-here").await.status, 404);
    proxy.shutdown().await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "http stops with the proxy"
    );
}

#[tokio::test]
async fn ready_and_primary_are_503_without_a_writable_primary() {
    // A node nobody listens on: the proxy starts, but has no primary.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let mut config = crate::support::harness::proxy_config(shared_cluster());
    with_http(&mut config);
    config.nodes.truncate(1);
    config.nodes[0].port = port;
    let proxy = Proxy::start(config).await.expect("proxy starts");
    let addr = http_addr(&proxy);
    assert_eq!(get(addr, "/health").await.status, 200);
    for path in ["/ready", "/primary", "/replica", "/replica?lag=1MB"] {
        let reply = get(addr, path).await;
        assert_eq!(reply.status, 503, "{path}: {}", reply.body);
    }
    assert!(get(addr, "/ready")
        .await
        .body
        .contains("no writable primary"));
    let status: serde_json::Value =
        serde_json::from_str(&get(addr, "/api/status").await.body).unwrap();
    assert_eq!(status["ready"], false);
    assert_eq!(status["writes"], "refused");
    assert_eq!(status["nodes"][0]["health"], "down");
    proxy.shutdown().await;
}

#[tokio::test]
async fn metrics_carry_a_series_per_node_and_routed_queries_grow() {
    let proxy = settled_proxy().await;
    let addr = http_addr(&proxy);
    let topology = proxy.topology();
    let before = scrape(addr).await;
    for (i, n) in topology.nodes.iter().enumerate() {
        let node = n.name.as_str();
        let role = if Some(i) == topology.primary() {
            "primary"
        } else {
            "replica"
        };
        assert_eq!(
            value(
                &before,
                "palisade_node_role",
                &[("node", node), ("role", role)]
            ),
            Some(1.0),
            "{node}"
        );
        assert_eq!(
            value(&before, "palisade_node_healthy", &[("node", node)]),
            Some(1.0),
            "{node}"
        );
        assert_eq!(
            value(&before, "palisade_node_fenced", &[("node", node)]),
            Some(0.0),
            "{node}"
        );
        assert!(
            value(
                &before,
                "palisade_node_wal_position_bytes",
                &[("node", node)]
            )
            .unwrap()
                > 0.0
        );
        assert!(value(&before, "palisade_queries_routed_total", &[("node", node)]).is_some());
        assert!(value(&before, "palisade_requests_in_flight", &[("node", node)]).is_some());
        assert!(value(
            &before,
            "palisade_server_connections",
            &[("node", node), ("state", "idle")]
        )
        .is_some());
        if role == "replica" {
            assert_eq!(
                value(&before, "palisade_node_streaming", &[("node", node)]),
                Some(1.0)
            );
            assert!(value(&before, "palisade_node_lag_bytes", &[("node", node)]).is_some());
            assert!(value(&before, "palisade_node_lag_seconds", &[("node", node)]).is_some());
        }
    }
    assert_eq!(
        value(&before, "palisade_epoch", &[]),
        Some(topology.epoch as f64)
    );
    assert_eq!(
        value(&before, "palisade_writes", &[("state", "open")]),
        Some(1.0)
    );

    let db = client(&proxy, shared_cluster(), "http_metrics").await;
    for _ in 0..20 {
        db.simple_query("SELECT 1").await.unwrap();
    }
    let after = scrape(addr).await;
    let routed = sum(&after, "palisade_queries_routed_total")
        - sum(&before, "palisade_queries_routed_total");
    assert!(routed >= 20.0, "routed grew by {routed}");
    assert!(
        value(
            &after,
            "palisade_client_connections",
            &[("state", "logged_in")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(sum(&after, "palisade_server_connections") >= 1.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn status_api_and_page_describe_the_cluster() {
    let proxy = settled_proxy().await;
    let addr = http_addr(&proxy);
    let db = client(&proxy, shared_cluster(), "http_status").await;
    db.simple_query("SELECT 1").await.unwrap();
    let reply = get(addr, "/api/status").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.content_type.starts_with("application/json"),
        "{}",
        reply.content_type
    );
    let status: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON");
    let topology = proxy.topology();
    let primary = &topology.nodes[topology.primary().unwrap()].name;
    assert_eq!(status["primary"], primary.as_str());
    assert_eq!(status["writes"], "open");
    assert_eq!(status["ready"], true);
    assert!(status["sessions"].as_u64().unwrap() >= 1);
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), topology.nodes.len());
    assert_eq!(nodes.iter().filter(|n| n["role"] == "replica").count(), 2);
    assert!(nodes.iter().all(|n| n["health"] == "up"));
    let routed: u64 = nodes.iter().map(|n| n["routed"].as_u64().unwrap()).sum();
    assert!(routed >= 1);
    let page = get(addr, "/").await;
    assert_eq!(page.status, 200);
    assert!(
        page.content_type.starts_with("text/html"),
        "{}",
        page.content_type
    );
    assert!(page.body.contains("api/status") && page.body.contains("<svg"));
    proxy.shutdown().await;
}

/// Scrapes taken while pgbench runs through the proxy all parse, and the
/// routed-query counter moves between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scraped_during_a_pgbench_run_parse_and_move() {
    let proxy = settled_proxy().await;
    let addr = http_addr(&proxy);
    let cluster = shared_cluster();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("select.sql");
    std::fs::write(&script, "SELECT 1;\n").unwrap();
    let mut pgbench = std::process::Command::new(cluster.bin_dir().join("pgbench"));
    pgbench
        .args(["-n", "-c", "4", "-j", "2", "-T", "4", "-f"])
        .arg(&script)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &proxy.local_addr().port().to_string(),
        ])
        .args(["-U", cluster.superuser(), "postgres"])
        .env("PGPASSWORD", cluster.password());
    let run = tokio::task::spawn_blocking(move || pgbench.output());
    let mut routed = Vec::new();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        routed.push(sum(&scrape(addr).await, "palisade_queries_routed_total"));
    }
    let output = run.await.unwrap().expect("pgbench runs");
    assert!(
        output.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("palisade_queries_routed_total during pgbench: {routed:?}");
    let moved = routed.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(
        moved >= 4,
        "the counter moved between only {moved} of 7 scrape pairs: {routed:?}"
    );
}

/// The value of `metric` in `after` less its value in `before`.
fn grew(before: &Scrape, after: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let at = |s: &Scrape| {
        value(s, metric, labels).unwrap_or_else(|| panic!("{metric} {labels:?} missing"))
    };
    at(after) - at(before)
}

/// Requests counted in the latency histogram (its +Inf bucket).
fn latency_count(scrape: &Scrape) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == "palisade_request_duration_seconds")
        .expect("the latency histogram");
    match &sample.value {
        Value::Histogram(buckets) => {
            let inf = buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .expect("+Inf bucket");
            inf.count
        }
        other => panic!("not a histogram: {other:?}"),
    }
}

/// Each family added for issue 15 moves when what it counts happens.
#[tokio::test]
async fn routing_reasons_waits_cache_auth_bytes_waiters_and_latency_move() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| {
        with_http(c);
        c.consistency.level = palisade::config::Consistency::Causal;
        c.pool.max_server_connections = 1;
    })
    .await;
    wait_topology(&proxy, "every node up and streaming", settled).await;
    let addr = http_addr(&proxy);
    let primary = proxy.topology().primary().unwrap();
    let primary = proxy.topology().nodes[primary].name.clone();
    let before = scrape(addr).await;
    for family in [
        "palisade_failovers_total",
        "palisade_switchovers_total",
        "palisade_fences_total",
        "palisade_rejoins_total",
    ] {
        assert_eq!(value(&before, family, &[]), Some(0.0), "{family}");
    }

    // A wrong password.
    let bad = crate::support::harness::url(&proxy, cluster.superuser(), "wrong");
    assert!(crate::support::harness::connect_with(&bad).await.is_err());

    let db = client(&proxy, cluster, "http_reasons").await;
    for _ in 0..10 {
        db.simple_query("SELECT 1").await.unwrap();
    }
    db.simple_query("/* palisade: replica */ SELECT 2")
        .await
        .unwrap();
    for sql in ["BEGIN", "SELECT 3", "COMMIT"] {
        db.simple_query(sql).await.unwrap();
    }
    db.simple_query("DO $$ BEGIN PERFORM 1; END $$")
        .await
        .unwrap();
    db.simple_query("CREATE TABLE IF NOT EXISTS http_reasons (n int)")
        .await
        .unwrap();
    // Causal reads right after a write wait for a replica to replay it.
    for _ in 0..3 {
        db.simple_query("INSERT INTO http_reasons VALUES (1)")
            .await
            .unwrap();
        db.simple_query("SELECT count(*) FROM http_reasons")
            .await
            .unwrap();
    }
    // A second session waits for the one server connection the first holds.
    let holder = client(&proxy, cluster, "http_holder").await;
    let waiter = client(&proxy, cluster, "http_waiter").await;
    holder
        .simple_query("BEGIN; INSERT INTO http_reasons VALUES (2)")
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        waiter
            .simple_query("INSERT INTO http_reasons VALUES (3)")
            .await
            .map(|_| ())
    });
    let mut during = scrape(addr).await;
    for _ in 0..50 {
        if value(&during, "palisade_pool_waiters", &[("node", &primary)]) == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        during = scrape(addr).await;
    }
    assert_eq!(
        value(&during, "palisade_pool_waiters", &[("node", &primary)]),
        Some(1.0)
    );
    holder.simple_query("COMMIT").await.unwrap();
    waiting
        .await
        .unwrap()
        .expect("the waiter's insert runs once the connection is back");
    // Last: a temp table ties the session to the primary's one connection.
    db.simple_query("CREATE TEMP TABLE http_pinned (n int)")
        .await
        .unwrap();
    db.simple_query("SELECT 4").await.unwrap();

    drop(db);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = scrape(addr).await;

    assert_eq!(
        grew(&before, &after, "palisade_auth_failures_total", &[]),
        1.0
    );
    let reason = |r: &str| {
        sum_where(&after, "palisade_queries_routed_total", ("reason", r))
            - sum_where(&before, "palisade_queries_routed_total", ("reason", r))
    };
    assert!(reason("read") >= 10.0, "read {}", reason("read"));
    for r in ["write", "txn", "hint", "unparsable", "pin"] {
        assert!(reason(r) >= 1.0, "{r}: {}", reason(r));
    }
    let waits =
        sum(&after, "palisade_causal_waits_total") - sum(&before, "palisade_causal_waits_total");
    assert!(waits >= 1.0, "causal waits grew by {waits}");
    assert!(
        grew(
            &before,
            &after,
            "palisade_classify_cache_total",
            &[("result", "hit")]
        ) >= 9.0
    );
    assert!(
        grew(
            &before,
            &after,
            "palisade_classify_cache_total",
            &[("result", "miss")]
        ) >= 1.0
    );
    for direction in ["received", "sent"] {
        assert!(
            grew(
                &before,
                &after,
                "palisade_client_bytes_total",
                &[("direction", direction)]
            ) > 100.0,
            "{direction}"
        );
    }
    let answered = latency_count(&after) - latency_count(&before);
    assert!(answered >= 20.0, "latency histogram grew by {answered}");
    proxy.shutdown().await;
}

fn sum_where(scrape: &Scrape, metric: &str, (k, v): (&str, &str)) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && s.labels.get(k) == Some(v))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

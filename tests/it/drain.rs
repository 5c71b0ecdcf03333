//! The graceful drain (SIGTERM, SIGINT, `SHUTDOWN WAIT_FOR_CLIENTS`): new
//! connections are refused with 57P03, idle sessions end with 57P01, and a
//! transaction open when it began runs to its commit.

use std::time::Duration;

use palisade_testkit::signal;
use tokio_postgres::NoTls;

use crate::support::harness::{app_url, console_url, sqlstate, start_proxy};
use crate::support::nodes::{direct, fresh_table, unique, wait_running, wait_until};
use crate::support::shared_cluster;

/// A client whose connection's own end (its error, if any) is kept.
async fn watched(
    url: &str,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect through the proxy");
    (client, tokio::spawn(connection))
}

/// How a connection ended: its SQLSTATE.
async fn ended_with(
    connection: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) -> String {
    let ended = tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the connection ends")
        .expect("the connection task does not panic");
    match ended {
        Ok(()) => "closed without an error".into(),
        Err(e) => sqlstate(&e),
    }
}

#[tokio::test]
async fn a_drain_lets_the_open_transaction_commit_ends_idle_sessions_and_refuses_new_ones() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| {
        c.proxy.shutdown_timeout_ms = 30_000;
        c.http.listen = "127.0.0.1:0".into();
    })
    .await;
    let http = proxy.http_addr().expect("http endpoint on");
    let url = app_url(&proxy, cluster, "drain");
    let table = unique("drained");
    let (setup, _setup_conn) = watched(&url).await;
    fresh_table(&setup, &table, "n int").await;
    drop(setup);
    let (idle, idle_conn) = watched(&url).await;
    idle.simple_query("SELECT 1").await.unwrap();
    let (console, console_conn) = watched(&console_url(&proxy, cluster)).await;
    console.simple_query("SHOW NODES").await.unwrap();
    let (open, open_conn) = watched(&url).await;
    open.batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();
    let marker = unique("drain_sleep");
    let sleeping = format!("SELECT pg_sleep(1) /* {marker} */");
    let (slept, ()) = tokio::join!(open.simple_query(&sleeping), async {
        wait_running(cluster, &marker).await;
        assert!(proxy.begin_drain(), "the drain begins once");
        assert!(!proxy.begin_drain());
        let refused = tokio_postgres::connect(&url, NoTls)
            .await
            .err()
            .expect("a new connection during the drain is refused");
        assert_eq!(sqlstate(&refused), "57P03", "{refused}");
        let ready = crate::http::get(http, "/ready").await;
        assert_eq!(ready.status, 503, "not ready while draining");
    });
    slept.expect("the query in flight when the drain began finishes");
    assert_eq!(ended_with(idle_conn).await, "57P01", "an idle session ends");
    assert_eq!(
        ended_with(console_conn).await,
        "57P01",
        "a console session ends"
    );
    open.batch_execute(&format!("INSERT INTO {table} VALUES (2); COMMIT"))
        .await
        .expect("the transaction open during the drain commits");
    assert_eq!(
        ended_with(open_conn).await,
        "57P01",
        "the session ends once its transaction has"
    );
    let started = std::time::Instant::now();
    proxy.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no session was left to wait for, yet shutdown took {:?}",
        started.elapsed()
    );
    let primary = direct(cluster.primary()).await;
    let rows = primary
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(rows, 2, "both rows of the drained transaction are there");
    primary
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_transaction_still_open_when_the_drain_runs_out_is_ended() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| c.proxy.shutdown_timeout_ms = 300).await;
    let (open, open_conn) = watched(&app_url(&proxy, cluster, "drain_timeout")).await;
    open.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let started = std::time::Instant::now();
    proxy.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?} past a 300 ms drain",
        started.elapsed()
    );
    assert_eq!(ended_with(open_conn).await, "57P01");
    assert!(open.simple_query("COMMIT").await.is_err());
}

#[tokio::test]
async fn shutdown_wait_for_clients_at_the_console_starts_the_drain() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |_| {}).await;
    let (console, console_conn) = watched(&console_url(&proxy, cluster)).await;
    let url = app_url(&proxy, cluster, "drain_console");
    let (idle, idle_conn) = watched(&url).await;
    idle.simple_query("SELECT 1").await.unwrap();
    console
        .simple_query("SHUTDOWN WAIT_FOR_CLIENTS")
        .await
        .expect("an admin may start the drain");
    tokio::time::timeout(Duration::from_secs(5), proxy.drain_requested())
        .await
        .expect("the proxy (and so the binary) hears of it");
    assert_eq!(ended_with(idle_conn).await, "57P01");
    assert_eq!(ended_with(console_conn).await, "57P01");
    let refused = tokio_postgres::connect(&url, NoTls).await.err().unwrap();
    assert_eq!(sqlstate(&refused), "57P03", "{refused}");
    proxy.shutdown().await;
}

/// The `palisade` binary in front of the shared cluster, on a free port,
/// with a config file in `dir` (as `tweak` leaves it); its child, once it
/// serves, and a connection string.
async fn binary(
    dir: &std::path::Path,
    app: &str,
    tweak: impl FnOnce(&mut palisade::config::Config, &mut tokio::process::Command),
) -> (tokio::process::Child, String) {
    let cluster = shared_cluster();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut config = crate::support::harness::proxy_config(cluster);
    config.proxy.listen = format!("127.0.0.1:{port}");
    config.proxy.shutdown_timeout_ms = 60_000;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"));
    command.env("PALISADE_LOG", "warn").kill_on_drop(true);
    tweak(&mut config, &mut command);
    let file = dir.join(format!("{app}.toml"));
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    let child = command.arg("--config").arg(&file).spawn().unwrap();
    let url = format!(
        "host=127.0.0.1 port={port} user={} password={} dbname=postgres application_name={app} connect_timeout=5",
        cluster.superuser(),
        cluster.password()
    );
    wait_until("the binary to serve", Duration::from_secs(60), || async {
        tokio_postgres::connect(&url, NoTls).await.is_ok()
    })
    .await;
    (child, url)
}

/// Waits until connecting to `url` is refused with 57P03.
async fn wait_refused(url: &str) {
    wait_until(
        "new connections to be refused",
        Duration::from_secs(30),
        || async {
            match tokio_postgres::connect(url, NoTls).await {
                Err(e) => sqlstate(&e) == "57P03",
                Ok(_) => false,
            }
        },
    )
    .await;
}

#[tokio::test]
async fn sigterm_lets_the_binary_finish_a_transaction_and_a_second_signal_stops_it_at_once() {
    let cluster = shared_cluster();
    let dir = tempfile::tempdir().unwrap();
    let table = unique("sigterm");
    let (mut child, url) = binary(dir.path(), "drain_sigterm", |_, _| {}).await;
    let (open, open_conn) = watched(&url).await;
    fresh_table(&open, &table, "n int").await;
    open.batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();
    let pid = child.id().expect("the binary runs");
    signal::send(pid, signal::SIGTERM).unwrap();
    wait_refused(&url).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "it waits for the transaction"
    );
    open.batch_execute("COMMIT")
        .await
        .expect("the transaction open at SIGTERM commits");
    assert_eq!(ended_with(open_conn).await, "57P01");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the binary exits once its last session has")
        .unwrap();
    assert!(status.success(), "{status}");
    let primary = direct(cluster.primary()).await;
    let count = format!("SELECT count(*) FROM {table}");
    let rows: i64 = primary.query_one(&count, &[]).await.unwrap().get(0);
    assert_eq!(rows, 1, "the row committed during the drain is there");

    let (mut child, url) = binary(dir.path(), "drain_second", |_, _| {}).await;
    let (stuck, _stuck_conn) = watched(&url).await;
    stuck.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let pid = child.id().expect("the binary runs");
    signal::send(pid, signal::SIGTERM).unwrap();
    wait_refused(&url).await;
    signal::send(pid, signal::SIGTERM).unwrap();
    tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("a second signal stops the binary at once, transaction or not")
        .unwrap();
    primary
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn json_logs_have_a_line_per_session_start_and_end() {
    let cluster = shared_cluster();
    let dir = tempfile::tempdir().unwrap();
    let (child, url) = binary(dir.path(), "json_logs", |config, command| {
        config.proxy.log_format = palisade::config::LogFormat::Json;
        command
            .env("PALISADE_LOG", "info")
            .stderr(std::process::Stdio::piped());
    })
    .await;
    let (client, connection) = watched(&url).await;
    client.simple_query("SELECT 1").await.unwrap();
    client.simple_query("SELECT 2").await.unwrap();
    drop(client);
    let _ = connection.await;
    signal::send(child.id().unwrap(), signal::SIGTERM).unwrap();
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the binary stops")
        .unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let said = |message: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["fields"]["message"] == message)
            .map(|l| &l["fields"])
            .collect()
    };
    assert!(!said("session started").is_empty(), "{lines:?}");
    let ended = said("session ended");
    let ours = ended
        .iter()
        .find(|f| f["queries"].as_u64() == Some(2))
        .unwrap_or_else(|| panic!("the session's end with its two queries: {ended:?}"));
    assert_eq!(ours["user"], cluster.superuser());
    assert_eq!(ours["database"], "postgres");
    assert!(ours["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(ours["bytes_in"].as_u64().unwrap() > 0);
    assert!(ours["bytes_out"].as_u64().unwrap() > 0);
    assert!(ours["duration_ms"].is_u64());
}

#[tokio::test]
async fn with_reuse_port_a_second_proxy_shares_the_port_and_takes_the_clients_of_a_draining_one() {
    let cluster = shared_cluster();
    let first = start_proxy(cluster, |c| c.proxy.reuse_port = true).await;
    let shared_addr = first.local_addr().to_string();
    let url = app_url(&first, cluster, "reuse_port");
    // Before the second listens: this session is the first's.
    let (held, held_conn) = watched(&url).await;
    held.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let second = start_proxy(cluster, |c| {
        c.proxy.reuse_port = true;
        c.proxy.listen = shared_addr.clone();
    })
    .await;
    assert_eq!(second.local_addr(), first.local_addr());
    assert!(first.listening());
    first.begin_drain();
    // Connections the kernel queued on the first's socket before it closed
    // are lost with it: the port is handed over once it has.
    wait_until(
        "the first to close its listener",
        Duration::from_secs(10),
        || async { !first.listening() },
    )
    .await;
    let before = second.routed().iter().sum::<u64>();
    for _ in 0..10 {
        let (client, _conn) = watched(&url).await;
        client
            .simple_query("SELECT 1")
            .await
            .expect("a connection during the first's drain is served");
    }
    assert!(
        second.routed().iter().sum::<u64>() >= before + 10,
        "the second proxy served them"
    );
    held.batch_execute("COMMIT")
        .await
        .expect("the first proxy's open transaction still commits");
    assert_eq!(ended_with(held_conn).await, "57P01");
    first.shutdown().await;
    second.shutdown().await;
}

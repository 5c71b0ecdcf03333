//! The test kit against real PostgreSQL: clusters start, stop, crash and
//! come back, postmasters killed from outside are reaped, and the
//! fault-injecting relay cuts, blocks and heals.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use palisade_testkit::{signal, ClusterError, ClusterOptions, FaultyRelay, LocalCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn start_cluster(opts: ClusterOptions) -> LocalCluster {
    let began = Instant::now();
    let cluster = LocalCluster::start(opts).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("cluster started in {:?}", began.elapsed());
    cluster
}

/// Polls `sql` on `node` until it returns `want`, for up to 10 s.
fn eventually(cluster: &LocalCluster, node: usize, sql: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = cluster.psql(node, sql);
        if matches!(&got, Ok(v) if v == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node{node}: `{sql}` gave {got:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

#[test]
fn cluster_lifecycle() {
    let mut cluster = start_cluster(ClusterOptions::default());
    let names: Vec<&str> = cluster.nodes().iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["node0", "node1", "node2"]);
    assert_eq!(cluster.replicas().len(), 2);
    assert_eq!(cluster.primary().host(), "127.0.0.1");

    assert_eq!(cluster.psql(0, "SELECT pg_is_in_recovery()").unwrap(), "f");
    for i in 1..=2 {
        assert_eq!(cluster.psql(i, "SELECT pg_is_in_recovery()").unwrap(), "t");
    }
    let streaming = "SELECT string_agg(application_name, ',' ORDER BY application_name) \
                     FROM pg_stat_replication WHERE state = 'streaming'";
    assert_eq!(cluster.psql(0, streaming).unwrap(), "node1,node2");

    cluster
        .psql(
            0,
            "CREATE TABLE lifecycle (id int PRIMARY KEY, v text);
             INSERT INTO lifecycle VALUES (1, 'one');",
        )
        .unwrap();
    for i in 1..=2 {
        eventually(&cluster, i, "SELECT v FROM lifecycle WHERE id = 1", "one");
    }

    let err = cluster.psql(0, "SELECT * FROM no_such_table").unwrap_err();
    assert!(err.to_string().contains("no_such_table"), "{err}");
    assert!(matches!(
        cluster.psql(9, "SELECT 1"),
        Err(ClusterError::NoSuchNode { index: 9, count: 3 })
    ));

    // A crashed replica comes back and catches up.
    let replica = cluster.node(1);
    let old_pid = replica.pid().expect("node1 running");
    replica.kill(signal::SIGKILL).unwrap();
    assert!(!replica.is_running());
    assert!(matches!(
        replica.kill(signal::SIGKILL),
        Err(ClusterError::NotRunning { .. })
    ));
    replica.start().unwrap();
    assert_ne!(replica.pid(), Some(old_pid));
    cluster
        .psql(0, "INSERT INTO lifecycle VALUES (2, 'two')")
        .unwrap();
    eventually(&cluster, 1, "SELECT v FROM lifecycle WHERE id = 2", "two");

    // A frozen node still stops (fast shutdown) and starts again.
    let frozen = cluster.node(2);
    frozen.kill(signal::SIGSTOP).unwrap();
    assert!(frozen.is_running());
    frozen.stop().unwrap();
    assert!(!frozen.is_running());
    frozen.stop().unwrap();
    frozen.start().unwrap();
    eventually(&cluster, 2, "SELECT v FROM lifecycle WHERE id = 2", "two");

    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port).collect();
    let base_dir = cluster.base_dir().to_path_buf();
    assert!(base_dir.join("node0").join("PG_VERSION").exists());
    cluster.stop();
    cluster.stop();
    for node in cluster.nodes() {
        assert!(!node.is_running(), "{} still running", node.name);
    }
    for port in ports {
        assert!(!port_open(port), "port {port} still open");
    }
    drop(cluster);
    assert!(!base_dir.exists(), "{} left behind", base_dir.display());
}

#[test]
fn a_node_that_cannot_start_fails_the_cluster_with_its_log() {
    let opts = ClusterOptions {
        replicas: 0,
        extra_conf: vec!["no_such_setting = 1".to_string()],
        ..ClusterOptions::default()
    };
    let err = LocalCluster::start(opts).expect_err("an unknown setting must fail the start");
    assert!(matches!(err, ClusterError::Exited { .. }), "{err:?}");
    assert!(err.to_string().contains("no_such_setting"), "{err}");
}

/// The process state letter of `pid` in /proc ('Z' for a zombie), or None
/// once no such process exists.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ...: comm may hold spaces, so split after ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[test]
fn a_postmaster_killed_from_outside_is_reaped_and_can_start_again() {
    let cluster = start_cluster(ClusterOptions {
        replicas: 0,
        ..ClusterOptions::default()
    });
    let node = cluster.primary();
    let pid = node.pid().expect("node0 running");
    // As a user would with `kill -9`: nothing in the harness is told, and
    // nothing asks the node about its postmaster until it has been reaped.
    signal::send(pid, signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = proc_state(pid);
        if state.is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "postmaster {pid} still in /proc (state {state:?}) 30 s after SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!node.is_running());
    node.start().unwrap();
    assert_ne!(node.pid(), Some(pid));
    assert_eq!(cluster.psql(0, "SELECT 1").unwrap(), "1");
}

async fn echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rx, mut tx) = conn.split();
                let _ = tokio::io::copy(&mut rx, &mut tx).await;
            });
        }
    });
    addr
}

async fn connect(relay: &FaultyRelay) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(relay.addr()).await.unwrap()
}

/// How long an echo that should come back may take.
const ECHO: Duration = Duration::from_secs(10);
/// How long an echo that must not come back is watched for: a relay that
/// leaks would deliver in microseconds, and a slow machine can only make
/// this pass later, never fail falsely.
const SILENCE: Duration = Duration::from_millis(300);

/// Writes `msg` and reads it back, or None if nothing came within `limit`.
async fn echo(conn: &mut tokio::net::TcpStream, msg: &[u8], limit: Duration) -> Option<Vec<u8>> {
    conn.write_all(msg).await.unwrap();
    read_echo(conn, msg.len(), limit).await
}

async fn read_echo(
    conn: &mut tokio::net::TcpStream,
    len: usize,
    limit: Duration,
) -> Option<Vec<u8>> {
    let mut buf = vec![0; len];
    tokio::time::timeout(limit, conn.read_exact(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(buf)
}

#[tokio::test]
async fn relay_cuts_blocks_and_heals() {
    let relay = FaultyRelay::start(echo_server().await);

    let mut first = connect(&relay).await;
    assert_eq!(
        echo(&mut first, b"ping", ECHO).await.as_deref(),
        Some(&b"ping"[..])
    );

    relay.cut();
    let mut buf = [0u8; 16];
    let after_cut = tokio::time::timeout(ECHO, first.read(&mut buf))
        .await
        .expect("a cut connection must not hang");
    assert!(matches!(after_cut, Ok(0) | Err(_)), "{after_cut:?}");

    let mut second = connect(&relay).await;
    assert_eq!(
        echo(&mut second, b"again", ECHO).await.as_deref(),
        Some(&b"again"[..])
    );

    relay.block();
    assert_eq!(echo(&mut second, b"held", SILENCE).await, None);
    let mut third = connect(&relay).await;
    assert_eq!(echo(&mut third, b"new", SILENCE).await, None);

    relay.heal();
    assert_eq!(
        read_echo(&mut second, 4, ECHO).await.as_deref(),
        Some(&b"held"[..])
    );
    assert_eq!(
        read_echo(&mut third, 3, ECHO).await.as_deref(),
        Some(&b"new"[..])
    );
    let mut fourth = connect(&relay).await;
    assert_eq!(
        echo(&mut fourth, b"fresh", ECHO).await.as_deref(),
        Some(&b"fresh"[..])
    );
}

//! Load balancing over the replicas and transaction pooling, end to end: how
//! reads spread under each `routing.load_balance` policy and node weights,
//! and how few server connections many clients share.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::harness::{client, sqlstate, start_proxy};
use crate::support::nodes::{
    assert_all_primary, assert_spread_over_replicas, direct, fresh_table, reads, served_by, tally,
    unique, wait_running, wait_until, Node,
};
use crate::support::shared_cluster;
use palisade::config::{Config, Consistency, LoadBalance};
use palisade::proxy::Proxy;
use tokio_postgres::Client;

const TIMEOUT: Duration = Duration::from_secs(10);

async fn balanced(tweak: impl FnOnce(&mut Config)) -> Proxy {
    start_proxy(shared_cluster(), tweak).await
}

/// The backend pid of a statement hinted to the primary.
async fn primary_pid(client: &Client) -> i32 {
    client
        .query_one(
            "/* palisade: primary */ SELECT pg_backend_pid(), pg_is_in_recovery()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn round_robin_alternates_over_the_replicas() {
    let proxy = balanced(|c| c.routing.load_balance = LoadBalance::RoundRobin).await;
    let client = client(&proxy, shared_cluster(), "balance-rr").await;
    let seen = reads(&client, 20).await;
    assert_spread_over_replicas(&seen, "round-robin");
    for pair in seen.windows(2) {
        assert_ne!(
            pair[0], pair[1],
            "round-robin served twice in a row: {seen:?}"
        );
    }
    let counts = tally(&seen);
    assert_eq!(counts[&Node::Replica(1)], 10, "{counts:?}");
    assert_eq!(counts[&Node::Replica(2)], 10, "{counts:?}");
}

#[tokio::test]
async fn weighted_balancing_follows_the_node_weights() {
    let proxy = balanced(|c| {
        c.routing.load_balance = LoadBalance::Weighted;
        c.nodes[1].weight = 3;
        c.nodes[2].weight = 1;
    })
    .await;
    let client = client(&proxy, shared_cluster(), "balance-weighted").await;
    let seen = reads(&client, 80).await;
    let counts = tally(&seen);
    eprintln!("weighted 3:1 over 80 reads: {counts:?}");
    assert_spread_over_replicas(&seen, "weighted");
    // 60 expected; ±12 is three standard deviations of a random 3:1 choice.
    let first = counts[&Node::Replica(1)];
    assert!((48..=72).contains(&first), "3:1 weights gave {counts:?}");
}

#[tokio::test]
async fn least_outstanding_sends_reads_to_the_idle_replica() {
    let cluster = shared_cluster();
    let proxy = balanced(|c| c.routing.load_balance = LoadBalance::LeastOutstanding).await;
    let busy = client(&proxy, shared_cluster(), "balance-lo-busy").await;
    let reader = client(&proxy, shared_cluster(), "balance-lo-reader").await;
    // A long read without volatile functions (pg_sleep is VOLATILE in pg_proc),
    // tagged so that pg_stat_activity on the replicas shows where it runs.
    let marker = unique("balance_busy");
    let long_read = format!(
        "SELECT count(*) /* {marker} */ FROM generate_series(1, 50000) a, generate_series(1, 50000) b"
    );
    let cancel = busy.cancel_token();
    let running = tokio::spawn(async move { busy.batch_execute(&long_read).await });

    let busy_replica = match wait_running(cluster, &marker).await {
        0 => Node::Primary,
        i => Node::Replica(i),
    };
    assert!(
        busy_replica.is_replica(),
        "the long read runs on {busy_replica:?}"
    );

    let seen = reads(&reader, 10).await;
    cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = tokio::time::timeout(TIMEOUT, running)
        .await
        .expect("the long read is cancelled")
        .unwrap()
        .unwrap_err();
    assert_eq!(sqlstate(&err), "57014");
    assert!(
        seen.iter().all(|n| n.is_replica() && *n != busy_replica),
        "with {busy_replica:?} busy, reads went to {:?}",
        tally(&seen)
    );
}

#[tokio::test]
async fn primary_read_weight_lets_the_primary_serve_reads() {
    for policy in [LoadBalance::RoundRobin, LoadBalance::Weighted] {
        let proxy = balanced(|c| {
            c.routing.load_balance = policy;
            c.routing.primary_read_weight = 1;
        })
        .await;
        let client = client(&proxy, shared_cluster(), "balance-primary-weight").await;
        let seen = reads(&client, 30).await;
        let counts = tally(&seen);
        eprintln!("primary_read_weight = 1 under {policy:?}: {counts:?}");
        assert_eq!(
            counts.len(),
            3,
            "{policy:?}: every node serves reads: {counts:?}"
        );
    }
    let proxy = balanced(|_| {}).await;
    let client = client(&proxy, shared_cluster(), "balance-primary-weight").await;
    assert_spread_over_replicas(&reads(&client, 12).await, "primary_read_weight by default");
}

#[tokio::test]
async fn zero_replica_weights_send_reads_to_the_primary() {
    for policy in [LoadBalance::RoundRobin, LoadBalance::Weighted] {
        let proxy = balanced(|c| {
            c.routing.load_balance = policy;
            c.nodes[1].weight = 0;
            c.nodes[2].weight = 0;
        })
        .await;
        let client = client(&proxy, shared_cluster(), "balance-zero-weights").await;
        assert_all_primary(
            &reads(&client, 10).await,
            &format!("both replica weights 0 under {policy:?}"),
        );
    }
}

/// The most connections with `app` seen on each node while `running`.
async fn sample_connections(app: String, running: Arc<AtomicBool>) -> Vec<i64> {
    let cluster = shared_cluster();
    let mut nodes = Vec::new();
    for node in cluster.nodes() {
        nodes.push(direct(node).await);
    }
    let mut most = vec![0i64; nodes.len()];
    while running.load(Ordering::Relaxed) {
        for (i, node) in nodes.iter().enumerate() {
            let n: i64 = node
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    &[&app],
                )
                .await
                .unwrap()
                .get(0);
            most[i] = most[i].max(n);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    most
}

/// About pooling, not freshness: the clients read at `eventual`, where a
/// read never waits for a replica to replay the client's own write and so
/// never falls back to the primary. (At the default `causal`, a read that
/// waits out `causal_wait_ms` on a loaded machine is served by the primary,
/// as designed; `tests/it/consistency.rs` covers that.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_share_three_server_connections_per_node() {
    let proxy = balanced(|c| {
        c.pool.max_server_connections = 3;
        c.pool.acquire_timeout_ms = 30_000;
        c.consistency.level = Consistency::Eventual;
    })
    .await;
    let app = "balance-pool-cap";
    let table = unique("balance_pool");
    let setup = client(&proxy, shared_cluster(), "balance-pool-setup").await;
    fresh_table(&setup, &table, "client int, i int").await;

    let running = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn(sample_connections(app.to_owned(), running.clone()));
    // Logged in one by one: a burst of twenty SCRAM logins is not what this
    // test is about, and on two cores it can outlast the startup timeout.
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(client(&proxy, shared_cluster(), app).await);
    }
    let mut workers = Vec::new();
    for (c, client) in (0i32..).zip(clients) {
        let table = table.clone();
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in 0..10i32 {
                client.batch_execute("BEGIN").await.unwrap();
                client
                    .execute(&format!("INSERT INTO {table} VALUES ($1, $2)"), &[&c, &i])
                    .await
                    .unwrap();
                client.batch_execute("COMMIT").await.unwrap();
                seen.push(served_by(&client).await);
            }
            seen
        }));
    }
    let mut seen = Vec::new();
    for worker in workers {
        seen.extend(worker.await.expect("a client failed"));
    }
    running.store(false, Ordering::Relaxed);
    let most = sampler.await.unwrap();
    eprintln!(
        "most server connections per node (primary first): {most:?}; reads: {:?}",
        tally(&seen)
    );
    assert!(
        most[0] >= 1,
        "the sampler never saw the clients' connections"
    );
    for (i, n) in most.iter().enumerate() {
        assert!(*n <= 3, "node {i} had {n} server connections for {app}");
    }
    assert_spread_over_replicas(&seen, "the clients' reads");
    let primary = direct(shared_cluster().primary()).await;
    let n: i64 = primary
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 200, "every transaction committed");
    setup
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn clients_take_turns_on_one_server_connection_without_sharing_state() {
    let proxy = balanced(|c| {
        c.pool.max_server_connections = 1;
        c.pool.acquire_timeout_ms = 10_000;
    })
    .await;
    let app = "balance-turns";
    let a = client(&proxy, shared_cluster(), app).await;
    let b = client(&proxy, shared_cluster(), app).await;
    let pid = primary_pid(&a).await;
    assert_eq!(
        primary_pid(&b).await,
        pid,
        "both clients use the one server connection"
    );

    // B waits for A's transaction to end, then gets the connection.
    a.batch_execute("BEGIN").await.unwrap();
    assert_eq!(primary_pid(&a).await, pid);
    let b = Arc::new(b);
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move { primary_pid(&b).await })
    };
    // A window in which B must not be served: nothing outside the proxy
    // shows B waiting, and a slow machine can only make this check pass
    // without proving much, never fail a correct proxy.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "B got a connection while A's transaction held it"
    );
    a.batch_execute("COMMIT").await.unwrap();
    let got = tokio::time::timeout(TIMEOUT, waiting)
        .await
        .expect("B proceeds once A commits")
        .unwrap();
    assert_eq!(got, pid);

    // A's setting follows A, not the connection.
    a.batch_execute("SET work_mem = '7MB'").await.unwrap();
    let default: String = direct(shared_cluster().primary())
        .await
        .query_one("SHOW work_mem", &[])
        .await
        .unwrap()
        .get(0);
    for _ in 0..3 {
        let row = b
            .query_one(
                "/* palisade: primary */ SELECT pg_backend_pid(), current_setting('work_mem')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), pid);
        assert_eq!(row.get::<_, String>(1), default, "B sees the default");
        let row = a
            .query_one(
                "/* palisade: primary */ SELECT pg_backend_pid(), current_setting('work_mem')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), pid);
        assert_eq!(row.get::<_, String>(1), "7MB", "A keeps its setting");
    }
}

#[tokio::test]
async fn a_client_waiting_past_acquire_timeout_gets_an_error_not_a_hang() {
    let proxy = balanced(|c| {
        c.pool.max_server_connections = 1;
        c.pool.acquire_timeout_ms = 300;
    })
    .await;
    let app = "balance-acquire-timeout";
    let a = client(&proxy, shared_cluster(), app).await;
    let b = client(&proxy, shared_cluster(), app).await;
    a.batch_execute("BEGIN").await.unwrap();
    primary_pid(&a).await;
    let started = Instant::now();
    let result = tokio::time::timeout(
        TIMEOUT,
        b.query_one("/* palisade: primary */ SELECT 1", &[]),
    )
    .await
    .expect("B gets an answer, not a hang");
    let elapsed = started.elapsed();
    let err = result.expect_err("B cannot get the only connection while A holds it");
    eprintln!("acquire timeout after {elapsed:?}: {err:?}");
    assert!(
        elapsed >= Duration::from_millis(250),
        "B gave up after {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "B gave up after {elapsed:?}"
    );
    a.batch_execute("COMMIT").await.unwrap();
    let c = client(&proxy, shared_cluster(), app).await;
    wait_until("a new client to be served", TIMEOUT, || async {
        c.query_one("/* palisade: primary */ SELECT 1", &[])
            .await
            .is_ok()
    })
    .await;
}

//! Server connections outlive their clients: reused by the next client with
//! the same startup packet, and reset so that nothing of the last session
//! shows through.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::harness::{app_url, connect, connect_with, sqlstate, start_proxy, url};
use crate::support::nodes::{direct, fresh_table, unique, wait_until};
use crate::support::shared_cluster;
use palisade::config::Config;
use palisade::proxy::Proxy;
use tokio_postgres::Client;

async fn backend_pid(client: &Client) -> i32 {
    client
        .query_one("/* palisade: primary */ SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// A proxy whose pool holds one server connection per node, and makes a
/// client wait for it: the next client's checkout can only happen once the
/// last client's connection is back (or closed), however long the proxy
/// takes to notice it left, so no test here sleeps for that.
async fn one_connection_proxy(tweak: impl FnOnce(&mut Config)) -> Proxy {
    start_proxy(shared_cluster(), |c| {
        c.pool.max_server_connections = 1;
        c.pool.acquire_timeout_ms = 30_000;
        tweak(c);
    })
    .await
}

/// Waits until a server process of the primary has gone, asked of the
/// primary directly (a closed connection's backend exits a moment later).
async fn wait_gone(pid: i32, what: &str) {
    let primary = direct(shared_cluster().primary()).await;
    wait_until(what, Duration::from_secs(30), || async {
        let n: i64 = primary
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        n == 0
    })
    .await;
}

#[tokio::test]
async fn next_client_reuses_the_server_connection_reset() {
    let cluster = shared_cluster();
    let proxy = one_connection_proxy(|_| {}).await;
    let url = app_url(&proxy, cluster, "pool-reset");

    let (first, _) = connect_with(&url).await.unwrap();
    let pid = backend_pid(&first).await;
    first
        .batch_execute(
            "SET work_mem = '7MB'; CREATE TEMP TABLE pool_tmp(x int); PREPARE pool_stmt AS SELECT 1; \
             LISTEN pool_channel; SELECT pg_advisory_lock(4242)",
        )
        .await
        .unwrap();
    drop(first);

    let (second, _) = connect_with(&url).await.unwrap();
    assert_eq!(
        backend_pid(&second).await,
        pid,
        "the idle server connection is reused"
    );
    let row = second
        .query_one(
            "SELECT current_setting('work_mem'), current_setting('application_name'), \
             (SELECT count(*) FROM pg_listening_channels()), to_regclass('pool_tmp') IS NULL",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "4MB", "settings are reset");
    assert_eq!(
        row.get::<_, String>(1),
        "pool-reset",
        "startup parameters stay"
    );
    assert_eq!(row.get::<_, i64>(2), 0, "LISTEN is undone");
    assert!(row.get::<_, bool>(3), "temporary tables are dropped");
    let err = second.batch_execute("EXECUTE pool_stmt").await.unwrap_err();
    assert_eq!(
        sqlstate(&err),
        "26000",
        "prepared statements are deallocated"
    );
    let (other, _) = connect(&proxy, cluster).await;
    let free: bool = other
        .query_one("SELECT pg_try_advisory_lock(4242)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(free, "session advisory locks are released");
    other
        .query_one("SELECT pg_advisory_unlock(4242)", &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn different_startup_parameters_get_different_connections() {
    let cluster = shared_cluster();
    // The second client waits for the first's connection to come back, and
    // must then close it for one with its own startup parameters.
    let proxy = one_connection_proxy(|_| {}).await;
    let base = url(&proxy, cluster.superuser(), cluster.password());
    let (first, _) = connect_with(&format!("{base} application_name=pool-a"))
        .await
        .unwrap();
    let pid = backend_pid(&first).await;
    drop(first);
    let (second, _) = connect_with(&format!("{base} application_name=pool-b"))
        .await
        .unwrap();
    assert_ne!(backend_pid(&second).await, pid);
    let name: String = second
        .query_one("SHOW application_name", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "pool-b");
}

#[tokio::test]
async fn a_client_leaving_inside_a_transaction_does_not_hand_its_server_on() {
    let cluster = shared_cluster();
    // The second client gets the one connection only once the first's is
    // back in the pool or closed.
    let proxy = one_connection_proxy(|_| {}).await;
    let url = app_url(&proxy, cluster, "pool-txn");
    let (first, _) = connect_with(&url).await.unwrap();
    let pid = backend_pid(&first).await;
    first.batch_execute("BEGIN; SELECT 1").await.unwrap();
    drop(first);
    let (second, _) = connect_with(&url).await.unwrap();
    assert_ne!(backend_pid(&second).await, pid);
    wait_gone(pid, "the abandoned server connection to be closed").await;
}

#[tokio::test]
async fn idle_connections_expire() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| c.pool.idle_timeout_ms = 200).await;
    let url = app_url(&proxy, cluster, "pool-expire");
    let (first, _) = connect_with(&url).await.unwrap();
    let pid = backend_pid(&first).await;
    drop(first);
    // Closed by the proxy, not just skipped by the next checkout: nobody
    // checks out a connection meanwhile.
    wait_gone(pid, "the expired connection to be closed").await;
    let (second, _) = connect_with(&url).await.unwrap();
    assert_ne!(backend_pid(&second).await, pid);
}

#[tokio::test]
async fn a_pooled_connection_its_server_ended_is_not_handed_out_however_recent() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |_| {}).await;
    let (client, _) = connect(&proxy, cluster).await;
    let table = unique("pool_ended");
    fresh_table(&client, &table, "i int").await;
    // Back in the pool a moment ago, then terminated by its server (well
    // within the 200 ms in which pooled connections used to go unchecked:
    // no new connection is made meanwhile).
    let primary = direct(cluster.primary()).await;
    let pid = backend_pid(&client).await;
    let began = std::time::Instant::now();
    primary
        .query("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    wait_until(
        "the terminated backend to exit",
        Duration::from_secs(10),
        || async {
            let n: i64 = primary
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                    &[&pid],
                )
                .await
                .unwrap()
                .get(0);
            n == 0
        },
    )
    .await;
    eprintln!("terminated and gone within {:?}", began.elapsed());
    // A write cannot be sent twice: handed the dead connection, it would fail.
    client
        .batch_execute(&format!("INSERT INTO {table} VALUES (1)"))
        .await
        .expect("a live connection, not the ended one");
    assert_ne!(backend_pid(&client).await, pid);
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn sessions_with_prepared_statements_keep_their_own_connections_under_the_cap() {
    // Three sessions with a prepared statement each take turns reading
    // from the two replicas (round robin: each session meets both). Under
    // the cap, a session that finds only others' connections idle on a
    // node opens one of its own rather than taking one of those: taking it
    // would reset it, its owner would take another the same way, and every
    // read would be a reset and a prepare again.
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |_| {}).await;
    let url = app_url(&proxy, cluster, "pool-own");
    let sql = "SELECT pg_backend_pid(), pg_is_in_recovery()";
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let (client, _) = connect_with(&url).await.unwrap();
        let stmt = client.prepare(sql).await.unwrap();
        sessions.push((client, stmt, BTreeSet::new()));
    }
    for _ in 0..20 {
        for (client, stmt, seen) in &mut sessions {
            let row = client.query_one(&*stmt, &[]).await.unwrap();
            assert!(row.get::<_, bool>(1), "a read served by a replica");
            seen.insert(row.get::<_, i32>(0));
        }
    }
    let seen: Vec<&BTreeSet<i32>> = sessions.iter().map(|(_, _, seen)| seen).collect();
    for (i, a) in seen.iter().enumerate() {
        assert!(a.len() <= 2, "one connection per replica: {seen:?}");
        for b in &seen[i + 1..] {
            assert!(a.is_disjoint(b), "no connection changed hands: {seen:?}");
        }
    }
}

//! Server connections outlive their clients: reused by the next client with
//! the same startup packet, and reset so that nothing of the last session
//! shows through.

use std::time::Duration;

use crate::support::harness::{app_url, connect, connect_with, sqlstate, start_proxy, url};
use crate::support::shared_cluster;
use tokio_postgres::Client;

async fn backend_pid(client: &Client) -> i32 {
    client
        .query_one("/* palisade: primary */ SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Whether a server process still exists.
async fn is_alive(client: &Client, pid: i32) -> bool {
    let n: i64 = client
        .query_one(
            "/* palisade: primary */ SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .unwrap()
        .get(0);
    n > 0
}

/// Closes a client politely (Terminate) and waits for the proxy to have
/// reset and pooled its server connection.
async fn leave(client: Client) {
    drop(client);
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn next_client_reuses_the_server_connection_reset() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |_| {}).await;
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
    leave(first).await;

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
    let proxy = start_proxy(cluster, |_| {}).await;
    let base = url(&proxy, cluster.superuser(), cluster.password());
    let (first, _) = connect_with(&format!("{base} application_name=pool-a"))
        .await
        .unwrap();
    let pid = backend_pid(&first).await;
    leave(first).await;
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
    let proxy = start_proxy(cluster, |_| {}).await;
    let url = app_url(&proxy, cluster, "pool-txn");
    let (first, _) = connect_with(&url).await.unwrap();
    let pid = backend_pid(&first).await;
    first.batch_execute("BEGIN; SELECT 1").await.unwrap();
    leave(first).await;
    let (second, _) = connect_with(&url).await.unwrap();
    assert_ne!(backend_pid(&second).await, pid);
    assert!(
        !is_alive(&second, pid).await,
        "the abandoned server connection is closed"
    );
}

#[tokio::test]
async fn idle_connections_expire() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| c.pool.idle_timeout_ms = 200).await;
    let url = app_url(&proxy, cluster, "pool-expire");
    let (first, _) = connect_with(&url).await.unwrap();
    let pid = backend_pid(&first).await;
    leave(first).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (second, _) = connect_with(&url).await.unwrap();
    assert_ne!(backend_pid(&second).await, pid);
    assert!(
        !is_alive(&second, pid).await,
        "the expired connection was closed, not just skipped"
    );
}

//! `read-after-commit`, the default level: a read that arrives after a write
//! was acknowledged through the proxy sees it, whichever connection wrote
//! it, and replicas serve it as soon as they have replayed it. On the
//! lagging cluster, taking turns with the other consistency tests.

use tokio_postgres::Client;

use crate::consistency::{proxy, reaches, SERIAL};
use crate::support::harness::{client, sqlstate};
use crate::support::lagging_cluster;
use crate::support::nodes::{fresh_table, served_by, tally, unique, wait_replayed, Node};
use crate::support::replication::{pause_replay, resume_replay};

/// One round: `writer` commits `i` (every third round inside an explicit
/// transaction), then `reader` counts it. Returns (seen, on a replica).
async fn commit_then_read(writer: &Client, reader: &Client, table: &str, i: i32) -> (bool, bool) {
    let insert = format!("INSERT INTO {table} VALUES ({i})");
    if i % 3 == 0 {
        writer
            .batch_execute(&format!("BEGIN; {insert}; COMMIT"))
            .await
            .unwrap();
    } else {
        writer.execute(&insert, &[]).await.unwrap();
    }
    let row = reader
        .query_one(
            &format!("SELECT count(*), pg_is_in_recovery() FROM {table} WHERE i = $1"),
            &[&i],
        )
        .await
        .unwrap();
    (row.get::<_, i64>(0) == 1, row.get::<_, bool>(1))
}

#[tokio::test]
async fn another_connection_reads_every_acknowledged_commit() {
    let _serial = SERIAL.lock().await;
    let proxy = proxy(|_| {}).await;
    let writer = client(&proxy, lagging_cluster(), "rac-writer").await;
    let reader = client(&proxy, lagging_cluster(), "rac-reader").await;
    let table = unique("rac_rounds");
    fresh_table(&writer, &table, "i int").await;

    let rounds = 1000;
    let (mut stale, mut on_replica) = (0, 0);
    for i in 0..rounds {
        let (seen, replica) = commit_then_read(&writer, &reader, &table, i).await;
        stale += usize::from(!seen);
        on_replica += usize::from(replica);
    }
    eprintln!(
        "read-after-commit: {rounds} rounds across two connections, {stale} stale, {on_replica} reads on replicas"
    );
    assert_eq!(stale, 0, "a read missed a commit acknowledged before it");
    assert!(
        on_replica > 900,
        "replicas served only {on_replica} of {rounds} reads"
    );

    // The same with `causal` per session: the reader has written nothing, so
    // it does not wait, and (with replay held back) misses the commit.
    reader
        .batch_execute("SET palisade.consistency = 'causal'")
        .await
        .unwrap();
    let replicas = lagging_cluster().replicas();
    for replica in replicas {
        pause_replay(replica).await;
    }
    let (seen, replica) = commit_then_read(&writer, &reader, &table, rounds).await;
    for replica in replicas {
        resume_replay(replica).await;
    }
    assert!(replica && !seen, "causal reads are per session");
    reader
        .batch_execute("RESET palisade.consistency")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_table_created_on_one_connection_is_there_for_the_next_query_on_another() {
    let _serial = SERIAL.lock().await;
    let proxy = proxy(|_| {}).await;
    let ddl = client(&proxy, lagging_cluster(), "rac-ddl").await;
    let query = client(&proxy, lagging_cluster(), "rac-query").await;
    let mut on_replica = 0;
    for n in 0..20 {
        let table = format!("{}_{n}", unique("rac_ddl"));
        ddl.batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
            .await
            .unwrap();
        ddl.batch_execute(&format!("CREATE TABLE {table}(i int)"))
            .await
            .unwrap();
        let row = query
            .query_one(
                &format!("SELECT count(*), pg_is_in_recovery() FROM {table}"),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{table} is missing ({}): {e}", sqlstate(&e)));
        on_replica += usize::from(row.get::<_, bool>(1));
        ddl.batch_execute(&format!("ALTER TABLE {table} ADD COLUMN j text"))
            .await
            .unwrap();
        query
            .query_one(&format!("SELECT count(j) FROM {table}"), &[])
            .await
            .unwrap_or_else(|e| panic!("{table}.j is missing ({}): {e}", sqlstate(&e)));
        ddl.batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
    }
    eprintln!("queries right after CREATE TABLE served by replicas: {on_replica} of 20");
    assert!(on_replica > 0, "replicas never served a query after DDL");
}

#[tokio::test]
async fn a_paused_replica_serves_again_once_it_has_the_commits() {
    let _serial = SERIAL.lock().await;
    let cluster = lagging_cluster();
    // A read that meets the paused replica gives up on it after 200 ms.
    let proxy = proxy(|c| c.consistency.causal_wait_ms = 200).await;
    let writer = client(&proxy, cluster, "rac-pause-writer").await;
    let reader = client(&proxy, cluster, "rac-pause-reader").await;
    let table = unique("rac_pause");
    fresh_table(&writer, &table, "i int").await;
    wait_replayed(cluster).await;

    let paused = &cluster.replicas()[1];
    pause_replay(paused).await;
    let mut served = Vec::new();
    for i in 0..30 {
        let (seen, _) = commit_then_read(&writer, &reader, &table, i).await;
        assert!(seen, "round {i}: the commit was missed");
        served.push(served_by(&reader).await);
    }
    eprintln!("reads while replica 2 is paused: {:?}", tally(&served));
    assert!(
        !served.contains(&Node::Replica(2)),
        "the paused replica served a read: {:?}",
        tally(&served)
    );

    resume_replay(paused).await;
    wait_replayed(cluster).await;
    assert!(
        reaches(&reader, Node::Replica(2), 50).await,
        "replica 2 never served again after catching up"
    );
}

//! Which node of the shared cluster served a statement, and waiting for the
//! replicas to catch up: what the routing tests need to observe read/write
//! splitting from the outside.
//!
//! A node is recognised by the port its server reports (`inet_server_port()`,
//! `SHOW port`), checked against `pg_is_in_recovery()` where both are at hand,
//! in whichever of the support's clusters listens there.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use palisade_testkit::{LocalCluster, LocalNode};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::harness::connect_node;
use super::started_clusters;

/// A node of a support cluster, as seen by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    Primary,
    /// 1-based, in the order of `LocalCluster::replicas()` (node 1 is replica 1).
    Replica(usize),
}

impl Node {
    pub fn is_replica(self) -> bool {
        matches!(self, Node::Replica(_))
    }
}

/// The support cluster one of whose nodes listens on `port`.
fn cluster_of(port: i64) -> &'static LocalCluster {
    started_clusters()
        .find(|c| c.nodes().iter().any(|n| i64::from(n.port) == port))
        .unwrap_or_else(|| panic!("port {port} is no node of a support cluster"))
}

/// The node listening on `port` (as reported by the server itself).
pub fn node_of(port: i64) -> Node {
    let cluster = cluster_of(port);
    if port == i64::from(cluster.primary().port) {
        return Node::Primary;
    }
    match cluster
        .replicas()
        .iter()
        .position(|r| i64::from(r.port) == port)
    {
        Some(i) => Node::Replica(i + 1),
        None => unreachable!("cluster_of found port {port}"),
    }
}

/// Runs a read that reports where it ran and checks that the node's own
/// view (in recovery or not) agrees with its port.
pub async fn served_by(client: &Client) -> Node {
    let row = client
        .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
        .await
        .unwrap_or_else(|e| panic!("SELECT inet_server_port(): {e:?}"));
    let node = node_of(i64::from(row.get::<_, i32>(0)));
    let in_recovery: bool = row.get(1);
    assert_eq!(
        in_recovery,
        node.is_replica(),
        "{node:?} reports pg_is_in_recovery() = {in_recovery}"
    );
    node
}

/// `n` reads in a row, each reporting where it ran.
pub async fn reads(client: &Client, n: usize) -> Vec<Node> {
    let mut seen = Vec::with_capacity(n);
    for _ in 0..n {
        seen.push(served_by(client).await);
    }
    seen
}

/// Every row's first column of a simple query, as text.
pub fn first_column(messages: &[SimpleQueryMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .collect()
}

/// Runs a simple query whose every row starts with a server port, and
/// returns the node of each row.
pub async fn simple_nodes(client: &Client, sql: &str) -> Vec<Node> {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    first_column(&messages)
        .iter()
        .map(|p| {
            node_of(
                p.parse()
                    .unwrap_or_else(|_| panic!("{sql}: {p} is no port")),
            )
        })
        .collect()
}

/// How many times each node appears.
pub fn tally(seen: &[Node]) -> BTreeMap<Node, usize> {
    let mut counts = BTreeMap::new();
    for n in seen {
        *counts.entry(*n).or_default() += 1;
    }
    counts
}

/// Every statement ran on the primary.
#[track_caller]
pub fn assert_all_primary(seen: &[Node], what: &str) {
    assert!(
        !seen.is_empty() && seen.iter().all(|n| *n == Node::Primary),
        "{what}: expected every statement on the primary, got {:?}",
        tally(seen)
    );
}

/// Every read ran on a replica, and the reads were spread over both of them.
#[track_caller]
pub fn assert_spread_over_replicas(seen: &[Node], what: &str) {
    let counts = tally(seen);
    assert!(
        seen.iter().all(|n| n.is_replica()),
        "{what}: expected every read on a replica, got {counts:?}"
    );
    assert!(
        counts.len() >= 2,
        "{what}: expected reads on both replicas, got {counts:?}"
    );
}

/// Every statement ran on one and the same replica; returns it.
#[track_caller]
pub fn assert_one_replica(seen: &[Node], what: &str) -> Node {
    let counts = tally(seen);
    assert!(
        counts.len() == 1 && seen[0].is_replica(),
        "{what}: expected every statement on one replica, got {counts:?}"
    );
    seen[0]
}

/// A superuser connection straight to a node of a support cluster, bypassing
/// the proxy.
pub async fn direct(node: &LocalNode) -> Client {
    connect_node(cluster_of(i64::from(node.port)), node)
        .await
        .unwrap_or_else(|e| panic!("connect to {} directly: {e}", node.name))
}

/// Waits until every replica of `cluster` has replayed the primary's WAL as
/// of now, so a read served by any of them sees what was committed before
/// the call.
pub async fn wait_replayed(cluster: &LocalCluster) {
    let primary = direct(cluster.primary()).await;
    let lsn: String = primary
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    for replica in cluster.replicas() {
        let client = direct(replica).await;
        let what = format!("{} to replay up to {lsn}", replica.name);
        wait_until(&what, Duration::from_secs(30), || async {
            client
                .query_one(
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                    &[&lsn],
                )
                .await
                .unwrap()
                .get::<_, bool>(0)
        })
        .await;
    }
}

/// Waits until a statement whose text holds `marker` runs on a node of
/// `cluster` (as that node's pg_stat_activity shows, asked directly), and
/// returns the node's index: a test that cancels, cuts or kills a running
/// query knows it is running, rather than guessing how long that takes.
pub async fn wait_running(cluster: &LocalCluster, marker: &str) -> usize {
    let mut nodes = Vec::new();
    for node in cluster.nodes() {
        let client = connect_node(cluster, node)
            .await
            .unwrap_or_else(|e| panic!("connect to {} directly: {e}", node.name));
        nodes.push(client);
    }
    let probe = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
                 AND strpos(query, $1) > 0 AND pid <> pg_backend_pid()";
    let limit = Duration::from_secs(30);
    let deadline = Instant::now() + limit;
    loop {
        for (i, node) in nodes.iter().enumerate() {
            let n: i64 = node.query_one(probe, &[&marker]).await.unwrap().get(0);
            if n > 0 {
                return i;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for a statement marked {marker} to run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` every 20 ms until it holds, failing after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A name no other test run uses at the same time.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", std::process::id())
}

/// (Re)creates `table` with `columns`, through `client`.
pub async fn fresh_table(client: &Client, table: &str, columns: &str) {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table}({columns})"
        ))
        .await
        .unwrap();
}

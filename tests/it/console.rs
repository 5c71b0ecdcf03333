//! The console's views of the proxy's own state (`SHOW POOLS`, `CLIENTS`,
//! `SERVERS`, `STATS`, `EVENTS`) and `PAUSE` / `RESUME`.

use std::time::Duration;

use palisade::admin::show;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::support::harness::{app_url, connect_with, console_url, start_proxy};
use crate::support::nodes::{direct, fresh_table, unique};
use crate::support::shared_cluster;

/// A console query's column names and rows (NULL as "NULL").
async fn table(console: &Client, sql: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let messages = console
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for m in &messages {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                columns = cols.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(r) => rows.push(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_owned())
                    .collect(),
            ),
            _ => {}
        }
    }
    (columns, rows)
}

/// The value of `column` in `row` of a result with `columns`.
fn cell<'a>(columns: &[String], row: &'a [String], column: &str) -> &'a str {
    let i = columns
        .iter()
        .position(|c| c == column)
        .unwrap_or_else(|| panic!("no column {column} in {columns:?}"));
    &row[i]
}

#[tokio::test]
async fn the_show_views_list_pools_clients_servers_stats_and_events() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |_| {}).await;
    let url = app_url(&proxy, cluster, "console_views");
    let (busy, _) = connect_with(&url).await.unwrap();
    let (idle, _) = connect_with(&url).await.unwrap();
    idle.simple_query("SELECT 1").await.unwrap();
    busy.batch_execute("BEGIN; SELECT txid_current()")
        .await
        .unwrap();
    let (console, _) = connect_with(&console_url(&proxy, cluster)).await.unwrap();
    let primary = proxy.topology().nodes[proxy.topology().primary().unwrap()]
        .name
        .clone();

    let (columns, rows) = table(&console, "SHOW CLIENTS").await;
    assert_eq!(columns, show::CLIENT_COLUMNS);
    assert_eq!(rows.len(), 2, "the two sessions, not the console: {rows:?}");
    let in_txn: Vec<&Vec<String>> = rows
        .iter()
        .filter(|r| cell(&columns, r, "state") == "idle in transaction")
        .collect();
    assert_eq!(in_txn.len(), 1, "{rows:?}");
    assert_eq!(cell(&columns, in_txn[0], "node"), primary);
    assert_eq!(cell(&columns, in_txn[0], "user"), cluster.superuser());
    assert!(cell(&columns, in_txn[0], "addr").starts_with("127.0.0.1:"));
    let busy_id = cell(&columns, in_txn[0], "id").to_owned();

    let (columns, rows) = table(&console, "SHOW SERVERS").await;
    assert_eq!(columns, show::SERVER_COLUMNS);
    assert!(
        rows.iter().any(|r| cell(&columns, r, "state") == "active"
            && cell(&columns, r, "client_id") == busy_id
            && cell(&columns, r, "node") == primary),
        "the transaction's server connection: {rows:?}"
    );

    let (columns, rows) = table(&console, "SHOW POOLS").await;
    assert_eq!(columns, show::POOL_COLUMNS);
    let on_primary = rows
        .iter()
        .find(|r| cell(&columns, r, "node") == primary)
        .unwrap_or_else(|| panic!("a pool on {primary}: {rows:?}"));
    assert!(
        cell(&columns, on_primary, "sv_active")
            .parse::<u32>()
            .unwrap()
            >= 1
    );
    assert_eq!(cell(&columns, on_primary, "cl_waiting"), "0");

    busy.batch_execute("COMMIT").await.unwrap();
    let (columns, rows) = table(&console, "SHOW STATS").await;
    assert_eq!(columns, show::STATS_COLUMNS);
    assert_eq!(rows.len(), 4, "three nodes and the total: {rows:?}");
    let total = &rows[3];
    assert_eq!(cell(&columns, total, "node"), "total");
    let routed: u64 = cell(&columns, total, "queries_routed").parse().unwrap();
    assert_eq!(routed, proxy.routed().iter().sum::<u64>());
    assert!(
        routed >= 3,
        "SELECT 1, the transaction and COMMIT: {rows:?}"
    );
    assert!(cell(&columns, total, "commits").parse::<u64>().unwrap() >= 1);

    let (columns, rows) = table(&console, "SHOW EVENTS").await;
    assert_eq!(columns, show::EVENT_COLUMNS);
    assert!(
        rows.iter().any(|r| cell(&columns, r, "node") == primary
            && cell(&columns, r, "event").starts_with("role primary")),
        "the primary found at start: {rows:?}"
    );
}

#[tokio::test]
async fn pause_holds_a_write_until_resume() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |_| {}).await;
    let (app, _) = connect_with(&app_url(&proxy, cluster, "console_pause"))
        .await
        .unwrap();
    let table_name = unique("paused");
    fresh_table(&app, &table_name, "n int").await;
    let (console, _) = connect_with(&console_url(&proxy, cluster)).await.unwrap();
    console.simple_query("PAUSE").await.unwrap();
    let insert = format!("INSERT INTO {table_name} VALUES (1)");
    let write = app.simple_query(&insert);
    tokio::pin!(write);
    let primary = direct(cluster.primary()).await;
    let count = format!("SELECT count(*) FROM {table_name}");
    tokio::select! {
        r = &mut write => panic!("the write ran while paused: {r:?}"),
        () = tokio::time::sleep(Duration::from_millis(700)) => {}
    }
    let rows: i64 = primary.query_one(&count, &[]).await.unwrap().get(0);
    assert_eq!(rows, 0, "nothing was written while paused");
    let (columns, clients) = table(&console, "SHOW CLIENTS").await;
    assert!(
        clients
            .iter()
            .any(|r| cell(&columns, r, "state") == "paused"),
        "the held session shows as paused: {clients:?}"
    );
    console.simple_query("RESUME").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), write)
        .await
        .expect("the write runs after RESUME")
        .expect("and succeeds");
    let rows: i64 = primary.query_one(&count, &[]).await.unwrap().get(0);
    assert_eq!(rows, 1);
    primary
        .batch_execute(&format!("DROP TABLE {table_name}"))
        .await
        .unwrap();
}

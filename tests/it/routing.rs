//! Read/write splitting, end to end: which node serves each statement, seen
//! from the client through `inet_server_port()`, and the session that
//! follows the client from node to node.
//!
//! Reads outside a transaction go to the replicas, writes, read-write
//! transactions and pinned sessions to the primary, read-only transactions
//! to one replica; settings and prepared statements hold on every node.

use std::time::Duration;

use crate::support::harness::{app_url, client, connect_with, sqlstate, start_proxy};
use crate::support::nodes::{
    assert_all_primary, assert_one_replica, assert_spread_over_replicas, direct, first_column,
    fresh_table, node_of, reads, served_by, simple_nodes, tally, unique, wait_replayed, wait_until,
    Node,
};
use crate::support::shared_cluster;
use palisade::config::AuthMethod;
use palisade::proxy::Proxy;
use palisade_testkit::wire::{frame, read_message, startup_packet};
use palisade_testkit::FaultyRelay;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::{AsyncMessage, Client};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A proxy with the default routing and one client tagged `app`.
async fn routed(app: &str) -> (Proxy, Client) {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |_| {}).await;
    let client = client(&proxy, shared_cluster(), app).await;
    (proxy, client)
}

/// The server default of a setting, asked of the primary directly.
async fn server_default(name: &str) -> String {
    let primary = direct(shared_cluster().primary()).await;
    primary
        .query_one("SELECT current_setting($1)", &[&name])
        .await
        .unwrap()
        .get(0)
}

/// `n` reads of `work_mem`, each with the node that answered.
async fn work_mem_reads(client: &Client, n: usize) -> Vec<(Node, String)> {
    let mut seen = Vec::with_capacity(n);
    for _ in 0..n {
        let row = client
            .query_one(
                "SELECT inet_server_port(), current_setting('work_mem')",
                &[],
            )
            .await
            .unwrap();
        seen.push((node_of(row.get::<_, i32>(0).into()), row.get(1)));
    }
    seen
}

/// Every read saw `expected`, and the reads were spread over both replicas.
#[track_caller]
fn assert_everywhere(seen: &[(Node, String)], expected: &str, what: &str) {
    for (node, value) in seen {
        assert_eq!(value, expected, "{what}: work_mem on {node:?}");
    }
    let nodes: Vec<Node> = seen.iter().map(|(n, _)| *n).collect();
    assert_spread_over_replicas(&nodes, what);
}

#[tokio::test]
async fn reads_outside_a_transaction_go_to_the_replicas() {
    let (_proxy, client) = routed("routing-reads").await;
    let seen = reads(&client, 10).await;
    assert_spread_over_replicas(&seen, "SELECT, extended protocol");

    let mut simple = Vec::new();
    for sql in [
        "SELECT inet_server_port()",
        "SHOW port",
        "VALUES (inet_server_port())",
        "SELECT inet_server_port() FROM generate_series(1, 1)",
        "WITH x AS (SELECT inet_server_port() AS p) SELECT p FROM x",
        "TABLE pg_settings LIMIT 0; SELECT inet_server_port()",
    ] {
        for _ in 0..2 {
            let nodes = simple_nodes(&client, sql).await;
            assert_eq!(nodes.len(), 1, "{sql}");
            assert!(nodes[0].is_replica(), "{sql}: served by {:?}", nodes[0]);
            simple.extend(nodes);
        }
    }
    assert_spread_over_replicas(&simple, "reads, simple protocol");
}

#[tokio::test]
async fn writes_and_side_effects_go_to_the_primary() {
    let (_proxy, client) = routed("routing-writes").await;
    let table = unique("routing_writes");
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table}(x int); \
             DROP SEQUENCE IF EXISTS {table}_seq; CREATE SEQUENCE {table}_seq"
        ))
        .await
        .unwrap();
    let statements = [
        format!("INSERT INTO {table} VALUES (1) RETURNING inet_server_port()"),
        format!("UPDATE {table} SET x = x + 1 RETURNING inet_server_port()"),
        format!("WITH w AS (INSERT INTO {table} VALUES (5) RETURNING x) SELECT inet_server_port() FROM w"),
        format!("SELECT inet_server_port() FROM {table} WHERE x = 5 LIMIT 1 FOR UPDATE"),
        format!("SELECT inet_server_port() FROM {table} WHERE x = 5 LIMIT 1 FOR SHARE"),
        format!("SELECT inet_server_port() FROM nextval('{table}_seq')"),
        format!("DELETE FROM {table} WHERE x = 5 RETURNING inet_server_port()"),
    ];
    for sql in &statements {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let rows = client
                .query(sql.as_str(), &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            seen.extend(rows.iter().map(|r| node_of(r.get::<_, i32>(0).into())));
            seen.extend(simple_nodes(&client, sql).await);
        }
        assert_all_primary(&seen, sql);
    }
    client
        .batch_execute(&format!("DROP TABLE {table}; DROP SEQUENCE {table}_seq"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_multi_statement_query_is_a_write_if_any_part_writes() {
    let (_proxy, client) = routed("routing-multi").await;
    let table = unique("routing_multi");
    fresh_table(&client, &table, "x int").await;
    for _ in 0..3 {
        let write = format!(
            "SELECT inet_server_port(); INSERT INTO {table} VALUES (1); SELECT inet_server_port()"
        );
        let nodes = simple_nodes(&client, &write).await;
        assert_eq!(nodes.len(), 2);
        assert_all_primary(&nodes, "a read, a write and a read in one query");
    }
    let mut firsts = Vec::new();
    for _ in 0..4 {
        let nodes = simple_nodes(
            &client,
            "SELECT inet_server_port(); SHOW port; VALUES (inet_server_port())",
        )
        .await;
        assert_eq!(nodes.len(), 3);
        assert_one_replica(&nodes, "three reads in one query");
        firsts.push(nodes[0]);
    }
    assert_spread_over_replicas(&firsts, "read-only multi-statement queries");
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

/// Parse, Bind and Execute of each statement (unnamed, text results), then
/// one Sync; returns the first column of every DataRow, in order.
async fn batch(stream: &mut TcpStream, statements: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for sql in statements {
        let mut parse = vec![0u8];
        parse.extend_from_slice(sql.as_bytes());
        parse.extend_from_slice(&[0, 0, 0]);
        frame(&mut out, b'P', &parse);
        frame(&mut out, b'B', &[0, 0, 0, 0, 0, 0, 0, 0]);
        frame(&mut out, b'E', &[0, 0, 0, 0, 0]);
    }
    frame(&mut out, b'S', b"");
    stream.write_all(&out).await.unwrap();
    until_ready(stream, &format!("{statements:?}")).await
}

/// Reads up to ReadyForQuery; returns the first column of every DataRow.
/// A raw protocol connection through `proxy` as the (trusted) superuser,
/// ready for query.
async fn raw_client(proxy: &Proxy, app: &str) -> TcpStream {
    let cluster = shared_cluster();
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let packet = startup_packet(
        196_608,
        &[
            ("user", cluster.superuser()),
            ("database", "postgres"),
            ("application_name", app),
        ],
    );
    stream.write_all(&packet).await.unwrap();
    until_ready(&mut stream, "startup").await;
    stream
}

async fn until_ready(stream: &mut TcpStream, what: &str) -> Vec<String> {
    let mut values = Vec::new();
    loop {
        let (tag, body) = read_message(stream).await;
        match tag {
            b'D' => {
                let n = i32::from_be_bytes(body[2..6].try_into().unwrap()) as usize;
                values.push(String::from_utf8_lossy(&body[6..6 + n]).into_owned());
            }
            b'E' => panic!(
                "{what} failed: {}",
                String::from_utf8_lossy(&body).replace('\0', " | ")
            ),
            b'Z' => return values,
            _ => {}
        }
    }
}

#[tokio::test]
async fn an_extended_batch_is_routed_as_a_whole_up_to_sync() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| c.users[0].auth = AuthMethod::Trust).await;
    let table = unique("routing_batch");
    let setup = client(&proxy, shared_cluster(), "routing-batch").await;
    fresh_table(&setup, &table, "x int").await;

    let mut stream = raw_client(&proxy, "routing-batch").await;

    let port = "SELECT inet_server_port()".to_owned();
    let write = format!("INSERT INTO {table} VALUES (1) RETURNING inet_server_port()");
    let nodes = |values: Vec<String>| -> Vec<Node> {
        values.iter().map(|v| node_of(v.parse().unwrap())).collect()
    };
    for _ in 0..3 {
        let seen = nodes(batch(&mut stream, &[port.clone(), write.clone(), port.clone()]).await);
        assert_eq!(seen.len(), 3);
        assert_all_primary(&seen, "a batch with a write in the middle");
        let seen = nodes(batch(&mut stream, &[port.clone(), port.clone(), write.clone()]).await);
        assert_all_primary(&seen, "a batch whose write comes last");
    }
    let mut firsts = Vec::new();
    for _ in 0..4 {
        let seen = nodes(batch(&mut stream, &[port.clone(), port.clone(), port.clone()]).await);
        assert_eq!(seen.len(), 3);
        firsts.push(assert_one_replica(&seen, "a batch of reads"));
    }
    assert_spread_over_replicas(&firsts, "read-only batches");
    setup
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_read_prepared_with_flush_does_not_decide_where_the_next_write_goes() {
    // asyncpg's copy_records_to_table: Parse/Describe/Flush of a read, then
    // COPY on the same connection.
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| c.users[0].auth = AuthMethod::Trust).await;
    let table = unique("routing_flush");
    let setup = client(&proxy, shared_cluster(), "routing-flush").await;
    fresh_table(&setup, &table, "x int").await;
    let mut stream = raw_client(&proxy, "routing-flush").await;
    for round in 0..4 {
        let name = format!("s{round}");
        let mut out = Vec::new();
        let sql = format!("SELECT x, inet_server_port() FROM {table} LIMIT 1");
        frame(&mut out, b'P', format!("{name}\0{sql}\0\0\0").as_bytes());
        frame(&mut out, b'D', format!("S{name}\0").as_bytes());
        frame(&mut out, b'H', b"");
        stream.write_all(&out).await.unwrap();
        let tags = [
            read_message(&mut stream).await.0,
            read_message(&mut stream).await.0,
        ];
        assert_eq!(tags, [b'1', b't'], "ParseComplete, ParameterDescription");
        assert_eq!(
            read_message(&mut stream).await.0,
            b'T',
            "RowDescription, and no ReadyForQuery"
        );
        let mut copy = Vec::new();
        frame(
            &mut copy,
            b'Q',
            format!("COPY {table} FROM STDIN\0").as_bytes(),
        );
        stream.write_all(&copy).await.unwrap();
        let (tag, body) = read_message(&mut stream).await;
        assert_eq!(tag, b'G', "COPY starts: {}", String::from_utf8_lossy(&body));
        let mut data = Vec::new();
        frame(&mut data, b'd', format!("{round}\n").as_bytes());
        frame(&mut data, b'c', b"");
        stream.write_all(&data).await.unwrap();
        assert_eq!(read_message(&mut stream).await.0, b'C', "COPY 1");
        assert_eq!(read_message(&mut stream).await.0, b'Z');
        // The statement prepared wherever the read went runs anywhere.
        let mut run = Vec::new();
        frame(&mut run, b'B', format!("\0{name}\0\0\0\0\0\0\0").as_bytes());
        frame(&mut run, b'E', b"\0\0\0\0\0");
        frame(&mut run, b'S', b"");
        stream.write_all(&run).await.unwrap();
        until_ready(&mut stream, "the prepared read").await;
    }
    let n: i64 = setup
        .query_one(
            &format!("/* palisade: primary */ SELECT count(*) FROM {table}"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 4);
}

#[tokio::test]
async fn hint_comments_send_reads_to_the_primary_but_never_writes_to_a_replica() {
    let (_proxy, client) = routed("routing-hints").await;
    let table = unique("routing_hints");
    fresh_table(&client, &table, "x int").await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let sql = "/* palisade: primary */ SELECT inet_server_port()";
        seen.push(node_of(
            client
                .query_one(sql, &[])
                .await
                .unwrap()
                .get::<_, i32>(0)
                .into(),
        ));
        seen.extend(simple_nodes(&client, sql).await);
    }
    assert_all_primary(&seen, "reads hinted to the primary");

    let mut seen = Vec::new();
    for _ in 0..4 {
        let sql = format!(
            "/* palisade: replica */ INSERT INTO {table} VALUES (1) RETURNING inet_server_port()"
        );
        seen.push(node_of(
            client
                .query_one(&sql, &[])
                .await
                .unwrap()
                .get::<_, i32>(0)
                .into(),
        ));
        seen.extend(simple_nodes(&client, &sql).await);
    }
    assert_all_primary(&seen, "writes hinted to a replica");

    // Without a hint, the same session reads from the replicas.
    assert_spread_over_replicas(&reads(&client, 6).await, "unhinted reads");
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_read_write_transaction_runs_entirely_on_the_primary() {
    let (_proxy, mut client) = routed("routing-rw-txn").await;
    let table = unique("routing_rw_txn");
    fresh_table(&client, &table, "x int").await;
    for begin in [
        "BEGIN",
        "START TRANSACTION",
        "BEGIN ISOLATION LEVEL REPEATABLE READ",
    ] {
        client.batch_execute(begin).await.unwrap();
        let mut seen = reads(&client, 3).await;
        let row = client
            .query_one(
                &format!("INSERT INTO {table} VALUES (1) RETURNING inet_server_port()"),
                &[],
            )
            .await
            .unwrap();
        seen.push(node_of(row.get::<_, i32>(0).into()));
        seen.extend(reads(&client, 3).await);
        client.batch_execute("COMMIT").await.unwrap();
        assert_all_primary(&seen, begin);
    }
    // tokio-postgres's own transaction API, ending in ROLLBACK.
    let tx = client.transaction().await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let row = tx
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap();
        seen.push(node_of(row.get::<_, i32>(0).into()));
    }
    tx.rollback().await.unwrap();
    assert_all_primary(&seen, "client.transaction()");
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn read_only_transactions_run_entirely_on_one_replica() {
    let (_proxy, mut client) = routed("routing-ro-txn").await;
    let forms: [(&str, &str); 4] = [
        ("", "BEGIN READ ONLY"),
        ("", "START TRANSACTION READ ONLY"),
        ("", "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"),
        ("SET default_transaction_read_only = on", "BEGIN"),
    ];
    let mut chosen = Vec::new();
    for (setup, begin) in forms {
        for _ in 0..2 {
            if !setup.is_empty() {
                client.batch_execute(setup).await.unwrap();
            }
            client.batch_execute(begin).await.unwrap();
            let seen = reads(&client, 6).await;
            let read_only: String = client
                .query_one("SHOW transaction_read_only", &[])
                .await
                .unwrap()
                .get(0);
            client.batch_execute("COMMIT").await.unwrap();
            assert_eq!(read_only, "on", "{setup} {begin}");
            chosen.push(assert_one_replica(&seen, &format!("{setup} {begin}")));
            if !setup.is_empty() {
                client
                    .batch_execute("RESET default_transaction_read_only")
                    .await
                    .unwrap();
            }
        }
    }
    // tokio-postgres's builder sends START TRANSACTION READ ONLY.
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..6 {
        let row = tx
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap();
        seen.push(node_of(row.get::<_, i32>(0).into()));
    }
    tx.commit().await.unwrap();
    chosen.push(assert_one_replica(
        &seen,
        "build_transaction().read_only(true)",
    ));
    assert_spread_over_replicas(&chosen, "successive read-only transactions");
}

#[tokio::test]
async fn serializable_read_only_transactions_run_on_the_primary() {
    // Hot standbys refuse SERIALIZABLE (0A000): asyncpg's
    // transaction(isolation='serializable', readonly=True) must still work.
    let (_proxy, mut client) = routed("routing-serializable-ro").await;
    for begin in [
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
        "START TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE, DEFERRABLE",
    ] {
        client.batch_execute(begin).await.unwrap();
        let seen = reads(&client, 4).await;
        client.batch_execute("COMMIT").await.unwrap();
        assert_all_primary(&seen, begin);
    }
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::Serializable)
        .read_only(true)
        .start()
        .await
        .unwrap();
    let isolation: String = tx
        .query_one("SHOW transaction_isolation", &[])
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    assert_eq!(isolation, "serializable");
}

#[tokio::test]
async fn a_serializable_session_default_keeps_reads_on_the_primary() {
    // Hot standbys refuse every serializable transaction, implicit ones too.
    let (_proxy, client) = routed("routing-serializable-default").await;
    for set in [
        "SET default_transaction_isolation = serializable",
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    ] {
        client.batch_execute(set).await.unwrap();
        let mut seen = reads(&client, 4).await;
        client.batch_execute("BEGIN READ ONLY").await.unwrap();
        seen.extend(reads(&client, 2).await);
        client.batch_execute("COMMIT").await.unwrap();
        assert_all_primary(&seen, set);
        client
            .batch_execute("RESET default_transaction_isolation")
            .await
            .unwrap();
    }
    assert_spread_over_replicas(&reads(&client, 6).await, "reads after RESET");
}

/// The node, isolation, read-only and deferrable settings of the open
/// transaction, asked through the extended protocol.
async fn transaction_modes(client: &Client) -> (Node, String, String, String) {
    let row = client
        .query_one(
            "SELECT inet_server_port(), current_setting('transaction_isolation'), \
             current_setting('transaction_read_only'), current_setting('transaction_deferrable')",
            &[],
        )
        .await
        .unwrap();
    (
        node_of(row.get::<_, i32>(0).into()),
        row.get(1),
        row.get(2),
        row.get(3),
    )
}

#[tokio::test]
async fn a_read_only_transaction_made_serializable_after_begin_moves_to_the_primary() {
    // BEGIN READ ONLY goes to a replica, which refuses SERIALIZABLE (0A000)
    // and READ WRITE: while the transaction has run nothing but its BEGIN,
    // it begins again on the primary, with every mode it was given.
    let (_proxy, client) = routed("routing-ro-then-serializable").await;
    let cases = [
        (
            "BEGIN READ ONLY",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "serializable",
            "on",
            "off",
        ),
        (
            "START TRANSACTION READ ONLY, DEFERRABLE",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "serializable",
            "on",
            "on",
        ),
        (
            "BEGIN READ ONLY",
            "SET transaction_isolation = serializable",
            "serializable",
            "on",
            "off",
        ),
        (
            "BEGIN READ ONLY",
            "SET TRANSACTION READ WRITE",
            "read committed",
            "off",
            "off",
        ),
    ];
    for (begin, set, isolation, read_only, deferrable) in cases {
        for extended in [false, true] {
            client.batch_execute(begin).await.unwrap();
            let what = format!("{begin}; {set} (extended: {extended})");
            let done = if extended {
                client.execute(set, &[]).await.map(drop)
            } else {
                client.batch_execute(set).await
            };
            done.unwrap_or_else(|e| panic!("{what}: {e:?}"));
            let modes = transaction_modes(&client).await;
            let mut seen = reads(&client, 2).await;
            client.batch_execute("COMMIT").await.unwrap();
            seen.push(modes.0);
            assert_all_primary(&seen, &what);
            assert_eq!(
                (modes.1.as_str(), modes.2.as_str(), modes.3.as_str()),
                (isolation, read_only, deferrable),
                "{what}"
            );
        }
    }
    // A read-only transaction that stays read-only stays on its replica.
    client.batch_execute("BEGIN READ ONLY").await.unwrap();
    client
        .batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let seen = reads(&client, 3).await;
    client.batch_execute("COMMIT").await.unwrap();
    assert_one_replica(&seen, "made REPEATABLE READ after BEGIN READ ONLY");
    // Once it has run a query it cannot move, nor could it on PostgreSQL:
    // the same refusal as there (25001).
    client.batch_execute("BEGIN READ ONLY").await.unwrap();
    let node = served_by(&client).await;
    let err = client
        .batch_execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "25001", "after a query, on {node:?}");
    client.batch_execute("ROLLBACK").await.unwrap();
    assert!(node.is_replica(), "the transaction ran on {node:?}");
}

#[tokio::test]
async fn a_failed_transaction_stays_on_its_node_until_rollback() {
    let (_proxy, client) = routed("routing-failed-txn").await;
    for begin in ["BEGIN", "BEGIN READ ONLY"] {
        client.batch_execute(begin).await.unwrap();
        let node = served_by(&client).await;
        let err = client.query("SELECT 1/0", &[]).await.unwrap_err();
        assert_eq!(sqlstate(&err), "22012", "{begin}");
        // Had any of these gone to another node, it would have succeeded.
        for _ in 0..3 {
            let err = client
                .query("SELECT inet_server_port()", &[])
                .await
                .unwrap_err();
            assert_eq!(sqlstate(&err), "25P02", "{begin}, extended protocol");
            let err = client
                .simple_query("SELECT inet_server_port()")
                .await
                .unwrap_err();
            assert_eq!(sqlstate(&err), "25P02", "{begin}, simple protocol");
        }
        client.batch_execute("ROLLBACK").await.unwrap();
        let after = served_by(&client).await;
        if begin == "BEGIN" {
            assert_eq!(node, Node::Primary, "{begin}");
        } else {
            assert!(node.is_replica(), "{begin}: ran on {node:?}");
        }
        assert!(
            after.is_replica(),
            "after ROLLBACK, a read ran on {after:?}"
        );
    }
}

#[tokio::test]
async fn savepoints_and_rollback_to_work_in_both_kinds_of_transaction() {
    let (_proxy, client) = routed("routing-savepoints").await;
    let table = unique("routing_savepoints");
    fresh_table(&client, &table, "x int").await;
    client
        .batch_execute(&format!(
            "BEGIN; INSERT INTO {table} VALUES (1); SAVEPOINT a; INSERT INTO {table} VALUES (2)"
        ))
        .await
        .unwrap();
    let err = client.query("SELECT 1/0", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "22012");
    client
        .batch_execute("ROLLBACK TO SAVEPOINT a")
        .await
        .unwrap();
    let row = client
        .query_one(
            &format!("INSERT INTO {table} VALUES (3) RETURNING inet_server_port()"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(node_of(row.get::<_, i32>(0).into()), Node::Primary);
    client
        .batch_execute("RELEASE SAVEPOINT a; COMMIT")
        .await
        .unwrap();
    wait_replayed(shared_cluster()).await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let row = client
            .query_one(
                &format!("SELECT inet_server_port(), array_agg(x ORDER BY x)::text FROM {table}"),
                &[],
            )
            .await
            .unwrap();
        let node = node_of(row.get::<_, i32>(0).into());
        assert_eq!(row.get::<_, String>(1), "{1,3}", "rows seen on {node:?}");
        seen.push(node);
    }
    assert_spread_over_replicas(&seen, "reads after the commit");

    client.batch_execute("BEGIN READ ONLY").await.unwrap();
    let node = served_by(&client).await;
    client.batch_execute("SAVEPOINT s").await.unwrap();
    assert!(client.query("SELECT 1/0", &[]).await.is_err());
    client
        .batch_execute("ROLLBACK TO SAVEPOINT s")
        .await
        .unwrap();
    assert_eq!(served_by(&client).await, node, "after ROLLBACK TO");
    client.batch_execute("RELEASE SAVEPOINT s").await.unwrap();
    assert_eq!(served_by(&client).await, node, "after RELEASE");
    client.batch_execute("COMMIT").await.unwrap();
    assert!(
        node.is_replica(),
        "the read-only transaction ran on {node:?}"
    );
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_volatile_function_is_called_on_the_primary_and_a_stable_one_on_a_replica() {
    let (_proxy, client) = routed("routing-functions").await;
    let volatile = unique("routing_volatile");
    let stable = unique("routing_stable");
    client
        .batch_execute(&format!(
            "DROP FUNCTION IF EXISTS {volatile}(); DROP FUNCTION IF EXISTS {stable}(); \
             CREATE FUNCTION {volatile}() RETURNS int LANGUAGE sql VOLATILE AS 'select inet_server_port()'"
        ))
        .await
        .unwrap();
    // Straight after CREATE, before any replica could know the function.
    let call = format!("SELECT {volatile}()");
    let mut seen = simple_nodes(&client, &call).await;
    for _ in 0..3 {
        let row = client.query_one(call.as_str(), &[]).await.unwrap();
        seen.push(node_of(row.get::<_, i32>(0).into()));
        seen.extend(simple_nodes(&client, &call).await);
    }
    assert_all_primary(&seen, "a volatile function right after its creation");

    client
        .batch_execute(&format!(
            "CREATE FUNCTION {stable}() RETURNS int LANGUAGE sql STABLE AS 'select inet_server_port()'"
        ))
        .await
        .unwrap();
    wait_replayed(shared_cluster()).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.extend(simple_nodes(&client, &format!("SELECT {stable}()")).await);
    }
    assert_spread_over_replicas(&seen, "a stable function, once replicated");
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.extend(simple_nodes(&client, &call).await);
    }
    assert_all_primary(&seen, "a volatile function, once replicated");
    client
        .batch_execute(&format!(
            "DROP FUNCTION {volatile}(); DROP FUNCTION {stable}()"
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn every_set_form_follows_the_client_to_every_node() {
    let (_proxy, client) = routed("routing-set-forms").await;
    client
        .batch_execute(
            "SET TIME ZONE 'America/Sao_Paulo'; SET XML OPTION DOCUMENT; \
             SET datestyle TO postgres, dmy; SET myapp.tenant = 7; \
             SET plpgsql.extra_warnings TO 'shadowed_variables'; SET ROLE pg_read_all_data",
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..12 {
        let messages = client
            .simple_query(
                "SELECT inet_server_port(), current_setting('TimeZone'), \
                 current_setting('xmloption'), current_setting('DateStyle'), \
                 current_setting('myapp.tenant'), current_setting('plpgsql.extra_warnings'), \
                 current_user::text",
            )
            .await
            .unwrap();
        let row = messages
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .expect("a row");
        let node = node_of(row.get(0).unwrap().parse().unwrap());
        let values: Vec<&str> = (1..7).map(|i| row.get(i).unwrap()).collect();
        assert_eq!(
            values,
            [
                "America/Sao_Paulo",
                "document",
                "Postgres, DMY",
                "7",
                "shadowed_variables",
                "pg_read_all_data"
            ],
            "settings seen on {node:?}"
        );
        seen.push(node);
    }
    assert_spread_over_replicas(&seen, "reads after every SET form");
    client.batch_execute("RESET ALL; RESET ROLE").await.unwrap();
}

#[tokio::test]
async fn set_config_follows_the_client_like_set() {
    // pg_dump's own `SELECT pg_catalog.set_config('search_path', '', false)`
    // among them: given again through set_config, so an empty value and a
    // list stay what they are (SET would quote them).
    let (_proxy, client) = routed("routing-set-config").await;
    let calls = [
        ("SELECT pg_catalog.set_config('search_path', '', false)", ""),
        ("SELECT set_config('work_mem', '7MB', false)", "7MB"),
        (
            "SELECT set_config('myapp.note', 'it''s a \\ b', false)",
            "it's a \\ b",
        ),
        (
            "SELECT set_config('DateStyle', 'SQL, DMY', false) AS v",
            "SQL, DMY",
        ),
    ];
    for (sql, value) in calls {
        // It returns its row, wherever it ran.
        let returned = first_column(&client.simple_query(sql).await.unwrap());
        assert_eq!(returned, [value], "{sql}");
    }
    let mut seen = Vec::new();
    for _ in 0..12 {
        let row = client
            .query_one(
                "SELECT inet_server_port(), current_setting('search_path'), \
                 current_setting('work_mem'), current_setting('myapp.note'), \
                 current_setting('DateStyle')",
                &[],
            )
            .await
            .unwrap();
        let node = node_of(row.get::<_, i32>(0).into());
        let values: Vec<String> = (1..5).map(|i| row.get(i)).collect();
        assert_eq!(
            values,
            ["", "7MB", "it's a \\ b", "SQL, DMY"],
            "on {node:?}"
        );
        seen.push(node);
    }
    assert_spread_over_replicas(&seen, "reads after set_config()");
    // is_local = true ends with its transaction, like SET LOCAL.
    client
        .batch_execute("BEGIN; SELECT set_config('work_mem', '9MB', true); COMMIT")
        .await
        .unwrap();
    for (node, value) in work_mem_reads(&client, 4).await {
        assert_eq!(value, "7MB", "after a local set_config, on {node:?}");
    }
    client.batch_execute("RESET ALL").await.unwrap();
    // Computed arguments cannot be given again: the session stays put.
    client
        .query("SELECT set_config($1, $2, false)", &[&"work_mem", &"5MB"])
        .await
        .unwrap();
    let pinned = work_mem_reads(&client, 4).await;
    for (node, value) in &pinned {
        assert_eq!((*node, value.as_str()), (Node::Primary, "5MB"), "pinned");
    }
}

#[tokio::test]
async fn set_from_current_pins_the_session_to_the_primary() {
    // The value it keeps is the node's own, which the proxy never sees.
    let (_proxy, client) = routed("routing-set-from-current").await;
    assert_spread_over_replicas(&reads(&client, 4).await, "reads before");
    client
        .batch_execute("SET work_mem FROM CURRENT")
        .await
        .unwrap();
    assert_all_primary(&reads(&client, 6).await, "reads after SET FROM CURRENT");
    client.batch_execute("DISCARD ALL").await.unwrap();
    assert_spread_over_replicas(&reads(&client, 4).await, "reads after DISCARD ALL");
}

#[tokio::test]
async fn session_settings_follow_the_client_to_every_node() {
    let (_proxy, client) = routed("routing-settings").await;
    client
        .batch_execute(
            "SET application_name = 'routing-settings-x'; SET search_path = routing_sp, public; \
             SET TimeZone = 'Asia/Tokyo'; SET work_mem = '3MB'",
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..12 {
        let row = client
            .query_one(
                "SELECT inet_server_port(), current_setting('application_name'), \
                 current_setting('search_path'), current_setting('TimeZone'), \
                 current_setting('work_mem'), '2000-01-01 00:00:00+00'::timestamptz::text",
                &[],
            )
            .await
            .unwrap();
        let node = node_of(row.get::<_, i32>(0).into());
        let values: Vec<String> = (1..6).map(|i| row.get(i)).collect();
        assert_eq!(
            values,
            [
                "routing-settings-x",
                "routing_sp, public",
                "Asia/Tokyo",
                "3MB",
                "2000-01-01 09:00:00+09"
            ],
            "settings seen on {node:?}"
        );
        seen.push(node);
    }
    for _ in 0..6 {
        let messages = client
            .simple_query("SHOW work_mem; SELECT inet_server_port()")
            .await
            .unwrap();
        let values = first_column(&messages);
        assert_eq!(values[0], "3MB", "SHOW work_mem");
        seen.push(node_of(values[1].parse().unwrap()));
    }
    assert_spread_over_replicas(&seen, "reads after SET");

    client.batch_execute("RESET work_mem").await.unwrap();
    let default = server_default("work_mem").await;
    assert_everywhere(&work_mem_reads(&client, 12).await, &default, "after RESET");
    client.batch_execute("SET work_mem = '3MB'").await.unwrap();
    client.batch_execute("RESET ALL").await.unwrap();
    assert_everywhere(
        &work_mem_reads(&client, 12).await,
        &default,
        "after RESET ALL",
    );
}

#[tokio::test]
async fn set_local_and_rolled_back_sets_do_not_outlive_their_transaction() {
    let (_proxy, client) = routed("routing-set-txn").await;
    let default = server_default("work_mem").await;
    let cases: [(&str, &str, &str); 7] = [
        (
            "SET LOCAL, committed",
            "BEGIN; SET LOCAL work_mem = '5MB'",
            "COMMIT",
        ),
        (
            "SET, rolled back",
            "BEGIN; SET work_mem = '6MB'",
            "ROLLBACK",
        ),
        (
            "SET, rolled back to a savepoint",
            "BEGIN; SAVEPOINT a; SET work_mem = '9MB'",
            "ROLLBACK TO SAVEPOINT a; COMMIT",
        ),
        (
            "SET LOCAL in a read-only transaction",
            "BEGIN READ ONLY; SET LOCAL work_mem = '5MB'",
            "COMMIT",
        ),
        (
            "SET in a read-only transaction, rolled back",
            "BEGIN READ ONLY; SET work_mem = '6MB'",
            "ROLLBACK",
        ),
        ("SET, committed", "BEGIN; SET work_mem = '6MB'", "COMMIT"),
        (
            "SET in a read-only transaction, committed",
            "BEGIN READ ONLY; SET work_mem = '2MB'",
            "COMMIT",
        ),
    ];
    let mut current = default.clone();
    for (what, open, close) in cases {
        client.batch_execute(open).await.unwrap();
        let inside: String = client.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
        assert_ne!(inside, current, "{what}: the SET took effect inside");
        client.batch_execute(close).await.unwrap();
        if close == "COMMIT" && !what.contains("LOCAL") {
            current = inside;
        }
        assert_everywhere(&work_mem_reads(&client, 8).await, &current, what);
    }

    // COMMIT of a failed transaction is a ROLLBACK: its SET is undone too.
    client.batch_execute("RESET work_mem").await.unwrap();
    client
        .batch_execute("BEGIN; SET work_mem = '6MB'")
        .await
        .unwrap();
    assert!(client.query("SELECT 1/0", &[]).await.is_err());
    client.batch_execute("COMMIT").await.unwrap();
    assert_everywhere(
        &work_mem_reads(&client, 8).await,
        &default,
        "SET in a transaction that failed, then COMMIT",
    );
}

#[tokio::test]
async fn protocol_prepared_statements_run_on_every_replica() {
    let (_proxy, client) = routed("routing-prepared").await;
    let port = client.prepare("SELECT inet_server_port()").await.unwrap();
    let plus = client
        .prepare("SELECT $1::int4 + 1, inet_server_port()")
        .await
        .unwrap();
    let mut seen = Vec::new();
    for i in 0..24 {
        let row = client.query_one(&port, &[]).await.unwrap();
        seen.push(node_of(row.get::<_, i32>(0).into()));
        let row = client.query_one(&plus, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
        seen.push(node_of(row.get::<_, i32>(1).into()));
    }
    assert_spread_over_replicas(&seen, "executions of prepared statements");
}

#[tokio::test]
async fn sql_prepared_statements_follow_the_client_and_deallocate_like_postgresql() {
    let (_proxy, client) = routed("routing-sql-prepare").await;
    client
        .batch_execute(
            "PREPARE routing_p AS SELECT inet_server_port(); \
             PREPARE routing_q(int) AS SELECT inet_server_port(), $1 + 1",
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..12 {
        seen.extend(simple_nodes(&client, "EXECUTE routing_p").await);
        let messages = client.simple_query("EXECUTE routing_q(41)").await.unwrap();
        let row = messages
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .expect("a row");
        assert_eq!(row.get(1), Some("42"));
        seen.push(node_of(row.get(0).unwrap().parse().unwrap()));
    }
    assert_spread_over_replicas(&seen, "EXECUTE of SQL prepared statements");

    client.batch_execute("DEALLOCATE routing_p").await.unwrap();
    for _ in 0..4 {
        let err = client.batch_execute("EXECUTE routing_p").await.unwrap_err();
        assert_eq!(sqlstate(&err), "26000", "EXECUTE after DEALLOCATE");
    }
    let still: Vec<String> =
        first_column(&client.simple_query("EXECUTE routing_q(1)").await.unwrap());
    assert_eq!(still.len(), 1, "the other statement is still prepared");
    client.batch_execute("DEALLOCATE ALL").await.unwrap();
    for _ in 0..4 {
        let err = client
            .batch_execute("EXECUTE routing_q(1)")
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&err), "26000", "EXECUTE after DEALLOCATE ALL");
    }
}

#[tokio::test]
async fn an_unnamed_statement_described_in_one_batch_runs_in_the_next() {
    // psql's \gdesc and \bind: Parse and Describe of the unnamed
    // statement, each batch ended by Sync, then Bind and Execute of it in a
    // later one, which may run on another node.
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| c.users[0].auth = AuthMethod::Trust).await;
    let mut stream = raw_client(&proxy, "routing-unnamed").await;
    let mut seen = Vec::new();
    for round in 0..8 {
        let mut describe = Vec::new();
        let sql = format!("SELECT inet_server_port(), $1::int + {round}");
        frame(&mut describe, b'P', format!("\0{sql}\0\0\0").as_bytes());
        frame(&mut describe, b'S', b"");
        frame(&mut describe, b'D', b"S\0");
        frame(&mut describe, b'S', b"");
        stream.write_all(&describe).await.unwrap();
        let mut tags = Vec::new();
        for _ in 0..5 {
            tags.push(read_message(&mut stream).await.0);
        }
        assert_eq!(tags, b"1ZtTZ", "ParseComplete, then the description");
        // Reads of a named statement in between take read tickets: the
        // execution lands on one replica or the other.
        for read in 0..=round % 2 {
            let mut between = Vec::new();
            let name = format!("routing_between_{round}_{read}");
            let body = format!("{name}\0SELECT inet_server_port()\0\0\0");
            frame(&mut between, b'P', body.as_bytes());
            let bind = format!("\0{name}\0\0\0\0\0\0\0");
            frame(&mut between, b'B', bind.as_bytes());
            frame(&mut between, b'E', b"\0\0\0\0\0");
            frame(&mut between, b'S', b"");
            stream.write_all(&between).await.unwrap();
            until_ready(&mut stream, "a read in between").await;
        }
        let mut run = Vec::new();
        // Bind "" to "", one text parameter "1", text results.
        frame(&mut run, b'B', b"\0\0\0\0\0\x01\0\0\0\x011\0\0");
        frame(&mut run, b'E', b"\0\0\0\0\0");
        frame(&mut run, b'S', b"");
        stream.write_all(&run).await.unwrap();
        let (tag, body) = read_message(&mut stream).await;
        assert_eq!(
            tag,
            b'2',
            "BindComplete: {}",
            String::from_utf8_lossy(&body)
        );
        let (tag, row) = read_message(&mut stream).await;
        assert_eq!(tag, b'D', "a row: {}", String::from_utf8_lossy(&row));
        let mut columns = Vec::new();
        let mut at = 2;
        for _ in 0..2 {
            let n = i32::from_be_bytes(row[at..at + 4].try_into().unwrap()) as usize;
            columns.push(String::from_utf8_lossy(&row[at + 4..at + 4 + n]).into_owned());
            at += 4 + n;
        }
        assert_eq!(columns[1], (1 + round).to_string());
        seen.push(node_of(columns[0].parse().unwrap()));
        until_ready(&mut stream, "the unnamed statement").await;
    }
    assert_spread_over_replicas(&seen, "executions of the described statement");
}

#[tokio::test]
async fn views_of_the_session_are_answered_where_its_state_is() {
    // A replica would show its own prepared statements, locks and
    // activity; the primary is given the session's statements first.
    let (_proxy, client) = routed("routing-session-views").await;
    client
        .batch_execute("PREPARE routing_view_p AS SELECT 1")
        .await
        .unwrap();
    // Prepared with the protocol by a read: on a replica.
    let text = "SELECT inet_server_port() AS routing_view_q";
    let protocol = client.prepare(text).await.unwrap();
    client.query(&protocol, &[]).await.unwrap();
    for _ in 0..4 {
        let listed: Vec<(String, String)> = client
            .query(
                "SELECT name, statement, inet_server_port() FROM pg_prepared_statements",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| {
                assert_eq!(node_of(row.get::<_, i32>(2).into()), Node::Primary);
                (row.get(0), row.get(1))
            })
            .collect();
        assert!(
            listed.iter().any(|(name, _)| name == "routing_view_p"),
            "SQL PREPARE listed: {listed:?}"
        );
        assert!(
            listed.iter().any(|(_, statement)| statement == text),
            "the protocol statement listed: {listed:?}"
        );
    }
    for view in [
        "pg_cursors",
        "pg_locks",
        "pg_stat_activity",
        "pg_catalog.pg_stat_database",
        "pg_statio_user_tables",
        "pg_prepared_xacts",
    ] {
        let sql = format!("SELECT inet_server_port() FROM (SELECT 1 FROM {view} LIMIT 0) v RIGHT JOIN (SELECT 1) o ON true");
        let mut seen = simple_nodes(&client, &sql).await;
        seen.extend(simple_nodes(&client, &sql).await);
        assert_all_primary(&seen, view);
    }
    // The session's own activity is there.
    let mine: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'routing-session-views'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(mine >= 1, "the session's backend on the primary");
    // In a read-only transaction on a replica, its locks are the replica's.
    client.batch_execute("BEGIN READ ONLY").await.unwrap();
    let node = served_by(&client).await;
    let locks: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    client.batch_execute("COMMIT").await.unwrap();
    assert!(node.is_replica() && locks >= 1, "{locks} locks on {node:?}");
}

#[tokio::test]
async fn prepared_writes_run_on_the_primary() {
    let (_proxy, client) = routed("routing-prepared-writes").await;
    let table = unique("routing_prepared_writes");
    fresh_table(&client, &table, "x int").await;
    let insert = client
        .prepare(&format!(
            "INSERT INTO {table} VALUES ($1) RETURNING inet_server_port()"
        ))
        .await
        .unwrap();
    let mut seen = Vec::new();
    for i in 0..6 {
        let row = client.query_one(&insert, &[&i]).await.unwrap();
        seen.push(node_of(row.get::<_, i32>(0).into()));
    }
    client
        .batch_execute(&format!(
            "PREPARE routing_ins(int) AS INSERT INTO {table} VALUES ($1) RETURNING inet_server_port()"
        ))
        .await
        .unwrap();
    for i in 0..4 {
        seen.extend(simple_nodes(&client, &format!("EXECUTE routing_ins({i})")).await);
    }
    assert_all_primary(&seen, "prepared INSERTs");
    let primary = direct(shared_cluster().primary()).await;
    let n: i64 = primary
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 10);
    client
        .batch_execute(&format!("DEALLOCATE routing_ins; DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn listen_pins_the_session_to_the_primary_and_notifications_arrive() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |_| {}).await;
    let (listener, mut messages) = connect_with(&app_url(&proxy, cluster, "routing-listen"))
        .await
        .unwrap();
    assert_spread_over_replicas(&reads(&listener, 4).await, "reads before LISTEN");
    let channel = unique("routing_channel");
    listener
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .unwrap();
    assert_all_primary(&reads(&listener, 6).await, "reads after LISTEN");

    let notifier = client(&proxy, shared_cluster(), "routing-notify").await;
    notifier
        .batch_execute(&format!("NOTIFY {channel}, 'pinned'"))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(TIMEOUT, messages.recv()).await {
            Ok(Some(AsyncMessage::Notification(n))) => {
                assert_eq!(n.channel(), channel);
                assert_eq!(n.payload(), "pinned");
                break;
            }
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the listener's connection closed"),
            Err(_) => panic!("the notification did not arrive"),
        }
    }
}

#[tokio::test]
async fn a_temporary_table_pins_the_session_to_the_primary() {
    let (_proxy, client) = routed("routing-temp").await;
    assert_spread_over_replicas(&reads(&client, 4).await, "reads before CREATE TEMP TABLE");
    client
        .batch_execute(
            "CREATE TEMP TABLE routing_tmp(x int); INSERT INTO routing_tmp VALUES (1), (2), (3)",
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..6 {
        let row = client
            .query_one("SELECT inet_server_port(), count(*) FROM routing_tmp", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(1), 3);
        seen.push(node_of(row.get::<_, i32>(0).into()));
    }
    seen.extend(reads(&client, 4).await);
    assert_all_primary(&seen, "reads after CREATE TEMP TABLE");
}

#[tokio::test]
async fn an_advisory_lock_pins_the_session_until_unlock_all() {
    let (_proxy, client) = routed("routing-advisory").await;
    let key = 710_000 + i64::from(std::process::id() % 100_000);
    let primary = direct(shared_cluster().primary()).await;
    let held = format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = {key} AND granted"
    );
    assert_spread_over_replicas(&reads(&client, 4).await, "reads before the lock");
    client
        .query_one("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .unwrap();
    let n: i64 = primary.query_one(&held, &[]).await.unwrap().get(0);
    assert_eq!(n, 1, "the lock is held on the primary");
    assert_all_primary(&reads(&client, 6).await, "reads while the lock is held");
    client
        .query_one("SELECT pg_advisory_unlock_all()", &[])
        .await
        .unwrap();
    let n: i64 = primary.query_one(&held, &[]).await.unwrap().get(0);
    assert_eq!(n, 0, "the lock is released");
    assert_spread_over_replicas(&reads(&client, 6).await, "reads after unlock_all");
}

#[tokio::test]
async fn a_holdable_cursor_survives_commit_and_pins_the_session() {
    let (_proxy, client) = routed("routing-cursor").await;
    assert_spread_over_replicas(&reads(&client, 4).await, "reads before DECLARE");
    client
        .batch_execute(
            "BEGIN; DECLARE routing_c CURSOR WITH HOLD FOR \
             SELECT inet_server_port(), g FROM generate_series(1, 5) g; COMMIT",
        )
        .await
        .unwrap();
    let fetch = |sql: &'static str| {
        let client = &client;
        async move {
            let messages = client.simple_query(sql).await.unwrap();
            messages
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                        node_of(r.get(0).unwrap().parse().unwrap()),
                        r.get(1).unwrap().to_owned(),
                    )),
                    _ => None,
                })
                .collect::<Vec<_>>()
        }
    };
    let first = fetch("FETCH 2 FROM routing_c").await;
    assert_all_primary(&reads(&client, 4).await, "reads between FETCHes");
    let rest = fetch("FETCH ALL FROM routing_c").await;
    let values: Vec<&str> = first.iter().chain(&rest).map(|(_, v)| v.as_str()).collect();
    assert_eq!(values, ["1", "2", "3", "4", "5"]);
    let nodes: Vec<Node> = first.iter().chain(&rest).map(|(n, _)| *n).collect();
    assert_all_primary(&nodes, "the cursor's rows");
    client.batch_execute("CLOSE routing_c").await.unwrap();
}

#[tokio::test]
async fn set_palisade_pin_keeps_the_session_on_the_primary() {
    let (_proxy, client) = routed("routing-pin").await;
    assert_spread_over_replicas(&reads(&client, 4).await, "reads before the pin");
    client.batch_execute("SET palisade.pin = on").await.unwrap();
    let mut seen = reads(&client, 6).await;
    seen.extend(simple_nodes(&client, "SHOW port").await);
    assert_all_primary(&seen, "reads after SET palisade.pin = on");
}

#[tokio::test]
async fn session_state_does_not_leak_between_clients() {
    let cluster = shared_cluster();
    // One server connection per node: every client runs on the very
    // connections the others used, so whatever leaked would show.
    let proxy = start_proxy(cluster, |c| {
        c.pool.max_server_connections = 1;
        c.pool.acquire_timeout_ms = 30_000;
    })
    .await;
    let default = server_default("work_mem").await;
    let a = client(&proxy, shared_cluster(), "routing-isolation").await;
    a.batch_execute("SET work_mem = '7MB'").await.unwrap();
    let seen_a = work_mem_reads(&a, 8).await;
    let b = client(&proxy, shared_cluster(), "routing-isolation").await;
    let seen_b = work_mem_reads(&b, 8).await;
    b.batch_execute("SET work_mem = '5MB'").await.unwrap();
    let again_a = work_mem_reads(&a, 8).await;
    drop(a);
    drop(b);
    // The newcomer gets the server connections A and B left behind.
    let c = client(&proxy, shared_cluster(), "routing-isolation").await;
    let seen_c = work_mem_reads(&c, 8).await;
    for (what, seen, expected) in [
        ("A after its SET", &seen_a, "7MB"),
        ("B, while A is connected", &seen_b, default.as_str()),
        ("A, after B's SET", &again_a, "7MB"),
        ("C, after A and B left", &seen_c, default.as_str()),
    ] {
        for (node, value) in seen.iter() {
            assert_eq!(value, expected, "{what}: work_mem on {node:?}");
        }
    }
    for (what, seen) in [("A", &seen_a), ("B", &seen_b), ("C", &seen_c)] {
        let nodes: Vec<Node> = seen.iter().map(|(n, _)| *n).collect();
        assert_spread_over_replicas(&nodes, what);
    }
}

#[tokio::test]
async fn reads_avoid_an_unhealthy_replica() {
    let cluster = shared_cluster();
    let relay = FaultyRelay::start(
        format!("127.0.0.1:{}", cluster.replicas()[0].port)
            .parse()
            .unwrap(),
    );
    // The default probe timeout (1 s), not a shorter one: on a loaded
    // machine a healthy node can miss a 200 ms probe twice in a row, and
    // this test is about the node that is really cut off.
    let proxy = start_proxy(cluster, |c| {
        c.nodes[1].port = relay.addr().port();
        c.monitor.health_threshold = 2;
    })
    .await;
    let healthy = |want: bool| {
        let proxy = &proxy;
        async move { proxy.topology().nodes.iter().skip(1).all(|n| n.healthy) == want }
    };
    let health_limit = Duration::from_secs(30);
    wait_until("both replicas healthy", health_limit, || healthy(true)).await;
    let client = client(&proxy, shared_cluster(), "routing-unhealthy").await;
    assert_spread_over_replicas(&reads(&client, 6).await, "reads with both replicas up");

    relay.block();
    wait_until("replica 1 to be marked unhealthy", health_limit, || async {
        !proxy.topology().nodes[1].healthy
    })
    .await;
    let seen = tokio::time::timeout(TIMEOUT, reads(&client, 8))
        .await
        .expect("reads avoid the blocked replica instead of hanging");
    assert!(
        seen.iter().all(|n| *n == Node::Replica(2)),
        "with replica 1 unhealthy: {:?}",
        tally(&seen)
    );

    relay.heal();
    wait_until("replica 1 healthy again", health_limit, || healthy(true)).await;
    assert_spread_over_replicas(&reads(&client, 6).await, "reads after the replica is back");
}

#[tokio::test]
async fn unparsable_statements_run_on_the_primary_and_are_counted() {
    let (proxy, client) = routed("routing-unparsable").await;
    let table = unique("routing_unparsable");
    let before = proxy.unparsable_statements();
    // sqlparser cannot parse DO; on a replica the CREATE inside would fail.
    client
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE TABLE {table}(port int); \
             INSERT INTO {table} VALUES (inet_server_port()); END $$"
        ))
        .await
        .expect("DO ran on the primary");
    assert!(
        proxy.unparsable_statements() > before,
        "the unparsable statement was counted"
    );
    let port: i32 = client
        .query_one(
            &format!("/* palisade: primary */ SELECT port FROM {table}"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(node_of(port.into()), Node::Primary);
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

//! The faithful relay, end to end: tokio-postgres through Palisade to a real
//! cluster, one path of the protocol per test.

use std::time::{Duration, Instant};

use crate::support::harness::{connect, proxied, sqlstate, start_proxy};
use crate::support::nodes::{direct, unique, wait_running, wait_until};
use crate::support::shared_cluster;
use futures_util::SinkExt;
use tokio_postgres::{AsyncMessage, SimpleQueryMessage};

#[tokio::test]
async fn multi_statement_simple_query_returns_every_result() {
    let (_proxy, client) = proxied().await;
    let messages = client
        .simple_query("SELECT 1 AS a; SELECT 'two' AS b, 3 AS c; CREATE TEMP TABLE t(x int); INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();
    let rows: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.columns().len()),
            _ => None,
        })
        .collect();
    assert_eq!(rows, vec![1, 2]);
    let completions: Vec<u64> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(completions, vec![1, 1, 0, 2]);
}

#[tokio::test]
async fn extended_protocol_with_binary_parameters_and_results() {
    let (_proxy, client) = proxied().await;
    // tokio-postgres sends parameters and receives results in binary format.
    let blob: Vec<u8> = (0..=255).collect();
    let row = client
        .query_one(
            "SELECT $1::int8 * 2, $2::text || '!', $3::bytea, $4::float8, $5::bool, $6::int4[]",
            &[&21i64, &"hi", &blob, &1.5f64, &true, &vec![1i32, 2, 3]],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 42);
    assert_eq!(row.get::<_, String>(1), "hi!");
    assert_eq!(row.get::<_, Vec<u8>>(2), blob);
    assert_eq!(row.get::<_, f64>(3), 1.5);
    assert!(row.get::<_, bool>(4));
    assert_eq!(row.get::<_, Vec<i32>>(5), vec![1, 2, 3]);

    // A named statement, executed many times, and the unnamed one.
    let named = client.prepare("SELECT $1::int4 + 1").await.unwrap();
    for i in 0..20 {
        let r = client.query_one(&named, &[&i]).await.unwrap();
        assert_eq!(r.get::<_, i32>(0), i + 1);
    }
    let typed = client
        .query_typed(
            "SELECT $1::text",
            &[(&"unnamed", tokio_postgres::types::Type::TEXT)],
        )
        .await
        .unwrap();
    assert_eq!(typed[0].get::<_, String>(0), "unnamed");
}

#[tokio::test]
async fn pipelined_queries_all_complete_in_order() {
    let (_proxy, client) = proxied().await;
    let statement = client
        .prepare("SELECT $1::int4, repeat('x', $1)")
        .await
        .unwrap();
    // tokio-postgres pipelines requests issued concurrently on one connection.
    let futures: Vec<_> = (0..200)
        .map(|i: i32| {
            let client = &client;
            let statement = &statement;
            async move { client.query_one(statement, &[&(i * 50)]).await }
        })
        .collect();
    let results = futures_util::future::join_all(futures).await;
    for (i, r) in results.into_iter().enumerate() {
        let row = r.unwrap();
        assert_eq!(row.get::<_, i32>(0), i as i32 * 50);
        assert_eq!(row.get::<_, String>(1).len(), i * 50);
    }
}

#[tokio::test]
async fn portal_suspended_with_row_limits() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |_| {}).await;
    let (mut client, _) = connect(&proxy, cluster).await;
    let tx = client.transaction().await.unwrap();
    let portal = tx.bind("SELECT generate_series(1, 10)", &[]).await.unwrap();
    let mut seen = Vec::new();
    loop {
        let rows = tx.query_portal(&portal, 3).await.unwrap();
        if rows.is_empty() {
            break;
        }
        assert!(rows.len() <= 3);
        seen.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
    }
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn copy_in_and_copy_out() {
    let (_proxy, client) = proxied().await;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS relay_copy; CREATE TABLE relay_copy(id int, note text)",
        )
        .await
        .unwrap();
    let sink = client.copy_in("COPY relay_copy FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..5000 {
        data.push_str(&format!("{i}\tnote {i}\n"));
    }
    sink.send(bytes::Bytes::from(data.clone())).await.unwrap();
    let copied = sink.finish().await.unwrap();
    assert_eq!(copied, 5000);

    let stream = client.copy_out("COPY relay_copy TO STDOUT").await.unwrap();
    let chunks: Vec<_> = futures_util::StreamExt::collect::<Vec<_>>(stream).await;
    let out: Vec<u8> = chunks
        .into_iter()
        .flat_map(|c| c.unwrap().to_vec())
        .collect();
    assert_eq!(String::from_utf8(out).unwrap(), data);

    // A failed COPY leaves the session usable.
    let sink = client.copy_in("COPY relay_copy FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"not-a-number\tx\n"))
        .await
        .unwrap();
    let err = sink.finish().await.unwrap_err();
    assert_eq!(sqlstate(&err), "22P02");
    let n: i64 = client
        .query_one("SELECT count(*) FROM relay_copy", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5000);
}

#[tokio::test]
async fn notices_are_relayed() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |_| {}).await;
    let (client, mut messages) = connect(&proxy, cluster).await;
    client
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$")
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), messages.recv())
        .await
        .unwrap()
        .unwrap();
    match m {
        AsyncMessage::Notice(n) => assert_eq!(n.message(), "hello from plpgsql"),
        other => panic!("expected a notice, got {other:?}"),
    }
}

#[tokio::test]
async fn listen_notify_between_sessions() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |_| {}).await;
    let (listener, mut messages) = connect(&proxy, cluster).await;
    let (notifier, _) = connect(&proxy, cluster).await;
    listener
        .batch_execute("LISTEN relay_channel")
        .await
        .unwrap();
    notifier
        .batch_execute("NOTIFY relay_channel, 'payload-1'")
        .await
        .unwrap();
    notifier
        .query("SELECT pg_notify('relay_channel', 'payload-2')", &[])
        .await
        .unwrap();
    let mut payloads = Vec::new();
    while payloads.len() < 2 {
        // The listener is idle: the notification must arrive without it sending anything.
        match tokio::time::timeout(Duration::from_secs(5), messages.recv()).await {
            Ok(Some(AsyncMessage::Notification(n))) => {
                assert_eq!(n.channel(), "relay_channel");
                payloads.push(n.payload().to_owned());
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => panic!("notification not delivered; got {payloads:?}"),
        }
    }
    assert_eq!(payloads, ["payload-1", "payload-2"]);
}

#[tokio::test]
async fn errors_keep_all_fields_and_leave_the_session_usable() {
    let (_proxy, client) = proxied().await;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS relay_err; CREATE TABLE relay_err(id int CONSTRAINT relay_err_pk PRIMARY KEY); INSERT INTO relay_err VALUES (1)",
        )
        .await
        .unwrap();
    let err = client
        .execute("INSERT INTO relay_err VALUES (1)", &[])
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "23505");
    assert_eq!(db.constraint(), Some("relay_err_pk"));
    assert_eq!(db.table(), Some("relay_err"));
    assert_eq!(db.schema(), Some("public"));
    assert!(
        db.detail().unwrap_or_default().contains("(id)=(1)"),
        "{db:?}"
    );

    let err = client.query("SELECT 1/0", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "22012");
    let err = client.batch_execute("SELEC 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "42601");
    assert!(err.as_db_error().unwrap().position().is_some());

    // Inside a transaction the error aborts it until ROLLBACK, as on PostgreSQL.
    client.batch_execute("BEGIN").await.unwrap();
    assert!(client.batch_execute("SELECT 1/0").await.is_err());
    let err = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "25P02");
    client.batch_execute("ROLLBACK").await.unwrap();
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn empty_queries_are_answered() {
    let (_proxy, client) = proxied().await;
    let messages = client.simple_query("").await.unwrap();
    assert!(messages
        .iter()
        .all(|m| !matches!(m, SimpleQueryMessage::Row(_))));
    client.batch_execute(";").await.unwrap();
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn startup_parameters_reach_the_server() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |_| {}).await;
    let url = format!(
        "{} application_name=relay-test options='-c search_path=relay_path,public -c work_mem=7MB'",
        crate::support::harness::url(&proxy, cluster.superuser(), cluster.password())
    );
    let (client, _) = crate::support::harness::connect_with(&url).await.unwrap();
    let row = client
        .query_one(
            "SELECT current_setting('application_name'), current_setting('search_path'), current_setting('work_mem')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "relay-test");
    assert_eq!(row.get::<_, String>(1), "relay_path,public");
    assert_eq!(row.get::<_, String>(2), "7MB");
}

#[tokio::test]
async fn cancel_stops_a_running_query_promptly() {
    let (_proxy, client) = proxied().await;
    let token = client.cancel_token();
    let marker = unique("relay_cancel");
    let sql = format!("SELECT pg_sleep(30) AS {marker}");
    let client = std::sync::Arc::new(client);
    let running = {
        let client = client.clone();
        tokio::spawn(async move { client.batch_execute(&sql).await })
    };
    wait_running(shared_cluster(), &marker).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    // Well before the sleep's 30 s: the cancel, not the sleep, ended it.
    let err = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the cancel stops the query")
        .unwrap()
        .unwrap_err();
    assert_eq!(sqlstate(&err), "57014");
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "the session survives a cancel");
}

/// A cancel that comes while the session waits for a server connection is
/// not dropped: it reaches that connection once the query has been sent.
#[tokio::test]
async fn a_cancel_while_waiting_for_a_connection_still_stops_the_query() {
    let cluster = shared_cluster();
    // One connection to one replica: a read waits while another client holds it.
    let proxy = start_proxy(cluster, |c| {
        c.routing.load_balance = palisade::config::LoadBalance::Weighted;
        c.nodes[2].weight = 0;
        c.pool.max_server_connections = 1;
        c.pool.acquire_timeout_ms = 30_000;
    })
    .await;
    let (holder, _) = connect(&proxy, cluster).await;
    let (client, _) = connect(&proxy, cluster).await;
    holder.batch_execute("BEGIN READ ONLY").await.unwrap();
    let in_recovery: bool = holder
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery, "the holder's transaction runs on the replica");

    let token = client.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move {
        let result = client.batch_execute("SELECT pg_sleep(30)").await;
        (result, started.elapsed(), client)
    });
    // The read is queued for the held connection when the cancel comes. A
    // queued read is not observable from outside the proxy (it has reached
    // no server yet), so this is the one wait here on time: a slow machine
    // can only make the cancel come before the read is queued, and the
    // test then fails by the read sleeping its 30 s, never passes falsely.
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    holder.batch_execute("COMMIT").await.unwrap();

    let (result, elapsed, client) = sleeper.await.unwrap();
    let err = result.expect_err("the sleep was cancelled");
    assert_eq!(sqlstate(&err), "57014");
    // Well before the sleep's 30 s: the cancel, not the sleep, ended it.
    assert!(elapsed < Duration::from_secs(20), "cancel took {elapsed:?}");
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "the session survives a cancel");
}

#[tokio::test]
async fn a_client_leaving_mid_query_frees_its_server_connection() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |_| {}).await;
    let marker = format!("relay_gone_{}", std::process::id());
    let url = crate::support::harness::url(&proxy, cluster.superuser(), cluster.password());
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    // The connection task owns the socket: aborting it is the client vanishing.
    let socket = tokio::spawn(connection);
    let sql = format!("SELECT pg_sleep(60) AS {marker}");
    let running = tokio::spawn(async move {
        let _ = client.batch_execute(&sql).await;
    });
    // Asked of the node that runs it, directly: through the proxy,
    // pg_stat_activity is the primary's.
    let node = wait_running(cluster, &marker).await;
    let observer = direct(&cluster.nodes()[node]).await;
    socket.abort();
    running.abort();
    let count = "SELECT count(*) FROM pg_stat_activity WHERE strpos(query, $1) > 0 \
                 AND pid <> pg_backend_pid() AND state = 'active'";
    wait_until(
        "the abandoned query to stop",
        Duration::from_secs(10),
        || async {
            let running: i64 = observer.query_one(count, &[&marker]).await.unwrap().get(0);
            running == 0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_1_16_and_100_mb_pass_both_ways() {
    // A message the proxy cannot take whole used to hang: fail instead.
    tokio::time::timeout(Duration::from_secs(300), big_messages_both_ways())
        .await
        .expect("big messages passed within 5 minutes");
}

async fn big_messages_both_ways() {
    let (_proxy, client) = proxied().await;
    for mb in [1usize, 16, 100] {
        let len = mb * 1024 * 1024;
        // Client to server: a simple query and a bound text parameter that big.
        let sql = format!("SELECT length('{}')", "x".repeat(len));
        let rows = client.simple_query(&sql).await.unwrap();
        let said = rows.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
        assert_eq!(said, Some(len.to_string()), "{mb} MB query");
        let value = "y".repeat(len);
        let n: i32 = client
            .query_one("SELECT length($1::text)", &[&value])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n as usize, len, "{mb} MB parameter");
        // Server to client: a value that big.
        let back: String = client
            .query_one("SELECT repeat('z', $1)", &[&(len as i32)])
            .await
            .unwrap()
            .get(0);
        assert_eq!(back.len(), len, "{mb} MB result");
    }
}

#[tokio::test]
async fn a_client_leaving_halfway_through_a_message_frees_its_slot() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| {
        c.users[0].auth = palisade::config::AuthMethod::Trust;
        c.proxy.max_client_connections = 1;
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    let startup = palisade_testkit::wire::startup_packet(
        196_608,
        &[("user", cluster.superuser()), ("database", "postgres")],
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, &startup)
        .await
        .unwrap();
    palisade_testkit::wire::read_until(&mut stream, b'Z').await;
    // The header of a 1 MB query and 300 KB of it, then the client is gone.
    let mut half = vec![b'Q'];
    half.extend((1024 * 1024 + 4i32).to_be_bytes());
    half.extend(vec![b' '; 300 * 1024]);
    tokio::io::AsyncWriteExt::write_all(&mut stream, &half)
        .await
        .unwrap();
    drop(stream);
    let url = crate::support::harness::url(&proxy, cluster.superuser(), "");
    wait_until(
        "the only client slot to be free again",
        Duration::from_secs(1),
        || async {
            tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .is_ok()
        },
    )
    .await;
}

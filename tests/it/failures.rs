//! Bad input and dying servers: every failure gets a proper ErrorResponse
//! with a real SQLSTATE, and the proxy keeps serving everyone else.

use std::time::Duration;

use crate::support::harness::{self, connect, connect_with, sqlstate, start_proxy, url, user};
use crate::support::nodes::{direct, fresh_table, unique, wait_running, wait_until};
use crate::support::shared_cluster;
use palisade::config::AuthMethod;
use palisade_testkit::wire::{frame, read_message, read_until, startup_packet};
use palisade_testkit::FaultyRelay;
use palisade_testkit::{signal, ClusterOptions, LocalCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The value of one field of an ErrorResponse body.
fn field(body: &[u8], code: u8) -> String {
    let mut parts = body.split(|&b| b == 0);
    parts
        .find(|p| p.first() == Some(&code))
        .map(|p| String::from_utf8_lossy(&p[1..]).into_owned())
        .unwrap_or_default()
}

/// A raw connection logged in as a trusted user, ready for query.
async fn raw_session(addr: std::net::SocketAddr, user: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let packet = startup_packet(196_608, &[("user", user), ("database", "postgres")]);
    stream.write_all(&packet).await.unwrap();
    read_until(&mut stream, b'Z').await;
    stream
}

async fn assert_closed(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the proxy must close the connection");
}

async fn select_one_works(client: &tokio_postgres::Client) {
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn wrong_password_is_28p01_and_right_one_works() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |_| {}).await;
    let err = connect_with(&url(&proxy, cluster.superuser(), "wrong"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "28P01");
    // Said once, naming the startup packet's user (SCRAM's own user field is empty).
    let said = |e: &tokio_postgres::Error| e.as_db_error().map(|d| d.message().to_owned());
    let expected = format!(
        "password authentication failed for user \"{}\"",
        cluster.superuser()
    );
    assert_eq!(said(&err), Some(expected));
    let err = connect_with(&url(&proxy, "nobody", "x")).await.unwrap_err();
    assert_eq!(
        sqlstate(&err),
        "28P01",
        "unknown users look like wrong passwords"
    );
    assert_eq!(
        said(&err).as_deref(),
        Some("password authentication failed for user \"nobody\"")
    );
    let (client, _) = connect(&proxy, cluster).await;
    select_one_works(&client).await;
}

#[tokio::test]
async fn empty_user_is_28000_and_a_repeated_user_parameter_takes_the_last() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| c.users[0].auth = AuthMethod::Trust).await;
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let packet = startup_packet(196_608, &[("user", ""), ("database", "postgres")]);
    stream.write_all(&packet).await.unwrap();
    let body = read_until(&mut stream, b'E').await;
    assert_eq!(field(&body, b'C'), "28000");
    assert_closed(&mut stream).await;

    // PostgreSQL keeps the last value of a parameter sent twice.
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let packet = startup_packet(
        196_608,
        &[
            ("user", "nobody"),
            ("database", "postgres"),
            ("user", cluster.superuser()),
        ],
    );
    stream.write_all(&packet).await.unwrap();
    let (tag, body) = read_message(&mut stream).await;
    assert_eq!(tag, b'R', "authentication as the last user named: {body:?}");
    assert_eq!(&body[..4], &0i32.to_be_bytes(), "AuthenticationOk");
    read_until(&mut stream, b'Z').await;
}

#[tokio::test]
async fn md5_trust_and_verifier_client_auth() {
    let cluster = shared_cluster();
    let verifier = cluster
        .psql(
            0,
            "SET password_encryption = 'scram-sha-256'; \
             DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'palisade_verifier') THEN \
             CREATE ROLE palisade_verifier LOGIN SUPERUSER; END IF; END $$; \
             ALTER ROLE palisade_verifier PASSWORD 'verifier-secret'; \
             SELECT rolpassword FROM pg_authid WHERE rolname = 'palisade_verifier'",
        )
        .unwrap();
    let proxy = start_proxy(cluster, |c| {
        let password = c.users[0].password.clone();
        let mut md5 = user("md5_client", AuthMethod::Md5, Some("md5-secret"));
        md5.server_user = Some(c.users[0].name.clone());
        md5.server_password = password.clone();
        let mut trusted = user("trusted_client", AuthMethod::Trust, None);
        trusted.server_user = Some(c.users[0].name.clone());
        trusted.server_password = password;
        let mut stored = user("palisade_verifier", AuthMethod::ScramSha256, None);
        stored.scram_verifier = Some(verifier.trim().to_owned());
        stored.server_password = Some("verifier-secret".into());
        c.users.extend([md5, trusted, stored]);
    })
    .await;
    for (name, password) in [
        ("md5_client", "md5-secret"),
        ("trusted_client", "anything"),
        ("palisade_verifier", "verifier-secret"),
    ] {
        let (client, _) = connect_with(&url(&proxy, name, password))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        select_one_works(&client).await;
    }
    let err = connect_with(&url(&proxy, "md5_client", "bad"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "28P01");
    let err = connect_with(&url(&proxy, "palisade_verifier", "bad"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "28P01");
}

#[tokio::test]
async fn server_side_md5_cleartext_and_trust_logins() {
    let cluster = shared_cluster();
    cluster
        .psql(
            0,
            "SET password_encryption = 'md5'; \
             DO $$ BEGIN \
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'palisade_md5') THEN CREATE ROLE palisade_md5 LOGIN; END IF; \
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'palisade_clear') THEN CREATE ROLE palisade_clear LOGIN; END IF; \
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'palisade_trust') THEN CREATE ROLE palisade_trust LOGIN; END IF; \
             END $$; \
             ALTER ROLE palisade_md5 PASSWORD 'md5-pw'; ALTER ROLE palisade_clear PASSWORD 'clear-pw'",
        )
        .unwrap();
    let proxy = start_proxy(cluster, |c| {
        c.users.push(user(
            "palisade_md5",
            AuthMethod::ScramSha256,
            Some("md5-pw"),
        ));
        c.users.push(user(
            "palisade_clear",
            AuthMethod::ScramSha256,
            Some("clear-pw"),
        ));
        c.users
            .push(user("palisade_trust", AuthMethod::ScramSha256, Some("any")));
        let mut wrong = user("wrong_server_pw", AuthMethod::Trust, None);
        wrong.server_user = Some("palisade_md5".into());
        wrong.server_password = Some("not-it".into());
        c.users.push(wrong);
    })
    .await;
    for (name, password) in [
        ("palisade_md5", "md5-pw"),
        ("palisade_clear", "clear-pw"),
        ("palisade_trust", "any"),
    ] {
        let (client, _) = connect_with(&url(&proxy, name, password))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let who: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, name);
    }
    // The server's own refusal reaches the client as PostgreSQL sent it.
    let err = connect_with(&url(&proxy, "wrong_server_pw", "x"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "28P01");
}

#[tokio::test]
async fn ssl_and_gssenc_requests_are_declined_then_startup_proceeds() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| c.users[0].auth = AuthMethod::Trust).await;
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    for code in [80_877_104i32, 80_877_103] {
        let mut request = 8i32.to_be_bytes().to_vec();
        request.extend(code.to_be_bytes());
        stream.write_all(&request).await.unwrap();
        let mut answer = [0u8; 1];
        stream.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"N");
    }
    stream
        .write_all(&startup_packet(196_608, &[("user", cluster.superuser())]))
        .await
        .unwrap();
    let (tag, body) = read_message(&mut stream).await;
    assert_eq!(
        (tag, body.as_slice()),
        (b'R', &0i32.to_be_bytes()[..]),
        "AuthenticationOk"
    );
    let mut saw_key = false;
    loop {
        let (tag, _) = read_message(&mut stream).await;
        saw_key |= tag == b'K';
        if tag == b'Z' {
            break;
        }
    }
    assert!(saw_key, "BackendKeyData is sent");
}

#[tokio::test]
async fn newer_protocol_versions_are_negotiated_down_to_3_0() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| c.users[0].auth = AuthMethod::Trust).await;
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let packet = startup_packet(
        196_610,
        &[("user", cluster.superuser()), ("_pq_.future", "on")],
    );
    stream.write_all(&packet).await.unwrap();
    let (tag, body) = read_message(&mut stream).await;
    assert_eq!(tag, b'v', "NegotiateProtocolVersion");
    // PostgreSQL sends the whole version number, 3.0 = 196608.
    assert_eq!(&body[..4], &196_608i32.to_be_bytes());
    assert_eq!(&body[4..8], &1i32.to_be_bytes());
    assert_eq!(&body[8..], b"_pq_.future\0");
    read_until(&mut stream, b'Z').await;
}

#[tokio::test]
async fn malformed_startup_packets_get_08p01_and_others_are_unaffected() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |_| {}).await;
    let (bystander, _) = connect(&proxy, cluster).await;
    let bad_packets: [Vec<u8>; 3] = [
        // A length far over the startup limit.
        i32::MAX.to_be_bytes().to_vec(),
        // A parameter list without its terminator.
        {
            let mut p = startup_packet(196_608, &[("user", "x")]);
            p.pop();
            p[3] -= 1;
            p
        },
        // An unknown protocol.
        startup_packet(0x0009_0000, &[]),
    ];
    for (i, packet) in bad_packets.iter().enumerate() {
        let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
        stream.write_all(packet).await.unwrap();
        let (tag, body) = read_message(&mut stream).await;
        assert_eq!(tag, b'E', "packet {i}");
        let expected = if i == 2 { "0A000" } else { "08P01" };
        assert_eq!(
            field(&body, b'C'),
            expected,
            "packet {i}: {}",
            field(&body, b'M')
        );
        assert_closed(&mut stream).await;
    }
    select_one_works(&bystander).await;
}

#[tokio::test]
async fn oversized_and_malformed_frames_close_only_that_client() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| {
        c.users[0].auth = AuthMethod::Trust;
        c.proxy.max_message_size = 64 * 1024;
    })
    .await;
    let (bystander, _) = connect(&proxy, cluster).await;

    let mut stream = raw_session(proxy.local_addr(), cluster.superuser()).await;
    let mut oversized = vec![b'Q'];
    oversized.extend(i32::MAX.to_be_bytes());
    stream.write_all(&oversized).await.unwrap();
    let (tag, body) = read_message(&mut stream).await;
    assert_eq!(
        (tag, field(&body, b'C').as_str()),
        (b'E', "54000"),
        "{}",
        field(&body, b'M')
    );
    assert_closed(&mut stream).await;

    let mut stream = raw_session(proxy.local_addr(), cluster.superuser()).await;
    stream.write_all(&[b'Q', 0, 0, 0, 2]).await.unwrap();
    let (tag, body) = read_message(&mut stream).await;
    assert_eq!((tag, field(&body, b'C').as_str()), (b'E', "08P01"));
    assert_closed(&mut stream).await;

    // A type no frontend message has: FATAL 08P01 at once, as PostgreSQL
    // says it, not silence until a Sync that never comes.
    let mut stream = raw_session(proxy.local_addr(), cluster.superuser()).await;
    stream.write_all(&[b'z', 0, 0, 0, 4]).await.unwrap();
    let (tag, body) = read_message(&mut stream).await;
    assert_eq!((tag, field(&body, b'C').as_str()), (b'E', "08P01"));
    assert_eq!(field(&body, b'M'), "invalid frontend message type 122");
    assert_closed(&mut stream).await;

    // A query just under the limit is fine.
    let mut stream = raw_session(proxy.local_addr(), cluster.superuser()).await;
    let sql = format!("SELECT length('{}')\0", "x".repeat(60 * 1024));
    let mut query = Vec::new();
    frame(&mut query, b'Q', sql.as_bytes());
    stream.write_all(&query).await.unwrap();
    let row = read_until(&mut stream, b'D').await;
    assert!(row.ends_with(b"61440"), "{row:?}");
    read_until(&mut stream, b'Z').await;

    select_one_works(&bystander).await;
}

#[tokio::test]
async fn too_many_clients_get_53300() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| c.proxy.max_client_connections = 2).await;
    let (a, _) = connect(&proxy, cluster).await;
    let (_b, _) = connect(&proxy, cluster).await;
    let err = connect_with(&url(&proxy, cluster.superuser(), cluster.password()))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "53300");
    select_one_works(&a).await;
    drop(a);
    // The freed slot can be used again once the first session has ended.
    let url = url(&proxy, cluster.superuser(), cluster.password());
    wait_until("the freed slot to take a client", TIMEOUT * 3, || async {
        connect_with(&url).await.is_ok()
    })
    .await;
}

#[tokio::test]
async fn server_terminated_session_gets_57p01() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |_| {}).await;
    let (victim, _) = connect(&proxy, cluster).await;
    // Pinned, so the sleep runs on the backend whose pid it asks for.
    victim.batch_execute("SET palisade.pin = on").await.unwrap();
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let (killer, _) = connect(&proxy, cluster).await;
    let marker = unique("terminated");
    let sql = format!("SELECT pg_sleep(30) AS {marker}");
    let sleeping = tokio::spawn(async move { victim.batch_execute(&sql).await });
    wait_running(cluster, &marker).await;
    killer
        .query("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let err = tokio::time::timeout(TIMEOUT, sleeping)
        .await
        .expect("no hang")
        .unwrap()
        .unwrap_err();
    assert_eq!(sqlstate(&err), "57P01");
    select_one_works(&killer).await;
}

/// A proxy in front of the shared primary alone, reached through a relay
/// that can cut its connections.
async fn proxy_through_relay() -> (FaultyRelay, palisade::proxy::Proxy) {
    let cluster = shared_cluster();
    let relay = FaultyRelay::start(
        format!("127.0.0.1:{}", cluster.primary().port)
            .parse()
            .unwrap(),
    );
    let proxy = start_proxy(cluster, |c| {
        c.nodes.truncate(1);
        c.nodes[0].port = relay.addr().port();
    })
    .await;
    (relay, proxy)
}

#[tokio::test]
async fn lost_server_connection_mid_write_gets_class_08_and_the_session_goes_on() {
    let cluster = shared_cluster();
    let (relay, proxy) = proxy_through_relay().await;
    let (client, _) = connect(&proxy, cluster).await;
    let client = std::sync::Arc::new(client);
    let marker = unique("cut_mid_write");
    // A DO block may write: it is never sent twice.
    let sql = format!("DO $$BEGIN PERFORM pg_sleep(30); END$$ /* {marker} */");
    let writer = client.clone();
    let running = tokio::spawn(async move { writer.batch_execute(&sql).await });
    wait_running(cluster, &marker).await;
    relay.cut();
    let err = tokio::time::timeout(TIMEOUT, running)
        .await
        .expect("no hang")
        .unwrap()
        .unwrap_err();
    assert!(sqlstate(&err).starts_with("08"), "{err:?}");
    // Outside a transaction the loss cost that statement only: the same
    // session goes on, on a new server connection.
    select_one_works(&client).await;
    // New sessions work: the cut also broke the monitor's probe connection,
    // but one failed probe does not take the primary out of routing.
    let (client, _) = connect(&proxy, cluster).await;
    select_one_works(&client).await;
}

#[tokio::test]
async fn a_read_whose_connection_is_cut_before_its_reply_is_sent_again() {
    let cluster = shared_cluster();
    let (relay, proxy) = proxy_through_relay().await;
    let (client, _) = connect(&proxy, cluster).await;
    let marker = unique("cut_mid_read");
    let sql = format!("SELECT pg_sleep(2), 42 AS {marker}");
    let running = tokio::spawn(async move {
        let row = client.query_one(sql.as_str(), &[]).await?;
        Ok::<i32, tokio_postgres::Error>(row.get(1))
    });
    wait_running(cluster, &marker).await;
    relay.cut();
    let answer = tokio::time::timeout(TIMEOUT, running)
        .await
        .expect("no hang")
        .unwrap();
    assert_eq!(answer.expect("the read is sent again, not failed"), 42);
}

#[tokio::test]
async fn a_terminated_backend_costs_a_read_nothing_and_a_write_only_its_own_error() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |_| {}).await;
    let (client, _) = connect(&proxy, cluster).await;
    let client = std::sync::Arc::new(client);
    let terminate = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE strpos(query, $1) > 0 AND pid <> pg_backend_pid()";
    // A read on a replica: terminated there, it is answered from elsewhere.
    let marker = unique("terminated_read");
    let sql = format!("SELECT pg_sleep(2), 7 AS {marker}");
    let reader = client.clone();
    let read = tokio::spawn(async move { reader.query_one(sql.as_str(), &[]).await });
    let node = wait_running(cluster, &marker).await;
    assert_ne!(node, 0, "a read runs on a replica");
    let admin = direct(cluster.node(node)).await;
    let n: i64 = admin.query_one(terminate, &[&marker]).await.unwrap().get(0);
    assert_eq!(n, 1);
    let row = tokio::time::timeout(TIMEOUT, read).await.expect("no hang");
    let seven: i32 = row.unwrap().expect("the read is sent again").get(1);
    assert_eq!(seven, 7);
    // A write gets class 08 (its outcome is unknown), as an ERROR, never
    // the server's FATAL: the session goes on.
    let marker = unique("terminated_write");
    let sql = format!("DO $$BEGIN PERFORM pg_sleep(30); END$$ /* {marker} */");
    let writer = client.clone();
    let write = tokio::spawn(async move { writer.batch_execute(&sql).await });
    assert_eq!(
        wait_running(cluster, &marker).await,
        0,
        "writes run on the primary"
    );
    let admin = direct(cluster.primary()).await;
    let n: i64 = admin.query_one(terminate, &[&marker]).await.unwrap().get(0);
    assert_eq!(n, 1);
    let err = tokio::time::timeout(TIMEOUT, write)
        .await
        .expect("no hang")
        .unwrap()
        .unwrap_err();
    assert_eq!(sqlstate(&err), "08006", "{err:?}");
    select_one_works(&client).await;
}

#[tokio::test]
async fn killed_server_process_mid_query_gets_an_error_not_a_hang() {
    // A SIGKILLed backend makes PostgreSQL restart every session, so this
    // test has a cluster of its own.
    let options = ClusterOptions {
        replicas: 0,
        ..ClusterOptions::default()
    };
    let cluster = tokio::task::spawn_blocking(|| LocalCluster::start(options))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let proxy = start_proxy(&cluster, |_| {}).await;
    let (client, _) = harness::connect(&proxy, &cluster).await;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let marker = unique("killed_mid_query");
    // Not a read: a read would be sent again once the server is back.
    let sql = format!("DO $$BEGIN PERFORM pg_sleep(30); END$$ /* {marker} */");
    let running = tokio::spawn(async move { client.batch_execute(&sql).await });
    wait_running(&cluster, &marker).await;
    signal::send(pid.unsigned_abs(), signal::SIGKILL).unwrap();
    let err = tokio::time::timeout(TIMEOUT, running)
        .await
        .expect("no hang")
        .unwrap()
        .unwrap_err();
    let state = sqlstate(&err);
    assert!(
        state.starts_with("08") || state == "57P01" || state == "57P02",
        "{err:?}"
    );
    drop(proxy);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_batch_abandoned_before_sync_is_never_committed() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| c.users[0].auth = AuthMethod::Trust).await;
    let (observer, _) = connect(&proxy, cluster).await;
    observer
        .batch_execute("DROP TABLE IF EXISTS unsynced; CREATE TABLE unsynced(x int)")
        .await
        .unwrap();

    let mut stream = raw_session(proxy.local_addr(), cluster.superuser()).await;
    let mut batch = Vec::new();
    frame(&mut batch, b'P', b"\0INSERT INTO unsynced VALUES (1)\0\0\0");
    frame(&mut batch, b'B', b"\0\0\0\0\0\0\0\0");
    frame(&mut batch, b'E', b"\0\0\0\0\0");
    frame(&mut batch, b'H', b"");
    stream.write_all(&batch).await.unwrap();
    // ParseComplete, BindComplete, CommandComplete arrive after the Flush...
    read_until(&mut stream, b'C').await;
    // ...but without Sync the implicit transaction is still open when the client vanishes.
    drop(stream);
    // Until the proxy has dealt with that server connection, the insert's
    // transaction is merely open, and counting rows could not tell.
    let primary = direct(cluster.primary()).await;
    wait_until(
        "the abandoned batch's server connection to be closed or reset",
        TIMEOUT * 3,
        || async {
            let open: i64 = primary
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE query = 'INSERT INTO unsynced VALUES (1)' AND state <> 'idle'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            open == 0
        },
    )
    .await;

    // The proxy must not reuse that server connection in a way that commits
    // the batch (its reset is refused inside the open pipeline, so the
    // connection is closed and PostgreSQL rolls the batch back).
    for _ in 0..3 {
        let (client, _) = connect(&proxy, cluster).await;
        let n: i64 = client
            .query_one("SELECT count(*) FROM unsynced", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "an unsynced insert was committed");
    }
}

#[tokio::test]
async fn a_read_whose_replica_never_answers_the_connect_goes_to_the_next_one() {
    let cluster = shared_cluster();
    let relay = FaultyRelay::start(
        format!("127.0.0.1:{}", cluster.node(1).port)
            .parse()
            .unwrap(),
    );
    let proxy = start_proxy(cluster, |c| {
        c.nodes[1].port = relay.addr().port();
        c.proxy.replica_connect_timeout_ms = 300;
        // The monitor must not notice: this is the connect deadline alone.
        c.monitor.probe_timeout_ms = 60_000;
        c.failover.failover_timeout_ms = 120_000;
    })
    .await;
    harness::wait_topology(&proxy, "both replicas up", |t| {
        t.nodes.iter().all(|n| n.healthy)
    })
    .await;
    // Connections to replica 1 are accepted and then get nowhere.
    relay.block();
    let (client, _) = connect(&proxy, cluster).await;
    for read in 0..4 {
        let began = std::time::Instant::now();
        let port: i32 = client
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap_or_else(|e| panic!("read {read}: {e}"))
            .get(0);
        assert_eq!(port, i32::from(cluster.node(2).port), "read {read}");
        assert!(
            began.elapsed() < Duration::from_secs(2),
            "read {read} took {:?}",
            began.elapsed()
        );
    }
    let t = proxy.topology();
    assert!(t.nodes[1].healthy && !t.nodes[1].suspect, "{t:?}");
    relay.heal();
}

/// Terminates, on the primary, the backend whose last statement holds
/// `marker`, and waits a moment for the proxy to see its connection end.
async fn terminate_marked(cluster: &LocalCluster, marker: &str) {
    let admin = direct(cluster.primary()).await;
    let sql = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
               WHERE strpos(query, $1) > 0 AND pid <> pg_backend_pid()";
    let n: i64 = admin.query_one(sql, &[&marker]).await.unwrap().get(0);
    assert_eq!(n, 1, "one backend ran {marker}");
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// The rows of `table` on the primary, asked directly: (k, v).
async fn rows_of(cluster: &LocalCluster, table: &str) -> Vec<(i32, i32)> {
    let admin = direct(cluster.primary()).await;
    let rows = admin
        .query(&format!("SELECT k, v FROM {table} ORDER BY k"), &[])
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

#[tokio::test]
async fn a_transaction_that_lost_its_backend_is_replayed_or_gets_40001() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| c.failover.transaction_replay = true).await;
    let (client, _) = connect(&proxy, cluster).await;
    let table = unique("txn_replayed");
    fresh_table(&client, &table, "k int PRIMARY KEY, v int").await;

    // Same results on the new connection: the client never notices.
    let marker = unique("replay_same");
    client.batch_execute("BEGIN").await.unwrap();
    let insert = format!("INSERT INTO {table} VALUES ($1, 0) /* {marker} */");
    client.execute(insert.as_str(), &[&1]).await.unwrap();
    let seen: i32 = client
        .query_one(
            &format!("SELECT v FROM {table} WHERE k = 1 /* {marker} */"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 0);
    terminate_marked(cluster, &marker).await;
    let update = format!("UPDATE {table} SET v = v + 1 WHERE k = 1");
    let n = client
        .execute(update.as_str(), &[])
        .await
        .expect("the transaction was replayed on a new connection");
    assert_eq!(n, 1);
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(rows_of(cluster, &table).await, [(1, 1)], "applied once");

    // random() gives another answer on replay: 40001, the transaction is
    // rolled back, the client's ROLLBACK ends it and the session goes on.
    let marker = unique("replay_differs");
    client.batch_execute("BEGIN").await.unwrap();
    client.execute(insert.as_str(), &[&2]).await.unwrap();
    client
        .query_one(&format!("SELECT random() /* {marker} */"), &[])
        .await
        .unwrap();
    terminate_marked(cluster, &marker).await;
    let err = client.execute(update.as_str(), &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "40001", "{err:?}");
    let err = client.query_one("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(
        sqlstate(&err),
        "40001",
        "still in the failed transaction, told why again"
    );
    client.batch_execute("ROLLBACK").await.unwrap();
    select_one_works(&client).await;
    assert_eq!(
        rows_of(cluster, &table).await,
        [(1, 1)],
        "k = 2 rolled back"
    );

    // The same with COMMIT next: the replay fails and so does the COMMIT.
    let marker = unique("replay_differs_commit");
    client.batch_execute("BEGIN").await.unwrap();
    client.execute(insert.as_str(), &[&3]).await.unwrap();
    client
        .query_one(&format!("SELECT random() /* {marker} */"), &[])
        .await
        .unwrap();
    terminate_marked(cluster, &marker).await;
    let err = client.batch_execute("COMMIT").await.unwrap_err();
    assert_eq!(sqlstate(&err), "40001", "{err:?}");
    select_one_works(&client).await;
    assert_eq!(
        rows_of(cluster, &table).await,
        [(1, 1)],
        "k = 3 rolled back"
    );
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_transaction_lost_without_replay_gets_08006_and_its_rollback_works() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |_| {}).await;
    let (mut client, _) = connect(&proxy, cluster).await;
    let table = unique("txn_lost");
    fresh_table(&client, &table, "k int PRIMARY KEY, v int").await;
    let marker = unique("txn_lost_marker");
    let transaction = client.transaction().await.unwrap();
    transaction
        .execute(
            &format!("INSERT INTO {table} VALUES (1, 0) /* {marker} */"),
            &[],
        )
        .await
        .unwrap();
    terminate_marked(cluster, &marker).await;
    let err = transaction.query_one("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "08006", "{err:?}");
    // Dropped, the transaction sends ROLLBACK: answered, the session goes on.
    drop(transaction);
    select_one_works(&client).await;
    // A COMMIT as the first word after the loss fails: it must not look
    // like a commit (the ROLLBACK tag is no error to a driver).
    let marker = unique("txn_lost_commit");
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute(&format!("INSERT INTO {table} VALUES (2, 0) /* {marker} */"))
        .await
        .unwrap();
    terminate_marked(cluster, &marker).await;
    let err = client.batch_execute("COMMIT").await.unwrap_err();
    assert_eq!(sqlstate(&err), "08006", "{err:?}");
    select_one_works(&client).await;
    assert!(rows_of(cluster, &table).await.is_empty());
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_commit_whose_backend_is_lost_gets_08007_and_is_never_replayed() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| c.failover.transaction_replay = true).await;
    let (client, _) = connect(&proxy, cluster).await;
    let client = std::sync::Arc::new(client);
    let table = unique("txn_commit_lost");
    fresh_table(&client, &table, "k int PRIMARY KEY, v int").await;
    // A deferred trigger that sleeps: COMMIT runs long enough to be cut.
    client
        .batch_execute(&format!(
            "CREATE FUNCTION {table}_slow() RETURNS trigger LANGUAGE plpgsql \
             AS $$BEGIN PERFORM pg_sleep(30); RETURN NULL; END$$; \
             CREATE CONSTRAINT TRIGGER {table}_slow AFTER INSERT ON {table} \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {table}_slow()"
        ))
        .await
        .unwrap();
    let marker = unique("commit_lost");
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute(&format!("INSERT INTO {table} VALUES (1, 0)"))
        .await
        .unwrap();
    let committer = client.clone();
    let commit = format!("COMMIT /* {marker} */");
    let committing = tokio::spawn(async move { committer.batch_execute(&commit).await });
    wait_running(cluster, &marker).await;
    terminate_marked(cluster, &marker).await;
    let err = tokio::time::timeout(TIMEOUT, committing)
        .await
        .expect("no hang")
        .unwrap()
        .unwrap_err();
    assert_eq!(sqlstate(&err), "08007", "{err:?}");
    // Outside a transaction now, on a new connection.
    select_one_works(&client).await;
    client.batch_execute("SELECT 1").await.unwrap();
    assert!(rows_of(cluster, &table).await.is_empty(), "never replayed");
    client
        .batch_execute(&format!("DROP TABLE {table}; DROP FUNCTION {table}_slow()"))
        .await
        .unwrap();
}

//! No way for one client to lock out the rest: sockets past
//! `max_client_connections` are refused at once, idle unauthenticated
//! sockets cannot fill the proxy, failed logins slow down their own address
//! only, and stalled or idle sessions are closed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::harness::{connect, connect_with, sqlstate, start_proxy, url, user};
use crate::support::shared_cluster;
use palisade::config::AuthMethod;
use palisade_testkit::wire::{frame, startup_packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

const TIMEOUT: Duration = Duration::from_secs(10);

/// One message, or `None` when the connection ended (or nothing came in
/// `TIMEOUT`).
async fn next_message(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut header))
        .await
        .ok()?
        .ok()?;
    let len = usize::try_from(i32::from_be_bytes(header[1..5].try_into().ok()?)).ok()?;
    let mut body = vec![0u8; len.checked_sub(4)?];
    stream.read_exact(&mut body).await.ok()?;
    Some((header[0], body))
}

/// The SQLSTATE of an ErrorResponse body.
fn code(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find(|p| p.first() == Some(&b'C'))
        .map(|p| String::from_utf8_lossy(&p[1..]).into_owned())
        .unwrap_or_default()
}

/// Reads until an ErrorResponse and returns its SQLSTATE; then the proxy
/// must close the connection.
async fn fatal_code(stream: &mut TcpStream) -> String {
    loop {
        match next_message(stream).await {
            Some((b'E', body)) => {
                let mut rest = Vec::new();
                let closed = tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut rest)).await;
                assert!(
                    closed.is_ok(),
                    "the proxy closes the connection after FATAL"
                );
                return code(&body);
            }
            Some(_) => {}
            None => panic!("the connection ended without an error"),
        }
    }
}

/// A TCP connection to `proxy` from the loopback address `source`.
async fn connect_from(source: &str, proxy: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{source}:0").parse().unwrap())
        .unwrap_or_else(|e| panic!("bind {source}: {e}"));
    socket.connect(proxy).await.unwrap()
}

/// A trusted raw session into `database`, ready for query.
async fn raw_session(proxy: SocketAddr, user: &str, database: &str) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let packet = startup_packet(196_608, &[("user", user), ("database", database)]);
    stream.write_all(&packet).await.unwrap();
    while let Some((tag, _)) = next_message(&mut stream).await {
        if tag == b'Z' {
            return stream;
        }
    }
    panic!("no ReadyForQuery after startup");
}

/// Sends a simple query and reads to its ReadyForQuery; returns the status.
async fn simple_query(stream: &mut TcpStream, sql: &str) -> u8 {
    let mut query = Vec::new();
    frame(&mut query, b'Q', format!("{sql}\0").as_bytes());
    stream.write_all(&query).await.unwrap();
    loop {
        match next_message(stream).await {
            Some((b'Z', status)) => return status[0],
            Some((b'E', body)) => panic!("{sql}: {}", code(&body)),
            Some(_) => {}
            None => panic!("{sql}: the connection ended"),
        }
    }
}

#[tokio::test]
async fn a_socket_past_the_client_limit_is_refused_at_once() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| c.proxy.max_client_connections = 1).await;
    let (holder, _) = connect(&proxy, cluster).await;
    // Refused before it says anything: no startup packet is waited for.
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert_eq!(fatal_code(&mut stream).await, "53300");
    holder.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn idle_unauthenticated_sockets_do_not_lock_out_a_real_client() {
    let cluster = shared_cluster();
    // A long startup deadline: only the cap on logins in progress can help.
    let proxy = start_proxy(cluster, |c| c.proxy.startup_timeout_ms = 120_000).await;
    let mut idle = Vec::new();
    for _ in 0..2_000 {
        idle.push(TcpStream::connect(proxy.local_addr()).await.unwrap());
    }
    let began = Instant::now();
    let (client, _) = connect_with(&url(&proxy, cluster.superuser(), cluster.password()))
        .await
        .expect("a real client logs in past 2,000 idle sockets");
    client.simple_query("SELECT 1").await.unwrap();
    assert!(began.elapsed() < TIMEOUT, "{:?}", began.elapsed());
    // The oldest idle sockets made room: told so, and closed.
    assert_eq!(fatal_code(&mut idle[0]).await, "53300");
}

/// One md5 login as `flood` with a wrong password from `source`: the
/// SQLSTATE it ends with.
async fn failed_md5_login(source: &'static str, proxy: SocketAddr) -> String {
    let mut stream = connect_from(source, proxy).await;
    let packet = startup_packet(196_608, &[("user", "flood"), ("database", "postgres")]);
    stream.write_all(&packet).await.unwrap();
    match next_message(&mut stream).await {
        Some((b'R', _)) => {
            let mut password = Vec::new();
            frame(
                &mut password,
                b'p',
                b"md5ffffffffffffffffffffffffffffffff\0",
            );
            stream.write_all(&password).await.unwrap();
            match next_message(&mut stream).await {
                Some((b'E', body)) => code(&body),
                other => panic!("after a wrong password: {other:?}"),
            }
        }
        Some((b'E', body)) => code(&body),
        other => panic!("at startup: {other:?}"),
    }
}

/// The superuser's login from `source`: how long it took, or its SQLSTATE.
async fn login_from(
    source: &'static str,
    proxy: SocketAddr,
    password: &str,
) -> Result<Duration, String> {
    let cluster = shared_cluster();
    let began = Instant::now();
    let stream = connect_from(source, proxy).await;
    let mut config = tokio_postgres::Config::new();
    config
        .user(cluster.superuser())
        .password(password)
        .dbname("postgres");
    let (client, connection) = config
        .connect_raw(stream, tokio_postgres::NoTls)
        .await
        .map_err(|e| sqlstate(&e))?;
    tokio::spawn(connection);
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|e| sqlstate(&e))?;
    Ok(began.elapsed())
}

#[tokio::test]
async fn failed_logins_slow_down_their_address_and_no_other() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| {
        c.proxy.login_failure_delay_ms = 50;
        c.proxy.max_login_failure_delay_ms = 2_000;
        c.users
            .push(user("flood", AuthMethod::Md5, Some("flood-password")));
    })
    .await;
    let addr = proxy.local_addr();
    // 1,000 failed logins from 127.0.0.2, 50 at a time.
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    let mut running = JoinSet::new();
    for i in 0..1_000 {
        if i >= 50 {
            let code = running.join_next().await.unwrap().unwrap();
            *codes.entry(code).or_default() += 1;
        }
        running.spawn(failed_md5_login("127.0.0.2", addr));
    }
    while let Some(code) = running.join_next().await {
        *codes.entry(code.unwrap()).or_default() += 1;
    }
    eprintln!("1,000 failed logins from 127.0.0.2: {codes:?}");
    assert_eq!(codes.values().sum::<usize>(), 1_000);
    assert!(
        codes.keys().all(|c| c == "28P01" || c == "53300"),
        "{codes:?}"
    );
    assert!(
        codes.get("53300").is_some_and(|&n| n > 0),
        "throttled: {codes:?}"
    );

    // That address is slowed even with the right password: its logins
    // wait their turn one by one, and those that would wait too long are
    // refused.
    let password = cluster.password();
    let hot: Vec<_> =
        futures_util::future::join_all((0..5).map(|_| login_from("127.0.0.2", addr, password)))
            .await;
    assert!(
        hot.iter().any(|r| matches!(r, Err(c) if c == "53300")),
        "{hot:?}"
    );
    assert!(
        hot.iter().all(|r| match r {
            Ok(took) => *took >= Duration::from_millis(500),
            Err(code) => code == "53300",
        }),
        "{hot:?}"
    );
    // Another address is not: every login goes through, and a wrong
    // password is checked (28P01), not refused.
    let cold: Vec<_> =
        futures_util::future::join_all((0..5).map(|_| login_from("127.0.0.3", addr, password)))
            .await;
    assert!(cold.iter().all(Result::is_ok), "{cold:?}");
    assert_eq!(failed_md5_login("127.0.0.3", addr).await, "28P01");
}

#[tokio::test]
async fn a_message_stalled_midway_gets_08p01_and_pauses_between_messages_do_not() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| {
        c.users[0].auth = AuthMethod::Trust;
        c.proxy.client_message_timeout_ms = 300;
    })
    .await;
    let mut stream = raw_session(proxy.local_addr(), cluster.superuser(), "postgres").await;
    // Whole messages with long pauses between them are fine.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(simple_query(&mut stream, "SELECT 1").await, b'I');
    // A header promising 100 bytes, and 3 of them.
    stream.write_all(b"Q\0\0\0\x64SEL").await.unwrap();
    let began = Instant::now();
    assert_eq!(fatal_code(&mut stream).await, "08P01");
    assert!(
        began.elapsed() >= Duration::from_millis(250),
        "{:?}",
        began.elapsed()
    );
    // The admin console keeps the same timeout.
    let mut console = raw_session(proxy.local_addr(), cluster.superuser(), "palisade").await;
    console.write_all(b"Q\0\0\0\x64SHOW").await.unwrap();
    assert_eq!(fatal_code(&mut console).await, "08P01");
}

#[tokio::test]
async fn an_idle_session_is_closed_with_57p05_but_not_inside_a_transaction() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| {
        c.users[0].auth = AuthMethod::Trust;
        c.proxy.client_idle_timeout_ms = 300;
    })
    .await;
    let mut console = raw_session(proxy.local_addr(), cluster.superuser(), "palisade").await;
    let mut stream = raw_session(proxy.local_addr(), cluster.superuser(), "postgres").await;
    assert_eq!(simple_query(&mut stream, "BEGIN").await, b'T');
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(simple_query(&mut stream, "SELECT 1").await, b'T');
    assert_eq!(simple_query(&mut stream, "COMMIT").await, b'I');
    let began = Instant::now();
    assert_eq!(fatal_code(&mut stream).await, "57P05");
    assert!(
        began.elapsed() >= Duration::from_millis(250),
        "{:?}",
        began.elapsed()
    );
    // So is an idle admin console.
    assert_eq!(fatal_code(&mut console).await, "57P05");
}

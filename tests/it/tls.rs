//! TLS on both sides of the proxy. Certificates are made at test time
//! (`palisade_testkit::tls`, rcgen): a CA per test, a server certificate for
//! `localhost` and 127.0.0.1 signed by it. Clients: psql and pgbench (libpq),
//! tokio-postgres over rustls, psycopg 3 and asyncpg, node-postgres, and a
//! raw rustls client for PostgreSQL 17's direct TLS. Server side: a cluster
//! of its own started with `ssl = on`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use palisade::backend::{self, ConnectError, Login, ServerSecret};
use palisade::config::{AuthMethod, BackendConfig, Config, ServerTlsMode, TlsConfig, TlsMode};
use palisade::proxy::Proxy;
use palisade::tls::{ReadHalf, ServerTls};
use palisade_testkit::tls::TestCa;
use palisade_testkit::{signal, wire};
use palisade_testkit::{ClusterOptions, LocalCluster};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::support::harness::{sqlstate, start_proxy, user};
use crate::support::nodes::wait_until;
use crate::support::shared_cluster;

/// A CA and a server certificate it signed, written to a directory of their own.
struct Pki {
    dir: TempDir,
    ca: TestCa,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(name).unwrap();
        let cert = ca.issue(&["localhost", "127.0.0.1"]).unwrap();
        let (cert_file, key_file) = cert.write(dir.path()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        Pki {
            dir,
            ca,
            cert_file,
            key_file,
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn tls_config(&self, mode: TlsMode) -> TlsConfig {
        TlsConfig {
            mode: Some(mode),
            cert_file: Some(self.cert_file.clone()),
            key_file: Some(self.key_file.clone()),
        }
    }

    /// Signs a new server certificate with `ca` and writes it over this one's files.
    fn renew_with(&self, ca: &TestCa) {
        let cert = ca.issue(&["localhost", "127.0.0.1"]).unwrap();
        cert.write(self.dir.path()).unwrap();
    }
}

/// A proxy in front of the shared cluster serving TLS in `mode`.
async fn tls_proxy(pki: &Pki, mode: TlsMode, tweak: impl FnOnce(&mut Config)) -> Proxy {
    start_proxy(shared_cluster(), |c| {
        c.tls = pki.tls_config(mode);
        tweak(c);
    })
    .await
}

/// Runs psql from the cluster's binaries with `conninfo` and `sql`.
fn psql(cluster: &LocalCluster, conninfo: &str, sql: &str) -> Output {
    Command::new(cluster.bin_dir().join("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            conninfo,
            "-c",
            sql,
        ])
        .env("PGPASSWORD", cluster.password())
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql runs")
}

fn conninfo(proxy: &Proxy, host: &str, user: &str, extra: &str) -> String {
    let port = proxy.local_addr().port();
    format!("host={host} port={port} user={user} dbname=postgres {extra}")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A rustls client config trusting `ca_pem` only.
fn client_config(ca_pem: &str, alpn: bool) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    if alpn {
        config.alpn_protocols = vec![b"postgresql".to_vec()];
    }
    config
}

/// tokio-postgres over TLS (sslmode=require), the certificate checked against `ca_pem`.
async fn tls_client(proxy: &Proxy, ca_pem: &str) -> Result<Client, tokio_postgres::Error> {
    let cluster = shared_cluster();
    let url = format!(
        "{} password={} sslmode=require connect_timeout=10",
        conninfo(proxy, "localhost", cluster.superuser(), ""),
        cluster.password()
    );
    let tls = MakeRustlsConnect::new(client_config(ca_pem, false));
    let (client, connection) = tokio_postgres::connect(&url, tls).await?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_connects_with_verify_full_and_require_and_a_wrong_ca_is_refused() {
    let cluster = shared_cluster();
    let pki = Pki::new("verify-full CA");
    let proxy = tls_proxy(&pki, TlsMode::Allow, |_| {}).await;
    let user = cluster.superuser().to_owned();
    let ca = pki.ca_file().display().to_string();
    let other = Pki::new("some other CA");
    let other_ca = other.ca_file().display().to_string();
    let full = conninfo(
        &proxy,
        "localhost",
        &user,
        &format!("sslmode=verify-full sslrootcert={ca}"),
    );
    let require = conninfo(&proxy, "127.0.0.1", &user, "sslmode=require");
    let wrong = conninfo(
        &proxy,
        "localhost",
        &user,
        &format!("sslmode=verify-full sslrootcert={other_ca}"),
    );
    let (full, require, wrong) = tokio::task::spawn_blocking(move || {
        let cluster = shared_cluster();
        (
            psql(cluster, &full, "\\conninfo"),
            psql(cluster, &require, "SELECT 'over tls'"),
            psql(cluster, &wrong, "SELECT 1"),
        )
    })
    .await
    .unwrap();
    assert!(full.status.success(), "verify-full: {}", text(&full));
    assert!(
        text(&full).contains("SSL connection (protocol: TLSv1."),
        "verify-full: {}",
        text(&full)
    );
    assert!(require.status.success(), "require: {}", text(&require));
    assert_eq!(String::from_utf8_lossy(&require.stdout).trim(), "over tls");
    assert!(
        !wrong.status.success(),
        "a certificate of another CA must not verify"
    );
    assert!(
        text(&wrong).contains("certificate verify failed"),
        "wrong CA: {}",
        text(&wrong)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_refuses_cleartext_startups_with_28000_and_serves_tls_ones() {
    let cluster = shared_cluster();
    let pki = Pki::new("require CA");
    let proxy = tls_proxy(&pki, TlsMode::Require, |_| {}).await;
    let plain = format!(
        "{} password={}",
        conninfo(&proxy, "127.0.0.1", cluster.superuser(), "sslmode=disable"),
        cluster.password()
    );
    let Err(refused) = tokio_postgres::connect(&plain, tokio_postgres::NoTls).await else {
        panic!("a cleartext startup is refused");
    };
    assert_eq!(sqlstate(&refused), "28000", "{refused}");
    let message = refused.as_db_error().map(|e| e.message().to_owned());
    assert!(
        message.unwrap_or_default().contains("no encryption"),
        "{refused:?}"
    );
    let psql_plain = conninfo(&proxy, "127.0.0.1", cluster.superuser(), "sslmode=disable");
    let out = tokio::task::spawn_blocking(move || psql(shared_cluster(), &psql_plain, "SELECT 1"))
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("no encryption"), "{}", text(&out));
    let client = tls_client(&proxy, &pki.ca.cert_pem())
        .await
        .expect("TLS is served");
    let row = client.query_one("SELECT 40 + 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_answers_n_even_with_a_certificate() {
    let cluster = shared_cluster();
    let pki = Pki::new("disabled CA");
    let proxy = tls_proxy(&pki, TlsMode::Disable, |_| {}).await;
    let require = conninfo(&proxy, "127.0.0.1", cluster.superuser(), "sslmode=require");
    let prefer = conninfo(&proxy, "127.0.0.1", cluster.superuser(), "sslmode=prefer");
    let (require, prefer) = tokio::task::spawn_blocking(move || {
        let cluster = shared_cluster();
        (
            psql(cluster, &require, "SELECT 1"),
            psql(cluster, &prefer, "\\conninfo"),
        )
    })
    .await
    .unwrap();
    assert!(!require.status.success());
    assert!(
        text(&require).contains("server does not support SSL"),
        "{}",
        text(&require)
    );
    assert!(prefer.status.success(), "{}", text(&prefer));
    assert!(
        !text(&prefer).contains("SSL connection"),
        "{}",
        text(&prefer)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_over_tls() {
    let pki = Pki::new("pgbench CA");
    let proxy = tls_proxy(&pki, TlsMode::Require, |_| {}).await;
    let script = pki.dir.path().join("select.sql");
    std::fs::write(&script, "SELECT 1;\n").unwrap();
    let port = proxy.local_addr().port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        let cluster = shared_cluster();
        Command::new(cluster.bin_dir().join("pgbench"))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", cluster.superuser()])
            .args(["-n", "-c", "4", "-t", "50", "-f"])
            .arg(&script)
            .arg("postgres")
            .env("PGPASSWORD", cluster.password())
            .env("PGSSLMODE", "require")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("number of transactions actually processed: 200/200"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_over_tls_stops_the_running_query() {
    let pki = Pki::new("cancel CA");
    let proxy = tls_proxy(&pki, TlsMode::Require, |_| {}).await;
    let client = tls_client(&proxy, &pki.ca.cert_pem()).await.unwrap();
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(60)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // sslmode=require: tokio-postgres sends SSLRequest, then the CancelRequest inside TLS.
    let tls = MakeRustlsConnect::new(client_config(&pki.ca.cert_pem(), false));
    token
        .cancel_query(tls)
        .await
        .expect("cancel over TLS is accepted");
    let result = tokio::time::timeout(Duration::from_secs(20), sleeper)
        .await
        .expect("the query ends soon after the cancel")
        .unwrap();
    let error = result.expect_err("the query was cancelled");
    assert_eq!(sqlstate(&error), "57014", "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_serves_new_connections_and_open_sessions_stay() {
    let first = Pki::new("first CA");
    let proxy = tls_proxy(&first, TlsMode::Require, |_| {}).await;
    let open = tls_client(&proxy, &first.ca.cert_pem()).await.unwrap();
    let second = TestCa::new("second CA").unwrap();
    first.renew_with(&second);
    assert!(!open.is_closed());
    assert!(proxy.reload_tls().expect("the renewed files load"));
    let renewed = tls_client(&proxy, &second.cert_pem())
        .await
        .expect("a new connection gets the renewed certificate");
    let stale = tls_client(&proxy, &first.ca.cert_pem()).await;
    assert!(stale.is_err(), "the old certificate is no longer served");
    let row = open.query_one("SELECT 'still here'", &[]).await.unwrap();
    assert_eq!(row.get::<_, &str>(0), "still here");
    renewed.simple_query("SELECT 1").await.unwrap();
    // A broken file is refused, and the certificate in use stays.
    std::fs::write(&first.key_file, "not a key").unwrap();
    assert!(proxy.reload_tls().is_err());
    tls_client(&proxy, &second.cert_pem())
        .await
        .expect("the last good certificate is still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_of_the_palisade_binary() {
    let cluster = shared_cluster();
    let pki = Pki::new("binary CA");
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut config = crate::support::harness::proxy_config(cluster);
    config.proxy.listen = format!("127.0.0.1:{port}");
    config.tls = pki.tls_config(TlsMode::Require);
    let file = pki.dir.path().join("palisade.toml");
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("--config")
        .arg(&file)
        .env("PALISADE_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!(
        "host=localhost port={port} user={} password={} dbname=postgres sslmode=require connect_timeout=5",
        cluster.superuser(),
        cluster.password()
    );
    let connects = |ca: String| {
        let url = url.clone();
        async move {
            let tls = MakeRustlsConnect::new(client_config(&ca, false));
            tokio_postgres::connect(&url, tls).await.is_ok()
        }
    };
    wait_until("the binary serves TLS", Duration::from_secs(60), || {
        connects(pki.ca.cert_pem())
    })
    .await;
    let second = TestCa::new("binary's second CA").unwrap();
    pki.renew_with(&second);
    let pid = child.id().expect("the binary runs");
    signal::send(pid, signal::SIGHUP).unwrap();
    wait_until(
        "SIGHUP to load the renewed certificate",
        Duration::from_secs(30),
        || connects(second.cert_pem()),
    )
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP does not stop the proxy"
    );
    signal::send(pid, signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the binary stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// Sends a StartupMessage for the trust user over `stream` and reads to ReadyForQuery.
async fn start_session<S>(stream: &mut S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let startup =
        wire::startup_packet(196_608, &[("user", "tls_direct"), ("database", "postgres")]);
    stream.write_all(&startup).await.unwrap();
    let (tag, body) = wire::read_message(stream).await;
    assert_eq!(
        (tag, &body[..]),
        (b'R', &[0u8, 0, 0, 0][..]),
        "AuthenticationOk"
    );
    wire::read_until(stream, b'Z').await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_needs_alpn_postgresql_and_then_serves_a_session() {
    let cluster = shared_cluster();
    let pki = Pki::new("direct CA");
    let proxy = tls_proxy(&pki, TlsMode::Require, |c| {
        let mut direct = user("tls_direct", AuthMethod::Trust, None);
        direct.server_user = Some(cluster.superuser().into());
        direct.server_password = Some(cluster.password().into());
        c.users.push(direct);
    })
    .await;
    let addr = proxy.local_addr();
    let name = ServerName::try_from("localhost").unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(client_config(&pki.ca.cert_pem(), true)));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(name.clone(), tcp)
        .await
        .expect("direct handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
    start_session(&mut tls).await;
    let mut query = Vec::new();
    wire::frame(&mut query, b'Q', b"SELECT 'direct'\0");
    tls.write_all(&query).await.unwrap();
    let row = wire::read_until(&mut tls, b'D').await;
    assert!(row.ends_with(b"direct"), "{row:?}");

    // Without ALPN the handshake may finish, but no session follows.
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(client_config(&pki.ca.cert_pem(), false)));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    if let Ok(mut tls) = connector.connect(name, tcp).await {
        let startup = wire::startup_packet(196_608, &[("user", "tls_direct")]);
        let _ = tls.write_all(&startup).await;
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut tls, &mut buf),
        )
        .await
        .expect("the proxy closes the connection");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "no session without ALPN: {read:?}"
        );
    }
}

/// Runs `program args` in `dir` against the proxy on `port`, trusting `ca`.
async fn run_driver(
    program: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    port: u16,
    ca: PathBuf,
) -> Output {
    let cluster = shared_cluster();
    let mut command = Command::new(&program);
    command
        .args(args)
        .current_dir(dir)
        .env("PALISADE_PORT", port.to_string())
        .env("PALISADE_USER", cluster.superuser())
        .env("PALISADE_PASSWORD", cluster.password())
        .env("PALISADE_CA", ca);
    tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

const PYTHON_CHECK: &str = r#"
import asyncio, os, asyncpg, psycopg
kw = dict(host="127.0.0.1", port=int(os.environ["PALISADE_PORT"]), user=os.environ["PALISADE_USER"],
          password=os.environ["PALISADE_PASSWORD"], dbname="postgres", connect_timeout=10)
with psycopg.connect(sslmode="require", **kw) as c:
    assert c.pgconn.ssl_in_use, "psycopg: not over TLS"
    assert c.execute("SELECT 'psycopg'").fetchone()[0] == "psycopg"
with psycopg.connect(sslmode="verify-full", sslrootcert=os.environ["PALISADE_CA"], **kw) as c:
    assert c.pgconn.ssl_in_use
async def main():
    c = await asyncpg.connect(host=kw["host"], port=kw["port"], user=kw["user"],
                              password=kw["password"], database="postgres", ssl="require")
    assert c._transport.get_extra_info("ssl_object") is not None, "asyncpg: not over TLS"
    assert await c.fetchval("SELECT 'asyncpg'") == "asyncpg"
    await c.close()
asyncio.run(main())
print("python drivers over TLS: ok")
"#;

const NODE_CHECK: &str = r#"
const fs = require('node:fs')
const pg = require('pg')
const env = process.env
const base = { host: '127.0.0.1', port: Number(env.PALISADE_PORT), user: env.PALISADE_USER,
  password: env.PALISADE_PASSWORD, database: 'postgres', connectionTimeoutMillis: 10000 }
async function check(ssl) {
  const c = new pg.Client({ ...base, ssl })
  await c.connect()
  if (!c.connection.stream.encrypted) throw new Error('node-postgres: not over TLS')
  const r = await c.query("SELECT 'node' AS v")
  if (r.rows[0].v !== 'node') throw new Error('wrong answer')
  await c.end()
}
check({ rejectUnauthorized: false })
  .then(() => check({ ca: fs.readFileSync(env.PALISADE_CA) }))
  .then(() => console.log('node-postgres over TLS: ok'), (e) => { console.error(e); process.exit(1) })
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_node_drivers_connect_with_sslmode_require() {
    let drivers = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers");
    let setup = run_driver(
        "bash".into(),
        vec![drivers.join("setup.sh").display().to_string()],
        drivers.clone(),
        0,
        PathBuf::new(),
    )
    .await;
    assert!(setup.status.success(), "driver setup: {}", text(&setup));
    let pki = Pki::new("drivers CA");
    let proxy = tls_proxy(&pki, TlsMode::Require, |_| {}).await;
    let port = proxy.local_addr().port();
    let python = drivers.join("python/.venv/bin/python");
    let args = vec!["-c".to_owned(), PYTHON_CHECK.to_owned()];
    let py = run_driver(python, args, drivers.join("python"), port, pki.ca_file()).await;
    assert!(py.status.success(), "python: {}", text(&py));
    assert!(text(&py).contains("python drivers over TLS: ok"));
    // From node/, so that `require('pg')` finds the suite's node_modules.
    let args = vec!["-e".to_owned(), NODE_CHECK.to_owned()];
    let node = run_driver(
        "node".into(),
        args,
        drivers.join("node"),
        port,
        pki.ca_file(),
    )
    .await;
    assert!(node.status.success(), "node: {}", text(&node));
    assert!(text(&node).contains("node-postgres over TLS: ok"));
}

/// A primary and a replica serving TLS (`ssl = on`), and the CA that signed their certificate.
fn tls_cluster() -> &'static (LocalCluster, TestCa) {
    static CLUSTER: OnceLock<(LocalCluster, TestCa)> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let ca = TestCa::new("server CA").unwrap();
        let options = ClusterOptions {
            replicas: 1,
            tls: Some(ca.issue(&["localhost", "127.0.0.1"]).unwrap()),
            ..ClusterOptions::default()
        };
        let cluster = LocalCluster::start(options)
            .unwrap_or_else(|e| panic!("cannot start the TLS cluster: {e}"));
        (cluster, ca)
    })
}

fn backend_tls(mode: ServerTlsMode, ca_file: Option<PathBuf>) -> BackendConfig {
    BackendConfig {
        server_tls: mode,
        server_ca_file: ca_file,
        ..BackendConfig::default()
    }
}

/// Whether the proxy's server connection for `client` is encrypted, asked of the server.
async fn server_side_ssl(client: &Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_require_and_verify_full_encrypt_every_server_connection() {
    let (cluster, ca) = tls_cluster();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("server-ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    for (mode, ca) in [
        (ServerTlsMode::Require, None),
        (ServerTlsMode::VerifyFull, Some(ca_file.clone())),
        (ServerTlsMode::Prefer, None),
    ] {
        let proxy = start_proxy(cluster, |c| {
            c.backend.server_tls = mode;
            c.backend.server_ca_file = ca;
        })
        .await;
        let url = crate::support::harness::url(&proxy, cluster.superuser(), cluster.password());
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        tokio::spawn(connection);
        assert!(
            server_side_ssl(&client).await,
            "{mode:?}: the session's server connection"
        );
        client.batch_execute("BEGIN READ ONLY").await.unwrap();
        assert!(
            server_side_ssl(&client).await,
            "{mode:?}: a read-only transaction's"
        );
        client.batch_execute("COMMIT").await.unwrap();
        // The monitor's probes: on every node, over TLS.
        for node in 0..cluster.nodes().len() {
            let probes = cluster
                .psql(
                    node,
                    "SELECT count(*) FILTER (WHERE s.ssl) || '/' || count(*) FROM pg_stat_activity a \
                     JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'palisade-monitor'",
                )
                .unwrap();
            let (ssl, all) = probes.split_once('/').unwrap();
            assert!(
                all != "0" && ssl == all,
                "{mode:?}: node {node} probes: {probes}"
            );
        }
        drop(client);
        proxy.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_refuses_a_wrong_ca_and_a_server_without_tls_clearly() {
    let (cluster, _) = tls_cluster();
    let other = Pki::new("not the server's CA");
    let node = cluster.primary();
    let params = vec![
        ("user".to_owned(), cluster.superuser().to_owned()),
        ("database".to_owned(), "postgres".to_owned()),
    ];
    let secret = ServerSecret::Password(cluster.password().to_owned());
    let login = Login {
        user: cluster.superuser(),
        secret: Some(&secret),
        params: &params,
    };
    let timeout = Duration::from_secs(10);
    let wrong_ca = ServerTls::from_config(&backend_tls(
        ServerTlsMode::VerifyFull,
        Some(other.ca_file()),
    ))
    .unwrap();
    let error = backend::connect(node.host(), node.port, &login, &wrong_ca, timeout)
        .await
        .expect_err("a certificate of another CA is refused");
    assert!(matches!(error, ConnectError::Tls { .. }), "{error}");
    assert!(
        error.to_string().contains("invalid peer certificate"),
        "{error}"
    );

    // The shared cluster serves no TLS: require fails, prefer falls back.
    let plain = shared_cluster().primary();
    let require = ServerTls::from_config(&backend_tls(ServerTlsMode::Require, None)).unwrap();
    let error = backend::connect(plain.host(), plain.port, &login, &require, timeout)
        .await
        .expect_err("require needs a server with TLS");
    assert!(
        error
            .to_string()
            .contains("does not accept TLS (backend.server_tls = \"require\")"),
        "{error}"
    );
    let prefer = ServerTls::from_config(&backend_tls(ServerTlsMode::Prefer, None)).unwrap();
    let conn = backend::connect(plain.host(), plain.port, &login, &prefer, timeout)
        .await
        .expect("prefer falls back to cleartext");
    assert!(matches!(conn.rd, ReadHalf::Plain(_)));
    let conn = backend::connect(node.host(), node.port, &login, &prefer, timeout)
        .await
        .expect("prefer takes TLS when offered");
    assert!(matches!(conn.rd, ReadHalf::Tls(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_messages_and_pipelines_cross_tls_on_both_sides() {
    let (cluster, server_ca) = tls_cluster();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("server-ca.pem");
    std::fs::write(&ca_file, server_ca.cert_pem()).unwrap();
    let pki = Pki::new("both sides CA");
    let proxy = start_proxy(cluster, |c| {
        c.tls = pki.tls_config(TlsMode::Require);
        c.backend.server_tls = ServerTlsMode::VerifyFull;
        c.backend.server_ca_file = Some(ca_file);
    })
    .await;
    let client = tls_client(&proxy, &pki.ca.cert_pem()).await.unwrap();
    // 16 MB each way: far past rustls's buffers and the sockets', so writes
    // must wait for the peer on both legs.
    let big = "x".repeat(16 * 1024 * 1024);
    let row = client
        .query_one(
            "SELECT length($1::text), repeat('y', 16 * 1024 * 1024)",
            &[&big],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 16 * 1024 * 1024);
    assert_eq!(row.get::<_, &str>(1).len(), 16 * 1024 * 1024);
    // Queries issued at once are pipelined on the one connection.
    let client = Arc::new(client);
    let statement = client.prepare("SELECT $1::int * 2").await.unwrap();
    let mut queries = tokio::task::JoinSet::new();
    for i in 0..200i32 {
        let (client, statement) = (client.clone(), statement.clone());
        queries.spawn(async move { (i, client.query_one(&statement, &[&i]).await) });
    }
    while let Some(done) = queries.join_next().await {
        let (i, row) = done.unwrap();
        assert_eq!(row.unwrap().get::<_, i32>(0), i * 2);
    }
    assert!(server_side_ssl(&client).await);
}

#[test]
fn check_config_loads_the_certificate_and_key_it_names() {
    let pki = Pki::new("check-config CA");
    let file = pki.dir.path().join("palisade.toml");
    let config = |key_file: &Path| {
        format!(
            "[tls]\nmode = \"require\"\ncert_file = {:?}\nkey_file = {:?}\n\n\
             [[nodes]]\nhost = \"127.0.0.1\"\nport = 5432\n\n[[users]]\nname = \"app\"\npassword = \"pw\"\n",
            pki.cert_file, key_file
        )
    };
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_palisade"))
            .arg("check-config")
            .arg(&file)
            .output()
            .unwrap()
    };
    std::fs::write(&file, config(&pki.key_file)).unwrap();
    let good = check();
    assert!(good.status.success(), "{}", text(&good));
    // The key of another certificate does not go with this one.
    let other = pki.ca.issue(&["localhost"]).unwrap();
    let other_key = pki.dir.path().join("other-key.pem");
    std::fs::write(&other_key, other.key_pem).unwrap();
    let garbage = pki.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a key").unwrap();
    for key in [other_key, garbage] {
        std::fs::write(&file, config(&key)).unwrap();
        let bad = check();
        assert!(!bad.status.success(), "{}", text(&bad));
        assert!(text(&bad).contains("tls.key_file"), "{}", text(&bad));
    }
}

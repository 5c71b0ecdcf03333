//! Starting Palisade in-process in front of a test cluster, and connecting
//! to it (or straight to a node) with tokio-postgres the way an application
//! would.

use std::time::Duration;

use palisade::config::{AuthConfig, AuthMethod, Config, UserConfig};
use palisade::proxy::Proxy;
use palisade::topology::{Role, Topology};
use palisade_testkit::{LocalCluster, LocalNode};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::demo::demo_config;
use super::nodes::wait_until;

/// Roles the shared cluster's pg_hba.conf authenticates with methods other
/// than SCRAM, so the proxy's server-side md5, cleartext and trust paths run.
pub const SERVER_AUTH_HBA: [&str; 4] = [
    "host all palisade_md5 127.0.0.1/32 md5",
    "host all aq_md5 127.0.0.1/32 md5",
    "host all palisade_clear 127.0.0.1/32 password",
    "host all palisade_trust 127.0.0.1/32 trust",
];

/// The demo's config (every node, the superuser over SCRAM) listening on a
/// free port and probing fast, with no users looked up on the server: a
/// test that wants them turns `[auth]` on (see [`auth_query`]).
pub fn proxy_config(cluster: &LocalCluster) -> Config {
    let mut config = demo_config(cluster, "127.0.0.1:0".parse().unwrap());
    config.monitor.probe_interval_ms = 100;
    config.auth = AuthConfig::default();
    config
}

/// `[auth]` on, as the cluster's superuser, trusting a lookup for `ttl_ms`.
pub fn auth_query(cluster: &LocalCluster, config: &mut Config, ttl_ms: u64) {
    config.auth = AuthConfig {
        auth_user: Some(cluster.superuser().into()),
        auth_password: Some(cluster.password().into()),
        auth_cache_ms: ttl_ms,
        ..AuthConfig::default()
    };
}

/// How long a causal read waits for a replica to have the session's last
/// write in the tests, instead of the default 50 ms: on a loaded machine a
/// replica can take longer than that to replay, or to answer where it is,
/// and the read then falls back to the primary, as designed. Tests that
/// check where reads land should not depend on how fast the machine is;
/// a read that must fall back still does, only later.
pub const CAUSAL_WAIT_MS: u64 = 5_000;

/// A proxy on [`proxy_config`] with [`CAUSAL_WAIT_MS`], adjusted by `tweak`,
/// once it has found the primary.
pub async fn start_proxy(cluster: &LocalCluster, tweak: impl FnOnce(&mut Config)) -> Proxy {
    let mut config = proxy_config(cluster);
    config.consistency.causal_wait_ms = CAUSAL_WAIT_MS;
    tweak(&mut config);
    let proxy = Proxy::start(config).await.expect("proxy starts");
    // Many proxies starting at once on two cores can miss their first probe.
    wait_topology(&proxy, "the proxy to find the primary", |t| {
        t.primary().is_some()
    })
    .await;
    // Reads spread over the replicas only once the monitor has seen them
    // streaming: give it a moment (not an assertion: a test may start with
    // a node down on purpose).
    let seen_all = |t: &Topology| {
        t.nodes.iter().all(|n| {
            n.healthy
                && (n.role == Role::Primary || n.role == Role::Replica && n.replication.streaming)
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !seen_all(&proxy.topology()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy
}

/// Waits until the proxy's published topology satisfies `check`.
pub async fn wait_topology(proxy: &Proxy, what: &str, check: impl Fn(&Topology) -> bool) {
    wait_until(what, Duration::from_secs(60), || async {
        check(&proxy.topology())
    })
    .await;
}

pub fn user(name: &str, auth: AuthMethod, password: Option<&str>) -> UserConfig {
    UserConfig {
        name: name.into(),
        auth,
        password: password.map(Into::into),
        scram_verifier: None,
        server_user: None,
        server_password: None,
    }
}

fn conninfo(host: &str, port: u16, user: &str, password: &str, database: &str) -> String {
    format!(
        "host={host} port={port} user={user} password={password} dbname={database} connect_timeout=10"
    )
}

/// `user` into database `postgres` through the proxy.
pub fn url(proxy: &Proxy, user: &str, password: &str) -> String {
    let addr = proxy.local_addr();
    conninfo(
        &addr.ip().to_string(),
        addr.port(),
        user,
        password,
        "postgres",
    )
}

/// The superuser into the proxy's admin console (the virtual database `palisade`).
pub fn console_url(proxy: &Proxy, cluster: &LocalCluster) -> String {
    let addr = proxy.local_addr();
    conninfo(
        &addr.ip().to_string(),
        addr.port(),
        cluster.superuser(),
        cluster.password(),
        "palisade",
    )
}

/// The superuser straight into `database` on `node`, bypassing the proxy.
pub fn node_url(cluster: &LocalCluster, node: &LocalNode, database: &str) -> String {
    conninfo(
        node.host(),
        node.port,
        cluster.superuser(),
        cluster.password(),
        database,
    )
}

/// A client whose notices and notifications arrive on the returned channel.
pub async fn connect_with(
    conn_str: &str,
) -> Result<(Client, mpsc::UnboundedReceiver<AsyncMessage>), tokio_postgres::Error> {
    let (client, mut connection) = tokio_postgres::connect(conn_str, NoTls).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = futures_util::StreamExt::next(&mut messages).await {
            let _ = tx.send(m);
        }
    });
    Ok((client, rx))
}

/// The superuser, through the proxy.
pub async fn connect(
    proxy: &Proxy,
    cluster: &LocalCluster,
) -> (Client, mpsc::UnboundedReceiver<AsyncMessage>) {
    connect_with(&url(proxy, cluster.superuser(), cluster.password()))
        .await
        .expect("connect through the proxy")
}

/// The superuser through the proxy as application `app`.
pub async fn client(proxy: &Proxy, cluster: &LocalCluster, app: &str) -> Client {
    connect_with(&app_url(proxy, cluster, app))
        .await
        .unwrap_or_else(|e| panic!("connect as {app}: {e}"))
        .0
}

/// The superuser straight to `node`, bypassing the proxy (which may fail:
/// the node may be down).
pub async fn connect_node(
    cluster: &LocalCluster,
    node: &LocalNode,
) -> Result<Client, tokio_postgres::Error> {
    connect_with(&node_url(cluster, node, "postgres"))
        .await
        .map(|(c, _)| c)
}

/// A proxy in front of the shared cluster and one superuser client through it.
pub async fn proxied() -> (Proxy, Client) {
    let cluster = super::shared_cluster();
    let proxy = start_proxy(cluster, |_| {}).await;
    let (client, _) = connect(&proxy, cluster).await;
    (proxy, client)
}

/// The superuser's connection string, tagged with an application_name so a
/// test's pooled server connections are its own.
pub fn app_url(proxy: &Proxy, cluster: &LocalCluster, app: &str) -> String {
    format!(
        "{} application_name={app}",
        url(proxy, cluster.superuser(), cluster.password())
    )
}

/// The SQLSTATE of a failed call.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no sqlstate: {e}"))
}

//! Starting Palisade in-process in front of a test cluster, and connecting
//! to it with tokio-postgres the way an application would.

use palisade::cluster::LocalCluster;
use palisade::config::{AuthMethod, Config, UserConfig};
use palisade::proxy::Proxy;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// Roles the shared cluster's pg_hba.conf authenticates with methods other
/// than SCRAM, so the proxy's server-side md5, cleartext and trust paths run.
pub const SERVER_AUTH_HBA: [&str; 3] = [
    "host all palisade_md5 127.0.0.1/32 md5",
    "host all palisade_clear 127.0.0.1/32 password",
    "host all palisade_trust 127.0.0.1/32 trust",
];

/// The demo's config (every node, the superuser over SCRAM) listening on a
/// free port and probing fast; `tweak` adjusts it before start.
pub async fn start_proxy(cluster: &LocalCluster, tweak: impl FnOnce(&mut Config)) -> Proxy {
    let mut config = palisade::demo::demo_config(cluster, "127.0.0.1:0".parse().unwrap());
    config.monitor.probe_interval_ms = 100;
    tweak(&mut config);
    let proxy = Proxy::start(config).await.expect("proxy starts");
    // Many proxies starting at once on two cores can miss their first probe.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while proxy.topology().primary().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy found no primary: {:?}",
            proxy.topology()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    proxy
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

pub fn url(proxy: &Proxy, user: &str, password: &str) -> String {
    let addr = proxy.local_addr();
    format!(
        "host={} port={} user={user} password={password} dbname=postgres connect_timeout=10",
        addr.ip(),
        addr.port()
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

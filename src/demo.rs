//! `palisade demo`: a local primary + replicas from the machine's PostgreSQL
//! binaries, Palisade in front, and one line of psql to connect. Failover
//! works on it: kill the primary and a replica takes over; `REJOIN node0`
//! in the admin console rewinds the old primary into a replica
//! ([`LocalRejoin`], which the tests use too).

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;

use crate::cluster::{ClusterOptions, LocalCluster};
use crate::config::{
    AuthMethod, BackendConfig, Config, ConsistencyConfig, FailoverConfig, MonitorConfig,
    NodeConfig, PoolConfig, ProxyConfig, RoutingConfig, UserConfig,
};
use crate::control::operator::NodeOperator;
use crate::proxy::Proxy;

const DEMO_USER: &str = "postgres";
const DEMO_PASSWORD: &str = "palisade";

/// Runs the demo until Ctrl-C or SIGTERM, then tears everything down.
pub async fn run(listen: SocketAddr, replicas: usize) -> Result<(), String> {
    eprintln!("palisade demo: starting a primary and {replicas} replica(s)...");
    let options = ClusterOptions {
        replicas,
        password: DEMO_PASSWORD.into(),
        ..ClusterOptions::default()
    };
    let cluster = tokio::task::spawn_blocking(move || LocalCluster::start(options))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let cluster = Arc::new(cluster);
    let mut config = demo_config(&cluster, listen);
    config.failover.state_file = Some(cluster.base_dir().join("palisade-state.toml"));
    let operator = Arc::new(LocalRejoin::new(cluster.clone()));
    let proxy = match Proxy::start_with(config, operator).await {
        Ok(p) => p,
        Err(e) => {
            stop(cluster).await;
            return Err(e.to_string());
        }
    };
    for node in cluster.nodes() {
        eprintln!(
            "  {} on 127.0.0.1:{} ({})",
            node.name,
            node.port,
            node.data_dir.display()
        );
    }
    let addr = proxy.local_addr();
    println!(
        "psql \"postgresql://{DEMO_USER}:{DEMO_PASSWORD}@{}:{}/postgres\"",
        addr.ip(),
        addr.port()
    );
    eprintln!("palisade demo: ready; Ctrl-C stops the proxy and the cluster");
    wait_for_signal().await;
    eprintln!("palisade demo: stopping");
    proxy.shutdown().await;
    stop(cluster).await;
    Ok(())
}

/// The config the demo runs with: every local node, one SCRAM user.
pub fn demo_config(cluster: &LocalCluster, listen: SocketAddr) -> Config {
    Config {
        proxy: ProxyConfig {
            listen: listen.to_string(),
            ..ProxyConfig::default()
        },
        backend: BackendConfig {
            user: cluster.superuser().into(),
            password: Some(cluster.password().into()),
            database: "postgres".into(),
        },
        monitor: MonitorConfig::default(),
        pool: PoolConfig::default(),
        routing: RoutingConfig::default(),
        consistency: ConsistencyConfig::default(),
        failover: FailoverConfig::default(),
        nodes: cluster
            .nodes()
            .iter()
            .map(|n| NodeConfig {
                name: Some(n.name.clone()),
                host: n.host().into(),
                port: n.port,
                weight: 1,
            })
            .collect(),
        users: vec![UserConfig {
            name: cluster.superuser().into(),
            auth: AuthMethod::ScramSha256,
            password: Some(cluster.password().into()),
            scram_verifier: None,
            server_user: None,
            server_password: None,
        }],
    }
}

/// Stops the cluster and removes its directory (when the proxy, which
/// shares it for rejoins, has let go of it).
async fn stop(cluster: Arc<LocalCluster>) {
    let _ = tokio::task::spawn_blocking(move || match Arc::try_unwrap(cluster) {
        Ok(mut cluster) => cluster.stop(),
        Err(shared) => shared.nodes().iter().for_each(|n| {
            let _ = n.stop();
        }),
    })
    .await;
}

/// Rejoins a node of a [`LocalCluster`] with [`LocalCluster::rejoin`]
/// (pg_rewind onto the new primary, then a standby of it); nodes are
/// matched by their configured names, which the demo's config takes from
/// the cluster.
pub struct LocalRejoin {
    cluster: Arc<LocalCluster>,
}

impl LocalRejoin {
    pub fn new(cluster: Arc<LocalCluster>) -> LocalRejoin {
        LocalRejoin { cluster }
    }

    fn index(&self, node: &NodeConfig) -> Result<usize, String> {
        let name = node.display_name();
        self.cluster
            .nodes()
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| format!("{name} is no node of the local cluster"))
    }
}

#[async_trait]
impl NodeOperator for LocalRejoin {
    async fn rejoin(&self, node: &NodeConfig, primary: &NodeConfig) -> Result<(), String> {
        let (node, primary) = (self.index(node)?, self.index(primary)?);
        let cluster = self.cluster.clone();
        tokio::task::spawn_blocking(move || cluster.rejoin(node, primary))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    async fn fence(&self, _node: &NodeConfig) -> Result<bool, String> {
        Ok(false)
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

//! `palisade demo`: a local primary + replicas from the machine's PostgreSQL
//! binaries, Palisade in front, and one line of psql to connect.

use std::net::SocketAddr;

use crate::cluster::{ClusterOptions, LocalCluster};
use crate::config::{
    AuthMethod, BackendConfig, Config, ConsistencyConfig, FailoverConfig, MonitorConfig,
    NodeConfig, PoolConfig, ProxyConfig, RoutingConfig, UserConfig,
};
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
    let config = demo_config(&cluster, listen);
    let proxy = match Proxy::start(config).await {
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

async fn stop(mut cluster: LocalCluster) {
    let _ = tokio::task::spawn_blocking(move || cluster.stop()).await;
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

//! `palisade demo`: a local primary + replicas from the machine's PostgreSQL
//! binaries (started by `palisade-testkit`), Palisade in front, and one line
//! of psql to connect. Failover works on it: kill the primary and a replica
//! takes over; `REJOIN node0` in the admin console (which admits the
//! superuser, `postgres`, as its only admin) rewinds the old primary into a
//! replica ([`LocalRejoin`]). The demo lives in the binary, not the
//! library: the proxy itself ships no test harness.

mod local;

use std::net::SocketAddr;
use std::sync::Arc;

use palisade::proxy::Proxy;
use palisade_testkit::{ClusterOptions, LocalCluster};

pub use local::{demo_config, LocalRejoin};

const DEMO_USER: &str = "postgres";
const DEMO_PASSWORD: &str = "palisade";

/// The demo's HTTP endpoint: the proxy's port + 1000 (port 0 stays 0).
pub fn http_beside(listen: SocketAddr) -> SocketAddr {
    let port = match listen.port() {
        0 => 0,
        p => p.saturating_add(1000),
    };
    SocketAddr::new(listen.ip(), port)
}

/// Runs the demo until Ctrl-C or SIGTERM, then tears everything down; the
/// status page and metrics are served on `http`.
pub async fn run(listen: SocketAddr, replicas: usize, http: SocketAddr) -> Result<(), String> {
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
    config.http.listen = http.to_string();
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
    eprintln!(
        "  admin console ({DEMO_USER} is its admin): psql \"postgresql://{DEMO_USER}:{DEMO_PASSWORD}@{}:{}/palisade\"",
        addr.ip(),
        addr.port()
    );
    if let Some(http) = proxy.http_addr() {
        println!("status: http://{http}/");
    }
    eprintln!("palisade demo: ready; Ctrl-C stops the proxy and the cluster");
    super::wait_for_signal().await;
    eprintln!("palisade demo: stopping");
    proxy.shutdown().await;
    stop(cluster).await;
    Ok(())
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

//! `palisade demo`: a local primary + replicas from the machine's PostgreSQL
//! binaries (started by `palisade-testkit`), Palisade in front, and one line
//! of psql to connect. Clients may use TLS: a CA and a certificate for
//! `localhost` and 127.0.0.1 are made at start. Failover works on it: kill
//! the primary and a replica takes over; `REJOIN node0` in the admin console
//! (which admits the superuser, `postgres`, as its only admin) rewinds the
//! old primary into a replica ([`LocalRejoin`]). Roles other than the
//! superuser are looked up on the primary by the auth query. The demo lives in the
//! binary, not the library: the proxy itself ships no test harness.

mod local;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use palisade::config::{Config, TlsConfig, TlsMode};
use palisade::proxy::Proxy;
use palisade_testkit::tls::TestCa;
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
    let ca_file = match demo_tls(&mut config, cluster.base_dir()) {
        Ok(ca_file) => ca_file,
        Err(e) => {
            stop(cluster).await;
            return Err(format!("cannot make the demo's TLS certificate: {e}"));
        }
    };
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
    eprintln!(
        "  other roles are looked up on the primary (auth query): CREATE ROLE app LOGIN PASSWORD '...' logs in at once"
    );
    if let Some(http) = proxy.http_addr() {
        println!("status: http://{http}/");
    }
    eprintln!(
        "  TLS: a certificate made at start (sslmode=require, or verify-full with sslrootcert={})",
        ca_file.display()
    );
    eprintln!("palisade demo: ready; Ctrl-C stops the proxy and the cluster");
    super::serve_until_signal(&proxy).await;
    eprintln!("palisade demo: draining (a second Ctrl-C stops at once)");
    super::drain(proxy).await;
    stop(cluster).await;
    Ok(())
}

/// Serves TLS with a certificate for `localhost` and 127.0.0.1 signed by
/// a CA made now, both written under `dir`; returns the CA's file.
fn demo_tls(config: &mut Config, dir: &Path) -> Result<PathBuf, String> {
    let ca = TestCa::new("Palisade demo CA").map_err(|e| e.to_string())?;
    let cert = ca
        .issue(&["localhost", "127.0.0.1"])
        .map_err(|e| e.to_string())?;
    let tls_dir = dir.join("demo-tls");
    std::fs::create_dir_all(&tls_dir).map_err(|e| e.to_string())?;
    let (cert_file, key_file) = cert.write(&tls_dir).map_err(|e| e.to_string())?;
    let ca_file = tls_dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).map_err(|e| e.to_string())?;
    config.tls = TlsConfig {
        mode: Some(TlsMode::Allow),
        cert_file: Some(cert_file),
        key_file: Some(key_file),
    };
    Ok(ca_file)
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

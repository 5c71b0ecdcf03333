//! `palisade demo`: a local primary + replicas from the machine's PostgreSQL
//! binaries (started by `palisade-testkit`), Palisade in front, and one line
//! of psql to connect. Clients may use TLS: a CA and a certificate for
//! `localhost` and 127.0.0.1 are made at start. Failover works on it: kill
//! the primary and a replica takes over; `REJOIN node0` in the admin console
//! (which admits the superuser, `postgres`, as its only admin) rewinds the
//! old primary into a replica ([`LocalRejoin`]). Roles other than the
//! superuser are looked up on the primary by the auth query. The demo lives in the
//! binary, not the library: the proxy itself ships no test harness.
//!
//! `--proxies N` starts etcd (the `etcd` binary from PATH: the Debian
//! package `etcd-server`) and N proxies on consecutive ports sharing the
//! epoch through it (`failover.store = "etcd"`).

mod local;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use palisade::config::{Config, StoreKind, TlsConfig, TlsMode};
use palisade::proxy::Proxy;
use palisade_testkit::tls::TestCa;
use palisade_testkit::{ClusterOptions, LocalCluster, LocalEtcd};

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

/// The `i`th address from `listen`: consecutive ports (port 0 stays 0).
fn nth(listen: SocketAddr, i: usize) -> SocketAddr {
    let step = u16::try_from(i).unwrap_or(u16::MAX);
    let port = match listen.port() {
        0 => 0,
        p => p.saturating_add(step),
    };
    SocketAddr::new(listen.ip(), port)
}

/// What the demo runs: its cluster, one proxy or several, and with several
/// the etcd they share the epoch through.
pub struct Demo {
    pub listen: SocketAddr,
    pub replicas: usize,
    pub http: SocketAddr,
    pub proxies: usize,
}

/// Runs the demo until Ctrl-C or SIGTERM, then tears everything down; the
/// status page and metrics are served on `http` (and the next ports, one
/// per proxy).
pub async fn run(demo: Demo) -> Result<(), String> {
    let etcd = match demo.proxies {
        0 | 1 => None,
        _ => Some(start_etcd().await?),
    };
    eprintln!(
        "palisade demo: starting a primary and {} replica(s)...",
        demo.replicas
    );
    let options = ClusterOptions {
        replicas: demo.replicas,
        password: DEMO_PASSWORD.into(),
        ..ClusterOptions::default()
    };
    let cluster = tokio::task::spawn_blocking(move || LocalCluster::start(options))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let cluster = Arc::new(cluster);
    let proxies = match start_proxies(&demo, &cluster, etcd.as_ref()).await {
        Ok(proxies) => proxies,
        Err(e) => {
            stop(cluster).await;
            return Err(e);
        }
    };
    announce(&cluster, &proxies, etcd.as_ref());
    eprintln!("palisade demo: ready; Ctrl-C stops the proxies and the cluster");
    super::serve_until_signal(&proxies[0]).await;
    eprintln!("palisade demo: draining (a second Ctrl-C stops at once)");
    for proxy in proxies {
        super::drain(proxy).await;
    }
    stop(cluster).await;
    drop(etcd);
    Ok(())
}

/// etcd from PATH (the Debian package `etcd-server`), on free loopback ports.
async fn start_etcd() -> Result<LocalEtcd, String> {
    eprintln!("palisade demo: starting etcd for the proxies to share the epoch...");
    tokio::task::spawn_blocking(LocalEtcd::start)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// The demo's proxies: one with a state file, or several sharing `etcd`.
async fn start_proxies(
    demo: &Demo,
    cluster: &Arc<LocalCluster>,
    etcd: Option<&LocalEtcd>,
) -> Result<Vec<Proxy>, String> {
    let mut proxies = Vec::new();
    for i in 0..demo.proxies.max(1) {
        let mut config = demo_config(cluster, nth(demo.listen, i));
        config.http.listen = nth(demo.http, i).to_string();
        match etcd {
            None => {
                config.failover.state_file = Some(cluster.base_dir().join("palisade-state.toml"));
            }
            Some(etcd) => {
                config.failover.store = StoreKind::Etcd;
                config.failover.etcd_endpoints = vec![etcd.endpoint()];
                config.failover.etcd_prefix = "/palisade/demo".into();
                config.failover.etcd_name = Some(format!("palisade{i}"));
            }
        }
        demo_tls(&mut config, cluster.base_dir())
            .map_err(|e| format!("cannot make the demo's TLS certificate: {e}"))?;
        let operator = Arc::new(LocalRejoin::new(cluster.clone()));
        proxies.push(
            Proxy::start_with(config, operator)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(proxies)
}

/// The nodes, one psql line per proxy, the consoles and status pages.
fn announce(cluster: &LocalCluster, proxies: &[Proxy], etcd: Option<&LocalEtcd>) {
    for node in cluster.nodes() {
        eprintln!(
            "  {} on 127.0.0.1:{} ({})",
            node.name,
            node.port,
            node.data_dir.display()
        );
    }
    if let Some(etcd) = etcd {
        eprintln!(
            "  etcd on {} (the proxies share the epoch: SHOW PEERS)",
            etcd.endpoint()
        );
    }
    for proxy in proxies {
        let addr = proxy.local_addr();
        println!(
            "psql \"postgresql://{DEMO_USER}:{DEMO_PASSWORD}@{}:{}/postgres\"",
            addr.ip(),
            addr.port()
        );
    }
    let addr = proxies[0].local_addr();
    eprintln!(
        "  admin console ({DEMO_USER} is its admin): psql \"postgresql://{DEMO_USER}:{DEMO_PASSWORD}@{}:{}/palisade\"",
        addr.ip(),
        addr.port()
    );
    eprintln!(
        "  other roles are looked up on the primary (auth query): CREATE ROLE app LOGIN PASSWORD '...' logs in at once"
    );
    for http in proxies.iter().filter_map(Proxy::http_addr) {
        println!("status: http://{http}/");
    }
    eprintln!(
        "  TLS: a certificate made at start (sslmode=require, or verify-full with sslrootcert={})",
        cluster.base_dir().join("demo-tls/ca.pem").display()
    );
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

//! The proxy's side of a local cluster: the config that puts Palisade in
//! front of every node of a [`LocalCluster`], and [`LocalRejoin`], the
//! [`NodeOperator`] that rewinds a failed primary of it into a replica.
//! `palisade demo` runs on them, and the integration tests include this
//! file too (`#[path]`), so both build their proxy the same way.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use palisade::config::{
    AdminConfig, AuthConfig, AuthMethod, BackendConfig, Config, ConsistencyConfig, FailoverConfig,
    HttpConfig, MonitorConfig, NodeConfig, PoolConfig, ProxyConfig, RoutingConfig, TlsConfig,
    UserConfig,
};
use palisade::control::operator::NodeOperator;
use palisade_testkit::LocalCluster;

/// The config the demo runs with: every local node, one SCRAM user (the
/// cluster's superuser), who is also the console's only admin, and every
/// other role looked up on the primary by the auth query, as the superuser.
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
            ..BackendConfig::default()
        },
        monitor: MonitorConfig::default(),
        pool: PoolConfig::default(),
        routing: RoutingConfig::default(),
        consistency: ConsistencyConfig::default(),
        failover: FailoverConfig::default(),
        source: None,
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
        admin: AdminConfig {
            admin_users: vec![cluster.superuser().into()],
            stats_users: Vec::new(),
        },
        auth: AuthConfig {
            auth_user: Some(cluster.superuser().into()),
            auth_password: Some(cluster.password().into()),
            ..AuthConfig::default()
        },
        http: HttpConfig::default(),
        tls: TlsConfig::default(),
    }
}

/// Rejoins a node of a [`LocalCluster`] with [`LocalCluster::rejoin`]
/// (pg_rewind onto the new primary, then a standby of it); nodes are
/// matched by their configured names, which [`demo_config`] takes from
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

//! Assembles a running proxy: the control plane's monitor, the listener, and
//! one task per client. [`Proxy::start`] is what `palisade --config`, the
//! demo and the integration tests all run.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::backend::pool::ServerPool;
use crate::config::{Config, ConfigError};
use crate::control::operator::{CommandOperator, NodeOperator};
use crate::control::{FunctionCatalog, Monitor};
use crate::frontend::auth::Authenticator;
use crate::frontend::cancel::CancelRegistry;
use crate::frontend::load::NodeLoads;
use crate::frontend::{self, Shared};
use crate::route::ReadPolicy;
use crate::topology::{Topology, TopologyHandle};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running proxy. Dropping it without [`Proxy::shutdown`] aborts its tasks.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    topology: TopologyHandle,
    shutdown: watch::Sender<bool>,
    listener: JoinHandle<()>,
    reaper: JoinHandle<()>,
    refresher: JoinHandle<()>,
    monitor: Monitor,
}

impl Proxy {
    /// Validates the config, probes the nodes once, and starts listening.
    /// A rejoin or fence runs the config's `failover.*_command`s.
    pub async fn start(config: Config) -> Result<Proxy, StartError> {
        let operator = Arc::new(CommandOperator::new(&config.failover));
        Proxy::start_with(config, operator).await
    }

    /// [`Proxy::start`] with the failover's hooks supplied by the caller
    /// (the demo's and the tests' local clusters rejoin nodes themselves).
    pub async fn start_with(
        config: Config,
        operator: Arc<dyn NodeOperator>,
    ) -> Result<Proxy, StartError> {
        config.validate()?;
        let addr = config.listen_addr()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartError::Listen { addr, source })?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let topology = TopologyHandle::new(Topology::from_config(&config.nodes));
        let config = Arc::new(config);
        let (control, commands) = mpsc::channel(16);
        let monitor = Monitor::start(
            config.clone(),
            topology.clone(),
            commands,
            operator,
            shutdown_rx.clone(),
        )
        .await;
        let pool = Arc::new(ServerPool::new(
            &config.pool,
            config.proxy.connect_timeout(),
        ));
        let reaper = tokio::spawn(prune_idle(
            pool.clone(),
            config.pool.idle_timeout(),
            shutdown_rx.clone(),
        ));
        let catalog = Arc::new(FunctionCatalog::new(&config, topology.clone()));
        let refresher = tokio::spawn(
            catalog
                .clone()
                .refresh_loop(config.routing.function_refresh(), shutdown_rx.clone()),
        );
        let shared = Arc::new(Shared {
            pool,
            auth: Authenticator::new(&config),
            catalog,
            loads: NodeLoads::new(config.nodes.len()),
            read_policy: ReadPolicy::from_config(&config.routing),
            tickets: AtomicU64::new(0),
            unparsable: AtomicU64::new(0),
            control,
            config,
            topology: topology.clone(),
            cancels: Arc::new(CancelRegistry::default()),
            shutdown: shutdown_rx,
        });
        info!(%addr, "palisade is listening");
        let listener = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Proxy {
            addr,
            shared,
            topology,
            shutdown,
            listener,
            reaper,
            refresher,
            monitor,
        })
    }

    /// The address clients connect to (useful when listening on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many statements the classifier could not parse (they ran on the primary).
    pub fn unparsable_statements(&self) -> u64 {
        self.shared.unparsable.load(Ordering::Relaxed)
    }

    /// Requests routed to each node so far, in config order.
    pub fn routed(&self) -> Vec<u64> {
        (0..self.shared.config.nodes.len())
            .map(|n| self.shared.loads.routed(n))
            .collect()
    }

    /// The current published topology.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology.load()
    }

    /// Stops accepting, tells every session to end, and waits for the
    /// listener and the control plane to stop.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let _ = (&mut self.listener).await;
        let _ = (&mut self.reaper).await;
        let _ = (&mut self.refresher).await;
        self.monitor.join().await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.listener.abort();
        self.reaper.abort();
        self.refresher.abort();
    }
}

/// Closes idle server connections once they outlive the idle timeout.
async fn prune_idle(
    pool: Arc<ServerPool>,
    idle_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval((idle_timeout / 2).max(Duration::from_millis(100)));
    loop {
        tokio::select! {
            _ = tick.tick() => pool.prune(),
            _ = shutdown.changed() => return,
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let limit = Arc::new(Semaphore::new(shared.config.proxy.max_client_connections));
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Over the limit the client is still served, with 53300, so it learns why.
                let permit = limit.clone().try_acquire_owned().ok();
                tokio::spawn(frontend::serve(stream, peer, shared.clone(), permit));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

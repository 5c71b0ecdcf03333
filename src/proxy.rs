//! Assembles a running proxy, and is the one place that wires it: the epoch
//! store chosen from the config, the control plane's named tasks (a prober
//! per node, the driver, the function catalog's refresher (which loads the
//! backend database's set before the proxy listens), the idle-connection reaper,
//! the listener, the HTTP endpoint when `[http] listen` is set), and a
//! [`TaskTracker`] for the client sessions and the driver's action tasks, so
//! that shutdown waits for them.
//! [`Proxy::start`] is what `palisade --config`, the demo and the
//! integration tests all run.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::admin::Console;
use crate::backend::pool::ServerPool;
use crate::config::{Config, ConfigError, StoreKind};
use crate::control::commits::{CommitLog, Sampler};
use crate::control::driver::{Coordination, Driver, Wiring};
use crate::control::etcd;
use crate::control::handle::Request;
use crate::control::monitor;
use crate::control::operator::{CommandOperator, NodeOperator};
use crate::control::peers::PeersWatch;
use crate::control::refresher::{FunctionsLoaded, Refresher};
use crate::control::{ControlHandle, EpochStore, FunctionCatalog, MemoryStore, StateFile};
use crate::frontend::admission::{self, Admission};
use crate::frontend::auth::Authenticator;
use crate::frontend::cancel::CancelRegistry;
use crate::frontend::load::NodeLoads;
use crate::frontend::{self, Shared};
use crate::tls::{ClientTls, ServerTls, TlsError};
use crate::topology::{PublishedFunctions, Topology, TopologyHandle, MAX_NODES};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Etcd(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How long shutdown waits, once the drain is over, for sessions and
/// action tasks to end.
const DRAIN: Duration = Duration::from_secs(10);

/// A background task, by name, so shutdown can say which one failed.
struct Named {
    name: String,
    handle: JoinHandle<()>,
}

/// Spawns `task` as `name`, its logs in a span of that name.
/// Loads the VOLATILE-function list of the backend's database (the one
/// clients most likely use) before the proxy listens, then keeps it fresh.
async fn start_catalog(refresher: Option<Refresher>, config: &Config) -> Option<Named> {
    let refresher = refresher?;
    let limit = config.proxy.connect_timeout() + config.monitor.probe_timeout();
    refresher.preload(&config.backend.database, limit).await;
    Some(spawn_named("catalog", refresher.run()))
}

fn spawn_named(name: impl Into<String>, task: impl Future<Output = ()> + Send + 'static) -> Named {
    let name = name.into();
    let span = tracing::info_span!("task", task = %name);
    Named {
        handle: tokio::spawn(task.instrument(span)),
        name,
    }
}

/// A running proxy. Dropping it without [`Proxy::shutdown`] aborts its tasks.
pub struct Proxy {
    addr: SocketAddr,
    /// The monitoring endpoint's address, when `[http] listen` is set.
    http_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    topology: TopologyHandle,
    control: ControlHandle,
    shutdown: watch::Sender<bool>,
    /// Listener first: it stops before the rest.
    tasks: Vec<Named>,
    /// The driver's action tasks.
    tracker: TaskTracker,
    /// Client connections, which the drain waits for.
    sessions: TaskTracker,
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
        let client_tls = ClientTls::load(&config.tls)?;
        let server_tls = ServerTls::from_config(&config.backend)?;
        let (listener, addr) = bind_clients(&config)?;
        let http = bind_http(&config).await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let topology = TopologyHandle::new(Topology::from_config(&config.nodes));
        let config = Arc::new(config);
        let tracker = TaskTracker::new();
        let (control, commands) = ControlHandle::channel();
        let (loaded, functions) = mpsc::unbounded_channel();
        let (peers, mut tasks) = start_control(ControlWiring {
            config: config.clone(),
            topology: topology.clone(),
            commands,
            functions,
            operator,
            tracker: tracker.clone(),
            tls: server_tls.clone(),
            shutdown: shutdown_rx.clone(),
            journal: control.journal(),
        })
        .await?;
        let pool = start_pool(&config, &server_tls, &shutdown_rx, &mut tasks);
        let commits = Arc::new(CommitLog::default());
        let sampler = Sampler::new(commits.clone(), &config, &server_tls, topology.clone());
        tasks.push(spawn_named("commits", sampler.run(shutdown_rx.clone())));
        let auth = Authenticator::new(&config, server_tls.clone(), topology.clone());
        let catalog = Arc::new(FunctionCatalog::new(&config, server_tls, topology.clone()));
        let refresher = Refresher::new(
            catalog,
            topology.clone(),
            loaded,
            config.routing.function_refresh(),
            shutdown_rx.clone(),
        );
        tasks.extend(start_catalog(refresher, &config).await);
        let shared = Arc::new(Shared {
            commits,
            pool,
            auth: ArcSwap::from_pointee(auth),
            tls: client_tls,
            loads: NodeLoads::new(MAX_NODES),
            tickets: AtomicU64::new(0),
            unparsable: AtomicU64::new(0),
            classify: Default::default(),
            counters: Default::default(),
            admin: Console::new(control.clone(), peers),
            admission: Admission::new(&config.proxy),
            drain: watch::channel(false).0,
            clients: Default::default(),
            pause: Default::default(),
            config: Arc::new(ArcSwap::new(config)),
            topology: topology.clone(),
            cancels: Arc::new(CancelRegistry::default()),
            shutdown: shutdown_rx,
        });
        info!(%addr, "palisade is listening");
        let sessions = TaskTracker::new();
        let accept = accept_loop(listener, shared.clone(), sessions.clone());
        tasks.insert(0, spawn_named("listener", accept));
        let http_addr = http.map(|http| serve_http(http, &shared, &mut tasks));
        Ok(Proxy {
            addr,
            http_addr,
            shared,
            topology,
            control,
            shutdown,
            tasks,
            tracker,
            sessions,
        })
    }

    /// The address clients connect to (useful when listening on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the clients' listener is open (it closes at the drain's
    /// start with `proxy.reuse_port`, else at the stop).
    pub fn listening(&self) -> bool {
        self.tasks
            .iter()
            .any(|t| t.name == "listener" && !t.handle.is_finished())
    }

    /// The monitoring endpoint's address (`[http] listen`, useful when
    /// listening on port 0); `None` when it is off.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// How many statements the classifier could not parse (they ran on the primary).
    pub fn unparsable_statements(&self) -> u64 {
        self.shared.unparsable.load(Ordering::Relaxed)
    }

    /// Requests routed to each node slot so far (config order, then the
    /// nodes a reload added).
    pub fn routed(&self) -> Vec<u64> {
        (0..self.shared.topology.load().nodes.len())
            .map(|n| self.shared.loads.routed(n))
            .collect()
    }

    /// Reads `tls.cert_file` and `tls.key_file` again (SIGHUP): new
    /// connections get the new certificate, open sessions keep theirs. On an
    /// error the certificate in use stays. `Ok(false)` when TLS is off.
    pub fn reload_tls(&self) -> Result<bool, TlsError> {
        let reloaded = self.shared.tls.reload();
        match &reloaded {
            Ok(true) => info!("TLS certificate reloaded"),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "TLS certificate not reloaded; the one in use stays"),
        }
        reloaded
    }

    /// Applies `config` as far as it can change live (RELOAD; see
    /// [`crate::reload`]); an invalid one changes nothing and says why.
    pub async fn reload(&self, config: Config) -> Result<crate::reload::Report, String> {
        crate::reload::apply(&self.shared, config).await
    }

    /// Reads the config file again and applies it (SIGHUP, `RELOAD`).
    pub async fn reload_file(&self) -> Result<crate::reload::Report, String> {
        crate::reload::from_file(&self.shared).await
    }

    /// The settings in force.
    pub fn config(&self) -> Arc<Config> {
        self.shared.config.load_full()
    }

    /// The current published topology.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology.load()
    }

    /// `database`'s VOLATILE functions as the driver published them (what
    /// sessions classify with); `None` before its first load.
    pub fn functions(&self, database: &str) -> Option<Arc<PublishedFunctions>> {
        self.topology.functions(database)
    }

    /// Where operator commands for the control plane's driver go (what
    /// the admin console uses).
    pub fn control(&self) -> &ControlHandle {
        &self.control
    }

    /// Starts the drain (what SIGTERM does): new connections are refused
    /// with 57P03, idle sessions end with 57P01, sessions in a transaction
    /// or a query end once it does. `false` when it had already started.
    pub fn begin_drain(&self) -> bool {
        let began = self.shared.begin_drain();
        if began {
            info!(
                sessions = self.sessions.len(),
                "draining: no new connections; sessions end at their transaction's end"
            );
        }
        began
    }

    /// Resolves once a drain has been asked for (the console's `SHUTDOWN
    /// WAIT_FOR_CLIENTS`).
    pub async fn drain_requested(&self) {
        let mut drain = self.shared.drain.subscribe();
        let _ = drain.wait_for(|draining| *draining).await;
    }

    /// Drains for at most `proxy.shutdown_timeout_ms`, then stops.
    pub async fn shutdown(self) {
        let limit = self.shared.config().proxy.shutdown_timeout();
        self.shutdown_within(limit).await;
    }

    /// Drains (see [`Proxy::begin_drain`]) for at most `limit`, then ends
    /// the sessions still open, stops the named tasks and waits for
    /// sessions and action tasks to end (at most [`DRAIN`] for those).
    pub async fn shutdown_within(mut self, limit: Duration) {
        self.begin_drain();
        self.sessions.close();
        if tokio::time::timeout(limit, self.sessions.wait())
            .await
            .is_err()
        {
            warn!(
                left = self.sessions.len(),
                limit_ms = limit.as_millis(),
                "drain timed out; ending the sessions still open"
            );
        } else {
            info!("drained: every session has ended");
        }
        let _ = self.shutdown.send(true);
        for task in std::mem::take(&mut self.tasks) {
            if let Err(e) = task.handle.await {
                warn!(task = %task.name, error = %e, "task ended abnormally");
            }
        }
        self.tracker.close();
        let (sessions, actions) = (self.sessions.wait(), self.tracker.wait());
        if tokio::time::timeout(DRAIN, async { tokio::join!(sessions, actions) })
            .await
            .is_err()
        {
            warn!(
                left = self.tracker.len() + self.sessions.len(),
                "sessions or actions still running at shutdown"
            );
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for task in &self.tasks {
            task.handle.abort();
        }
    }
}

/// A listener on `addr`, and the address it got (port 0 picks one).
/// The server connection pool, with the task that closes its idle
/// connections past their timeout.
fn start_pool(
    config: &Config,
    tls: &ServerTls,
    shutdown: &watch::Receiver<bool>,
    tasks: &mut Vec<Named>,
) -> Arc<ServerPool> {
    let pool = Arc::new(ServerPool::new(
        &config.pool,
        config.proxy.connect_timeout(),
        tls.clone(),
    ));
    let idle = config.pool.idle_timeout();
    tasks.push(spawn_named(
        "reaper",
        prune_idle(pool.clone(), idle, shutdown.clone()),
    ));
    pool
}

/// The clients' listener, sharing its address with other processes when
/// `proxy.reuse_port` is on.
fn bind_clients(config: &Config) -> Result<(TcpListener, SocketAddr), StartError> {
    let addr = config.listen_addr()?;
    let listen = || -> std::io::Result<(TcpListener, SocketAddr)> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(config.proxy.reuse_port)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        let bound = listener.local_addr()?;
        Ok((listener, bound))
    };
    listen().map_err(|source| StartError::Listen { addr, source })
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::Listen { addr, source })?;
    Ok((listener, bound))
}

/// The monitoring endpoint's listener, when `[http] listen` is set.
async fn bind_http(config: &Config) -> Result<Option<(TcpListener, SocketAddr)>, StartError> {
    match config.http.listen_addr()? {
        Some(at) => bind(at).await.map(Some),
        None => Ok(None),
    }
}

/// Starts the monitoring endpoint as a named task; returns its address.
fn serve_http(
    (listener, addr): (TcpListener, SocketAddr),
    shared: &Arc<Shared>,
    tasks: &mut Vec<Named>,
) -> SocketAddr {
    info!(%addr, "http endpoint is listening");
    tasks.push(spawn_named(
        "http",
        crate::http::serve(listener, shared.clone()),
    ));
    addr
}

/// What the control plane is started with.
struct ControlWiring {
    config: Arc<Config>,
    topology: TopologyHandle,
    commands: mpsc::Receiver<Request>,
    functions: mpsc::UnboundedReceiver<FunctionsLoaded>,
    operator: Arc<dyn NodeOperator>,
    tracker: TaskTracker,
    tls: ServerTls,
    shutdown: watch::Receiver<bool>,
    journal: Arc<crate::control::journal::Journal>,
}

/// Starts a prober per node, the etcd session when the epoch is shared,
/// and the driver; returns once every node has been probed once, so the
/// first published snapshot already knows the primary.
async fn start_control(w: ControlWiring) -> Result<(Option<PeersWatch>, Vec<Named>), StartError> {
    let (results, probed) = mpsc::channel(64);
    let kit = monitor::ProberKit {
        config: w.config.clone(),
        tls: w.tls.clone(),
        results,
        shutdown: w.shutdown.clone(),
    };
    let probers: Vec<CancellationToken> = w
        .config
        .nodes
        .iter()
        .map(|_| CancellationToken::new())
        .collect();
    let mut tasks: Vec<Named> = w
        .config
        .nodes
        .iter()
        .zip(&probers)
        .enumerate()
        .map(|(i, (node, stop))| {
            let prober = kit.prober(i, node, stop.clone());
            spawn_named(format!("probe {}", node.display_name()), prober.run())
        })
        .collect();
    let (store, shared, peers) = match w.config.failover.store {
        StoreKind::File => (file_store(&w.config), None, None),
        StoreKind::Etcd => {
            let started = etcd::start(&w.config, w.shutdown.clone())
                .await
                .map_err(StartError::Etcd)?;
            tasks.push(spawn_named("etcd", started.session.run()));
            let shared = Coordination {
                news: started.news,
                view: started.view,
                relay: started.relay,
            };
            (started.store, Some(shared), Some(started.peers))
        }
    };
    let (first_round, mut first_round_done) = watch::channel(false);
    let driver = Driver::new(
        w.config.clone(),
        Wiring {
            topology: w.topology,
            results: probed,
            commands: w.commands,
            functions: w.functions,
            store,
            operator: w.operator,
            first_round,
            tracker: w.tracker,
            tls: w.tls,
            shutdown: w.shutdown,
            journal: w.journal,
            kit,
            probers,
            shared,
        },
    );
    tasks.push(spawn_named("driver", driver.run()));
    let _ = first_round_done.wait_for(|done| *done).await;
    Ok((peers, tasks))
}

/// The state file when one is configured; otherwise the epoch lives only
/// as long as the process.
fn file_store(config: &Config) -> Arc<dyn EpochStore> {
    match &config.failover.state_file {
        Some(path) => Arc::new(StateFile::new(path)),
        None => Arc::new(MemoryStore::default()),
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

/// Accepts clients until shutdown (during the drain too, to refuse them
/// with 57P03, unless `proxy.reuse_port` is on: then until the drain);
/// each session runs on `sessions`. A client past
/// `max_client_connections` is refused at once.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, sessions: TaskTracker) {
    let mut shutdown = shared.shutdown.clone();
    let mut drain = shared.drain.subscribe();
    // Sharing the port, a draining proxy leaves new clients to the other one.
    let close_at_drain = shared.config().proxy.reuse_port;
    let drained = async move {
        if !close_at_drain {
            std::future::pending::<()>().await;
        }
        let _ = drain.wait_for(|draining| *draining).await;
    };
    tokio::pin!(drained);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
            () = &mut drained => {
                info!("draining: listener closed; the other process on the port takes new clients");
                return;
            }
        };
        match accepted {
            Ok((stream, peer)) => match shared.admission.arrive() {
                Some(arrival) => {
                    sessions.spawn(frontend::serve(stream, peer, shared.clone(), arrival));
                }
                None => admission::refuse_at_once(stream),
            },
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

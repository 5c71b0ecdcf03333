//! The client side: one task per connection that takes a client from its
//! first byte (SSLRequest and TLS, CancelRequest or StartupMessage:
//! [`negotiate`]) through authentication to a relaying [`session::Session`].

pub mod admission;
pub mod auth;
pub mod auth_query;
pub mod batch;
pub mod cancel;
pub mod classifier;
pub mod collect;
pub mod counters;
pub mod link;
pub mod load;
pub mod local;
pub mod negotiate;
pub mod on_wake;
pub mod pause;
pub mod registry;
pub mod retry;
pub mod session;
pub mod state;
pub mod txn_record;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, Instrument};

use arc_swap::{ArcSwap, Cache, Guard};
use bytes::BytesMut;

use crate::admin;
use crate::backend::pool::{CheckoutError, PoolKey, ServerPool};
use crate::backend::ServerSecret;
use crate::backend::{ConnectError, Login, ServerConn};
use crate::config::Config;
use crate::control::commits::CommitLog;
use crate::protocol::{messages, take_frame, Sqlstate};
use crate::route::{self, BatchFacts, Decision, NoRoute, Policy, Purpose, ReadPolicy};
use crate::tls::ClientTls;
use crate::topology::TopologyHandle;
use admission::{Admission, Arrival, Lapse};
use auth::{Authenticator, LoginClient, Step};
use cancel::{CancelHandle, CancelRegistry, CancelTarget};
use classifier::Classifier;
use load::NodeLoads;
use negotiate::Startup;
use session::{ClientIo, Session, SessionLogin};

/// Password-family messages are small; a bigger one is an attack or a bug.
const MAX_AUTH_MESSAGE: usize = 64 * 1024;
/// What a client buffer takes when it first needs memory; idle clients are
/// held by the thousand, so each byte here counts.
pub(crate) const CLIENT_BUFFER: usize = 4 * 1024;

/// The most an empty buffer of a session keeps: past this, a large
/// message went through it, and its memory goes back (a thousand idle
/// sessions must not each hold the megabytes their last message took).
pub(crate) const SPARE_CAPACITY: usize = 64 * 1024;

/// Gives back the memory of `buf` once it is empty and a large message
/// made it grow past [`SPARE_CAPACITY`]. An empty buffer may sit at the
/// end of a large allocation (a batch that was sent without a copy):
/// reclaiming shows how large it is.
pub(crate) fn shed(buf: &mut BytesMut) {
    if !buf.is_empty() {
        return;
    }
    if buf.capacity() > SPARE_CAPACITY || buf.try_reclaim(SPARE_CAPACITY + 1) {
        *buf = BytesMut::new();
    }
}

/// A session's copy of the settings in force ([`Shared::config_cache`]).
pub type ConfigCache = Cache<Arc<ArcSwap<Config>>, Arc<Config>>;

/// What every client task shares.
pub struct Shared {
    /// The settings in force; `RELOAD` swaps them (see [`Shared::config`]).
    pub config: Arc<ArcSwap<Config>>,
    pub pool: Arc<ServerPool>,
    pub topology: TopologyHandle,
    pub cancels: Arc<CancelRegistry>,
    /// Swapped by a reload that changes users or `[auth]`.
    pub auth: ArcSwap<Authenticator>,
    /// The certificate offered to clients, and whether they must take it.
    pub tls: ClientTls,
    pub loads: NodeLoads,
    /// Bumped per routed read: drives round-robin across all sessions.
    pub tickets: AtomicU64,
    /// Statements the classifier could not parse (sent to the primary).
    pub unparsable: AtomicU64,
    /// Classifications, one cache per database shared by its sessions.
    pub classify: classifier::Caches,
    /// What `/metrics` counts of the traffic (relaxed atomics).
    pub counters: counters::Counters,
    /// Commits acknowledged through the proxy, and where the primary's
    /// WAL stood after them (`read-after-commit` reads).
    pub commits: Arc<CommitLog>,
    /// The admin console's way to the control plane.
    pub admin: admin::Console,
    /// Connection limits and the failed-login throttle.
    pub admission: Admission,
    /// Set when the proxy starts draining (SIGTERM, SIGINT, `SHUTDOWN
    /// WAIT_FOR_CLIENTS`): new connections are refused with 57P03, idle
    /// sessions end with 57P01, the rest at their transaction's end.
    pub drain: watch::Sender<bool>,
    /// The sessions open now (the console's `SHOW CLIENTS`).
    pub clients: registry::Registry,
    /// The console's `PAUSE`: new transactions wait for `RESUME`.
    pub pause: pause::Pause,
    /// Set when everything stops at once (after the drain).
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// The settings in force now. Cheap (no reference count), but not to
    /// be held long: take what is needed, or `load_full` to keep it.
    pub fn config(&self) -> Guard<Arc<Config>> {
        self.config.load()
    }

    /// A copy of the settings in force for one session to keep: each look
    /// costs one atomic load while no reload swapped them.
    pub fn config_cache(&self) -> ConfigCache {
        Cache::new(Arc::clone(&self.config))
    }

    /// Starts the drain; `false` when it had already started.
    pub fn begin_drain(&self) -> bool {
        self.drain
            .send_if_modified(|draining| !std::mem::replace(draining, true))
    }

    pub fn draining(&self) -> bool {
        *self.drain.borrow()
    }

    /// `config`'s routing rules, as [`route::decide`] takes them.
    pub fn policy(config: &Config) -> Policy<'_> {
        Policy {
            consistency: &config.consistency,
            reads: ReadPolicy::from_config(&config.routing),
            // A switchover's pause lasts at most the failover timeout: a
            // write waits it out (and a second more) instead of failing.
            pause_limit: config.failover.failover_timeout() + Duration::from_secs(1),
            failover_wait: config.failover.failover_wait(),
        }
    }
}

impl route::Loads for Shared {
    fn outstanding(&self, node: usize) -> u32 {
        self.loads.outstanding(node)
    }

    fn next_ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::Relaxed)
    }

    fn peek_ticket(&self) -> u64 {
        self.tickets.load(Ordering::Relaxed)
    }
}

/// The SQLSTATE a client gets for a batch that cannot be routed: the
/// routing reason is chosen in [`route`], its code here at the edge.
pub fn refusal_state(reason: &NoRoute) -> Sqlstate {
    match reason {
        NoRoute::NoFreshReplica(_) => Sqlstate::ObjectNotInPrerequisiteState,
        NoRoute::NoPrimary
        | NoRoute::Paused
        | NoRoute::PausedTooLong(_)
        | NoRoute::Refused(_)
        | NoRoute::NoNode => Sqlstate::ConnectionFailure,
    }
}

/// A startup that ends the connection before any relaying.
#[derive(Debug)]
enum Refusal {
    /// Nothing to say: the client left, or sent a CancelRequest.
    Silent,
    /// Tell the client (already encoded into its output buffer), then close.
    Told,
}

/// Serves one client connection to the end; `arrival` is its place among
/// the logins in progress, then its session slot.
pub async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, mut arrival: Arrival) {
    static SESSIONS: AtomicU64 = AtomicU64::new(1);
    let session_id = SESSIONS.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(
        "session",
        session_id,
        client = %peer,
        user = tracing::field::Empty,
        epoch = tracing::field::Empty
    );
    // Boxed: the login's state is freed once it is done instead of
    // staying in the task's allocation for the whole session.
    let Some((client, opened)) = Box::pin(open(stream, peer, &shared, session_id, &mut arrival))
        .instrument(span.clone())
        .await
    else {
        return;
    };
    let connected = match opened {
        Opened::Session(connected) => *connected,
        Opened::Admin(caller) => {
            info!(parent: &span, access = ?caller.access, "admin console session");
            admin::serve(client, &shared, caller).await;
            return;
        }
    };
    let classifier = Classifier::open(&shared, &connected.login.database);
    info!(
        parent: &span,
        user = %connected.login.client_user,
        database = %connected.login.database,
        client = %peer,
        "session started"
    );
    let listed = shared.clients.add(
        session_id,
        &connected.login.client_user,
        &connected.login.database,
        peer,
    );
    // The relay polls far too often to enter a span each time: it logs
    // with the span as an explicit parent instead.
    let session = Session::new(
        session_id,
        shared.clone(),
        client,
        connected,
        classifier,
        (listed, span.clone()),
    );
    let _ = session.run().await;
    shared.clients.remove(session_id);
    drop(arrival);
}

/// What a client's startup led to.
enum Opened {
    /// A session relaying to the cluster.
    Session(Box<Connected>),
    /// The admin console (the virtual database [`admin::DATABASE`]).
    Admin(admin::Caller),
}

/// Startup, which must authenticate before the login lapses (its deadline,
/// or a newer connection taking its place); `None` when the client was
/// refused or left.
async fn open(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    session_id: u64,
    arrival: &mut Arrival,
) -> Option<(ClientIo, Opened)> {
    let deadline = tokio::time::Instant::now() + shared.config().proxy.startup_timeout();
    let lapse = arrival.lapse();
    tokio::pin!(lapse);
    // Before its startup packet a client is owed nothing: a login that
    // lapses then is closed, as PostgreSQL closes an incomplete startup.
    let (mut client, startup) = tokio::select! {
        negotiated = negotiate::negotiate(stream, peer, shared, deadline) => negotiated?,
        _ = &mut lapse => return None,
    };
    let started = tokio::select! {
        started = start(&mut client, startup, peer, shared, session_id, arrival) => Ok(started),
        lapse = &mut lapse => Err(lapse),
    };
    match started {
        Ok(Ok(opened)) => return Some((client, opened)),
        Ok(Err(Refusal::Silent)) => return None,
        Ok(Err(Refusal::Told)) => {}
        Err(Lapse::TimedOut) => messages::error(
            &mut client.out,
            true,
            Sqlstate::ConnectionFailure,
            "startup timed out",
        ),
        Err(Lapse::Evicted) => {
            debug!("login closed to make room for a newer one");
            messages::error(
                &mut client.out,
                true,
                Sqlstate::TooManyConnections,
                "too many connections are logging in; this one was the oldest",
            );
        }
    }
    let _ = client.wr.write_all(&client.out).await;
    None
}

/// A client that has authenticated and has a server connection.
pub struct Connected {
    pub server: Box<ServerConn>,
    /// The node `server` is connected to (index into the topology).
    pub node: usize,
    pub cancel: CancelHandle,
    pub login: SessionLogin,
}

/// Startup and authentication; on success the session is ready to relay
/// (or the console to answer).
async fn start(
    client: &mut ClientIo,
    startup: Startup,
    peer: SocketAddr,
    shared: &Shared,
    session_id: u64,
    arrival: &mut Arrival,
) -> Result<Opened, Refusal> {
    let Startup {
        minor_version,
        mut params,
    } = startup;
    let Some(user) = param(&params, "user")
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
    else {
        return Err(tell(
            client,
            Sqlstate::InvalidAuthorization,
            "no PostgreSQL user name specified in startup packet",
        ));
    };
    tracing::Span::current().record("user", user.as_str());
    if param(&params, "database").is_none() {
        params.push(("database".into(), user.clone()));
    }
    let unsupported: Vec<String> = params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    if minor_version > 0 || !unsupported.is_empty() {
        params.retain(|(k, _)| !k.starts_with("_pq_."));
        messages::negotiate_protocol_version(&mut client.out, unsupported);
    }
    let database = param(&params, "database").unwrap_or_default().to_owned();
    if shared.draining() {
        // Before authentication, as PostgreSQL refuses during its shutdown.
        return Err(tell(
            client,
            Sqlstate::CannotConnectNow,
            "the database system is shutting down",
        ));
    }
    let secret = authenticate(client, peer, shared, &user, &database).await?;
    if !shared.admission.admit(arrival) {
        return Err(tell(
            client,
            Sqlstate::TooManyConnections,
            "sorry, too many clients already",
        ));
    }
    if database == admin::DATABASE {
        admin::welcome(&mut client.out);
        let access = shared.config().admin.access(&user);
        return Ok(Opened::Admin(admin::Caller { user, peer, access }));
    }
    connect_session(client, shared, session_id, &user, params, secret)
        .await
        .map(|c| Opened::Session(Box::new(c)))
}

/// Runs the user's authentication exchange (pgwire's mechanisms) to the
/// end, once the client's address has waited out its failed logins. Gives
/// what the exchange yielded to log in to PostgreSQL with, if anything.
async fn authenticate(
    client: &mut ClientIo,
    peer: SocketAddr,
    shared: &Shared,
    user: &str,
    database: &str,
) -> Result<Option<ServerSecret>, Refusal> {
    if let Err(wait) = shared.admission.turn(peer.ip()).await {
        info!(
            wait_ms = wait.as_millis(),
            "login refused: too many failed logins from this address"
        );
        return Err(tell(
            client,
            Sqlstate::TooManyConnections,
            "too many failed logins from this address; try again later",
        ));
    }
    let mut secret = None;
    if let Some(mut exchange) = shared.auth.load_full().exchange(user).await {
        let login = LoginClient::new(peer, user, database);
        let mut step = exchange.begin(&login).await;
        loop {
            match step {
                Step::Send(request) => {
                    messages::authentication(&mut client.out, &request);
                    flush(client).await?;
                    let body = read_password_message(client).await?;
                    step = exchange.next(&login, &body).await;
                }
                Step::Done(last) => {
                    if let Some(last) = last {
                        messages::authentication(&mut client.out, &last);
                    }
                    break;
                }
                Step::Refused(info) => {
                    info!(code = %info.code, "authentication failed");
                    shared.admission.failed(peer.ip());
                    shared.counters.auth_failed();
                    messages::encode_error_info(&mut client.out, *info);
                    return Err(Refusal::Told);
                }
            }
        }
        secret = exchange.server_secret();
    }
    messages::authentication(
        &mut client.out,
        &pgwire::messages::startup::Authentication::Ok,
    );
    Ok(secret)
}

/// Opens the session's first server connection (on the primary, whose
/// parameters the client is told, or a replica while the primary takes no
/// writes) and completes the client's startup.
async fn connect_session(
    client: &mut ClientIo,
    shared: &Shared,
    session_id: u64,
    user: &str,
    mut params: Vec<(String, String)>,
    proven: Option<ServerSecret>,
) -> Result<Connected, Refusal> {
    let topology = shared.topology.load();
    let node_index = startup_node(client, shared, &topology)?;
    let node = &topology.nodes[node_index];
    tracing::Span::current().record("epoch", topology.epoch);
    let user_config = shared.config().user(user).cloned();
    let server_user = user_config
        .as_ref()
        .map_or(user, |u| u.server_user())
        .to_owned();
    for (k, v) in params.iter_mut() {
        if k == "user" {
            *v = server_user.clone();
        }
    }
    let pool_key = PoolKey::new(&node.host, node.port, user, &params);
    let session_login = SessionLogin {
        client_user: user.to_owned(),
        // A configured password first; else what the client's login proved.
        server_secret: user_config
            .as_ref()
            .and_then(|u| u.server_password())
            .map(|p| ServerSecret::Password(p.to_owned()))
            .or(proven),
        database: param(&params, "database").unwrap_or_default().to_owned(),
        server_user,
        params,
    };
    let login = Login {
        user: &session_login.server_user,
        secret: session_login.server_secret.as_ref(),
        params: &session_login.params,
    };
    let server = match shared.pool.checkout(&pool_key, session_id, &login).await {
        Ok(s) => s,
        Err(CheckoutError::Connect(ConnectError::Refused { error, .. })) => {
            client.out.extend_from_slice(&error);
            return Err(Refusal::Told);
        }
        Err(e @ CheckoutError::Exhausted { .. }) => {
            return Err(tell(client, Sqlstate::TooManyConnections, &e.to_string()))
        }
        Err(e) => return Err(tell(client, Sqlstate::UnableToConnect, &e.to_string())),
    };
    let cancel = shared.cancels.register();
    cancel.set_target(server.key.map(|key| CancelTarget {
        host: server.host.clone(),
        port: server.port,
        key,
    }));
    for (name, value) in &server.params {
        messages::parameter_status(&mut client.out, name, value);
    }
    messages::backend_key_data(&mut client.out, cancel.key.pid, cancel.key.secret);
    messages::ready(&mut client.out, crate::protocol::TxnStatus::Idle);
    Ok(Connected {
        server,
        node: node_index,
        cancel,
        login: session_login,
    })
}

/// The node a new session opens on, as [`route::decide`] has it.
fn startup_node(
    client: &mut ClientIo,
    shared: &Shared,
    topology: &crate::topology::Topology,
) -> Result<usize, Refusal> {
    let opening = BatchFacts {
        purpose: Purpose::Startup,
        ..BatchFacts::default()
    };
    let session = route::SessionFacts::default();
    let config = shared.config();
    let policy = Shared::policy(&config);
    match route::decide(
        &opening,
        &session,
        &policy,
        topology,
        shared,
        Instant::now(),
    ) {
        Decision::Primary(node) | Decision::Replica(node) => Ok(node),
        Decision::Refuse(e) => Err(tell(client, Sqlstate::UnableToConnect, &e.to_string())),
        // A startup asks for a node and never waits.
        Decision::Stay | Decision::Move(_) | Decision::Wait(_) => {
            Err(tell(client, Sqlstate::Internal, "no node for the session"))
        }
    }
}

/// A startup parameter; when the client sent one twice the last wins, as in
/// PostgreSQL.
pub(crate) fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Queues a FATAL error for the client and refuses the startup.
fn tell(client: &mut ClientIo, state: Sqlstate, message: &str) -> Refusal {
    messages::error(&mut client.out, true, state, message);
    Refusal::Told
}

async fn flush(client: &mut ClientIo) -> Result<(), Refusal> {
    let result = client.wr.write_all(&client.out).await;
    client.out.clear();
    result.map_err(|_| Refusal::Silent)
}

/// Reads one 'p' (password family) message body, with its length capped.
async fn read_password_message(client: &mut ClientIo) -> Result<Vec<u8>, Refusal> {
    loop {
        if let Some(&tag) = client.inbuf.first().filter(|&&t| t != b'p') {
            let message = format!(
                "expected password response, got message type {:?}",
                tag as char
            );
            return Err(tell(client, Sqlstate::ProtocolViolation, &message));
        }
        match take_frame(&mut client.inbuf, MAX_AUTH_MESSAGE) {
            Ok(Some(frame)) => return Ok(frame[5..].to_vec()),
            Ok(None) => {}
            Err(e) => return Err(tell(client, Sqlstate::ProtocolViolation, &e.to_string())),
        }
        match client
            .rd
            .read_with_room(&mut client.inbuf, CLIENT_BUFFER)
            .await
        {
            Ok(n) if n > 0 => {}
            _ => return Err(Refusal::Silent),
        }
    }
}

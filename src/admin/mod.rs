//! The admin console: a client that logs in to the virtual database
//! `palisade` talks to the proxy itself, never to PostgreSQL. It answers
//! `SHOW NODES` (the published topology with each node's replication
//! position, lag and traffic) and `SHOW CONFIG` (the running config,
//! secrets masked), and passes `SWITCHOVER [TO node]` and `REJOIN node` to
//! the control plane's driver through the [`ControlHandle`] the proxy gave
//! its [`Console`], over the simple query protocol, like PgBouncer's
//! `pgbouncer` database.
//!
//! The views of the proxy's own state (`SHOW POOLS`, `CLIENTS`, `SERVERS`,
//! `STATS`, `EVENTS`) are in [`show`]; `PAUSE` and `RESUME` hold new
//! transactions, `SHUTDOWN WAIT_FOR_CLIENTS` starts the drain.
//!
//! Who may do what is `[admin]`'s: `admin_users` run everything,
//! `stats_users` only the SHOWs, anyone else nothing (42501, as PostgreSQL
//! refuses a privilege). Every command that acts on the cluster is logged
//! with the user and address that ran it.

pub mod show;

use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::{Config, ConsoleAccess};
use crate::control::handle as control;
use crate::control::peers::{Peers, PeersWatch};
use crate::control::ControlHandle;
use crate::frontend::session::ClientIo;
use crate::frontend::Shared;
use crate::protocol::{messages, take_frame, Sqlstate};
use crate::topology::{Role, Topology};

/// The database name that opens the console.
pub const DATABASE: &str = "palisade";

/// What the console tells a client at startup, so psql and drivers treat
/// it like a server (psql reads the version to pick its queries).
const STARTUP_PARAMETERS: [(&str, &str); 6] = [
    ("server_version", "15.0 (Palisade admin console)"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"),
];

/// What the console needs of the proxy beyond what every client task
/// shares: the way to the control plane's driver.
#[derive(Debug, Clone)]
pub struct Console {
    control: ControlHandle,
    /// What the proxies sharing the epoch last said (`store = "etcd"`).
    peers: Option<PeersWatch>,
}

impl Console {
    pub fn new(control: ControlHandle, peers: Option<PeersWatch>) -> Console {
        Console { control, peers }
    }

    /// This proxy shares the epoch and has lost etcd beyond the grace
    /// period (a write then goes on only with `partition_mode = available`).
    pub fn epoch_store_lost(&self) -> bool {
        self.peers.as_ref().is_some_and(|p| p.borrow().lost)
    }

    /// The proxies sharing the epoch, as last read; `None` when alone.
    pub fn peers(&self) -> Option<Peers> {
        self.peers.as_ref().map(|p| p.borrow().clone())
    }

    pub fn control(&self) -> &ControlHandle {
        &self.control
    }
}

/// Who is at the console: the user who logged in, from where, and what
/// `[admin]` lets them do.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: String,
    pub peer: SocketAddr,
    pub access: ConsoleAccess,
}

/// One console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    ShowNodes,
    ShowConfig,
    /// `SHOW POOLS`, `CLIENTS`, `SERVERS`, `STATS`, `EVENTS` or `PEERS`.
    Show(View),
    /// `PAUSE`: new transactions wait for `RESUME`.
    Pause,
    Resume,
    /// `SHUTDOWN WAIT_FOR_CLIENTS`: the drain.
    Shutdown,
    /// `RELOAD`: the config file read again.
    Reload,
    /// For the failover driver.
    Control(control::Command),
    /// An empty query string.
    Empty,
}

/// A view of the proxy's own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Pools,
    Clients,
    Servers,
    Stats,
    Events,
    Peers,
}

impl View {
    const ALL: [View; 6] = [
        View::Pools,
        View::Clients,
        View::Servers,
        View::Stats,
        View::Events,
        View::Peers,
    ];

    pub fn name(self) -> &'static str {
        match self {
            View::Pools => "POOLS",
            View::Clients => "CLIENTS",
            View::Servers => "SERVERS",
            View::Stats => "STATS",
            View::Events => "EVENTS",
            View::Peers => "PEERS",
        }
    }

    fn columns(self) -> &'static [&'static str] {
        match self {
            View::Pools => &show::POOL_COLUMNS,
            View::Clients => &show::CLIENT_COLUMNS,
            View::Servers => &show::SERVER_COLUMNS,
            View::Stats => &show::STATS_COLUMNS,
            View::Events => &show::EVENT_COLUMNS,
            View::Peers => &show::PEER_COLUMNS,
        }
    }

    fn rows(self, shared: &Shared) -> show::Rows {
        match self {
            View::Pools => show::pools(shared),
            View::Clients => show::clients(shared),
            View::Servers => show::servers(shared),
            View::Stats => show::stats(shared),
            View::Events => show::events(shared),
            View::Peers => show::peers(shared),
        }
    }
}

impl Command {
    /// The least access that may run it.
    pub fn needs(&self) -> ConsoleAccess {
        match self {
            Command::Empty => ConsoleAccess::None,
            Command::ShowNodes | Command::ShowConfig | Command::Show(_) => ConsoleAccess::Stats,
            Command::Control(_)
            | Command::Pause
            | Command::Resume
            | Command::Shutdown
            | Command::Reload => ConsoleAccess::Admin,
        }
    }

    /// The command as an operator would type it (no client text but node names).
    pub fn text(&self) -> String {
        match self {
            Command::ShowNodes => "SHOW NODES".into(),
            Command::ShowConfig => "SHOW CONFIG".into(),
            Command::Show(view) => format!("SHOW {}", view.name()),
            Command::Pause => "PAUSE".into(),
            Command::Resume => "RESUME".into(),
            Command::Shutdown => "SHUTDOWN WAIT_FOR_CLIENTS".into(),
            Command::Reload | Command::Control(control::Command::Nodes(_)) => "RELOAD".into(),
            Command::Control(control::Command::Switchover(None)) => "SWITCHOVER".into(),
            Command::Control(control::Command::Switchover(Some(to))) => {
                format!("SWITCHOVER TO {to}")
            }
            Command::Control(control::Command::Rejoin(node)) => format!("REJOIN {node}"),
            Command::Empty => String::new(),
        }
    }
}

/// Why `caller` may not run `command` (`None`: not a command at all), or
/// `None` when they may.
pub fn denial(caller: &Caller, command: Option<&Command>) -> Option<String> {
    let needs = command.map_or(ConsoleAccess::Stats, Command::needs);
    if caller.access >= needs {
        return None;
    }
    let user = &caller.user;
    Some(match (caller.access, command) {
        (ConsoleAccess::Stats, Some(command)) => format!(
            "permission denied to run {}: user \"{user}\" is in admin.stats_users, which may only SHOW",
            command.text()
        ),
        _ => format!(
            "permission denied for the admin console: user \"{user}\" is in neither admin.admin_users nor admin.stats_users"
        ),
    })
}

/// Recognises a command: keywords in any case, node names as configured,
/// blanks free, one trailing `;` allowed. `None` for anything else.
pub fn parse(sql: &str) -> Option<Command> {
    let sql = sql.trim();
    let sql = sql.strip_suffix(';').unwrap_or(sql);
    let words: Vec<&str> = sql.split_ascii_whitespace().collect();
    let is = |i: usize, keyword: &str| {
        words
            .get(i)
            .is_some_and(|w| w.eq_ignore_ascii_case(keyword))
    };
    match words.len() {
        0 => Some(Command::Empty),
        2 if is(0, "show") && is(1, "nodes") => Some(Command::ShowNodes),
        2 if is(0, "show") && is(1, "config") => Some(Command::ShowConfig),
        2 if is(0, "show") => View::ALL
            .into_iter()
            .find(|v| is(1, v.name()))
            .map(Command::Show),
        1 if is(0, "pause") => Some(Command::Pause),
        1 if is(0, "resume") => Some(Command::Resume),
        1 if is(0, "reload") => Some(Command::Reload),
        2 if is(0, "shutdown") && is(1, "wait_for_clients") => Some(Command::Shutdown),
        1 if is(0, "switchover") => Some(Command::Control(control::Command::Switchover(None))),
        3 if is(0, "switchover") && is(1, "to") => Some(Command::Control(
            control::Command::Switchover(Some(words[2].to_owned())),
        )),
        2 if is(0, "rejoin") => Some(Command::Control(control::Command::Rejoin(
            words[1].to_owned(),
        ))),
        _ => None,
    }
}

/// Completes the client's startup as the console.
pub fn welcome(out: &mut BytesMut) {
    for (name, value) in STARTUP_PARAMETERS {
        messages::parameter_status(out, name, value);
    }
    messages::ready_for_query(out, b'I');
}

/// Serves the console to `caller` until the client leaves or the proxy
/// shuts down.
pub async fn serve(mut client: ClientIo, shared: &Shared, caller: Caller) {
    let mut shutdown = shared.drain.subscribe();
    // Set after an extended-protocol message: it is refused at the Sync.
    let mut refused_batch = false;
    loop {
        if !client.out.is_empty() {
            if client.wr.write_all(&client.out).await.is_err() {
                return;
            }
            client.out.clear();
        }
        let frame = match take_frame(&mut client.inbuf, shared.config().proxy.max_message_size) {
            Ok(Some(frame)) => frame,
            Ok(None) if read_more(&mut client, shared, &mut shutdown).await => continue,
            Ok(None) => return,
            Err(e) => {
                messages::error(
                    &mut client.out,
                    true,
                    Sqlstate::ProtocolViolation,
                    &e.to_string(),
                );
                let _ = client.wr.write_all(&client.out).await;
                return;
            }
        };
        match frame[0] {
            b'Q' => {
                let sql = frame[5..].strip_suffix(b"\0").unwrap_or(&frame[5..]);
                let sql = String::from_utf8_lossy(sql);
                answer(&mut client.out, &sql, shared, &caller).await;
                messages::ready_for_query(&mut client.out, b'I');
            }
            b'X' => return,
            b'S' => {
                if std::mem::take(&mut refused_batch) {
                    messages::error(
                        &mut client.out,
                        false,
                        Sqlstate::FeatureNotSupported,
                        "the admin console speaks only the simple query protocol",
                    );
                }
                messages::ready_for_query(&mut client.out, b'I');
            }
            // The rest of an extended-protocol batch is skipped until its Sync.
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => refused_batch = true,
            tag => {
                let message = format!("unexpected message type {:?}", tag as char);
                messages::error(&mut client.out, true, Sqlstate::ProtocolViolation, &message);
                let _ = client.wr.write_all(&client.out).await;
                return;
            }
        }
    }
}

/// Reads more of the client's input; `false` when the console is done: the
/// client left, the proxy is draining (57P01), or the client broke the
/// session timeouts (the rest of a half-sent message must come within
/// `client_message_timeout_ms`, the next command within
/// `client_idle_timeout_ms` when that is set), which it is told.
async fn read_more(
    client: &mut ClientIo,
    shared: &Shared,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let proxy = &shared.config().proxy;
    let (limit, state, message) = if client.inbuf.is_empty() {
        (
            proxy.client_idle_timeout(),
            Sqlstate::IdleSessionTimeout,
            "terminating connection due to idle-session timeout".to_owned(),
        )
    } else {
        (
            Some(proxy.client_message_timeout()),
            Sqlstate::ProtocolViolation,
            format!(
                "incomplete message from client: nothing more arrived within client_message_timeout_ms ({} ms)",
                proxy.client_message_timeout_ms
            ),
        )
    };
    let expired = async {
        match limit {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        read = client.rd.read_with_room(&mut client.inbuf, crate::frontend::CLIENT_BUFFER) => matches!(read, Ok(n) if n > 0),
        () = async { let _ = shutdown.wait_for(|draining| *draining).await; } => {
            messages::error(
                &mut client.out,
                true,
                Sqlstate::AdminShutdown,
                "terminating connection due to administrator command",
            );
            let _ = client.wr.write_all(&client.out).await;
            false
        }
        () = expired => {
            messages::error(&mut client.out, true, state, &message);
            let _ = client.wr.write_all(&client.out).await;
            false
        }
    }
}

/// Answers one simple query, if `caller` may run it.
async fn answer(out: &mut BytesMut, sql: &str, shared: &Shared, caller: &Caller) {
    let command = parse(sql);
    if let Some(reason) = denial(caller, command.as_ref()) {
        let text = command
            .as_ref()
            .map_or("(not a command)".into(), Command::text);
        info!(user = %caller.user, client = %caller.peer, command = %text, "admin console command denied");
        messages::error(out, false, Sqlstate::InsufficientPrivilege, &reason);
        return;
    }
    match command {
        Some(Command::Control(command)) => act(out, command, shared, caller).await,
        Some(Command::ShowNodes) => {
            debug!(user = %caller.user, client = %caller.peer, "SHOW NODES");
            let topology = shared.topology.load();
            let rows = node_rows(
                &topology,
                |host, port| shared.pool.open_connections(host, port),
                |n| shared.loads.routed(n),
            );
            messages::text_result(out, &NODE_COLUMNS, &rows, &format!("SHOW {}", rows.len()));
        }
        Some(Command::ShowConfig) => {
            debug!(user = %caller.user, client = %caller.peer, "SHOW CONFIG");
            let rows: Vec<Vec<Option<String>>> = config_rows(&shared.config())
                .into_iter()
                .map(|(k, v)| vec![Some(k), Some(v)])
                .collect();
            messages::text_result(
                out,
                &["key", "value"],
                &rows,
                &format!("SHOW {}", rows.len()),
            );
        }
        Some(Command::Show(view)) => {
            debug!(user = %caller.user, client = %caller.peer, view = view.name(), "SHOW");
            let rows = view.rows(shared);
            messages::text_result(out, view.columns(), &rows, &format!("SHOW {}", rows.len()));
        }
        Some(command @ (Command::Pause | Command::Resume | Command::Shutdown)) => {
            operate(out, &command, shared, caller);
        }
        Some(Command::Reload) => reload(out, shared, caller).await,
        Some(Command::Empty) => out.extend_from_slice(b"I\0\0\0\x04"),
        None => messages::error(
            out,
            false,
            Sqlstate::SyntaxError,
            &format!(
                "unknown admin console command {:?}: try SHOW NODES|CONFIG|POOLS|CLIENTS|SERVERS|STATS|EVENTS, PAUSE, RESUME, SHUTDOWN WAIT_FOR_CLIENTS, SWITCHOVER [TO node] or REJOIN node",
                sql.trim()
            ),
        ),
    }
}

/// Reads the config file again and applies what can change live; tells
/// the client what changed and what needs a restart, or why nothing did.
async fn reload(out: &mut BytesMut, shared: &Shared, caller: &Caller) {
    let (user, client) = (&caller.user, &caller.peer);
    info!(%user, %client, command = "RELOAD", "admin command");
    match crate::reload::from_file(shared).await {
        Ok(report) => {
            for line in report.lines() {
                messages::notice(out, &line);
            }
            messages::command_complete(out, "RELOAD");
        }
        Err(reason) => messages::error(out, false, Sqlstate::ConfigFileError, &reason),
    }
}

/// Runs `PAUSE`, `RESUME` or `SHUTDOWN WAIT_FOR_CLIENTS`, logging who asked.
fn operate(out: &mut BytesMut, command: &Command, shared: &Shared, caller: &Caller) {
    let (user, client) = (&caller.user, &caller.peer);
    let text = command.text();
    let (changed, tag, already) = match command {
        Command::Pause => (shared.pause.set(true), "PAUSE", "already paused"),
        Command::Resume => (shared.pause.set(false), "RESUME", "not paused"),
        _ => (shared.begin_drain(), "SHUTDOWN", "already draining"),
    };
    if changed {
        info!(%user, %client, command = %text, "admin command");
    } else {
        messages::notice(out, already);
    }
    messages::command_complete(out, tag);
}

/// Runs a command of the control plane's, logging who asked and how it went.
async fn act(out: &mut BytesMut, command: control::Command, shared: &Shared, caller: &Caller) {
    let (user, client) = (&caller.user, &caller.peer);
    let text = Command::Control(command.clone()).text();
    info!(%user, %client, command = %text, "admin command");
    let tag = match &command {
        control::Command::Switchover(_) => "SWITCHOVER",
        control::Command::Rejoin(_) => "REJOIN",
        control::Command::Nodes(_) => "RELOAD",
    };
    match shared.admin.control.ask(command).await {
        Ok(done) => {
            info!(%user, %client, command = %text, outcome = %done, "admin command done");
            messages::notice(out, &done);
            messages::command_complete(out, tag);
        }
        Err(reason) => {
            warn!(%user, %client, command = %text, %reason, "admin command refused");
            messages::error(out, false, Sqlstate::ObjectNotInPrerequisiteState, &reason)
        }
    }
}

pub const NODE_COLUMNS: [&str; 12] = [
    "name",
    "address",
    "role",
    "health",
    "lsn",
    "receive_lsn",
    "streaming",
    "lag_bytes",
    "lag_ms",
    "epoch",
    "connections",
    "queries_routed",
];

/// One row per node, in config order. `lsn` is a primary's current WAL
/// position and a replica's replay position; a replica's lag is NULL
/// while it is not known (no primary position yet).
pub fn node_rows(
    topology: &Topology,
    connections: impl Fn(&str, u16) -> usize,
    routed: impl Fn(usize) -> u64,
) -> Vec<Vec<Option<String>>> {
    topology
        .configured()
        .map(|(i, n)| {
            let r = &n.replication;
            let replica = n.role == Role::Replica;
            vec![
                Some(n.name.clone()),
                Some(format!("{}:{}", n.host, n.port)),
                Some(n.role.name().to_owned()),
                Some(n.health().to_owned()),
                r.lsn.map(|l| l.to_string()),
                r.receive_lsn.filter(|_| replica).map(|l| l.to_string()),
                replica.then(|| r.streaming.to_string()),
                r.lag_bytes.map(|b| b.to_string()),
                r.lag_ms.map(|ms| ms.to_string()),
                Some(topology.epoch.to_string()),
                Some(connections(&n.host, n.port).to_string()),
                Some(routed(i).to_string()),
            ]
        })
        .collect()
}

/// Every setting in force as (dotted key, value), secrets masked.
pub fn config_rows(config: &Config) -> Vec<(String, String)> {
    crate::config::settings(config, is_secret)
        .unwrap_or_else(|e| vec![("error".to_owned(), e.to_string())])
}

/// Keys whose values are never shown: passwords and verifiers, and hook
/// commands (a command line often carries a secret, `PGPASSWORD=...`).
fn is_secret(key: &str) -> bool {
    key == "password"
        || key.ends_with("_password")
        || key == "scram_verifier"
        || key.ends_with("_command")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Lsn, NodeState, Replication};

    #[test]
    fn recognises_the_console_commands() {
        assert_eq!(parse("SHOW NODES"), Some(Command::ShowNodes));
        assert_eq!(parse("  show   nodes ; "), Some(Command::ShowNodes));
        assert_eq!(parse("Show Config;"), Some(Command::ShowConfig));
        assert_eq!(parse("show pools"), Some(Command::Show(View::Pools)));
        assert_eq!(parse("SHOW EVENTS;"), Some(Command::Show(View::Events)));
        assert_eq!(parse("pause"), Some(Command::Pause));
        assert_eq!(parse("RESUME;"), Some(Command::Resume));
        assert_eq!(parse("shutdown wait_for_clients"), Some(Command::Shutdown));
        assert_eq!(parse(" ; "), Some(Command::Empty));
        assert_eq!(
            parse("switchover"),
            Some(Command::Control(control::Command::Switchover(None)))
        );
        assert_eq!(
            parse("SWITCHOVER TO Node2;"),
            Some(Command::Control(control::Command::Switchover(Some(
                "Node2".into()
            ))))
        );
        assert_eq!(
            parse("rejoin node0"),
            Some(Command::Control(control::Command::Rejoin("node0".into())))
        );
        for other in [
            "REJOIN",
            "SWITCHOVER node2",
            "REJOIN a b",
            "SHOW NODES; SHOW CONFIG",
            "SHOW",
            "SELECT 1",
            "SHOW NODES x",
            "SHOW LISTS",
            "SHUTDOWN",
            "PAUSE db",
        ] {
            assert_eq!(parse(other), None, "{other}");
        }
    }

    #[test]
    fn each_access_runs_what_it_may_and_is_told_why_not() {
        let caller = |access| Caller {
            user: "u".into(),
            peer: "127.0.0.1:5000".parse().unwrap(),
            access,
        };
        let switchover = parse("SWITCHOVER TO node1").unwrap();
        let show = parse("SHOW NODES").unwrap();
        let empty = parse("").unwrap();
        let admin = caller(ConsoleAccess::Admin);
        let stats = caller(ConsoleAccess::Stats);
        let nobody = caller(ConsoleAccess::None);
        for command in [&switchover, &show, &empty] {
            assert_eq!(denial(&admin, Some(command)), None, "{command:?}");
        }
        assert_eq!(denial(&admin, None), None, "an admin hears 42601");
        assert_eq!(denial(&stats, Some(&show)), None);
        assert_eq!(denial(&stats, None), None, "a stats user hears 42601");
        let why = denial(&stats, Some(&switchover)).unwrap();
        assert!(
            why.contains("SWITCHOVER TO node1") && why.contains("stats_users"),
            "{why}"
        );
        for command in [Some(&switchover), Some(&show), None] {
            let why = denial(&nobody, command).unwrap();
            assert!(why.starts_with("permission denied"), "{why}");
        }
        assert_eq!(denial(&nobody, Some(&empty)), None);
    }

    /// A healthy primary at 0/3000060 and a replica marked down, 96 bytes
    /// and 40 ms behind, in epoch 3.
    fn primary_and_lagging_replica() -> Topology {
        let node = |name: &str, role, healthy, replication| NodeState {
            name: name.into(),
            host: "127.0.0.1".into(),
            port: 5432,
            role,
            healthy,
            suspect: false,
            weight: 1,
            replication,
            fenced: false,
            removed: false,
        };
        Topology {
            epoch: 3,
            leader: Some(0),
            writes: Default::default(),
            nodes: vec![
                node(
                    "p",
                    Role::Primary,
                    true,
                    Replication {
                        lsn: Some(Lsn(0x3000060)),
                        ..Replication::default()
                    },
                ),
                node(
                    "r",
                    Role::Replica,
                    false,
                    Replication {
                        lsn: Some(Lsn(0x3000000)),
                        receive_lsn: Some(Lsn(0x3000060)),
                        streaming: true,
                        lag_bytes: Some(96),
                        lag_ms: Some(40),
                    },
                ),
            ],
        }
    }

    /// A row as the console prints it, NULL for a missing value.
    fn text(row: &[Option<String>]) -> Vec<String> {
        row.iter()
            .map(|v| v.clone().unwrap_or("NULL".into()))
            .collect()
    }

    #[test]
    fn node_rows_show_role_health_position_and_lag() {
        let rows = node_rows(&primary_and_lagging_replica(), |_, _| 2, |n| 10 + n as u64);
        assert_eq!(
            text(&rows[0]),
            [
                "p",
                "127.0.0.1:5432",
                "primary",
                "up",
                "0/3000060",
                "NULL",
                "NULL",
                "NULL",
                "NULL",
                "3",
                "2",
                "10"
            ]
        );
        assert_eq!(
            text(&rows[1]),
            [
                "r",
                "127.0.0.1:5432",
                "replica",
                "down",
                "0/3000000",
                "0/3000060",
                "true",
                "96",
                "40",
                "3",
                "2",
                "11"
            ]
        );
        assert!(rows.iter().all(|r| r.len() == NODE_COLUMNS.len()));
    }

    #[test]
    fn config_rows_list_every_setting_and_mask_secrets() {
        let config = Config::parse(
            r#"
            [backend]
            password = "probe-secret"
            [failover]
            fence_command = "PGPASSWORD=fence-secret pg_ctl stop"
            rejoin_command = "/bin/rejoin --password rejoin-secret"
            [admin]
            admin_users = ["app"]
            [[nodes]]
            host = "127.0.0.1"
            port = 5432
            [[users]]
            name = "app"
            password = "app-secret"
            server_password = "server-secret"
            [[users]]
            name = "stored"
            scram_verifier = "SCRAM-SHA-256$4096:XxwuPUpbbH2On6CxwtPk9Q==$7i9IImnGKxGF//xBbrSi/CkSRmcTfR/QfaBZk6ZQCGo=:yGYlMjhuaiuAHUTfmZ1TqsZW0yP4wuLfm0V/beMoIQc="
            "#,
        )
        .unwrap();
        let rows = config_rows(&config);
        let get = |k: &str| {
            rows.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("proxy.listen"), Some("127.0.0.1:6432"));
        assert_eq!(get("consistency.level"), Some("read-after-commit"));
        assert_eq!(get("routing.load_balance"), Some("round-robin"));
        assert_eq!(get("nodes[0].port"), Some("5432"));
        assert_eq!(get("users[0].name"), Some("app"));
        assert_eq!(get("users[0].password"), Some("********"));
        assert_eq!(get("backend.password"), Some("********"));
        assert_eq!(get("failover.fence_command"), Some("********"));
        assert_eq!(get("users[1].scram_verifier"), Some("********"));
        assert_eq!(get("admin.admin_users"), Some("[\"app\"]"));
        assert!(
            rows.iter()
                .all(|(_, v)| !v.contains("secret") && !v.contains("7i9IImnG")),
            "a secret is shown: {rows:?}"
        );
    }
}

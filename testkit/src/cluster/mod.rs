//! Real local PostgreSQL clusters for `palisade demo` and the integration tests: one primary
//! made with `initdb` and N streaming replicas made with `pg_basebackup`, each a postmaster
//! that is our direct child on a free loopback port, with no unix sockets. PostgreSQL refuses
//! to run as root, so as root the servers run as the `postgres` OS user. Everything is torn
//! down on `Drop`, and, for clusters kept in statics whose `Drop` never runs, by an `atexit`
//! handler. The API is synchronous: it only spawns processes and waits for them.

mod bin;
mod error;
mod etcd;
mod exec;
mod node;
mod reaper;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tracing::{info, warn};

pub use bin::find_pg_bin;
pub use error::ClusterError;
pub use etcd::{find_etcd, LocalEtcd};
pub use node::LocalNode;

use crate::tls::{write_private, ServerCert};

use exec::{free_ports, log_tail, run, run_with_input, OsUser, Runner};
use node::TEARDOWN_TIMEOUT;

/// How long `LocalCluster::start` waits for every replica to be streaming.
const STREAMING_TIMEOUT: Duration = Duration::from_secs(60);

/// What to start. `ClusterOptions::default()` is a primary with two replicas.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of streaming replicas.
    pub replicas: usize,
    /// The database superuser, also used for replication.
    pub superuser: String,
    /// The superuser's password (scram-sha-256).
    pub password: String,
    /// pg_hba.conf lines placed before the defaults, so they take precedence.
    pub extra_hba: Vec<String>,
    /// postgresql.conf lines appended on every node, after the harness's own settings.
    pub extra_conf: Vec<String>,
    /// Where the data directories go; by default a fresh temporary directory removed on drop.
    /// A given directory is kept, and must be traversable by the `postgres` user under root.
    pub base_dir: Option<PathBuf>,
    /// Serve TLS (`ssl = on`) with this certificate on every node.
    pub tls: Option<ServerCert>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            replicas: 2,
            superuser: "postgres".to_string(),
            password: "postgres".to_string(),
            extra_hba: Vec::new(),
            extra_conf: Vec::new(),
            base_dir: None,
            tls: None,
        }
    }
}

/// A running primary and its replicas. Dropping it stops every node (immediate shutdown)
/// and removes its temporary directory.
#[derive(Debug)]
pub struct LocalCluster {
    // Declared before `temp_dir`: nodes must be gone before their directory is removed.
    nodes: Vec<LocalNode>,
    superuser: String,
    password: String,
    runner: Arc<Runner>,
    base_dir: PathBuf,
    temp_dir: Option<TempDir>,
}

impl LocalCluster {
    /// Creates and starts the cluster, returning once every replica is streaming. On any
    /// failure, whatever was started is stopped and removed again.
    pub fn start(opts: ClusterOptions) -> Result<LocalCluster, ClusterError> {
        let began = Instant::now();
        let bin_dir = find_pg_bin()?;
        let owner = OsUser::for_server()?;
        let (temp_dir, base_dir) = match &opts.base_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| ClusterError::io(format!("create {}", dir.display()), e))?;
                (None, dir.clone())
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("palisade-cluster-")
                    .tempdir()
                    .map_err(|e| ClusterError::io("create a temporary directory", e))?;
                reaper::track_dir(temp.path());
                let path = temp.path().to_path_buf();
                (Some(temp), path)
            }
        };
        // From here on, an early return drops `cluster`, which tears down what was started.
        let mut cluster = LocalCluster {
            nodes: Vec::new(),
            superuser: opts.superuser.clone(),
            password: opts.password.clone(),
            runner: Arc::new(Runner::new(bin_dir, owner, base_dir.clone())),
            base_dir,
            temp_dir,
        };
        cluster.runner.chown(&cluster.base_dir)?;
        let ports = free_ports(1 + opts.replicas)?;
        cluster.start_primary(ports[0], &opts)?;
        for (i, &port) in ports.iter().enumerate().skip(1) {
            cluster.start_replica(i, port)?;
        }
        cluster.wait_streaming(opts.replicas)?;
        info!(
            base_dir = %cluster.base_dir.display(),
            primary_port = ports[0],
            replicas = opts.replicas,
            elapsed_ms = began.elapsed().as_millis(),
            "local cluster ready"
        );
        Ok(cluster)
    }

    /// The primary (node 0).
    pub fn primary(&self) -> &LocalNode {
        &self.nodes[0]
    }

    /// The replicas, in order (node 1 onwards).
    pub fn replicas(&self) -> &[LocalNode] {
        &self.nodes[1..]
    }

    /// Every node, primary first.
    pub fn nodes(&self) -> &[LocalNode] {
        &self.nodes
    }

    /// Node `i` (0 is the primary).
    ///
    /// # Panics
    /// If `i` is not below the number of nodes, like slice indexing.
    pub fn node(&self, i: usize) -> &LocalNode {
        &self.nodes[i]
    }

    pub fn superuser(&self) -> &str {
        &self.superuser
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// The directory holding the PostgreSQL binaries in use.
    pub fn bin_dir(&self) -> &Path {
        self.runner.bin_dir()
    }

    /// The directory holding every node's data directory and log.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// Stops every node with an immediate shutdown (SIGQUIT), killing any that has not
    /// exited after 10 s. Idempotent; also done on drop. Nodes can be started again.
    pub fn stop(&mut self) {
        let signalled: Vec<&LocalNode> = self
            .nodes
            .iter()
            .filter(|n| n.send_shutdown(libc::SIGQUIT))
            .collect();
        for node in signalled {
            if let Err(e) = node.await_exit(TEARDOWN_TIMEOUT) {
                warn!(node = %node.name, error = %e, "node did not stop cleanly");
            }
        }
    }

    /// Runs `sql` on node `node` with psql as the superuser, stopping at the first error,
    /// and returns its unaligned, tuples-only output, trimmed.
    pub fn psql(&self, node: usize, sql: &str) -> Result<String, ClusterError> {
        let target = self.nodes.get(node).ok_or(ClusterError::NoSuchNode {
            index: node,
            count: self.nodes.len(),
        })?;
        let mut cmd = self.runner.client_cmd("psql");
        cmd.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            "postgres",
        ])
        .args(["-h", target.host(), "-p", &target.port.to_string()])
        .args(["-U", &self.superuser, "-f", "-"])
        .env("PGPASSWORD", &self.password)
        .env("PGCONNECT_TIMEOUT", "10");
        let out = run_with_input(&mut cmd, sql, &format!("psql on {}", target.name))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Brings node `node` back as a streaming replica of node `primary`
    /// (after a failover made `primary` the primary): stops it if it runs,
    /// rewinds it onto the new primary's timeline with pg_rewind (which
    /// finishes a crashed node's recovery first), makes it a standby that
    /// streams from `primary` under its own application name, and starts it.
    pub fn rejoin(&self, node: usize, primary: usize) -> Result<(), ClusterError> {
        let count = self.nodes.len();
        let missing = |index| ClusterError::NoSuchNode { index, count };
        let target = self.nodes.get(node).ok_or(missing(node))?;
        let source = self.nodes.get(primary).ok_or(missing(primary))?;
        // pg_rewind reads the source's timeline from its control file, which
        // a promotion updates only at the next checkpoint.
        self.psql(primary, "CHECKPOINT")?;
        target.stop()?;
        let source_server = format!(
            "host=127.0.0.1 port={} user={} dbname=postgres application_name={}",
            source.port,
            conninfo_value(&self.superuser),
            conninfo_value(&target.name),
        );
        let mut rewind = self.runner.server_cmd("pg_rewind");
        rewind
            .arg("--target-pgdata")
            .arg(&target.data_dir)
            .arg(format!("--source-server={source_server}"))
            .arg("--write-recovery-conf")
            .env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "10");
        run(&mut rewind, &format!("pg_rewind of {}", target.name))?;
        // pg_rewind copied the source's configuration, port included.
        append_lines(
            &target.data_dir.join("postgresql.conf"),
            &[format!("port = {}", target.port)],
        )?;
        // The replication connection needs the password that --write-recovery-conf left out.
        let conninfo = format!(
            "{source_server} password={}",
            conninfo_value(&self.password)
        );
        append_lines(
            &target.data_dir.join("postgresql.auto.conf"),
            &[format!("primary_conninfo = {}", conf_string(&conninfo))],
        )?;
        self.runner.chown_tree(&target.data_dir)?;
        target.start()
    }

    fn start_primary(&mut self, port: u16, opts: &ClusterOptions) -> Result<(), ClusterError> {
        let node = LocalNode::new(
            "node0".to_string(),
            port,
            &self.base_dir,
            self.runner.clone(),
        );
        let pwfile = self.base_dir.join("superuser.pw");
        write_file(&pwfile, &format!("{}\n", self.password))?;
        self.runner.chown(&pwfile)?;
        let mut initdb = self.runner.server_cmd("initdb");
        initdb
            .arg("-D")
            .arg(&node.data_dir)
            .args(["-U", &self.superuser])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args([
                "-A",
                "scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ]);
        let initialized = run(&mut initdb, "initdb");
        let removed = std::fs::remove_file(&pwfile);
        initialized?;
        removed.map_err(|e| ClusterError::io(format!("remove {}", pwfile.display()), e))?;

        append_lines(
            &node.data_dir.join("postgresql.conf"),
            &primary_conf(port, opts),
        )?;
        let mut hba = opts.extra_hba.clone();
        hba.push("host all all 127.0.0.1/32 scram-sha-256".to_string());
        hba.push("host replication all 127.0.0.1/32 scram-sha-256".to_string());
        write_file(&node.data_dir.join("pg_hba.conf"), &lines(&hba))?;
        if let Some(tls) = &opts.tls {
            // In the data directory, so pg_basebackup copies them to the replicas.
            write_file(&node.data_dir.join("server.crt"), &tls.cert_pem)?;
            let key = node.data_dir.join("server.key");
            write_private(&key, &tls.key_pem)
                .map_err(|e| ClusterError::io(format!("write {}", key.display()), e))?;
        }
        self.runner.chown_tree(&node.data_dir)?;
        self.start_node(node)
    }

    fn start_replica(&mut self, index: usize, port: u16) -> Result<(), ClusterError> {
        let primary_port = self.primary().port;
        let node = LocalNode::new(
            format!("node{index}"),
            port,
            &self.base_dir,
            self.runner.clone(),
        );
        let mut basebackup = self.runner.server_cmd("pg_basebackup");
        basebackup
            .args(["-h", "127.0.0.1", "-p", &primary_port.to_string()])
            .args(["-U", &self.superuser, "-D"])
            .arg(&node.data_dir)
            .args(["-X", "stream", "-R", "--no-sync", "-c", "fast"])
            .env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "10");
        run(&mut basebackup, &format!("pg_basebackup for {}", node.name))?;

        // The copied postgresql.conf carries the primary's port; the last setting wins.
        append_lines(
            &node.data_dir.join("postgresql.conf"),
            &[format!("port = {port}")],
        )?;
        let conninfo = format!(
            "host=127.0.0.1 port={primary_port} user={} password={} application_name={}",
            conninfo_value(&self.superuser),
            conninfo_value(&self.password),
            conninfo_value(&node.name),
        );
        append_lines(
            &node.data_dir.join("postgresql.auto.conf"),
            &[format!("primary_conninfo = {}", conf_string(&conninfo))],
        )?;
        self.runner.chown_tree(&node.data_dir)?;
        self.start_node(node)
    }

    /// A node whose start fails is dropped here, and `LocalNode`'s drop stops it.
    fn start_node(&mut self, node: LocalNode) -> Result<(), ClusterError> {
        node.start()?;
        self.nodes.push(node);
        Ok(())
    }

    fn wait_streaming(&self, replicas: usize) -> Result<(), ClusterError> {
        let began = Instant::now();
        let want = replicas.to_string();
        let sql = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'";
        loop {
            let streaming = self.psql(0, sql)?;
            if streaming == want {
                return Ok(());
            }
            if began.elapsed() >= STREAMING_TIMEOUT {
                return Err(ClusterError::Timeout {
                    what: format!("{replicas} replicas to stream (have {streaming})"),
                    waited: began.elapsed(),
                    log_tail: log_tail(&self.primary().log_path(), 20),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
        if let Some(temp) = self.temp_dir.take() {
            let path = temp.path().to_path_buf();
            if let Err(e) = temp.close() {
                warn!(dir = %path.display(), error = %e, "could not remove cluster directory");
            }
            reaper::forget_dir(&path);
        }
    }
}

/// The harness's postgresql.conf settings, then the caller's.
fn primary_conf(port: u16, opts: &ClusterOptions) -> Vec<String> {
    let senders = (opts.replicas + 4).max(10);
    let mut conf: Vec<String> = [
        "listen_addresses = '127.0.0.1'".to_string(),
        format!("port = {port}"),
        // No unix sockets: no /var/run/postgresql permissions to worry about.
        "unix_socket_directories = ''".to_string(),
        "wal_level = replica".to_string(),
        format!("max_wal_senders = {senders}"),
        format!("max_replication_slots = {senders}"),
        "hot_standby = on".to_string(),
        "hot_standby_feedback = on".to_string(),
        "wal_keep_size = '256MB'".to_string(),
        "fsync = off".to_string(),
        "synchronous_commit = on".to_string(),
        "full_page_writes = on".to_string(),
        // Lets pg_rewind turn a failed primary back into a replica.
        "wal_log_hints = on".to_string(),
        "shared_buffers = '32MB'".to_string(),
        "max_connections = 200".to_string(),
        "logging_collector = off".to_string(),
        "log_line_prefix = '%m [%p] '".to_string(),
    ]
    .into();
    if opts.tls.is_some() {
        conf.push("ssl = on".to_string());
    }
    conf.extend(opts.extra_conf.iter().cloned());
    conf
}

/// A libpq connection-string value, quoted.
fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A postgresql.conf string literal.
fn conf_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn lines(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn write_file(path: &Path, contents: &str) -> Result<(), ClusterError> {
    std::fs::write(path, contents)
        .map_err(|e| ClusterError::io(format!("write {}", path.display()), e))
}

fn append_lines(path: &Path, new_lines: &[String]) -> Result<(), ClusterError> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| ClusterError::io(format!("open {}", path.display()), e))?;
    let text = format!(
        "\n# added by palisade's cluster harness\n{}",
        lines(new_lines)
    );
    file.write_all(text.as_bytes())
        .map_err(|e| ClusterError::io(format!("append to {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_hostile_passwords() {
        assert_eq!(conninfo_value(r"a'b\c"), r"'a\'b\\c'");
        assert_eq!(conf_string("password='x'"), "'password=''x'''");
    }

    #[test]
    fn extra_conf_comes_last() {
        let opts = ClusterOptions {
            extra_conf: vec!["max_connections = 50".to_string()],
            ..ClusterOptions::default()
        };
        let conf = primary_conf(5432, &opts);
        assert_eq!(
            conf.last().map(String::as_str),
            Some("max_connections = 50")
        );
        assert!(conf.contains(&"port = 5432".to_string()));
    }
}

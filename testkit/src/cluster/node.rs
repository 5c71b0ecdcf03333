//! One PostgreSQL node of a local cluster: its postmaster is our direct child, so its pid is
//! known and it can be stopped, killed, frozen and restarted by tests; a thread of its own
//! reaps it the moment it exits, even when something outside kills it.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::exec::{log_tail, Runner};
use super::reaper::{self, Watched};
use super::ClusterError;

/// How long a postmaster may take to accept connections, crash recovery included.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before the postmaster is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an immediate shutdown may take before the postmaster is killed.
pub(crate) const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);
const LOG_TAIL_LINES: usize = 20;

/// Log messages of a start that failed only because the previous postmaster's children
/// (after a SIGKILL) have not noticed its death yet; such a start is retried.
const TRANSIENT_START_FAILURES: &[&str] = &[
    "pre-existing shared memory block",
    "lock file \"postmaster.pid\" already exists",
];

/// One PostgreSQL server of a [`LocalCluster`](super::LocalCluster).
#[derive(Debug)]
pub struct LocalNode {
    /// "node0" for the primary, "node1", "node2", ... for the replicas.
    pub name: String,
    /// The loopback TCP port the server listens on.
    pub port: u16,
    /// The data directory (`PGDATA`).
    pub data_dir: PathBuf,
    host: String,
    log_path: PathBuf,
    runner: Arc<Runner>,
    /// Serializes start and stop, so two threads cannot spawn two postmasters.
    lifecycle: Mutex<()>,
    /// The running postmaster, which a thread of its own reaps when it exits; held only
    /// briefly, so `pid()` never waits on a slow stop.
    child: Mutex<Option<Arc<Watched>>>,
}

/// What `poll` found out about the postmaster.
enum Poll {
    Running(u32),
    /// It exited (and was reaped) since the last poll.
    Exited(String),
    Absent,
}

impl LocalNode {
    pub(crate) fn new(name: String, port: u16, base_dir: &Path, runner: Arc<Runner>) -> Self {
        LocalNode {
            data_dir: base_dir.join(&name),
            log_path: base_dir.join(format!("{name}.log")),
            name,
            port,
            host: "127.0.0.1".to_string(),
            runner,
            lifecycle: Mutex::new(()),
            child: Mutex::new(None),
        }
    }

    /// The address the server listens on: always "127.0.0.1".
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The postmaster's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        match self.poll() {
            Poll::Running(pid) => Some(pid),
            Poll::Exited(_) | Poll::Absent => None,
        }
    }

    /// Whether the postmaster process is alive (a SIGSTOPped one counts as alive).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// The file the postmaster's stdout and stderr are appended to.
    pub fn log_path(&self) -> PathBuf {
        self.log_path.clone()
    }

    /// Starts the postmaster (if it is not running) and waits until it accepts connections,
    /// for at most 60 s. A postmaster that does not become ready in time is killed.
    pub fn start(&self) -> Result<(), ClusterError> {
        let _op = lock(&self.lifecycle);
        let deadline = Instant::now() + START_TIMEOUT;
        if self.is_running() {
            return self.wait_ready(deadline);
        }
        loop {
            let log_start = std::fs::metadata(&self.log_path).map_or(0, |m| m.len());
            self.spawn()?;
            match self.wait_ready(deadline) {
                Ok(()) => {
                    info!(node = %self.name, port = self.port, pid = self.pid(), "started");
                    return Ok(());
                }
                Err(ClusterError::Exited { .. })
                    if Instant::now() < deadline && self.failed_transiently(log_start) =>
                {
                    debug!(node = %self.name, "previous postmaster's children still exiting; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(err) => {
                    self.send_shutdown(libc::SIGKILL);
                    // Already failing: the kill is best effort, the original error is the news.
                    let _ = self.await_exit(TEARDOWN_TIMEOUT);
                    return Err(err);
                }
            }
        }
    }

    /// Fast shutdown (SIGINT: roll back sessions, checkpoint, exit) and wait for the exit.
    /// Stopping a node that is not running is not an error.
    pub fn stop(&self) -> Result<(), ClusterError> {
        let _op = lock(&self.lifecycle);
        if self.send_shutdown(libc::SIGINT) {
            self.await_exit(STOP_TIMEOUT)?;
        }
        Ok(())
    }

    /// Sends `signal` (SIGKILL, SIGSTOP, SIGCONT, ...) to the postmaster. After SIGKILL it
    /// also waits for the process to die, so that `start` may follow at once.
    pub fn kill(&self, signal: i32) -> Result<(), ClusterError> {
        let not_running = || ClusterError::NotRunning {
            node: self.name.clone(),
        };
        let postmaster = self.postmaster().ok_or_else(not_running)?;
        let pid = postmaster.pid();
        postmaster
            .signal(signal)
            .ok_or_else(not_running)?
            .map_err(|e| ClusterError::io(format!("{}: kill({pid}, {signal})", self.name), e))?;
        info!(node = %self.name, pid, signal, "signalled");
        if signal == libc::SIGKILL {
            self.await_exit(TEARDOWN_TIMEOUT)?;
        }
        Ok(())
    }

    /// Sends `signal` to the postmaster and every child of it (backends, WAL sender and
    /// receiver, ...): SIGSTOP freezes the whole server as a hung machine would, SIGCONT
    /// thaws it.
    pub fn signal_server(&self, signal: i32) -> Result<(), ClusterError> {
        let postmaster = self.postmaster().ok_or_else(|| ClusterError::NotRunning {
            node: self.name.clone(),
        })?;
        let pid = postmaster.pid();
        let children = children_of(pid);
        postmaster
            .signal(signal)
            .transpose()
            .map_err(|e| ClusterError::io(format!("{}: kill({pid}, {signal})", self.name), e))?;
        for child in children {
            // A backend may have exited since the listing; that is no failure.
            let _ = crate::signal::send(child, signal);
        }
        info!(node = %self.name, pid, signal, "server signalled");
        Ok(())
    }

    /// Sends a shutdown signal, plus SIGCONT so that a frozen postmaster can act on it.
    /// Returns whether there was a postmaster to signal.
    pub(crate) fn send_shutdown(&self, signal: i32) -> bool {
        let Some(postmaster) = self.postmaster() else {
            return false;
        };
        let pid = postmaster.pid();
        for sig in [signal, libc::SIGCONT] {
            if let Some(Err(e)) = postmaster.signal(sig) {
                warn!(node = %self.name, pid, sig, error = %e, "could not signal postmaster");
            }
        }
        true
    }

    /// Waits for the postmaster to exit; past `grace` it is killed and the wait fails.
    pub(crate) fn await_exit(&self, grace: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + grace;
        loop {
            match self.poll() {
                Poll::Exited(status) => {
                    info!(node = %self.name, port = self.port, %status, "stopped");
                    return Ok(());
                }
                Poll::Absent => return Ok(()),
                Poll::Running(pid) if Instant::now() >= deadline => {
                    warn!(node = %self.name, pid, "postmaster did not exit in time; killing it");
                    self.kill_and_reap();
                    return Err(ClusterError::Timeout {
                        what: format!("{} (pid {pid}) to exit", self.name),
                        waited: grace,
                        log_tail: log_tail(&self.log_path, LOG_TAIL_LINES),
                    });
                }
                Poll::Running(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn spawn(&self) -> Result<(), ClusterError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| ClusterError::io(format!("open {}", self.log_path.display()), e))?;
        self.runner.chown(&self.log_path)?;
        let log_err = log
            .try_clone()
            .map_err(|e| ClusterError::io(format!("dup {}", self.log_path.display()), e))?;
        let child = self
            .runner
            .server_cmd("postgres")
            .arg("-D")
            .arg(&self.data_dir)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|e| ClusterError::io(format!("{}: spawn postgres", self.name), e))?;
        let pid = child.id();
        let watched = reaper::watch(child)
            .map_err(|e| ClusterError::io(format!("{}: spawn a reaper thread", self.name), e))?;
        debug!(node = %self.name, pid, "postmaster spawned");
        *lock(&self.child) = Some(watched);
        Ok(())
    }

    /// Polls `pg_isready` until the server accepts connections, the postmaster exits, or the
    /// deadline passes.
    fn wait_ready(&self, deadline: Instant) -> Result<(), ClusterError> {
        let started = Instant::now();
        loop {
            match self.poll() {
                Poll::Running(_) => {}
                Poll::Exited(status) => {
                    return Err(ClusterError::Exited {
                        node: self.name.clone(),
                        status,
                        log_tail: log_tail(&self.log_path, LOG_TAIL_LINES),
                    })
                }
                Poll::Absent => {
                    return Err(ClusterError::NotRunning {
                        node: self.name.clone(),
                    })
                }
            }
            if self.accepts_connections() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout {
                    what: format!("{} on port {} to accept connections", self.name, self.port),
                    waited: started.elapsed(),
                    log_tail: log_tail(&self.log_path, LOG_TAIL_LINES),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    fn accepts_connections(&self) -> bool {
        self.runner
            .client_cmd("pg_isready")
            .args([
                "-q",
                "-t",
                "2",
                "-h",
                &self.host,
                "-p",
                &self.port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn failed_transiently(&self, log_start: u64) -> bool {
        let Ok(log) = std::fs::read(&self.log_path) else {
            return false;
        };
        let start = usize::try_from(log_start).unwrap_or(0).min(log.len());
        let recent = String::from_utf8_lossy(&log[start..]);
        TRANSIENT_START_FAILURES.iter().any(|m| recent.contains(m))
    }

    /// Whether the postmaster runs; one that the reaper thread has reaped is forgotten here.
    fn poll(&self) -> Poll {
        let mut slot = lock(&self.child);
        let Some(postmaster) = slot.as_ref() else {
            return Poll::Absent;
        };
        match postmaster.exit_status() {
            None => Poll::Running(postmaster.pid()),
            Some(status) => {
                *slot = None;
                Poll::Exited(status)
            }
        }
    }

    /// The postmaster last spawned, unless it has been seen to exit.
    fn postmaster(&self) -> Option<Arc<Watched>> {
        lock(&self.child).clone()
    }

    fn kill_and_reap(&self) {
        let taken = lock(&self.child).take();
        if let Some(postmaster) = taken {
            let _ = postmaster.signal(libc::SIGKILL);
            postmaster.wait();
        }
    }
}

impl Drop for LocalNode {
    /// A safety net: the cluster stops its nodes first, so this normally finds nothing.
    fn drop(&mut self) {
        if self.send_shutdown(libc::SIGQUIT) {
            let _ = self.await_exit(TEARDOWN_TIMEOUT);
        }
    }
}

/// The pids whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

//! A local single-member etcd for the tests and demos of several proxies
//! sharing one epoch: loopback, free ports, a temporary data directory, run
//! as the current user (etcd, unlike PostgreSQL, does not mind root), reaped
//! like the postmasters. [`LocalEtcd::stop`] kills it (a lost etcd);
//! [`LocalEtcd::start_again`] brings it back on the same ports and data.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::exec::{free_ports, log_tail};
use super::reaper::{self, Watched};
use super::ClusterError;

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The `etcd` binary: `ETCD_BIN`, else `etcd` on `PATH`, else the Debian
/// package's `/usr/bin/etcd`.
pub fn find_etcd() -> Result<PathBuf, ClusterError> {
    let mut searched = Vec::new();
    if let Some(bin) = std::env::var_os("ETCD_BIN") {
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return Ok(bin);
        }
        searched.push(bin.display().to_string());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]);
    for dir in dirs {
        let bin = dir.join("etcd");
        if bin.is_file() {
            return Ok(bin);
        }
        searched.push(bin.display().to_string());
    }
    Err(ClusterError::NoEtcd {
        searched: searched.join(", "),
    })
}

/// A running etcd; dropping it kills it and removes its data.
pub struct LocalEtcd {
    bin: PathBuf,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    child: Mutex<Option<Arc<Watched>>>,
}

impl LocalEtcd {
    /// Starts etcd and waits until it answers `/health`.
    pub fn start() -> Result<LocalEtcd, ClusterError> {
        let bin = find_etcd()?;
        let dir = tempfile::Builder::new()
            .prefix("palisade-etcd-")
            .tempdir()
            .map_err(|e| ClusterError::io("create etcd's directory", e))?;
        reaper::track_dir(dir.path());
        let ports = free_ports(2)?;
        let etcd = LocalEtcd {
            bin,
            dir,
            client_port: ports[0],
            peer_port: ports[1],
            child: Mutex::new(None),
        };
        etcd.start_again()?;
        Ok(etcd)
    }

    /// The client URL, for `failover.etcd_endpoints`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    pub fn is_running(&self) -> bool {
        self.watched().is_some_and(|w| w.exit_status().is_none())
    }

    /// Kills etcd (SIGKILL) and waits until it is reaped.
    pub fn stop(&self) {
        let taken = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(child) = taken {
            let _ = child.signal(libc::SIGKILL);
            child.wait();
        }
    }

    /// Starts etcd (again) on its ports and data, and waits until it is healthy.
    pub fn start_again(&self) -> Result<(), ClusterError> {
        if self.is_running() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| ClusterError::io("open etcd's log", e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| ClusterError::io("dup etcd's log", e))?;
        let child = self
            .command(&self.dir.path().join("data"))
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|e| ClusterError::io(format!("spawn {}", self.bin.display()), e))?;
        let watched =
            reaper::watch(child).map_err(|e| ClusterError::io("spawn etcd's reaper", e))?;
        *self.child.lock().unwrap_or_else(PoisonError::into_inner) = Some(watched);
        self.wait_healthy()
    }

    fn command(&self, data: &Path) -> Command {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--name")
            .arg("palisade-test")
            .arg("--data-dir")
            .arg(data)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("palisade-test={peer}"))
            .stdin(Stdio::null());
        cmd
    }

    fn watched(&self) -> Option<Arc<Watched>> {
        self.child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn wait_healthy(&self) -> Result<(), ClusterError> {
        let started = Instant::now();
        while started.elapsed() < READY_TIMEOUT {
            if let Some(status) = self.watched().and_then(|w| w.exit_status()) {
                return Err(ClusterError::Exited {
                    node: "etcd".into(),
                    status,
                    log_tail: log_tail(&self.log_path(), 20),
                });
            }
            if self.healthy() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(ClusterError::Timeout {
            what: "etcd to report itself healthy".into(),
            waited: READY_TIMEOUT,
            log_tail: log_tail(&self.log_path(), 20),
        })
    }

    /// `GET /health` says `"health":"true"`.
    fn healthy(&self) -> bool {
        let ask = || -> std::io::Result<String> {
            let mut stream = TcpStream::connect(("127.0.0.1", self.client_port))?;
            stream.set_read_timeout(Some(Duration::from_secs(1)))?;
            stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok(answer)
        };
        ask().is_ok_and(|a| a.contains("\"health\":\"true\""))
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        self.stop();
        reaper::forget_dir(self.dir.path());
    }
}

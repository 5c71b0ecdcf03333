//! Running PostgreSQL's programs: as the `postgres` OS user when we are root (the server
//! refuses to run as root), with a clean `PG*` environment, and with failures turned into
//! errors that carry the program's stderr.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::ClusterError;

/// libpq variables that would silently change where or how our commands connect.
const SCRUBBED_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGDATABASE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGAPPNAME",
    "PGDATA",
    "PGTARGETSESSIONATTRS",
    "PGCONNECT_TIMEOUT",
];

/// The unprivileged account that owns the data directories when we run as root.
const SERVER_OS_USER: &str = "postgres";

#[derive(Debug, Clone, Copy)]
pub(crate) struct OsUser {
    uid: u32,
    gid: u32,
}

impl OsUser {
    /// `Some(postgres)` when running as root, `None` (run as ourselves) otherwise.
    pub(crate) fn for_server() -> Result<Option<OsUser>, ClusterError> {
        // SAFETY: geteuid(2) cannot fail and has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        lookup_user(SERVER_OS_USER)
            .map(Some)
            .ok_or_else(|| ClusterError::NoOsUser {
                user: SERVER_OS_USER.to_string(),
            })
    }
}

fn lookup_user(name: &str) -> Option<OsUser> {
    let name = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: all-zero is a valid `passwd` (null pointers, zero ids); getpwnam_r fills it.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buf.len()` is the buffer's size.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(OsUser {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}

/// Builds commands for one cluster: where the binaries are and who runs the servers.
#[derive(Debug)]
pub(crate) struct Runner {
    bin_dir: PathBuf,
    owner: Option<OsUser>,
    work_dir: PathBuf,
}

impl Runner {
    pub(crate) fn new(bin_dir: PathBuf, owner: Option<OsUser>, work_dir: PathBuf) -> Self {
        Runner {
            bin_dir,
            owner,
            work_dir,
        }
    }

    pub(crate) fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// A server-side program (initdb, postgres, pg_basebackup, ...), run as the data owner.
    pub(crate) fn server_cmd(&self, program: &str) -> Command {
        let mut cmd = self.client_cmd(program);
        cmd.current_dir(&self.work_dir);
        if let Some(owner) = self.owner {
            cmd.uid(owner.uid).gid(owner.gid);
        }
        cmd
    }

    /// A client program (psql, pg_isready), run as ourselves.
    pub(crate) fn client_cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        for var in SCRUBBED_ENV {
            cmd.env_remove(var);
        }
        cmd.env("LC_ALL", "C").stdin(Stdio::null());
        cmd
    }

    /// Hands `path` to the data owner (a no-op when we are not root).
    pub(crate) fn chown(&self, path: &Path) -> Result<(), ClusterError> {
        match self.owner {
            Some(owner) => std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid))
                .map_err(|e| ClusterError::io(format!("chown {}", path.display()), e)),
            None => Ok(()),
        }
    }

    /// Hands a whole directory tree to the data owner; symlinks are left alone.
    pub(crate) fn chown_tree(&self, root: &Path) -> Result<(), ClusterError> {
        if self.owner.is_none() {
            return Ok(());
        }
        let mut pending = vec![root.to_path_buf()];
        while let Some(path) = pending.pop() {
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|e| ClusterError::io(format!("stat {}", path.display()), e))?;
            if meta.file_type().is_symlink() {
                continue;
            }
            self.chown(&path)?;
            if meta.is_dir() {
                let entries = std::fs::read_dir(&path)
                    .map_err(|e| ClusterError::io(format!("list {}", path.display()), e))?;
                for entry in entries {
                    let entry = entry
                        .map_err(|e| ClusterError::io(format!("list {}", path.display()), e))?;
                    pending.push(entry.path());
                }
            }
        }
        Ok(())
    }
}

/// Runs `cmd` to completion; a non-zero exit becomes `ClusterError::Command` with its output.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<Output, ClusterError> {
    let out = cmd
        .output()
        .map_err(|e| ClusterError::io(format!("spawn {what}"), e))?;
    check(out, what)
}

/// Runs `cmd` with `input` on its stdin. Input is written from a second thread so that a
/// large input and a large output cannot deadlock on full pipes.
pub(crate) fn run_with_input(
    cmd: &mut Command,
    input: &str,
    what: &str,
) -> Result<Output, ClusterError> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ClusterError::io(format!("spawn {what}"), e))?;
    let stdin = child.stdin.take();
    let out = std::thread::scope(|scope| {
        scope.spawn(move || {
            if let Some(mut stdin) = stdin {
                // A write error means the program exited early; its status tells why.
                let _ = stdin.write_all(input.as_bytes());
            }
        });
        child.wait_with_output()
    })
    .map_err(|e| ClusterError::io(format!("wait for {what}"), e))?;
    check(out, what)
}

fn check(out: Output, what: &str) -> Result<Output, ClusterError> {
    if out.status.success() {
        return Ok(out);
    }
    let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if stderr.is_empty() {
        stderr = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    Err(ClusterError::Command {
        what: what.to_string(),
        status: out.status.to_string(),
        stderr,
    })
}

/// `count` distinct free loopback ports. All listeners are held until every port is chosen,
/// so the kernel cannot hand out the same port twice.
pub(crate) fn free_ports(count: usize) -> Result<Vec<u16>, ClusterError> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClusterError::io("bind a free loopback port", e))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClusterError::io("read a free loopback port", e))
}

/// The last `lines` lines of a log file, or an empty string if it cannot be read.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(text) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

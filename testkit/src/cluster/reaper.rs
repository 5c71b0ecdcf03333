//! Reaping postmasters. Each spawned postmaster is [`watch`]ed by a thread of its own that
//! reaps it the moment it exits, however it dies: a user who `kill -9`s the demo's primary
//! must be able to start it again with `pg_ctl`, which a zombie holding the pid in
//! `postmaster.pid` would refuse.
//!
//! And last-resort cleanup at process exit. Integration tests keep one cluster in a
//! `static OnceLock`, whose `Drop` never runs; without this, every test binary would leave
//! its postmasters running and its data directories behind. Live postmaster pids and owned
//! temporary directories are registered here, and a `libc::atexit` handler stops whatever
//! is still registered when the process exits normally.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, PoisonError, TryLockError};
use std::time::{Duration, Instant};

struct Registry {
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    pids: Vec::new(),
    dirs: Vec::new(),
});
static INSTALL: Once = Once::new();

/// How long an exiting process gives each postmaster to finish an immediate shutdown (which
/// also ends its backends) before it is killed outright.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// A spawned process and, once its watcher has reaped it, how it ended.
#[derive(Debug)]
pub(crate) struct Watched {
    pid: u32,
    /// `None` while the process has not been reaped. Signals are sent holding this lock and
    /// the watcher reaps holding it, so a signal can never reach a recycled pid.
    exit: Mutex<Option<String>>,
    exited: Condvar,
}

/// Registers `child` for the exit handler and hands it to a thread that waits for it and
/// reaps it as soon as it exits.
pub(crate) fn watch(child: Child) -> io::Result<Arc<Watched>> {
    let pid = child.id();
    track_pid(pid);
    let watched = Arc::new(Watched {
        pid,
        exit: Mutex::new(None),
        exited: Condvar::new(),
    });
    let watcher = watched.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("reap-{pid}"))
        .spawn(move || watcher.reap(child));
    if let Err(e) = spawned {
        // The child went down with the closure, unwaited: end it here instead.
        signal(pid, libc::SIGKILL);
        wait_blocking(pid);
        forget_pid(pid);
        return Err(e);
    }
    Ok(watched)
}

impl Watched {
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// How the process ended, once it has been reaped.
    pub(crate) fn exit_status(&self) -> Option<String> {
        lock(&self.exit).clone()
    }

    /// Sends `sig` unless the process has already been reaped (then `None`).
    pub(crate) fn signal(&self, sig: i32) -> Option<io::Result<()>> {
        let exit = lock(&self.exit);
        exit.is_none().then(|| crate::signal::send(self.pid, sig))
    }

    /// Blocks until the watcher has reaped the process.
    pub(crate) fn wait(&self) -> String {
        let mut exit = lock(&self.exit);
        loop {
            if let Some(status) = exit.as_ref() {
                return status.clone();
            }
            exit = self
                .exited
                .wait(exit)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The watcher thread: waits for the exit without reaping, then reaps under the lock
    /// that signals are sent under, and forgets the pid (which the kernel may reuse from
    /// now on) in the same breath.
    fn reap(&self, mut child: Child) {
        wait_exited(self.pid);
        let mut exit = lock(&self.exit);
        let status = match child.wait() {
            Ok(status) => status.to_string(),
            // Reaped by the exit handler already.
            Err(e) => format!("unknown: {e}"),
        };
        forget_pid(self.pid);
        *exit = Some(status);
        self.exited.notify_all();
    }
}

/// Waits until `pid` has exited, leaving it to be reaped (`WNOWAIT`).
fn wait_exited(pid: u32) {
    let pid = libc::id_t::from(pid);
    loop {
        // SAFETY: all-zero is a valid `siginfo_t`, which waitid fills in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid out-pointer for the duration of the call.
        let rc =
            unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn track_pid(pid: u32) {
    install();
    with_registry(|r| r.pids.push(pid));
}

fn forget_pid(pid: u32) {
    with_registry(|r| r.pids.retain(|p| *p != pid));
}

pub(crate) fn track_dir(dir: &Path) {
    install();
    with_registry(|r| r.dirs.push(dir.to_path_buf()));
}

pub(crate) fn forget_dir(dir: &Path) {
    with_registry(|r| r.dirs.retain(|d| d != dir));
}

fn with_registry(f: impl FnOnce(&mut Registry)) {
    let mut guard = REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut guard);
}

fn install() {
    INSTALL.call_once(|| {
        // SAFETY: `reap_at_exit` is a plain `extern "C" fn()` that never unwinds.
        let rc = unsafe { libc::atexit(reap_at_exit) };
        if rc != 0 {
            tracing::warn!(
                rc,
                "could not register the atexit cleanup; servers may outlive this process"
            );
        }
    });
}

extern "C" fn reap_at_exit() {
    let Some((pids, dirs)) = take_registered() else {
        return;
    };
    for &pid in &pids {
        signal(pid, libc::SIGQUIT);
        signal(pid, libc::SIGCONT);
    }
    let deadline = Instant::now() + EXIT_GRACE;
    for &pid in &pids {
        while !reaped(pid) {
            if Instant::now() >= deadline {
                signal(pid, libc::SIGKILL);
                wait_blocking(pid);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for dir in &dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Empties the registry. Another thread may still be holding the lock when `exit` runs, so
/// wait a little for it rather than deadlocking the exit.
fn take_registered() -> Option<(Vec<u32>, Vec<PathBuf>)> {
    for _ in 0..100 {
        let mut guard = match REGISTRY.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        return Some((
            std::mem::take(&mut guard.pids),
            std::mem::take(&mut guard.dirs),
        ));
    }
    None
}

fn signal(pid: u32, sig: i32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, sig) };
    }
}

/// True once `pid` has exited and been reaped, or is not our child any more.
fn reaped(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer for the duration of the call.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    rc != 0
}

fn wait_blocking(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer for the duration of the call.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
}

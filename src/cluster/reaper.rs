//! Last-resort cleanup at process exit. Integration tests keep one cluster in a
//! `static OnceLock`, whose `Drop` never runs; without this, every test binary would leave
//! its postmasters running and its data directories behind. Live postmaster pids and owned
//! temporary directories are registered here, and a `libc::atexit` handler stops whatever
//! is still registered when the process exits normally.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once, TryLockError};
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

pub(crate) fn track_pid(pid: u32) {
    install();
    with_registry(|r| r.pids.push(pid));
}

pub(crate) fn forget_pid(pid: u32) {
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

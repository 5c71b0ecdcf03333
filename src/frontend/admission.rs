//! Who gets in, and how fast: the limits that keep one client from locking
//! out the rest.
//!
//! - **Sessions** (logged-in clients, console included) are capped at
//!   `max_client_connections`. A socket that arrives while every slot is
//!   taken is refused at once with 53300 and closed, never held.
//! - **Logins in progress** (startup and authentication) are capped at
//!   `max_pending_logins`, apart from the sessions: a connection takes a
//!   session slot only once it has authenticated. At the cap a newcomer
//!   closes the oldest login in progress, since a real login takes
//!   milliseconds and the oldest is the one most likely stalled on purpose;
//!   so no number of idle sockets keeps a real client out. Each login has
//!   `startup_timeout_ms` to finish.
//! - **Failed logins slow their address down.** After n recent failures an
//!   address's logins are spaced `login_failure_delay_ms × 2^(n-1)` apart
//!   (at most `max_login_failure_delay_ms`), however many it opens at once;
//!   a login that would wait longer than that is refused at once, before
//!   any password is checked. Other addresses are not touched.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::config::ProxyConfig;
use crate::protocol::{messages, Sqlstate};

/// Failures older than this (since an address's last one) are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Addresses whose failures are remembered at most; past it, those whose
/// failures are forgotten make room (checked at most once a second).
const MAX_TRACKED: usize = 65_536;

/// The proxy's admission limits, shared by the listener and every client task.
pub struct Admission {
    sessions: Arc<Semaphore>,
    max_sessions: usize,
    pending: Arc<Mutex<Pending>>,
    failures: Mutex<Failures>,
    startup_timeout: Duration,
    first_delay: Duration,
    max_delay: Duration,
}

/// The logins in progress, by arrival: the first entry is the oldest.
struct Pending {
    cap: usize,
    next: u64,
    /// Sending on one closes that login.
    logins: BTreeMap<u64, oneshot::Sender<()>>,
}

/// One address's recent failed logins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    count: u32,
    last: Instant,
    /// The earliest its next login may start.
    next_turn: Instant,
}

struct Failures {
    by_address: HashMap<IpAddr, Record>,
    pruned: Instant,
}

/// Why a login in progress must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lapse {
    /// `startup_timeout_ms` passed.
    TimedOut,
    /// A newer connection needed its place (`max_pending_logins`).
    Evicted,
}

/// One accepted connection: a login in progress until [`Admission::admit`]
/// gives it a session slot, which it holds until it is dropped.
pub struct Arrival {
    id: u64,
    pending: Arc<Mutex<Pending>>,
    evicted: Option<oneshot::Receiver<()>>,
    deadline: Instant,
    permit: Option<OwnedSemaphorePermit>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Admission {
    pub fn new(proxy: &ProxyConfig) -> Admission {
        Admission {
            sessions: Arc::new(Semaphore::new(proxy.max_client_connections)),
            max_sessions: proxy.max_client_connections,
            pending: Arc::new(Mutex::new(Pending {
                cap: proxy.max_pending_logins,
                next: 0,
                logins: BTreeMap::new(),
            })),
            failures: Mutex::new(Failures {
                by_address: HashMap::new(),
                pruned: Instant::now(),
            }),
            startup_timeout: proxy.startup_timeout(),
            first_delay: Duration::from_millis(proxy.login_failure_delay_ms),
            max_delay: Duration::from_millis(proxy.max_login_failure_delay_ms),
        }
    }

    /// A socket was just accepted: `None` when every session slot is taken
    /// (refuse it with [`refuse_at_once`]). At the cap on logins in
    /// progress, the oldest is told to stop.
    pub fn arrive(&self) -> Option<Arrival> {
        if self.sessions.available_permits() == 0 {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let mut pending = lock(&self.pending);
        if pending.logins.len() >= pending.cap {
            if let Some((_, oldest)) = pending.logins.pop_first() {
                let _ = oldest.send(());
            }
        }
        let id = pending.next;
        pending.next += 1;
        pending.logins.insert(id, tx);
        Some(Arrival {
            id,
            pending: self.pending.clone(),
            evicted: Some(rx),
            deadline: Instant::now() + self.startup_timeout,
            permit: None,
        })
    }

    /// Logged-in sessions now (console included).
    pub fn sessions(&self) -> usize {
        self.max_sessions
            .saturating_sub(self.sessions.available_permits())
    }

    /// Connections still starting up or authenticating now.
    pub fn logins_in_progress(&self) -> usize {
        lock(&self.pending).logins.len()
    }

    /// The login authenticated: it is no longer in progress and takes a
    /// session slot; `false` when none is left.
    pub fn admit(&self, arrival: &mut Arrival) -> bool {
        arrival.leave_pending();
        arrival.permit = self.sessions.clone().try_acquire_owned().ok();
        arrival.permit.is_some()
    }

    /// Waits for `ip`'s turn to try a login; `Err` with the wait it would
    /// have had when that is longer than `max_login_failure_delay_ms`.
    pub async fn turn(&self, ip: IpAddr) -> Result<(), Duration> {
        let at = {
            let mut failures = lock(&self.failures);
            let Some(record) = failures.by_address.get_mut(&ip) else {
                return Ok(());
            };
            schedule(record, Instant::now(), self.first_delay, self.max_delay)?
        };
        if let Some(at) = at {
            tokio::time::sleep_until(at.into()).await;
        }
        Ok(())
    }

    /// A login from `ip` failed.
    pub fn failed(&self, ip: IpAddr) {
        if self.first_delay.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut failures = lock(&self.failures);
        let failures = &mut *failures;
        let tracked = &mut failures.by_address;
        if tracked.len() >= MAX_TRACKED && !tracked.contains_key(&ip) {
            if now.duration_since(failures.pruned) < Duration::from_secs(1) {
                return;
            }
            failures.pruned = now;
            tracked.retain(|_, r| now.duration_since(r.last) <= FORGET_AFTER);
            if tracked.len() >= MAX_TRACKED {
                return;
            }
        }
        let record = tracked.entry(ip).or_insert(Record {
            count: 0,
            last: now,
            next_turn: now,
        });
        if now.duration_since(record.last) > FORGET_AFTER {
            record.count = 0;
        }
        record.count = record.count.saturating_add(1);
        record.last = now;
    }
}

/// The delay after `failures` recent failures: `first`, doubled per
/// further failure, at most `max`.
fn delay(failures: u32, first: Duration, max: Duration) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => first.saturating_mul(1 << (n - 1).min(20)).min(max),
    }
}

/// When a login from the address of `record` may start, booking that turn:
/// `None` at once, `Some(at)` later, `Err(wait)` when that is further off
/// than `max`. Turns are spaced by the delay, so parallel logins from one
/// address wait one after another.
fn schedule(
    record: &mut Record,
    now: Instant,
    first: Duration,
    max: Duration,
) -> Result<Option<Instant>, Duration> {
    if now.duration_since(record.last) > FORGET_AFTER {
        record.count = 0;
    }
    let d = delay(record.count, first, max);
    if d.is_zero() {
        return Ok(None);
    }
    let at = (record.last + d).max(record.next_turn).max(now);
    let wait = at - now;
    if wait > max {
        return Err(wait);
    }
    record.next_turn = at + d;
    Ok((wait > Duration::ZERO).then_some(at))
}

impl Arrival {
    /// Resolves when the login must stop ([`Lapse`]); never once it has
    /// been admitted. Call once.
    pub fn lapse(&mut self) -> impl Future<Output = Lapse> + Send + 'static {
        let evicted = self.evicted.take();
        let deadline = self.deadline;
        async move {
            let Some(evicted) = evicted else {
                return std::future::pending().await;
            };
            tokio::select! {
                told = evicted => match told {
                    Ok(()) => Lapse::Evicted,
                    // Admitted: its place was given up, and its deadline with it.
                    Err(_) => std::future::pending().await,
                },
                () = tokio::time::sleep_until(deadline.into()) => Lapse::TimedOut,
            }
        }
    }

    fn leave_pending(&self) {
        lock(&self.pending).logins.remove(&self.id);
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        self.leave_pending();
    }
}

/// Tells a socket that came while every session slot was taken that there
/// is no room (53300, as PostgreSQL says it) and closes it, without
/// waiting for anything: a fresh socket takes the few bytes at once.
pub fn refuse_at_once(stream: TcpStream) {
    let mut out = BytesMut::new();
    messages::error(
        &mut out,
        true,
        Sqlstate::TooManyConnections,
        "sorry, too many clients already",
    );
    let _ = stream.set_nodelay(true);
    let _ = stream.try_write(&out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(sessions: usize, pending: usize) -> Admission {
        Admission::new(&ProxyConfig {
            max_client_connections: sessions,
            max_pending_logins: pending,
            ..ProxyConfig::default()
        })
    }

    type Lapsing = std::pin::Pin<Box<dyn Future<Output = Lapse> + Send>>;

    /// What a lapse has come to so far, without waiting.
    fn now(lapse: &mut Lapsing) -> Option<Lapse> {
        let waker = std::task::Waker::noop();
        match lapse
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
        {
            std::task::Poll::Ready(l) => Some(l),
            std::task::Poll::Pending => None,
        }
    }

    #[tokio::test]
    async fn the_oldest_login_in_progress_makes_room_for_a_newcomer() {
        let admission = admission(10, 2);
        let mut first = admission.arrive().unwrap();
        let mut second = admission.arrive().unwrap();
        let (mut first_lapse, mut second_lapse): (Lapsing, Lapsing) =
            (Box::pin(first.lapse()), Box::pin(second.lapse()));
        assert_eq!(now(&mut first_lapse), None);
        let mut third = admission.arrive().unwrap();
        let mut third_lapse: Lapsing = Box::pin(third.lapse());
        assert_eq!(now(&mut first_lapse), Some(Lapse::Evicted));
        assert_eq!(now(&mut second_lapse), None);
        // Admitted, a login leaves its place to others and never lapses.
        assert!(admission.admit(&mut second));
        assert_eq!(now(&mut second_lapse), None);
        drop(first);
        let _fourth = admission.arrive().unwrap();
        assert_eq!(now(&mut third_lapse), None, "a place was free");
        let _fifth = admission.arrive().unwrap();
        assert_eq!(now(&mut third_lapse), Some(Lapse::Evicted));
    }

    #[tokio::test]
    async fn an_admitted_login_holds_a_session_slot_until_dropped() {
        let admission = admission(1, 10);
        let mut a = admission.arrive().unwrap();
        let mut b = admission.arrive().unwrap();
        assert!(admission.admit(&mut a));
        assert!(
            admission.arrive().is_none(),
            "no slot left: refused at once"
        );
        assert!(!admission.admit(&mut b), "the slot went to the first");
        drop(a);
        assert!(admission.arrive().is_some());
    }

    #[test]
    fn the_delay_doubles_per_failure_up_to_its_cap() {
        let (first, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<u128> = (0..7).map(|n| delay(n, first, max).as_millis()).collect();
        assert_eq!(delays, [0, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(delay(u32::MAX, first, max), max);
        assert_eq!(delay(3, Duration::ZERO, max), Duration::ZERO);
    }

    #[test]
    fn logins_from_a_failing_address_wait_their_turns_then_are_refused() {
        let (first, max) = (Duration::from_millis(100), Duration::from_millis(400));
        let now = Instant::now();
        let mut record = Record {
            count: 3,
            last: now,
            next_turn: now,
        };
        // 400 ms after the last failure, then one every 400 ms: the
        // second would wait 800 ms, past the cap.
        let ms = |at: Option<Instant>| at.map(|at| (at - now).as_millis());
        assert_eq!(
            ms(schedule(&mut record, now, first, max).unwrap()),
            Some(400)
        );
        let refused = schedule(&mut record, now, first, max).unwrap_err();
        assert_eq!(refused.as_millis(), 800);
        // Later its turn comes.
        let later = now + Duration::from_millis(700);
        assert_eq!(
            ms(schedule(&mut record, later, first, max).unwrap()),
            Some(800)
        );
        // Failures a minute old are forgotten.
        let much_later = now + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(schedule(&mut record, much_later, first, max), Ok(None));
        assert_eq!(record.count, 0);
    }

    #[tokio::test]
    async fn failures_slow_only_their_own_address() {
        let admission = Admission::new(&ProxyConfig {
            login_failure_delay_ms: 50,
            max_login_failure_delay_ms: 50,
            ..ProxyConfig::default()
        });
        let (bad, good): (IpAddr, IpAddr) =
            ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        admission.failed(bad);
        assert_eq!(admission.turn(good).await, Ok(()));
        let began = Instant::now();
        admission.turn(bad).await.unwrap();
        assert!(began.elapsed() >= Duration::from_millis(40));
    }
}

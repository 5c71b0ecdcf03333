//! A wait that is polled only once its own wake-up has come.
//!
//! The relay loop waits on rare things (a node fenced, the drain,
//! shutdown) beside its sockets, and polls every branch of its `select!`
//! on every turn. Polling a pending watch or `Notify` wait takes its lock
//! and compares wakers each time, which cost more than the rest of a
//! turn's own work. [`OnWake`] gives its inner future a waker of its own:
//! while that has not fired, a poll is one atomic swap and a waker check.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// `inner`, polled on its first poll and then only after it woke its task.
pub struct OnWake<T> {
    inner: Pin<Box<dyn Future<Output = T> + Send>>,
    bell: Arc<Bell>,
    /// Its own waker: what `inner` wakes, made once.
    waker: Waker,
    polled: bool,
}

/// What the inner future wakes: notes that it did, then wakes the task.
struct Bell {
    rang: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Bell {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.rang.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<T> OnWake<T> {
    pub fn new(inner: impl Future<Output = T> + Send + 'static) -> OnWake<T> {
        let bell = Arc::new(Bell {
            rang: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        OnWake {
            inner: Box::pin(inner),
            waker: Waker::from(bell.clone()),
            bell,
            polled: false,
        }
    }
}

impl<T> Future for OnWake<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = &mut *self;
        // Registered before the check: a wake-up in between is not lost.
        this.bell.task.register(cx.waker());
        if this.polled && !this.bell.rang.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.polled = true;
        this.inner
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[tokio::test]
    async fn the_inner_future_is_polled_only_after_it_woke() {
        let polls = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::watch::channel(0u32);
        let counted = polls.clone();
        let mut changed = Box::pin(async move {
            rx.changed().await.unwrap();
            *rx.borrow()
        });
        let inner = std::future::poll_fn(move |cx| {
            counted.fetch_add(1, Ordering::Relaxed);
            changed.as_mut().poll(cx)
        });
        let mut wait = OnWake::new(inner);
        // Ten polls with nothing rung: the inner future saw only the first.
        for _ in 0..10 {
            let polled = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut wait).poll(cx))).await;
            assert!(polled.is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        tx.send(7).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), wait).await;
        assert_eq!(got.unwrap(), 7, "the change reaches the waiting task");
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }
}

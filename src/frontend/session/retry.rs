//! A broken or stalled server connection, the I/O half (the rules are
//! [`crate::frontend::retry`]'s): reads sent again elsewhere, the errors of
//! requests that cannot be, and the timer that notices a read stalled on a
//! replica the monitor no longer vouches for.

use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pgwire::error::ErrorInfo;
use tokio::time::{Instant, Sleep};
use tracing::info;

use super::{End, Session, CANCEL_TIMEOUT};
use crate::backend;
use crate::backend::Carried;
use crate::classify::SessionEffect;
use crate::config::Config;
use crate::frontend::link::{error_field, is_fatal, Phase, Sent};
use crate::frontend::retry::{self, Loss, LossFacts, Retries, Stalled};
use crate::protocol::{messages, Sqlstate, TxnStatus};

/// The session's retries and its stall timer.
pub(super) struct Retry {
    pub(super) tries: Retries,
    /// `routing.replica_stall_ms`; `None` when off.
    stall_after: Option<Duration>,
    /// How often a stalled read's replica is looked at again while the
    /// monitor still vouches for it: a probe interval.
    recheck: Duration,
    /// Runs out no later than `due`. It may run out earlier, still set for
    /// a request answered since, and is then set again for `due`: moving
    /// it for every request would cost more than the rest of the request.
    timer: Pin<Box<Sleep>>,
    /// When the oldest read in flight has stalled; `None` while nothing is
    /// timed.
    due: Option<Instant>,
    /// The request the timer is set for (its number on the connection).
    timer_for: Option<u64>,
}

impl Retry {
    pub(super) fn new(config: &Config) -> Retry {
        Retry {
            tries: Retries::default(),
            stall_after: config.routing.replica_stall(),
            recheck: config.monitor.probe_interval(),
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            due: None,
            timer_for: None,
        }
    }

    /// Fires once `due` has passed; never while nothing is timed.
    pub(super) async fn stalled(&mut self) {
        loop {
            let Some(due) = self.due else {
                return std::future::pending().await;
            };
            if self.timer.deadline() > due {
                self.timer.as_mut().reset(due);
            }
            self.timer.as_mut().await;
            if self.timer.deadline() >= due {
                return;
            }
            // It ran out for an earlier request: on to this one's time.
            self.timer.as_mut().reset(due);
        }
    }

    fn arm(&mut self, after: Duration) {
        self.due = Some(Instant::now() + after);
    }

    /// The stall was handled: nothing is timed until the next arming.
    fn ran_out(&mut self) {
        self.due = None;
    }

    pub(super) fn disarm(&mut self) {
        self.due = None;
        self.timer_for = None;
    }
}

impl Session {
    /// Sets the stall timer for the oldest request in flight when it is a
    /// read that keeps its bytes and the timer is not set for it already;
    /// clears it when there is none.
    pub(super) fn arm_stall(&mut self) {
        let Some(after) = self.retry.stall_after else {
            return;
        };
        match self.link.kept_front() {
            Some(front) if self.retry.timer_for == Some(front) => {}
            Some(front) => {
                self.retry.arm(after);
                self.retry.timer_for = Some(front);
            }
            None => self.retry.disarm(),
        }
    }

    /// The oldest request in flight has had no reply for
    /// `replica_stall_ms`: sent elsewhere if its replica is in doubt.
    pub(super) fn on_stall(&mut self) -> Result<(), End> {
        self.retry.ran_out();
        let (Some(node), Some(_)) = (self.link.node(), self.link.kept_front()) else {
            return Ok(());
        };
        match retry::on_stall(self.topology.load(), node) {
            Stalled::Stay => Ok(()),
            Stalled::Wait => {
                self.retry.arm(self.retry.recheck);
                Ok(())
            }
            Stalled::Move if retry::on_loss(&self.loss_facts()) == Loss::Retry => {
                info!(parent: &self.span, server = %self.node_name(), "read stalled on a replica in doubt: cancelled there, sent elsewhere");
                if let Some(target) = self.link.cancel_target() {
                    let tls = self.shared.pool.tls().clone();
                    tokio::spawn(async move {
                        let _ = backend::cancel(
                            &target.host,
                            target.port,
                            target.key,
                            &tls,
                            CANCEL_TIMEOUT,
                        )
                        .await;
                    });
                }
                self.resend_lost();
                Ok(())
            }
            // Not all of what is in flight may be sent again: it waits.
            Stalled::Move => Ok(()),
        }
    }

    /// The server connection broke (closed, reset, or ended with FATAL):
    /// its reads are sent again, its other requests answered with a class
    /// 08 error, a transaction replayed or reported lost, or the session
    /// ends.
    pub(super) fn server_lost(&mut self) -> Result<(), End> {
        match retry::on_loss(&self.loss_facts()) {
            Loss::Retry => {
                self.resend_lost();
                Ok(())
            }
            Loss::Answer => {
                self.answer_lost();
                Ok(())
            }
            Loss::Transaction => {
                self.lose_transaction();
                Ok(())
            }
            Loss::End => {
                if let Some(fatal) = self.link.withheld() {
                    self.client.out.extend_from_slice(fatal);
                }
                Err(End::ServerGone)
            }
        }
    }

    fn loss_facts(&self) -> LossFacts {
        let mut facts = LossFacts {
            all_kept: true,
            all_autocommit: true,
            idle: self.link.phase() == Phase::Ready(TxnStatus::Idle),
            mid_frame: self.link.mid_frame(),
            pinned: self.state.is_pinned(),
            may_take_back: self.collector.may_take_back(),
            retries_left: self.retry.tries.left(),
            ..LossFacts::default()
        };
        for sent in self.link.in_flight() {
            facts.in_flight += 1;
            facts.all_kept &= sent.copy.is_some();
            facts.all_autocommit &= sent.autocommit;
            facts.own_sync |= sent.own_sync;
        }
        facts
    }

    /// Puts the lost requests back in front of the client's input, to be
    /// routed again with the failed replica avoided.
    fn resend_lost(&mut self) {
        let name = self.node_name();
        if let Some(node) = self.link.node() {
            self.shared.loads.done(node, self.link.outstanding());
        }
        let lost = self.link.lose();
        let copies: Vec<Bytes> = lost.sent.into_iter().filter_map(|s| s.copy).collect();
        info!(parent: &self.span, server = %name, requests = copies.len(), "server connection lost before any reply: sending again");
        self.collector.take_back(&copies, &mut self.client.inbuf);
        self.retry.tries.retried(lost.node);
        self.retry.disarm();
    }

    /// Answers every lost request with a class 08 ERROR (never the
    /// server's FATAL, which a driver takes as the end of its own
    /// connection) and ReadyForQuery; the session carries on without a
    /// server.
    fn answer_lost(&mut self) {
        let name = self.node_name();
        if let Some(node) = self.link.node() {
            self.shared.loads.done(node, self.link.outstanding());
        }
        let lost = self.link.lose();
        info!(parent: &self.span, server = %name, requests = lost.sent.len(), "server connection lost; its requests get an error");
        for mut sent in lost.sent {
            let (state, message) = unknown_outcome(&sent, &name);
            messages::error(&mut self.client.out, false, state, &message);
            messages::ready(&mut self.client.out, TxnStatus::Idle);
            sent.failed = true;
            // Its outcome is unknown: nothing it changed is kept.
            let _ = self
                .state
                .answered(&sent, TxnStatus::Idle, &mut Carried::default());
        }
        self.retry.tries.settled();
        self.retry.disarm();
    }
}

/// Passes a server's ErrorResponse frame on to the client, a FATAL one as
/// an ERROR: the server connection ends, the client's session does not.
pub(super) fn pass_error(out: &mut BytesMut, frame: &[u8]) {
    if !is_fatal(frame.get(5..).unwrap_or_default()) {
        out.extend_from_slice(frame);
        return;
    }
    let (code, message) = lost_error(Some(frame), "server");
    messages::encode_error_info(out, ErrorInfo::new("ERROR".into(), code, message));
}

/// What the client of a request lost in flight is told: its outcome is
/// unknown (it may have run), so class 08 — 08007 for a COMMIT.
pub(super) fn unknown_outcome(sent: &Sent, server: &str) -> (Sqlstate, String) {
    if sent.effects.contains(&SessionEffect::Commit) {
        let message =
            "connection to the primary was lost during COMMIT; transaction resolution unknown";
        (Sqlstate::TransactionResolutionUnknown, message.to_owned())
    } else if sent.on_primary {
        let message = "connection to the primary was lost; the statement's outcome is unknown";
        (Sqlstate::ConnectionFailure, message.to_owned())
    } else {
        let message = format!("server connection to {server} was lost");
        (Sqlstate::ConnectionFailure, message)
    }
}

/// What the client of a lost request is told (SQLSTATE, message), as an
/// ERROR since its session goes on: the FATAL error the server ended
/// with, or 08006.
fn lost_error(fatal: Option<&[u8]>, server: &str) -> (String, String) {
    let body = fatal.and_then(|frame| frame.get(5..)).unwrap_or_default();
    match (error_field(body, b'C'), error_field(body, b'M')) {
        (Some(code), Some(message)) => (code.to_owned(), message.to_owned()),
        _ => (
            Sqlstate::ConnectionFailure.code().to_owned(),
            format!("server connection to {server} was lost"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_stall_timer_fires_for_the_read_in_flight_not_for_one_answered() {
        let after = Duration::from_millis(150);
        let mut r = Retry::new(&Config::minimal());
        let nothing = tokio::time::timeout(after, r.stalled()).await;
        assert!(nothing.is_err(), "nothing timed: never fires");
        // A read, answered within its time: the timer stays set for it.
        r.arm(after);
        tokio::time::sleep(Duration::from_millis(100)).await;
        r.disarm();
        // The next read's time counts from when it was sent.
        let sent = Instant::now();
        r.arm(after);
        r.stalled().await;
        assert!(sent.elapsed() >= after, "fired after {:?}", sent.elapsed());
        // Handled: quiet until armed again, then fires again.
        r.ran_out();
        let quiet = tokio::time::timeout(Duration::from_millis(50), r.stalled()).await;
        assert!(quiet.is_err(), "fired with nothing timed");
        let sent = Instant::now();
        r.arm(Duration::from_millis(20));
        r.stalled().await;
        assert!(sent.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn a_lost_request_hears_the_servers_error_as_an_error_or_08006() {
        let mut frame = BytesMut::new();
        messages::error(
            &mut frame,
            true,
            Sqlstate::AdminShutdown,
            "terminating connection due to administrator command",
        );
        let (code, message) = lost_error(Some(&frame), "replica1");
        assert_eq!(code, "57P01");
        assert_eq!(
            message,
            "terminating connection due to administrator command"
        );
        let (code, message) = lost_error(None, "replica1");
        assert_eq!(code, "08006");
        assert_eq!(message, "server connection to replica1 was lost");
        let (code, _) = lost_error(Some(b"E\0\0\0\x04"), "r");
        assert_eq!(code, "08006", "a frame without fields");
    }

    #[test]
    fn a_request_lost_in_flight_is_class_08_and_a_commit_08007() {
        let write = Sent {
            on_primary: true,
            ..Sent::default()
        };
        assert_eq!(unknown_outcome(&write, "n").0.code(), "08006");
        let commit = Sent {
            effects: vec![SessionEffect::Commit],
            on_primary: true,
            ..Sent::default()
        };
        let (state, message) = unknown_outcome(&commit, "n");
        assert_eq!(state.code(), "08007");
        assert!(message.contains("resolution unknown"), "{message}");
        let (state, message) = unknown_outcome(&Sent::default(), "replica1");
        assert_eq!(state.code(), "08006");
        assert_eq!(message, "server connection to replica1 was lost");
    }

    #[test]
    fn a_servers_fatal_error_reaches_the_client_as_an_error() {
        let mut fatal = BytesMut::new();
        messages::error(&mut fatal, true, Sqlstate::AdminShutdown, "bye");
        let mut out = BytesMut::new();
        pass_error(&mut out, &fatal);
        let mut expected = BytesMut::new();
        messages::error(&mut expected, false, Sqlstate::AdminShutdown, "bye");
        assert_eq!(out, expected);
        let mut plain = BytesMut::new();
        messages::error(&mut plain, false, Sqlstate::SyntaxError, "oops");
        out.clear();
        pass_error(&mut out, &plain);
        assert_eq!(out, plain, "an ERROR is passed on as is");
    }
}

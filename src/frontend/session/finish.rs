//! How a session ends: what each side is told according to why.

use tokio::io::AsyncWriteExt;
use tracing::{debug, info};

use super::{End, Session, CANCEL_TIMEOUT, FINAL_FLUSH, TERMINATE};
use crate::backend;
use crate::frontend::link::Phase;
use crate::protocol::{messages, Sqlstate};

impl Session {
    /// Says goodbye on both sides according to why the session ended.
    pub(super) async fn finish(&mut self, end: &End, reusable: bool) {
        let busy = matches!(self.link.phase(), Phase::Busy { .. });
        match end {
            End::ClientTerminated | End::ClientGone | End::IdleTimeout if reusable => {}
            End::ClientTerminated => {
                // Whatever the client sent before Terminate still goes first.
                self.link.out().extend_from_slice(&TERMINATE);
                let io = self.link.io();
                if let Some(wr) = io.write {
                    let _ = wr.write_all(io.out).await;
                }
            }
            End::ClientGone if busy => {
                // Closing the socket does not stop a running query: cancel it.
                if let Some(target) = self.link.cancel_target() {
                    debug!(parent: &self.span, "client left mid-query; cancelling it on the server");
                    let tls = self.shared.pool.tls();
                    let _ =
                        backend::cancel(&target.host, target.port, target.key, tls, CANCEL_TIMEOUT)
                            .await;
                }
            }
            End::ClientGone => {}
            End::ServerGone => self.tell_server_lost(busy),
            End::Shutdown | End::ClientProtocolError | End::IdleTimeout => {
                if *end == End::Shutdown && !self.link.mid_frame() {
                    messages::error(
                        &mut self.client.out,
                        true,
                        Sqlstate::AdminShutdown,
                        "terminating connection due to administrator command",
                    );
                }
                if let Some(wr) = self.link.io().write {
                    let _ = wr.write_all(&TERMINATE).await;
                }
            }
        }
        self.link.clear_cancel_target();
        if !self.client.out.is_empty() && *end != End::ClientGone {
            let _ =
                tokio::time::timeout(FINAL_FLUSH, self.client.wr.write_all(&self.client.out)).await;
        }
        let _ = self.client.wr.shutdown().await;
    }

    /// The server connection dropped: the client hears it as PostgreSQL
    /// would say it, unless the server said FATAL itself or a frame was cut.
    fn tell_server_lost(&mut self, busy: bool) {
        let name = self.node_name();
        if !self.link.fatal_seen() && !self.link.mid_frame() {
            let running = if busy {
                " while a query was running"
            } else {
                ""
            };
            let message = format!("server connection to {name} was lost{running}");
            messages::error(
                &mut self.client.out,
                true,
                Sqlstate::ConnectionFailure,
                &message,
            );
        }
        info!(parent: &self.span, server = %name, "server connection lost");
    }
}

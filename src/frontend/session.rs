//! The per-client relay loop.
//!
//! One task per client moves bytes both ways at once: client → server and
//! server → client are never blocked on each other, so a pipelined batch
//! whose results fill the socket buffers cannot deadlock. Frames are cut at
//! their boundaries and copied as bytes; only the few that carry session
//! state (ReadyForQuery, Query, Sync, Terminate, server errors) are read.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tracing::{debug, info, Span};

use super::cancel::CancelHandle;
use super::Connected;
use crate::backend::pool::{PoolKey, ServerPool};
use crate::backend::{self, ServerConn};
use crate::protocol::{messages, FrameScanner, ScanError, Sqlstate};

/// Stop reading from one side while this much is waiting to be written to
/// the other: backpressure instead of unbounded buffering.
const HIGH_WATER: usize = 256 * 1024;
/// How long a closing session may take to deliver its last words.
const FINAL_FLUSH: Duration = Duration::from_secs(5);
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);
/// Server frames are trusted in size (PostgreSQL caps them at 1 GiB) and
/// stream through, so only this sanity bound applies.
const MAX_SERVER_FRAME: usize = 1 << 30;
const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

/// The transaction status from the last ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TxnStatus {
    fn from_byte(b: u8) -> TxnStatus {
        match b {
            b'T' => TxnStatus::InTransaction,
            b'E' => TxnStatus::Failed,
            _ => TxnStatus::Idle,
        }
    }
}

/// Where the session is in its conversation with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the client; the last ReadyForQuery said this.
    Ready(TxnStatus),
    /// Requests (Query or Sync) sent whose ReadyForQuery has not come back.
    Busy { outstanding: u32 },
}

/// Why a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    ClientTerminated,
    ClientGone,
    ServerGone,
    ClientProtocolError,
    Shutdown,
}

/// What woke the relay loop.
enum Event {
    WroteClient(std::io::Result<usize>),
    WroteServer(std::io::Result<usize>),
    ReadServer(std::io::Result<usize>),
    ReadClient(std::io::Result<usize>),
    Shutdown,
}

/// The client's half of the relay.
pub struct ClientIo {
    pub rd: OwnedReadHalf,
    pub wr: OwnedWriteHalf,
    /// Bytes read from the client and not yet relayed.
    pub inbuf: BytesMut,
    /// Bytes waiting to be written to the client.
    pub out: BytesMut,
}

pub struct Session {
    client: ClientIo,
    client_frames: FrameScanner,
    server: ServerConn,
    server_name: String,
    server_frames: FrameScanner,
    to_server: BytesMut,
    phase: Phase,
    server_said_fatal: bool,
    cancel: CancelHandle,
    shutdown: watch::Receiver<bool>,
    span: Span,
    pool: Arc<ServerPool>,
    pool_key: PoolKey,
}

impl Session {
    pub fn new(
        client: ClientIo,
        connected: Connected,
        pool: Arc<ServerPool>,
        max_message_size: usize,
        shutdown: watch::Receiver<bool>,
        span: Span,
    ) -> Session {
        let Connected {
            mut server,
            node_name: server_name,
            cancel,
            pool_key,
        } = connected;
        // Anything the server sent past its startup ReadyForQuery is relayed first.
        server.pending.reserve(16 * 1024);
        Session {
            span,
            pool,
            pool_key,
            client,
            client_frames: FrameScanner::new(max_message_size),
            server,
            server_name,
            server_frames: FrameScanner::new(MAX_SERVER_FRAME),
            to_server: BytesMut::with_capacity(16 * 1024),
            phase: Phase::Ready(TxnStatus::Idle),
            server_said_fatal: false,
            cancel,
            shutdown,
        }
    }

    /// Relays until either side ends the session.
    pub async fn run(mut self) -> End {
        let end = self.relay().await;
        let reusable = self.server_reusable(&end);
        self.finish(&end, reusable).await;
        if reusable {
            let Session {
                pool,
                pool_key,
                server,
                ..
            } = self;
            tokio::spawn(pool.put_back(pool_key, server));
        }
        end
    }

    /// A server connection can serve another client when this one left it
    /// idle: outside a transaction, nothing in flight, nothing half-sent.
    fn server_reusable(&self, end: &End) -> bool {
        matches!(end, End::ClientTerminated | End::ClientGone)
            && self.phase == Phase::Ready(TxnStatus::Idle)
            && self.to_server.is_empty()
            && !self.server_said_fatal
            && !self.server_frames.mid_frame()
    }

    async fn relay(&mut self) -> End {
        if !self.client.inbuf.is_empty() {
            if let Err(end) = self.on_client_bytes() {
                return end;
            }
        }
        // Made once: re-arming a watch waiter on every message costs more than the rest of the loop.
        let mut shutdown = self.shutdown.clone();
        let stop = async move {
            let _ = shutdown.wait_for(|stopping| *stopping).await;
        };
        tokio::pin!(stop);
        loop {
            if let Err(end) = self.step(stop.as_mut()).await {
                return end;
            }
        }
    }

    /// Waits for the next thing that can happen and handles it.
    async fn step(&mut self, stop: Pin<&mut impl Future<Output = ()>>) -> Result<(), End> {
        let Session {
            client,
            server,
            to_server,
            ..
        } = self;
        let read_client = to_server.len() < HIGH_WATER;
        let read_server = client.out.len() < HIGH_WATER;
        let event = tokio::select! {
            biased;
            r = client.wr.write(&client.out), if !client.out.is_empty() => Event::WroteClient(r),
            r = server.wr.write(to_server), if !to_server.is_empty() => Event::WroteServer(r),
            r = server.rd.read_buf(&mut server.pending), if read_server => Event::ReadServer(r),
            r = client.rd.read_buf(&mut client.inbuf), if read_client => Event::ReadClient(r),
            () = stop => Event::Shutdown,
        };
        match event {
            Event::WroteClient(Ok(n)) if n > 0 => self.client.out.advance(n),
            Event::WroteServer(Ok(n)) if n > 0 => self.to_server.advance(n),
            Event::ReadServer(Ok(n)) if n > 0 => {
                self.on_server_bytes()?;
                // Usually the socket can take it all now: skip a trip round the loop.
                write_now(&self.client.wr, &mut self.client.out).map_err(|_| End::ClientGone)?;
            }
            Event::ReadClient(Ok(n)) if n > 0 => {
                self.on_client_bytes()?;
                write_now(&self.server.wr, &mut self.to_server).map_err(|_| End::ServerGone)?;
            }
            Event::WroteClient(_) | Event::ReadClient(_) => return Err(End::ClientGone),
            Event::WroteServer(_) | Event::ReadServer(_) => return Err(End::ServerGone),
            Event::Shutdown => return Err(End::Shutdown),
        }
        Ok(())
    }

    /// Moves every complete (or streamable) client frame to the server.
    fn on_client_bytes(&mut self) -> Result<(), End> {
        let mut requests = 0u32;
        // The Terminate frame's length: it ends the scan and is not relayed,
        // because what the server gets at the end is the proxy's decision.
        let mut terminate = None;
        let scanned = self.client_frames.scan(
            &self.client.inbuf,
            |tag| matches!(tag, b'Q' | b'S' | b'X'),
            |frame| {
                match frame.tag {
                    b'X' => terminate = Some(5 + frame.body.len()),
                    _ => requests += 1,
                }
                terminate.is_none()
            },
        );
        let n = match scanned {
            Ok(n) => n,
            Err(e) => {
                self.refuse_client_frame(&e);
                return Err(End::ClientProtocolError);
            }
        };
        let relayed = n - terminate.unwrap_or(0);
        self.to_server
            .extend_from_slice(&self.client.inbuf[..relayed]);
        self.client.inbuf.advance(n);
        if requests > 0 {
            self.phase = match self.phase {
                Phase::Busy { outstanding } => Phase::Busy {
                    outstanding: outstanding + requests,
                },
                Phase::Ready(_) => Phase::Busy {
                    outstanding: requests,
                },
            };
        }
        if terminate.is_some() {
            return Err(End::ClientTerminated);
        }
        Ok(())
    }

    fn refuse_client_frame(&mut self, e: &ScanError) {
        let state = match e {
            ScanError::TooLarge { .. } => Sqlstate::ProgramLimitExceeded,
            ScanError::BadLength { .. } => Sqlstate::ProtocolViolation,
        };
        info!(parent: &self.span, error = %e, "closing client after a bad frame");
        messages::error(&mut self.client.out, true, state, &e.to_string());
    }

    /// Moves server bytes to the client, noting ReadyForQuery and FATALs.
    fn on_server_bytes(&mut self) -> Result<(), End> {
        let mut ready = None;
        let mut fatal = false;
        let scanned = self.server_frames.scan(
            &self.server.pending,
            |tag| matches!(tag, b'Z' | b'E'),
            |frame| {
                match frame.tag {
                    b'Z' => {
                        ready = Some((
                            ready.map_or(0, |(n, _)| n) + 1,
                            frame.body.first().copied().unwrap_or(b'I'),
                        ))
                    }
                    _ => fatal |= is_fatal(frame.body),
                }
                true
            },
        );
        // Server lengths are only sanity-checked, but a server that breaks
        // framing cannot be relayed any further.
        let n = scanned.map_err(|e| {
            info!(parent: &self.span, server = %self.server_name, error = %e, "server sent an invalid frame");
            End::ServerGone
        })?;
        self.client.out.extend_from_slice(&self.server.pending[..n]);
        self.server.pending.advance(n);
        self.server_said_fatal |= fatal;
        if let Some((count, status)) = ready {
            self.phase = match self.phase {
                Phase::Busy { outstanding } if outstanding > count => Phase::Busy {
                    outstanding: outstanding - count,
                },
                _ => Phase::Ready(TxnStatus::from_byte(status)),
            };
        }
        Ok(())
    }

    /// Says goodbye on both sides according to why the session ended.
    async fn finish(&mut self, end: &End, reusable: bool) {
        match end {
            End::ClientTerminated | End::ClientGone if reusable => {}
            End::ClientTerminated => {
                // Whatever the client sent before Terminate still goes first.
                self.to_server.extend_from_slice(&TERMINATE);
                let _ = self.server.wr.write_all(&self.to_server).await;
            }
            End::ClientGone => {
                if matches!(self.phase, Phase::Busy { .. }) {
                    // Closing the socket does not stop a running query: cancel it.
                    if let Some(key) = self.server.key {
                        debug!(parent: &self.span, "client left mid-query; cancelling it on the server");
                        let _ = backend::cancel(
                            &self.server.host,
                            self.server.port,
                            key,
                            CANCEL_TIMEOUT,
                        )
                        .await;
                    }
                }
            }
            End::ServerGone => {
                if !self.server_said_fatal && !self.server_frames.mid_frame() {
                    let message = format!(
                        "server connection to {} was lost{}",
                        self.server_name,
                        if matches!(self.phase, Phase::Busy { .. }) {
                            " while a query was running"
                        } else {
                            ""
                        }
                    );
                    messages::error(
                        &mut self.client.out,
                        true,
                        Sqlstate::ConnectionFailure,
                        &message,
                    );
                }
                info!(parent: &self.span, server = %self.server_name, "server connection lost");
            }
            End::Shutdown => {
                if !self.server_frames.mid_frame() {
                    messages::error(
                        &mut self.client.out,
                        true,
                        Sqlstate::AdminShutdown,
                        "terminating connection because the proxy is shutting down",
                    );
                }
                let _ = self.server.wr.write_all(&TERMINATE).await;
            }
            End::ClientProtocolError => {
                let _ = self.server.wr.write_all(&TERMINATE).await;
            }
        }
        self.cancel.set_target(None);
        if !self.client.out.is_empty() && *end != End::ClientGone {
            let _ =
                tokio::time::timeout(FINAL_FLUSH, self.client.wr.write_all(&self.client.out)).await;
        }
        let _ = self.client.wr.shutdown().await;
    }
}

/// Writes as much of `buf` as the socket takes without waiting; the relay
/// loop writes the rest when the socket is writable again.
fn write_now(wr: &OwnedWriteHalf, buf: &mut BytesMut) -> std::io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    match wr.try_write(buf) {
        Ok(0) => Err(std::io::ErrorKind::WriteZero.into()),
        Ok(n) => {
            buf.advance(n);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether an ErrorResponse body has severity FATAL or PANIC.
fn is_fatal(body: &[u8]) -> bool {
    let mut rest = body;
    while let [code, tail @ ..] = rest {
        if *code == 0 {
            break;
        }
        let Some((value, after)) = crate::protocol::cstr(tail) else {
            break;
        };
        if matches!(*code, b'S' | b'V') {
            return matches!(value, "FATAL" | "PANIC");
        }
        rest = after;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_errors_are_recognised() {
        assert!(is_fatal(b"SFATAL\0VFATAL\0C57P01\0Mbye\0\0"));
        assert!(is_fatal(b"VPANIC\0\0"));
        assert!(!is_fatal(b"SERROR\0VERROR\0C42601\0Msyntax\0\0"));
        assert!(!is_fatal(b""));
        assert!(!is_fatal(b"S"));
    }

    #[test]
    fn txn_status_bytes_map() {
        assert_eq!(TxnStatus::from_byte(b'T'), TxnStatus::InTransaction);
        assert_eq!(TxnStatus::from_byte(b'E'), TxnStatus::Failed);
        assert_eq!(TxnStatus::from_byte(b'I'), TxnStatus::Idle);
    }
}

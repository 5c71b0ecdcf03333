//! A client's first packets, before any framing: SSLRequest (answered `S`
//! and a TLS handshake when a certificate is configured, `N` otherwise),
//! GSSENCRequest (`N`), CancelRequest (over TLS too), PostgreSQL 17's direct
//! TLS (a ClientHello as the very first bytes), and at last the
//! StartupMessage, which `tls.mode = "require"` refuses in the clear with
//! 28000, as PostgreSQL's `hostssl` does.

use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

use super::session::ClientIo;
use super::{param, Shared};
use crate::backend::BackendKey;
use crate::config::TlsMode;
use crate::protocol::startup::{read_startup, StartupError, StartupPacket};
use crate::protocol::{messages, Sqlstate};
use crate::tls::accept::{handshake, Request};
use crate::tls::Stream;

/// The first byte of a TLS handshake record: a direct TLS connection.
const TLS_HANDSHAKE: u8 = 0x16;

/// What the client's StartupMessage asked for.
pub struct Startup {
    /// The minor protocol version the client asked for (3.x).
    pub minor_version: u16,
    pub params: Vec<(String, String)>,
}

/// Takes a new connection to its StartupMessage by `deadline`; `None` when
/// it ends first (the client left, cancelled, or was told why).
pub async fn negotiate(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    deadline: Instant,
) -> Option<(ClientIo, Startup)> {
    let _ = tcp.set_nodelay(true);
    // Taken once: a reload during this handshake applies to the next client.
    let acceptor = shared.tls.acceptor();
    let mut stream = match &acceptor {
        Some(acceptor) => direct(tcp, acceptor, deadline).await?,
        None => Stream::Plain(tcp),
    };
    loop {
        let packet = match timeout_at(deadline, read_startup(&mut stream)).await {
            Ok(Ok(packet)) => packet,
            Ok(Err(StartupError::Closed | StartupError::Io(_))) => return None,
            Ok(Err(e @ StartupError::UnsupportedVersion(_))) => {
                return refuse(stream, Sqlstate::FeatureNotSupported, &e.to_string()).await
            }
            Ok(Err(e)) => return refuse(stream, Sqlstate::ProtocolViolation, &e.to_string()).await,
            Err(_) => {
                return refuse(stream, Sqlstate::ConnectionFailure, "startup timed out").await
            }
        };
        stream = match (packet, stream, &acceptor) {
            (StartupPacket::SslRequest, Stream::Plain(tcp), Some(acceptor)) => {
                upgrade(tcp, acceptor, deadline).await?
            }
            // No certificate, or TLS already: as PostgreSQL, `N`.
            (StartupPacket::SslRequest | StartupPacket::GssEncRequest, stream, _) => {
                answer_no(stream).await?
            }
            (StartupPacket::Cancel { pid, secret }, _, _) => {
                let timeout = shared.config().proxy.connect_timeout();
                let key = BackendKey { pid, secret };
                shared.cancels.cancel(key, shared.pool.tls(), timeout).await;
                return None;
            }
            (StartupPacket::Startup { params, .. }, stream, _)
                if !stream.is_tls() && shared.tls.mode() == TlsMode::Require =>
            {
                info!("cleartext startup refused: tls.mode = \"require\"");
                let message = cleartext_refused(peer, &params);
                return refuse(stream, Sqlstate::InvalidAuthorization, &message).await;
            }
            (
                StartupPacket::Startup {
                    minor_version,
                    params,
                },
                stream,
                _,
            ) => {
                let (rd, wr) = stream.split();
                let client = ClientIo {
                    rd,
                    wr,
                    // PgBouncer's packet buffer size: a session's usual
                    // request and reply fit, and growth is amortised past it.
                    inbuf: BytesMut::with_capacity(super::CLIENT_BUFFER),
                    out: BytesMut::with_capacity(super::CLIENT_BUFFER),
                };
                let startup = Startup {
                    minor_version,
                    params,
                };
                return Some((client, startup));
            }
        };
    }
}

/// A connection whose first byte opens a TLS handshake is PostgreSQL 17's
/// direct TLS: the handshake comes first; anything else is read as startup
/// packets.
async fn direct(tcp: TcpStream, acceptor: &TlsAcceptor, deadline: Instant) -> Option<Stream> {
    let mut first = [0u8; 1];
    match timeout_at(deadline, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
        Ok(Ok(1)) => return Some(Stream::Plain(tcp)),
        Ok(_) => return None,
        Err(_) => {
            let message = "startup timed out";
            return refuse(Stream::Plain(tcp), Sqlstate::ConnectionFailure, message).await;
        }
    }
    shake(tcp, acceptor, Request::Direct, deadline).await
}

/// Answers an SSLRequest with `S` and runs the handshake.
async fn upgrade(mut tcp: TcpStream, acceptor: &TlsAcceptor, deadline: Instant) -> Option<Stream> {
    tcp.write_all(b"S").await.ok()?;
    shake(tcp, acceptor, Request::Negotiated, deadline).await
}

async fn shake(
    tcp: TcpStream,
    acceptor: &TlsAcceptor,
    request: Request,
    deadline: Instant,
) -> Option<Stream> {
    match timeout_at(deadline, handshake(acceptor.clone(), tcp, request)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            info!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            debug!("TLS handshake timed out");
            None
        }
    }
}

async fn answer_no(mut stream: Stream) -> Option<Stream> {
    stream.write_all(b"N").await.ok()?;
    stream.flush().await.ok()?;
    Some(stream)
}

/// Tells the client why it is refused (FATAL) and ends the connection.
async fn refuse<T>(mut stream: Stream, state: Sqlstate, message: &str) -> Option<T> {
    let mut out = BytesMut::new();
    messages::error(&mut out, true, state, message);
    if stream.write_all(&out).await.is_ok() {
        let _ = stream.shutdown().await;
    }
    None
}

/// PostgreSQL's words for a `hostssl`-only server reached in the clear.
fn cleartext_refused(peer: SocketAddr, params: &[(String, String)]) -> String {
    let user = param(params, "user").unwrap_or_default();
    let database = param(params, "database").unwrap_or(user);
    format!(
        "no encryption: host \"{}\", user \"{user}\", database \"{database}\" must connect with TLS (tls.mode = \"require\")",
        peer.ip()
    )
}

//! The client-facing side: the certificate and key Palisade presents,
//! loaded at start and again on reload (SIGHUP), and the handshake.
//!
//! The rustls config is published whole through an `ArcSwap`: each new
//! connection takes the current one, a session keeps the one it shook hands
//! with, and a reload that fails leaves the last good one in place.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::{provider, read_certs, read_key, Stream, TlsError, ALPN};
use crate::config::{TlsConfig, TlsMode};

/// How a client asked for TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// SSLRequest, answered `S`.
    Negotiated,
    /// PostgreSQL 17's direct TLS: a ClientHello as the first bytes, which
    /// must name ALPN `postgresql`.
    Direct,
}

/// What clients are offered: the mode and, unless TLS is off, the current
/// certificate.
pub struct ClientTls {
    mode: TlsMode,
    /// `tls.cert_file` and `tls.key_file`, read again on reload.
    files: Option<(PathBuf, PathBuf)>,
    current: ArcSwapOption<ServerConfig>,
}

impl ClientTls {
    /// Reads the configured certificate and key (none when TLS is off).
    pub fn load(config: &TlsConfig) -> Result<ClientTls, TlsError> {
        let mode = config.mode();
        let files = match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) if mode != TlsMode::Disable => {
                Some((cert.clone(), key.clone()))
            }
            _ => None,
        };
        let current = match &files {
            Some((cert, key)) => Some(server_config(cert, key)?),
            None => None,
        };
        Ok(ClientTls {
            mode,
            files,
            current: ArcSwapOption::new(current),
        })
    }

    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// What a new connection shakes hands with; `None` when TLS is off.
    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        self.current.load_full().map(TlsAcceptor::from)
    }

    /// Reads the certificate and key again; new connections get them, open
    /// sessions keep theirs. `Ok(false)` when TLS is off. On an error the
    /// certificate in use stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let Some((cert, key)) = &self.files else {
            return Ok(false);
        };
        self.current.store(Some(server_config(cert, key)?));
        Ok(true)
    }
}

/// Runs the server side of the handshake on `tcp`.
pub async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    request: Request,
) -> io::Result<Stream> {
    let tls = acceptor.accept(tcp).await?;
    let alpn = tls.get_ref().1.alpn_protocol();
    if request == Request::Direct && alpn != Some(ALPN) {
        // As PostgreSQL 17: a direct handshake must say which protocol follows.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "direct TLS connection without ALPN \"postgresql\"",
        ));
    }
    Ok(Stream::Tls(Box::new(tls.into())))
}

fn server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs("tls.cert_file", cert)?;
    let key = read_key("tls.key_file", key)?;
    let rustls = |source| TlsError::Rustls {
        key: "tls.key_file",
        source,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(rustls)?;
    // A client that names another protocol is refused by rustls; one that
    // names none is served after SSLRequest (libpq before 17 never does).
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

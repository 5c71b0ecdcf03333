//! TLS on both sides of the proxy: rustls with its `ring` provider.
//!
//! [`accept`] holds the certificate Palisade shows clients, swapped whole
//! on reload so new connections get the new one while open sessions keep
//! theirs; [`connect`] asks PostgreSQL for TLS (SSLRequest, then the
//! handshake) and gives the control plane's tokio-postgres connections the
//! same settings. Either way a connection ends up a [`Stream`], plain TCP or
//! TLS, which the relay splits into a [`ReadHalf`] and a [`WriteHalf`]: an
//! enum per half, so the cleartext path costs one match per poll and no
//! allocation.

pub mod accept;
pub mod connect;
mod stream;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use accept::ClientTls;
pub use connect::ServerTls;
pub use stream::{ReadHalf, Stream, WriteHalf};

/// The ALPN protocol name PostgreSQL 17 registered; direct TLS requires it.
pub const ALPN: &[u8] = b"postgresql";

/// A certificate, key or CA file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} {}: {reason}", path.display())]
    File {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{key}: {source}")]
    Rustls {
        key: &'static str,
        source: rustls::Error,
    },
}

/// The one crypto provider Palisade uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file, in order; at least one.
fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |reason: String| TlsError::File {
        key,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// The private key in a PEM file.
fn read_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        key,
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

//! The server-facing side: TLS to PostgreSQL as `backend.server_tls` asks,
//! for sessions' connections and cancel requests ([`ServerTls::open`]) and
//! for the control plane's tokio-postgres connections
//! ([`ServerTls::postgres`]).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::TlsConnector;

use super::{provider, read_certs, Stream, TlsError, ALPN};
use crate::config::{BackendConfig, ServerTlsMode};

/// SSLRequest: length 8, code 1234.5679.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// How Palisade's connections to PostgreSQL use TLS. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerTls {
    mode: ServerTlsMode,
    config: Arc<ClientConfig>,
}

/// Why a connection could not get the TLS the config asks for.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the server does not accept TLS (backend.server_tls = \"{0}\")")]
    Refused(&'static str),
    #[error("the server answered SSLRequest with {0:?}")]
    Unexpected(u8),
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ServerTls {
    /// Reads `backend.server_ca_file` when `verify-full` needs it.
    pub fn from_config(backend: &BackendConfig) -> Result<ServerTls, TlsError> {
        let provider = provider();
        let rustls = |source| TlsError::Rustls {
            key: "backend.server_tls",
            source,
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(rustls)?;
        let mut config = match (&backend.server_ca_file, backend.server_tls) {
            (Some(ca), ServerTlsMode::VerifyFull) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs("backend.server_ca_file", ca)? {
                    roots.add(cert).map_err(|source| TlsError::Rustls {
                        key: "backend.server_ca_file",
                        source,
                    })?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            // libpq's `require` encrypts without checking whom it talks to.
            _ => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(ServerTls {
            mode: backend.server_tls,
            config: Arc::new(config),
        })
    }

    /// No TLS at all.
    pub fn disabled() -> ServerTls {
        ServerTls::from_config(&BackendConfig::default())
            .expect("the default backend config reads no file")
    }

    pub fn mode(&self) -> ServerTlsMode {
        self.mode
    }

    /// Asks the server on `tcp` for TLS (SSLRequest) as the mode says, and
    /// runs the handshake for `host` when it agrees.
    pub async fn open(&self, mut tcp: TcpStream, host: &str) -> Result<Stream, OpenError> {
        if self.mode == ServerTlsMode::Disable {
            return Ok(Stream::Plain(tcp));
        }
        tcp.write_all(&SSL_REQUEST).await?;
        // One byte exactly: whatever follows 'S' belongs to the handshake.
        match tcp.read_u8().await? {
            b'S' => {}
            b'N' if self.mode == ServerTlsMode::Prefer => return Ok(Stream::Plain(tcp)),
            b'N' => return Err(OpenError::Refused(mode_name(self.mode))),
            other => return Err(OpenError::Unexpected(other)),
        }
        let name = ServerName::try_from(host.to_owned()).map_err(|e| {
            OpenError::Handshake(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        })?;
        let tls = TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .map_err(OpenError::Handshake)?;
        Ok(Stream::Tls(Box::new(tls.into())))
    }

    /// Sets `pg`'s sslmode and returns the connector for tokio-postgres.
    pub fn postgres(&self, pg: &mut tokio_postgres::Config) -> MakeRustlsConnect {
        pg.ssl_mode(match self.mode {
            ServerTlsMode::Disable => SslMode::Disable,
            ServerTlsMode::Prefer => SslMode::Prefer,
            ServerTlsMode::Require | ServerTlsMode::VerifyFull => SslMode::Require,
        });
        MakeRustlsConnect::new((*self.config).clone())
    }
}

fn mode_name(mode: ServerTlsMode) -> &'static str {
    match mode {
        ServerTlsMode::Disable => "disable",
        ServerTlsMode::Prefer => "prefer",
        ServerTlsMode::Require => "require",
        ServerTlsMode::VerifyFull => "verify-full",
    }
}

/// `require`: any certificate, though the handshake's signatures are still
/// checked against it.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

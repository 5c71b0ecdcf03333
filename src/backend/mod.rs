//! Connections to PostgreSQL nodes: open, authenticate, and hand the session
//! a raw byte stream to relay over.
//!
//! Authentication as a client uses postgres-protocol (the crate under
//! tokio-postgres): SCRAM-SHA-256, md5, cleartext and trust; users looked
//! up by the auth query log in without a password ([`scram`] pass-through,
//! or their stored md5 hash). A server's own
//! ErrorResponse during startup is kept as bytes so the client sees exactly
//! what PostgreSQL said (e.g. `3D000 database does not exist`).

pub mod pool;
pub mod replay;
pub mod scram;

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::classify::SettingValue;
use crate::protocol::take_frame;
use crate::tls::{ReadHalf, ServerTls, WriteHalf};
use scram::{PassThrough, ScramKeys};

/// Startup replies are small; anything bigger is a broken server.
const MAX_STARTUP_REPLY: usize = 1 << 20;
/// The room a server connection's input buffer is given for a read; server
/// connections are few, and replies are often larger than requests.
pub const SERVER_BUFFER: usize = 16 * 1024;

/// What proves a user to PostgreSQL.
#[derive(Clone, PartialEq, Eq)]
pub enum ServerSecret {
    /// A configured cleartext password: whatever method the server asks.
    Password(String),
    /// Keys from the client's own SCRAM proof: SCRAM only.
    Scram(ScramKeys),
    /// A stored md5 hash, `md5` + hex(md5(password + user)): md5 only.
    Md5(String),
}

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            ServerSecret::Password(_) => "Password",
            ServerSecret::Scram(_) => "Scram",
            ServerSecret::Md5(_) => "Md5",
        };
        write!(f, "{kind}(********)")
    }
}

/// What a server needs to let us in.
#[derive(Debug, Clone)]
pub struct Login<'a> {
    pub user: &'a str,
    pub secret: Option<&'a ServerSecret>,
    /// Every startup parameter to send (user included).
    pub params: &'a [(String, String)],
}

/// The key PostgreSQL gave this connection for CancelRequest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendKey {
    pub pid: i32,
    pub secret: i32,
}

/// An authenticated server connection, ready for query.
#[derive(Debug)]
pub struct ServerConn {
    pub rd: ReadHalf,
    pub wr: WriteHalf,
    /// Bytes already read past ReadyForQuery (normally empty).
    pub pending: BytesMut,
    /// ParameterStatus values reported during startup.
    pub params: Vec<(String, String)>,
    pub key: Option<BackendKey>,
    pub host: std::sync::Arc<str>,
    pub port: u16,
    /// The session whose state this connection carries; 0 when it carries none.
    pub owner: u64,
    /// What it carries of its owner's session.
    pub carried: Carried,
    /// Holds a place under the pool's cap for (node, user, database).
    pub permit: Option<OwnedSemaphorePermit>,
}

/// What a server connection holds of its owner's session. The session's
/// own state keeps one record per prepared statement; a connection only
/// notes the names it has prepared and the fingerprint of each definition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carried {
    /// Prepared statements: name → fingerprint of its definition.
    pub prepared: HashMap<String, u64, foldhash::fast::RandomState>,
    /// Session parameters set for its owner, in order.
    pub settings: Vec<(String, SettingValue)>,
}

impl ServerConn {
    /// After `DISCARD ALL`: nothing of any session is left on the server.
    pub fn forget_state(&mut self) {
        self.owner = 0;
        self.carried = Carried::default();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("could not connect to server {host}:{port}: {source}")]
    Io {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("could not set up TLS with server {host}:{port}: {source}")]
    Tls {
        host: String,
        port: u16,
        source: crate::tls::connect::OpenError,
    },
    #[error("timed out connecting to server {host}:{port}")]
    Timeout { host: String, port: u16 },
    /// The server refused us with its own ErrorResponse (raw frame).
    #[error("server {host}:{port} refused the connection")]
    Refused {
        host: String,
        port: u16,
        error: Bytes,
    },
    #[error("server {host}:{port} asked for a password, but none is configured for user {user:?}")]
    NoPassword {
        host: String,
        port: u16,
        user: String,
    },
    #[error("authentication with server {host}:{port} failed: {reason}")]
    Auth {
        host: String,
        port: u16,
        reason: String,
    },
    #[error("server {host}:{port} broke the protocol during startup: {reason}")]
    Protocol {
        host: String,
        port: u16,
        reason: String,
    },
}

/// Opens and authenticates a connection to `host:port`, with TLS as `tls` says.
pub async fn connect(
    host: &str,
    port: u16,
    login: &Login<'_>,
    tls: &ServerTls,
    timeout: Duration,
) -> Result<ServerConn, ConnectError> {
    tokio::time::timeout(timeout, connect_inner(host, port, login, tls))
        .await
        .unwrap_or_else(|_| {
            Err(ConnectError::Timeout {
                host: host.into(),
                port,
            })
        })
}

async fn connect_inner(
    host: &str,
    port: u16,
    login: &Login<'_>,
    tls: &ServerTls,
) -> Result<ServerConn, ConnectError> {
    let io_err = |source| ConnectError::Io {
        host: host.into(),
        port,
        source,
    };
    let stream = TcpStream::connect((host, port)).await.map_err(io_err)?;
    stream.set_nodelay(true).map_err(io_err)?;
    let stream = tls
        .open(stream, host)
        .await
        .map_err(|source| ConnectError::Tls {
            host: host.into(),
            port,
            source,
        })?;
    let (rd, wr) = stream.split();
    let mut startup = Startup {
        host,
        port,
        rd,
        wr,
        buf: BytesMut::with_capacity(8192),
        out: BytesMut::with_capacity(512),
    };
    let params = login.params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    frontend::startup_message(params, &mut startup.out).map_err(io_err)?;
    startup.flush().await?;
    let (params, key) = startup.authenticate(login).await?;
    Ok(ServerConn {
        rd: startup.rd,
        wr: startup.wr,
        pending: startup.buf,
        params,
        key,
        host: host.into(),
        port,
        owner: 0,
        carried: Carried::default(),
        permit: None,
    })
}

struct Startup<'a> {
    host: &'a str,
    port: u16,
    rd: ReadHalf,
    wr: WriteHalf,
    buf: BytesMut,
    out: BytesMut,
}

type StartupReply = (Vec<(String, String)>, Option<BackendKey>);

impl Startup<'_> {
    async fn authenticate(&mut self, login: &Login<'_>) -> Result<StartupReply, ConnectError> {
        let mut scram: Option<Sasl> = None;
        let mut params = Vec::new();
        let mut key = None;
        loop {
            let (raw, message) = self.next_message().await?;
            match message {
                backend::Message::AuthenticationOk => {}
                backend::Message::AuthenticationCleartextPassword => {
                    let password = self.cleartext_answer(login)?;
                    self.send_password(password.as_bytes()).await?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let hash = self.md5_answer(login, body.salt())?;
                    self.send_password(hash.as_bytes()).await?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    scram = Some(self.sasl_start(login, &body).await?);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| self.protocol("unexpected SASLContinue".into()))?;
                    let answer = s.answer(body.data()).map_err(|e| self.auth(&e))?;
                    frontend::sasl_response(&answer, &mut self.out)
                        .map_err(|e| self.protocol(e.to_string()))?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    scram
                        .take()
                        .ok_or_else(|| self.protocol("unexpected SASLFinal".into()))?
                        .finish(body.data())
                        .map_err(|e| self.auth(&e))?;
                }
                backend::Message::ParameterStatus(body) => {
                    let (name, value) = (body.name(), body.value());
                    if let (Ok(name), Ok(value)) = (name, value) {
                        params.push((name.to_owned(), value.to_owned()));
                    }
                }
                backend::Message::BackendKeyData(body) => {
                    key = Some(BackendKey {
                        pid: body.process_id(),
                        secret: body.secret_key(),
                    });
                }
                backend::Message::ErrorResponse(_) => {
                    return Err(ConnectError::Refused {
                        host: self.host.into(),
                        port: self.port,
                        error: raw,
                    });
                }
                backend::Message::ReadyForQuery(_) => return Ok((params, key)),
                // Notices during startup carry nothing the client needs.
                backend::Message::NoticeResponse(_) => {}
                _ => {
                    return Err(self.protocol(format!(
                        "unexpected message {:?}",
                        raw.first().map(|&b| b as char)
                    )))
                }
            }
        }
    }

    async fn send_password(&mut self, password: &[u8]) -> Result<(), ConnectError> {
        frontend::password_message(password, &mut self.out)
            .map_err(|e| self.protocol(e.to_string()))?;
        self.flush().await
    }

    /// Opens a SCRAM-SHA-256 exchange, the one SASL mechanism we speak.
    async fn sasl_start(
        &mut self,
        login: &Login<'_>,
        body: &backend::AuthenticationSaslBody,
    ) -> Result<Sasl, ConnectError> {
        let secret = self.secret(login)?;
        let mut mechanisms = body.mechanisms();
        let mut has_scram = false;
        while let Ok(Some(m)) = fallible_iterator::FallibleIterator::next(&mut mechanisms) {
            has_scram |= m == sasl::SCRAM_SHA_256;
        }
        if !has_scram {
            return Err(self.auth("server offers no SASL mechanism we support"));
        }
        let s = match secret {
            ServerSecret::Password(p) => Sasl::Password(sasl::ScramSha256::new(
                p.as_bytes(),
                sasl::ChannelBinding::unsupported(),
            )),
            ServerSecret::Scram(keys) => Sasl::PassThrough(PassThrough::new(keys.clone())),
            ServerSecret::Md5(_) => {
                return Err(self.auth(
                    "server asks for SCRAM, but the user's password is stored as an md5 hash",
                ))
            }
        };
        frontend::sasl_initial_response(sasl::SCRAM_SHA_256, &s.first(), &mut self.out)
            .map_err(|e| self.protocol(e.to_string()))?;
        self.flush().await?;
        Ok(s)
    }

    /// A looked-up user has no cleartext password to give.
    fn cleartext_answer<'l>(&self, login: &Login<'l>) -> Result<&'l str, ConnectError> {
        match self.secret(login)? {
            ServerSecret::Password(p) => Ok(p),
            _ => Err(self.auth(
                "server asks for a cleartext password, which a user looked up by the auth query cannot give",
            )),
        }
    }

    fn md5_answer(&self, login: &Login<'_>, salt: [u8; 4]) -> Result<String, ConnectError> {
        match self.secret(login)? {
            ServerSecret::Password(p) => Ok(md5_hash(login.user.as_bytes(), p.as_bytes(), salt)),
            ServerSecret::Md5(stored) => Ok(salted_md5(stored, &salt)),
            ServerSecret::Scram(_) => Err(self.auth(
                "server asks for md5, but the user's password is stored as a SCRAM verifier",
            )),
        }
    }

    fn secret<'l>(&self, login: &Login<'l>) -> Result<&'l ServerSecret, ConnectError> {
        login.secret.ok_or_else(|| ConnectError::NoPassword {
            host: self.host.into(),
            port: self.port,
            user: login.user.into(),
        })
    }

    fn auth(&self, reason: &str) -> ConnectError {
        ConnectError::Auth {
            host: self.host.into(),
            port: self.port,
            reason: reason.into(),
        }
    }

    fn protocol(&self, reason: String) -> ConnectError {
        ConnectError::Protocol {
            host: self.host.into(),
            port: self.port,
            reason,
        }
    }

    async fn flush(&mut self) -> Result<(), ConnectError> {
        let result = self.wr.write_all(&self.out).await;
        self.out.clear();
        result.map_err(|source| ConnectError::Io {
            host: self.host.into(),
            port: self.port,
            source,
        })
    }

    /// Reads one whole message; returns its raw bytes and its parse.
    async fn next_message(&mut self) -> Result<(Bytes, backend::Message), ConnectError> {
        loop {
            let frame = take_frame(&mut self.buf, MAX_STARTUP_REPLY)
                .map_err(|e| self.protocol(e.to_string()))?;
            if let Some(frame) = frame {
                let raw = frame.freeze();
                let mut parse_buf = BytesMut::from(&raw[..]);
                return match backend::Message::parse(&mut parse_buf) {
                    Ok(Some(message)) => Ok((raw, message)),
                    Ok(None) => Err(self.protocol("truncated message".into())),
                    Err(e) => Err(self.protocol(e.to_string())),
                };
            }
            let n = self
                .rd
                .read_buf(&mut self.buf)
                .await
                .map_err(|source| ConnectError::Io {
                    host: self.host.into(),
                    port: self.port,
                    source,
                })?;
            if n == 0 {
                return Err(self.protocol("server closed the connection during startup".into()));
            }
        }
    }
}

/// `md5` + hex(md5(hex + salt)) for a stored `md5<hex>` hash: what a
/// client that knows the password would answer to `salt`.
pub fn salted_md5(stored: &str, salt: &[u8]) -> String {
    use md5::Digest;
    let hex = stored.strip_prefix("md5").unwrap_or(stored);
    let mut hasher = md5::Md5::new();
    hasher.update(hex.as_bytes());
    hasher.update(salt);
    let digest = hasher.finalize();
    let mut out = String::with_capacity(35);
    out.push_str("md5");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A SCRAM exchange with a server, with a password or passed-through keys.
enum Sasl {
    Password(sasl::ScramSha256),
    PassThrough(PassThrough),
}

impl Sasl {
    fn first(&self) -> Vec<u8> {
        match self {
            Sasl::Password(s) => s.message().to_vec(),
            Sasl::PassThrough(p) => p.client_first().into_bytes(),
        }
    }

    /// The client-final message for the server-first one.
    fn answer(&mut self, server_first: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            Sasl::Password(s) => {
                s.update(server_first).map_err(|e| e.to_string())?;
                Ok(s.message().to_vec())
            }
            Sasl::PassThrough(p) => {
                let text = std::str::from_utf8(server_first).map_err(|e| e.to_string())?;
                p.client_final(text)
                    .map(String::into_bytes)
                    .map_err(|e| e.to_string())
            }
        }
    }

    fn finish(self, server_final: &[u8]) -> Result<(), String> {
        match self {
            Sasl::Password(mut s) => s.finish(server_final).map_err(|e| e.to_string()),
            Sasl::PassThrough(p) => {
                let text = std::str::from_utf8(server_final).map_err(|e| e.to_string())?;
                p.verify(text).map_err(|e| e.to_string())
            }
        }
    }
}

/// Sends a CancelRequest for `key` to `host:port` (fire and forget, as libpq
/// does), under TLS as `tls` says.
pub async fn cancel(
    host: &str,
    port: u16,
    key: BackendKey,
    tls: &ServerTls,
    timeout: Duration,
) -> std::io::Result<()> {
    let work = async {
        let stream = TcpStream::connect((host, port)).await?;
        let mut stream = tls
            .open(stream, host)
            .await
            .map_err(std::io::Error::other)?;
        let mut buf = BytesMut::with_capacity(16);
        frontend::cancel_request(key.pid, key.secret, &mut buf);
        stream.write_all(&buf).await?;
        // PostgreSQL closes the connection once it has read the request.
        let mut sink = [0u8; 1];
        let _ = stream.read(&mut sink).await;
        Ok(())
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_md5_hash_answers_as_the_password_would() {
        use md5::Digest;
        let stored: String = md5::Md5::digest(b"s3cretapp")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let salt = [1, 2, 3, 4];
        assert_eq!(
            salted_md5(&format!("md5{stored}"), &salt),
            md5_hash(b"app", b"s3cret", salt)
        );
    }
}

//! Client authentication at the proxy: SCRAM-SHA-256 (default), md5, trust.
//!
//! The exchanges themselves are pgwire's (`ScramAuth`, `Md5PasswordAuth`);
//! this module supplies their secrets from the config and drives them over
//! our own framing. Cleartext passwords are turned into SCRAM verifiers once,
//! at start, so a login costs HMACs, not 4096 PBKDF2 rounds.
//!
//! Roles missing from `[[users]]` are looked up on the primary
//! ([`auth_query`](super::auth_query)) when `[auth]` is on. Because the
//! exchange runs over our framing, a SCRAM login against a stored verifier
//! yields the client's ClientKey, which logs the session in to PostgreSQL
//! ([`crate::backend::scram`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use bytes::BytesMut;
use pgwire::api::auth::md5pass::{hash_md5_password, Md5PasswordAuth};
use pgwire::api::auth::mechanism::{AuthMechanism, AuthMechanismFactory, AuthState};
use pgwire::api::auth::sasl::scram::{
    gen_salted_password, ScramAuth, ScramSecret, SCRAM_ITERATIONS,
};
use pgwire::api::auth::{AuthSource, LoginInfo, Password};
use pgwire::api::{
    ClientInfo, PgWireConnectionState, SessionExtensions, METADATA_DATABASE, METADATA_USER,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::response::TransactionStatus;
use pgwire::messages::startup::{Authentication, PasswordMessageFamily, SecretKey};
use pgwire::messages::ProtocolVersion;
use pgwire::tokio::tokio_rustls::rustls::pki_types::CertificateDer;
use rand::Rng;

use super::auth_query::{Stored, UserLookup};
use crate::backend::scram::{recover_client_key, ScramKeys};
use crate::backend::{salted_md5, ServerSecret};
use crate::config::{parse_scram_verifier, AuthMethod, Config, StoredVerifier};
use crate::tls::ServerTls;
use crate::topology::TopologyHandle;

/// What SCRAM needs about a user: derived from a cleartext password at start,
/// or a stored PostgreSQL verifier.
#[derive(Debug, Clone)]
enum ScramMaterial {
    Salted {
        salt: Vec<u8>,
        salted_password: Vec<u8>,
    },
    Verifier(StoredVerifier),
}

impl ScramMaterial {
    fn from_password(password: &str) -> ScramMaterial {
        let salt: [u8; 16] = rand::rng().random();
        ScramMaterial::Salted {
            salted_password: gen_salted_password(password, &salt, SCRAM_ITERATIONS),
            salt: salt.to_vec(),
        }
    }

    fn secret(&self) -> ScramSecret {
        match self.clone() {
            ScramMaterial::Salted {
                salt,
                salted_password,
            } => ScramSecret::SaltedPassword {
                salt,
                salted_password,
            },
            ScramMaterial::Verifier(v) => ScramSecret::Verifier {
                salt: v.salt,
                iterations: v.iterations,
                stored_key: v.stored_key,
                server_key: v.server_key,
            },
        }
    }
}

#[derive(Debug)]
struct UserSecrets {
    method: AuthMethod,
    scram: Option<ScramMaterial>,
    password: Option<String>,
}

/// The users Palisade accepts, with their secrets; the `AuthSource` pgwire asks.
#[derive(Debug)]
pub struct UserStore {
    users: HashMap<String, UserSecrets>,
    /// Answers SCRAM for unknown users, so a probe cannot tell who exists.
    decoy: ScramMaterial,
}

impl UserStore {
    pub fn from_config(config: &Config) -> UserStore {
        let users = config
            .users
            .iter()
            .map(|u| {
                let verifier = match (&u.scram_verifier, &u.password) {
                    (Some(text), _) => parse_scram_verifier(text).map(ScramMaterial::Verifier),
                    (None, Some(p)) if u.auth == AuthMethod::ScramSha256 => {
                        Some(ScramMaterial::from_password(p))
                    }
                    _ => None,
                };
                let secrets = UserSecrets {
                    method: u.auth,
                    scram: verifier,
                    password: u.password.clone(),
                };
                (u.name.clone(), secrets)
            })
            .collect();
        let decoy: [u8; 16] = rand::rng().random();
        UserStore {
            users,
            decoy: ScramMaterial::from_password(
                &base64::engine::general_purpose::STANDARD.encode(decoy),
            ),
        }
    }
}

#[async_trait]
impl AuthSource for UserStore {
    /// Only md5 asks for this: the salted hash the client must send back.
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        let salt: [u8; 4] = rand::rng().random();
        let password = match self.users.get(user).and_then(|u| u.password.as_deref()) {
            Some(p) => hash_md5_password(user, p, &salt),
            // An unknown user gets a hash no client can produce.
            None => format!("unknown user {}", rand::rng().random::<u64>()),
        };
        Ok(Password::new(Some(salt.to_vec()), password.into_bytes()))
    }

    async fn get_scram_secret(&self, login: &LoginInfo) -> PgWireResult<(ScramSecret, Option<()>)> {
        let user = login.user().unwrap_or_default();
        let verifier = self
            .users
            .get(user)
            .and_then(|u| u.scram.as_ref())
            .unwrap_or(&self.decoy);
        Ok((verifier.secret(), None))
    }
}

/// A looked-up role's secret, as pgwire's mechanisms ask for it.
#[derive(Debug)]
struct Fetched(Stored);

#[async_trait]
impl AuthSource for Fetched {
    async fn get_password(&self, _: &LoginInfo) -> PgWireResult<Password> {
        let salt: [u8; 4] = rand::rng().random();
        let expected = match &self.0 {
            Stored::Md5(hash) => salted_md5(hash, &salt),
            Stored::Scram(_) => format!("no md5 for this role {}", rand::rng().random::<u64>()),
        };
        Ok(Password::new(Some(salt.to_vec()), expected.into_bytes()))
    }

    async fn get_scram_secret(&self, _: &LoginInfo) -> PgWireResult<(ScramSecret, Option<()>)> {
        match &self.0 {
            Stored::Scram(v) => Ok((ScramMaterial::Verifier(v.clone()).secret(), None)),
            Stored::Md5(_) => Err(PgWireError::InvalidSASLState),
        }
    }
}

/// Builds each connection's authentication exchange.
pub struct Authenticator {
    store: Arc<UserStore>,
    scram: ScramAuth,
    md5: Md5PasswordAuth<UserStore>,
    lookup: Option<UserLookup>,
}

impl Authenticator {
    pub fn new(config: &Config, tls: ServerTls, topology: TopologyHandle) -> Authenticator {
        let store = Arc::new(UserStore::from_config(config));
        Authenticator {
            scram: ScramAuth::new(store.clone()),
            md5: Md5PasswordAuth::new(store.clone()),
            store,
            lookup: UserLookup::new(config, tls, topology),
        }
    }

    /// The exchange for `user`, or `None` when the user is trusted. Users
    /// in the config come first; others are looked up when `[auth]` is on,
    /// and anyone not found runs SCRAM against the decoy, like a wrong
    /// password.
    pub async fn exchange(&self, user: &str) -> Option<Exchange> {
        let (mechanism, capture) = match self.store.users.get(user) {
            Some(u) => match u.method {
                AuthMethod::Trust => return None,
                AuthMethod::Md5 => (self.md5.create(), None),
                AuthMethod::ScramSha256 => {
                    (self.scram.create(), u.scram.as_ref().and_then(Capture::of))
                }
            },
            None => match self.look_up(user).await {
                Some(Stored::Scram(v)) => {
                    let capture = Capture::of(&ScramMaterial::Verifier(v.clone()));
                    let source = Arc::new(Fetched(Stored::Scram(v)));
                    (ScramAuth::new(source).create(), capture)
                }
                Some(Stored::Md5(hash)) => {
                    let secret = ServerSecret::Md5(hash.clone());
                    let mechanism =
                        Md5PasswordAuth::new(Arc::new(Fetched(Stored::Md5(hash)))).create();
                    return Some(Exchange::new(user, mechanism, None, Some(secret)));
                }
                None => (self.scram.create(), None),
            },
        };
        Some(Exchange::new(user, mechanism, capture, None))
    }

    async fn look_up(&self, user: &str) -> Option<Stored> {
        let lookup = self.lookup.as_ref()?;
        match lookup.find(user).await {
            Ok(stored) => stored,
            // Told like a wrong password; the operator sees why in the log.
            Err(e) => {
                tracing::warn!(user, error = %e, "auth query could not look the user up");
                None
            }
        }
    }
}

/// The SCRAM messages of one exchange, kept to recover the client's
/// ClientKey once its proof is accepted.
struct Capture {
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
    /// client-first, server-first, client-final, as sent.
    messages: Vec<String>,
}

impl Capture {
    /// Only a stored verifier is worth passing through: a user with a
    /// configured password logs in to PostgreSQL with it.
    fn of(material: &ScramMaterial) -> Option<Capture> {
        match material {
            ScramMaterial::Verifier(v) => Some(Capture {
                stored_key: v.stored_key.clone(),
                server_key: v.server_key.clone(),
                messages: Vec::with_capacity(3),
            }),
            ScramMaterial::Salted { .. } => None,
        }
    }

    fn keys(&self) -> Option<ScramKeys> {
        let [first, server_first, last] = self.messages.as_slice() else {
            return None;
        };
        let client_key = recover_client_key(&self.stored_key, first, server_first, last)?;
        Some(ScramKeys {
            client_key,
            server_key: self.server_key.clone(),
        })
    }
}

/// One client's authentication exchange, driven by the session.
pub struct Exchange {
    user: String,
    mechanism: Box<dyn AuthMechanism>,
    capture: Option<Capture>,
    /// What logs the user in to PostgreSQL when the exchange itself does
    /// not yield it (a looked-up md5 hash).
    secret: Option<ServerSecret>,
}

impl Exchange {
    fn new(
        user: &str,
        mechanism: Box<dyn AuthMechanism>,
        capture: Option<Capture>,
        secret: Option<ServerSecret>,
    ) -> Exchange {
        Exchange {
            user: user.to_owned(),
            mechanism,
            capture,
            secret,
        }
    }

    pub async fn begin(&mut self, client: &LoginClient) -> Step {
        let state = self.mechanism.begin(client).await;
        Step::of(state, &self.user)
    }

    /// Feeds the client's password-family message body to the mechanism.
    pub async fn next(&mut self, client: &LoginClient, body: &[u8]) -> Step {
        if let Some(capture) = &mut self.capture {
            let message = match capture.messages.len() {
                0 => sasl_initial_data(body),
                _ => Some(body),
            };
            capture
                .messages
                .push(String::from_utf8_lossy(message.unwrap_or_default()).into_owned());
        }
        let state = self.mechanism.next(client, password_message(body)).await;
        if let (Some(capture), Ok(AuthState::InProgress(Authentication::SASLContinue(data)))) =
            (&mut self.capture, &state)
        {
            capture
                .messages
                .push(String::from_utf8_lossy(data).into_owned());
        }
        Step::of(state, &self.user)
    }

    /// After [`Step::Done`]: how the session logs in to PostgreSQL, when
    /// the exchange gave a way.
    pub fn server_secret(self) -> Option<ServerSecret> {
        let keys = self.capture.as_ref().and_then(Capture::keys);
        keys.map(ServerSecret::Scram).or(self.secret)
    }
}

/// The data of a SASLInitialResponse body: mechanism name, NUL, length, data.
fn sasl_initial_data(body: &[u8]) -> Option<&[u8]> {
    let nul = body.iter().position(|&b| b == 0)?;
    let rest = body.get(nul + 5..)?;
    let len = i32::from_be_bytes(body.get(nul + 1..nul + 5)?.try_into().ok()?);
    rest.get(..usize::try_from(len).ok()?)
}

/// What pgwire's mechanisms may ask about the client.
pub struct LoginClient {
    addr: SocketAddr,
    metadata: HashMap<String, String>,
    extensions: SessionExtensions,
}

impl LoginClient {
    pub fn new(addr: SocketAddr, user: &str, database: &str) -> LoginClient {
        let metadata = HashMap::from([
            (METADATA_USER.to_owned(), user.to_owned()),
            (METADATA_DATABASE.to_owned(), database.to_owned()),
        ]);
        LoginClient {
            addr,
            metadata,
            extensions: SessionExtensions::default(),
        }
    }
}

impl ClientInfo for LoginClient {
    fn socket_addr(&self) -> SocketAddr {
        self.addr
    }
    fn is_secure(&self) -> bool {
        false
    }
    fn protocol_version(&self) -> ProtocolVersion {
        ProtocolVersion::PROTOCOL3_0
    }
    fn set_protocol_version(&mut self, _: ProtocolVersion) {}
    fn pid_and_secret_key(&self) -> (i32, SecretKey) {
        (0, SecretKey::default())
    }
    fn set_pid_and_secret_key(&mut self, _: i32, _: SecretKey) {}
    fn state(&self) -> PgWireConnectionState {
        PgWireConnectionState::AuthenticationInProgress
    }
    fn set_state(&mut self, _: PgWireConnectionState) {}
    fn transaction_status(&self) -> TransactionStatus {
        TransactionStatus::Idle
    }
    fn set_transaction_status(&mut self, _: TransactionStatus) {}
    fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut HashMap<String, String> {
        &mut self.metadata
    }
    fn session_extensions(&self) -> &SessionExtensions {
        &self.extensions
    }
    fn sni_server_name(&self) -> Option<&str> {
        None
    }
    fn client_certificates<'a>(&self) -> Option<&[CertificateDer<'a>]> {
        None
    }
}

/// One step of an exchange, as the session must act on it.
pub enum Step {
    /// Send this request and feed the client's next password message back.
    Send(Authentication),
    /// Authenticated; send the optional final message, then AuthenticationOk.
    Done(Option<Authentication>),
    /// Refused: send this error and close.
    Refused(Box<ErrorInfo>),
}

impl Step {
    /// What to do after a mechanism's answer to `user`'s login.
    pub fn of(state: PgWireResult<AuthState>, user: &str) -> Step {
        match state {
            Ok(AuthState::InProgress(auth)) => Step::Send(auth),
            Ok(AuthState::Ok { final_message, .. }) => Step::Done(final_message),
            Ok(AuthState::Failed(e)) | Err(e) => Step::Refused(Box::new(refusal(e, user))),
        }
    }
}

/// Authentication failures are FATAL, as PostgreSQL reports them. A wrong
/// password names the user of the startup packet: SCRAM's own user name
/// field, which the mechanism would quote, is empty when libpq sends it.
fn refusal(e: PgWireError, user: &str) -> ErrorInfo {
    let mut info = ErrorInfo::from(e);
    info.severity = "FATAL".into();
    if info.code == "28P01" {
        info.message = format!("password authentication failed for user \"{user}\"");
    }
    info
}

/// Wraps a client's password-family frame body for the mechanism.
pub fn password_message(body: &[u8]) -> PasswordMessageFamily {
    PasswordMessageFamily::Raw(BytesMut::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_password_refusals_say_28p01_fatal_once_with_the_login_user() {
        // SCRAM's client-first message from libpq carries no user name.
        let info = refusal(PgWireError::InvalidPassword(String::new()), "app");
        assert_eq!(
            (info.severity.as_str(), info.code.as_str()),
            ("FATAL", "28P01")
        );
        assert_eq!(
            info.message,
            "password authentication failed for user \"app\""
        );
    }
}

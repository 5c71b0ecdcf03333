//! SCRAM-SHA-256 pass-through: logging in to PostgreSQL as a user whose
//! password Palisade never sees.
//!
//! A client that proves itself against a stored verifier reveals its
//! ClientKey to whoever holds the verifier (ClientKey = ClientProof XOR
//! HMAC(StoredKey, AuthMessage)). With that key and the same verifier's
//! salt, iterations and ServerKey, Palisade answers the server's own SCRAM
//! challenge, as PgBouncer and PgDog do. The key lives in memory only.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::{digest, hmac};

/// What a SCRAM login to PostgreSQL needs in place of a password.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub client_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramKeys(********)")
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&key, data).as_ref().to_vec()
}

fn sha256(data: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, data).as_ref().to_vec()
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// The ClientKey behind a client's accepted proof, from the three messages
/// of the exchange as they went over the wire (client-first with its GS2
/// header, server-first, client-final). `None` unless it hashes to
/// `stored_key`, i.e. unless the proof was right.
pub fn recover_client_key(
    stored_key: &[u8],
    client_first: &str,
    server_first: &str,
    client_final: &str,
) -> Option<Vec<u8>> {
    let bare = strip_gs2_header(client_first)?;
    let (without_proof, proof) = client_final.rsplit_once(",p=")?;
    let proof = STANDARD.decode(proof).ok()?;
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let signature = hmac_sha256(stored_key, auth_message.as_bytes());
    if proof.len() != signature.len() {
        return None;
    }
    let client_key = xor(&proof, &signature);
    (sha256(&client_key) == stored_key).then_some(client_key)
}

/// `n,,n=user,r=nonce` → `n=user,r=nonce`: the GS2 header is two fields.
fn strip_gs2_header(client_first: &str) -> Option<&str> {
    let mut parts = client_first.splitn(3, ',');
    parts.next()?;
    parts.next()?;
    parts.next()
}

/// Why the server's side of a pass-through exchange was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PassThroughError {
    #[error("malformed SCRAM server-first message")]
    ServerFirst,
    #[error("server's SCRAM nonce does not extend ours")]
    Nonce,
    #[error("server's SCRAM signature does not match the user's verifier")]
    Signature,
}

/// The client side of one SCRAM exchange driven by a [`ScramKeys`].
pub struct PassThrough {
    keys: ScramKeys,
    nonce: String,
    /// The AuthMessage, once the client-final message is built.
    auth_message: Option<String>,
}

impl PassThrough {
    pub fn new(keys: ScramKeys) -> PassThrough {
        let nonce: [u8; 18] = rand::random();
        PassThrough {
            keys,
            nonce: STANDARD.encode(nonce),
            auth_message: None,
        }
    }

    fn client_first_bare(&self) -> String {
        format!("n=,r={}", self.nonce)
    }

    /// The client-first message (no channel binding, as libpq without TLS).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare())
    }

    /// Answers the server-first message with the client-final message.
    pub fn client_final(&mut self, server_first: &str) -> Result<String, PassThroughError> {
        let mut nonce = None;
        for field in server_first.split(',') {
            if let Some(v) = field.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        let nonce = nonce.ok_or(PassThroughError::ServerFirst)?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(PassThroughError::Nonce);
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!(
            "{},{server_first},{without_proof}",
            self.client_first_bare()
        );
        let stored_key = sha256(&self.keys.client_key);
        let signature = hmac_sha256(&stored_key, auth_message.as_bytes());
        let proof = xor(&self.keys.client_key, &signature);
        self.auth_message = Some(auth_message);
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)))
    }

    /// Checks the server-final message: the server must know the ServerKey.
    pub fn verify(&self, server_final: &str) -> Result<(), PassThroughError> {
        let auth_message = self
            .auth_message
            .as_ref()
            .ok_or(PassThroughError::Signature)?;
        let expected = hmac_sha256(&self.keys.server_key, auth_message.as_bytes());
        let given = server_final
            .strip_prefix("v=")
            .and_then(|v| STANDARD.decode(v).ok());
        match given {
            Some(given) if given == expected => Ok(()),
            _ => Err(PassThroughError::Signature),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// A verifier's keys for `password` with `salt`, as PostgreSQL makes them.
    fn keys(password: &str, salt: &[u8], iterations: u32) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let mut salted = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(iterations).unwrap(),
            salt,
            password.as_bytes(),
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        let server_key = hmac_sha256(&salted, b"Server Key");
        (sha256(&client_key), client_key, server_key)
    }

    #[test]
    fn a_real_clients_proof_yields_its_client_key_and_a_wrong_one_nothing() {
        let salt = b"0123456789abcdef";
        let (stored, client_key, _) = keys("s3cret", salt, 4096);
        for (password, expect) in [("s3cret", Some(client_key)), ("wrong", None)] {
            // postgres-protocol's client, as tokio-postgres logs in.
            let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
            let first = String::from_utf8(client.message().to_vec()).unwrap();
            let client_nonce = first.split("r=").nth(1).unwrap();
            let server_first = format!(
                "r={client_nonce}SERVERNONCE,s={},i=4096",
                STANDARD.encode(salt)
            );
            client.update(server_first.as_bytes()).unwrap();
            let last = String::from_utf8(client.message().to_vec()).unwrap();
            assert_eq!(
                recover_client_key(&stored, &first, &server_first, &last),
                expect
            );
        }
    }

    #[test]
    fn pass_through_proves_the_key_and_checks_the_servers_signature() {
        let salt = b"fedcba9876543210";
        let (stored, client_key, server_key) = keys("s3cret", salt, 4096);
        let mut login = PassThrough::new(ScramKeys {
            client_key,
            server_key: server_key.clone(),
        });
        let first = login.client_first();
        let nonce = first.split("r=").nth(1).unwrap().to_owned();
        let server_first = format!("r={nonce}XYZ,s={},i=4096", STANDARD.encode(salt));
        let last = login.client_final(&server_first).unwrap();
        // The server's check is the same recovery: the proof must be right.
        assert!(recover_client_key(&stored, &first, &server_first, &last).is_some());
        let auth_message = format!(
            "n=,r={nonce},{server_first},{}",
            last.rsplit_once(",p=").unwrap().0
        );
        let good = format!(
            "v={}",
            STANDARD.encode(hmac_sha256(&server_key, auth_message.as_bytes()))
        );
        assert_eq!(login.verify(&good), Ok(()));
        assert_eq!(login.verify("v=AAAA"), Err(PassThroughError::Signature));
        let stolen = format!("r={nonce},s={},i=4096", STANDARD.encode(salt));
        assert_eq!(login.client_final(&stolen), Err(PassThroughError::Nonce));
        assert_eq!(
            login.client_final("garbage"),
            Err(PassThroughError::ServerFirst)
        );
    }
}

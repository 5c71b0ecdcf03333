//! PostgreSQL's stored SCRAM-SHA-256 verifier format: parsed once here, so
//! the config can reject a malformed `users[i].scram_verifier` and the
//! frontend can authenticate against the parts.

use base64::Engine;

/// A PostgreSQL SCRAM-SHA-256 verifier's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVerifier {
    pub iterations: usize,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// Parses PostgreSQL's `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
pub fn parse_scram_verifier(text: &str) -> Option<StoredVerifier> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let rest = text.strip_prefix("SCRAM-SHA-256$")?;
    let (iter_salt, keys) = rest.split_once('$')?;
    let (iterations, salt) = iter_salt.split_once(':')?;
    let (stored, server) = keys.split_once(':')?;
    let iterations: usize = iterations.parse().ok().filter(|&i| i > 0)?;
    let salt = b64.decode(salt).ok()?;
    let stored = b64.decode(stored).ok().filter(|k| k.len() == 32)?;
    let server = b64.decode(server).ok().filter(|k| k.len() == 32)?;
    Some(StoredVerifier {
        iterations,
        salt,
        stored_key: stored,
        server_key: server,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_verifiers_parse() {
        // PostgreSQL's format, for password "secret" with a fixed salt.
        let v = "SCRAM-SHA-256$4096:AQIDBAUGBwgJCgsMDQ4PEA==$8rrDg00OqaiWXJ7p+sCgHEIaBSHY89ZJl3mfIsf32oY=:05L1f+yZbiN8O0AnO40Og85NNRhvzTS57naKRWCcsIA=";
        let parsed = parse_scram_verifier(v).unwrap();
        assert_eq!(parsed.iterations, 4096);
        assert_eq!(parsed.salt, (1..=16).collect::<Vec<u8>>());
        assert_eq!((parsed.stored_key.len(), parsed.server_key.len()), (32, 32));
        for bad in [
            "",
            "SCRAM-SHA-256$",
            "md5abc",
            "SCRAM-SHA-256$0:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$4096:!!$a:b",
        ] {
            assert!(parse_scram_verifier(bad).is_none(), "{bad}");
        }
    }
}

//! Pool keys: which server connections are interchangeable, and what the
//! connection cap counts by.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, LazyLock};

/// One keyed hash for every pool key, so equal keys hash alike; keyed at
/// random, so clients cannot choose startup packets that collide.
static KEY_HASH: LazyLock<RandomState> = LazyLock::new(RandomState::new);

/// A map of keys that carry the hash they took once when made.
pub(in crate::backend) type Prehashed<K, V> = HashMap<K, V, BuildHasherDefault<TakenHash>>;

/// Hashes a key that wrote its stored hash (see [`Prehashed`]).
#[derive(Default)]
pub(in crate::backend) struct TakenHash(u64);

impl Hasher for TakenHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Keys write one u64; anything else still hashes, if poorly.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Which connections are interchangeable: same node, same startup packet,
/// and logged in for the same Palisade user (two users mapped to one server
/// role still never share a login). Made once per session and node; cloning
/// and hashing it cost no more than an integer's, as the pool does both on
/// every check-in.
#[derive(Debug, Clone)]
pub struct PoolKey(Arc<KeyParts>);

#[derive(Debug, PartialEq, Eq)]
pub struct KeyParts {
    pub host: String,
    pub port: u16,
    pub client_user: String,
    /// Every startup parameter sent to the server, sorted by name.
    pub params: Vec<(String, String)>,
    /// What the connection cap counts by.
    limit: LimitKey,
    /// The hash of all of the above, taken once.
    hash: u64,
}

impl PoolKey {
    pub fn new(host: &str, port: u16, client_user: &str, params: &[(String, String)]) -> PoolKey {
        let mut params = params.to_vec();
        params.sort();
        let database = params
            .iter()
            .find(|(k, _)| k == "database")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let limit = LimitKey {
            hash: KEY_HASH.hash_one((host, port, client_user, &database)),
            host: host.to_owned(),
            port,
            user: client_user.to_owned(),
            database,
        };
        PoolKey(Arc::new(KeyParts {
            hash: KEY_HASH.hash_one((host, port, client_user, &params)),
            host: host.to_owned(),
            port,
            client_user: client_user.to_owned(),
            params,
            limit,
        }))
    }

    /// What the connection cap counts by: node, user and database.
    pub(super) fn limit(&self) -> &LimitKey {
        &self.0.limit
    }
}

impl std::ops::Deref for PoolKey {
    type Target = KeyParts;

    fn deref(&self) -> &KeyParts {
        &self.0
    }
}

impl PartialEq for PoolKey {
    fn eq(&self, other: &PoolKey) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || (self.0.hash == other.0.hash && self.0 == other.0)
    }
}

impl Eq for PoolKey {}

impl Hash for PoolKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

#[derive(Debug, Clone)]
pub(super) struct LimitKey {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) user: String,
    pub(super) database: String,
    /// The hash of all of the above, taken once.
    hash: u64,
}

impl PartialEq for LimitKey {
    fn eq(&self, other: &LimitKey) -> bool {
        self.hash == other.hash
            && (self.port, &self.host, &self.user, &self.database)
                == (other.port, &other.host, &other.user, &other.database)
    }
}

impl Eq for LimitKey {}

impl Hash for LimitKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

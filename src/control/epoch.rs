//! Where the current epoch and its primary are kept, so that a restarted
//! proxy knows which node may take writes before it has probed anything.
//!
//! The failover state machine only sees an [`EpochRecord`]; the driver loads
//! and stores it through an [`EpochStore`]. [`StateFile`] is the one-proxy
//! store: a small TOML file replaced atomically (temp file in the same
//! directory, fsync, rename, fsync the directory), so a crash leaves either
//! the old record or the new one, never a torn one. An etcd store for several
//! proxies ([`super::etcd`]) implements the same trait.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The durable part of the topology: which node is the primary of which
/// epoch. Epoch 0 means "none recorded" and is never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochRecord {
    pub epoch: u64,
    /// The primary's configured node name.
    pub primary: String,
}

/// Why the epoch could not be loaded or stored. A read or write failure may
/// pass on retry; a corrupt file or a bad record will not without an operator.
#[derive(Debug, thiserror::Error)]
pub enum EpochStoreError {
    #[error("cannot read the epoch state file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("the epoch state file {path} is corrupt ({reason}); fix or remove it only after checking which node is the primary")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write the epoch state file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("this proxy does not hold the etcd leader key: epoch {epoch} not stored")]
    NotLeader { epoch: u64 },
    #[error("refusing to store epoch {epoch} with primary {primary:?}: {reason}")]
    BadRecord {
        epoch: u64,
        primary: String,
        reason: &'static str,
    },
}

impl EpochStoreError {
    /// Whether trying the same operation again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            EpochStoreError::Read { .. }
                | EpochStoreError::Write { .. }
                | EpochStoreError::Etcd(_)
                | EpochStoreError::NotLeader { .. }
        )
    }
}

/// Loads and stores the epoch record. `store` returns only once the record
/// is durable: the failover state machine publishes an epoch only after that.
/// Calls block (file I/O, fsync); an async driver runs them off its runtime
/// threads.
pub trait EpochStore: Send + Sync {
    /// The last stored record, or `None` when nothing was ever stored.
    fn load(&self) -> Result<Option<EpochRecord>, EpochStoreError>;
    /// Makes `epoch` with `primary` the durable record.
    fn store(&self, epoch: u64, primary: &str) -> Result<(), EpochStoreError>;
}

/// The epoch record in a local file.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

const HEADER: &str = "# Palisade epoch state: the primary of the current epoch.\n\
# Written atomically by the proxy; do not edit while it runs.\n";

impl StateFile {
    pub fn new(path: impl Into<PathBuf>) -> StateFile {
        StateFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn directory(&self) -> &Path {
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        }
    }

    fn corrupt(&self, reason: impl Into<String>) -> EpochStoreError {
        EpochStoreError::Corrupt {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn write_error(&self, source: io::Error) -> EpochStoreError {
        EpochStoreError::Write {
            path: self.path.clone(),
            source,
        }
    }
}

impl EpochRecord {
    /// The record of `epoch` with `primary`, when it means something.
    pub(crate) fn checked(epoch: u64, primary: &str) -> Result<EpochRecord, EpochStoreError> {
        let record = EpochRecord {
            epoch,
            primary: primary.to_owned(),
        };
        check(&record).map_err(|reason| EpochStoreError::BadRecord {
            epoch,
            primary: primary.to_owned(),
            reason,
        })?;
        Ok(record)
    }
}

fn check(record: &EpochRecord) -> Result<(), &'static str> {
    if record.epoch == 0 {
        return Err("epoch 0 means no epoch");
    }
    if record.primary.trim().is_empty() {
        return Err("the primary name is empty");
    }
    Ok(())
}

impl EpochStore for StateFile {
    fn load(&self) -> Result<Option<EpochRecord>, EpochStoreError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(EpochStoreError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let text = String::from_utf8(bytes).map_err(|_| self.corrupt("not UTF-8 text"))?;
        let record: EpochRecord =
            toml::from_str(&text).map_err(|e| self.corrupt(e.message().trim_end().to_owned()))?;
        check(&record).map_err(|reason| self.corrupt(reason))?;
        Ok(Some(record))
    }

    fn store(&self, epoch: u64, primary: &str) -> Result<(), EpochStoreError> {
        let record = EpochRecord::checked(epoch, primary)?;
        let body = toml::to_string(&record)
            .map_err(|e| self.write_error(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        let dir = self.directory();
        // The temp file must be in the same directory: rename is atomic only
        // within one file system.
        let mut temp = tempfile::Builder::new()
            .prefix(".palisade-state.")
            .tempfile_in(dir)
            .map_err(|e| self.write_error(e))?;
        temp.write_all(HEADER.as_bytes())
            .and_then(|()| temp.write_all(body.as_bytes()))
            .and_then(|()| temp.as_file().sync_all())
            .map_err(|e| self.write_error(e))?;
        temp.persist(&self.path)
            .map_err(|e| self.write_error(e.error))?;
        // The rename is durable only once the directory entry is.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.write_error(e))
    }
}

/// The epoch record kept in memory only, when no `failover.state_file` is
/// configured: a restarted proxy learns the primary afresh from the nodes.
#[derive(Debug, Default)]
pub struct MemoryStore {
    record: std::sync::Mutex<Option<EpochRecord>>,
}

impl EpochStore for MemoryStore {
    fn load(&self) -> Result<Option<EpochRecord>, EpochStoreError> {
        Ok(self
            .record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone())
    }

    fn store(&self, epoch: u64, primary: &str) -> Result<(), EpochStoreError> {
        let record = EpochRecord::checked(epoch, primary)?;
        *self
            .record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(record);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_in(dir: &tempfile::TempDir) -> StateFile {
        StateFile::new(dir.path().join("state.toml"))
    }

    fn assert_corrupt(store: &StateFile, text: &[u8], what: &str) {
        fs::write(store.path(), text).unwrap();
        match store.load() {
            Err(e @ EpochStoreError::Corrupt { .. }) => {
                assert!(!e.is_retryable());
                assert!(e.to_string().contains("state.toml"), "{what}: {e}");
            }
            other => panic!("{what}: expected a corrupt-file error, got {other:?}"),
        }
    }

    #[test]
    fn a_missing_file_means_no_epoch_yet() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(file_in(&dir).load().unwrap(), None);
    }

    #[test]
    fn stored_record_loads_back_and_the_latest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_in(&dir);
        store.store(1, "pg1").unwrap();
        store.store(2, "pg \"two\" = 2").unwrap();
        let record = store.load().unwrap();
        assert_eq!(
            record,
            Some(EpochRecord {
                epoch: 2,
                primary: "pg \"two\" = 2".into()
            })
        );
        let reopened = StateFile::new(store.path());
        assert_eq!(reopened.load().unwrap(), record);
    }

    #[test]
    fn store_leaves_no_temp_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_in(&dir);
        for epoch in 1..=3 {
            store.store(epoch, "pg1").unwrap();
        }
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.toml"]);
    }

    #[test]
    fn a_relative_path_is_written_in_the_current_directory() {
        let store = StateFile::new("state.toml");
        assert_eq!(store.directory(), Path::new("."));
    }

    #[test]
    fn corrupt_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_in(&dir);
        assert_corrupt(&store, b"", "empty");
        assert_corrupt(&store, b"\xff\xfe", "not UTF-8");
        assert_corrupt(&store, b"epoch = ", "truncated");
        assert_corrupt(&store, b"epoch = 3\n", "no primary");
        assert_corrupt(&store, b"epoch = -1\nprimary = \"a\"\n", "negative");
        assert_corrupt(&store, b"epoch = \"3\"\nprimary = \"a\"\n", "string");
        assert_corrupt(&store, b"epoch = 0\nprimary = \"a\"\n", "epoch 0");
        assert_corrupt(&store, b"epoch = 3\nprimary = \"\"\n", "empty name");
        assert_corrupt(
            &store,
            b"epoch = 3\nprimary = \"a\"\nleader = \"b\"\n",
            "unknown key",
        );
    }

    #[test]
    fn an_unreadable_file_is_a_retryable_read_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be cannot be read as one.
        let store = StateFile::new(dir.path());
        let e = store.load().unwrap_err();
        assert!(matches!(e, EpochStoreError::Read { .. }), "{e:?}");
        assert!(e.is_retryable());
    }

    #[test]
    fn an_unwritable_place_is_a_write_error_and_keeps_the_old_record() {
        let dir = tempfile::tempdir().unwrap();
        let missing = StateFile::new(dir.path().join("no/such/dir/state.toml"));
        let e = missing.store(1, "pg1").unwrap_err();
        assert!(matches!(e, EpochStoreError::Write { .. }), "{e:?}");
        // Renaming over a non-empty directory fails after the temp file was
        // written; the temp file must not be left behind.
        let blocked = StateFile::new(dir.path().join("taken"));
        fs::create_dir(blocked.path()).unwrap();
        fs::write(blocked.path().join("x"), b"x").unwrap();
        assert!(matches!(
            blocked.store(1, "pg1"),
            Err(EpochStoreError::Write { .. })
        ));
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["taken"]);
    }

    #[test]
    fn records_that_mean_nothing_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_in(&dir);
        for (epoch, name) in [(0, "pg1"), (1, " ")] {
            let e = store.store(epoch, name).unwrap_err();
            assert!(matches!(e, EpochStoreError::BadRecord { .. }), "{e:?}");
        }
        assert_eq!(store.load().unwrap(), None);
    }

    #[test]
    fn the_memory_store_keeps_the_latest_record() {
        let store = MemoryStore::default();
        assert_eq!(store.load().unwrap(), None);
        store.store(1, "a").unwrap();
        store.store(2, "b").unwrap();
        assert_eq!(
            store.load().unwrap(),
            Some(EpochRecord {
                epoch: 2,
                primary: "b".into()
            })
        );
        assert!(store.store(0, "c").is_err());
    }
}

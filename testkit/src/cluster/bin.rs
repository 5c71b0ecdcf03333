//! Locating the PostgreSQL server binaries: `PG_BIN`, then `pg_config --bindir`, then the
//! newest `/usr/lib/postgresql/*/bin` (Debian's layout).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::ClusterError;

/// Where Debian and Ubuntu install one directory per major version.
const VERSIONED_ROOT: &str = "/usr/lib/postgresql";

/// Finds the directory holding `postgres`, `initdb` and friends.
///
/// `PG_BIN`, when set, must be right: it is an explicit choice, so a wrong one is an error
/// rather than a reason to look elsewhere.
pub fn find_pg_bin() -> Result<PathBuf, ClusterError> {
    let from_env = std::env::var_os("PG_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let from_pg_config = pg_config_bindir();
    search_pg_bin(
        from_env.as_deref(),
        from_pg_config.as_deref(),
        Path::new(VERSIONED_ROOT),
    )
}

/// The search itself, over given candidates, so that it can be tested without touching the
/// process environment.
pub(crate) fn search_pg_bin(
    pg_bin_env: Option<&Path>,
    pg_config_bindir: Option<&Path>,
    versioned_root: &Path,
) -> Result<PathBuf, ClusterError> {
    if let Some(dir) = pg_bin_env {
        return if has_server_binaries(dir) {
            Ok(dir.to_path_buf())
        } else {
            Err(ClusterError::NoPostgres {
                searched: format!("PG_BIN={} has no `postgres` and `initdb`", dir.display()),
            })
        };
    }
    let mut searched = Vec::new();
    if let Some(dir) = pg_config_bindir {
        if has_server_binaries(dir) {
            return Ok(dir.to_path_buf());
        }
        searched.push(format!("pg_config --bindir = {}", dir.display()));
    } else {
        searched.push("pg_config (not on PATH)".to_string());
    }
    if let Some(dir) = newest_versioned_bin(versioned_root) {
        return Ok(dir);
    }
    searched.push(format!("{}/*/bin", versioned_root.display()));
    Err(ClusterError::NoPostgres {
        searched: searched.join(", "),
    })
}

fn has_server_binaries(dir: &Path) -> bool {
    dir.join("postgres").is_file() && dir.join("initdb").is_file()
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?;
    let dir = dir.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// `<root>/<version>/bin` with the highest version that holds the server binaries.
fn newest_versioned_bin(root: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(root).ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = parse_version(entry.file_name().to_str()?)?;
            let bin = entry.path().join("bin");
            has_server_binaries(&bin).then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
}

/// "15" → (15, 0), "9.6" → (9, 6); anything else is not a version directory.
fn parse_version(name: &str) -> Option<(u32, u32)> {
    let mut parts = name.splitn(2, '.');
    let major = parts.next()?.parse().ok()?;
    let minor = match parts.next() {
        Some(minor) => minor.parse().ok()?,
        None => 0,
    };
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bin(dir: &Path, with_initdb: bool) {
        std::fs::create_dir_all(dir).expect("create fake bin dir");
        std::fs::write(dir.join("postgres"), "").expect("write fake postgres");
        if with_initdb {
            std::fs::write(dir.join("initdb"), "").expect("write fake initdb");
        }
    }

    #[test]
    fn bogus_pg_bin_is_a_clear_error_even_when_postgres_is_installed() {
        let root = tempfile::tempdir().expect("tempdir");
        fake_bin(&root.path().join("15/bin"), true);
        let err = search_pg_bin(Some(Path::new("/nonexistent/pg")), None, root.path())
            .expect_err("a bogus PG_BIN must not fall back");
        assert!(matches!(err, ClusterError::NoPostgres { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("PostgreSQL server binaries not found"),
            "{msg}"
        );
        assert!(msg.contains("PG_BIN=/nonexistent/pg"), "{msg}");
        assert!(msg.contains("apt-get install -y postgresql"), "{msg}");
    }

    #[test]
    fn nothing_installed_is_a_clear_error() {
        let root = tempfile::tempdir().expect("tempdir");
        let client_only = root.path().join("client/bin");
        fake_bin(&client_only, false);
        let err = search_pg_bin(None, Some(&client_only), &root.path().join("absent"))
            .expect_err("no server binaries anywhere");
        let msg = err.to_string();
        assert!(msg.contains("set PG_BIN"), "{msg}");
        assert!(msg.contains("pg_config --bindir"), "{msg}");
    }

    #[test]
    fn client_only_pg_config_falls_back_to_the_newest_versioned_dir() {
        let root = tempfile::tempdir().expect("tempdir");
        let client_only = root.path().join("client/bin");
        fake_bin(&client_only, false);
        for version in ["9.6", "12", "15", "16"] {
            fake_bin(&root.path().join(version).join("bin"), version != "16");
        }
        std::fs::create_dir_all(root.path().join("common/bin")).expect("mkdir");
        let found = search_pg_bin(None, Some(&client_only), root.path()).expect("found");
        assert_eq!(found, root.path().join("15/bin"));
    }

    #[test]
    fn valid_pg_bin_wins() {
        let root = tempfile::tempdir().expect("tempdir");
        fake_bin(&root.path().join("15/bin"), true);
        let custom = root.path().join("custom");
        fake_bin(&custom, true);
        assert_eq!(
            search_pg_bin(Some(&custom), None, root.path()).expect("found"),
            custom
        );
    }

    #[test]
    fn versions_order_numerically() {
        assert!(parse_version("10") > parse_version("9.6"));
        assert_eq!(parse_version("common"), None);
    }
}

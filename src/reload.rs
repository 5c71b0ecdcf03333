//! `RELOAD` and SIGHUP: the config file read again, and what of it can
//! change while the proxy runs put in force at once — users and `[auth]`,
//! `[admin]`, `[consistency]`, `[routing]` (but its catalog refresh
//! interval), the client timeouts of `[proxy]`, the nodes (added, removed,
//! reweighed: through the driver, which refuses to remove the primary) —
//! plus the TLS certificate read again. New sessions and every routing
//! decision from then on see the new values; a session keeps the message
//! size limit and timeouts it started with. Everything else (listen
//! addresses, `[pool]`, `[monitor]`, `[failover]`,
//! `[backend]`, `[http]`, `[tls]` paths, the connection limits) is named as
//! needing a restart and keeps its running value. A file that does not
//! parse or validate changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::info;

use crate::config::Config;
use crate::control::Command;
use crate::frontend::auth::Authenticator;
use crate::frontend::Shared;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Keys now in force with the file's value.
    pub applied: Vec<String>,
    /// Keys whose new value waits for a restart.
    pub needs_restart: Vec<String>,
    /// What the driver did with the nodes, when they changed.
    pub nodes: Option<String>,
    /// The TLS certificate: re-read, off, or why it was kept.
    pub tls: Result<bool, String>,
}

impl Report {
    /// What the console and the log say, one line each.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.applied.is_empty() {
            lines.push("reloaded: no setting that can change live changed".to_owned());
        } else {
            lines.push(format!("reloaded: {}", self.applied.join(", ")));
        }
        if !self.needs_restart.is_empty() {
            lines.push(format!(
                "needs a restart (the running value stays): {}",
                self.needs_restart.join(", ")
            ));
        }
        if let Some(nodes) = &self.nodes {
            lines.push(format!("nodes: {nodes}"));
        }
        match &self.tls {
            Ok(true) => lines.push("TLS certificate re-read".to_owned()),
            Ok(false) => {}
            Err(e) => lines.push(format!("TLS certificate kept: {e}")),
        }
        lines
    }
}

/// Reads the file the running config came from again and applies it.
pub async fn from_file(shared: &Shared) -> Result<Report, String> {
    let Some(path) = shared.config().source.clone() else {
        return Err(
            "nothing to reload: the proxy was started from a config in memory, not a file".into(),
        );
    };
    let new = Config::load(&path)
        .map_err(|e| format!("{}: {e}; the running config is unchanged", path.display()))?;
    apply(shared, new).await
}

/// Applies `new` as far as it can change live (see the module's doc).
pub async fn apply(shared: &Shared, new: Config) -> Result<Report, String> {
    new.validate()
        .map_err(|e| format!("{e}; the running config is unchanged"))?;
    let current = shared.config.load_full();
    let next = live_part(&current, &new);
    let applied = changed(&current, &next);
    let needs_restart = changed(&next, &new);
    // First, as it is the one part that may be refused (removing the
    // primary): then nothing changes.
    let nodes = if current.nodes == next.nodes {
        None
    } else {
        let asked = shared
            .admin
            .control()
            .ask(Command::Nodes(next.nodes.clone()));
        let said = asked
            .await
            .map_err(|e| format!("{e}; the running config is unchanged"))?;
        info!(nodes = %said, "nodes reloaded");
        Some(said)
    };
    if applied
        .iter()
        .any(|k| k.starts_with("users") || k.starts_with("auth."))
    {
        let auth = Authenticator::new(&next, shared.pool.tls().clone(), shared.topology.clone());
        shared.auth.store(Arc::new(auth));
    }
    shared.config.store(Arc::new(next));
    let report = Report {
        applied,
        needs_restart,
        nodes,
        tls: shared.tls.reload().map_err(|e| e.to_string()),
    };
    for line in report.lines() {
        info!("{line}");
    }
    Ok(report)
}

/// `current` with what of `new` can change live.
fn live_part(current: &Config, new: &Config) -> Config {
    let mut next = current.clone();
    next.users = new.users.clone();
    next.auth = new.auth.clone();
    next.admin = new.admin.clone();
    next.consistency = new.consistency.clone();
    next.routing = new.routing.clone();
    next.routing.function_refresh_ms = current.routing.function_refresh_ms;
    let (p, n) = (&mut next.proxy, &new.proxy);
    p.max_message_size = n.max_message_size;
    p.startup_timeout_ms = n.startup_timeout_ms;
    p.client_message_timeout_ms = n.client_message_timeout_ms;
    p.client_idle_timeout_ms = n.client_idle_timeout_ms;
    p.replica_connect_timeout_ms = n.replica_connect_timeout_ms;
    p.shutdown_timeout_ms = n.shutdown_timeout_ms;
    next.nodes = new.nodes.clone();
    next
}

/// The keys (dotted, as `SHOW CONFIG` names them) whose values differ.
fn changed(a: &Config, b: &Config) -> Vec<String> {
    let (a, b) = (flat(a), flat(b));
    let mut keys: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .chain(b.keys().filter(|k| !a.contains_key(*k)).cloned())
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn flat(config: &Config) -> BTreeMap<String, String> {
    crate::config::settings(config, |_| false)
        .map(|rows| rows.into_iter().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        [proxy]
        listen = "127.0.0.1:6432"
        [[nodes]]
        name = "a"
        host = "127.0.0.1"
        port = 5432
        [[nodes]]
        name = "b"
        host = "127.0.0.1"
        port = 5433
        [[users]]
        name = "app"
        password = "pw"
    "#;

    fn with(extra: &str) -> Config {
        Config::parse(&format!("{BASE}\n{extra}")).unwrap()
    }

    #[test]
    fn live_settings_apply_and_the_rest_waits_for_a_restart() {
        let current = Config::parse(BASE).unwrap();
        let text = BASE
            .replace("127.0.0.1:6432", "127.0.0.1:7000")
            .replace("port = 5433", "port = 5433\n        weight = 3")
            .replace("password = \"pw\"", "password = \"new\"");
        let new = Config::parse(&format!(
            "{text}\n[consistency]\nlevel = \"eventual\"\n[pool]\nidle_timeout_ms = 5\n"
        ))
        .unwrap();
        let next = live_part(&current, &new);
        assert_eq!(
            changed(&current, &next),
            ["consistency.level", "nodes[1].weight", "users[0].password"]
        );
        assert_eq!(
            changed(&next, &new),
            ["pool.idle_timeout_ms", "proxy.listen"]
        );
        assert_eq!(next.proxy.listen, "127.0.0.1:6432");
    }

    #[test]
    fn a_changed_node_set_changes_live() {
        let current = Config::parse(BASE).unwrap();
        let new = with("[[nodes]]\nname = \"c\"\nhost = \"127.0.0.1\"\nport = 5434\nweight = 2\n");
        let next = live_part(&current, &new);
        assert_eq!(next.nodes, new.nodes);
        let applied = changed(&current, &next);
        assert!(
            applied.iter().all(|k| k.starts_with("nodes[2]")),
            "{applied:?}"
        );
        assert!(!applied.is_empty());
        assert!(changed(&next, &new).is_empty());
    }
}

//! The hooks a failover runs outside PostgreSQL's SQL: bringing a fenced
//! old primary back as a replica (which needs its data directory: stop,
//! pg_rewind, standby.signal, start) and fencing harder than SQL can (stop
//! the server, STONITH). [`CommandOperator`] runs the configured shell
//! commands; the demo and the tests plug in one that drives their local
//! cluster (`LocalRejoin`, in the `palisade` binary's `demo` module).
//!
//! A command line often carries a secret (`PGPASSWORD=... pg_rewind ...`):
//! it is never logged, and what a failed command printed is shown with
//! anything that looks like a password hidden ([`redact`]).

use async_trait::async_trait;
use tokio::process::Command;
use tracing::info;

use crate::config::{FailoverConfig, NodeConfig};

#[async_trait]
pub trait NodeOperator: Send + Sync {
    /// Turns `node`, a fenced old primary, into a streaming replica of
    /// `primary`.
    async fn rejoin(&self, node: &NodeConfig, primary: &NodeConfig) -> Result<(), String>;

    /// Fences `node` by means beyond SQL. `Ok(false)` when there are none.
    async fn fence(&self, node: &NodeConfig) -> Result<bool, String>;
}

/// Runs `failover.rejoin_command` and `failover.fence_command` with `sh -c`.
/// Each sees the node in `PALISADE_NODE`, `PALISADE_NODE_HOST` and
/// `PALISADE_NODE_PORT`; a rejoin also sees the new primary in
/// `PALISADE_PRIMARY`, `PALISADE_PRIMARY_HOST`, `PALISADE_PRIMARY_PORT`.
#[derive(Debug, Clone, Default)]
pub struct CommandOperator {
    rejoin: Option<String>,
    fence: Option<String>,
}

impl CommandOperator {
    pub fn new(config: &FailoverConfig) -> CommandOperator {
        CommandOperator {
            rejoin: config.rejoin_command.clone(),
            fence: config.fence_command.clone(),
        }
    }
}

fn env(prefix: &str, node: &NodeConfig) -> [(String, String); 3] {
    [
        (prefix.to_owned(), node.display_name()),
        (format!("{prefix}_HOST"), node.host.clone()),
        (format!("{prefix}_PORT"), node.port.to_string()),
    ]
}

async fn run(what: &str, command: &str, vars: &[(String, String)]) -> Result<(), String> {
    info!(what, "running hook");
    let out = Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("{what} command could not start: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(format!(
        "{what} command failed ({}): {}",
        out.status,
        redact(stderr.trim())
    ))
}

/// Words that mark a `name=value`'s value as secret.
const SECRET_NAMES: [&str; 3] = ["pass", "secret", "token"];

/// `text` with what looks like a secret hidden: the value of every
/// `name=value` whose name mentions a password, secret or token (quoted
/// values whole), and the password of a `scheme://user:password@host` URL.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let (before, after) = (&rest[..eq], &rest[eq + 1..]);
        let name_start = before
            .char_indices()
            .rev()
            .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let name = before[name_start..].to_lowercase();
        out.push_str(before);
        out.push('=');
        rest = after;
        if !name.is_empty() && SECRET_NAMES.iter().any(|w| name.contains(w)) {
            out.push_str("********");
            rest = &after[value_len(after)..];
        }
    }
    out.push_str(rest);
    hide_url_passwords(&out)
}

/// The length of the value at the start of `text`: up to its closing quote
/// when quoted, else up to the next blank.
fn value_len(text: &str) -> usize {
    match text.chars().next() {
        Some(quote @ ('\'' | '"')) => text[1..].find(quote).map_or(text.len(), |i| i + 2),
        _ => text.find(char::is_whitespace).unwrap_or(text.len()),
    }
}

/// `scheme://user:password@host` → `scheme://user:********@host`.
fn hide_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme) = rest.find("://") {
        let (head, tail) = rest.split_at(scheme + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| c == '/' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@').and_then(|at| {
            let colon = authority[..at].find(':')?;
            Some((colon, at))
        }) {
            Some((colon, at)) => {
                out.push_str(&authority[..=colon]);
                out.push_str("********");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

#[async_trait]
impl NodeOperator for CommandOperator {
    async fn rejoin(&self, node: &NodeConfig, primary: &NodeConfig) -> Result<(), String> {
        let Some(command) = &self.rejoin else {
            return Err(format!(
                "no failover.rejoin_command is configured: rejoin {} by hand (pg_rewind, standby.signal, primary_conninfo)",
                node.display_name()
            ));
        };
        let mut vars = env("PALISADE_NODE", node).to_vec();
        vars.extend(env("PALISADE_PRIMARY", primary));
        run("rejoin", command, &vars).await
    }

    async fn fence(&self, node: &NodeConfig) -> Result<bool, String> {
        match &self.fence {
            None => Ok(false),
            Some(command) => run("fence", command, &env("PALISADE_NODE", node))
                .await
                .map(|()| true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Where a test's log lines go.
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn redact_hides_passwords_secrets_tokens_and_url_passwords() {
        let cases = [
            (
                "PGPASSWORD=s3cret pg_rewind",
                "PGPASSWORD=******** pg_rewind",
            ),
            (
                "conninfo: host=h password='se cr et' user=u",
                "conninfo: host=h password=******** user=u",
            ),
            ("API_TOKEN=\"a b\"", "API_TOKEN=********"),
            ("client_secret=x,y", "client_secret=********"),
            (
                "postgresql://rep:s3cret@10.0.0.1:5432/db",
                "postgresql://rep:********@10.0.0.1:5432/db",
            ),
            ("a=b c==d =e ü=1", "a=b c==d =e ü=1"),
            ("http://host/x?y=1 user@host", "http://host/x?y=1 user@host"),
            ("password=", "password=********"),
        ];
        for (text, redacted) in cases {
            assert_eq!(redact(text), redacted, "{text}");
        }
    }

    fn node(name: &str, port: u16) -> NodeConfig {
        NodeConfig {
            name: Some(name.into()),
            host: "127.0.0.1".into(),
            port,
            weight: 1,
        }
    }

    #[tokio::test]
    async fn commands_see_the_nodes_and_fail_with_their_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("seen");
        let op = CommandOperator {
            rejoin: Some(format!(
                "echo \"$PALISADE_NODE $PALISADE_NODE_PORT $PALISADE_PRIMARY $PALISADE_PRIMARY_HOST:$PALISADE_PRIMARY_PORT\" > {}",
                out.display()
            )),
            fence: Some("echo cannot reach $PALISADE_NODE >&2; exit 3".into()),
        };
        op.rejoin(&node("old", 5432), &node("new", 5433))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap().trim(),
            "old 5432 new 127.0.0.1:5433"
        );
        let err = op.fence(&node("old", 5432)).await.unwrap_err();
        assert!(err.contains("cannot reach old"), "{err}");

        // A command's secrets stay out of its error.
        let op = CommandOperator {
            rejoin: None,
            fence: Some(
                "PGPASSWORD=s3cret; echo \"fence failed: password='s3 cret' PGPASSWORD=$PGPASSWORD postgres://u:s3cret@h/db\" >&2; exit 1"
                    .into(),
            ),
        };
        let logged = Arc::new(Mutex::new(Vec::new()));
        let sink = logged.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        let err = {
            let _logging = tracing::subscriber::set_default(subscriber);
            op.fence(&node("old", 5432)).await.unwrap_err()
        };
        assert!(!err.contains("s3"), "{err}");
        assert!(err.contains("fence failed"), "{err}");
        let logged = String::from_utf8(logged.lock().unwrap().clone()).unwrap();
        assert!(logged.contains("running hook"), "{logged}");
        assert!(!logged.contains("s3"), "{logged}");

        let none = CommandOperator::default();
        assert_eq!(none.fence(&node("old", 1)).await, Ok(false));
        let err = none
            .rejoin(&node("old", 1), &node("new", 2))
            .await
            .unwrap_err();
        assert!(err.contains("rejoin_command"), "{err}");
    }
}

//! The hooks a failover runs outside PostgreSQL's SQL: bringing a fenced
//! old primary back as a replica (which needs its data directory: stop,
//! pg_rewind, standby.signal, start) and fencing harder than SQL can (stop
//! the server, STONITH). [`CommandOperator`] runs the configured shell
//! commands; the demo and the tests plug in one that drives their local
//! cluster (`LocalRejoin`, in the `palisade` binary's `demo` module).

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
    info!(what, command, "running hook");
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
        stderr.trim()
    ))
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

        let none = CommandOperator::default();
        assert_eq!(none.fence(&node("old", 1)).await, Ok(false));
        let err = none
            .rejoin(&node("old", 1), &node("new", 2))
            .await
            .unwrap_err();
        assert!(err.contains("rejoin_command"), "{err}");
    }
}

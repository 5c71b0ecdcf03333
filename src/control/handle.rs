//! How the admin console talks to the control plane: a [`ControlHandle`]
//! the proxy hands to the console, carrying operator commands to the
//! driver and bringing back its answer. Sessions never hold it.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::journal::{Entry, Journal};

/// An operator command from the admin console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SWITCHOVER [TO node]`.
    Switchover(Option<String>),
    /// `REJOIN node`.
    Rejoin(String),
    /// `RELOAD`: the nodes as configured now (added, removed, reweighed).
    Nodes(Vec<crate::config::NodeConfig>),
}

/// A command and where its answer goes: what was started, or why not.
pub struct Request {
    pub command: Command,
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// The sending side of the driver's command queue.
#[derive(Debug, Clone)]
pub struct ControlHandle {
    commands: mpsc::Sender<Request>,
    /// The failover log the driver keeps.
    journal: Arc<Journal>,
}

/// Commands waiting for the driver at most; more wait to be queued.
const QUEUE: usize = 16;

impl ControlHandle {
    /// A handle and the queue the driver reads.
    pub fn channel() -> (ControlHandle, mpsc::Receiver<Request>) {
        let (commands, queue) = mpsc::channel(QUEUE);
        let journal = Arc::default();
        (ControlHandle { commands, journal }, queue)
    }

    /// Where the driver records the failover log.
    pub fn journal(&self) -> Arc<Journal> {
        self.journal.clone()
    }

    /// The last events of the failover log, oldest first.
    pub fn events(&self) -> Vec<Entry> {
        self.journal.entries()
    }

    /// Hands `command` to the driver and waits for its answer: what was
    /// started, or why not.
    pub async fn ask(&self, command: Command) -> Result<String, String> {
        let (reply, answer) = oneshot::channel();
        let request = Request { command, reply };
        if self.commands.send(request).await.is_err() {
            return Err("the control plane is not running".to_owned());
        }
        answer
            .await
            .unwrap_or_else(|_| Err("the control plane stopped before answering".to_owned()))
    }
}

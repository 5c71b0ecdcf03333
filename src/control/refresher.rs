//! Keeps the published catalog of VOLATILE functions current: one task
//! loads a database's set ([`FunctionCatalog`]) when a session first sees
//! the database or ran function DDL (requests through the
//! [`TopologyHandle`], never awaited by the session), and every database's
//! on an interval (`routing.function_refresh_ms`) for DDL that did not go
//! through the proxy. Each load is numbered when it starts; the driver
//! publishes what it found under that number ([`FunctionsLoaded`]), so a
//! session can tell a load that started after its DDL from one before.
//! Loads run one at a time, in the order asked.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use super::functions::{FunctionCatalog, Loaded, MIN_REFRESH_INTERVAL};
use crate::topology::{PublishedFunctions, TopologyHandle};

/// A finished load, for the driver to publish.
#[derive(Debug)]
pub struct FunctionsLoaded {
    pub database: String,
    /// `None`: the database does not exist, forget it.
    pub published: Option<PublishedFunctions>,
    /// Told once it is published.
    pub ack: Option<oneshot::Sender<()>>,
}

pub struct Refresher {
    catalog: Arc<FunctionCatalog>,
    topology: TopologyHandle,
    requests: mpsc::UnboundedReceiver<String>,
    loaded: mpsc::UnboundedSender<FunctionsLoaded>,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
}

impl Refresher {
    /// A refresher taking the sessions' requests from `topology`; `None`
    /// when another one took them already.
    pub fn new(
        catalog: Arc<FunctionCatalog>,
        topology: TopologyHandle,
        loaded: mpsc::UnboundedSender<FunctionsLoaded>,
        interval: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Option<Refresher> {
        Some(Refresher {
            requests: topology.take_refresh_requests()?,
            catalog,
            topology,
            loaded,
            interval: interval.max(MIN_REFRESH_INTERVAL),
            shutdown,
        })
    }

    /// Loads `database` once and waits (at most `limit`) until what it
    /// found is published, so the first sessions find it there.
    pub async fn preload(&self, database: &str, limit: Duration) {
        let (ack, published) = oneshot::channel();
        let load = async {
            self.load(database, Some(ack)).await;
            let _ = published.await;
        };
        if tokio::time::timeout(limit, load).await.is_err() {
            warn!(
                database,
                "the first load of volatile functions took too long"
            );
        }
    }

    /// Loads what is asked and, on the interval, every database seen so
    /// far, until shutdown.
    pub async fn run(mut self) {
        let mut shutdown = self.shutdown.clone();
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        tokio::pin!(stop);
        let start = tokio::time::Instant::now() + self.interval;
        let mut tick = tokio::time::interval_at(start, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let databases = tokio::select! {
                _ = tick.tick() => self.catalog.databases(),
                asked = self.requests.recv() => match asked {
                    Some(first) => self.asked(first),
                    None => return,
                },
                _ = &mut stop => return,
            };
            for database in databases {
                tokio::select! {
                    _ = self.load(&database, None) => {}
                    _ = &mut stop => return,
                }
            }
        }
    }

    /// `first` and every other database asked for meanwhile, once each.
    fn asked(&mut self, first: String) -> Vec<String> {
        let mut wanted = BTreeSet::from([first]);
        while let Ok(database) = self.requests.try_recv() {
            wanted.insert(database);
        }
        wanted.into_iter().collect()
    }

    /// One load, numbered as it starts, handed to the driver when it found
    /// something (a failed load publishes nothing: sessions waiting for a
    /// newer generation keep waiting, and the next load tries again).
    async fn load(&self, database: &str, ack: Option<oneshot::Sender<()>>) {
        let generation = self.topology.start_functions_load();
        let published = match self.catalog.reload_outcome(database).await {
            Loaded::Fresh(set) => Some(PublishedFunctions { generation, set }),
            Loaded::Forgotten => None,
            Loaded::Kept(_) => return,
        };
        let _ = self.loaded.send(FunctionsLoaded {
            database: database.to_owned(),
            published,
            ack,
        });
    }
}

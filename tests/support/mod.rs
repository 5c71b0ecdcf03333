//! Support shared by the integration tests (`tests/it`) and the failover tests
//! (`tests/failover.rs`): the clusters the integration tests share (started on
//! first use, stopped by the test kit's exit handler), the in-process proxy
//! harness, which node served what, and replicas made to lag. Clusters, fault
//! injection and raw-wire helpers come from `palisade-testkit`; the proxy's
//! config for a local cluster is the demo's own (`src/demo/local.rs`). Not
//! every binary uses every helper.
#![allow(dead_code)]

#[path = "../../src/demo/local.rs"]
pub mod demo;
pub mod harness;
pub mod nodes;
pub mod replication;

use std::sync::{Arc, OnceLock};

use palisade_testkit::{ClusterOptions, LocalCluster};

static SHARED_CLUSTER: OnceLock<LocalCluster> = OnceLock::new();
static LAGGING_CLUSTER: OnceLock<LocalCluster> = OnceLock::new();

/// A primary with two streaming replicas, shared by every test of the binary; its
/// pg_hba.conf also admits the roles of [`harness::SERVER_AUTH_HBA`]. Tests must leave it as
/// they found it: they create their own tables, and stop, kill, pause or cut none of its
/// nodes.
///
/// Panics, failing the test, when PostgreSQL is missing or does not start: a missing
/// server is never a reason to skip.
pub fn shared_cluster() -> &'static LocalCluster {
    SHARED_CLUSTER.get_or_init(|| start_cluster("shared"))
}

/// A second cluster like the shared one, for the tests that make its replicas lag or lose
/// their primary (paused replay, cut replication) or that need it quiet: they take turns,
/// and leave every replica replaying and streaming again.
pub fn lagging_cluster() -> &'static LocalCluster {
    LAGGING_CLUSTER.get_or_init(|| start_cluster("lagging"))
}

/// A cluster of its own for a test that kills, stops or promotes its nodes:
/// a primary and two replicas whose WAL receivers notice a silent primary
/// within two seconds (the default is a minute).
pub fn failover_cluster() -> Arc<LocalCluster> {
    let options = ClusterOptions {
        extra_conf: vec![
            "wal_receiver_timeout = '2s'".into(),
            "wal_sender_timeout = '2s'".into(),
            "wal_retrieve_retry_interval = '200ms'".into(),
        ],
        ..ClusterOptions::default()
    };
    Arc::new(LocalCluster::start(options).unwrap_or_else(|e| panic!("cannot start a cluster: {e}")))
}

/// The clusters above that have been started.
pub fn started_clusters() -> impl Iterator<Item = &'static LocalCluster> {
    [&SHARED_CLUSTER, &LAGGING_CLUSTER]
        .into_iter()
        .filter_map(OnceLock::get)
}

fn start_cluster(what: &str) -> LocalCluster {
    let options = ClusterOptions {
        extra_hba: harness::SERVER_AUTH_HBA.map(String::from).to_vec(),
        ..ClusterOptions::default()
    };
    LocalCluster::start(options)
        .unwrap_or_else(|e| panic!("cannot start the {what} PostgreSQL cluster: {e}"))
}

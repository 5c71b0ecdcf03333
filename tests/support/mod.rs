//! Support shared by the integration tests: one real PostgreSQL cluster per test binary
//! (started on first use, stopped by the cluster harness's exit handler), the in-process
//! proxy harness, and a TCP relay that injects network faults. Not every test binary uses
//! every helper.
#![allow(dead_code)]

pub mod harness;
pub mod nodes;
pub mod relay;
pub mod replication;
pub mod wire;

use std::sync::OnceLock;

use palisade::cluster::{ClusterOptions, LocalCluster};

static SHARED_CLUSTER: OnceLock<LocalCluster> = OnceLock::new();

/// A primary with two streaming replicas, shared by every test of this binary; its
/// pg_hba.conf also admits the roles of [`harness::SERVER_AUTH_HBA`]. Tests must leave it as
/// they found it: they create their own tables, and stop or kill none of its nodes.
///
/// Panics, failing the test, when PostgreSQL is missing or does not start: a missing
/// server is never a reason to skip.
pub fn shared_cluster() -> &'static LocalCluster {
    SHARED_CLUSTER.get_or_init(|| {
        let options = ClusterOptions {
            extra_hba: harness::SERVER_AUTH_HBA.map(String::from).to_vec(),
            ..ClusterOptions::default()
        };
        LocalCluster::start(options)
            .unwrap_or_else(|e| panic!("cannot start the shared PostgreSQL cluster: {e}"))
    })
}

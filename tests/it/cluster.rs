//! The shared cluster as the integration tests see it: every node serves,
//! the harness's pg_hba lines are in place, and the fault relay works in
//! front of it from sync code. (The test kit's own tests, in
//! `testkit/tests`, start, crash and stop clusters of their own.)

use std::net::SocketAddr;

use crate::support;
use palisade_testkit::FaultyRelay;

#[test]
fn shared_cluster_serves_every_node() {
    let cluster = support::shared_cluster();
    assert!(std::ptr::eq(cluster, support::shared_cluster()));
    for i in 0..cluster.nodes().len() {
        assert_eq!(cluster.psql(i, "SELECT 1").unwrap(), "1");
    }
}

#[test]
fn relay_works_from_sync_code_in_front_of_postgres() {
    let cluster = support::shared_cluster();
    let primary = SocketAddr::from(([127, 0, 0, 1], cluster.primary().port));
    let relay = FaultyRelay::start(primary);
    let status = std::process::Command::new(cluster.bin_dir().join("pg_isready"))
        .args([
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &relay.addr().port().to_string(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn shared_cluster_applies_the_harness_hba_lines() {
    let cluster = support::shared_cluster();
    let hba = cluster
        .psql(0, "SELECT count(*) FROM pg_hba_file_rules WHERE 'palisade_trust' = ANY(user_name) AND auth_method = 'trust'")
        .unwrap();
    assert_eq!(hba, "1");
}

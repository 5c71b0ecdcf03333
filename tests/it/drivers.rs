//! The driver conformance suite (`tests/drivers`): psycopg 3, psycopg2,
//! asyncpg, SQLAlchemy 2 and node-postgres, installed from the suite's own
//! pinned files, run through Palisade in front of the shared cluster with
//! the default routing (split on, read-after-commit reads).

use std::path::Path;
use std::process::Command;

use crate::support::harness::start_proxy;
use crate::support::shared_cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_node_drivers_pass_their_conformance_suite() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |_| {}).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers/run.sh");
    let mut command = Command::new("bash");
    command
        .arg(&script)
        .env("PALISADE_HOST", "127.0.0.1")
        .env("PALISADE_PORT", proxy.local_addr().port().to_string())
        .env("PALISADE_USER", cluster.superuser())
        .env("PALISADE_PASSWORD", cluster.password())
        .env("PALISADE_DB", "postgres")
        .env("PALISADE_PRIMARY_PORT", cluster.primary().port.to_string());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The summary lines of both runners, for the test log.
    for line in stdout
        .lines()
        .filter(|l| l.contains("passed") || l.contains("FAILED"))
    {
        eprintln!("drivers: {line}");
    }
    assert!(
        output.status.success(),
        "the driver suite failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

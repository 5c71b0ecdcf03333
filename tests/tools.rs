//! The real PostgreSQL clients, psql and pgbench, through Palisade.

mod support;

use std::process::{Command, Output};

use support::harness::start_proxy;
use support::shared_cluster;

/// Runs a client program from the cluster's bin dir against the proxy.
fn run(program: &str, proxy_port: u16, args: &[&str]) -> Output {
    let cluster = shared_cluster();
    let output = Command::new(cluster.bin_dir().join(program))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &proxy_port.to_string(),
            "-U",
            cluster.superuser(),
        ])
        .args(args)
        .env("PGPASSWORD", cluster.password())
        .env("PGSSLMODE", "prefer")
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_describe_and_copy_work_through_the_proxy() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |_| {}).await;
    let port = proxy.local_addr().port();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("in.csv");
    std::fs::write(&csv, "1,one\n2,two\n3,three\n").unwrap();
    let out_csv = dir.path().join("out.csv");
    let script = format!(
        "DROP TABLE IF EXISTS psql_items;\n\
         CREATE TABLE psql_items(id int PRIMARY KEY, name text);\n\
         \\copy psql_items FROM '{}' WITH (FORMAT csv)\n\
         \\copy (SELECT * FROM psql_items ORDER BY id) TO '{}' WITH (FORMAT csv)\n\
         \\d psql_items\n\
         \\dt psql_*\n",
        csv.display(),
        out_csv.display()
    );
    let script_file = dir.path().join("script.sql");
    std::fs::write(&script_file, script).unwrap();
    let script_path = script_file.display().to_string();
    let output = tokio::task::spawn_blocking(move || {
        run(
            "psql",
            port,
            &[
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                "postgres",
                "-f",
                &script_path,
            ],
        )
    })
    .await
    .unwrap();
    let text = stdout(&output);
    assert!(text.contains("COPY 3"), "{text}");
    assert!(
        text.contains("Table \"public.psql_items\""),
        "\\d output: {text}"
    );
    assert!(
        text.contains("psql_items_pkey"),
        "\\d shows the index: {text}"
    );
    assert_eq!(
        std::fs::read_to_string(&out_csv).unwrap(),
        "1,one\n2,two\n3,three\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_in_every_query_mode_without_errors() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |_| {}).await;
    let port = proxy.local_addr().port();
    cluster.psql(0, "DROP DATABASE IF EXISTS bench").unwrap();
    cluster.psql(0, "CREATE DATABASE bench").unwrap();
    tokio::task::spawn_blocking(move || {
        run("pgbench", port, &["-i", "-q", "-s", "1", "bench"]);
        for mode in ["simple", "extended", "prepared"] {
            let output = run(
                "pgbench",
                port,
                &["-M", mode, "-T", "5", "-c", "4", "-j", "2", "bench"],
            );
            let text = stdout(&output);
            assert!(text.contains(&format!("query mode: {mode}")), "{text}");
            let failed = text
                .lines()
                .find(|l| l.starts_with("number of failed transactions"))
                .unwrap_or("number of failed transactions: 0 (0.000%)");
            assert!(failed.contains(": 0 "), "{mode}: {failed}");
            let processed: u64 = text
                .lines()
                .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
                .and_then(|n| n.split('/').next()?.trim().parse().ok())
                .unwrap_or_else(|| panic!("no transaction count in {text}"));
            assert!(processed > 0, "{mode}: {text}");
        }
    })
    .await
    .unwrap();
}

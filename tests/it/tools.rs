//! The real PostgreSQL clients, psql, pg_dump, pg_restore and pgbench,
//! through Palisade.

use std::process::{Command, Output};

use crate::support::harness::{connect_with, node_url, start_proxy};
use crate::support::nodes::{direct, unique, wait_replayed};
use crate::support::shared_cluster;

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
async fn psql_large_objects_import_and_export_through_the_proxy() {
    // libpq's large-object API speaks FunctionCall ('F') messages.
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |_| {}).await;
    let port = proxy.local_addr().port();
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("in.bin");
    let payload: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    std::fs::write(&original, &payload).unwrap();
    let copy = dir.path().join("out.bin");
    let (from, to) = (original.display().to_string(), copy.display().to_string());
    let output = tokio::task::spawn_blocking(move || {
        let imported = run(
            "psql",
            port,
            &[
                "-X",
                "-d",
                "postgres",
                "-c",
                &format!("\\lo_import '{from}'"),
            ],
        );
        let oid = stdout(&imported)
            .trim()
            .strip_prefix("lo_import ")
            .unwrap_or_else(|| panic!("lo_import said: {}", stdout(&imported)))
            .to_owned();
        run(
            "psql",
            port,
            &[
                "-X",
                "-d",
                "postgres",
                "-c",
                &format!("\\lo_export {oid} '{to}'"),
            ],
        );
        run(
            "psql",
            port,
            &["-X", "-d", "postgres", "-c", &format!("\\lo_unlink {oid}")],
        )
    })
    .await
    .unwrap();
    assert!(stdout(&output).contains("lo_unlink"), "{}", stdout(&output));
    assert!(
        std::fs::read(&copy).unwrap() == payload,
        "the exported object is the imported file"
    );
}

/// What a database holds, asked of the primary directly: a row count and
/// the md5 of every large object, in oid order.
async fn dump_contents(db: &str) -> (i64, String) {
    let cluster = shared_cluster();
    let url = node_url(cluster, cluster.primary(), db);
    let (client, _) = connect_with(&url).await.unwrap();
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM dump_items), \
             (SELECT string_agg(md5(lo_get(oid)), ',' ORDER BY oid) FROM pg_largeobject_metadata)",
            &[],
        )
        .await
        .unwrap();
    (
        row.get(0),
        row.get::<_, Option<String>>(1).unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_dump_and_restore_of_large_objects_round_trip_through_the_proxy() {
    // 20 large objects of 1 MB: pg_dump reads them with lo_open/loread
    // (FunctionCall), pg_restore writes them with lo_create/lo_write, and a
    // plain dump replays them through psql as SELECT lo_open/lowrite.
    let cluster = shared_cluster();
    let primary = direct(cluster.primary()).await;
    let source = unique("dump_src");
    let (restored, replayed) = (format!("{source}_restored"), format!("{source}_replayed"));
    for db in [&source, &restored, &replayed] {
        for sql in [
            format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            format!("CREATE DATABASE {db}"),
        ] {
            primary.batch_execute(&sql).await.unwrap();
        }
    }
    let url = node_url(cluster, cluster.primary(), &source);
    let (src, _) = connect_with(&url).await.unwrap();
    src.batch_execute(
        "CREATE TABLE dump_items(id int PRIMARY KEY, note text); \
         INSERT INTO dump_items SELECT i, md5(i::text) FROM generate_series(1, 1000) i; \
         SELECT lo_from_bytea(0, convert_to(repeat(md5(i::text), 32768), 'UTF8')) \
         FROM generate_series(1, 20) i",
    )
    .await
    .unwrap();
    let expected = dump_contents(&source).await;
    assert_eq!(expected.1.split(',').count(), 20);
    let proxy = start_proxy(cluster, |_| {}).await;
    let port = proxy.local_addr().port();
    let dir = tempfile::tempdir().unwrap();
    let custom = dir.path().join("dump.custom").display().to_string();
    let plain = dir.path().join("dump.sql").display().to_string();
    let dbs = (source.clone(), restored.clone(), replayed.clone());
    tokio::task::spawn_blocking(move || {
        let (source, restored, replayed) = dbs;
        run("pg_dump", port, &["-Fc", "-d", &source, "-f", &custom]);
        run("pg_restore", port, &["-d", &restored, &custom]);
        run("pg_dump", port, &["-Fp", "-d", &source, "-f", &plain]);
        let script = [
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-d",
            &replayed,
            "-f",
            &plain,
        ];
        run("psql", port, &script);
    })
    .await
    .unwrap();
    assert_eq!(dump_contents(&restored).await, expected, "pg_restore");
    assert_eq!(
        dump_contents(&replayed).await,
        expected,
        "psql -f of a plain dump"
    );
    drop(src);
    drop(proxy);
    for db in [&source, &restored, &replayed] {
        primary
            .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
            .await
            .unwrap();
    }
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
            processed_without_failures(mode, &stdout(&output));
        }
    })
    .await
    .unwrap();
}

/// Checks pgbench's report for its query mode and zero failed transactions;
/// returns how many transactions it processed (more than zero).
fn processed_without_failures(mode: &str, text: &str) -> i64 {
    assert!(text.contains(&format!("query mode: {mode}")), "{text}");
    let failed = text
        .lines()
        .find(|l| l.starts_with("number of failed transactions"))
        .unwrap_or("number of failed transactions: 0 (0.000%)");
    assert!(failed.contains(": 0 "), "{mode}: {failed}");
    let processed: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in {text}"));
    assert!(processed > 0, "{mode}: {text}");
    processed
}

/// Committed transactions in database `db` on every node (primary first),
/// asked of each node directly. Each node counts its own sessions' commits.
fn xact_commits(db: &str) -> Vec<i64> {
    let cluster = shared_cluster();
    let sql = format!("SELECT xact_commit FROM pg_stat_database WHERE datname = '{db}'");
    (0..cluster.nodes().len())
        .map(|i| {
            let out = cluster.psql(i, &sql).unwrap();
            out.parse()
                .unwrap_or_else(|_| panic!("node {i}: xact_commit is {out:?}"))
        })
        .collect()
}

/// The counts once every session in `db` has ended. A backend publishes its
/// statistics at most once a second while it lives, and up to ten seconds
/// late under contention, but always as it exits: so end the sessions (the
/// proxy using them is gone by now) and read the counts once they are still.
fn quiesced_xact_commits(db: &str) -> Vec<i64> {
    let cluster = shared_cluster();
    let sessions = format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}'");
    let terminate = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{db}'"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for i in 0..cluster.nodes().len() {
        cluster.psql(i, &terminate).unwrap();
        while cluster.psql(i, &sessions).unwrap() != "0" {
            assert!(
                std::time::Instant::now() < deadline,
                "sessions in {db} on node {i} did not end"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let mut last = xact_commits(db);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now = xact_commits(db);
        if now == last {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "xact_commit in {db} keeps changing"
        );
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_select_only_spreads_over_both_replicas_in_every_query_mode() {
    let cluster = shared_cluster();
    let db = "bench_select";
    cluster
        .psql(0, &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .unwrap();
    cluster.psql(0, &format!("CREATE DATABASE {db}")).unwrap();
    let proxy = start_proxy(cluster, |_| {}).await;
    let port = proxy.local_addr().port();
    tokio::task::spawn_blocking(move || run("pgbench", port, &["-i", "-q", "-s", "1", db]))
        .await
        .unwrap();
    wait_replayed(cluster).await;
    drop(proxy);
    for mode in ["simple", "extended", "prepared"] {
        // A proxy per mode, so that its server connections can be ended
        // (flushing their statistics) without pulling them from under it.
        let before = tokio::task::spawn_blocking(move || quiesced_xact_commits(db))
            .await
            .unwrap();
        let proxy = start_proxy(cluster, |_| {}).await;
        let port = proxy.local_addr().port();
        let output = tokio::task::spawn_blocking(move || {
            run(
                "pgbench",
                port,
                &["-S", "-M", mode, "-T", "3", "-c", "4", "-j", "2", db],
            )
        })
        .await
        .unwrap();
        let processed = processed_without_failures(mode, &stdout(&output));
        drop(proxy);
        let after = tokio::task::spawn_blocking(move || quiesced_xact_commits(db))
            .await
            .unwrap();
        let grown: Vec<i64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        eprintln!(
            "pgbench -S -M {mode}: {processed} transactions; commits per node: \
             primary {} / replica1 {} / replica2 {}",
            grown[0], grown[1], grown[2]
        );
        // Round-robin gives each replica about half; a fifth is "substantial".
        for (i, n) in grown.iter().enumerate().skip(1) {
            assert!(
                *n >= processed / 5,
                "{mode}: replica{i} committed {n} of {processed} transactions ({grown:?})"
            );
        }
    }
    cluster
        .psql(0, &format!("DROP DATABASE {db} WITH (FORCE)"))
        .unwrap();
}

/// The binary's log written to a file (not a terminal) is plain text: no
/// colour escape codes for a log shipper to choke on.
#[tokio::test]
async fn the_log_written_to_a_file_has_no_colour_codes() {
    let cluster = shared_cluster();
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::harness::proxy_config(cluster);
    config.proxy.listen = "127.0.0.1:0".into();
    let file = dir.path().join("palisade.toml");
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    let log = dir.path().join("palisade.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("--config")
        .arg(&file)
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    crate::support::nodes::wait_until(
        "the binary to say it listens",
        std::time::Duration::from_secs(60),
        || async {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("palisade is listening"))
        },
    )
    .await;
    let _ = child.kill().await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in the log file:\n{text}"
    );
    assert!(text.contains(" INFO "), "levels are still written:\n{text}");
}

//! Lag-aware reads against a real primary and two replicas: each
//! consistency level keeps its promise while a replica lags (its replay
//! paused), read-your-writes holds over a thousand write-then-read rounds,
//! a token carries causality across connections, `on_no_replica` and
//! `partition_mode` do what they say, and the proxy answers the
//! `palisade.*` settings itself. `read-after-commit` has its own module,
//! [`crate::commits`].
//!
//! The tests pause and cut replicas, so they run on the lagging cluster,
//! not the shared one, one at a time (`SERIAL`), and leave every replica
//! replaying and streaming again.

// The proxy's topology lists the lagging cluster's primary first, then
// replica 1 and replica 2: `t.nodes[n]` is replica n.

use std::time::Duration;

use crate::support::harness::{
    app_url, client, connect_with, console_url, sqlstate, start_proxy, wait_topology,
};
use crate::support::lagging_cluster;
use crate::support::nodes::{
    direct, fresh_table, reads, served_by, tally, unique, wait_replayed, Node,
};
use crate::support::replication::{
    cut_replication, pause_replay, restore_replication, resume_replay,
};
use palisade::config::{Consistency, OnNoReplica, PartitionMode};
use palisade::proxy::Proxy;
use palisade::topology::Lsn;
use tokio::sync::Mutex;
use tokio_postgres::{AsyncMessage, Client};

pub(crate) static SERIAL: Mutex<()> = Mutex::const_new(());

pub(crate) async fn proxy(tweak: impl FnOnce(&mut palisade::config::Config)) -> Proxy {
    start_proxy(lagging_cluster(), |c| {
        c.monitor.probe_interval_ms = 100;
        c.monitor.health_threshold = 1;
        tweak(c);
    })
    .await
}

#[tokio::test]
async fn each_level_keeps_its_promise_while_a_replica_lags() {
    let _serial = SERIAL.lock().await;
    let cluster = lagging_cluster();
    let proxy = proxy(|c| {
        c.consistency.level = Consistency::Bounded;
        c.consistency.max_lag_ms = 300;
    })
    .await;
    let app = "consistency-levels";
    let c = client(&proxy, lagging_cluster(), app).await;
    let table = unique("lagging");
    fresh_table(&c, &table, "i int").await;
    wait_replayed(lagging_cluster()).await;

    let lagging = &cluster.replicas()[1];
    lag_replica_2_past_300ms(&proxy, &c, &table).await;

    let bounded = reads(&c, 20).await;
    eprintln!("bounded while replica 2 lags: {:?}", tally(&bounded));
    assert!(
        bounded.iter().all(|n| *n == Node::Replica(1)),
        "bounded reads avoid the lagging replica: {:?}",
        tally(&bounded)
    );

    c.batch_execute("SET palisade.consistency = 'eventual'")
        .await
        .unwrap();
    let eventual = reads(&c, 20).await;
    eprintln!("eventual while replica 2 lags: {:?}", tally(&eventual));
    assert!(
        eventual.contains(&Node::Replica(2)),
        "eventual reads may use the lagging replica: {:?}",
        tally(&eventual)
    );

    c.batch_execute("SET palisade.consistency = strong")
        .await
        .unwrap();
    let strong = reads(&c, 10).await;
    assert!(
        strong.iter().all(|n| *n == Node::Primary),
        "strong reads only on the primary: {:?}",
        tally(&strong)
    );
    // A hint picks the level of one statement.
    let hinted: bool = c
        .query_one("/* palisade: eventual */ SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        hinted,
        "an eventual hint reads from a replica in a strong session"
    );

    resume_replay(lagging).await;
    wait_topology(&proxy, "replica 2 to catch up", |t| {
        t.nodes[2].replication.lag_ms == Some(0)
    })
    .await;
    c.batch_execute("RESET palisade.consistency").await.unwrap();
    let back = reads(&c, 20).await;
    assert!(
        back.contains(&Node::Replica(2)) && back.contains(&Node::Replica(1)),
        "bounded reads return to the replica once it caught up: {:?}",
        tally(&back)
    );
}

/// Pauses replica 2's replay and writes to `table` through `c` until the
/// proxy sees replica 2 more than 300 ms behind and replica 1 within that.
async fn lag_replica_2_past_300ms(proxy: &Proxy, c: &Client, table: &str) {
    pause_replay(&lagging_cluster().replicas()[1]).await;
    c.batch_execute(&format!("INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();
    wait_topology(
        proxy,
        "replica 2 to lag by more than 300 ms, and replica 1 not",
        |t| {
            t.nodes[2].replication.lag_ms.is_some_and(|ms| ms > 300)
                && t.nodes[1].replication.lag_ms.is_some_and(|ms| ms <= 300)
        },
    )
    .await;
}

/// Runs `rounds` of INSERT then an immediate SELECT of that row on one
/// session; returns (stale reads, reads served by a replica).
async fn write_then_read(c: &Client, table: &str, rounds: i32) -> (usize, usize) {
    let mut stale = 0;
    let mut on_replica = 0;
    for i in 0..rounds {
        c.batch_execute(&format!("INSERT INTO {table} VALUES ({i})"))
            .await
            .unwrap();
        let row = c
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM {table} WHERE i = {i}), pg_is_in_recovery()"
                ),
                &[],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) == 0 {
            stale += 1;
        }
        if row.get::<_, bool>(1) {
            on_replica += 1;
        }
    }
    (stale, on_replica)
}

#[tokio::test]
async fn causal_reads_see_the_sessions_own_writes() {
    let _serial = SERIAL.lock().await;
    let proxy = proxy(|c| c.consistency.level = Consistency::Causal).await;
    let c = client(&proxy, lagging_cluster(), "consistency-causal").await;
    let table = unique("ryw");
    fresh_table(&c, &table, "i int").await;

    let (stale, on_replica) = write_then_read(&c, &table, 1000).await;
    eprintln!(
        "causal: 1000 write-then-read rounds, {stale} stale, {on_replica} reads on replicas, {} on the primary",
        1000 - on_replica
    );
    assert_eq!(stale, 0, "read-your-writes broken {stale} times");
    assert!(on_replica > 0, "causal reads never used a replica");

    c.batch_execute(&format!(
        "TRUNCATE {table}; SET palisade.consistency = 'eventual'"
    ))
    .await
    .expect_err("a palisade.* setting must be sent alone");
    c.batch_execute(&format!("TRUNCATE {table}")).await.unwrap();
    c.batch_execute("SET palisade.consistency = 'eventual'")
        .await
        .unwrap();
    let (stale, on_replica) = write_then_read(&c, &table, 1000).await;
    eprintln!(
        "eventual: 1000 write-then-read rounds, {stale} stale ({:.1}%), {on_replica} reads on replicas",
        f64::from(u32::try_from(stale).unwrap_or(u32::MAX)) / 10.0
    );
    assert_eq!(on_replica, 1000, "eventual reads all go to replicas");
}

#[tokio::test]
async fn a_token_from_one_connection_makes_anothers_reads_wait() {
    let _serial = SERIAL.lock().await;
    let cluster = lagging_cluster();
    let proxy = proxy(|c| {
        c.consistency.level = Consistency::Eventual;
        c.consistency.causal_wait_ms = 200;
    })
    .await;
    let writer = client(&proxy, lagging_cluster(), "consistency-token-a").await;
    let reader = client(&proxy, lagging_cluster(), "consistency-token-b").await;
    let table = unique("token");
    fresh_table(&writer, &table, "i int").await;
    wait_replayed(lagging_cluster()).await;

    for replica in cluster.replicas() {
        pause_replay(replica).await;
    }
    writer
        .batch_execute(&format!("INSERT INTO {table} VALUES (42)"))
        .await
        .unwrap();
    let token: String = writer
        .simple_query("SHOW palisade.last_write_lsn")
        .await
        .unwrap()
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a token");
    assert_ne!(token, "0/0", "the writer has written");
    let count = format!("SELECT count(*), pg_is_in_recovery() FROM {table}");

    // Without the token an eventual read sees a paused replica's past.
    let row = reader.query_one(&count, &[]).await.unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, bool>(1)),
        (0, true),
        "the replicas are paused before the write"
    );
    reader
        .batch_execute(&format!("SET palisade.min_lsn = '{token}'"))
        .await
        .unwrap();
    let row = reader.query_one(&count, &[]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 1, "the token's write is seen");
    assert!(
        !row.get::<_, bool>(1),
        "no replica has it: the primary served it"
    );

    for replica in cluster.replicas() {
        resume_replay(replica).await;
    }
    wait_replayed(lagging_cluster()).await;
    // Within `causal_wait_ms` (200 ms here) a read may still fall back to
    // the primary while the proxy learns where the replicas are: the
    // promise is that they serve the token's reads again, not how soon.
    assert!(
        reaches_replica(&reader, 50).await,
        "replicas past the token never served it again"
    );
    let row = reader.query_one(&count, &[]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
}

#[tokio::test]
async fn when_every_replica_lags_on_no_replica_decides() {
    let _serial = SERIAL.lock().await;
    let cluster = lagging_cluster();
    let table = unique("all_lag");
    let primary_mode = proxy(|c| {
        c.consistency.level = Consistency::Bounded;
        c.consistency.max_lag_ms = 200;
    })
    .await;
    let error_mode = proxy(|c| {
        c.consistency.level = Consistency::Bounded;
        c.consistency.max_lag_ms = 200;
        c.consistency.on_no_replica = OnNoReplica::Error;
    })
    .await;
    let a = client(
        &primary_mode,
        lagging_cluster(),
        "consistency-no-replica-primary",
    )
    .await;
    let b = client(
        &error_mode,
        lagging_cluster(),
        "consistency-no-replica-error",
    )
    .await;
    fresh_table(&a, &table, "i int").await;
    wait_replayed(lagging_cluster()).await;
    for proxy in [&primary_mode, &error_mode] {
        wait_topology(proxy, "both replicas within the bound", |t| {
            (1..=2).all(|n| t.nodes[n].replication.lag_ms.is_some_and(|ms| ms <= 200))
        })
        .await;
    }
    assert!(
        served_by(&b).await.is_replica(),
        "fresh replicas serve reads"
    );

    for replica in cluster.replicas() {
        pause_replay(replica).await;
    }
    a.batch_execute(&format!("INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();
    for proxy in [&primary_mode, &error_mode] {
        wait_topology(proxy, "both replicas to lag", |t| {
            (1..=2).all(|n| t.nodes[n].replication.lag_ms.is_some_and(|ms| ms > 200))
        })
        .await;
    }
    let seen = reads(&a, 5).await;
    assert!(
        seen.iter().all(|n| *n == Node::Primary),
        "on_no_replica = primary: {:?}",
        tally(&seen)
    );
    let err = b
        .query_one("SELECT 1", &[])
        .await
        .expect_err("on_no_replica = error refuses the read");
    assert_eq!(sqlstate(&err), "55000", "{err}");
    let message = err.as_db_error().map(|e| e.message()).unwrap_or_default();
    assert!(message.contains("fresh enough"), "{err:?}");
    // Writes are not affected, and the session goes on.
    b.batch_execute(&format!("INSERT INTO {table} VALUES (2)"))
        .await
        .unwrap();
    b.batch_execute("SET palisade.consistency = 'strong'")
        .await
        .unwrap();
    assert_eq!(served_by(&b).await, Node::Primary);

    for replica in cluster.replicas() {
        resume_replay(replica).await;
    }
}

/// Reads through `c` until one lands on a replica or `tries` run out.
async fn reaches_replica(c: &Client, tries: usize) -> bool {
    for _ in 0..tries {
        if served_by(c).await.is_replica() {
            return true;
        }
    }
    false
}

/// Reads through `c` until one lands on `node` or `tries` run out.
pub(crate) async fn reaches(c: &Client, node: Node, tries: usize) -> bool {
    for _ in 0..tries {
        if served_by(c).await == node {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn a_replica_cut_off_from_its_primary_follows_partition_mode() {
    let _serial = SERIAL.lock().await;
    let cluster = lagging_cluster();
    let consistent = proxy(|c| c.consistency.level = Consistency::Eventual).await;
    let available = proxy(|c| {
        c.consistency.level = Consistency::Eventual;
        c.consistency.partition_mode = PartitionMode::Available;
    })
    .await;
    let a = client(&consistent, lagging_cluster(), "consistency-partition-cp").await;
    let (b, mut notices) = connect_with(&app_url(&available, cluster, "consistency-partition-ap"))
        .await
        .unwrap();

    let cut = &cluster.replicas()[0];
    let saved = cut_replication(cut).await;
    for proxy in [&consistent, &available] {
        wait_topology(proxy, "replica 1 to stop streaming", |t| {
            !t.nodes[1].replication.streaming
        })
        .await;
    }
    let seen = reads(&a, 20).await;
    assert!(
        seen.iter().all(|n| *n == Node::Replica(2)),
        "partition_mode = consistent stops reading from a cut-off replica: {:?}",
        tally(&seen)
    );
    while notices.try_recv().is_ok() {}
    assert!(
        reaches(&b, Node::Replica(1), 20).await,
        "partition_mode = available keeps reading from it"
    );
    let mut warned = false;
    while let Ok(m) = notices.try_recv() {
        if let AsyncMessage::Notice(n) = m {
            warned |= n.message().contains("not streaming");
        }
    }
    assert!(warned, "a read from a cut-off replica comes with a NOTICE");

    restore_replication(cut, saved).await;
    wait_topology(&consistent, "replica 1 to stream again", |t| {
        t.nodes[1].replication.streaming
    })
    .await;
    assert!(
        reaches(&a, Node::Replica(1), 20).await,
        "it serves reads again once it streams"
    );
}

#[tokio::test]
async fn palisade_settings_are_answered_by_the_proxy() {
    let _serial = SERIAL.lock().await;
    let proxy = proxy(|_| {}).await;
    let c = client(&proxy, lagging_cluster(), "consistency-settings").await;
    assert_eq!(
        show(&c, "palisade.consistency").await,
        "read-after-commit",
        "the default"
    );
    assert_eq!(
        show(&c, "palisade.last_write_lsn").await,
        "0/0",
        "nothing written"
    );
    c.batch_execute("SET palisade.consistency TO 'Bounded'; ")
        .await
        .unwrap();
    assert_eq!(show(&c, "palisade.consistency").await, "bounded");
    c.batch_execute("SET palisade.max_staleness = '1.5s'")
        .await
        .unwrap();
    assert_eq!(show(&c, "palisade.max_staleness").await, "1500ms");
    // PostgreSQL never heard of them.
    let on_server = c
        .query_one("SELECT current_setting('palisade.consistency', true)", &[])
        .await
        .unwrap()
        .get::<_, Option<String>>(0);
    assert_eq!(on_server, None, "the SET reached PostgreSQL");

    for (sql, state) in [
        ("SET palisade.consistency = 'fresh'", "22023"),
        ("SET palisade.max_staleness = 'soon'", "22023"),
        ("SET palisade.min_lsn = 'nowhere'", "22023"),
        ("SET palisade.last_write_lsn = '0/1'", "55P02"),
    ] {
        let err = c.batch_execute(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&err), state, "{sql}: {err}");
    }
    let err = c
        .execute("SET palisade.consistency = 'strong'", &[])
        .await
        .expect_err("the extended protocol cannot carry them");
    assert_eq!(sqlstate(&err), "0A000", "{err}");

    // Inside a transaction they answer with the transaction's status; in a
    // failed one they are refused like any command.
    c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    c.batch_execute("SET palisade.consistency = 'eventual'")
        .await
        .unwrap();
    c.batch_execute("SELECT 1/0").await.unwrap_err();
    let err = c
        .batch_execute("SHOW palisade.consistency")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "25P02");
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(show(&c, "palisade.consistency").await, "eventual");
    c.batch_execute("RESET palisade.consistency").await.unwrap();
    assert_eq!(show(&c, "palisade.consistency").await, "read-after-commit");
    c.batch_execute("SET palisade.consistency = 'read_after_commit'")
        .await
        .unwrap();
    assert_eq!(show(&c, "palisade.consistency").await, "read-after-commit");
}

/// The value of setting `name` as `c`'s session shows it.
async fn show(c: &Client, name: &str) -> String {
    c.simple_query(&format!("SHOW {name}"))
        .await
        .unwrap()
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap()
}

#[tokio::test]
async fn after_a_write_the_token_is_past_the_primarys_wal() {
    let _serial = SERIAL.lock().await;
    let proxy = proxy(|_| {}).await;
    let c = client(&proxy, lagging_cluster(), "consistency-token").await;
    let table = unique("settings");
    fresh_table(&c, &table, "i int").await;
    let primary = direct(lagging_cluster().primary()).await;
    let before: String = primary
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    c.batch_execute(&format!("INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();
    let token = show(&c, "palisade.last_write_lsn").await;
    let later: bool = primary
        .query_one(
            "SELECT $1::text::pg_lsn > $2::text::pg_lsn",
            &[&token, &before],
        )
        .await
        .unwrap()
        .get(0);
    assert!(later, "token {token} is not past {before}");
}

#[tokio::test]
async fn a_rolled_back_transaction_leaves_nothing_to_wait_for() {
    let _serial = SERIAL.lock().await;
    let cluster = lagging_cluster();
    let proxy = proxy(|c| c.consistency.level = Consistency::Causal).await;
    let c = client(&proxy, lagging_cluster(), "consistency-rollback").await;
    let table = unique("rolled_back");
    fresh_table(&c, &table, "i int").await;
    wait_replayed(lagging_cluster()).await;
    // A read now locates the table's creation, which the replicas have.
    assert!(served_by(&c).await.is_replica());
    for replica in cluster.replicas() {
        pause_replay(replica).await;
    }
    c.batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    let after_rollback = served_by(&c).await;
    c.batch_execute(&format!("INSERT INTO {table} VALUES (2)"))
        .await
        .unwrap();
    let after_commit = served_by(&c).await;
    for replica in cluster.replicas() {
        resume_replay(replica).await;
    }
    assert!(
        after_rollback.is_replica(),
        "nothing was committed, yet the read waited and went to {after_rollback:?}"
    );
    assert_eq!(
        after_commit,
        Node::Primary,
        "a committed write the paused replicas lack"
    );
}

#[tokio::test]
async fn a_write_next_to_a_wal_page_boundary_is_found_on_the_replicas() {
    let _serial = SERIAL.lock().await;
    let cluster = lagging_cluster();
    let proxy = proxy(|c| c.consistency.level = Consistency::Causal).await;
    let c = client(&proxy, cluster, "consistency-page-boundary").await;
    let table = unique("boundary");
    fresh_table(&c, &table, "i int").await;
    // A segment switch leaves an idle primary's insert position just past
    // the new segment's page header, where no replica's replay ever stands.
    let primary = direct(cluster.primary()).await;
    primary
        .batch_execute("SELECT pg_switch_wal()")
        .await
        .unwrap();
    wait_replayed(cluster).await;
    // SET writes no WAL, yet it ran on the primary: the next causal read
    // locates it there and must find the replicas have it.
    c.batch_execute("SET work_mem = '2MB'").await.unwrap();
    let seen = reads(&c, 4).await;
    assert!(
        seen.iter().all(|n| n.is_replica()),
        "the replicas have every record before the page header: {:?}",
        tally(&seen)
    );
}

#[tokio::test]
async fn an_idle_primary_shows_no_lag() {
    let _serial = SERIAL.lock().await;
    let proxy = proxy(|_| {}).await;
    let c = client(&proxy, lagging_cluster(), "consistency-idle").await;
    let table = unique("idle");
    fresh_table(&c, &table, "i int").await;
    wait_replayed(lagging_cluster()).await;
    wait_topology(&proxy, "both replicas at zero lag", |t| {
        (1..=2).all(|n| t.nodes[n].replication.lag_ms == Some(0))
    })
    .await;
    // Nothing is written through this proxy or any other test now (SERIAL).
    // PostgreSQL itself logs a little WAL now and then (running
    // transactions, checkpoints), which replicas replay within a probe or two.
    let mut worst = (0, 0);
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < until {
        let t = proxy.topology();
        for n in 1..=2 {
            let r = t.nodes[n].replication;
            let (bytes, ms) = (r.lag_bytes.unwrap(), r.lag_ms.unwrap());
            worst = (worst.0.max(bytes), worst.1.max(ms));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "idle primary for 10 s: worst lag seen {} bytes, {} ms",
        worst.0, worst.1
    );
    assert!(
        worst.1 < 1_000,
        "lag grew while the primary was idle: {worst:?}"
    );
    let t = proxy.topology();
    assert!(
        (1..=2).all(|n| t.nodes[n].replication.lag_ms.is_some_and(|ms| ms < 1_000)),
        "after 10 s idle: {:?}",
        t.nodes
    );
}

/// The admin console's rows of a simple query, as text.
async fn console_rows(c: &Client, sql: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let messages = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for m in &messages {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            if columns.is_empty() {
                columns = r.columns().iter().map(|c| c.name().to_owned()).collect();
            }
            rows.push(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_owned())
                    .collect(),
            );
        }
    }
    (columns, rows)
}

/// Columns SHOW NODES must have.
const SHOW_NODES_COLUMNS: [&str; 10] = [
    "name",
    "address",
    "role",
    "health",
    "lsn",
    "lag_bytes",
    "lag_ms",
    "epoch",
    "connections",
    "queries_routed",
];

/// SHOW CONFIG on `console` lists the proxy's settings (`max_lag_ms` as
/// configured, the primary's port) and masks every password.
async fn assert_show_config(console: &Client, max_lag_ms: u64) {
    let (_, config) = console_rows(console, "show config").await;
    let value = |key: &str| {
        config
            .iter()
            .find(|r| r[0] == key)
            .map(|r| r[1].clone())
            .unwrap_or_else(|| panic!("no {key} in SHOW CONFIG"))
    };
    assert_eq!(value("consistency.max_lag_ms"), max_lag_ms.to_string());
    assert_eq!(
        value("nodes[0].port"),
        lagging_cluster().primary().port.to_string()
    );
    let secrets: Vec<_> = config
        .iter()
        .filter(|r| r[0].ends_with("password"))
        .collect();
    assert!(
        !secrets.is_empty() && secrets.iter().all(|r| r[1] == "********"),
        "SHOW CONFIG masks passwords: {secrets:?}"
    );
}

#[tokio::test]
async fn the_admin_console_shows_nodes_lag_and_config() {
    let _serial = SERIAL.lock().await;
    let cluster = lagging_cluster();
    let proxy = proxy(|c| c.consistency.max_lag_ms = 777).await;
    let app = client(&proxy, lagging_cluster(), "consistency-admin").await;
    reads(&app, 6).await;
    let (console, _) = connect_with(&console_url(&proxy, cluster))
        .await
        .expect("console login");

    let lagging = &cluster.replicas()[1];
    let table = unique("admin");
    fresh_table(&app, &table, "i int").await;
    wait_replayed(lagging_cluster()).await;
    pause_replay(lagging).await;
    app.batch_execute(&format!(
        "INSERT INTO {table} SELECT generate_series(1, 1000)"
    ))
    .await
    .unwrap();
    wait_topology(&proxy, "replica 2 to lag", |t| {
        t.nodes[2].replication.lag_bytes.is_some_and(|b| b > 0)
    })
    .await;
    let (columns, rows) = console_rows(&console, "SHOW NODES;").await;
    resume_replay(lagging).await;
    eprintln!("SHOW NODES: {columns:?}\n{rows:#?}");
    for wanted in SHOW_NODES_COLUMNS {
        assert!(
            columns.iter().any(|c| c == wanted),
            "no column {wanted}: {columns:?}"
        );
    }
    let col = |name: &str| columns.iter().position(|c| c == name).unwrap();
    assert_eq!(rows.len(), 3);
    let address = |n: &palisade_testkit::LocalNode| format!("127.0.0.1:{}", n.port);
    assert_eq!(rows[0][col("address")], address(cluster.primary()));
    assert_eq!(rows[0][col("role")], "primary");
    assert_eq!(rows[2][col("role")], "replica");
    assert!(rows.iter().all(|r| r[col("health")] == "up"), "{rows:?}");
    let lag_bytes: u64 = rows[2][col("lag_bytes")].parse().unwrap();
    assert!(lag_bytes > 0, "the paused replica shows its lag: {rows:?}");
    let primary_lsn: Lsn = rows[0][col("lsn")].parse().unwrap();
    let replica_lsn: Lsn = rows[2][col("lsn")].parse().unwrap();
    assert!(replica_lsn < primary_lsn, "{rows:?}");
    let routed: u64 = rows[1..]
        .iter()
        .map(|r| r[col("queries_routed")].parse::<u64>().unwrap())
        .sum();
    assert!(routed >= 6, "the replicas' reads are counted: {rows:?}");
    let connections: usize = rows
        .iter()
        .map(|r| r[col("connections")].parse::<usize>().unwrap())
        .sum();
    assert!(connections >= 1, "{rows:?}");

    assert_show_config(&console, 777).await;

    let err = console.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "42601", "{err:?}");
    let err = console.query("SHOW NODES", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "0A000", "{err:?}");
    // Still serving after both errors.
    assert_eq!(console_rows(&console, "SHOW NODES").await.1.len(), 3);
}

//! The commit-read workload of `bench/pgbench.sh`: pairs of connections,
//! one committing and the other reading what was just committed, the way a
//! web app's pooled connections do. Each round, the writer sets its row to
//! the round's number (autocommit) and, once that is acknowledged, the
//! reader reads the row back; a value older than the round is a stale read.
//!
//! `cargo run --release --example commit_read -- PORT CLIENTS SECONDS`
//! connects to 127.0.0.1:PORT as `postgres` (password from PGPASSWORD) to
//! the database in PGDATABASE (default postgres), with CLIENTS / 2 pairs
//! (at least one), over the simple protocol (as PgBouncer in transaction
//! mode needs). It prints what pgbench prints (transactions processed,
//! average latency, tps: a round is a transaction) and `stale reads: N`.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const TABLE: &str = "bench_commit_read";

async fn connect(port: u16) -> Result<Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname(std::env::var("PGDATABASE").unwrap_or_else(|_| "postgres".into()))
        .application_name("commit-read");
    if let Ok(password) = std::env::var("PGPASSWORD") {
        config.password(password);
    }
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Rounds done and stale reads seen by pair `pair` until `end`.
async fn pair(
    port: u16,
    pair: i32,
    end: Instant,
) -> Result<(u64, u64), Box<dyn std::error::Error + Send + Sync>> {
    let writer = connect(port).await?;
    let reader = connect(port).await?;
    let select = format!("SELECT v FROM {TABLE} WHERE pair = {pair}");
    let (mut rounds, mut stale) = (0u64, 0u64);
    let mut v = 0i64;
    while Instant::now() < end {
        v += 1;
        writer
            .simple_query(&format!("UPDATE {TABLE} SET v = {v} WHERE pair = {pair}"))
            .await?;
        let seen: i64 = reader
            .simple_query(&select)
            .await?
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0)?.parse().ok(),
                _ => None,
            })
            .ok_or("the row is missing")?;
        stale += u64::from(seen < v);
        rounds += 1;
    }
    Ok((rounds, stale))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, port, clients, seconds] = args.as_slice() else {
        return Err("usage: commit_read PORT CLIENTS SECONDS".into());
    };
    let port: u16 = port.parse()?;
    let pairs = (clients.parse::<i32>()? / 2).max(1);
    let seconds: u64 = seconds.parse()?;

    let setup = connect(port).await?;
    setup
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {TABLE}(pair int PRIMARY KEY, v bigint); \
             TRUNCATE {TABLE}; \
             INSERT INTO {TABLE} SELECT p, 0 FROM generate_series(0, {pairs} - 1) p"
        ))
        .await?;
    drop(setup);

    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let runs: Vec<_> = (0..pairs)
        .map(|p| tokio::spawn(pair(port, p, end)))
        .collect();
    let (mut rounds, mut stale) = (0u64, 0u64);
    for run in runs {
        let (r, s) = run.await?.map_err(|e| e.to_string())?;
        rounds += r;
        stale += s;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let tps = rounds as f64 / elapsed;
    println!("number of transactions actually processed: {rounds}");
    println!(
        "latency average = {:.3} ms",
        elapsed * 1000.0 * f64::from(pairs) / rounds.max(1) as f64
    );
    println!("tps = {tps:.6} (without initial connection time)");
    println!("stale reads: {stale}");
    Ok(())
}

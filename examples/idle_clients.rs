//! The idle-clients cell of `bench/pgbench.sh`: what an idle client costs
//! the proxy in memory. Opens COUNT connections (logged in, then left
//! idle), and reads the proxy's resident memory (`VmRSS` of PID) before
//! and after; every connection then runs one query, to show it was held,
//! not dropped.
//!
//! `cargo run --release --example idle_clients -- PORT COUNT PID`
//! connects to 127.0.0.1:PORT as `postgres` (password from PGPASSWORD) to
//! the database in PGDATABASE (default postgres), 100 logins at a time, and
//! prints `idle clients: N, proxy RSS +X KiB, Y KiB per client`.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

async fn connect(port: u16) -> Result<Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname(std::env::var("PGDATABASE").unwrap_or_else(|_| "postgres".into()))
        .application_name("idle-clients")
        .connect_timeout(Duration::from_secs(60));
    if let Ok(password) = std::env::var("PGPASSWORD") {
        config.password(password);
    }
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read the proxy's memory (pid {pid}): {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS for pid {pid}"))
}

async fn run(port: u16, count: usize, pid: u32) -> Result<(), String> {
    // One client first, so that pools and caches the first one fills are
    // not counted against the idle ones.
    let first = connect(port).await.map_err(|e| e.to_string())?;
    first
        .simple_query("SELECT 1")
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid)?;
    let mut clients = Vec::with_capacity(count);
    while clients.len() < count {
        let batch = (count - clients.len()).min(100);
        let logins: Vec<_> = (0..batch).map(|_| tokio::spawn(connect(port))).collect();
        for login in logins {
            let client = login.await.map_err(|e| e.to_string())?;
            clients.push(client.map_err(|e| format!("login {}: {e}", clients.len()))?);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid)?;
    for (i, client) in clients.iter().enumerate() {
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| format!("client {i} was not held: {e}"))?;
    }
    let grown = after.saturating_sub(before);
    println!(
        "idle clients: {count}, proxy RSS +{grown} KiB, {:.1} KiB per client",
        grown as f64 / count as f64
    );
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let parsed = match &args[..] {
        [_, port, count, pid] => port
            .parse()
            .ok()
            .zip(count.parse().ok())
            .zip(pid.parse().ok()),
        _ => None,
    };
    let Some(((port, count), pid)) = parsed else {
        eprintln!("usage: idle_clients PORT COUNT PID");
        std::process::exit(2);
    };
    if let Err(e) = run(port, count, pid).await {
        eprintln!("idle_clients: {e}");
        std::process::exit(1);
    }
}

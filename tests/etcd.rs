//! Several proxies sharing one epoch through a real etcd (`failover.store =
//! "etcd"`, the Debian package's `etcd`, started by the test kit on
//! loopback): each test starts its own cluster and etcd and runs alone
//! (`SERIAL`), as the failover tests do.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade::config::{Config, PartitionMode, StoreKind};
use palisade::proxy::Proxy;
use palisade::topology::{Topology, WriteState};
use palisade_testkit::{signal, FaultyRelay, LocalCluster, LocalEtcd};
use support::demo::LocalRejoin;
use support::failover_cluster as cluster;
use support::harness::{
    client, connect_node, connect_with, console_url, proxy_config, url, wait_topology,
};
use support::nodes::{fresh_table, wait_until};
use tokio::sync::Mutex;
use tokio_postgres::{AsyncMessage, Client, SimpleQueryMessage};

static SERIAL: Mutex<()> = Mutex::const_new(());

const FAILOVER_TIMEOUT_MS: u64 = 2_000;
const GRACE_MS: u64 = 3_000;

fn etcd() -> LocalEtcd {
    LocalEtcd::start().unwrap_or_else(|e| panic!("cannot start etcd: {e}"))
}

fn shared_config(cluster: &LocalCluster, etcd: &LocalEtcd, name: &str) -> Config {
    let mut c = proxy_config(cluster);
    c.monitor.probe_timeout_ms = 500;
    c.monitor.health_threshold = 2;
    c.proxy.connect_timeout_ms = 1_000;
    c.failover.failover_timeout_ms = FAILOVER_TIMEOUT_MS;
    c.failover.store = StoreKind::Etcd;
    c.failover.etcd_endpoints = vec![etcd.endpoint()];
    c.failover.etcd_prefix = "/palisade/test".into();
    c.failover.etcd_name = Some(name.into());
    c.failover.etcd_grace_ms = GRACE_MS;
    c.failover.failover_wait_ms = 500;
    c
}

/// `count` proxies on one cluster and one etcd, each once it routes by
/// epoch 1 with node 0 as its primary.
async fn proxies(
    cluster: &Arc<LocalCluster>,
    etcd: &LocalEtcd,
    count: usize,
    tweak: impl Fn(&mut Config),
) -> Vec<Proxy> {
    let mut proxies = Vec::new();
    for i in 0..count {
        proxies.push(proxy_named(cluster, etcd, &format!("p{i}"), &tweak).await);
    }
    proxies
}

/// A proxy named `name` (`p<i>` in [`proxies`]), as `tweak` configures it.
async fn proxy_named(
    cluster: &Arc<LocalCluster>,
    etcd: &LocalEtcd,
    name: &str,
    tweak: &impl Fn(&mut Config),
) -> Proxy {
    let mut config = shared_config(cluster, etcd, name);
    tweak(&mut config);
    let proxy = Proxy::start_with(config, Arc::new(LocalRejoin::new(cluster.clone())))
        .await
        .expect("proxy starts");
    wait_topology(&proxy, "epoch 1 on node 0", |t| {
        t.epoch == 1 && t.primary() == Some(0)
    })
    .await;
    proxy
}

fn superuser_url(proxy: &Proxy, cluster: &LocalCluster) -> String {
    url(proxy, cluster.superuser(), cluster.password())
}

/// One `INSERT` through a fresh connection to `proxy`.
async fn write_once(proxy: &Proxy, cluster: &LocalCluster) -> Result<(), String> {
    let (c, _) = connect_with(&superuser_url(proxy, cluster))
        .await
        .map_err(|e| e.to_string())?;
    c.batch_execute("INSERT INTO ft VALUES (1)")
        .await
        .map_err(|e| {
            e.as_db_error()
                .map_or(e.to_string(), |d| d.message().to_owned())
        })
}

async fn write_until_accepted(proxy: &Proxy, cluster: &LocalCluster) {
    let began = Instant::now();
    while let Err(e) = write_once(proxy, cluster).await {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "no write in 60 s: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The port of the node that takes `c`'s writes.
async fn primary_port(c: &Client) -> u16 {
    let sql = "/* palisade: primary */ SELECT inet_server_port()";
    let port: i32 = c.query_one(sql, &[]).await.unwrap().get(0);
    u16::try_from(port).unwrap()
}

async fn in_recovery(cluster: &LocalCluster, node: usize) -> Option<bool> {
    let c = connect_node(cluster, cluster.node(node)).await.ok()?;
    let row = c.query_one("SELECT pg_is_in_recovery()", &[]).await.ok()?;
    Some(row.get(0))
}

/// `SHOW PEERS` through `proxy`'s console: (name, leader) per row.
async fn show_peers(proxy: &Proxy, cluster: &LocalCluster) -> Vec<(String, bool)> {
    let (console, _) = connect_with(&console_url(proxy, cluster)).await.unwrap();
    let rows = console.simple_query("SHOW PEERS").await.unwrap();
    rows.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((
                r.get("name").unwrap().to_owned(),
                r.get("leader") == Some("yes"),
            )),
            _ => None,
        })
        .collect()
}

/// The proxies that report the primary lost, by `SHOW PEERS`.
async fn show_peers_lost(proxy: &Proxy, cluster: &LocalCluster) -> Vec<String> {
    let (console, _) = connect_with(&console_url(proxy, cluster)).await.unwrap();
    let rows = console.simple_query("SHOW PEERS").await.unwrap();
    rows.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) if r.get("primary") == Some("lost") => {
                r.get("name").map(str::to_owned)
            }
            _ => None,
        })
        .collect()
}

fn epoch_and_primary(t: &Topology) -> (u64, Option<usize>) {
    (t.epoch, t.primary())
}

#[tokio::test]
async fn two_proxies_fail_over_once_and_both_write_to_the_new_primary() {
    let _serial = SERIAL.lock().await;
    let etcd = etcd();
    let cluster = cluster();
    let proxies = proxies(&cluster, &etcd, 2, |_| {}).await;
    let c = client(&proxies[0], &cluster, "etcd").await;
    fresh_table(&c, "ft", "i int").await;
    wait_until(
        "the peers to see each other",
        Duration::from_secs(10),
        || async {
            let peers = show_peers(&proxies[1], &cluster).await;
            peers.len() == 2 && peers.iter().filter(|(_, leads)| *leads).count() == 1
        },
    )
    .await;

    cluster.primary().kill(signal::SIGKILL).unwrap();
    let began = Instant::now();
    let open = |t: &Topology| t.epoch >= 2 && t.primary().is_some() && t.writes == WriteState::Open;
    wait_topology(&proxies[0], "writes open in a new epoch", open).await;
    let first = began.elapsed();
    wait_topology(&proxies[1], "writes open in the new epoch", open).await;
    let both = began.elapsed();
    eprintln!("writes open in epoch 2 on one proxy after {first:?}, on both after {both:?}");
    assert!(
        both < Duration::from_millis(FAILOVER_TIMEOUT_MS) + Duration::from_millis(1_500),
        "took {both:?}"
    );
    assert!(
        both - first < Duration::from_secs(1),
        "the other learned it at once"
    );
    let (t0, t1) = (proxies[0].topology(), proxies[1].topology());
    assert_eq!(
        epoch_and_primary(&t0),
        epoch_and_primary(&t1),
        "one epoch for all"
    );
    assert_eq!(t0.epoch, 2, "one failover, one epoch: {t0:?}");
    let new = t0.primary().unwrap();
    assert_ne!(new, 0);
    for proxy in &proxies {
        write_until_accepted(proxy, &cluster).await;
        let c = client(proxy, &cluster, "etcd").await;
        assert_eq!(primary_port(&c).await, cluster.node(new).port);
    }
    // Well past another failover timeout: the other replica was never promoted.
    tokio::time::sleep(Duration::from_millis(2 * FAILOVER_TIMEOUT_MS)).await;
    assert_eq!(
        in_recovery(&cluster, 3 - new).await,
        Some(true),
        "one promotion"
    );
    assert_eq!(in_recovery(&cluster, new).await, Some(false));
    for proxy in &proxies {
        assert_eq!(epoch_and_primary(&proxy.topology()), (2, Some(new)));
    }
}

/// Writes go on for the grace period without etcd, then follow
/// `partition_mode`; etcd back, the proxies converge on the same epoch.
async fn lose_etcd(mode: PartitionMode) -> (Duration, Vec<Proxy>, Arc<LocalCluster>, LocalEtcd) {
    let etcd = etcd();
    let cluster = cluster();
    let proxies = proxies(&cluster, &etcd, 2, |c| c.consistency.partition_mode = mode).await;
    let c = client(&proxies[0], &cluster, "etcd").await;
    fresh_table(&c, "ft", "i int").await;
    etcd.stop();
    let lost = Instant::now();
    for proxy in &proxies {
        write_once(proxy, &cluster)
            .await
            .expect("a write within the grace period");
    }
    assert!(lost.elapsed() < Duration::from_millis(GRACE_MS));
    tokio::time::sleep(Duration::from_millis(GRACE_MS + 1_500)).await;
    (lost.elapsed(), proxies, cluster, etcd)
}

#[tokio::test]
async fn without_etcd_writes_go_on_for_the_grace_period_then_stop_when_consistent() {
    let _serial = SERIAL.lock().await;
    let (_, proxies, cluster, etcd) = lose_etcd(PartitionMode::Consistent).await;
    for proxy in &proxies {
        let err = write_once(proxy, &cluster).await.unwrap_err();
        assert!(err.contains("etcd"), "the refusal names etcd: {err}");
        assert!(matches!(proxy.topology().writes, WriteState::Refused(_)));
        let c = client(proxy, &cluster, "etcd").await;
        c.query_one("SELECT count(*) FROM ft", &[])
            .await
            .expect("reads go on");
    }
    etcd.start_again().unwrap();
    for proxy in &proxies {
        write_until_accepted(proxy, &cluster).await;
        assert_eq!(
            epoch_and_primary(&proxy.topology()),
            (1, Some(0)),
            "no new epoch"
        );
    }
}

#[tokio::test]
async fn without_etcd_writes_go_on_when_available() {
    let _serial = SERIAL.lock().await;
    let (_, proxies, cluster, etcd) = lose_etcd(PartitionMode::Available).await;
    for proxy in &proxies {
        let (c, mut notices) = connect_with(&superuser_url(proxy, &cluster)).await.unwrap();
        c.batch_execute("INSERT INTO ft VALUES (1)")
            .await
            .expect("writes go on past the grace period");
        let told = std::iter::from_fn(|| notices.try_recv().ok())
            .any(|m| matches!(m, AsyncMessage::Notice(n) if n.message().contains("lost etcd")));
        assert!(
            told,
            "the client is told its write may go to a replaced primary"
        );
    }
    etcd.start_again().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for proxy in &proxies {
        write_once(proxy, &cluster).await.unwrap();
        assert_eq!(
            epoch_and_primary(&proxy.topology()),
            (1, Some(0)),
            "no new epoch"
        );
    }
}

/// The index of the proxy that does not lead, once the peers agree on one.
async fn a_follower(proxies: &[Proxy], cluster: &LocalCluster) -> usize {
    let mut leader = None;
    wait_until(
        "one leader among the peers",
        Duration::from_secs(10),
        || async {
            let peers = show_peers(&proxies[0], cluster).await;
            let leaders: Vec<&String> = peers.iter().filter(|(_, l)| *l).map(|(n, _)| n).collect();
            peers.len() == proxies.len() && leaders.len() == 1
        },
    )
    .await;
    for (name, leads) in show_peers(&proxies[0], cluster).await {
        if leads {
            leader = Some(name);
        }
    }
    let leader = leader.unwrap();
    (0..proxies.len())
        .find(|i| format!("p{i}") != leader)
        .unwrap()
}

#[tokio::test]
async fn a_switchover_run_on_a_follower_is_done_once_by_the_leader_and_seen_by_all() {
    let _serial = SERIAL.lock().await;
    let etcd = etcd();
    let cluster = cluster();
    let proxies = proxies(&cluster, &etcd, 2, |_| {}).await;
    let c = client(&proxies[0], &cluster, "etcd").await;
    fresh_table(&c, "ft", "i int").await;
    let follower = &proxies[a_follower(&proxies, &cluster).await];
    let (console, _) = connect_with(&console_url(follower, &cluster))
        .await
        .unwrap();
    console.simple_query("SWITCHOVER TO node2").await.unwrap();
    for proxy in &proxies {
        wait_topology(proxy, "node2 primary of epoch 2", |t| {
            epoch_and_primary(t) == (2, Some(2)) && t.writes == WriteState::Open
        })
        .await;
    }
    for proxy in &proxies {
        write_until_accepted(proxy, &cluster).await;
        let c = client(proxy, &cluster, "etcd").await;
        assert_eq!(primary_port(&c).await, cluster.node(2).port);
    }
    tokio::time::sleep(Duration::from_millis(FAILOVER_TIMEOUT_MS)).await;
    assert_eq!(
        in_recovery(&cluster, 1).await,
        Some(true),
        "node1 untouched"
    );
    for proxy in &proxies {
        assert_eq!(
            epoch_and_primary(&proxy.topology()),
            (2, Some(2)),
            "done once"
        );
        assert!(
            proxy.topology().nodes[0].fenced,
            "the old primary fenced for all"
        );
    }
}

#[tokio::test]
async fn the_leader_dying_with_the_primary_leaves_the_failover_to_the_other_proxy() {
    let _serial = SERIAL.lock().await;
    let etcd = etcd();
    let cluster = cluster();
    let mut proxies = proxies(&cluster, &etcd, 2, |_| {}).await;
    let c = client(&proxies[0], &cluster, "etcd").await;
    fresh_table(&c, "ft", "i int").await;
    let follower = a_follower(&proxies, &cluster).await;
    let leader = proxies.remove(1 - follower);
    // The leader goes without a word (its lease expires), with the primary.
    cluster.primary().kill(signal::SIGKILL).unwrap();
    drop(leader);
    let survivor = &proxies[0];
    wait_topology(survivor, "a new primary", |t| {
        t.epoch >= 2 && t.primary().is_some() && t.writes == WriteState::Open
    })
    .await;
    let new = survivor.topology().primary().unwrap();
    write_until_accepted(survivor, &cluster).await;
    tokio::time::sleep(Duration::from_millis(2 * FAILOVER_TIMEOUT_MS)).await;
    assert_eq!(epoch_and_primary(&survivor.topology()), (2, Some(new)));
    assert_eq!(
        in_recovery(&cluster, 3 - new).await,
        Some(true),
        "one promotion"
    );
    let peers = show_peers(survivor, &cluster).await;
    assert_eq!(peers, [(format!("p{follower}"), true)], "it leads, alone");
}

/// Sets every replica's `primary_conninfo` (reloaded): `''` stops its WAL
/// receiver. Returns what each had.
async fn set_conninfo(cluster: &LocalCluster, to: &[String]) -> Vec<String> {
    let mut had = Vec::new();
    for (i, replica) in cluster.replicas().iter().enumerate() {
        let c = connect_node(cluster, replica).await.unwrap();
        had.push(
            c.query_one("SHOW primary_conninfo", &[])
                .await
                .unwrap()
                .get(0),
        );
        let value = to[i].replace('\'', "''");
        let alter = format!("ALTER SYSTEM SET primary_conninfo = '{value}'");
        c.batch_execute(&alter).await.unwrap();
        c.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    }
    had
}

#[tokio::test]
async fn a_leader_cut_off_from_the_primary_fails_nothing_over_while_its_peer_sees_it() {
    let _serial = SERIAL.lock().await;
    let etcd = etcd();
    let cluster = cluster();
    let relay = FaultyRelay::start(
        format!("127.0.0.1:{}", cluster.primary().port)
            .parse()
            .unwrap(),
    );
    // p0, the first, leads; it reaches the primary only through the relay.
    let via_relay = relay.addr().port();
    let mut proxies = proxies(&cluster, &etcd, 1, |c| c.nodes[0].port = via_relay).await;
    proxies.push(proxy_named(&cluster, &etcd, "p1", &|_: &mut Config| {}).await);
    assert_eq!(a_follower(&proxies, &cluster).await, 1, "p0 leads");
    let c = client(&proxies[1], &cluster, "etcd").await;
    fresh_table(&c, "ft", "i int").await;
    // The replicas stop streaming, as they would if the primary were gone:
    // only p1 still sees it.
    let had = set_conninfo(&cluster, &[String::new(), String::new()]).await;
    relay.block();
    relay.cut();
    wait_until(
        "p0 to report the primary lost",
        Duration::from_secs(10),
        || async { show_peers_lost(&proxies[1], &cluster).await == ["p0"] },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(3 * FAILOVER_TIMEOUT_MS)).await;
    for proxy in &proxies {
        assert_eq!(epoch_and_primary(&proxy.topology()).0, 1, "no new epoch");
    }
    for replica in 1..3 {
        assert_eq!(
            in_recovery(&cluster, replica).await,
            Some(true),
            "nothing promoted"
        );
    }
    write_once(&proxies[1], &cluster)
        .await
        .expect("p1 writes on");
    set_conninfo(&cluster, &had).await;
    relay.heal();
    write_until_accepted(&proxies[0], &cluster).await;
}

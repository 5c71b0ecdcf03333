//! `RELOAD`: the config file read again; what can change live is in force
//! at once for an open session too, the rest is named as needing a
//! restart, and a file that cannot be used changes nothing.

use palisade::config::{AuthMethod, Config, Consistency};
use palisade::proxy::Proxy;
use tokio_postgres::{AsyncMessage, Client};

use crate::support::harness::{
    app_url, connect_with, console_url, proxy_config, sqlstate, start_proxy, url, user,
    wait_topology,
};
use crate::support::nodes::{first_column, reads, served_by, tally, Node};
use crate::support::shared_cluster;

/// Runs `RELOAD` at the console; the notices it gave, or its SQLSTATE.
async fn reload(
    console: &Client,
    notices: &mut tokio::sync::mpsc::UnboundedReceiver<AsyncMessage>,
) -> Result<Vec<String>, String> {
    console.simple_query("RELOAD").await.map_err(|e| {
        let message = e
            .as_db_error()
            .map_or(String::new(), |d| d.message().to_owned());
        format!("{} {message}", sqlstate(&e))
    })?;
    let mut said = Vec::new();
    while let Ok(AsyncMessage::Notice(n)) = notices.try_recv() {
        said.push(n.message().to_owned());
    }
    Ok(said)
}

fn write(path: &std::path::Path, config: &Config) {
    std::fs::write(
        path,
        toml::to_string(config).expect("the config serialises"),
    )
    .unwrap();
}

async fn logs_in(proxy: &Proxy, name: &str, password: &str) -> Result<(), String> {
    match connect_with(&url(proxy, name, password)).await {
        Ok((c, _)) => c
            .simple_query("SELECT 1")
            .await
            .map(|_| ())
            .map_err(|e| sqlstate(&e)),
        Err(e) => Err(sqlstate(&e)),
    }
}

#[tokio::test]
async fn reload_applies_users_weights_and_consistency_and_names_what_needs_a_restart() {
    let cluster = shared_cluster();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("palisade.toml");
    let proxy = start_proxy(cluster, |c| c.source = Some(path.clone())).await;
    let mut file = (*proxy.config()).clone();
    file.source = None;
    write(&path, &file);
    let (session, _) = connect_with(&app_url(&proxy, cluster, "reload"))
        .await
        .unwrap();
    session.simple_query("SELECT 1").await.unwrap();
    let (console, mut notices) = connect_with(&console_url(&proxy, cluster)).await.unwrap();
    assert_eq!(
        logs_in(&proxy, "reloaded", "reloaded-pw").await,
        Err("28P01".into())
    );

    let mut reloaded = user("reloaded", AuthMethod::ScramSha256, Some("reloaded-pw"));
    reloaded.server_user = Some(file.users[0].name.clone());
    reloaded.server_password = file.users[0].password.clone();
    file.users.push(reloaded);
    file.nodes[2].weight = 0;
    file.consistency.level = Consistency::Eventual;
    file.proxy.listen = "127.0.0.1:1".into();
    write(&path, &file);
    let said = reload(&console, &mut notices).await.expect("RELOAD runs");
    let said = said.join("\n");
    for key in ["users[1]", "nodes[2].weight", "consistency.level"] {
        assert!(said.contains(key), "{key} reloaded: {said}");
    }
    assert!(
        said.contains("needs a restart") && said.contains("proxy.listen"),
        "{said}"
    );
    assert_eq!(logs_in(&proxy, "reloaded", "reloaded-pw").await, Ok(()));
    wait_topology(&proxy, "node2's weight to be 0", |t| t.nodes[2].weight == 0).await;
    let running = proxy.config();
    assert_eq!(running.consistency.level, Consistency::Eventual);
    assert_ne!(
        running.proxy.listen, "127.0.0.1:1",
        "the listen address stays"
    );
    session
        .simple_query("SELECT 1")
        .await
        .expect("the session open throughout still works");

    std::fs::write(&path, "[proxy]\nlisten = 5\n").unwrap();
    let refused = reload(&console, &mut notices).await.unwrap_err();
    assert!(refused.starts_with("F0000"), "{refused}");
    assert!(refused.contains("unchanged"), "{refused}");
    assert_eq!(logs_in(&proxy, "reloaded", "reloaded-pw").await, Ok(()));
    assert_eq!(proxy.config().consistency.level, Consistency::Eventual);
}

/// The nodes of `cluster` at these indexes, as the proxy configures them.
fn nodes_of(
    all: &[palisade::config::NodeConfig],
    pick: &[usize],
) -> Vec<palisade::config::NodeConfig> {
    pick.iter().map(|i| all[*i].clone()).collect()
}

#[tokio::test]
async fn reload_adds_a_replica_that_serves_reads_and_removes_one_that_stops() {
    let cluster = shared_cluster();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("palisade.toml");
    let all = proxy_config(cluster).nodes;
    let proxy = start_proxy(cluster, |c| {
        c.source = Some(path.clone());
        c.nodes = nodes_of(&all, &[0, 1]);
        c.consistency.level = Consistency::Eventual;
    })
    .await;
    let mut file = (*proxy.config()).clone();
    file.source = None;
    let (session, _) = connect_with(&app_url(&proxy, cluster, "reload-nodes"))
        .await
        .unwrap();
    let (console, mut notices) = connect_with(&console_url(&proxy, cluster)).await.unwrap();
    // (A replica that misses a probe on a loaded machine leaves its reads
    // to the primary for a moment: what matters is which replicas serve.)
    let before = tally(&reads(&session, 20).await);
    assert!(before.contains_key(&Node::Replica(1)), "{before:?}");
    assert!(!before.contains_key(&Node::Replica(2)), "{before:?}");

    // A third node joins: the second replica starts serving reads.
    file.nodes = nodes_of(&all, &[0, 1, 2]);
    write(&path, &file);
    let said = reload(&console, &mut notices)
        .await
        .expect("RELOAD runs")
        .join("\n");
    assert!(
        said.contains(&format!("added node {}", all[2].display_name())),
        "{said}"
    );
    wait_topology(&proxy, "the added replica to be healthy", |t| {
        t.nodes.len() == 3 && t.nodes[2].healthy && t.nodes[2].replication.streaming
    })
    .await;
    let seen = tally(&reads(&session, 40).await);
    assert!(
        seen.get(&Node::Replica(2)).is_some_and(|n| *n > 0),
        "{seen:?}"
    );
    assert!(
        seen.get(&Node::Replica(1)).is_some_and(|n| *n > 0),
        "{seen:?}"
    );

    // A read-only transaction holds one replica, and that replica leaves
    // while the transaction is open: the transaction finishes there, and
    // the session's reads from then on go to the other one.
    session.simple_query("BEGIN READ ONLY").await.unwrap();
    let held = served_by(&session).await;
    let (gone, kept) = match held {
        Node::Replica(1) => (1, 2),
        Node::Replica(2) => (2, 1),
        other => panic!("a read-only transaction on {other:?}"),
    };
    file.nodes = nodes_of(&all, &[0, kept]);
    write(&path, &file);
    let said = reload(&console, &mut notices)
        .await
        .expect("RELOAD runs")
        .join("\n");
    assert!(
        said.contains(&format!("removed node {}", all[gone].display_name())),
        "{said}"
    );
    assert!(proxy.topology().nodes[gone].removed);
    assert_eq!(
        served_by(&session).await,
        held,
        "the open transaction stays on its replica"
    );
    session.simple_query("COMMIT").await.unwrap();
    let routed_to_removed = proxy.routed()[gone];
    let seen = tally(&reads(&session, 40).await);
    assert!(seen.contains_key(&Node::Replica(kept)), "{seen:?}");
    assert!(!seen.contains_key(&held), "{seen:?}");
    assert_eq!(proxy.routed()[gone], routed_to_removed);
    let shown = console.simple_query("SHOW NODES").await.unwrap();
    let names = first_column(&shown);
    assert!(!names.contains(&all[gone].display_name()), "{names:?}");

    // The primary cannot be removed: nothing changes, and the reload says why.
    file.nodes = nodes_of(&all, &[kept]);
    write(&path, &file);
    let refused = reload(&console, &mut notices).await.unwrap_err();
    assert!(refused.contains("it is the primary"), "{refused}");
    assert_eq!(proxy.config().nodes, nodes_of(&all, &[0, kept]));
    assert_ne!(served_by(&session).await, held);
}

//! `RELOAD`: the config file read again; what can change live is in force
//! at once for an open session too, the rest is named as needing a
//! restart, and a file that cannot be used changes nothing.

use palisade::config::{AuthMethod, Config, Consistency};
use palisade::proxy::Proxy;
use tokio_postgres::{AsyncMessage, Client};

use crate::support::harness::{
    app_url, connect_with, console_url, sqlstate, start_proxy, url, user, wait_topology,
};
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

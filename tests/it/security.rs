//! Who may use the admin console, and secrets kept out of what it shows.

use crate::support::harness::{connect_with, sqlstate, start_proxy, url, user};
use crate::support::shared_cluster;
use palisade::config::{AuthMethod, Config};
use palisade::proxy::Proxy;
use tokio_postgres::{Client, SimpleQueryMessage};

/// `name` (password `password`) into the proxy's admin console.
async fn console(proxy: &Proxy, name: &str, password: &str) -> Client {
    let addr = proxy.local_addr();
    let conninfo = format!(
        "host={} port={} user={name} password={password} dbname=palisade connect_timeout=10",
        addr.ip(),
        addr.port()
    );
    connect_with(&conninfo)
        .await
        .unwrap_or_else(|e| panic!("{name} logs in to the console: {e}"))
        .0
}

/// The SQLSTATE a console command fails with, or "ok".
async fn outcome(console: &Client, sql: &str) -> String {
    match console.simple_query(sql).await {
        Ok(_) => "ok".into(),
        Err(e) => sqlstate(&e),
    }
}

/// Every row of a console query as (first column, second column).
async fn pairs(console: &Client, sql: &str) -> Vec<(String, String)> {
    console
        .simple_query(sql)
        .await
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((
                r.get(0).unwrap_or_default().to_owned(),
                r.get(1).unwrap_or_default().to_owned(),
            )),
            _ => None,
        })
        .collect()
}

/// Adds `name` with `password`, logging in to PostgreSQL as the superuser.
fn add_user(c: &mut Config, name: &str, password: &str) {
    let mut u = user(name, AuthMethod::ScramSha256, Some(password));
    u.server_user = Some(c.users[0].name.clone());
    u.server_password = c.users[0].password.clone();
    c.users.push(u);
}

#[tokio::test]
async fn only_listed_users_may_use_the_console_and_only_admins_may_act() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| {
        add_user(c, "intruder", "intruder-pw");
        add_user(c, "watcher", "watcher-pw");
        c.admin.stats_users = vec!["watcher".into()];
    })
    .await;
    let before = proxy.topology();
    // Harmless if they ran (node0 is the primary, node1 is not fenced): the
    // control plane would refuse them with 55000.
    let acts = ["SWITCHOVER TO node0", "REJOIN node1"];
    // The proxy's own operations, admin-only too.
    let operations = ["PAUSE", "RESUME", "SHUTDOWN WAIT_FOR_CLIENTS", "RELOAD"];
    let views = [
        "SHOW POOLS",
        "SHOW CLIENTS",
        "SHOW SERVERS",
        "SHOW STATS",
        "SHOW EVENTS",
    ];

    let intruder = console(&proxy, "intruder", "intruder-pw").await;
    for sql in ["SHOW NODES", "SHOW CONFIG", "SELECT 1"]
        .into_iter()
        .chain(acts)
        .chain(operations)
        .chain(views)
    {
        assert_eq!(outcome(&intruder, sql).await, "42501", "{sql}");
    }
    // The application role still works outside the console.
    let (app, _) = connect_with(&url(&proxy, "intruder", "intruder-pw"))
        .await
        .unwrap();
    app.simple_query("SELECT 1").await.unwrap();

    let watcher = console(&proxy, "watcher", "watcher-pw").await;
    assert_eq!(pairs(&watcher, "SHOW NODES").await.len(), 3);
    assert!(!pairs(&watcher, "SHOW CONFIG").await.is_empty());
    for sql in acts.into_iter().chain(operations) {
        assert_eq!(outcome(&watcher, sql).await, "42501", "{sql}");
    }
    for sql in views {
        assert_eq!(outcome(&watcher, sql).await, "ok", "{sql}");
    }
    assert_eq!(outcome(&watcher, "SELECT 1").await, "42601");

    // Nothing ran: the same epoch and primary.
    let after = proxy.topology();
    assert_eq!(
        (after.epoch, after.primary()),
        (before.epoch, before.primary())
    );
    // An admin's commands reach the control plane (which refuses these).
    let admin = console(&proxy, cluster.superuser(), cluster.password()).await;
    for sql in acts {
        assert_eq!(outcome(&admin, sql).await, "55000", "{sql}");
    }
    assert!(
        proxy.begin_drain(),
        "no SHUTDOWN WAIT_FOR_CLIENTS ran for the intruder or the watcher"
    );
}

#[tokio::test]
async fn show_config_never_shows_a_configured_secret() {
    let cluster = shared_cluster();
    // The probes log in as a role the cluster trusts, so their password
    // can be anything, here a secret to look for.
    cluster
        .psql(
            0,
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'palisade_trust') \
             THEN CREATE ROLE palisade_trust LOGIN; END IF; END $$",
        )
        .unwrap();
    let secrets = [
        "backend-s3cret",
        "user-s3cret",
        "server-s3cret",
        "fence-s3cret",
        "rejoin-s3cret",
        "auth-s3cret",
        // The stored keys of this verifier.
        "7i9IImnGKxGF",
        "yGYlMjhuaiuA",
    ];
    let proxy = start_proxy(cluster, |c| {
        c.backend.user = "palisade_trust".into();
        c.backend.password = Some("backend-s3cret".into());
        c.auth.auth_user = Some("palisade_trust".into());
        c.auth.auth_password = Some("auth-s3cret".into());
        let mut u = user("holder", AuthMethod::ScramSha256, Some("user-s3cret"));
        u.server_password = Some("server-s3cret".into());
        c.users.push(u);
        let mut v = user("stored", AuthMethod::ScramSha256, None);
        v.scram_verifier = Some(
            "SCRAM-SHA-256$4096:XxwuPUpbbH2On6CxwtPk9Q==$7i9IImnGKxGF//xBbrSi/CkSRmcTfR/QfaBZk6ZQCGo=:yGYlMjhuaiuAHUTfmZ1TqsZW0yP4wuLfm0V/beMoIQc="
                .into(),
        );
        c.users.push(v);
        c.failover.fence_command = Some("PGPASSWORD=fence-s3cret pg_ctl stop -m fast".into());
        c.failover.rejoin_command =
            Some("pg_rewind --source-server='password=rejoin-s3cret host=h'".into());
    })
    .await;
    let admin = console(&proxy, cluster.superuser(), cluster.password()).await;
    let rows = pairs(&admin, "SHOW CONFIG").await;
    let value = |key: &str| {
        rows.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {key} in SHOW CONFIG: {rows:?}"))
    };
    for key in [
        "backend.password",
        "users[0].password",
        "users[1].password",
        "users[1].server_password",
        "users[2].scram_verifier",
        "failover.fence_command",
        "failover.rejoin_command",
        "auth.auth_password",
    ] {
        assert_eq!(value(key), "********", "{key}");
    }
    assert_eq!(value("backend.user"), "palisade_trust", "the rest is shown");
    for (key, v) in &rows {
        for secret in secrets {
            assert!(!v.contains(secret), "{key} shows {secret}: {v}");
            assert!(!key.contains(secret), "{key} shows {secret}");
        }
    }
}

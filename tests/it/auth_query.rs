//! Users looked up on the primary (`[auth]`): roles created, changed and
//! dropped on PostgreSQL after Palisade started, logging in with SCRAM and
//! md5 and reaching the primary and the replicas without any password of
//! theirs in the config.

use std::time::Duration;

use crate::support::harness::{auth_query, connect_with, sqlstate, start_proxy, url};
use crate::support::nodes::{direct, wait_replayed, wait_until};
use crate::support::shared_cluster;
use palisade::proxy::Proxy;
use palisade_testkit::LocalCluster;
use tokio_postgres::Client;

/// Runs `sql` on the primary as the superuser, straight to the node.
async fn on_primary(cluster: &LocalCluster, sql: &str) {
    direct(cluster.primary())
        .await
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A fresh login role `name` with `password`, stored as `encryption` says,
/// replayed on every replica.
async fn create_role(cluster: &LocalCluster, name: &str, password: &str, encryption: &str) {
    on_primary(
        cluster,
        &format!(
            "DROP ROLE IF EXISTS {name}; SET password_encryption = '{encryption}'; \
             CREATE ROLE {name} LOGIN PASSWORD '{password}'"
        ),
    )
    .await;
    wait_replayed(cluster).await;
}

async fn drop_role(cluster: &LocalCluster, name: &str) {
    on_primary(cluster, &format!("DROP ROLE IF EXISTS {name}")).await;
}

/// (SQLSTATE, message) of a refused login, or "ok".
async fn login(proxy: &Proxy, user: &str, password: &str) -> (String, String) {
    match connect_with(&url(proxy, user, password)).await {
        Ok(_) => ("ok".into(), String::new()),
        Err(e) => (
            sqlstate(&e),
            e.as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_default(),
        ),
    }
}

fn refused(user: &str) -> (String, String) {
    (
        "28P01".into(),
        format!("password authentication failed for user \"{user}\""),
    )
}

/// (current_user, whether the serving node is a replica) of one statement.
async fn who_and_where(client: &Client, sql: &str) -> (String, bool) {
    let row = client.query_one(sql, &[]).await.unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn a_role_created_after_start_logs_in_with_scram_on_the_primary_and_a_replica() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| auth_query(cluster, c, 30_000)).await;
    create_role(cluster, "aq_scram", "scram-pw", "scram-sha-256").await;

    let (client, _) = connect_with(&url(&proxy, "aq_scram", "scram-pw"))
        .await
        .expect("a role created after start logs in through the auth query");
    let primary = "/* palisade: primary */ SELECT current_user::text, pg_is_in_recovery()";
    assert_eq!(
        who_and_where(&client, primary).await,
        ("aq_scram".into(), false)
    );
    // Reads outside a transaction go to the replicas: a second server login.
    let read = "SELECT current_user::text, pg_is_in_recovery()";
    for _ in 0..4 {
        assert_eq!(
            who_and_where(&client, read).await,
            ("aq_scram".into(), true)
        );
    }
    // A second session reuses the cached verifier and its own proof.
    let (again, _) = connect_with(&url(&proxy, "aq_scram", "scram-pw"))
        .await
        .unwrap();
    assert_eq!(who_and_where(&again, read).await.0, "aq_scram");

    // A wrong password and an unknown role are told the same thing.
    assert_eq!(
        login(&proxy, "aq_scram", "wrong").await,
        refused("aq_scram")
    );
    assert_eq!(
        login(&proxy, "aq_nobody", "wrong").await,
        refused("aq_nobody")
    );
    drop(client);
    drop(again);
    proxy.shutdown().await;
    drop_role(cluster, "aq_scram").await;
}

#[tokio::test]
async fn an_md5_role_logs_in_with_its_stored_hash() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| auth_query(cluster, c, 30_000)).await;
    // pg_hba.conf asks this role for md5 (support::harness::SERVER_AUTH_HBA).
    create_role(cluster, "aq_md5", "md5-pw", "md5").await;

    let (client, _) = connect_with(&url(&proxy, "aq_md5", "md5-pw"))
        .await
        .expect("an md5 role logs in through the auth query");
    let primary = "/* palisade: primary */ SELECT current_user::text, pg_is_in_recovery()";
    assert_eq!(
        who_and_where(&client, primary).await,
        ("aq_md5".into(), false)
    );
    let read = "SELECT current_user::text, pg_is_in_recovery()";
    assert_eq!(who_and_where(&client, read).await, ("aq_md5".into(), true));
    assert_eq!(login(&proxy, "aq_md5", "wrong").await, refused("aq_md5"));
    drop(client);
    proxy.shutdown().await;
    drop_role(cluster, "aq_md5").await;
}

#[tokio::test]
async fn a_changed_password_and_a_dropped_role_take_effect_after_the_cache_ttl() {
    let cluster = shared_cluster();
    let proxy = start_proxy(cluster, |c| auth_query(cluster, c, 300)).await;
    create_role(cluster, "aq_rotate", "first-pw", "scram-sha-256").await;
    assert_eq!(login(&proxy, "aq_rotate", "first-pw").await.0, "ok");

    on_primary(cluster, "ALTER ROLE aq_rotate PASSWORD 'second-pw'").await;
    wait_replayed(cluster).await;
    let limit = Duration::from_secs(10);
    wait_until("the new password to work", limit, || async {
        login(&proxy, "aq_rotate", "second-pw").await.0 == "ok"
    })
    .await;
    let (client, _) = connect_with(&url(&proxy, "aq_rotate", "second-pw"))
        .await
        .unwrap();
    let read = "SELECT current_user::text, pg_is_in_recovery()";
    assert_eq!(who_and_where(&client, read).await.0, "aq_rotate");
    assert_eq!(
        login(&proxy, "aq_rotate", "first-pw").await,
        refused("aq_rotate")
    );
    drop(client);

    drop_role(cluster, "aq_rotate").await;
    wait_until("the dropped role to be refused", limit, || async {
        login(&proxy, "aq_rotate", "second-pw").await == refused("aq_rotate")
    })
    .await;
    proxy.shutdown().await;
}

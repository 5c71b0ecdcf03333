//! Making a replica of the lagging cluster lag or lose its primary, and
//! undoing it: what the consistency tests need to put the proxy's
//! freshness rules to work. Every change is undone by its counterpart, and
//! each waits until the replica really is in the state it asked for.

use std::time::Duration;

use palisade_testkit::LocalNode;

use super::nodes::{direct, wait_until};

const LIMIT: Duration = Duration::from_secs(30);

/// Pauses WAL replay on `replica` (`pg_wal_replay_pause()`): it keeps
/// receiving WAL but its queries see the past.
pub async fn pause_replay(replica: &LocalNode) {
    let c = direct(replica).await;
    c.batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap_or_else(|e| panic!("pause replay on {}: {e}", replica.name));
    wait_until(&format!("{} to pause", replica.name), LIMIT, || async {
        let state: String = c
            .query_one("SELECT pg_get_wal_replay_pause_state()", &[])
            .await
            .unwrap()
            .get(0);
        state == "paused"
    })
    .await;
}

pub async fn resume_replay(replica: &LocalNode) {
    direct(replica)
        .await
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap_or_else(|e| panic!("resume replay on {}: {e}", replica.name));
}

/// `replica`'s WAL receiver is streaming.
pub async fn is_streaming(replica: &LocalNode) -> bool {
    direct(replica)
        .await
        .query_one(
            "SELECT coalesce((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false)",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Cuts `replica` off from its primary the way a partition would: its
/// `primary_conninfo` points at a port nobody listens on, reloaded, until
/// its WAL receiver has stopped streaming. Returns the old setting for
/// [`restore_replication`].
pub async fn cut_replication(replica: &LocalNode) -> String {
    let c = direct(replica).await;
    let saved: String = c
        .query_one("SELECT current_setting('primary_conninfo')", &[])
        .await
        .unwrap()
        .get(0);
    set_conninfo(replica, "host=127.0.0.1 port=1 connect_timeout=1").await;
    wait_until(
        &format!("{} to stop streaming", replica.name),
        LIMIT,
        || async { !is_streaming(replica).await },
    )
    .await;
    saved
}

/// Points `replica` back at its primary and waits until it streams again.
pub async fn restore_replication(replica: &LocalNode, saved: String) {
    set_conninfo(replica, &saved).await;
    wait_until(
        &format!("{} to stream again", replica.name),
        LIMIT,
        || async { is_streaming(replica).await },
    )
    .await;
}

async fn set_conninfo(replica: &LocalNode, conninfo: &str) {
    let quoted = conninfo.replace('\'', "''");
    let c = direct(replica).await;
    // ALTER SYSTEM cannot run in the implicit transaction of a multi-statement string.
    for sql in [
        format!("ALTER SYSTEM SET primary_conninfo = '{quoted}'"),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        c.batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql} on {}: {e:?}", replica.name));
    }
}

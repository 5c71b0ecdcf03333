//! The console's views of the proxy's own state, PgBouncer's names: `SHOW
//! POOLS`, `SHOW CLIENTS`, `SHOW SERVERS`, `SHOW STATS` and `SHOW EVENTS`.
//! Each is a set of columns and text rows, NULL for what is not known.

use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::frontend::Shared;
use crate::topology::Topology;

pub type Rows = Vec<Vec<Option<String>>>;

pub const POOL_COLUMNS: [&str; 7] = [
    "node",
    "database",
    "user",
    "sv_open",
    "sv_active",
    "sv_idle",
    "cl_waiting",
];

pub const CLIENT_COLUMNS: [&str; 7] = [
    "id",
    "user",
    "database",
    "addr",
    "state",
    "node",
    "connected_ms",
];

pub const SERVER_COLUMNS: [&str; 7] = [
    "node",
    "user",
    "database",
    "state",
    "client_id",
    "idle_ms",
    "pid",
];

pub const STATS_COLUMNS: [&str; 5] = [
    "node",
    "queries_routed",
    "in_flight",
    "unparsable",
    "commits",
];

pub const EVENT_COLUMNS: [&str; 4] = ["time", "epoch", "node", "event"];
pub const PEER_COLUMNS: [&str; 5] = ["name", "epoch", "primary", "leader", "this"];

/// The node at `host:port` by name, or the address when it is not one.
fn node_name(topology: &Topology, host: &str, port: u16) -> String {
    topology
        .nodes
        .iter()
        .find(|n| n.host == host && n.port == port)
        .map_or_else(|| format!("{host}:{port}"), |n| n.name.clone())
}

fn index_name(topology: &Topology, node: Option<usize>) -> Option<String> {
    node.and_then(|n| topology.nodes.get(n))
        .map(|n| n.name.clone())
}

/// One row per (node, database, user) the pool has connected for.
pub fn pools(shared: &Shared) -> Rows {
    let topology = shared.topology.load();
    shared
        .pool
        .stats()
        .into_iter()
        .map(|p| {
            vec![
                Some(node_name(&topology, &p.host, p.port)),
                Some(p.database),
                Some(p.user),
                Some(p.open.to_string()),
                Some(p.open.saturating_sub(p.idle).to_string()),
                Some(p.idle.to_string()),
                Some(p.waiting.to_string()),
            ]
        })
        .collect()
}

/// One row per logged-in session (console sessions are not listed).
pub fn clients(shared: &Shared) -> Rows {
    let topology = shared.topology.load();
    let now = Instant::now();
    shared
        .clients
        .list()
        .into_iter()
        .map(|c| {
            vec![
                Some(c.id.to_string()),
                Some(c.user.clone()),
                Some(c.database.clone()),
                Some(c.addr.to_string()),
                Some(c.state().name().to_owned()),
                index_name(&topology, c.node()),
                Some(now.duration_since(c.started).as_millis().to_string()),
            ]
        })
        .collect()
}

/// One row per server connection: those sessions hold (`active`, with the
/// session's id), then those idle in the pool.
pub fn servers(shared: &Shared) -> Rows {
    let topology = shared.topology.load();
    let held = shared.clients.list().into_iter().filter_map(|c| {
        let node = c.node()?;
        Some(vec![
            index_name(&topology, Some(node)),
            Some(c.user.clone()),
            Some(c.database.clone()),
            Some("active".to_owned()),
            Some(c.id.to_string()),
            None,
            None,
        ])
    });
    let idle = shared.pool.idle_servers().into_iter().map(|s| {
        vec![
            Some(node_name(&topology, &s.host, s.port)),
            Some(s.user),
            Some(s.database),
            Some("idle".to_owned()),
            None,
            Some(s.idle_for.as_millis().to_string()),
            s.pid.map(|p| p.to_string()),
        ]
    });
    held.chain(idle).collect()
}

/// One row per node, then a `total` row with the proxy-wide counters.
pub fn stats(shared: &Shared) -> Rows {
    let topology = shared.topology.load();
    let mut rows: Rows = Vec::new();
    let (mut routed, mut in_flight) = (0u64, 0u64);
    for (i, node) in topology.configured() {
        let (r, f) = (
            shared.loads.routed(i),
            u64::from(shared.loads.outstanding(i)),
        );
        routed += r;
        in_flight += f;
        rows.push(vec![
            Some(node.name.clone()),
            Some(r.to_string()),
            Some(f.to_string()),
            None,
            None,
        ]);
    }
    rows.push(vec![
        Some("total".to_owned()),
        Some(routed.to_string()),
        Some(in_flight.to_string()),
        Some(shared.unparsable.load(Ordering::Relaxed).to_string()),
        Some(shared.commits.count().to_string()),
    ]);
    rows
}

/// The failover log, oldest first.
pub fn events(shared: &Shared) -> Rows {
    shared
        .admin
        .control()
        .events()
        .into_iter()
        .map(|e| {
            vec![
                Some(utc(e.at)),
                Some(e.epoch.to_string()),
                e.node,
                Some(e.event),
            ]
        })
        .collect()
}

/// One row per proxy sharing the epoch that reports to etcd: the epoch it
/// routes by, whether it sees that epoch's primary, whether it leads; none
/// when the epoch is not shared. With etcd out of reach, only this proxy,
/// its health `etcd unreachable`.
pub fn peers(shared: &Shared) -> Rows {
    let Some(peers) = shared.admin.peers() else {
        return Vec::new();
    };
    let yes = |b: bool| Some(if b { "yes" } else { "no" }.to_owned());
    if !peers.reachable {
        let epoch = shared.topology.load().epoch.to_string();
        let row = vec![
            Some(peers.me),
            Some(epoch),
            Some("etcd unreachable".into()),
            yes(false),
            yes(true),
        ];
        return vec![row];
    }
    peers
        .reports
        .iter()
        .map(|r| {
            vec![
                Some(r.name.clone()),
                Some(r.epoch.to_string()),
                Some(if r.primary_lost { "lost" } else { "sees" }.to_owned()),
                yes(peers.leader.as_deref() == Some(r.name.as_str())),
                yes(r.name == peers.me),
            ]
        })
        .collect()
}

/// `at` as `YYYY-MM-DD HH:MM:SS.mmm` UTC.
pub fn utc(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_written_in_utc() {
        let at = |s: u64, ms: u64| UNIX_EPOCH + Duration::from_millis(s * 1000 + ms);
        assert_eq!(utc(at(0, 0)), "1970-01-01 00:00:00.000");
        assert_eq!(utc(at(951_782_400, 5)), "2000-02-29 00:00:00.005");
        assert_eq!(utc(at(1_798_761_599, 999)), "2026-12-31 23:59:59.999");
    }
}

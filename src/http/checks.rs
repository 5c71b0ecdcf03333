//! What the health and role endpoints answer, read off one topology
//! snapshot: pure, so the rules are unit tested without a socket.
//!
//! The role checks are Patroni's names (`/primary`, `/replica?lag=`) so
//! HAProxy and Kubernetes probes written for Patroni work unchanged, but
//! they ask about the cluster behind the proxy, not about one node.

use crate::topology::{Role, Topology, WriteState};

/// `Ok` with what is fine, or `Err` with why not (both shown to the prober).
pub type Verdict = Result<String, String>;

/// A writable primary: the epoch's primary is healthy and writes are open.
pub fn primary(topology: &Topology) -> Verdict {
    let Some(i) = topology.primary() else {
        return Err(match &topology.writes {
            WriteState::Refused(reason) => format!("no writable primary: {reason}"),
            _ => "no writable primary: the primary of the epoch is not healthy".to_owned(),
        });
    };
    let name = &topology.nodes[i].name;
    match &topology.writes {
        WriteState::Open => Ok(format!("{name} is the primary and takes writes")),
        WriteState::Paused => Err(format!(
            "{name} is the primary but writes are paused for a switchover"
        )),
        WriteState::Refused(reason) => Err(format!("writes are refused: {reason}")),
    }
}

/// Ready for clients: the proxy is accepting and has a writable primary.
pub fn ready(topology: &Topology, accepting: bool) -> Verdict {
    if !accepting {
        return Err("shutting down".to_owned());
    }
    primary(topology)
}

/// At least one healthy, streaming replica that serves reads (weight above
/// 0, not suspect: one that missed its last probe gets no new reads) and,
/// when `max_lag` is given, is at most that many bytes behind.
pub fn replica(topology: &Topology, max_lag: Option<u64>) -> Verdict {
    let fit: Vec<&str> = topology
        .nodes
        .iter()
        .filter(|n| n.role == Role::Replica && n.healthy && !n.suspect && !n.fenced)
        .filter(|n| n.weight > 0)
        .filter(|n| n.replication.streaming)
        .filter(|n| match max_lag {
            Some(max) => n.replication.lag_bytes.is_some_and(|lag| lag <= max),
            None => true,
        })
        .map(|n| n.name.as_str())
        .collect();
    match (fit.is_empty(), max_lag) {
        (false, _) => Ok(format!("replicas serving reads: {}", fit.join(", "))),
        (true, None) => Err("no healthy streaming replica".to_owned()),
        (true, Some(max)) => Err(format!(
            "no healthy streaming replica within {max} bytes of lag"
        )),
    }
}

/// A lag as Patroni takes it: bytes, or a number with a unit of
/// PostgreSQL's (`kB`, `MB`, `GB`, `TB`, powers of 1024), e.g. `16MB`.
pub fn parse_lag(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        "tb" => 1 << 40,
        _ => {
            return Err(format!(
                "lag {text:?}: unknown unit {unit:?} (use B, kB, MB, GB or TB)"
            ))
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("lag {text:?}: expected a number of bytes, e.g. 1048576 or 1MB"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{NodeState, Refusal, Replication};

    fn node(name: &str, role: Role, streaming: bool, lag: Option<u64>) -> NodeState {
        NodeState {
            name: name.into(),
            host: "127.0.0.1".into(),
            port: 5432,
            role,
            healthy: true,
            suspect: false,
            weight: 1,
            replication: Replication {
                streaming,
                lag_bytes: lag,
                ..Replication::default()
            },
            fenced: false,
            removed: false,
        }
    }

    fn cluster() -> Topology {
        Topology {
            epoch: 1,
            leader: Some(0),
            writes: WriteState::Open,
            nodes: vec![
                node("a", Role::Primary, false, None),
                node("b", Role::Replica, true, Some(100)),
                node("c", Role::Replica, true, Some(5 << 20)),
            ],
        }
    }

    #[test]
    fn primary_and_ready_need_a_healthy_leader_with_open_writes() {
        let t = cluster();
        assert!(primary(&t).is_ok());
        assert!(ready(&t, true).is_ok());
        assert_eq!(ready(&t, false), Err("shutting down".to_owned()));
        let mut paused = cluster();
        paused.writes = WriteState::Paused;
        assert!(primary(&paused).unwrap_err().contains("paused"));
        let mut refused = cluster();
        refused.writes = WriteState::Refused(Refusal::FailingOver);
        assert!(ready(&refused, true).unwrap_err().contains("failover"));
        let mut down = cluster();
        down.nodes[0].healthy = false;
        assert!(primary(&down).is_err());
        let mut none = cluster();
        none.leader = None;
        assert!(primary(&none).is_err());
    }

    #[test]
    fn replica_counts_healthy_streaming_readable_replicas_within_the_lag() {
        let t = cluster();
        assert_eq!(replica(&t, None), Ok("replicas serving reads: b, c".into()));
        assert_eq!(
            replica(&t, Some(1 << 20)),
            Ok("replicas serving reads: b".into())
        );
        assert!(replica(&t, Some(10)).is_err());
        let mut t = cluster();
        t.nodes[1].replication.streaming = false;
        t.nodes[2].weight = 0;
        assert!(replica(&t, None).is_err());
        let mut t = cluster();
        t.nodes[1].replication.lag_bytes = None;
        t.nodes[2].fenced = true;
        assert!(replica(&t, None).is_ok(), "no lag asked: b is fine");
        assert!(
            replica(&t, Some(u64::MAX)).is_err(),
            "an unknown lag is not within any bound, and fenced c is out"
        );
        assert!(replica(&cluster(), Some(u64::MAX)).is_ok());
    }

    #[test]
    fn a_suspect_replica_does_not_count() {
        let mut t = cluster();
        t.nodes[2].suspect = true;
        assert_eq!(replica(&t, None), Ok("replicas serving reads: b".into()));
        t.nodes[1].suspect = true;
        assert_eq!(
            replica(&t, None),
            Err("no healthy streaming replica".into()),
            "both replicas missed their last probe"
        );
    }

    #[test]
    fn lag_takes_bytes_or_postgres_units() {
        assert_eq!(parse_lag("1048576"), Ok(1 << 20));
        assert_eq!(parse_lag("1MB"), Ok(1 << 20));
        assert_eq!(parse_lag("16kB"), Ok(16 << 10));
        assert_eq!(parse_lag("2 GB"), Ok(2 << 30));
        assert_eq!(parse_lag("0"), Ok(0));
        for bad in ["", "MB", "1XB", "-1", "1.5MB", "99999999999999999999TB"] {
            assert!(parse_lag(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}

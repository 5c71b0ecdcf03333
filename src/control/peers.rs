//! What proxies sharing one epoch (`failover.store = "etcd"`) tell each
//! other, and what follows from it. Pure: the etcd I/O is in
//! [`super::etcd`]; this is the encoding of the records and the rules.
//!
//! Under the cluster's prefix live the epoch record (`/epoch`), the leader
//! key (`/leader`, held with a lease; its create revision orders leaders)
//! and one report per live proxy (`/peers/<name>`, on the proxy's lease:
//! the epoch it routes by and whether it has lost that epoch's primary).
//! The leader fails over only when a majority of the live reports agree
//! the primary is lost.

use async_trait::async_trait;

use super::epoch::EpochRecord;
use super::failover::Mandate;
use super::handle::Command;

/// The epoch record as stored: the epoch zero-padded so that etcd can
/// compare two records byte-wise (an older epoch sorts first).
pub fn encode_epoch(epoch: u64, primary: &str) -> String {
    format!("{} {primary}", epoch_prefix(epoch))
}

/// The part of an encoded record that orders it: the padded epoch.
pub fn epoch_prefix(epoch: u64) -> String {
    format!("{epoch:020}")
}

pub fn decode_epoch(value: &[u8]) -> Option<EpochRecord> {
    let text = std::str::from_utf8(value).ok()?;
    let (epoch, primary) = text.split_once(' ')?;
    let epoch = epoch.parse().ok().filter(|e| *e > 0)?;
    (!primary.trim().is_empty()).then(|| EpochRecord {
        epoch,
        primary: primary.to_owned(),
    })
}

/// One proxy's report, as its peers read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerReport {
    pub name: String,
    /// The epoch it routes by.
    pub epoch: u64,
    /// It has lost that epoch's primary (no answer as a primary).
    pub primary_lost: bool,
}

/// What this proxy reports of itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerView {
    pub epoch: u64,
    pub primary_lost: bool,
}

impl PeerView {
    pub fn encode(self) -> String {
        let seen = if self.primary_lost { "lost" } else { "sees" };
        format!("{} {seen}", self.epoch)
    }

    pub fn decode(value: &[u8]) -> Option<PeerView> {
        let (epoch, seen) = std::str::from_utf8(value).ok()?.split_once(' ')?;
        let primary_lost = match seen {
            "lost" => true,
            "sees" => false,
            _ => return None,
        };
        Some(PeerView {
            epoch: epoch.parse().ok()?,
            primary_lost,
        })
    }
}

/// Whether a majority of the live proxies report the primary of `epoch`
/// lost. A proxy on another epoch counts as live but not as agreeing: what
/// it lost is not this epoch's primary.
pub fn agreed_down(reports: &[PeerReport], epoch: u64) -> bool {
    let lost = reports
        .iter()
        .filter(|r| r.epoch == epoch && r.primary_lost)
        .count();
    !reports.is_empty() && lost * 2 > reports.len()
}

/// What the etcd session tells the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum News {
    Mandate(Mandate),
    /// The epoch record as stored now.
    Learned(EpochRecord),
    /// etcd has been out of reach for longer than `etcd_grace_ms` (true),
    /// or answers again (false).
    Lost(bool),
    /// An operator command run on another proxy, for the leader to carry
    /// out; its answer goes back through [`Relay::reply`].
    Request {
        from: String,
        nonce: u64,
        command: Command,
    },
}

/// How operator commands run on a proxy that does not lead reach the one
/// that does, and how its answer comes back.
#[async_trait]
pub trait Relay: Send + Sync {
    /// Hands `command` (as [`encode_command`] wrote it) to the leader and
    /// waits for its answer.
    async fn forward(&self, command: String) -> Result<String, String>;
    /// The leader's answer to request `nonce` of proxy `to`.
    async fn reply(&self, to: String, nonce: u64, answer: Result<String, String>);
}

/// An operator command as sent to the leader; `None` for commands each
/// proxy runs itself (RELOAD's node list and weights).
pub fn encode_command(command: &Command) -> Option<String> {
    match command {
        Command::Switchover(None) => Some("switchover".to_owned()),
        Command::Switchover(Some(node)) => Some(format!("switchover {node}")),
        Command::Rejoin(node) => Some(format!("rejoin {node}")),
        Command::Nodes(_) => None,
    }
}

pub fn decode_command(text: &str) -> Option<Command> {
    match text.split_once(' ') {
        None if text == "switchover" => Some(Command::Switchover(None)),
        Some(("switchover", node)) => Some(Command::Switchover(Some(node.to_owned()))),
        Some(("rejoin", node)) => Some(Command::Rejoin(node.to_owned())),
        _ => None,
    }
}

/// A request or a reply as stored: the nonce that pairs them, then the rest.
pub fn split_nonce(value: &[u8]) -> Option<(u64, &str)> {
    let (nonce, rest) = std::str::from_utf8(value).ok()?.split_once(' ')?;
    Some((nonce.parse().ok()?, rest))
}

pub fn encode_answer(nonce: u64, answer: &Result<String, String>) -> String {
    match answer {
        Ok(text) => format!("{nonce} ok {text}"),
        Err(text) => format!("{nonce} err {text}"),
    }
}

/// The answer to request `nonce`, if `value` is it.
pub fn decode_answer(value: &[u8], nonce: u64) -> Option<Result<String, String>> {
    let (_, rest) = split_nonce(value).filter(|(n, _)| *n == nonce)?;
    match rest.split_once(' ').unwrap_or((rest, "")) {
        ("ok", text) => Some(Ok(text.to_owned())),
        ("err", text) => Some(Err(text.to_owned())),
        _ => None,
    }
}

/// Where the console reads [`Peers`] from.
pub type PeersWatch = tokio::sync::watch::Receiver<Peers>;

/// What the proxies last said, as one proxy read it: `SHOW PEERS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peers {
    /// This proxy's name.
    pub me: String,
    /// The proxy holding the leader key, if one does.
    pub leader: Option<String>,
    /// This proxy holds the leader key, on its own live lease.
    pub leading: bool,
    pub reports: Vec<PeerReport>,
    /// etcd answered the last round.
    pub reachable: bool,
    /// etcd has not answered for longer than `failover.etcd_grace_ms`.
    pub lost: bool,
}

impl Peers {
    /// What this proxy may decide, from what it read.
    pub fn mandate(&self, epoch: u64) -> Mandate {
        if !self.reachable || !self.leading {
            return Mandate::NONE;
        }
        Mandate {
            lead: true,
            agreed_down: agreed_down(&self.reports, epoch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, epoch: u64, primary_lost: bool) -> PeerReport {
        PeerReport {
            name: name.into(),
            epoch,
            primary_lost,
        }
    }

    #[test]
    fn epoch_records_round_trip_and_order_byte_wise() {
        let a = encode_epoch(9, "pg 1");
        let b = encode_epoch(10, "pg0");
        assert!(a < b, "{a} sorts before {b}");
        assert!(a.as_str() < epoch_prefix(10).as_str());
        assert!(
            b.as_str() >= epoch_prefix(10).as_str(),
            "an equal epoch is not older"
        );
        assert_eq!(
            decode_epoch(a.as_bytes()),
            Some(EpochRecord {
                epoch: 9,
                primary: "pg 1".into()
            })
        );
        for bad in ["", "7", "x pg1", "0 pg1", "3  ", "3 "] {
            assert_eq!(decode_epoch(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn forwarded_commands_and_answers_round_trip() {
        for command in [
            Command::Switchover(None),
            Command::Switchover(Some("pg 2".into())),
            Command::Rejoin("pg1".into()),
        ] {
            let text = encode_command(&command).unwrap();
            assert_eq!(decode_command(&text), Some(command));
        }
        assert_eq!(encode_command(&Command::Nodes(Vec::new())), None);
        assert_eq!(decode_command("drop everything"), None);
        assert_eq!(split_nonce(b"42 switchover"), Some((42, "switchover")));
        for answer in [Ok("switchover started".to_owned()), Err("no".to_owned())] {
            let stored = encode_answer(7, &answer);
            assert_eq!(decode_answer(stored.as_bytes(), 7), Some(answer));
            assert_eq!(
                decode_answer(stored.as_bytes(), 8),
                None,
                "another request's"
            );
        }
    }

    #[test]
    fn peer_views_round_trip() {
        for view in [
            PeerView {
                epoch: 3,
                primary_lost: true,
            },
            PeerView::default(),
        ] {
            assert_eq!(PeerView::decode(view.encode().as_bytes()), Some(view));
        }
        assert_eq!(PeerView::decode(b"3 maybe"), None);
        assert_eq!(PeerView::decode(b"x lost"), None);
    }

    #[test]
    fn a_majority_of_live_reports_must_have_lost_the_primary() {
        let two_of_three = [
            report("a", 2, true),
            report("b", 2, true),
            report("c", 2, false),
        ];
        assert!(agreed_down(&two_of_three, 2));
        let one_of_two = [report("a", 2, true), report("b", 2, false)];
        assert!(!agreed_down(&one_of_two, 2), "a tie is no majority");
        let stale = [report("a", 2, true), report("b", 1, true)];
        assert!(!agreed_down(&stale, 2), "b lost another epoch's primary");
        assert!(agreed_down(&[report("a", 2, true)], 2));
        assert!(!agreed_down(&[], 2));
    }

    #[test]
    fn only_the_reachable_leader_gets_a_mandate() {
        let mut peers = Peers {
            me: "a".into(),
            leader: Some("a".into()),
            leading: true,
            reports: vec![report("a", 1, true), report("b", 1, true)],
            reachable: true,
            lost: false,
        };
        assert_eq!(peers.mandate(1), Mandate::ALONE);
        assert_eq!(
            peers.mandate(2),
            Mandate {
                lead: true,
                agreed_down: false
            }
        );
        peers.reachable = false;
        assert_eq!(peers.mandate(1), Mandate::NONE);
        peers.reachable = true;
        peers.leader = Some("b".into());
        peers.leading = false;
        assert_eq!(peers.mandate(1), Mandate::NONE);
    }
}

//! Which replicas are fresh enough for a read. A [`Need`] is worked out
//! from the read's consistency level, what the session chose for its reads
//! ([`ReadChoice`]), its own writes and the config; [`Need::admits`] judges
//! one node of the published topology against it.

use std::time::Duration;

use crate::config::{Consistency, ConsistencyConfig, PartitionMode};
use crate::topology::{Lsn, NodeState};

/// What a session has chosen for its reads with `SET palisade.*` (defaults:
/// the config's level, the config's bounds, no floor). The frontend parses
/// the settings; routing only reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadChoice {
    /// `None`: the config's `consistency.level`.
    pub level: Option<Consistency>,
    /// A per-session bound on staleness, used by `bounded` reads in place
    /// of the config's `max_lag_ms`.
    pub max_staleness: Option<Duration>,
    /// Reads wait until a replica has replayed this far.
    pub min_lsn: Option<Lsn>,
}

/// Where the commits acknowledged through the proxy stand in the WAL, as a
/// read arriving now sees it (the frontend's commit log says).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CommitPosition {
    /// Nothing has been committed through the proxy.
    #[default]
    Nothing,
    /// Every acknowledged commit is at or before this position.
    At(Lsn),
    /// Commits were acknowledged since the last sample of the primary's
    /// position: a sample taken once the count reached this is needed.
    Unsampled(u64),
}

impl CommitPosition {
    /// The position, when known.
    pub fn lsn(self) -> Option<Lsn> {
        match self {
            CommitPosition::At(lsn) => Some(lsn),
            CommitPosition::Nothing | CommitPosition::Unsampled(_) => None,
        }
    }
}

/// Where the writes a read may have to see are in the WAL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// At or past the session's own last located write (`causal`).
    pub session: Option<Lsn>,
    /// At or past every commit acknowledged through the proxy before the
    /// read arrived (`read-after-commit`).
    pub proxy: Option<Lsn>,
}

/// What a read asks of the replica that serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub level: Consistency,
    /// It must have replayed at least this far.
    pub min_lsn: Option<Lsn>,
    /// It must be known to be at most this far behind (`bounded`).
    pub max_lag: Option<(u64, Duration)>,
    /// A replica that is not streaming from its primary may serve it.
    pub unstreamed_ok: bool,
}

impl Need {
    /// The need of a read at `level` for a session that chose `choice`,
    /// with the writes it may have to see at `written`.
    pub fn of(
        level: Consistency,
        choice: &ReadChoice,
        written: Written,
        config: &ConsistencyConfig,
    ) -> Need {
        let causal = match level {
            Consistency::Causal => written.session,
            Consistency::ReadAfterCommit => written.proxy.max(written.session),
            _ => None,
        };
        let max_lag = (level == Consistency::Bounded).then(|| {
            let ms = choice
                .max_staleness
                .unwrap_or(Duration::from_millis(config.max_lag_ms));
            (config.max_lag_bytes, ms)
        });
        Need {
            level,
            min_lsn: causal.max(choice.min_lsn),
            max_lag,
            unstreamed_ok: config.partition_mode == PartitionMode::Available,
        }
    }

    /// `node` (a healthy replica) may serve the read.
    pub fn admits(&self, node: &NodeState) -> bool {
        self.admits_but_lsn(node) && self.lsn_reached(node)
    }

    /// `node` meets every need but the replay position: a replica worth
    /// asking again, since its published position may be old.
    pub fn admits_but_lsn(&self, node: &NodeState) -> bool {
        let r = &node.replication;
        // A replica that is not streaming is of unknown staleness, unless
        // the read only needs writes it is shown to have replayed.
        let fresh_by_lsn = self.min_lsn.is_some()
            && matches!(
                self.level,
                Consistency::Causal | Consistency::ReadAfterCommit
            )
            && self.lsn_reached(node);
        if self.level == Consistency::Strong || !(r.streaming || self.unstreamed_ok || fresh_by_lsn)
        {
            return false;
        }
        match self.max_lag {
            None => true,
            Some((bytes, time)) => {
                r.lag_bytes.is_some_and(|b| b <= bytes)
                    && r.lag_ms
                        .is_some_and(|ms| u128::from(ms) <= time.as_millis())
            }
        }
    }

    /// `node` meets every need but perhaps the replay position, and is
    /// worth asking for it: shown past it already, or last shown at most
    /// `wait` behind the primary (a replica that far behind has likely
    /// replayed the position since; one further behind is not waited for).
    pub fn worth_waiting_for(&self, node: &NodeState, wait: Duration) -> bool {
        self.admits_but_lsn(node)
            && (self.lsn_reached(node)
                || node
                    .replication
                    .lag_ms
                    .is_some_and(|ms| u128::from(ms) <= wait.as_millis()))
    }

    fn lsn_reached(&self, node: &NodeState) -> bool {
        match self.min_lsn {
            None => true,
            Some(want) => node.replication.lsn.is_some_and(|at| at >= want),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Role;

    fn replica(lsn: u64, streaming: bool, lag: Option<(u64, u64)>) -> NodeState {
        crate::route::tests::node(Role::Replica, true, lsn, streaming, lag)
    }

    fn need(level: Consistency, choice: ReadChoice, write: Option<u64>) -> Need {
        let config = ConsistencyConfig {
            max_lag_bytes: 1000,
            max_lag_ms: 500,
            ..ConsistencyConfig::default()
        };
        let written = Written {
            session: write.map(Lsn),
            proxy: None,
        };
        Need::of(level, &choice, written, &config)
    }

    #[test]
    fn each_level_admits_what_it_promises() {
        let fresh = replica(100, true, Some((0, 0)));
        let lagging = replica(50, true, Some((5000, 3000)));
        let unknown_lag = replica(100, true, None);
        let cut_off = replica(100, false, None);
        let none = ReadChoice::default();

        let strong = need(Consistency::Strong, none, None);
        assert!(!strong.admits(&fresh), "strong reads never use a replica");

        let eventual = need(Consistency::Eventual, none, Some(200));
        assert!(eventual.admits(&fresh) && eventual.admits(&lagging));
        assert!(eventual.admits(&unknown_lag));
        assert!(!eventual.admits(&cut_off), "consistent partition mode");

        let bounded = need(Consistency::Bounded, none, Some(200));
        assert!(bounded.admits(&fresh));
        assert!(!bounded.admits(&lagging) && !bounded.admits(&unknown_lag));
        let loose = ReadChoice {
            max_staleness: Some(Duration::from_secs(5)),
            ..none
        };
        let bounded_loose = need(Consistency::Bounded, loose, None);
        assert!(
            !bounded_loose.admits(&lagging),
            "bytes still bound it: {bounded_loose:?}"
        );
        assert!(bounded_loose.admits(&replica(50, true, Some((900, 3000)))));

        let causal = need(Consistency::Causal, none, Some(100));
        assert!(causal.admits(&fresh), "replayed exactly the write");
        assert!(!causal.admits(&lagging));
        assert!(causal.admits_but_lsn(&lagging), "worth asking again");
        assert!(need(Consistency::Causal, none, None).admits(&lagging));
    }

    #[test]
    fn read_after_commit_needs_every_acknowledged_commit() {
        let config = ConsistencyConfig::default();
        let none = ReadChoice::default();
        let written = Written {
            session: Some(Lsn(70)),
            proxy: Some(Lsn(90)),
        };
        let n = Need::of(Consistency::ReadAfterCommit, &none, written, &config);
        assert_eq!(n.min_lsn, Some(Lsn(90)));
        assert!(!n.admits(&replica(80, true, Some((0, 0)))));
        assert!(n.admits(&replica(90, true, Some((0, 0)))));
        let causal = Need::of(Consistency::Causal, &none, written, &config);
        assert_eq!(causal.min_lsn, Some(Lsn(70)), "causal: the session's own");
        for level in [
            Consistency::Bounded,
            Consistency::Eventual,
            Consistency::Strong,
        ] {
            let n = Need::of(level, &none, written, &config);
            assert_eq!(n.min_lsn, None, "{level:?} waits for no write");
        }
        let nothing = Need::of(
            Consistency::ReadAfterCommit,
            &none,
            Written::default(),
            &config,
        );
        assert!(nothing.admits(&replica(10, true, Some((5000, 3000)))));
    }

    #[test]
    fn a_floor_from_another_connection_binds_every_level_but_strong() {
        let choice = ReadChoice {
            min_lsn: Some(Lsn(80)),
            ..ReadChoice::default()
        };
        let behind = replica(50, true, Some((0, 0)));
        let ahead = replica(90, true, Some((0, 0)));
        for level in [
            Consistency::Causal,
            Consistency::Bounded,
            Consistency::Eventual,
        ] {
            let n = need(level, choice, None);
            assert!(!n.admits(&behind) && n.admits(&ahead), "{level:?}");
        }
        // The later of the session's write and the floor wins.
        assert_eq!(
            need(Consistency::Causal, choice, Some(70)).min_lsn,
            Some(Lsn(80))
        );
        assert_eq!(
            need(Consistency::Causal, choice, Some(95)).min_lsn,
            Some(Lsn(95))
        );
        assert_eq!(
            need(Consistency::Eventual, choice, Some(95)).min_lsn,
            Some(Lsn(80))
        );
    }

    #[test]
    fn a_cut_off_replica_serves_reads_it_is_shown_fresh_enough_for() {
        let cut_off = replica(100, false, None);
        let none = ReadChoice::default();
        assert!(need(Consistency::Causal, none, Some(90)).admits(&cut_off));
        assert!(!need(Consistency::Causal, none, Some(110)).admits(&cut_off));
        assert!(
            !need(Consistency::Causal, none, None).admits(&cut_off),
            "nothing to prove it fresh by"
        );
        assert!(!need(Consistency::Eventual, none, Some(90)).admits(&cut_off));
        assert!(!need(Consistency::Bounded, none, Some(90)).admits(&cut_off));
        let config = ConsistencyConfig::default();
        let written = Written {
            session: None,
            proxy: Some(Lsn(100)),
        };
        assert!(Need::of(Consistency::ReadAfterCommit, &none, written, &config).admits(&cut_off));
    }

    #[test]
    fn available_partition_mode_keeps_cut_off_replicas() {
        let config = ConsistencyConfig {
            partition_mode: PartitionMode::Available,
            ..ConsistencyConfig::default()
        };
        let cut_off = replica(100, false, None);
        let none = ReadChoice::default();
        let written = Written {
            session: Some(Lsn(90)),
            proxy: None,
        };
        let nothing = Written::default();
        assert!(Need::of(Consistency::Eventual, &none, nothing, &config).admits(&cut_off));
        assert!(Need::of(Consistency::Causal, &none, written, &config).admits(&cut_off));
        assert!(
            !Need::of(Consistency::Bounded, &none, nothing, &config).admits(&cut_off),
            "its lag is unknown"
        );
    }

    #[test]
    fn only_replicas_close_behind_are_worth_waiting_for() {
        let causal = need(Consistency::Causal, ReadChoice::default(), Some(100));
        let wait = Duration::from_millis(50);
        let shown_past = replica(120, true, Some((0, 0)));
        let just_behind = replica(90, true, Some((10, 20)));
        let far_behind = replica(10, true, Some((90, 5_000)));
        let unknown = replica(90, true, None);
        let cut_off = replica(90, false, Some((10, 20)));
        assert!(causal.worth_waiting_for(&shown_past, wait));
        assert!(causal.worth_waiting_for(&just_behind, wait));
        assert!(!causal.worth_waiting_for(&far_behind, wait));
        assert!(!causal.worth_waiting_for(&unknown, wait));
        assert!(
            !causal.worth_waiting_for(&cut_off, wait),
            "partition mode still applies"
        );
    }
}

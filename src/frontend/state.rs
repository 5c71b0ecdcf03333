//! The session's own state, with one owner: session parameters, prepared
//! statements (one record each: a connection only notes which names and
//! fingerprints it holds), pins, what the session chose for its reads, and
//! where its writes are in the WAL. Pure bookkeeping: the relay feeds it
//! each answered request ([`SessionState::answered`]), and asks it what a
//! server connection must be told before it can serve the session.
//!
//! Settings follow PostgreSQL's transaction rules: a SET inside a
//! transaction that rolls back (or fails) is undone, SET LOCAL ends with
//! its transaction and is never replayed.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::batch::Plan;
use super::link::Sent;
use crate::backend::replay;
use crate::backend::Carried;
use crate::classify::{Classification, PinReason, SessionEffect, SettingValue};
use crate::protocol::TxnStatus;
use crate::route::ReadChoice;
use crate::topology::Lsn;

/// A prepared statement as the client created it.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The message that creates it again: a Parse frame, or a Query frame
    /// holding the SQL `PREPARE`.
    pub source: Bytes,
    /// Tells two definitions under one name apart.
    pub fingerprint: u64,
    pub classification: Arc<Classification>,
}

#[derive(Debug, Default)]
pub struct SessionState {
    /// Session parameters in the order they were first set: name → SQL value.
    settings: Vec<(String, SettingValue)>,
    /// Prepared statements by name (the unnamed one is "").
    statements: HashMap<String, Prepared, foldhash::fast::RandomState>,
    pins: Vec<PinReason>,
    /// The settings when the open transaction began, to restore on rollback.
    snapshot: Option<Vec<(String, SettingValue)>>,
    /// Open savepoints, innermost last, with the settings when each was made.
    savepoints: Vec<(String, Vec<(String, SettingValue)>)>,
    txn_failed: bool,
    /// Ever held state a server connection would have to carry.
    stateful: bool,
    /// Function DDL succeeded: the VOLATILE list must be reloaded.
    catalog_changed: bool,
    /// The open transaction has run nothing but its BEGIN, this SQL: it
    /// may still begin again on another node.
    begun_only: Option<String>,
    /// What the session chose with `SET palisade.*`.
    pub reads: ReadChoice,
    /// At or past the session's last write that has been located.
    pub write_lsn: Option<Lsn>,
    /// Writes not yet located in the WAL.
    pub writes: Writes,
}

/// What the session has written that its causal reads have not located in
/// the WAL yet.
#[derive(Debug, Default)]
pub struct Writes {
    /// Something may have committed since the session's write position
    /// was last learned.
    pub unlocated: bool,
    /// The open transaction has written: `unlocated` once it ends, unless
    /// it rolls back.
    in_transaction: bool,
    /// The transaction status of the last ReadyForQuery.
    last_status: TxnStatus,
}

impl Writes {
    /// `sent` was answered with transaction status `status`; `true` when
    /// that answer acknowledges a commit of something it wrote.
    fn note(&mut self, sent: &Sent, status: TxnStatus) -> bool {
        let before = std::mem::replace(&mut self.last_status, status);
        let mut committed = false;
        if sent.on_primary {
            let opens = matches!(sent.effects.first(), Some(SessionEffect::Begin { .. }));
            let commits = sent
                .effects
                .iter()
                .any(|e| matches!(e, SessionEffect::Commit | SessionEffect::Chain));
            if (before != TxnStatus::Idle || opens) && !commits {
                self.in_transaction = true;
            } else {
                committed = true;
            }
        }
        if status == TxnStatus::Idle {
            committed |= std::mem::take(&mut self.in_transaction) && !sent.rolls_back;
        }
        self.unlocated |= committed;
        committed
    }
}

impl SessionState {
    pub fn settings(&self) -> &[(String, SettingValue)] {
        &self.settings
    }

    pub fn is_pinned(&self) -> bool {
        !self.pins.is_empty()
    }

    /// Whether connections this session used carry its state (and so must
    /// be reset before anyone else uses them).
    pub fn is_stateful(&self) -> bool {
        self.stateful
    }

    pub fn statement(&self, name: &str) -> Option<&Prepared> {
        self.statements.get(name)
    }

    /// `default_transaction_read_only` as the session has set it.
    pub fn read_only_default(&self) -> bool {
        self.settings
            .iter()
            .find(|(n, _)| n == "default_transaction_read_only")
            .is_some_and(|(_, v)| is_true(v.unquoted()))
    }

    /// `default_transaction_isolation` as the session has set it is
    /// serializable.
    pub fn serializable_default(&self) -> bool {
        self.settings
            .iter()
            .find(|(n, _)| n == "default_transaction_isolation")
            .is_some_and(|(_, v)| v.unquoted().eq_ignore_ascii_case("serializable"))
    }

    /// The BEGIN of the open transaction when that is all it has run.
    pub fn begun_only(&self) -> Option<&str> {
        self.begun_only.as_deref()
    }

    /// A request that executes something is sent: `begin` when it is a
    /// BEGIN alone sent between transactions. Anything else means the open
    /// transaction has run more than its BEGIN.
    pub fn sending(&mut self, begin: Option<String>) {
        self.begun_only = begin;
    }

    /// Takes and clears the "function DDL ran" flag.
    pub fn take_catalog_changed(&mut self) -> bool {
        std::mem::take(&mut self.catalog_changed)
    }

    /// A prepared statement the client just created (named Parse or SQL PREPARE).
    pub fn prepare(&mut self, name: String, prepared: Prepared) {
        if !name.is_empty() {
            self.stateful = true;
        }
        self.statements.insert(name, prepared);
    }

    /// The server refused a Parse: forget it, unless it was redefined since.
    pub fn unprepare(&mut self, name: &str, fingerprint: u64) {
        if self
            .statements
            .get(name)
            .is_some_and(|p| p.fingerprint == fingerprint)
        {
            self.statements.remove(name);
        }
    }

    pub fn close(&mut self, name: &str) {
        self.statements.remove(name);
    }

    /// Applied as the statement is sent: a pin holds from the statement
    /// that creates it, even if that statement then fails.
    pub fn pin(&mut self, reason: PinReason) {
        self.stateful = true;
        if !self.pins.contains(&reason) {
            self.pins.push(reason);
        }
    }

    /// One request answered on `conn` with `status`: settles what it
    /// changed, here and in what `conn` is known to hold. `true` when the
    /// answer acknowledges a commit of something the session wrote.
    pub fn answered(&mut self, sent: &Sent, status: TxnStatus, conn: &mut Carried) -> bool {
        let committed = self.writes.note(sent, status);
        if sent.failed || status != TxnStatus::InTransaction {
            self.begun_only = None;
        }
        if sent.failed {
            // Statements the server did not confirm do not exist.
            for (name, fingerprint) in sent.parsed.iter().skip(sent.parse_ok) {
                if conn.prepared.get(name) == Some(fingerprint) {
                    conn.prepared.remove(name);
                }
                self.unprepare(name, *fingerprint);
            }
        }
        if sent.effects.is_empty() && !sent.failed && status == TxnStatus::InTransaction {
            return committed;
        }
        self.settle(&sent.effects, sent.failed, status);
        if !sent.failed {
            for effect in &sent.effects {
                match effect {
                    SessionEffect::Deallocate { name: Some(name) } => {
                        conn.prepared.remove(name);
                    }
                    SessionEffect::Deallocate { name: None } => conn.prepared.clear(),
                    _ => {}
                }
            }
        }
        if conn.settings != self.settings {
            conn.settings.clone_from(&self.settings);
        }
        committed
    }

    /// Applies the effects of one answered request. `failed` says the
    /// server reported an error for it; `status` is the transaction status
    /// of its ReadyForQuery.
    pub fn settle(&mut self, effects: &[SessionEffect], failed: bool, status: TxnStatus) {
        if !failed {
            for effect in effects {
                self.apply(effect);
            }
        }
        match status {
            TxnStatus::Failed => self.txn_failed = true,
            TxnStatus::Idle => {
                if let Some(snapshot) = self.snapshot.take() {
                    if self.txn_failed {
                        self.settings = snapshot;
                    }
                }
                self.txn_failed = false;
                self.savepoints.clear();
            }
            TxnStatus::InTransaction => {}
        }
    }

    fn apply(&mut self, effect: &SessionEffect) {
        match effect {
            SessionEffect::Begin { .. } => {
                if self.snapshot.is_none() {
                    self.snapshot = Some(self.settings.clone());
                }
            }
            SessionEffect::Commit => {
                let snapshot = self.snapshot.take();
                if self.txn_failed {
                    // COMMIT of a failed transaction rolls it back.
                    if let Some(s) = snapshot {
                        self.settings = s;
                    }
                }
            }
            SessionEffect::Rollback => {
                if let Some(s) = self.snapshot.take() {
                    self.settings = s;
                }
            }
            SessionEffect::Chain => {
                self.snapshot = Some(self.settings.clone());
            }
            SessionEffect::Savepoint { name } => {
                self.savepoints.push((name.clone(), self.settings.clone()));
            }
            SessionEffect::RollbackTo { name } => {
                // The savepoint stays; what came after it is undone.
                if let Some(i) = self.savepoints.iter().rposition(|(n, _)| n == name) {
                    self.savepoints.truncate(i + 1);
                    self.settings.clone_from(&self.savepoints[i].1);
                    self.txn_failed = false;
                }
            }
            SessionEffect::Release { name } => {
                if let Some(i) = self.savepoints.iter().rposition(|(n, _)| n == name) {
                    self.savepoints.truncate(i);
                }
            }
            SessionEffect::Set { local: true, .. } => {}
            SessionEffect::Set { name, value, .. } => {
                self.stateful = true;
                match self.settings.iter_mut().find(|(n, _)| n == name) {
                    Some(entry) => entry.1.clone_from(value),
                    None => self.settings.push((name.clone(), value.clone())),
                }
            }
            SessionEffect::Reset { name: Some(name) } => self.settings.retain(|(n, _)| n != name),
            SessionEffect::Reset { name: None } => self.settings.clear(),
            SessionEffect::Deallocate { name: Some(name) } => {
                self.statements.remove(name);
            }
            SessionEffect::Deallocate { name: None } => {
                self.statements.retain(|name, _| name.is_empty());
            }
            SessionEffect::Unpin(reason) => self.pins.retain(|p| p != reason),
            SessionEffect::CatalogFunctionsChanged => self.catalog_changed = true,
            // Pins are taken when sent; PREPARE is recorded with its text
            // when sent; routing alone cares where a transaction runs.
            SessionEffect::Pin(_)
            | SessionEffect::Prepare { .. }
            | SessionEffect::TransactionNeedsPrimary => {}
        }
    }
}

/// What a connection must be told before it can serve the batch at hand.
#[derive(Debug)]
pub struct Catchup<'a> {
    /// The settings delta, when its settings differ from the session's.
    pub settings: Option<String>,
    /// Names the batch prepares anew that the connection still holds.
    pub stale: Vec<&'a str>,
    /// Statements the batch uses that the connection lacks.
    pub statements: Vec<replay::Statement<'a>>,
}

impl<'a> Catchup<'a> {
    /// What `conn` lacks of `state` for `plan`.
    pub fn of(state: &'a SessionState, plan: &'a Plan, conn: &Carried) -> Catchup<'a> {
        let settings = if conn.settings != state.settings() {
            settings_delta(&conn.settings, state.settings())
        } else {
            None
        };
        // A view of the session's own state sees every statement it has
        // (but those the batch itself prepares anew).
        let shown = state.statements.keys().filter(|name| {
            plan.shows_session
                && !name.is_empty()
                && !plan.needs.contains(name)
                && plan.parsed(name).is_none()
        });
        let statements = plan
            .needs
            .iter()
            .chain(shown)
            .filter_map(|name| {
                let p = state.statement(name)?;
                (conn.prepared.get(name) != Some(&p.fingerprint)).then_some(replay::Statement {
                    name,
                    fingerprint: p.fingerprint,
                    source: &p.source,
                })
            })
            .collect();
        let stale = plan
            .parsed
            .iter()
            .filter(|(name, _)| !name.is_empty() && conn.prepared.contains_key(name))
            .map(|(name, _)| name.as_str())
            .collect();
        Catchup {
            settings,
            stale,
            statements,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.settings.is_none() && self.stale.is_empty() && self.statements.is_empty()
    }
}

/// The SQL that turns a connection's `current` settings into `wanted`,
/// or `None` when they already agree.
pub fn settings_delta(
    current: &[(String, SettingValue)],
    wanted: &[(String, SettingValue)],
) -> Option<String> {
    let mut sql = String::new();
    for (name, _) in current {
        if !wanted.iter().any(|(n, _)| n == name) {
            sql.push_str(&format!("RESET {name};"));
        }
    }
    for (name, value) in wanted {
        if current.iter().any(|(n, v)| n == name && v == value) {
            continue;
        }
        match value {
            SettingValue::Sql(value) => sql.push_str(&format!("SET {name} TO {value};")),
            SettingValue::Text(text) => sql.push_str(&format!(
                "SELECT pg_catalog.set_config({}, {}, false);",
                literal(name),
                literal(text)
            )),
        }
    }
    (!sql.is_empty()).then_some(sql)
}

/// A SQL string literal holding `text`, whatever `standard_conforming_strings` says.
fn literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// PostgreSQL's spellings of a true boolean setting.
fn is_true(value: &str) -> bool {
    let v = value.to_ascii_lowercase();
    matches!(v.as_str(), "on" | "true" | "yes" | "1" | "t" | "y")
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: TxnStatus = TxnStatus::Idle;
    const T: TxnStatus = TxnStatus::InTransaction;
    const E: TxnStatus = TxnStatus::Failed;

    fn sql(value: &str) -> SettingValue {
        SettingValue::Sql(value.into())
    }

    fn set(name: &str, value: &str) -> SessionEffect {
        SessionEffect::Set {
            name: name.into(),
            value: sql(value),
            local: false,
        }
    }

    fn names(state: &SessionState) -> Vec<(&str, &str)> {
        state
            .settings()
            .iter()
            .map(|(n, v)| match v {
                SettingValue::Sql(v) | SettingValue::Text(v) => (n.as_str(), v.as_str()),
            })
            .collect()
    }

    #[test]
    fn sets_and_resets_outside_transactions_stick() {
        let mut s = SessionState::default();
        s.settle(
            &[set("work_mem", "'3MB'"), set("search_path", "a, b")],
            false,
            I,
        );
        s.settle(&[set("work_mem", "'4MB'")], false, I);
        assert_eq!(names(&s), [("work_mem", "'4MB'"), ("search_path", "a, b")]);
        assert!(s.is_stateful());
        s.settle(
            &[SessionEffect::Reset {
                name: Some("work_mem".into()),
            }],
            false,
            I,
        );
        assert_eq!(names(&s), [("search_path", "a, b")]);
        s.settle(&[SessionEffect::Reset { name: None }], false, I);
        assert!(names(&s).is_empty());
    }

    #[test]
    fn a_failed_request_changes_nothing() {
        let mut s = SessionState::default();
        s.settle(&[set("work_mem", "'bogus'")], true, I);
        assert!(names(&s).is_empty());
    }

    #[test]
    fn set_local_is_not_kept() {
        let mut s = SessionState::default();
        let local = SessionEffect::Set {
            name: "work_mem".into(),
            value: sql("'9MB'"),
            local: true,
        };
        s.settle(
            &[SessionEffect::Begin { read_only: false }, local],
            false,
            T,
        );
        s.settle(&[SessionEffect::Commit], false, I);
        assert!(names(&s).is_empty());
    }

    #[test]
    fn rollback_undoes_sets_made_in_the_transaction() {
        let mut s = SessionState::default();
        s.settle(&[set("work_mem", "'1MB'")], false, I);
        s.settle(&[SessionEffect::Begin { read_only: false }], false, T);
        s.settle(&[set("work_mem", "'2MB'")], false, T);
        s.settle(&[SessionEffect::Rollback], false, I);
        assert_eq!(names(&s), [("work_mem", "'1MB'")]);
        // In one string too.
        s.settle(
            &[
                SessionEffect::Begin { read_only: false },
                set("work_mem", "'5MB'"),
                SessionEffect::Rollback,
            ],
            false,
            I,
        );
        assert_eq!(names(&s), [("work_mem", "'1MB'")]);
    }

    #[test]
    fn commit_keeps_sets_unless_the_transaction_failed() {
        let mut s = SessionState::default();
        s.settle(&[SessionEffect::Begin { read_only: false }], false, T);
        s.settle(&[set("work_mem", "'2MB'")], false, T);
        s.settle(&[SessionEffect::Commit], false, I);
        assert_eq!(names(&s), [("work_mem", "'2MB'")]);

        s.settle(&[SessionEffect::Begin { read_only: false }], false, T);
        s.settle(&[set("work_mem", "'8MB'")], false, T);
        s.settle(&[], true, E);
        s.settle(&[SessionEffect::Commit], false, I);
        assert_eq!(names(&s), [("work_mem", "'2MB'")]);
    }

    #[test]
    fn rollback_to_a_savepoint_undoes_sets_made_after_it() {
        let mut s = SessionState::default();
        let sp = |name: &str| SessionEffect::Savepoint { name: name.into() };
        s.settle(&[SessionEffect::Begin { read_only: false }], false, T);
        s.settle(&[set("work_mem", "'1MB'"), sp("a")], false, T);
        s.settle(&[set("work_mem", "'2MB'"), sp("b")], false, T);
        s.settle(&[set("work_mem", "'3MB'")], false, T);
        s.settle(&[], true, E);
        s.settle(&[SessionEffect::RollbackTo { name: "a".into() }], false, T);
        assert_eq!(names(&s), [("work_mem", "'1MB'")]);
        s.settle(&[SessionEffect::Release { name: "a".into() }], false, T);
        s.settle(&[SessionEffect::Commit], false, I);
        assert_eq!(
            names(&s),
            [("work_mem", "'1MB'")],
            "the recovered transaction commits"
        );
    }

    #[test]
    fn pins_hold_until_released() {
        let mut s = SessionState::default();
        s.pin(PinReason::Listen);
        s.pin(PinReason::TempObject);
        s.settle(&[SessionEffect::Unpin(PinReason::Listen)], false, I);
        assert!(s.is_pinned());
        s.settle(&[SessionEffect::Unpin(PinReason::TempObject)], false, I);
        assert!(!s.is_pinned());
    }

    #[test]
    fn read_only_default_follows_the_setting() {
        let mut s = SessionState::default();
        assert!(!s.read_only_default());
        s.settle(&[set("default_transaction_read_only", "'on'")], false, I);
        assert!(s.read_only_default());
        s.settle(&[set("default_transaction_read_only", "false")], false, I);
        assert!(!s.read_only_default());
    }

    #[test]
    fn serializable_default_follows_the_setting() {
        let mut s = SessionState::default();
        assert!(!s.serializable_default());
        s.settle(
            &[set("default_transaction_isolation", "'SERIALIZABLE'")],
            false,
            I,
        );
        assert!(s.serializable_default());
        s.settle(
            &[set("default_transaction_isolation", "'repeatable read'")],
            false,
            I,
        );
        assert!(!s.serializable_default());
    }

    #[test]
    fn delta_resets_what_is_gone_and_sets_what_differs() {
        let current = vec![("a".to_owned(), sql("1")), ("b".to_owned(), sql("2"))];
        let wanted = vec![("b".to_owned(), sql("3")), ("c".to_owned(), sql("'x'"))];
        assert_eq!(
            settings_delta(&current, &wanted).as_deref(),
            Some("RESET a;SET b TO 3;SET c TO 'x';")
        );
        assert_eq!(settings_delta(&wanted, &wanted), None);
    }

    #[test]
    fn set_config_values_are_given_again_through_set_config() {
        let text = |t: &str| SettingValue::Text(t.into());
        let wanted = vec![
            ("search_path".to_owned(), text("")),
            ("myapp.note".to_owned(), text("it's a \\ b")),
        ];
        assert_eq!(
            settings_delta(&[], &wanted).as_deref(),
            Some(
                "SELECT pg_catalog.set_config('search_path', '', false);\
                 SELECT pg_catalog.set_config('myapp.note', E'it''s a \\\\ b', false);"
            )
        );
        let mut s = SessionState::default();
        let serializable = SessionEffect::Set {
            name: "default_transaction_isolation".into(),
            value: text("serializable"),
            local: false,
        };
        s.settle(&[serializable], false, I);
        assert!(s.serializable_default());
    }

    fn sent(on_primary: bool, effects: Vec<SessionEffect>, rolls_back: bool) -> Sent {
        Sent {
            effects,
            on_primary,
            rolls_back,
            ..Sent::default()
        }
    }

    #[test]
    fn writes_count_once_they_may_have_committed() {
        let begin = SessionEffect::Begin { read_only: false };
        let mut w = Writes::default();
        assert!(!w.note(&sent(false, vec![], false), I));
        assert!(!w.unlocated, "a read on a replica");
        assert!(w.note(&sent(true, vec![], false), I), "acknowledged");
        assert!(w.unlocated, "an autocommit write");
        assert!(w.note(&sent(true, vec![], false), I), "each write counts");

        // BEGIN; INSERT; COMMIT in three requests.
        let mut w = Writes::default();
        assert!(!w.note(&sent(true, vec![begin.clone()], false), T));
        assert!(!w.note(&sent(true, vec![], false), T));
        assert!(!w.unlocated && w.in_transaction, "not committed yet");
        assert!(w.note(&sent(true, vec![SessionEffect::Commit], false), I));
        assert!(w.unlocated && !w.in_transaction);

        // BEGIN; INSERT; then an error and ROLLBACK.
        let mut w = Writes::default();
        w.note(&sent(true, vec![begin.clone()], false), T);
        w.note(&sent(true, vec![], false), E);
        assert!(!w.note(&sent(true, vec![SessionEffect::Rollback], true), I));
        assert!(!w.unlocated && !w.in_transaction, "rolled back");

        // One string that commits and opens another transaction, then a
        // ROLLBACK of only the second: the first still counts.
        let mut w = Writes::default();
        let both = vec![begin.clone(), SessionEffect::Commit, begin];
        assert!(w.note(&sent(true, both, false), T), "the first committed");
        w.note(&sent(true, vec![SessionEffect::Rollback], true), I);
        assert!(w.unlocated);
    }

    #[test]
    fn a_view_of_the_session_needs_every_statement_it_has() {
        let mut s = SessionState::default();
        for (name, fingerprint) in [("a", 1), ("b", 2), ("", 3)] {
            s.prepare(name.into(), prepared(fingerprint));
        }
        let mut plan = Plan::default();
        plan.parsed.push(("b".into(), prepared(4)));
        assert!(Catchup::of(&s, &plan, &Carried::default()).is_empty());
        plan.shows_session = true;
        let c = Catchup::of(&s, &plan, &Carried::default());
        let names: Vec<&str> = c.statements.iter().map(|st| st.name).collect();
        assert_eq!(names, ["a"], "not the unnamed one, nor one prepared anew");
    }

    #[test]
    fn a_transaction_may_move_while_it_has_only_begun() {
        let mut s = SessionState::default();
        let mut conn = Carried::default();
        let begin = Sent {
            effects: vec![SessionEffect::Begin { read_only: true }],
            ..Sent::default()
        };
        s.sending(Some("BEGIN READ ONLY".into()));
        s.answered(&begin, T, &mut conn);
        assert_eq!(s.begun_only(), Some("BEGIN READ ONLY"));
        s.sending(None);
        assert_eq!(s.begun_only(), None, "it has run more");

        s.sending(Some("BEGIN".into()));
        let failed = Sent {
            failed: true,
            ..begin
        };
        s.answered(&failed, I, &mut conn);
        assert_eq!(s.begun_only(), None, "it did not begin");
    }

    fn prepared(fingerprint: u64) -> Prepared {
        Prepared {
            source: bytes::Bytes::from_static(b"P"),
            fingerprint,
            classification: Arc::new(crate::classify::classify("SELECT 1", &Default::default())),
        }
    }

    #[test]
    fn an_answer_settles_the_session_and_what_the_connection_carries() {
        let mut s = SessionState::default();
        let mut conn = Carried::default();
        s.prepare("a".into(), prepared(1));
        s.prepare("b".into(), prepared(2));
        conn.prepared.insert("a".into(), 1);
        conn.prepared.insert("b".into(), 2);
        // The server confirmed "a" and then failed: "b" does not exist.
        let failed = Sent {
            parsed: vec![("a".into(), 1), ("b".into(), 2)],
            parse_ok: 1,
            failed: true,
            ..Sent::default()
        };
        s.answered(&failed, I, &mut conn);
        assert!(s.statement("a").is_some() && s.statement("b").is_none());
        assert_eq!(conn.prepared.keys().collect::<Vec<_>>(), ["a"]);

        let set_and_deallocate = Sent {
            effects: vec![
                set("work_mem", "'8MB'"),
                SessionEffect::Deallocate {
                    name: Some("a".into()),
                },
            ],
            ..Sent::default()
        };
        s.answered(&set_and_deallocate, I, &mut conn);
        assert!(conn.prepared.is_empty() && s.statement("a").is_none());
        assert_eq!(conn.settings, s.settings(), "the connection now has them");
    }

    #[test]
    fn catchup_is_what_the_connection_lacks_for_the_batch() {
        let mut s = SessionState::default();
        s.settle(&[set("work_mem", "'8MB'")], false, I);
        s.prepare("used".into(), prepared(5));
        let mut plan = Plan::default();
        plan.need("used");
        plan.parsed.push(("again".into(), prepared(6)));
        let mut conn = Carried::default();
        conn.prepared.insert("again".into(), 3);
        let c = Catchup::of(&s, &plan, &conn);
        assert_eq!(c.settings.as_deref(), Some("SET work_mem TO '8MB';"));
        assert_eq!(c.stale, ["again"]);
        assert_eq!(c.statements.len(), 1);
        assert_eq!(c.statements[0].name, "used");

        let carried = Carried {
            prepared: [("used".to_owned(), 5)].into_iter().collect(),
            settings: s.settings().to_vec(),
        };
        plan.parsed.clear();
        assert!(Catchup::of(&s, &plan, &carried).is_empty());
        let redefined = Carried {
            prepared: [("used".to_owned(), 4)].into_iter().collect(),
            ..carried
        };
        assert_eq!(
            Catchup::of(&s, &plan, &redefined).statements.len(),
            1,
            "another definition under the name"
        );
    }
}

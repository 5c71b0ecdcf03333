//! The built-in functions whose call makes a statement a write: they change
//! data or server state, are bound to the session's backend, or only work on
//! a primary. This is the one list; user-defined VOLATILE functions come
//! from the catalog at run time instead. Beside it, the system views that
//! show the session's own or the node's own state ([`session_view`]): a
//! replica would answer them about itself.
//!
//! Matching is on the lower-case final name part whatever the schema: a
//! same-named function in another schema is sent to the primary too, which
//! is never wrong, only slower.

/// What calling a listed function means for routing and for the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FnKind {
    /// Changes data or server state, or depends on the session's backend.
    SideEffect,
    /// Reads, but errors on a server in recovery: it must reach the primary.
    PrimaryOnly,
    /// Takes a session-level advisory lock: a side effect that pins the session.
    SessionAdvisoryLock,
    /// Releases every session-level advisory lock.
    AdvisoryUnlockAll,
    /// Changes a setting (`set_config()`): unless the statement is the
    /// plain call the classifier gives again like SET, it pins the session.
    Setting,
    /// Reads the session's own or the node's own state (the functions
    /// behind [`session_view`]s): the primary, or the transaction's node.
    SessionView,
}

/// Exact names, grouped by why they are listed.
const EXACT: &[(&str, FnKind)] = &[
    // Sequences: nextval/setval write; currval/lastval only read, but they
    // answer from this backend's session state, so they stay where nextval ran.
    ("nextval", FnKind::SideEffect),
    ("setval", FnKind::SideEffect),
    ("currval", FnKind::SideEffect),
    ("lastval", FnKind::SideEffect),
    // Session-level advisory locks pin the session; the transaction-level
    // ones (pg_advisory_xact_lock*) and unlocks are caught by PREFIXES.
    ("pg_advisory_lock", FnKind::SessionAdvisoryLock),
    ("pg_advisory_lock_shared", FnKind::SessionAdvisoryLock),
    ("pg_try_advisory_lock", FnKind::SessionAdvisoryLock),
    ("pg_try_advisory_lock_shared", FnKind::SessionAdvisoryLock),
    ("pg_advisory_unlock_all", FnKind::AdvisoryUnlockAll),
    // Notifications and session settings.
    ("pg_notify", FnKind::SideEffect),
    ("set_config", FnKind::Setting),
    // random() after setseed() depends on the backend that ran setseed.
    ("setseed", FnKind::SideEffect),
    // Transaction ids: assigning one is a write, and replicas cannot.
    ("txid_current", FnKind::SideEffect),
    ("txid_current_if_assigned", FnKind::SideEffect),
    ("pg_current_xact_id", FnKind::SideEffect),
    ("pg_current_xact_id_if_assigned", FnKind::SideEffect),
    // Large objects (lo_* is in PREFIXES).
    ("loread", FnKind::SideEffect),
    ("lowrite", FnKind::SideEffect),
    // Signalling and controlling the server.
    ("pg_terminate_backend", FnKind::SideEffect),
    ("pg_cancel_backend", FnKind::SideEffect),
    ("pg_reload_conf", FnKind::SideEffect),
    ("pg_rotate_logfile", FnKind::SideEffect),
    ("pg_log_backend_memory_contexts", FnKind::SideEffect),
    ("pg_promote", FnKind::SideEffect),
    // WAL, backups and snapshots.
    ("pg_switch_wal", FnKind::SideEffect),
    ("pg_switch_xlog", FnKind::SideEffect),
    ("pg_create_restore_point", FnKind::SideEffect),
    ("pg_start_backup", FnKind::SideEffect),
    ("pg_backup_start", FnKind::SideEffect),
    ("pg_stop_backup", FnKind::SideEffect),
    ("pg_backup_stop", FnKind::SideEffect),
    ("pg_wal_replay_pause", FnKind::SideEffect),
    ("pg_wal_replay_resume", FnKind::SideEffect),
    ("pg_export_snapshot", FnKind::SideEffect),
    ("pg_log_standby_snapshot", FnKind::SideEffect),
    ("pg_logical_emit_message", FnKind::SideEffect),
    // Replication slots (consuming changes advances the slot).
    ("pg_create_physical_replication_slot", FnKind::SideEffect),
    ("pg_create_logical_replication_slot", FnKind::SideEffect),
    ("pg_drop_replication_slot", FnKind::SideEffect),
    ("pg_copy_physical_replication_slot", FnKind::SideEffect),
    ("pg_copy_logical_replication_slot", FnKind::SideEffect),
    ("pg_replication_slot_advance", FnKind::SideEffect),
    ("pg_logical_slot_get_changes", FnKind::SideEffect),
    ("pg_logical_slot_get_binary_changes", FnKind::SideEffect),
    ("pg_sync_replication_slots", FnKind::SideEffect),
    // Statistics resets from extensions (pg_stat_reset* is in PREFIXES).
    ("pg_stat_statements_reset", FnKind::SideEffect),
    // Index maintenance callable from SELECT.
    ("brin_summarize_new_values", FnKind::SideEffect),
    ("brin_summarize_range", FnKind::SideEffect),
    ("brin_desummarize_range", FnKind::SideEffect),
    ("gin_clean_pending_list", FnKind::SideEffect),
    // Catalog writes callable from SELECT.
    ("pg_import_system_collations", FnKind::SideEffect),
    // WAL positions only a primary has (they error during recovery).
    ("pg_current_wal_lsn", FnKind::PrimaryOnly),
    ("pg_current_wal_insert_lsn", FnKind::PrimaryOnly),
    ("pg_current_wal_flush_lsn", FnKind::PrimaryOnly),
    ("pg_current_xlog_location", FnKind::PrimaryOnly),
    ("pg_current_xlog_insert_location", FnKind::PrimaryOnly),
    ("pg_current_xlog_flush_location", FnKind::PrimaryOnly),
    // The session's and the node's own state (pg_stat_* is in PREFIXES).
    ("pg_prepared_statement", FnKind::SessionView),
    ("pg_cursor", FnKind::SessionView),
    ("pg_prepared_xact", FnKind::SessionView),
    ("pg_lock_status", FnKind::SessionView),
    ("pg_blocking_pids", FnKind::SessionView),
    ("pg_safe_snapshot_blocking_pids", FnKind::SessionView),
    ("pg_get_backend_memory_contexts", FnKind::SessionView),
];

/// Whole families, matched by name prefix after EXACT.
const PREFIXES: &[(&str, FnKind)] = &[
    // pg_advisory_xact_lock*, pg_advisory_unlock*, pg_try_advisory_xact_lock*.
    ("pg_advisory_", FnKind::SideEffect),
    ("pg_try_advisory_", FnKind::SideEffect),
    // Large objects: lo_create, lo_import, lo_export, lo_unlink, lo_open,
    // lo_write, lo_put, lo_from_bytea, lo_truncate, ... (lo_get too: cheap to be safe).
    ("lo_", FnKind::SideEffect),
    // pg_replication_origin_create/drop/advance/session_setup/xact_setup/...
    ("pg_replication_origin_", FnKind::SideEffect),
    // pg_stat_reset, pg_stat_reset_shared, pg_stat_reset_single_table_counters, ...
    ("pg_stat_reset", FnKind::SideEffect),
    // pg_stat_get_activity, pg_stat_get_backend_*, pg_stat_statements, ...
    ("pg_stat_", FnKind::SessionView),
    // dblink, dblink_exec, dblink_connect, ...: remote writes and per-session connections.
    ("dblink", FnKind::SideEffect),
];

/// What calling the built-in `name` (lower case, unqualified) means, if listed.
pub(crate) fn builtin(name: &str) -> Option<FnKind> {
    if let Some((_, kind)) = EXACT.iter().find(|(n, _)| *n == name) {
        return Some(*kind);
    }
    PREFIXES
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map(|(_, kind)| *kind)
}

/// System views of the session's own or the node's own state, by exact
/// name, and by prefix (`pg_stat_activity`, `pg_stat_user_tables`,
/// `pg_statio_*`, `pg_stat_statements`, ...).
const VIEWS: &[&str] = &[
    "pg_prepared_statements",
    "pg_cursors",
    "pg_prepared_xacts",
    "pg_locks",
    "pg_backend_memory_contexts",
];
const VIEW_PREFIXES: &[&str] = &["pg_stat_", "pg_statio_"];

/// Whether the relation `name` (lower case, unqualified) is such a view.
pub(crate) fn session_view(name: &str) -> bool {
    VIEWS.contains(&name) || VIEW_PREFIXES.iter().any(|p| name.starts_with(p))
}

//! One parsed statement → its [`Part`]: class, reason, session effects.
//! Reads are listed explicitly; every other statement is a write. Session
//! commands are handed to [`session`].

use std::collections::HashSet;

use sqlparser::ast::{
    CloseCursor, CopyTarget, ObjectName, Query, SetExpr, Statement, TransactionAccessMode,
    TransactionIsolationLevel, UtilityOption,
};

use super::scan::{body_is_dml, in_pg_temp, scan};
use super::session::{self, access_mode, boolean, isolation};
use super::{Class, Part, PinReason, Reason, SessionEffect};

pub(crate) fn classify_statement(stmt: &Statement, volatile: &HashSet<String>) -> Part {
    match stmt {
        Statement::Query(query) => query_part(query, volatile),
        Statement::Explain {
            analyze,
            options,
            statement,
            ..
        } => explain_part(*analyze, options.as_deref(), statement, volatile),
        Statement::ShowFunctions { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowProcessList { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowCharset { .. }
        | Statement::ShowObjects { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowViews { .. }
        | Statement::ShowCollation { .. } => Part::read(Reason::Show),
        Statement::Copy { to, target, .. } => copy_part(stmt, *to, target, volatile),
        Statement::Declare { .. } | Statement::Fetch { .. } | Statement::Close { .. } => {
            cursor_part(stmt, volatile)
        }
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => transaction_part(stmt),
        Statement::Set(_)
        | Statement::Reset(_)
        | Statement::Prepare { .. }
        | Statement::Deallocate { .. }
        | Statement::Execute { .. }
        | Statement::Discard { .. }
        | Statement::LISTEN { .. }
        | Statement::UNLISTEN { .. } => session::session_part(stmt, volatile),
        _ => write_part(stmt, volatile),
    }
}

fn cursor_part(stmt: &Statement, volatile: &HashSet<String>) -> Part {
    match stmt {
        Statement::Declare { stmts } => {
            let findings = scan(stmt, volatile);
            let mut effects = findings.effects;
            if stmts.iter().any(|d| d.hold == Some(true)) {
                effects.push(SessionEffect::Pin(PinReason::HoldCursor));
            }
            let pinned = effects.iter().any(|e| matches!(e, SessionEffect::Pin(_)));
            let part = match findings.write {
                Some(reason) => Part::write(reason),
                None if pinned => Part::write(Reason::Cursor),
                None => Part::read(Reason::Cursor),
            };
            part.with_effects(effects)
        }
        Statement::Close {
            cursor: CloseCursor::All,
        } => Part::write(Reason::Cursor)
            .with_effects(vec![SessionEffect::Unpin(PinReason::HoldCursor)]),
        _ => Part::write(Reason::Cursor),
    }
}

fn transaction_part(stmt: &Statement) -> Part {
    match stmt {
        Statement::StartTransaction { modes, .. } => {
            // Hot standbys refuse SERIALIZABLE transactions, read-only or not.
            let serializable = isolation(modes) == Some(TransactionIsolationLevel::Serializable);
            let access = access_mode(modes);
            let read_only = access == Some(TransactionAccessMode::ReadOnly) && !serializable;
            let class = if read_only { Class::Read } else { Class::Write };
            let mut effects = vec![SessionEffect::Begin { read_only }];
            // Asked for explicitly, these hold even where the session's
            // default is READ ONLY.
            if serializable || access == Some(TransactionAccessMode::ReadWrite) {
                effects.push(SessionEffect::TransactionNeedsPrimary);
            }
            Part {
                class,
                reason: Reason::TransactionControl,
                effects,
                statements: 1,
            }
        }
        Statement::Commit { chain, .. } => transaction_end(SessionEffect::Commit, *chain),
        Statement::Rollback {
            chain,
            savepoint: None,
        } => transaction_end(SessionEffect::Rollback, *chain),
        Statement::Rollback {
            savepoint: Some(name),
            ..
        } => savepoint(SessionEffect::RollbackTo {
            name: super::session::folded(name),
        }),
        Statement::Savepoint { name } => savepoint(SessionEffect::Savepoint {
            name: super::session::folded(name),
        }),
        Statement::ReleaseSavepoint { name } => savepoint(SessionEffect::Release {
            name: super::session::folded(name),
        }),
        _ => Part::write(Reason::TransactionControl),
    }
}

/// SAVEPOINT, ROLLBACK TO, RELEASE: the transaction goes on.
fn savepoint(effect: SessionEffect) -> Part {
    Part::write(Reason::TransactionControl).with_effects(vec![effect])
}

fn transaction_end(end: SessionEffect, chain: bool) -> Part {
    let mut effects = vec![end];
    if chain {
        effects.push(SessionEffect::Chain);
    }
    Part::write(Reason::TransactionControl).with_effects(effects)
}

/// Every statement that is not a query, EXPLAIN, SHOW, COPY, cursor,
/// transaction or session command: all writes.
fn write_part(stmt: &Statement, volatile: &HashSet<String>) -> Part {
    use SessionEffect as E;
    let temp = |temporary: bool, name: &ObjectName| {
        let pinned = temporary || in_pg_temp(name);
        Part::write(Reason::Ddl).with_effects(if pinned {
            vec![E::Pin(PinReason::TempObject)]
        } else {
            Vec::new()
        })
    };
    match stmt {
        // Expressions here run now, so their calls may carry effects.
        Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_)
        | Statement::Merge(_)
        | Statement::Truncate(_) => {
            Part::write(Reason::Dml).with_effects(scan(stmt, volatile).effects)
        }
        Statement::Call(_) => {
            Part::write(Reason::Procedure).with_effects(scan(stmt, volatile).effects)
        }
        Statement::CreateTable(table) => {
            // Only CREATE TABLE AS runs a query now; column defaults run later.
            let mut effects = match &table.query {
                Some(query) => scan(query, volatile).effects,
                None => Vec::new(),
            };
            effects.extend(temp(table.temporary, &table.name).effects);
            Part::write(Reason::Ddl).with_effects(effects)
        }
        // Bodies that do not run now: no scan.
        Statement::CreateView(view) => temp(view.temporary, &view.name),
        Statement::CreateSequence {
            temporary, name, ..
        } => temp(*temporary, name),
        Statement::CreateFunction(_)
        | Statement::CreateProcedure { .. }
        | Statement::AlterFunction(_)
        | Statement::DropFunction(_)
        | Statement::DropProcedure { .. }
        | Statement::CreateExtension(_)
        | Statement::DropExtension(_) => {
            Part::write(Reason::Ddl).with_effects(vec![E::CatalogFunctionsChanged])
        }
        Statement::Analyze(_) | Statement::Vacuum(_) => Part::write(Reason::Maintenance),
        Statement::Lock(_) | Statement::LockTables { .. } => Part::write(Reason::LockTable),
        Statement::Grant(_)
        | Statement::Revoke(_)
        | Statement::Deny(_)
        | Statement::CreateRole(_)
        | Statement::AlterRole { .. }
        | Statement::CreateUser(_)
        | Statement::AlterUser(_) => Part::write(Reason::Dcl),
        Statement::NOTIFY { .. } => Part::write(Reason::Notify),
        Statement::Load { .. } => Part::write(Reason::Other("LOAD")),
        other if is_ddl(other) => Part::write(Reason::Ddl),
        _ => Part::write(Reason::Other("statement")),
    }
}

fn query_part(query: &Query, volatile: &HashSet<String>) -> Part {
    if let Some(effects) = session::set_config_call(query) {
        // Given again like SET: a write as SET is, without a pin.
        return Part::write(Reason::SessionCommand).with_effects(effects);
    }
    let findings = scan(query, volatile);
    if body_is_dml(&query.body) {
        return Part::write(Reason::Dml).with_effects(findings.effects);
    }
    let part = match findings.write {
        Some(reason) => Part::write(reason),
        None => Part::read(read_reason(&query.body)),
    };
    part.with_effects(findings.effects)
}

fn read_reason(body: &SetExpr) -> Reason {
    match body {
        SetExpr::Values(_) => Reason::Values,
        SetExpr::Table(_) => Reason::Table,
        SetExpr::Query(q) => read_reason(&q.body),
        _ => Reason::Select,
    }
}

/// EXPLAIN only plans (even of a write) unless ANALYZE runs the statement.
fn explain_part(
    analyze: bool,
    options: Option<&[UtilityOption]>,
    inner: &Statement,
    volatile: &HashSet<String>,
) -> Part {
    let analyze_option = options.unwrap_or_default().iter().any(|o| {
        o.name.value.eq_ignore_ascii_case("analyze")
            && o.arg.as_ref().and_then(boolean) != Some(false)
    });
    if !(analyze || analyze_option) {
        return Part::read(Reason::Explain);
    }
    let part = classify_statement(inner, volatile);
    let outer = match part.class {
        Class::Write => Part::write(Reason::ExplainAnalyzeWrite),
        Class::Read => Part::read(Reason::Explain),
    };
    outer.with_effects(part.effects)
}

fn copy_part(stmt: &Statement, to: bool, target: &CopyTarget, volatile: &HashSet<String>) -> Part {
    if !to {
        return Part::write(Reason::CopyFrom);
    }
    let findings = scan(stmt, volatile);
    let part = match (findings.write, target) {
        (Some(reason), _) => Part::write(reason),
        (None, CopyTarget::Stdout) => Part::read(Reason::CopyTo),
        // A server-side file or program: the one the client means is the primary's.
        (None, _) => Part::write(Reason::CopyTo),
    };
    part.with_effects(findings.effects)
}

fn is_ddl(stmt: &Statement) -> bool {
    matches!(
        stmt,
        Statement::CreateVirtualTable { .. }
            | Statement::CreateIndex(_)
            | Statement::CreateSecret { .. }
            | Statement::CreateServer(_)
            | Statement::CreatePolicy(_)
            | Statement::CreateConnector(_)
            | Statement::CreateOperator(_)
            | Statement::CreateOperatorFamily(_)
            | Statement::CreateOperatorClass(_)
            | Statement::CreateTextSearch(_)
            | Statement::CreateSchema { .. }
            | Statement::CreateDatabase { .. }
            | Statement::CreateTrigger(_)
            | Statement::CreateMacro { .. }
            | Statement::CreateStage { .. }
            | Statement::CreateFileFormat { .. }
            | Statement::CreateWarehouse(_)
            | Statement::CreateDomain(_)
            | Statement::CreateType { .. }
            | Statement::CreateCollation(_)
            | Statement::AlterTable(_)
            | Statement::AlterSchema(_)
            | Statement::AlterIndex { .. }
            | Statement::AlterView { .. }
            | Statement::AlterType(_)
            | Statement::AlterCollation(_)
            | Statement::AlterOperator(_)
            | Statement::AlterOperatorFamily(_)
            | Statement::AlterOperatorClass(_)
            | Statement::AlterTextSearch(_)
            | Statement::AlterPolicy(_)
            | Statement::AlterConnector { .. }
            | Statement::Drop { .. }
            | Statement::DropDomain(_)
            | Statement::DropSecret { .. }
            | Statement::DropPolicy(_)
            | Statement::DropConnector { .. }
            | Statement::DropOperator(_)
            | Statement::DropOperatorFamily(_)
            | Statement::DropOperatorClass(_)
            | Statement::DropTrigger(_)
            | Statement::Comment { .. }
            | Statement::RenameTable(_)
    )
}

//! One walk over a parsed statement (sqlparser's `Visitor`) that finds what
//! turns a query into a write wherever it hides — locking clauses,
//! data-modifying CTEs, SELECT INTO, side-effect and volatile function calls,
//! views of the session's or the node's own state, in subqueries, CTEs and
//! FROM-clause functions alike — and the session effects those calls carry.

use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{Expr, ObjectName, Query, Select, SetExpr, TableFactor, Visit, Visitor};

use super::functions::{self, FnKind};
use super::{PinReason, Reason, SessionEffect};

/// What the walk found: the first reason to write, every effect in order,
/// and the first call of a function the built-in list does not know.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    pub write: Option<Reason>,
    pub effects: Vec<SessionEffect>,
    pub unlisted: Option<String>,
}

/// Walks `node` entirely (no early exit: a later call may still pin).
pub(crate) fn scan<T: Visit>(node: &T, volatile: &HashSet<String>) -> Findings {
    let mut scanner = Scanner {
        volatile,
        found: Findings::default(),
    };
    let _ = node.visit(&mut scanner);
    scanner.found
}

/// True when a query body is INSERT/UPDATE/DELETE/MERGE (possibly in parentheses).
pub(crate) fn body_is_dml(body: &SetExpr) -> bool {
    match body {
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => true,
        SetExpr::Query(q) => body_is_dml(&q.body),
        SetExpr::SetOperation { left, right, .. } => body_is_dml(left) || body_is_dml(right),
        _ => false,
    }
}

/// True when an object name's first part is `pg_temp` (a temporary object).
pub(crate) fn in_pg_temp(name: &ObjectName) -> bool {
    name.0
        .first()
        .and_then(|part| part.as_ident())
        .is_some_and(|ident| ident.value.eq_ignore_ascii_case("pg_temp"))
}

struct Scanner<'a> {
    volatile: &'a HashSet<String>,
    found: Findings,
}

impl Scanner<'_> {
    fn note(&mut self, reason: Reason) {
        if self.found.write.is_none() {
            self.found.write = Some(reason);
        }
    }

    fn call(&mut self, name: &ObjectName) {
        let mut parts = Vec::with_capacity(name.0.len());
        for part in &name.0 {
            match part.as_ident() {
                Some(ident) => parts.push(lower(&ident.value)),
                // A computed name part: we cannot tell what is called.
                None => return self.note(Reason::SideEffectFunction(name.to_string())),
            }
        }
        let Some(last) = parts.last() else { return };
        if let Some(kind) = functions::builtin(last) {
            let shown = parts.join(".");
            match kind {
                FnKind::SideEffect => self.note(Reason::SideEffectFunction(shown)),
                FnKind::PrimaryOnly => self.note(Reason::PrimaryOnlyFunction(shown)),
                FnKind::SessionAdvisoryLock => {
                    self.note(Reason::SideEffectFunction(shown));
                    self.found
                        .effects
                        .push(SessionEffect::Pin(PinReason::AdvisoryLock));
                }
                FnKind::AdvisoryUnlockAll => {
                    self.note(Reason::SideEffectFunction(shown));
                    self.found
                        .effects
                        .push(SessionEffect::Unpin(PinReason::AdvisoryLock));
                }
                FnKind::Setting => {
                    self.note(Reason::SideEffectFunction(shown));
                    self.found
                        .effects
                        .push(SessionEffect::Pin(PinReason::Setting));
                }
                FnKind::SessionView => self.note(Reason::SessionView(shown)),
            }
            return;
        }
        let qualified = parts.join(".");
        if self.found.unlisted.is_none() {
            self.found.unlisted = Some(qualified.clone());
        }
        if self.volatile.is_empty() {
            return;
        }
        // The caller lists both `f` and `s.f`; also try `s.f` of `db.s.f`.
        let tail = parts.len().checked_sub(2).map(|i| parts[i..].join("."));
        if self.volatile.contains(last.as_ref())
            || self.volatile.contains(&qualified)
            || tail.is_some_and(|t| self.volatile.contains(&t))
        {
            self.note(Reason::VolatileFunction(qualified));
        }
    }
}

impl Visitor for Scanner<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if !query.locks.is_empty() {
            self.note(Reason::Locking);
        }
        if let Some(with) = &query.with {
            if with
                .cte_tables
                .iter()
                .any(|cte| body_is_dml(&cte.query.body))
            {
                self.note(Reason::WritableCte);
            }
        }
        // DML as a query elsewhere, e.g. `COPY (INSERT ... RETURNING *) TO STDOUT`.
        if body_is_dml(&query.body) {
            self.note(Reason::Dml);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        if let Some(into) = &select.into {
            self.note(Reason::SelectInto);
            let temp_schema = into.targets.iter().any(|target| match target {
                Expr::CompoundIdentifier(idents) => idents
                    .first()
                    .is_some_and(|i| i.value.eq_ignore_ascii_case("pg_temp")),
                _ => false,
            });
            if into.temporary || temp_schema {
                self.found
                    .effects
                    .push(SessionEffect::Pin(PinReason::TempObject));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        let last = relation.0.last().and_then(|part| part.as_ident());
        if let Some(ident) = last {
            let name = lower(&ident.value);
            if functions::session_view(&name) {
                self.note(Reason::SessionView(name.into_owned()));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => self.call(name),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(function) = expr {
            self.call(&function.name);
        }
        ControlFlow::Continue(())
    }
}

/// Lower case without allocating when the name already is.
pub(crate) fn lower(s: &str) -> Cow<'_, str> {
    if s.chars().any(char::is_uppercase) {
        Cow::Owned(s.to_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

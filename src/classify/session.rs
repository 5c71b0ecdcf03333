//! Session commands → the [`SessionEffect`]s the session layer must track:
//! SET / RESET (including ROLE, SESSION AUTHORIZATION, TIME ZONE, NAMES and
//! SESSION CHARACTERISTICS), SQL PREPARE / EXECUTE / DEALLOCATE, DISCARD,
//! LISTEN / UNLISTEN, and the `palisade.pin` switch. All are writes: they
//! run on the primary unless a transaction holds the session elsewhere.

use std::collections::HashSet;

use sqlparser::ast::{
    ContextModifier, DiscardObject, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident,
    ObjectName, ObjectNamePart, Query, Reset, SelectItem, Set, SetExpr,
    SetSessionAuthorizationParam, SetSessionAuthorizationParamKind, Statement,
    TransactionAccessMode, TransactionIsolationLevel, TransactionMode, Value,
};

use super::scan::scan;
use super::statement::classify_statement;
use super::{Part, PinReason, Reason, SessionEffect, SettingValue};

/// The custom parameter that pins a session on demand.
const PIN_PARAMETER: &str = "palisade.pin";

pub(super) fn session_part(stmt: &Statement, volatile: &HashSet<String>) -> Part {
    use SessionEffect as E;
    let effects = match stmt {
        Statement::Set(set) => return set_part(set),
        Statement::Reset(reset) => vec![match &reset.reset {
            Reset::ALL => E::Reset { name: None },
            Reset::SessionAuthorization => reset_of("session_authorization"),
            Reset::ConfigurationParameter(name) if parameter(name) == PIN_PARAMETER => {
                E::Unpin(PinReason::Explicit)
            }
            Reset::ConfigurationParameter(name) => reset_of(&parameter(name)),
        }],
        Statement::Prepare {
            name, statement, ..
        } => vec![E::Prepare {
            name: folded(name),
            class: classify_statement(statement, volatile).class,
        }],
        Statement::Deallocate { name, .. } => vec![E::Deallocate {
            name: (!is_bare(name, "all")).then(|| folded(name)),
        }],
        Statement::Execute { name, .. } => {
            let last = name
                .as_ref()
                .and_then(|n| n.0.last())
                .and_then(|p| p.as_ident());
            let reason = Reason::ExecutePrepared(last.map(folded).unwrap_or_default());
            // The parameters are evaluated now.
            return Part::write(reason).with_effects(scan(stmt, volatile).effects);
        }
        Statement::Discard {
            object_type: DiscardObject::ALL,
        } => vec![
            E::Reset { name: None },
            E::Deallocate { name: None },
            E::Unpin(PinReason::Listen),
            E::Unpin(PinReason::TempObject),
            E::Unpin(PinReason::AdvisoryLock),
            E::Unpin(PinReason::HoldCursor),
            // Settings, role and session authorization too.
            E::Unpin(PinReason::Setting),
        ],
        Statement::Discard {
            object_type: DiscardObject::TEMP,
        } => vec![E::Unpin(PinReason::TempObject)],
        Statement::LISTEN { .. } => vec![E::Pin(PinReason::Listen)],
        Statement::UNLISTEN { channel } if is_bare(channel, "*") => {
            vec![E::Unpin(PinReason::Listen)]
        }
        // DISCARD PLANS/SEQUENCES, UNLISTEN of one channel.
        _ => Vec::new(),
    };
    Part::write(Reason::SessionCommand).with_effects(effects)
}

fn set_part(set: &Set) -> Part {
    let mut effects = Vec::new();
    let mut reason = Reason::SessionCommand;
    match set {
        Set::SingleAssignment {
            scope,
            variable,
            values,
            ..
        } => assign(&parameter(variable), values, is_local(scope), &mut effects),
        Set::ParenthesizedAssignments { variables, values } => {
            for (variable, value) in variables.iter().zip(values) {
                assign(
                    &parameter(variable),
                    std::slice::from_ref(value),
                    false,
                    &mut effects,
                );
            }
        }
        Set::MultipleAssignments { assignments } => {
            for a in assignments {
                let local = is_local(&a.scope);
                assign(
                    &parameter(&a.name),
                    std::slice::from_ref(&a.value),
                    local,
                    &mut effects,
                );
            }
        }
        Set::SetTimeZone { local, value } => assign(
            "timezone",
            std::slice::from_ref(value),
            *local,
            &mut effects,
        ),
        Set::SetRole {
            context_modifier,
            role_name,
        } => {
            let local = is_local(context_modifier);
            effects.push(match role_name {
                Some(role) => set_effect("role", role.to_string(), local),
                None if local => set_effect("role", "NONE".into(), true),
                None => reset_of("role"),
            });
        }
        Set::SetSessionAuthorization(param) => effects.push(session_authorization(param)),
        Set::SetNames { charset_name, .. } => effects.push(set_effect(
            "client_encoding",
            charset_name.to_string(),
            false,
        )),
        Set::SetNamesDefault {} => effects.push(reset_of("client_encoding")),
        Set::SetTransaction { modes, session, .. } => {
            reason = Reason::TransactionControl;
            // SET SESSION CHARACTERISTICS sets the session defaults; plain
            // SET TRANSACTION only affects the current transaction.
            if *session {
                session_characteristics(modes, &mut effects);
            } else if isolation(modes) == Some(TransactionIsolationLevel::Serializable)
                || access_mode(modes) == Some(TransactionAccessMode::ReadWrite)
            {
                effects.push(SessionEffect::TransactionNeedsPrimary);
            }
        }
        Set::SetSessionParam(_) => {}
    }
    Part::write(reason).with_effects(effects)
}

/// `SET [SESSION | LOCAL] SESSION AUTHORIZATION user | DEFAULT`.
fn session_authorization(param: &SetSessionAuthorizationParam) -> SessionEffect {
    let local = param.scope == ContextModifier::Local;
    match &param.kind {
        SetSessionAuthorizationParamKind::User(user) => {
            set_effect("session_authorization", user.to_string(), local)
        }
        SetSessionAuthorizationParamKind::Default if local => {
            set_effect("session_authorization", "DEFAULT".into(), true)
        }
        SetSessionAuthorizationParamKind::Default => reset_of("session_authorization"),
    }
}

fn assign(name: &str, values: &[Expr], local: bool, effects: &mut Vec<SessionEffect>) {
    if name == PIN_PARAMETER {
        let on = match values {
            [value] => boolean(value),
            _ => None,
        };
        let default = matches!(values, [Expr::Identifier(i)] if is_bare(i, "default"));
        // Anything but a clear "off" pins: pinning is the safe side.
        let effect = if on == Some(false) || default {
            SessionEffect::Unpin(PinReason::Explicit)
        } else {
            SessionEffect::Pin(PinReason::Explicit)
        };
        effects.push(effect);
        return;
    }
    let keyword_value = match values {
        [Expr::Identifier(i)] if i.quote_style.is_none() => Some(i.value.to_ascii_lowercase()),
        _ => None,
    };
    let single = match values {
        [value] => word(value),
        _ => None,
    };
    let needs_primary = characteristic(name, single);
    let local = local || needs_primary.is_some();
    let resets = match keyword_value.as_deref() {
        Some("default") => true,
        Some("local") => name == "timezone",
        _ => false,
    };
    if resets && !local {
        effects.push(reset_of(name));
        return;
    }
    let value = values
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    effects.push(set_effect(name, value, local));
    if needs_primary == Some(true) {
        effects.push(SessionEffect::TransactionNeedsPrimary);
    }
}

/// For a setting of the open transaction's own characteristics (which end
/// with it: never kept for the session), whether `value` makes it one no
/// hot standby runs; `None` for any other setting.
fn characteristic(name: &str, value: Option<&str>) -> Option<bool> {
    let needs_primary = match name {
        "transaction_isolation" => value.is_some_and(|v| v.eq_ignore_ascii_case("serializable")),
        "transaction_read_only" => value.and_then(boolean_word) == Some(false),
        "transaction_deferrable" => false,
        _ => return None,
    };
    Some(needs_primary)
}

/// A bare word or a string literal, as a keyword-valued setting takes it.
fn word(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Identifier(ident) => Some(&ident.value),
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

fn session_characteristics(modes: &[TransactionMode], effects: &mut Vec<SessionEffect>) {
    if let Some(mode) = access_mode(modes) {
        let on = if mode == TransactionAccessMode::ReadOnly {
            "on"
        } else {
            "off"
        };
        effects.push(set_effect(
            "default_transaction_read_only",
            on.into(),
            false,
        ));
    }
    let level = match isolation(modes) {
        Some(TransactionIsolationLevel::ReadUncommitted) => "'read uncommitted'",
        Some(TransactionIsolationLevel::ReadCommitted) => "'read committed'",
        Some(TransactionIsolationLevel::RepeatableRead) => "'repeatable read'",
        Some(TransactionIsolationLevel::Serializable) => "'serializable'",
        Some(TransactionIsolationLevel::Snapshot) | None => return,
    };
    effects.push(set_effect(
        "default_transaction_isolation",
        level.into(),
        false,
    ));
}

/// The last access mode given, as PostgreSQL applies them in order.
pub(super) fn access_mode(modes: &[TransactionMode]) -> Option<TransactionAccessMode> {
    modes.iter().rev().find_map(|m| match m {
        TransactionMode::AccessMode(mode) => Some(*mode),
        TransactionMode::IsolationLevel(_) => None,
    })
}

/// The last isolation level given, as PostgreSQL applies them in order.
pub(super) fn isolation(modes: &[TransactionMode]) -> Option<TransactionIsolationLevel> {
    modes.iter().rev().find_map(|m| match m {
        TransactionMode::IsolationLevel(level) => Some(*level),
        TransactionMode::AccessMode(_) => None,
    })
}

fn set_effect(name: &str, value: String, local: bool) -> SessionEffect {
    SessionEffect::Set {
        name: name.to_owned(),
        value: SettingValue::Sql(value),
        local,
    }
}

/// The effects of a statement that is exactly `SELECT
/// [pg_catalog.]set_config('name', 'value', is_local)` with literal
/// arguments (an alias allowed): it is given again like SET. `None` for
/// any other query, and for `palisade.*` names, which stay with the
/// server's placeholder (a pin).
pub(super) fn set_config_call(query: &Query) -> Option<Vec<SessionEffect>> {
    let plain = query.with.is_none()
        && query.limit_clause.is_none()
        && query.fetch.is_none()
        && query.locks.is_empty();
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    // Nothing may keep the call from running exactly once.
    let once = select.from.is_empty()
        && select.selection.is_none()
        && select.having.is_none()
        && select.qualify.is_none()
        && select.into.is_none();
    let (true, true, [item]) = (plain, once, select.projection.as_slice()) else {
        return None;
    };
    let (SelectItem::UnnamedExpr(Expr::Function(call))
    | SelectItem::ExprWithAlias {
        expr: Expr::Function(call),
        ..
    }) = item
    else {
        return None;
    };
    let named = match call.name.0.as_slice() {
        [f] => is_function(f, "set_config"),
        [schema, f] => is_function(schema, "pg_catalog") && is_function(f, "set_config"),
        _ => false,
    };
    let simple = call.filter.is_none() && call.over.is_none() && call.within_group.is_empty();
    let FunctionArguments::List(list) = &call.args else {
        return None;
    };
    let [name, value, is_local] = list.args.as_slice() else {
        return None;
    };
    if !(named && simple && list.duplicate_treatment.is_none() && list.clauses.is_empty()) {
        return None;
    }
    let (Some(name), Some(value), Some(local)) = (
        string_arg(name),
        string_arg(value),
        literal_arg(is_local).and_then(boolean),
    ) else {
        return None;
    };
    let name = name.to_lowercase();
    if name.starts_with("palisade.") {
        return None;
    }
    let needs_primary = characteristic(&name, Some(value));
    let mut effects = vec![SessionEffect::Set {
        local: local || needs_primary.is_some(),
        name,
        value: SettingValue::Text(value.to_owned()),
    }];
    if needs_primary == Some(true) {
        effects.push(SessionEffect::TransactionNeedsPrimary);
    }
    Some(effects)
}

fn is_function(part: &ObjectNamePart, name: &str) -> bool {
    part.as_ident().is_some_and(|i| folded(i) == name)
}

/// An argument that is a literal (not a parameter, cast or expression).
fn literal_arg(arg: &FunctionArg) -> Option<&Expr> {
    match arg {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(expr @ Expr::Value(_))) => Some(expr),
        _ => None,
    }
}

fn string_arg(arg: &FunctionArg) -> Option<&str> {
    match &literal_arg(arg)? {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

fn reset_of(name: &str) -> SessionEffect {
    SessionEffect::Reset {
        name: Some(name.to_owned()),
    }
}

/// A parameter name as PostgreSQL matches it: parts joined by `.`, lower case.
fn parameter(name: &ObjectName) -> String {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|part| match part.as_ident() {
            Some(ident) => ident.value.to_lowercase(),
            None => part.to_string().to_lowercase(),
        })
        .collect();
    parts.join(".")
}

fn is_local(scope: &Option<ContextModifier>) -> bool {
    *scope == Some(ContextModifier::Local)
}

/// A name as PostgreSQL resolves it: unquoted names fold to lower case.
pub(super) fn folded(ident: &Ident) -> String {
    match ident.quote_style {
        None => ident.value.to_lowercase(),
        Some(_) => ident.value.clone(),
    }
}

/// An unquoted identifier spelled `word` (case-insensitive).
fn is_bare(ident: &Ident, word: &str) -> bool {
    ident.quote_style.is_none() && ident.value.eq_ignore_ascii_case(word)
}

/// PostgreSQL's boolean spellings for an option or parameter value.
pub(super) fn boolean(expr: &Expr) -> Option<bool> {
    match expr {
        Expr::Identifier(ident) => boolean_word(&ident.value),
        Expr::Value(v) => match &v.value {
            Value::Boolean(b) => Some(*b),
            Value::Number(n, _) => boolean_word(n),
            Value::SingleQuotedString(s) => boolean_word(s),
            _ => None,
        },
        _ => None,
    }
}

fn boolean_word(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" | "t" | "y" => Some(true),
        "off" | "false" | "no" | "0" | "f" | "n" => Some(false),
        _ => None,
    }
}

//! Statement classification: SQL text in, [`Classification`] out. Owns the
//! answer to "may this run on a replica?" ([`Class`]), why ([`Reason`]), the
//! routing hint a client put in a leading comment ([`Hint`]), and the session
//! state the statement changes ([`SessionEffect`]), which the session layer
//! must track in statement order. Pure: no I/O, no clock, no locks, and no
//! panic on any input. Whatever sqlparser (PostgreSqlDialect) cannot parse is
//! a write with [`Reason::Unparsable`], because the primary is always a safe
//! place to run a statement. [`ClassifyCache`] keeps results by statement
//! text so repeated statements are not re-parsed.
//!
//! Transaction control and session commands are writes too (except BEGIN
//! READ ONLY): the router sends a statement inside a transaction to the
//! transaction's node whatever its class, and replays session state from the
//! effects. A statement that pins the session is always a write, so the pin
//! holds from that statement on.

mod cache;
mod functions;
mod lex;
mod scan;
mod session;
mod shape;
mod statement;
#[cfg(test)]
mod tests;

use std::collections::HashSet;

use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

pub use cache::{CacheStats, ClassifyCache, Functions};

/// Longest statement string that is parsed at all; longer ones go to the
/// primary unparsed, so a client cannot make the proxy parse megabytes.
pub const MAX_SQL_LEN: usize = 1 << 20;

/// Most "chain" tokens (operators, casts, subscripts: see
/// [`lex::chain_tokens`]) one statement may hold. sqlparser caps parenthesis
/// nesting, but `a OR b OR c ...` becomes a left-deep tree whose depth is the
/// length of the chain, and dropping such a tree recurses once per level
/// (about 90 bytes of stack each in a debug build): the cap keeps that well
/// under half a megabyte, far inside a 2 MiB thread stack.
pub const MAX_CHAIN_TOKENS: usize = 5_000;

/// Where a statement may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Every part only reads: any fresh-enough replica may serve it.
    Read,
    /// Writes, locks, has side effects, or we are not sure: the primary.
    Write,
}

/// A routing hint from a leading comment: `/* palisade: primary */`,
/// `-- palisade: replica`, or a consistency level for this statement,
/// `/* palisade: strong */` or `/* palisade: consistency=eventual */`
/// (case-insensitive, whitespace-tolerant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hint {
    Primary,
    /// Any healthy replica will do: the read is `eventual`.
    Replica,
    Consistency(crate::config::Consistency),
}

/// Why a statement got its [`Class`]. For several statements in one string
/// this is the reason of the first one that writes (or of the first one).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reason {
    // Reads.
    Select,
    Values,
    Table,
    Show,
    /// EXPLAIN without ANALYZE (of anything), or EXPLAIN ANALYZE of a read.
    Explain,
    /// COPY ... TO STDOUT; COPY TO a server file or program is a write.
    CopyTo,
    /// `DECLARE` of a cursor over a read (and, as a write, FETCH/CLOSE).
    Cursor,
    /// Nothing but whitespace, comments and semicolons.
    Empty,
    // Writes.
    ExplainAnalyzeWrite,
    Dml,
    Ddl,
    /// GRANT, REVOKE, roles and users.
    Dcl,
    CopyFrom,
    /// `FOR UPDATE` / `FOR SHARE` / `FOR [NO] KEY ...` anywhere in the query.
    Locking,
    /// `WITH x AS (INSERT/UPDATE/DELETE/MERGE ...)`.
    WritableCte,
    SelectInto,
    /// A built-in with side effects, or bound to the session's node (name as written, lower case).
    SideEffectFunction(String),
    /// A user-defined function the catalog marks VOLATILE.
    VolatileFunction(String),
    /// A function that only a primary can answer (it errors during recovery).
    PrimaryOnlyFunction(String),
    /// A view (or the function behind one) of the session's own or the
    /// node's own state: `pg_prepared_statements`, `pg_cursors`,
    /// `pg_locks`, `pg_stat_activity`, `pg_stat_*`, … A replica would
    /// answer about itself; the primary (or the transaction's node) is
    /// where the session's statements, locks and activity are.
    SessionView(String),
    /// CALL (and DO, which sqlparser cannot parse).
    Procedure,
    /// VACUUM, ANALYZE.
    Maintenance,
    /// LOCK TABLE.
    LockTable,
    Notify,
    /// `EXECUTE name`: what it does depends on the session's prepared statement.
    ExecutePrepared(String),
    /// sqlparser could not parse (part of) the string, or it is over a limit.
    Unparsable,
    /// A `palisade: primary` hint turned a read into a write.
    HintPrimary,
    /// BEGIN/START TRANSACTION, COMMIT/END, ROLLBACK/ABORT, SAVEPOINT, SET TRANSACTION.
    TransactionControl,
    /// SET, RESET, PREPARE, DEALLOCATE, DISCARD, LISTEN, UNLISTEN.
    SessionCommand,
    Other(&'static str),
}

/// What pins a session to the primary: state that cannot move between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PinReason {
    Listen,
    /// Temporary table, view or sequence (including `SELECT INTO TEMP`, `pg_temp.x`).
    TempObject,
    /// A session-level advisory lock (`pg_advisory_lock`, `pg_try_advisory_lock`, ...).
    AdvisoryLock,
    /// `DECLARE ... WITH HOLD`.
    HoldCursor,
    /// `SET palisade.pin = on`.
    Explicit,
    /// A setting the proxy cannot give again elsewhere: `set_config()`
    /// with anything but literal arguments, `SET name FROM CURRENT` (the
    /// value it keeps is the node's own, which the proxy never sees).
    /// Released by DISCARD ALL (RESET ALL leaves the role as it is).
    Setting,
}

/// Session state a statement changes, in statement order. A statement that
/// carries a [`SessionEffect::Pin`] is always a [`Class::Write`], so the pin
/// holds from the statement that creates it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SessionEffect {
    /// BEGIN / START TRANSACTION; `read_only` from the last access mode
    /// given: the transaction may run on a hot standby. Never so for a
    /// SERIALIZABLE one, which standbys refuse.
    Begin {
        read_only: bool,
    },
    /// COMMIT / END.
    Commit,
    /// ROLLBACK / ABORT (not ROLLBACK TO SAVEPOINT).
    Rollback,
    /// SAVEPOINT name (names folded like PostgreSQL folds them).
    Savepoint {
        name: String,
    },
    /// ROLLBACK TO [SAVEPOINT] name: what followed the savepoint is undone.
    RollbackTo {
        name: String,
    },
    /// RELEASE [SAVEPOINT] name.
    Release {
        name: String,
    },
    /// `AND CHAIN` after a Commit or Rollback: a new transaction with the same
    /// characteristics began at once, on the same backend.
    Chain,
    /// A session parameter. `name` is lower case; `value` is how to give
    /// it again. `local` is SET LOCAL (transaction-scoped).
    Set {
        name: String,
        value: SettingValue,
        local: bool,
    },
    /// SET TRANSACTION (or `transaction_isolation`, `transaction_read_only`)
    /// made the open transaction SERIALIZABLE or READ WRITE: no hot standby
    /// runs it.
    TransactionNeedsPrimary,
    /// RESET name (and SET name TO DEFAULT); `None` is RESET ALL.
    Reset {
        name: Option<String>,
    },
    /// SQL PREPARE; `class` is the class of the prepared statement, so that
    /// `EXECUTE name` can be routed by it.
    Prepare {
        name: String,
        class: Class,
    },
    /// DEALLOCATE name; `None` is DEALLOCATE ALL.
    Deallocate {
        name: Option<String>,
    },
    Pin(PinReason),
    /// Every pin of this reason is released (UNLISTEN *, DISCARD ALL/TEMP,
    /// pg_advisory_unlock_all(), CLOSE ALL, `SET palisade.pin = off`).
    Unpin(PinReason),
    /// Function DDL (or an extension) ran: reload the VOLATILE function list.
    CatalogFunctionsChanged,
}

/// A session parameter's value, in the form that gives it again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SettingValue {
    /// SQL text to put after `SET name TO`.
    Sql(String),
    /// The string `set_config()` was given. It is given again through
    /// `set_config()` too: `SET` would quote a list such as `search_path`
    /// differently, and cannot give it an empty value.
    Text(String),
}

impl SettingValue {
    /// The value without the quotes of a SQL string literal, for reading
    /// a boolean or a keyword out of it.
    pub fn unquoted(&self) -> &str {
        match self {
            SettingValue::Sql(sql) => sql.trim_matches('\''),
            SettingValue::Text(text) => text,
        }
    }
}

/// The whole answer for one statement string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub class: Class,
    pub reason: Reason,
    /// The hint that was asked for, whether or not it changed the class.
    pub hint: Option<Hint>,
    pub effects: Vec<SessionEffect>,
    /// How many statements the string holds (an unparsable rest counts as one).
    pub statements: usize,
}

impl Classification {
    pub fn is_read(&self) -> bool {
        self.class == Class::Read
    }
}

/// The classification of one statement of a string, before hints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part {
    pub class: Class,
    pub reason: Reason,
    pub effects: Vec<SessionEffect>,
    /// Statements folded into this part (1 for one statement).
    pub statements: usize,
}

impl Part {
    pub fn read(reason: Reason) -> Self {
        Self {
            class: Class::Read,
            reason,
            effects: Vec::new(),
            statements: 1,
        }
    }

    pub fn write(reason: Reason) -> Self {
        Self {
            class: Class::Write,
            reason,
            effects: Vec::new(),
            statements: 1,
        }
    }

    pub fn with_effects(mut self, effects: Vec<SessionEffect>) -> Self {
        self.effects = effects;
        self
    }
}

/// A function name part folded the way the classifier folds every name part
/// it looks up in the `volatile` set, quoted or not: `"MyFn"` and `MyFn` are
/// both `myfn`. Whoever builds that set folds catalog names with this.
pub fn fold_name(part: &str) -> String {
    scan::lower(part).into_owned()
}

/// The SQL `PREPARE` statements of a string, each as text that recreates
/// it on its own: name and SQL. For replaying a PREPARE that shared its
/// string with other statements; empty when the string does not parse.
pub fn prepare_texts(sql: &str) -> Vec<(String, String)> {
    if sql.len() > MAX_SQL_LEN {
        return Vec::new();
    }
    let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return Vec::new();
    };
    statements
        .iter()
        .filter_map(|stmt| match stmt {
            Statement::Prepare { name, .. } => Some((session::folded(name), stmt.to_string())),
            _ => None,
        })
        .collect()
}

/// Classifies a string of zero or more statements. `volatile` holds the
/// lower-case names (bare `f` and qualified `s.f`) of user-defined VOLATILE
/// functions; calling any of them makes the statement a write.
pub fn classify(sql: &str, volatile: &HashSet<String>) -> Classification {
    let hint = lex::leading_hint(sql);
    let Part {
        mut class,
        mut reason,
        effects,
        statements,
    } = classify_parts(sql, volatile);
    if hint == Some(Hint::Primary) && class == Class::Read {
        class = Class::Write;
        reason = Reason::HintPrimary;
    }
    // A replica hint never changes anything: reads already go to replicas,
    // and writes never do.
    Classification {
        class,
        reason,
        hint,
        effects,
        statements,
    }
}

fn classify_parts(sql: &str, volatile: &HashSet<String>) -> Part {
    if sql.len() > MAX_SQL_LEN {
        return Part::write(Reason::Unparsable).with_effects(lex::leading_effects(sql));
    }
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize_with_location() else {
        return Part::write(Reason::Unparsable);
    };
    let mut all = Combined::default();
    for (i, tokens) in lex::split_statements(tokens).into_iter().enumerate() {
        match parse_one(&dialect, tokens) {
            Some(stmt) => all.push(statement::classify_statement(&stmt, volatile)),
            None => {
                // Once a statement does not parse, the boundaries after it
                // are uncertain too (a function body may hold semicolons),
                // so the rest is one unparsable write, with only the effects
                // its first words make certain. The parser consumed the
                // tokens: this rare path tokenizes again.
                let effects = Tokenizer::new(&dialect, sql)
                    .tokenize_with_location()
                    .ok()
                    .and_then(|tokens| {
                        let statements = lex::split_statements(tokens);
                        statements.get(i..).map(lex::unparsable_effects)
                    })
                    .unwrap_or_default();
                all.push(Part::write(Reason::Unparsable).with_effects(effects));
                break;
            }
        }
    }
    all.finish()
}

/// The first function a string calls that is not one of the built-ins
/// this module lists (name as written, lower case), whatever its
/// volatility: what a session cannot vouch for while the catalog it
/// classifies with may predate a function just created. `None` when it
/// calls none, or does not parse (then it is a write already).
pub fn first_unlisted_call(sql: &str) -> Option<String> {
    if sql.len() > MAX_SQL_LEN {
        return None;
    }
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .ok()?;
    let none = HashSet::new();
    lex::split_statements(tokens)
        .into_iter()
        .map_while(|tokens| parse_one(&dialect, tokens))
        .find_map(|stmt| scan::scan(&stmt, &none).unlisted)
}

/// Parses the tokens of exactly one statement, or gives up.
fn parse_one(dialect: &PostgreSqlDialect, mut tokens: Vec<TokenWithSpan>) -> Option<Statement> {
    if lex::chain_tokens(&tokens) > MAX_CHAIN_TOKENS {
        return None;
    }
    lex::normalize(&mut tokens);
    let mut parser = Parser::new(dialect).with_tokens_with_locations(tokens);
    // sqlparser parses `TABLE t` as a query body but not as a statement.
    let stmt = if parser.peek_keyword(Keyword::TABLE) {
        Statement::Query(parser.parse_query().ok()?)
    } else {
        parser.parse_statement().ok()?
    };
    (parser.peek_token_ref().token == Token::EOF).then_some(stmt)
}

/// Folds the parts of a multi-statement string: a write if any part writes.
#[derive(Default)]
struct Combined {
    first: Option<(Class, Reason)>,
    effects: Vec<SessionEffect>,
    statements: usize,
}

impl Combined {
    fn push(&mut self, part: Part) {
        match &self.first {
            None => self.first = Some((part.class, part.reason)),
            Some((Class::Read, _)) if part.class == Class::Write => {
                self.first = Some((Class::Write, part.reason));
            }
            Some(_) => {}
        }
        self.effects.extend(part.effects);
        self.statements += part.statements;
    }

    fn finish(self) -> Part {
        let (class, reason) = self.first.unwrap_or((Class::Read, Reason::Empty));
        Part {
            class,
            reason,
            effects: self.effects,
            statements: self.statements,
        }
    }
}

//! Client requests grouped for routing. A batch is everything a client
//! sends up to a Query or a Sync: one request (and one ReadyForQuery) that
//! runs on one server. While it is collected, the [`Plan`] gathers what
//! routing and session tracking need: does any part write, does it begin a
//! transaction, which prepared statements it uses, what it changes.

use std::hash::BuildHasher;
use std::sync::LazyLock;

use super::local::Command;
use super::state::Prepared;
use crate::classify::{Hint, SessionEffect};
use crate::config::Consistency;
use crate::protocol::cstr;

/// One client message, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Query {
        sql: &'a str,
    },
    Parse {
        name: &'a str,
        sql: &'a str,
    },
    Bind {
        portal: &'a str,
        statement: &'a str,
    },
    Execute {
        portal: &'a str,
    },
    /// Describe or Close of a prepared statement (`None` for a portal).
    Describe {
        statement: Option<&'a str>,
    },
    Close {
        statement: Option<&'a str>,
    },
    Sync,
    Flush,
    Terminate,
    /// CopyData, CopyDone, CopyFail: they follow the request that started the COPY.
    Copy,
    /// FunctionCall (libpq's large-object API): a request of its own, with
    /// its own ReadyForQuery, like a Query.
    FunctionCall,
}

/// A client message that cannot be taken: PostgreSQL ends the session with
/// 08P01 for either.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Its body does not hold what its type requires.
    #[error("invalid {0:?} message format")]
    Body(char),
    /// No message of the protocol after startup has this type.
    #[error("invalid frontend message type {0}")]
    UnknownType(u8),
}

/// Reads the parts of a client message that routing needs.
pub fn parse_message(tag: u8, body: &[u8]) -> Result<Message<'_>, Malformed> {
    let bad = || Malformed::Body(tag as char);
    fn text(b: &[u8], tag: u8) -> Result<(&str, &[u8]), Malformed> {
        cstr(b).ok_or(Malformed::Body(tag as char))
    }
    Ok(match tag {
        b'Q' => Message::Query {
            sql: text(body, tag)?.0,
        },
        b'P' => {
            let (name, rest) = text(body, tag)?;
            let (sql, _) = text(rest, tag)?;
            Message::Parse { name, sql }
        }
        b'B' => {
            let (portal, rest) = text(body, tag)?;
            let (statement, _) = text(rest, tag)?;
            Message::Bind { portal, statement }
        }
        b'E' => Message::Execute {
            portal: text(body, tag)?.0,
        },
        b'D' | b'C' => {
            let (&kind, rest) = body.split_first().ok_or_else(bad)?;
            let name = text(rest, tag)?.0;
            let statement = match kind {
                b'S' => Some(name),
                b'P' => None,
                _ => return Err(bad()),
            };
            if tag == b'D' {
                Message::Describe { statement }
            } else {
                Message::Close { statement }
            }
        }
        b'S' => Message::Sync,
        b'H' => Message::Flush,
        b'X' => Message::Terminate,
        b'd' | b'c' | b'f' => Message::Copy,
        b'F' => Message::FunctionCall,
        _ => return Err(Malformed::UnknownType(tag)),
    })
}

/// What a batch needs from routing and leaves to session tracking.
#[derive(Debug, Default)]
pub struct Plan {
    /// Some part writes (or might): only the primary may run it.
    pub write: bool,
    /// The batch begins a transaction; `true` when READ ONLY was asked for.
    pub begin: Option<bool>,
    /// It makes its transaction SERIALIZABLE or READ WRITE, which no hot
    /// standby runs.
    pub txn_needs_primary: bool,
    /// It executes a BEGIN and nothing else: its SQL, which can begin the
    /// transaction again on another node.
    pub begin_sql: Option<String>,
    /// Effects of what the batch executes, in order.
    pub effects: Vec<SessionEffect>,
    /// Prepared statements it uses that it does not itself create.
    pub needs: Vec<String>,
    /// It reads a view of the session's own state
    /// (`pg_prepared_statements`, ...): the connection must carry all of
    /// the session's prepared statements, not only those it uses.
    pub shows_session: bool,
    /// Statements it creates (Parse, or a SQL PREPARE), in order. Each
    /// record moves into the session's state when the batch is sent (a
    /// refused batch creates nothing); connections and in-flight requests
    /// only note its name and fingerprint.
    pub parsed: Vec<(String, Prepared)>,
    /// Statements it closes.
    pub closed: Vec<String>,
    /// It holds a simple Query, which drops the unnamed statement.
    pub has_query: bool,
    /// Statements a parse in this batch defines, by name (for its Binds).
    pub portals: Vec<(String, String)>,
    /// Requests (Query or Sync) in the batch: one ReadyForQuery each.
    pub requests: u32,
    /// It runs something (a Query or an Execute), rather than only
    /// preparing or describing.
    pub executes: bool,
    /// Statements it executes.
    pub statements: usize,
    /// Messages in the batch, and how many of them are Close.
    pub messages: usize,
    pub closes: usize,
    /// A hint on what it executes named the consistency of its reads.
    pub level: Option<Consistency>,
    /// It is one of the proxy's own commands, answered without a server.
    pub local: Option<Command>,
    /// It holds one of the proxy's own commands where only a simple query
    /// of that command alone may (prepared, or among other statements).
    pub local_misplaced: bool,
    /// A statement in it could not be parsed (so it goes to the primary).
    pub unparsable: bool,
}

impl Plan {
    pub fn clear(&mut self) {
        self.write = false;
        self.begin = None;
        self.txn_needs_primary = false;
        self.begin_sql = None;
        self.effects.clear();
        self.needs.clear();
        self.shows_session = false;
        self.parsed.clear();
        self.closed.clear();
        self.has_query = false;
        self.portals.clear();
        self.requests = 0;
        self.executes = false;
        self.statements = 0;
        self.messages = 0;
        self.closes = 0;
        self.level = None;
        self.local = None;
        self.local_misplaced = false;
        self.unparsable = false;
    }

    /// Notes the hint of a statement it executes: the first level named wins.
    pub fn hint(&mut self, hint: Option<Hint>) {
        let level = match hint {
            Some(Hint::Replica) => Some(Consistency::Eventual),
            Some(Hint::Consistency(level)) => Some(level),
            Some(Hint::Primary) | None => None,
        };
        self.level = self.level.or(level);
    }

    /// The batch only closes statements or portals, then syncs.
    pub fn only_closes(&self) -> bool {
        self.requests == 1 && !self.has_query && self.closes + 1 == self.messages
    }

    /// Adds what an executed string of `statements` statements does.
    pub fn execute(&mut self, write: bool, effects: &[SessionEffect], statements: usize) {
        self.executes = true;
        self.statements += statements;
        self.write |= write;
        for effect in effects {
            match effect {
                SessionEffect::Begin { read_only } => {
                    self.begin.get_or_insert(*read_only);
                }
                SessionEffect::TransactionNeedsPrimary => self.txn_needs_primary = true,
                _ => {}
            }
        }
        self.effects.extend_from_slice(effects);
    }

    /// Notes that the batch uses statement `name` without parsing it here.
    pub fn need(&mut self, name: &str) {
        if !self.parsed.iter().any(|(n, _)| n == name) && !self.needs.iter().any(|n| n == name) {
            self.needs.push(name.to_owned());
        }
    }

    /// The statement this batch itself creates under `name`, if any.
    pub fn parsed(&self, name: &str) -> Option<&Prepared> {
        self.parsed
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p)
    }

    /// The statement a portal bound in this batch runs.
    pub fn portal(&self, portal: &str) -> Option<&str> {
        self.portals
            .iter()
            .rev()
            .find(|(p, _)| p == portal)
            .map(|(_, s)| s.as_str())
    }
}

/// Whether a statement doing `effects` is a BEGIN alone (its SQL is then
/// kept in [`Plan::begin_sql`]).
pub fn is_begin(effects: &[SessionEffect]) -> bool {
    matches!(effects, [SessionEffect::Begin { .. }])
}

/// Tells two definitions of one statement name apart.
pub fn fingerprint(frame: &[u8]) -> u64 {
    FINGERPRINT.hash_one(frame)
}

/// Seeded once per process at random: a client cannot pick two
/// definitions that collide. foldhash, not SipHash: it runs on every Parse.
static FINGERPRINT: LazyLock<foldhash::quality::RandomState> =
    LazyLock::new(foldhash::quality::RandomState::default);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_yield_their_names() {
        assert_eq!(
            parse_message(b'P', b"s1\0SELECT 1\0\0\0"),
            Ok(Message::Parse {
                name: "s1",
                sql: "SELECT 1"
            })
        );
        assert_eq!(
            parse_message(b'B', b"\0s1\0\0\0\0\0\0\0"),
            Ok(Message::Bind {
                portal: "",
                statement: "s1"
            })
        );
        assert_eq!(
            parse_message(b'D', b"Ss1\0"),
            Ok(Message::Describe {
                statement: Some("s1")
            })
        );
        assert_eq!(
            parse_message(b'C', b"Pp\0"),
            Ok(Message::Close { statement: None })
        );
        assert_eq!(
            parse_message(b'E', b"\0\0\0\0\0"),
            Ok(Message::Execute { portal: "" })
        );
        assert_eq!(parse_message(b'S', b""), Ok(Message::Sync));
        assert_eq!(parse_message(b'd', b"xyz"), Ok(Message::Copy));
    }

    #[test]
    fn function_calls_are_known_and_unknown_types_are_errors() {
        assert_eq!(
            parse_message(b'F', b"\0\0\0\x01"),
            Ok(Message::FunctionCall)
        );
        // A password message is only taken during authentication.
        for tag in [b'p', b'z', 0] {
            assert_eq!(parse_message(tag, b""), Err(Malformed::UnknownType(tag)));
        }
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        for (tag, body) in [
            (b'Q', &b"no terminator"[..]),
            (b'P', b"name-only\0"),
            (b'B', b""),
            (b'D', b""),
            (b'D', b"Xname\0"),
            (b'C', b"S"),
            (b'E', b"x"),
        ] {
            assert_eq!(
                parse_message(tag, body),
                Err(Malformed::Body(tag as char)),
                "{:?}",
                tag as char
            );
        }
    }

    #[test]
    fn plans_note_writes_begins_and_needs() {
        let mut plan = Plan::default();
        let prepared = Prepared {
            source: bytes::Bytes::from_static(b"P"),
            fingerprint: 1,
            classification: std::sync::Arc::new(crate::classify::classify(
                "SELECT 1",
                &Default::default(),
            )),
        };
        plan.parsed.push(("a".into(), prepared));
        plan.need("a");
        plan.need("b");
        plan.need("b");
        assert_eq!(plan.needs, ["b"]);
        plan.execute(false, &[SessionEffect::Begin { read_only: true }], 1);
        plan.execute(true, &[SessionEffect::Begin { read_only: false }], 1);
        assert_eq!(plan.begin, Some(true));
        assert!(plan.write);
        plan.clear();
        assert!(!plan.write && plan.begin.is_none() && plan.needs.is_empty());
    }

    #[test]
    fn fingerprints_differ_with_the_definition() {
        assert_ne!(
            fingerprint(b"P s\0SELECT 1\0"),
            fingerprint(b"P s\0SELECT 2\0")
        );
        assert_eq!(fingerprint(b"abc"), fingerprint(b"abc"));
    }
}

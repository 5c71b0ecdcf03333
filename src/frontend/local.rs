//! The session settings Palisade answers itself: `SET`, `RESET` and `SHOW`
//! of `palisade.consistency`, `palisade.max_staleness`, `palisade.min_lsn`
//! and `SHOW palisade.last_write_lsn`. They choose how fresh the session's
//! reads must be and never reach PostgreSQL. (`palisade.pin` is different:
//! it is a real placeholder setting on the server, see the classifier.)
//!
//! Recognising them is pure and cheap: a statement that is not exactly one
//! of these forms is left to the classifier and the server.

use std::time::Duration;

use crate::config::Consistency;
use crate::route::ReadChoice;
use crate::topology::Lsn;

/// A proxy-side setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    Consistency,
    MaxStaleness,
    MinLsn,
    /// Read-only: the position of the session's last write.
    LastWriteLsn,
}

impl Param {
    const ALL: [Param; 4] = [
        Param::Consistency,
        Param::MaxStaleness,
        Param::MinLsn,
        Param::LastWriteLsn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Param::Consistency => "palisade.consistency",
            Param::MaxStaleness => "palisade.max_staleness",
            Param::MinLsn => "palisade.min_lsn",
            Param::LastWriteLsn => "palisade.last_write_lsn",
        }
    }

    fn named(name: &str) -> Option<Param> {
        Param::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }
}

/// `name` (lower case, as the classifier reports settings) is one of the
/// settings the proxy answers itself.
pub fn is_proxy_setting(name: &str) -> bool {
    Param::named(name).is_some()
}

/// One recognised command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SET p = v` / `SET p TO v`; `None` for `RESET p`, `SET p TO DEFAULT`.
    Set(Param, Option<String>),
    Show(Param),
}

/// A value a setting cannot take, or a setting that cannot be set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    #[error("invalid value for parameter \"{param}\": \"{value}\" ({hint})")]
    Invalid {
        param: &'static str,
        value: String,
        hint: &'static str,
    },
    #[error("parameter \"{0}\" cannot be changed: it reports the session's last write")]
    ReadOnly(&'static str),
}

impl ReadChoice {
    /// Applies `SET` / `RESET`.
    pub fn set(&mut self, param: Param, value: Option<&str>) -> Result<(), SetError> {
        let invalid = |hint| SetError::Invalid {
            param: param.name(),
            value: value.unwrap_or_default().to_owned(),
            hint,
        };
        match param {
            Param::Consistency => {
                self.level = match value {
                    None => None,
                    Some(v) => Some(Consistency::from_name(v).ok_or_else(|| {
                        invalid("read-after-commit, strong, causal, bounded or eventual")
                    })?),
                }
            }
            Param::MaxStaleness => {
                self.max_staleness = match value {
                    None => None,
                    Some(v) => Some(
                        parse_duration(v)
                            .ok_or_else(|| invalid("a duration such as 500ms, 2s or 1min"))?,
                    ),
                }
            }
            Param::MinLsn => {
                self.min_lsn = match value {
                    None => None,
                    Some(v) => Some(
                        v.parse::<Lsn>()
                            .map_err(|_| invalid("a WAL position such as 0/3000060"))?,
                    ),
                }
            }
            Param::LastWriteLsn => return Err(SetError::ReadOnly(param.name())),
        }
        Ok(())
    }
}

/// `SHOW`'s text for a duration: whole milliseconds, like PostgreSQL shows
/// `statement_timeout`.
pub fn show_duration(d: Option<Duration>) -> String {
    d.map_or_else(|| "default".to_owned(), |d| format!("{}ms", d.as_millis()))
}

/// `500ms`, `2s`, `1.5s`, `1min`, or a bare number of milliseconds.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" => 1.0,
        "s" => 1_000.0,
        "min" => 60_000.0,
        _ => return None,
    };
    let ms = number * scale;
    // A week is far beyond any useful staleness bound and keeps the cast exact.
    (ms.is_finite() && (0.0..=604_800_000.0).contains(&ms))
        .then(|| Duration::from_micros((ms * 1_000.0).round() as u64))
}

/// Recognises a proxy-side command: exactly one `SET`, `RESET` or `SHOW`
/// of a `palisade.*` setting above, with optional comments, blanks and a
/// trailing semicolon. Anything else is `None`.
pub fn parse(sql: &str) -> Option<Command> {
    let words = words(sql)?;
    let keyword = |i: usize, k: &str| words.get(i).is_some_and(|w| w.eq_ignore_ascii_case(k));
    let param = |i: usize| words.get(i).and_then(|w| Param::named(w));
    if keyword(0, "show") && words.len() == 2 {
        return Some(Command::Show(param(1)?));
    }
    if keyword(0, "reset") && words.len() == 2 {
        return Some(Command::Set(param(1)?, None));
    }
    if !keyword(0, "set") {
        return None;
    }
    let at = if keyword(1, "session") { 2 } else { 1 };
    let p = param(at)?;
    if !(keyword(at + 1, "=") || keyword(at + 1, "to")) || words.len() != at + 3 {
        return None;
    }
    let value = words[at + 2].as_str();
    if value.eq_ignore_ascii_case("default") {
        return Some(Command::Set(p, None));
    }
    Some(Command::Set(p, Some(value.to_owned())))
}

/// The statement's words: bare words (dots allowed), `=`, and
/// single-quoted strings (unquoted); `None` when it holds anything else,
/// more than one statement, or a first word that does not begin like SET,
/// RESET or SHOW (the words themselves, and what starts with `=` or a
/// string, [`parse`] settles).
fn words(sql: &str) -> Option<Vec<String>> {
    let bytes = sql.as_bytes();
    let mut words: Vec<String> = Vec::new();
    let mut i = 0;
    let mut ended = false;
    while i < bytes.len() {
        let b = bytes[i];
        let rest = &bytes[i..];
        if b.is_ascii_whitespace() {
            i += 1;
        } else if rest.starts_with(b"--") {
            i += rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
        } else if rest.starts_with(b"/*") {
            // Not nested here: a nested comment is rare enough to leave to the server.
            i += 2 + find(&rest[2..], b"*/")? + 2;
        } else if ended {
            return None;
        } else if b == b';' {
            ended = true;
            i += 1;
        } else if b == b'=' {
            words.push("=".to_owned());
            i += 1;
        } else if b == b'\'' {
            let mut value = Vec::new();
            i += 1;
            loop {
                match bytes.get(i) {
                    None => return None,
                    Some(b'\'') if bytes.get(i + 1) == Some(&b'\'') => {
                        value.push(b'\'');
                        i += 2;
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
            words.push(String::from_utf8(value).ok()?);
        } else if words.is_empty() && !may_start_command(rest) {
            // Most statements: settled by their first three bytes, nothing kept.
            return None;
        } else if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'/' {
            let len = rest
                .iter()
                .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'/'))
                .unwrap_or(rest.len());
            // ASCII bytes, so `i` and `i + len` are character boundaries.
            words.push(sql.get(i..i + len)?.to_owned());
            i += len;
        } else {
            return None;
        }
    }
    Some(words)
}

/// Whether the first word, which begins `rest`, may be SET, RESET or SHOW.
fn may_start_command(rest: &[u8]) -> bool {
    rest.get(..3).is_some_and(|w| {
        [b"set", b"res", b"sho"]
            .iter()
            .any(|k| w.eq_ignore_ascii_case(*k))
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_exactly_the_proxy_side_commands() {
        use Command::{Set, Show};
        let cases: &[(&str, Option<Command>)] = &[
            (
                "SET palisade.consistency = 'strong'",
                Some(Set(Param::Consistency, Some("strong".into()))),
            ),
            (
                "set Palisade.Consistency to eventual;",
                Some(Set(Param::Consistency, Some("eventual".into()))),
            ),
            (
                "/* app */ SET SESSION palisade.max_staleness = '500ms' ; -- done",
                Some(Set(Param::MaxStaleness, Some("500ms".into()))),
            ),
            (
                "SET palisade.min_lsn TO '0/3000060'",
                Some(Set(Param::MinLsn, Some("0/3000060".into()))),
            ),
            (
                "SET palisade.min_lsn = 0/3000060",
                Some(Set(Param::MinLsn, Some("0/3000060".into()))),
            ),
            (
                "RESET palisade.consistency",
                Some(Set(Param::Consistency, None)),
            ),
            (
                "SET palisade.consistency TO DEFAULT",
                Some(Set(Param::Consistency, None)),
            ),
            (
                "SHOW palisade.last_write_lsn",
                Some(Show(Param::LastWriteLsn)),
            ),
            ("show PALISADE.CONSISTENCY;", Some(Show(Param::Consistency))),
            (
                " \n-- why\n\tshow palisade.consistency",
                Some(Show(Param::Consistency)),
            ),
            (
                "SET palisade.consistency = 'it''s'",
                Some(Set(Param::Consistency, Some("it's".into()))),
            ),
            // Left to the server: other settings, other forms, more statements.
            ("SET palisade.pin = on", None),
            ("SHOW search_path", None),
            ("SET LOCAL palisade.consistency = 'strong'", None),
            ("SET palisade.consistency = 'strong'; SELECT 1", None),
            ("SELECT 'SET palisade.consistency = strong'", None),
            ("SET palisade.consistency", None),
            ("SET palisade.consistency = 'a' 'b'", None),
            ("SET palisade.consistency = 'unterminated", None),
            ("SHOW palisade.consistency /* open", None),
            ("SHOW ALL", None),
            ("", None),
        ];
        for (sql, expected) in cases {
            assert_eq!(&parse(sql), expected, "{sql}");
        }
    }

    #[test]
    fn settings_validate_their_values() {
        let mut choice = ReadChoice::default();
        choice.set(Param::Consistency, Some("Bounded")).unwrap();
        assert_eq!(choice.level, Some(Consistency::Bounded));
        assert!(matches!(
            choice.set(Param::Consistency, Some("fresh")),
            Err(SetError::Invalid { .. })
        ));
        assert_eq!(choice.level, Some(Consistency::Bounded), "kept on error");
        choice.set(Param::Consistency, None).unwrap();
        assert_eq!(choice.level, None);

        for (text, ms) in [
            ("500ms", 500),
            ("2s", 2000),
            ("1.5s", 1500),
            ("1min", 60_000),
            ("250", 250),
            ("0", 0),
        ] {
            choice.set(Param::MaxStaleness, Some(text)).unwrap();
            assert_eq!(
                choice.max_staleness,
                Some(Duration::from_millis(ms)),
                "{text}"
            );
        }
        for bad in ["", "fast", "-1s", "1h", "1e9", "99999999min"] {
            assert!(
                choice.set(Param::MaxStaleness, Some(bad)).is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(show_duration(choice.max_staleness), "0ms");
        assert_eq!(show_duration(None), "default");

        choice.set(Param::MinLsn, Some("16/B374D848")).unwrap();
        assert_eq!(choice.min_lsn, Some(Lsn(0x16_B374_D848)));
        assert!(choice.set(Param::MinLsn, Some("16-B3")).is_err());
        assert_eq!(
            choice.set(Param::LastWriteLsn, Some("0/1")),
            Err(SetError::ReadOnly("palisade.last_write_lsn"))
        );
    }
}

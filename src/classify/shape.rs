//! A statement's shape: its text with every literal replaced by a canonical
//! one (`''` for strings of any kind, `0` for numbers), so that statements
//! that differ only in their literals (`... WHERE aid = 17` and `... WHERE
//! aid = 42`) share one cache entry. One pass over the bytes, no parse.
//! Everything else is kept as it was, comments (and so hints) included.
//!
//! The shape is a key, never something to run or to classify: the cache
//! classifies the statement's own text and files the result under its
//! shape only when the result cannot depend on a literal's value
//! ([`literal_free`]). Taking a shape is idempotent (a shape is its own
//! shape), so a text that is not a shape can never collide with one.
//!
//! Strings are read as PostgreSQL reads them with `standard_conforming_strings`
//! on, as sqlparser does; a plain string holding a backslash (which a
//! session with it off would read differently) has no shape, nor does an
//! unterminated literal or quoted name.

use super::{lex, Classification, Reason};

/// The text of `sql` with its literals made canonical, written over `out`
/// (a buffer the caller keeps, so a lookup allocates nothing), or `None`
/// when it cannot be taken safely (see the module docs).
///
/// Words, blanks and punctuation are copied a run at a time; only what can
/// start a literal, a quoted name or a comment is looked at more closely.
pub(crate) fn shape<'a>(sql: &str, out: &'a mut Vec<u8>) -> Option<&'a str> {
    let s = sql.as_bytes();
    out.clear();
    let mut i = 0;
    // Where the bytes not yet copied begin.
    let mut run = 0;
    while i < s.len() {
        let class = CLASS[usize::from(s[i])];
        let starts = class & STARTS != 0
            && match s[i] {
                b'-' => s.get(i + 1) == Some(&b'-'),
                b'/' => s.get(i + 1) == Some(&b'*'),
                _ => true,
            };
        if !starts {
            i += 1;
            if class & WORD != 0 {
                // The rest of the word: a digit or `$` in it starts nothing.
                while s.get(i).is_some_and(|&b| CLASS[usize::from(b)] & WORD != 0) {
                    i += 1;
                }
            }
            continue;
        }
        out.extend_from_slice(&s[run..i]);
        i += token(&s[i..], out)?;
        run = i;
    }
    out.extend_from_slice(&s[run..]);
    std::str::from_utf8(out).ok()
}

/// Byte classes for [`shape`]'s scan.
const WORD: u8 = 1;
/// May start a literal, a quoted name, a parameter or a comment.
const STARTS: u8 = 2;
const CLASS: [u8; 256] = {
    let mut class = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if is_word(c) {
            class[b] |= WORD;
        }
        if matches!(c, b'-' | b'/' | b'"' | b'\'' | b'$' | b'0'..=b'9') {
            class[b] |= STARTS;
        }
        b += 1;
    }
    class
};

/// At something [`CLASS`] says may start a token (and does): copies its
/// shape onto `out` and says how many bytes of `rest` it took.
fn token(rest: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let b = rest[0];
    if rest.starts_with(b"--") {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        out.extend_from_slice(&rest[..end]);
        return Some(end);
    }
    if rest.starts_with(b"/*") {
        let len = 2 + block_comment(&rest[2..])?;
        out.extend_from_slice(&rest[..len]);
        return Some(len);
    }
    if b == b'"' {
        let len = 1 + quoted(&rest[1..], b'"', false)?;
        out.extend_from_slice(&rest[..len]);
        return Some(len);
    }
    if b == b'\'' {
        let escapes = out.last().is_some_and(|p| p.eq_ignore_ascii_case(&b'e'))
            && (out.len() < 2 || !is_word(out[out.len() - 2]));
        let unicode = out.ends_with(b"&") && out.len() >= 2 && out[out.len() - 2] | 0x20 == b'u';
        let body = &rest[1..];
        if !escapes
            && !unicode
            && body
                .iter()
                .take_while(|&&c| c != b'\'')
                .any(|&c| c == b'\\')
        {
            return None;
        }
        out.extend_from_slice(b"''");
        return Some(1 + quoted(body, b'\'', escapes)?);
    }
    if b == b'$' && rest.get(1).is_some_and(u8::is_ascii_digit) {
        let len = 1 + digits(&rest[1..]);
        out.extend_from_slice(&rest[..len]);
        return Some(len);
    }
    if b == b'$' {
        let (len, literal) = dollar(rest)?;
        if literal {
            out.extend_from_slice(b"''");
        } else {
            out.extend_from_slice(&rest[..len]);
        }
        return Some(len);
    }
    // A number (CLASS sends nothing else here).
    out.push(b'0');
    Some(number(rest))
}

/// Whether a classification holds nothing a literal's value could have
/// decided, so that it serves every statement of the same shape. Session
/// effects carry values (SET, set_config, savepoint names are fine but
/// rare), and a statement sqlparser could not parse may have failed on a
/// literal.
pub(crate) fn literal_free(c: &Classification) -> bool {
    c.effects.is_empty() && c.reason != Reason::Unparsable
}

/// Letters, digits, `_`, `$` and every non-ASCII byte: what PostgreSQL
/// reads as part of an identifier or keyword (after its first character).
const fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn digits(s: &[u8]) -> usize {
    s.iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(s.len())
}

/// The length of the numeric literal `s` starts with: digits, a fraction,
/// an exponent.
fn number(s: &[u8]) -> usize {
    let mut i = digits(s);
    if s.get(i) == Some(&b'.') && s.get(i + 1) != Some(&b'.') {
        i += 1 + digits(&s[i + 1..]);
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(s.get(i + 1), Some(b'+' | b'-')));
        let exponent = digits(&s[i + 1 + sign..]);
        if exponent > 0 {
            i += 1 + sign + exponent;
        }
    }
    i
}

/// For the text after an opening `quote`: the bytes up to and including the
/// closing one (a doubled quote is one quote character; with `escapes`, a
/// backslash escapes the next byte).
fn quoted(s: &[u8], quote: u8, escapes: bool) -> Option<usize> {
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'\\' if escapes => i += 2,
            c if c == quote && s.get(i + 1) == Some(&quote) => i += 2,
            c if c == quote => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// For the text after a `/*`: the bytes up to and including the matching
/// `*/` (block comments nest), or `None` when it never closes.
fn block_comment(s: &[u8]) -> Option<usize> {
    let (body, consumed) = lex::block_comment(s);
    (consumed > body).then_some(consumed)
}

/// At a `$` that does not start a parameter: a dollar-quoted string
/// `$tag$ … $tag$` (its length, `true`), or a lone `$` (1, `false`).
fn dollar(s: &[u8]) -> Option<(usize, bool)> {
    let tag_len = s[1..].iter().position(|&c| c == b'$' || !is_word(c));
    let Some(tag_len) = tag_len.filter(|&n| s.get(1 + n) == Some(&b'$')) else {
        return Some((1, false));
    };
    let delimiter = &s[..tag_len + 2];
    let body = &s[delimiter.len()..];
    let end = body.windows(delimiter.len()).position(|w| w == delimiter)?;
    Some((delimiter.len() + end + delimiter.len(), true))
}

#[cfg(test)]
mod tests {
    fn shape(sql: &str) -> Option<String> {
        super::shape(sql, &mut Vec::new()).map(str::to_owned)
    }

    fn shaped(sql: &str) -> String {
        shape(sql).expect("has a shape")
    }

    #[test]
    fn literals_become_canonical_and_the_rest_is_kept() {
        assert_eq!(
            shaped("SELECT abalance FROM pgbench_accounts WHERE aid = 7731;"),
            "SELECT abalance FROM pgbench_accounts WHERE aid = 0;"
        );
        assert_eq!(
            shaped("select * from t1 where name = 'O''Brien' and x > 1.5e-3"),
            "select * from t1 where name = '' and x > 0"
        );
        assert_eq!(
            shaped("SELECT E'it\\'s', $fn$ body ; $fn$, $$x$$, $1, a$b"),
            "SELECT E'', '', '', $1, a$b"
        );
        assert_eq!(
            shaped("/* palisade: primary */ SELECT \"col 1\" FROM t -- 42\nLIMIT 10"),
            "/* palisade: primary */ SELECT \"col 1\" FROM t -- 42\nLIMIT 0"
        );
        assert_eq!(
            shaped("SELECT x'1F', b'01', U&'d\\0061t', '2020-01-01'::date"),
            "SELECT x'', b'', U&'', ''::date"
        );
    }

    #[test]
    fn statements_that_differ_only_in_literals_share_a_shape() {
        assert_eq!(
            shaped("SELECT * FROM t WHERE id = 1 AND s = 'a'"),
            shaped("SELECT * FROM t WHERE id = 99 AND s = 'zzz'")
        );
        assert_ne!(
            shaped("SELECT * FROM t WHERE id = 1"),
            shaped("SELECT * FROM t WHERE id = 1 FOR UPDATE")
        );
        assert_ne!(shaped("SELECT 1 /* 1 */"), shaped("SELECT 1 /* 2 */"));
    }

    #[test]
    fn a_shape_is_its_own_shape() {
        for sql in [
            "SELECT E'\\\\', $q$a$q$, 12.5e+3, 'x' 'y', t1.c2, $7",
            "UPDATE t SET v = v + 1.5 WHERE k = 'k' RETURNING 0",
        ] {
            let once = shaped(sql);
            assert_eq!(shaped(&once), once);
        }
    }

    #[test]
    fn texts_it_cannot_read_safely_have_no_shape() {
        for sql in [
            "SELECT 'a\\'",
            "SELECT 'unterminated",
            "SELECT \"open",
            "SELECT $x$ never closed",
            "SELECT 1 /* open",
        ] {
            assert_eq!(shape(sql), None, "{sql}");
        }
    }
}

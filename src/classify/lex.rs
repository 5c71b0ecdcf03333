//! Token-level work around the parser: the leading hint comment, splitting a
//! string into statements, the nesting guard, rewrites for valid syntax that
//! sqlparser lacks, and the few effects that the first words of an
//! unparsable statement make certain.

use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, TokenWithSpan, Word};

use super::{Hint, PinReason, SessionEffect};

/// The first `palisade: <hint>` among the comments that come before the
/// first token of `sql`.
pub(crate) fn leading_hint(sql: &str) -> Option<Hint> {
    let bytes = sql.as_bytes();
    let mut i = 0;
    loop {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let (body, consumed) = comment(&bytes[i..])?;
        if let Some(hint) = parse_hint(body) {
            return Some(hint);
        }
        i += consumed;
    }
}

/// The session effects the first words of `sql` make certain, for a string
/// too long to tokenize and parse (a huge literal in `CREATE TEMP TABLE …
/// AS SELECT` still pins the session).
pub(crate) fn leading_effects(sql: &str) -> Vec<SessionEffect> {
    let bytes = sql.as_bytes();
    let mut words = Vec::new();
    let mut i = 0;
    while words.len() < 5 && i < bytes.len() {
        let rest = &bytes[i..];
        if rest[0].is_ascii_whitespace() {
            i += 1;
        } else if let Some((_, consumed)) = comment(rest) {
            i += consumed;
        } else {
            let len = rest
                .iter()
                .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
                .unwrap_or(rest.len());
            if len == 0 {
                break;
            }
            words.push(sql[i..i + len].to_ascii_uppercase());
            i += len;
        }
    }
    let mut effects = Vec::new();
    statement_effects(&words, &mut effects);
    effects
}

/// The comment `s` starts with, if any (`--` to the end of the line, or a
/// block comment): its body and the bytes it takes.
fn comment(s: &[u8]) -> Option<(&[u8], usize)> {
    if s.starts_with(b"--") {
        let end = s.iter().position(|&b| b == b'\n').unwrap_or(s.len());
        Some((&s[2..end], end))
    } else if s.starts_with(b"/*") {
        let (body_len, consumed) = block_comment(&s[2..]);
        Some((&s[2..2 + body_len], 2 + consumed))
    } else {
        None
    }
}

/// For the text after a `/*`: the length of the comment body and the bytes
/// consumed including the closing `*/`. PostgreSQL block comments nest.
pub(crate) fn block_comment(s: &[u8]) -> (usize, usize) {
    let mut depth = 1usize;
    let mut i = 0;
    while i + 1 < s.len() {
        match (s[i], s[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                if depth == 0 {
                    return (i, i + 2);
                }
                i += 2;
            }
            _ => i += 1,
        }
    }
    (s.len(), s.len())
}

fn parse_hint(body: &[u8]) -> Option<Hint> {
    let text = std::str::from_utf8(body).ok()?.trim();
    let prefix = text.get(..8)?;
    if !prefix.eq_ignore_ascii_case("palisade") {
        return None;
    }
    let value = text[8..].trim_start().strip_prefix(':')?.trim();
    if value.eq_ignore_ascii_case("primary") {
        return Some(Hint::Primary);
    }
    if value.eq_ignore_ascii_case("replica") {
        return Some(Hint::Replica);
    }
    let level = match value.get(..11) {
        Some(key) if key.eq_ignore_ascii_case("consistency") => {
            value[11..].trim_start().strip_prefix('=')?.trim()
        }
        _ => value,
    };
    crate::config::Consistency::from_name(level).map(Hint::Consistency)
}

/// The tokens of each statement: split at `;` outside parentheses, with the
/// semicolons and empty statements dropped. PostgreSQL ends a statement at
/// such a `;` (strings, quoted names and comments are single tokens), except
/// inside `BEGIN ATOMIC ... END`, which sqlparser cannot parse anyway.
/// Splitting first keeps one statement from swallowing the next (sqlparser
/// would read what follows `COPY ... FROM STDIN;` as data).
pub(crate) fn split_statements(tokens: Vec<TokenWithSpan>) -> Vec<Vec<TokenWithSpan>> {
    let mut statements = Vec::new();
    let mut current = Vec::new();
    let mut depth = 0usize;
    for token in tokens {
        match token.token {
            Token::SemiColon if depth == 0 => {
                push_statement(&mut statements, std::mem::take(&mut current));
                continue;
            }
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::EOF => continue,
            _ => {}
        }
        current.push(token);
    }
    push_statement(&mut statements, current);
    statements
}

fn push_statement(statements: &mut Vec<Vec<TokenWithSpan>>, tokens: Vec<TokenWithSpan>) {
    if tokens
        .iter()
        .any(|t| !matches!(t.token, Token::Whitespace(_)))
    {
        statements.push(tokens);
    }
}

/// An upper bound on how deep a left-leaning expression chain can make the
/// AST: every token that may join two expressions (operators, casts,
/// subscripts, keywords such as AND/OR/IS/LIKE) is counted; identifiers,
/// literals, commas and parentheses are not.
pub(crate) fn chain_tokens(tokens: &[TokenWithSpan]) -> usize {
    tokens
        .iter()
        .filter(|t| match &t.token {
            Token::Whitespace(_)
            | Token::Comma
            | Token::Period
            | Token::SemiColon
            | Token::LParen
            | Token::RParen
            | Token::Number(..)
            | Token::Placeholder(_)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::HexStringLiteral(_) => false,
            Token::Word(w) => {
                w.quote_style.is_none()
                    && !matches!(
                        w.keyword,
                        // Names, literals, and clause keywords that never join expressions.
                        Keyword::NoKeyword
                            | Keyword::NULL
                            | Keyword::TRUE
                            | Keyword::FALSE
                            | Keyword::DEFAULT
                            | Keyword::SELECT
                            | Keyword::FROM
                            | Keyword::WHERE
                            | Keyword::AS
                            | Keyword::ON
                            | Keyword::JOIN
                            | Keyword::LEFT
                            | Keyword::INNER
                            | Keyword::BY
                            | Keyword::ORDER
                            | Keyword::GROUP
                            | Keyword::ASC
                            | Keyword::DESC
                            | Keyword::LIMIT
                            | Keyword::OFFSET
                            | Keyword::VALUES
                            | Keyword::INTO
                            | Keyword::RETURNING
                    )
            }
            _ => true,
        })
        .count()
}

/// Rewrites pieces of valid PostgreSQL that sqlparser rejects into forms it
/// knows that route the same, so the statements still parse:
/// * `SET XML OPTION v`: sqlparser has no such form; it is PostgreSQL's
///   `SET xmloption TO v`.
/// * `FOR NO KEY UPDATE` / `FOR KEY SHARE`: sqlparser knows only `FOR UPDATE`
///   and `FOR SHARE`; any row lock is a write, so `NO KEY` / `KEY` go.
/// * `[NOT] DEFERRABLE` in BEGIN / START TRANSACTION / SET TRANSACTION /
///   SET SESSION CHARACTERISTICS: it only changes how a serializable
///   read-only transaction waits, so it goes (with its separating comma).
pub(crate) fn normalize(tokens: &mut Vec<TokenWithSpan>) {
    // Positions of the significant (non-whitespace) tokens.
    let sig: Vec<usize> = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| !matches!(t.token, Token::Whitespace(_)))
        .map(|(i, _)| i)
        .collect();
    let kw = |n: usize| -> Option<Keyword> {
        match &tokens[*sig.get(n)?].token {
            Token::Word(Word {
                keyword,
                quote_style: None,
                ..
            }) => Some(*keyword),
            _ => None,
        }
    };
    let is = |n: usize, t: Token| sig.get(n).is_some_and(|&i| tokens[i].token == t);
    let transaction_modes = matches!(
        (kw(0), kw(1), kw(2)),
        (Some(Keyword::BEGIN | Keyword::START), _, _)
            | (Some(Keyword::SET), Some(Keyword::TRANSACTION), _)
            | (
                Some(Keyword::SET),
                Some(Keyword::SESSION),
                Some(Keyword::CHARACTERISTICS)
            )
    );
    // `SET [SESSION | LOCAL] XML OPTION v` is `SET xmloption TO v`.
    let scoped = usize::from(matches!(kw(1), Some(Keyword::SESSION | Keyword::LOCAL)));
    let xml_option = (kw(0) == Some(Keyword::SET)
        && (kw(1 + scoped), kw(2 + scoped)) == (Some(Keyword::XML), Some(Keyword::OPTION)))
        .then(|| (sig[1 + scoped], sig[2 + scoped]));
    let mut drop = Vec::new();
    for n in 0..sig.len() {
        match kw(n) {
            Some(Keyword::FOR) => match (kw(n + 1), kw(n + 2), kw(n + 3)) {
                (Some(Keyword::NO), Some(Keyword::KEY), Some(Keyword::UPDATE)) => {
                    drop.extend([sig[n + 1], sig[n + 2]]);
                }
                (Some(Keyword::KEY), Some(Keyword::SHARE), _) => drop.push(sig[n + 1]),
                _ => {}
            },
            Some(Keyword::DEFERRABLE) if transaction_modes => {
                drop.push(sig[n]);
                let first = if n > 0 && kw(n - 1) == Some(Keyword::NOT) {
                    drop.push(sig[n - 1]);
                    n - 1
                } else {
                    n
                };
                if first > 0 && is(first - 1, Token::Comma) {
                    drop.push(sig[first - 1]);
                } else if is(n + 1, Token::Comma) {
                    drop.push(sig[n + 1]);
                }
            }
            _ => {}
        }
    }
    if let Some((xml, option)) = xml_option {
        tokens[xml].token = Token::make_word("xmloption", None);
        tokens[option].token = Token::make_keyword("TO");
    }
    if drop.is_empty() {
        return;
    }
    let mut index = 0;
    tokens.retain(|_| {
        let keep = !drop.contains(&index);
        index += 1;
        keep
    });
}

/// Effects that the first words of unparsable statements make certain:
/// function DDL (reload the volatile list), temporary objects and LISTEN (pin).
pub(crate) fn unparsable_effects(statements: &[Vec<TokenWithSpan>]) -> Vec<SessionEffect> {
    let mut effects = Vec::new();
    for tokens in statements {
        let words: Vec<String> = tokens
            .iter()
            .filter(|t| !matches!(t.token, Token::Whitespace(_)))
            .map_while(|t| match &t.token {
                Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_uppercase()),
                _ => None,
            })
            .take(4)
            .collect();
        statement_effects(&words, &mut effects);
        if sets_from_current(tokens) {
            effects.push(SessionEffect::Pin(PinReason::Setting));
        }
    }
    effects
}

/// `SET [SESSION] name FROM CURRENT` (sqlparser lacks it): the value it
/// keeps is the node's own, which the proxy never sees, so it cannot be
/// given again elsewhere. `SET LOCAL` ends with its transaction.
fn sets_from_current(tokens: &[TokenWithSpan]) -> bool {
    let words: Vec<Option<Keyword>> = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_) | Token::SemiColon))
        .map(|t| match &t.token {
            Token::Word(w) if w.quote_style.is_none() => Some(w.keyword),
            _ => None,
        })
        .collect();
    matches!(
        words.as_slice(),
        [Some(Keyword::SET), second, .., Some(Keyword::FROM), Some(Keyword::CURRENT)]
            if *second != Some(Keyword::LOCAL)
    )
}

fn statement_effects(words: &[String], effects: &mut Vec<SessionEffect>) {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let routine = |s: &str| matches!(s, "FUNCTION" | "PROCEDURE" | "ROUTINE" | "EXTENSION");
    match w.as_slice() {
        ["CREATE", "OR", "REPLACE", kind, ..]
        | ["CREATE", kind, ..]
        | ["ALTER", kind, ..]
        | ["DROP", kind, ..]
            if routine(kind) =>
        {
            effects.push(SessionEffect::CatalogFunctionsChanged)
        }
        ["CREATE", "TEMP" | "TEMPORARY", ..]
        | ["CREATE", "GLOBAL" | "LOCAL", "TEMP" | "TEMPORARY", ..] => {
            effects.push(SessionEffect::Pin(PinReason::TempObject))
        }
        ["LISTEN", ..] => effects.push(SessionEffect::Pin(PinReason::Listen)),
        _ => {}
    }
}

//! How client frames become batches (pure: no socket, no clock).
//!
//! A batch is everything a client sends up to a Query or a Sync: one
//! request, one ReadyForQuery, routed as a whole. The [`Collector`] takes
//! frames off the client's input, checks and parses them, and builds the
//! batch's [`Plan`] with the help of a [`Judge`] (the classifier and the
//! session's prepared statements). Where it stands is one [`Stage`]:
//! gathering a batch, a batch due, the rest of a batch whose first part
//! went out on Flush, or skipping to Sync after a refusal (pgwire's
//! `AwaitingSync`).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::batch::{fingerprint, is_begin, parse_message, Malformed, Message, Plan};
use super::classifier::TextFrom;
use super::local;
use super::state::Prepared;
use crate::classify::{Class, Classification, Hint, PinReason, Reason, SessionEffect};
use crate::protocol::{messages, take_frame, ScanError};

const SYNC: [u8; 5] = [b'S', 0, 0, 0, 4];
/// A batch bigger than this goes out before its Sync, to the primary, so
/// that a client streaming a huge pipeline is not buffered whole.
const MAX_BATCH: usize = 1 << 20;

/// Where the collector stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Taking frames into a new batch.
    Gathering,
    /// Part of the batch went out on Flush (no Sync yet): its rest is being
    /// gathered, and follows it to the same connection.
    Flushed,
    /// The batch must be dispatched before more input is read;
    /// `continues` when it is the rest of a flushed one.
    Due { continues: bool },
    /// A batch was refused before its Sync: frames are dropped up to Sync,
    /// which is answered with ReadyForQuery.
    AwaitingSync,
}

/// What collecting came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Collected {
    /// A batch is due.
    Due,
    /// The input ran out first.
    NeedInput,
    /// COPY data (or its end) between batches: it follows the request that
    /// started the COPY, as is.
    Copy(Bytes),
    /// The Sync that ends a skip: the client is owed a ReadyForQuery.
    Synced,
    /// The client said goodbye.
    Terminate,
}

/// A client frame that cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Frame(#[from] ScanError),
    #[error(transparent)]
    Malformed(#[from] Malformed),
}

/// What the collector asks about statements while it plans a batch.
pub trait Judge {
    /// A new batch begins: the moment to pick up a newer VOLATILE list.
    fn batch_starts(&mut self);
    /// Classifies (or recalls) one statement string, sent in `from`.
    fn classify(&mut self, sql: &str, from: TextFrom) -> Arc<Classification>;
    /// A statement the session prepared earlier.
    fn statement(&self, name: &str) -> Option<&Prepared>;
}

/// The batch being gathered: its frames, its plan and its stage.
#[derive(Debug)]
pub struct Collector {
    stage: Stage,
    /// Frames of the batch.
    batch: BytesMut,
    plan: Plan,
    max_message_size: usize,
}

impl Collector {
    pub fn new(max_message_size: usize) -> Collector {
        Collector {
            stage: Stage::Gathering,
            batch: BytesMut::with_capacity(1024),
            plan: Plan::default(),
            max_message_size,
        }
    }

    pub fn is_due(&self) -> bool {
        matches!(self.stage, Stage::Due { .. })
    }

    /// Part of the batch went out already: the connection it went to is
    /// not free before the rest has followed.
    pub fn continues(&self) -> bool {
        matches!(self.stage, Stage::Flushed | Stage::Due { continues: true })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn plan_mut(&mut self) -> &mut Plan {
        &mut self.plan
    }

    /// Takes frames from `input` until a batch is due, or something else
    /// needs the caller.
    pub fn collect(
        &mut self,
        input: &mut BytesMut,
        judge: &mut impl Judge,
    ) -> Result<Collected, CollectError> {
        loop {
            if self.is_due() {
                return Ok(Collected::Due);
            }
            let Some(frame) = take_frame(input, self.max_message_size)? else {
                return Ok(Collected::NeedInput);
            };
            if frame.len() > super::SPARE_CAPACITY {
                // The large frame owns its memory alone (what follows it
                // moves to a buffer of its own), so that it becomes the
                // batch without a copy (below).
                *input = BytesMut::from(&input[..]);
            }
            let frame = frame.freeze();
            let message = parse_message(frame[0], &frame[5..])?;
            if self.stage == Stage::AwaitingSync {
                if message == Message::Sync {
                    self.stage = Stage::Gathering;
                    return Ok(Collected::Synced);
                }
                continue;
            }
            if self.batch.is_empty() {
                judge.batch_starts();
            }
            match message {
                Message::Terminate => return Ok(Collected::Terminate),
                Message::Copy if self.batch.is_empty() => return Ok(Collected::Copy(frame)),
                message => self.take(message, &frame, judge),
            }
            self.plan.messages += 1;
            if self.batch.is_empty() && frame.len() > super::SPARE_CAPACITY {
                self.batch = BytesMut::from(frame);
            } else {
                self.batch.extend_from_slice(&frame);
            }
            if self.batch.len() > MAX_BATCH {
                self.plan.write = true;
                self.make_due();
            }
        }
    }

    /// Notes what one message of the batch does.
    fn take(&mut self, message: Message, frame: &Bytes, judge: &mut impl Judge) {
        let plan = &mut self.plan;
        match message {
            Message::Query { sql } => {
                match local::parse(sql) {
                    Some(command) if plan.messages == 0 => plan.local = Some(command),
                    Some(_) => plan.local_misplaced = true,
                    None => plan_query(plan, sql, frame, judge),
                }
                plan.requests += 1;
                self.make_due();
            }
            Message::Parse { name, sql } => {
                plan.local_misplaced |= local::parse(sql).is_some();
                let classification = judge.classify(sql, TextFrom::Parse);
                plan.write |= classification.class == Class::Write;
                plan.unparsable |= classification.reason == Reason::Unparsable;
                let prepared = Prepared {
                    fingerprint: fingerprint(frame),
                    source: frame.clone(),
                    classification,
                };
                plan.parsed.push((name.to_owned(), prepared));
            }
            Message::Bind { portal, statement } => {
                plan_use(plan, statement, judge);
                plan.portals.push((portal.to_owned(), statement.to_owned()));
            }
            Message::Describe {
                statement: Some(statement),
            } => plan_use(plan, statement, judge),
            Message::Execute { portal } => {
                let executed = plan.portal(portal).and_then(|statement| {
                    plan.parsed(statement)
                        .or_else(|| judge.statement(statement))
                        .map(|p| Arc::clone(&p.classification))
                });
                match executed {
                    Some(c) => {
                        if is_begin(&c.effects) {
                            plan.begin_sql = plan.portal(portal).and_then(|statement| {
                                let prepared = plan
                                    .parsed(statement)
                                    .or_else(|| judge.statement(statement));
                                parsed_sql(&prepared?.source)
                            });
                        }
                        plan.hint(c.hint);
                        plan.shows_session |= matches!(c.reason, Reason::SessionView(_));
                        plan.execute(c.class == Class::Write, &c.effects, 1);
                    }
                    None => plan.execute(false, &[], 1),
                }
            }
            Message::Close { statement } => {
                plan.closes += 1;
                if let Some(statement) = statement {
                    plan.closed.push(statement.to_owned());
                }
            }
            Message::Sync => {
                plan.requests += 1;
                self.make_due();
            }
            Message::Flush => self.make_due(),
            // Large objects are written through it: the primary serves it.
            Message::FunctionCall => {
                plan.write = true;
                plan.requests += 1;
                self.make_due();
            }
            Message::Copy | Message::Describe { .. } | Message::Terminate => {}
        }
    }

    fn make_due(&mut self) {
        self.stage = Stage::Due {
            continues: self.continues(),
        };
    }

    /// The due batch ended on Flush having only prepared or described
    /// statements: it executed nothing and holds no portal, so a Sync of
    /// the proxy's own can close it on its server without the client
    /// seeing a difference (only its ReadyForQuery, which is not relayed).
    /// What follows is then routed by itself instead of following a read
    /// to the replica that prepared it (asyncpg prepares with Flush).
    pub fn may_close_with_own_sync(&self) -> bool {
        let plan = &self.plan;
        matches!(self.stage, Stage::Due { continues: false })
            && plan.requests == 0
            && !plan.executes
            && !plan.has_query
            && plan.portals.is_empty()
    }

    /// The due batch was sent with a Sync of the proxy's own after it
    /// ([`Collector::may_close_with_own_sync`]): the next batch starts afresh.
    pub fn sent_with_own_sync(&mut self, out: &mut BytesMut) {
        self.batch.extend_from_slice(&SYNC);
        self.plan.requests += 1;
        self.sent(out);
    }

    /// The due batch was sent: its frames go to `out`. A batch without a
    /// request (it ended on Flush) leaves its rest to follow.
    pub fn sent(&mut self, out: &mut BytesMut) {
        if out.is_empty() {
            // No copy: a large message is in memory once.
            std::mem::swap(out, &mut self.batch);
        } else {
            out.extend_from_slice(&self.batch);
        }
        self.stage = if self.plan.requests == 0 {
            Stage::Flushed
        } else {
            Stage::Gathering
        };
        self.clear();
    }

    /// [`Collector::sent`], keeping the batch's bytes (a read that may have
    /// to be sent again). They are split off, not copied, and the buffer
    /// is reclaimed for later batches once the copy is dropped.
    pub fn sent_keeping(&mut self, out: &mut BytesMut) -> Bytes {
        let kept = self.batch.split().freeze();
        out.extend_from_slice(&kept);
        self.sent(out);
        kept
    }

    /// Whether requests already sent may be put back in front of the
    /// input ([`Collector::take_back`]): no batch has part of it out, and
    /// no refused one is being skipped.
    pub fn may_take_back(&self) -> bool {
        matches!(
            self.stage,
            Stage::Gathering | Stage::Due { continues: false }
        )
    }

    /// Requests sent and lost go back in front of `input`, ahead of the
    /// batch being gathered, to be collected (and sent) again.
    pub fn take_back(&mut self, lost: &[Bytes], input: &mut BytesMut) {
        self.unread(input);
        let size = lost.iter().map(Bytes::len).sum::<usize>() + input.len();
        let mut again = BytesMut::with_capacity(size);
        for request in lost {
            again.extend_from_slice(request);
        }
        again.extend_from_slice(input);
        *input = again;
    }

    /// The batch is over without reaching a server (answered or refused).
    /// `true` when it was whole and the client is owed its ReadyForQuery;
    /// otherwise the client's frames are skipped up to its Sync.
    pub fn finish_unsent(&mut self) -> bool {
        let whole = self.plan.requests > 0;
        self.stage = if whole {
            Stage::Gathering
        } else {
            Stage::AwaitingSync
        };
        self.clear();
        whole
    }

    /// Puts the batch's frames back in front of `input` to be collected
    /// again (after the VOLATILE list changed under its classification).
    pub fn unread(&mut self, input: &mut BytesMut) {
        let mut again = BytesMut::with_capacity(self.batch.len() + input.len());
        again.extend_from_slice(&self.batch);
        again.extend_from_slice(input);
        *input = again;
        if self.is_due() {
            self.stage = if self.continues() {
                Stage::Flushed
            } else {
                Stage::Gathering
            };
        }
        self.clear();
    }

    fn clear(&mut self) {
        self.batch.clear();
        super::shed(&mut self.batch);
        self.plan.clear();
    }
}

/// Plans a simple Query's string.
fn plan_query(plan: &mut Plan, sql: &str, frame: &Bytes, judge: &mut impl Judge) {
    let c = judge.classify(sql, TextFrom::Query);
    plan.has_query = true;
    plan.unparsable |= c.reason == Reason::Unparsable;
    plan.hint(c.hint);
    plan.local_misplaced |= c.effects.iter().any(|e| match e {
        SessionEffect::Set { name, .. } | SessionEffect::Reset { name: Some(name) } => {
            local::is_proxy_setting(name)
        }
        _ => false,
    });
    let mut write = c.class == Class::Write;
    if let Reason::ExecutePrepared(name) = &c.reason {
        // EXECUTE runs whatever was prepared: route by that.
        let prepared = judge.statement(name).map(|p| p.classification.class);
        let only_execute =
            c.statements == 1 && c.effects.is_empty() && c.hint != Some(Hint::Primary);
        if only_execute && prepared == Some(Class::Read) {
            write = false;
        }
        if prepared.is_some() {
            plan.need(name);
        }
    }
    plan_prepares(plan, &c, sql, frame);
    plan.shows_session |= matches!(c.reason, Reason::SessionView(_));
    if c.statements == 1 && is_begin(&c.effects) {
        plan.begin_sql = Some(sql.to_owned());
    }
    plan.execute(write, &c.effects, c.statements);
}

/// The SQL of a Parse frame.
fn parsed_sql(source: &[u8]) -> Option<String> {
    match parse_message(*source.first()?, source.get(5..)?) {
        Ok(Message::Parse { sql, .. }) => Some(sql.to_owned()),
        _ => None,
    }
}

/// Records the statements a string's SQL `PREPARE`s create, each with the
/// text that creates it again.
fn plan_prepares(plan: &mut Plan, c: &Classification, sql: &str, frame: &Bytes) {
    let mut texts = None;
    for effect in &c.effects {
        let SessionEffect::Prepare { name, class } = effect else {
            continue;
        };
        // Replayed as the client's own string when it is the only
        // statement, else as the PREPARE alone.
        let source = if c.statements == 1 {
            Some(frame.clone())
        } else {
            texts
                .get_or_insert_with(|| crate::classify::prepare_texts(sql))
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, text)| query_frame(text))
        };
        let Some(source) = source else {
            // Nothing recreates it alone: the session stays put.
            plan.effects.push(SessionEffect::Pin(PinReason::Explicit));
            continue;
        };
        let prepared = Prepared {
            fingerprint: fingerprint(&source),
            source,
            classification: Arc::new(Classification {
                class: *class,
                reason: Reason::ExecutePrepared(name.clone()),
                hint: None,
                effects: Vec::new(),
                statements: 1,
            }),
        };
        plan.parsed.push((name.clone(), prepared));
    }
}

/// The batch uses a prepared statement it did not create itself.
fn plan_use(plan: &mut Plan, statement: &str, judge: &impl Judge) {
    if let Some(p) = plan.parsed(statement) {
        let (write, unparsable) = (
            p.classification.class == Class::Write,
            p.classification.reason == Reason::Unparsable,
        );
        plan.write |= write;
        plan.unparsable |= unparsable;
        return;
    }
    match judge.statement(statement) {
        Some(p) => {
            plan.write |= p.classification.class == Class::Write;
            plan.unparsable |= p.classification.reason == Reason::Unparsable;
            plan.need(statement);
        }
        // The server will say it does not exist; the primary is as good as any.
        None => plan.write = true,
    }
}

/// A simple Query message holding `sql`.
fn query_frame(sql: &str) -> Bytes {
    let mut frame = BytesMut::with_capacity(sql.len() + 6);
    messages::query(&mut frame, sql);
    frame.freeze()
}

#[cfg(test)]
#[path = "collect_tests.rs"]
mod tests;

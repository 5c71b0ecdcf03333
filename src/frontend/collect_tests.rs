//! Unit tests of the collect module, without a socket.

use std::collections::{HashMap, HashSet};

use bytes::{Buf, BufMut};

use super::*;
use crate::frontend::local::{Command, Param};

/// Classifies with the real classifier and an empty VOLATILE list.
#[derive(Default)]
struct TestJudge {
    statements: HashMap<String, Prepared>,
    batches: usize,
}

impl Judge for TestJudge {
    fn batch_starts(&mut self) {
        self.batches += 1;
    }

    fn classify(&mut self, sql: &str, _: TextFrom) -> Arc<Classification> {
        Arc::new(crate::classify::classify(sql, &HashSet::new()))
    }

    fn statement(&self, name: &str) -> Option<&Prepared> {
        self.statements.get(name)
    }
}

fn frame(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_i32(i32::try_from(body.len() + 4).unwrap());
    out.put_slice(body);
}

fn query(out: &mut BytesMut, sql: &str) {
    messages::query(out, sql);
}

fn parse(out: &mut BytesMut, name: &str, sql: &str) {
    let body = [name.as_bytes(), b"\0", sql.as_bytes(), b"\0\0\0"].concat();
    frame(out, b'P', &body);
}

fn bind(out: &mut BytesMut, portal: &str, statement: &str) {
    let body = [
        portal.as_bytes(),
        b"\0",
        statement.as_bytes(),
        b"\0\0\0\0\0\0\0",
    ]
    .concat();
    frame(out, b'B', &body);
}

fn execute(out: &mut BytesMut, portal: &str) {
    let body = [portal.as_bytes(), b"\0\0\0\0\0"].concat();
    frame(out, b'E', &body);
}

fn sync(out: &mut BytesMut) {
    frame(out, b'S', b"");
}

fn flush(out: &mut BytesMut) {
    frame(out, b'H', b"");
}

fn collector() -> Collector {
    Collector::new(1 << 20)
}

#[test]
fn a_simple_query_is_a_batch_of_its_own() {
    let mut c = collector();
    let mut judge = TestJudge::default();
    let mut input = BytesMut::new();
    query(&mut input, "SELECT 1");
    query(&mut input, "INSERT INTO t VALUES (1)");
    assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
    assert_eq!(c.stage, Stage::Due { continues: false });
    assert!(!c.plan().write && c.plan().executes && c.plan().requests == 1);
    let mut out = BytesMut::new();
    c.sent(&mut out);
    assert_eq!(&out[..1], b"Q");
    assert_eq!(c.stage, Stage::Gathering);
    assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
    assert!(c.plan().write, "the next batch is the insert");
    assert_eq!(judge.batches, 2);
}

#[test]
fn a_partial_frame_waits_for_more_input() {
    let mut c = collector();
    let mut judge = TestJudge::default();
    let mut whole = BytesMut::new();
    query(&mut whole, "SELECT 1");
    let mut input = BytesMut::from(&whole[..whole.len() - 3]);
    assert_eq!(
        c.collect(&mut input, &mut judge).unwrap(),
        Collected::NeedInput
    );
    assert_eq!(c.stage, Stage::Gathering);
    input.extend_from_slice(&whole[whole.len() - 3..]);
    assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
}

#[test]
fn an_extended_batch_runs_to_its_sync() {
    let mut c = collector();
    let mut judge = TestJudge::default();
    let mut input = BytesMut::new();
    parse(&mut input, "s1", "UPDATE t SET a = 1");
    bind(&mut input, "", "s1");
    execute(&mut input, "");
    assert_eq!(
        c.collect(&mut input, &mut judge).unwrap(),
        Collected::NeedInput
    );
    sync(&mut input);
    assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
    let plan = c.plan();
    assert!(plan.write && plan.executes);
    assert_eq!((plan.requests, plan.messages, plan.parsed.len()), (1, 4, 1));
    assert!(plan.needs.is_empty(), "it prepares what it uses");
}

#[test]
fn a_statement_prepared_earlier_is_needed_and_routes_the_batch() {
    let mut c = collector();
    let mut judge = TestJudge::default();
    let mut source = BytesMut::new();
    parse(&mut source, "s1", "SELECT 1");
    judge.statements.insert(
        "s1".into(),
        Prepared {
            fingerprint: 7,
            source: source.freeze(),
            classification: Arc::new(crate::classify::classify("SELECT 1", &HashSet::new())),
        },
    );
    let mut input = BytesMut::new();
    bind(&mut input, "", "s1");
    execute(&mut input, "");
    sync(&mut input);
    assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
    assert_eq!(c.plan().needs, ["s1"]);
    assert!(!c.plan().write);
    c.finish_unsent();
    bind(&mut input, "", "missing");
    execute(&mut input, "");
    sync(&mut input);
    c.collect(&mut input, &mut judge).unwrap();
    assert!(c.plan().write, "an unknown statement goes to the primary");
}

#[test]
fn a_flushed_batch_continues_until_its_sync() {
    let mut c = collector();
    let mut judge = TestJudge::default();
    let mut input = BytesMut::new();
    parse(&mut input, "", "SELECT 1");
    bind(&mut input, "", "");
    execute(&mut input, "");
    flush(&mut input);
    assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
    assert_eq!(c.stage, Stage::Due { continues: false });
    assert!(!c.continues());
    let mut out = BytesMut::new();
    c.sent(&mut out);
    assert_eq!(c.stage, Stage::Flushed);
    assert!(c.continues(), "the rest follows what was flushed");
    execute(&mut input, "");
    sync(&mut input);
    assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
    assert_eq!(c.stage, Stage::Due { continues: true });
    c.sent(&mut out);
    assert_eq!(c.stage, Stage::Gathering);
}

#[test]
fn a_refused_batch_without_its_sync_skips_to_it() {
    let mut c = collector();
    let mut judge = TestJudge::default();
    let mut input = BytesMut::new();
    parse(&mut input, "", "SELECT 1");
    flush(&mut input);
    c.collect(&mut input, &mut judge).unwrap();
    assert!(!c.finish_unsent(), "no Sync: nothing is owed yet");
    assert_eq!(c.stage, Stage::AwaitingSync);
    bind(&mut input, "", "");
    execute(&mut input, "");
    assert_eq!(
        c.collect(&mut input, &mut judge).unwrap(),
        Collected::NeedInput
    );
    sync(&mut input);
    query(&mut input, "SELECT 2");
    assert_eq!(
        c.collect(&mut input, &mut judge).unwrap(),
        Collected::Synced
    );
    assert_eq!(c.stage, Stage::Gathering);
    assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
    assert_eq!(c.plan().messages, 1, "only the query after the Sync");
    assert!(c.finish_unsent(), "a whole batch is owed its ReadyForQuery");
    assert_eq!(c.stage, Stage::Gathering);
}

#[test]
fn copy_data_between_batches_passes_through() {
    let mut c = collector();
    let mut judge = TestJudge::default();
    let mut input = BytesMut::new();
    frame(&mut input, b'd', b"1\t2\n");
    frame(&mut input, b'c', b"");
    match c.collect(&mut input, &mut judge).unwrap() {
        Collected::Copy(frame) => assert_eq!(&frame[..], b"d\0\0\0\x081\t2\n"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.collect(&mut input, &mut judge).unwrap(),
        Collected::Copy(_)
    ));
    assert_eq!(c.plan().messages, 0);
}

#[test]
fn terminate_ends_and_bad_frames_are_errors() {
    let mut c = collector();
    let mut judge = TestJudge::default();
    let mut input = BytesMut::new();
    frame(&mut input, b'X', b"");
    assert_eq!(
        c.collect(&mut input, &mut judge).unwrap(),
        Collected::Terminate
    );

    let mut input = BytesMut::new();
    frame(&mut input, b'Q', b"no terminator");
    assert!(matches!(
        c.collect(&mut input, &mut judge),
        Err(CollectError::Malformed(_))
    ));

    let mut small = Collector::new(64);
    let mut input = BytesMut::new();
    query(&mut input, &"x".repeat(100));
    assert!(matches!(
        small.collect(&mut input, &mut judge),
        Err(CollectError::Frame(ScanError::TooLarge { .. }))
    ));
}

#[test]
fn a_huge_pipeline_goes_out_before_its_sync_to_the_primary() {
    let mut c = collector();
    let mut judge = TestJudge::default();
    let mut input = BytesMut::new();
    let sql = format!("SELECT '{}'", "x".repeat(64 * 1024));
    for _ in 0..17 {
        parse(&mut input, "", &sql);
    }
    assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
    assert!(c.plan().write && c.plan().requests == 0);
    c.sent(&mut BytesMut::new());
    assert_eq!(c.stage, Stage::Flushed);
}

#[test]
fn unread_collects_the_batch_again() {
    let mut c = collector();
    let mut judge = TestJudge::default();
    let mut input = BytesMut::new();
    parse(&mut input, "", "SELECT 1");
    sync(&mut input);
    query(&mut input, "SELECT 2");
    c.collect(&mut input, &mut judge).unwrap();
    let messages_before = c.plan().messages;
    c.unread(&mut input);
    assert_eq!(c.stage, Stage::Gathering);
    assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
    assert_eq!(c.plan().messages, messages_before);
    assert_eq!(
        judge.batches, 2,
        "a new batch begins: the list is looked at again"
    );
}

#[test]
fn proxy_commands_are_noted_alone_and_refused_elsewhere() {
    let mut c = collector();
    let mut judge = TestJudge::default();
    let mut input = BytesMut::new();
    query(&mut input, "SHOW palisade.consistency");
    c.collect(&mut input, &mut judge).unwrap();
    assert_eq!(c.plan().local, Some(Command::Show(Param::Consistency)));
    assert!(!c.plan().local_misplaced);
    c.finish_unsent();
    parse(&mut input, "", "SHOW palisade.consistency");
    sync(&mut input);
    c.collect(&mut input, &mut judge).unwrap();
    assert!(c.plan().local_misplaced, "prepared, it cannot be answered");
}

#[test]
fn sql_prepare_is_recorded_with_the_text_that_recreates_it() {
    let mut c = collector();
    let mut judge = TestJudge::default();
    let mut input = BytesMut::new();
    query(&mut input, "PREPARE p AS SELECT 1; SELECT 2");
    c.collect(&mut input, &mut judge).unwrap();
    let (name, prepared) = &c.plan().parsed[0];
    assert_eq!(name, "p");
    assert_eq!(prepared.source, query_frame("PREPARE p AS SELECT 1"));
}

#[test]
fn a_function_call_is_a_request_of_its_own_on_the_primary() {
    let mut c = collector();
    let mut judge = TestJudge::default();
    let mut input = BytesMut::new();
    // FunctionCall: function oid, no argument formats, no arguments, text result.
    frame(&mut input, b'F', &[0, 0, 3, 0xB8, 0, 0, 0, 0, 0, 0]);
    query(&mut input, "SELECT 1");
    assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
    assert_eq!(c.plan().requests, 1);
    assert!(c.plan().write, "large objects are written through it");
}

#[test]
fn an_unknown_message_type_is_an_error_at_once() {
    let mut c = collector();
    let mut judge = TestJudge::default();
    let mut input = BytesMut::new();
    frame(&mut input, b'z', b"");
    assert!(matches!(
        c.collect(&mut input, &mut judge),
        Err(CollectError::Malformed(Malformed::UnknownType(b'z')))
    ));
}

#[test]
fn a_batch_that_only_prepared_before_flush_may_be_closed_with_a_sync_of_our_own() {
    let mut c = collector();
    let mut judge = TestJudge::default();
    let mut input = BytesMut::new();
    parse(&mut input, "s1", "SELECT 1");
    frame(&mut input, b'D', b"Ss1\0");
    flush(&mut input);
    assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
    assert!(c.may_close_with_own_sync());
    let mut out = BytesMut::new();
    c.sent_with_own_sync(&mut out);
    assert!(
        out.ends_with(&[b'S', 0, 0, 0, 4]),
        "a Sync follows the batch"
    );
    assert!(!c.continues(), "what follows is a batch of its own");

    // Once something is bound or executed before the Flush, the rest must follow it.
    let mut input = BytesMut::new();
    bind(&mut input, "", "s1");
    execute(&mut input, "");
    flush(&mut input);
    assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
    assert!(!c.may_close_with_own_sync());
    c.sent(&mut BytesMut::new());
    assert!(c.continues());
}

#[test]
fn a_begin_alone_keeps_its_sql_to_begin_again_elsewhere() {
    let mut judge = TestJudge::default();
    let mut input = BytesMut::new();
    query(&mut input, "BEGIN READ ONLY DEFERRABLE");
    parse(&mut input, "", "START TRANSACTION READ ONLY");
    bind(&mut input, "", "");
    execute(&mut input, "");
    sync(&mut input);
    query(&mut input, "BEGIN READ ONLY; SELECT 1");
    query(&mut input, "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE");
    let mut c = collector();
    let mut out = BytesMut::new();
    let mut next = |c: &mut Collector| {
        assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
        let plan = (c.plan().begin_sql.clone(), c.plan().txn_needs_primary);
        c.sent(&mut out);
        plan
    };
    let simple = Some("BEGIN READ ONLY DEFERRABLE".to_owned());
    assert_eq!(next(&mut c), (simple, false));
    let extended = Some("START TRANSACTION READ ONLY".to_owned());
    assert_eq!(next(&mut c), (extended, false));
    assert_eq!(next(&mut c), (None, false), "it runs more than its BEGIN");
    assert_eq!(next(&mut c), (None, true), "this one needs the primary");
}

#[test]
fn set_config_pins_in_the_extended_protocol_too() {
    let mut judge = TestJudge::default();
    let mut input = BytesMut::new();
    parse(&mut input, "", "SELECT set_config($1, $2, false)");
    bind(&mut input, "", "");
    execute(&mut input, "");
    sync(&mut input);
    let mut c = collector();
    assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
    assert!(c.plan().write);
    assert_eq!(c.plan().effects, [SessionEffect::Pin(PinReason::Setting)]);
}

#[test]
fn a_large_frame_becomes_the_batch_and_goes_out_without_a_copy() {
    let mut judge = TestJudge::default();
    let mut input = BytesMut::new();
    let sql = format!("SELECT length('{}')", "x".repeat(200 * 1024));
    query(&mut input, &sql);
    let at = input.as_ptr();
    let mut c = collector();
    assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
    assert_eq!(c.batch.as_ptr(), at, "the batch is the input's memory");
    let mut out = BytesMut::new();
    c.sent(&mut out);
    assert_eq!(out.as_ptr(), at, "and so is what goes to the server");
    assert!(c.batch.capacity() <= crate::frontend::SPARE_CAPACITY);
    // Written out, the buffer gives its memory back, though what is left
    // of it looks small.
    let len = out.len();
    out.advance(len);
    crate::frontend::shed(&mut out);
    assert!(!out.try_reclaim(1), "nothing left of the large allocation");
}

#[test]
fn small_frames_keep_the_batch_buffer() {
    let mut judge = TestJudge::default();
    let mut c = collector();
    let mut out = BytesMut::new();
    for _ in 0..2 {
        let mut input = BytesMut::new();
        query(&mut input, "SELECT 1");
        assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
        c.sent(&mut out);
    }
    assert_eq!(&out[..1], b"Q");
    assert_eq!(out.len(), 2 * 14, "the second was added to the first");
}

#[test]
fn a_kept_batch_taken_back_is_collected_again_ahead_of_the_rest() {
    let mut c = collector();
    let mut judge = TestJudge::default();
    let mut input = BytesMut::new();
    parse(&mut input, "s", "SELECT 1");
    bind(&mut input, "", "s");
    execute(&mut input, "");
    sync(&mut input);
    let first = input.clone();
    query(&mut input, "SELECT 2");
    query(&mut input, "SELECT 3");

    assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
    let mut out = BytesMut::new();
    let kept = c.sent_keeping(&mut out);
    assert_eq!(&kept[..], &first[..], "the copy is the batch");
    assert_eq!(&out[..], &first[..], "and it went out whole");
    assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
    let second = c.sent_keeping(&mut out);
    // The third query is being gathered (a partial frame) when both are lost.
    let third = input.clone();
    input.truncate(3);
    assert_eq!(
        c.collect(&mut input, &mut judge).unwrap(),
        Collected::NeedInput
    );
    assert!(c.may_take_back());
    let mut expected = first.clone();
    expected.extend_from_slice(&second);
    expected.extend_from_slice(&third);
    c.take_back(&[kept, second], &mut input);
    input.extend_from_slice(&third[3..]);
    assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
    assert_eq!(c.plan().parsed.len(), 1, "the Parse is planned again");
    assert!(!c.plan().write && c.plan().executes);
    let mut again = BytesMut::new();
    c.sent(&mut again);
    for sql in ["SELECT 2", "SELECT 3"] {
        assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
        assert!(c.plan().has_query, "{sql}");
        c.sent(&mut again);
    }
    assert_eq!(&again[..], &expected[..], "same bytes, same order");
    assert!(input.is_empty());
}

#[test]
fn nothing_is_taken_back_while_a_flushed_batch_is_out_or_a_refusal_is_skipped() {
    let mut c = collector();
    let mut judge = TestJudge::default();
    let mut input = BytesMut::new();
    parse(&mut input, "s", "SELECT 1");
    flush(&mut input);
    assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
    c.sent(&mut BytesMut::new());
    assert!(!c.may_take_back(), "the rest of a flushed batch follows");
    sync(&mut input);
    assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
    assert!(!c.may_take_back());
    c.sent(&mut BytesMut::new());
    assert!(c.may_take_back());
    bind(&mut input, "", "s");
    flush(&mut input);
    assert_eq!(c.collect(&mut input, &mut judge).unwrap(), Collected::Due);
    assert!(!c.finish_unsent(), "refused before its Sync");
    assert!(!c.may_take_back());
}

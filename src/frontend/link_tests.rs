//! Unit tests of the link module, without a socket.

use bytes::BufMut;

use super::*;

fn frame(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_i32(i32::try_from(body.len() + 4).unwrap());
    out.put_slice(body);
}

fn ready(out: &mut BytesMut, status: u8) {
    frame(out, b'Z', &[status]);
}

fn sent(effects: Vec<SessionEffect>) -> Sent {
    Sent {
        effects,
        ..Sent::default()
    }
}

#[test]
fn fatal_errors_are_recognised() {
    assert!(is_fatal(b"SFATAL\0VFATAL\0C57P01\0Mbye\0\0"));
    assert!(is_fatal(b"VPANIC\0\0"));
    assert!(!is_fatal(b"SERROR\0VERROR\0C42601\0Msyntax\0\0"));
    assert!(!is_fatal(b""));
    assert!(!is_fatal(b"S"));
}

#[test]
fn replies_are_passed_on_up_to_each_ready_for_query() {
    let mut r = Requests::new();
    r.sent(sent(vec![]), 1, false);
    r.sent(sent(vec![SessionEffect::Commit]), 1, false);
    assert_eq!(r.phase, Phase::Busy { outstanding: 2 });

    let mut pending = BytesMut::new();
    frame(&mut pending, b'D', b"\0\x01\0\0\0\x011");
    frame(&mut pending, b'C', b"SELECT 1\0");
    ready(&mut pending, b'T');
    frame(&mut pending, b'C', b"COMMIT\0");
    ready(&mut pending, b'I');
    let total = pending.len();
    let mut client = BytesMut::new();

    let (first, status) = r.relay(&mut pending, &mut client).unwrap().unwrap();
    assert!(first.unwrap().effects.is_empty());
    assert_eq!(status, TxnStatus::InTransaction);
    assert_eq!(r.phase, Phase::Busy { outstanding: 1 });

    let (second, status) = r.relay(&mut pending, &mut client).unwrap().unwrap();
    assert_eq!(second.unwrap().effects, [SessionEffect::Commit]);
    assert_eq!(status, TxnStatus::Idle);
    assert_eq!(r.phase, Phase::Ready(TxnStatus::Idle));
    assert_eq!(client.len(), total, "every byte went to the client as is");
    assert!(r.relay(&mut pending, &mut client).unwrap().is_none());
}

#[test]
fn errors_and_confirmed_parses_are_counted_on_the_request() {
    let mut r = Requests::new();
    r.sent(
        Sent {
            parsed: vec![("a".into(), 1), ("b".into(), 2)],
            ..Sent::default()
        },
        1,
        false,
    );
    let mut pending = BytesMut::new();
    frame(&mut pending, b'1', b"");
    frame(&mut pending, b'E', b"SERROR\0VERROR\0C42601\0Msyntax\0\0");
    ready(&mut pending, b'I');
    let (answered, _) = r
        .relay(&mut pending, &mut BytesMut::new())
        .unwrap()
        .unwrap();
    let answered = answered.unwrap();
    assert_eq!(answered.parse_ok, 1);
    assert!(answered.failed);
    assert!(!r.fatal_seen);

    frame(&mut pending, b'E', b"SFATAL\0VFATAL\0C57P01\0Mbye\0\0");
    assert!(r
        .relay(&mut pending, &mut BytesMut::new())
        .unwrap()
        .is_none());
    assert!(r.fatal_seen);
}

#[test]
fn a_ready_for_query_is_only_passed_on_whole() {
    let mut r = Requests::new();
    r.sent(sent(vec![]), 1, false);
    let mut whole = BytesMut::new();
    ready(&mut whole, b'E');
    let mut pending = BytesMut::from(&whole[..3]);
    let mut client = BytesMut::new();
    assert!(r.relay(&mut pending, &mut client).unwrap().is_none());
    assert!(client.is_empty());
    pending.extend_from_slice(&whole[3..]);
    let (_, status) = r.relay(&mut pending, &mut client).unwrap().unwrap();
    assert_eq!(status, TxnStatus::Failed);
    assert_eq!(r.phase, Phase::Ready(TxnStatus::Failed));
}

#[test]
fn the_rest_of_a_flushed_batch_joins_its_request() {
    let mut r = Requests::new();
    r.sent(
        sent(vec![SessionEffect::Begin { read_only: false }]),
        0,
        false,
    );
    assert_eq!(r.phase, Phase::Ready(TxnStatus::Idle), "no request yet");
    r.sent(
        Sent {
            on_primary: true,
            ..sent(vec![SessionEffect::Commit])
        },
        1,
        true,
    );
    assert_eq!(r.inflight.len(), 1);
    let joined = &r.inflight[0];
    assert_eq!(joined.effects.len(), 2);
    assert!(joined.on_primary);
    assert_eq!(r.phase, Phase::Busy { outstanding: 1 });
}

#[test]
fn a_server_breaking_framing_is_an_error() {
    let mut r = Requests::new();
    let mut pending = BytesMut::from(&b"Z\0\0\0\x01"[..]);
    assert!(r.relay(&mut pending, &mut BytesMut::new()).is_err());
}

#[test]
fn the_ready_for_query_of_the_proxys_own_sync_is_not_relayed() {
    let mut r = Requests::new();
    r.sent(
        Sent {
            own_sync: true,
            parsed: vec![("s1".into(), 7)],
            ..Sent::default()
        },
        1,
        false,
    );
    let mut pending = BytesMut::new();
    frame(&mut pending, b'1', b"");
    frame(&mut pending, b't', b"\0\0");
    frame(&mut pending, b'n', b"");
    let replies = pending.clone();
    ready(&mut pending, b'I');
    let mut client = BytesMut::new();
    let (sent, status) = r.relay(&mut pending, &mut client).unwrap().unwrap();
    assert_eq!(
        &client[..],
        &replies[..],
        "everything but the ReadyForQuery"
    );
    assert_eq!(sent.unwrap().parse_ok, 1);
    assert_eq!(status, TxnStatus::Idle);
    assert_eq!(r.phase, Phase::Ready(TxnStatus::Idle));
    assert!(pending.is_empty());
}

fn kept(autocommit: bool) -> Sent {
    Sent {
        autocommit,
        copy: Some(Bytes::from_static(b"Q\0\0\0\x0dSELECT 1\0")),
        ..Sent::default()
    }
}

#[test]
fn a_request_keeps_its_bytes_until_a_byte_of_its_reply_is_passed_on() {
    let mut r = Requests::new();
    r.sent(kept(true), 1, false);
    r.sent(kept(true), 1, false);
    let front = |r: &Requests| r.inflight.front().map(|s| s.copy.is_some());
    let mut pending = BytesMut::new();
    frame(&mut pending, b'T', b"\0\0");
    let mut client = BytesMut::new();
    // Nothing whole yet: nothing passed on, the copy stays.
    let mut partial = BytesMut::from(&pending[..3]);
    assert!(r.relay(&mut partial, &mut client).unwrap().is_none());
    assert_eq!(front(&r), Some(true));
    assert!(r.relay(&mut pending, &mut client).unwrap().is_none());
    assert_eq!(front(&r), Some(false), "a byte reached the client");
    assert!(r.inflight[1].copy.is_some(), "the next one keeps its own");
    ready(&mut pending, b'I');
    let (first, _) = r.relay(&mut pending, &mut client).unwrap().unwrap();
    assert!(first.unwrap().copy.is_none());
    assert_eq!(front(&r), Some(true));
    // The rest of a flushed batch joining a request drops its copy.
    r.sent(Sent::default(), 0, true);
    assert_eq!(front(&r), Some(false));
}

#[test]
fn a_fatal_error_is_withheld_and_stops_the_relay_in_or_out_of_a_transaction() {
    let fatal = b"SFATAL\0VFATAL\0C57P01\0Mterminating connection\0\0";
    for autocommit in [true, false] {
        let mut r = Requests::new();
        // A write: what came before the error is its client's.
        let write = Sent {
            autocommit,
            ..Sent::default()
        };
        r.sent(write, 1, false);
        let mut pending = BytesMut::new();
        frame(&mut pending, b'N', b"SNOTICE\0C00000\0Mhello\0\0");
        let notice = pending.clone();
        frame(&mut pending, b'E', fatal);
        let error = BytesMut::from(&pending[notice.len()..]);
        let mut client = BytesMut::new();
        assert!(r.relay(&mut pending, &mut client).unwrap().is_none());
        assert!(r.fatal_seen);
        assert_eq!(&client[..], &notice[..], "only what came before it");
        assert_eq!(r.withheld.as_deref(), Some(&error[..]));
        assert!(r.inflight[0].replied, "the notice was its reply's start");
        ready(&mut pending, b'I');
        assert!(
            r.relay(&mut pending, &mut client).unwrap().is_none(),
            "nothing more is relayed from an ending connection"
        );
        assert_eq!(&client[..], &notice[..]);
    }
}

#[test]
fn error_fields_are_read_by_code() {
    let body = b"SFATAL\0VFATAL\0C57P01\0Mbye\0\0";
    assert_eq!(error_field(body, b'C'), Some("57P01"));
    assert_eq!(error_field(body, b'M'), Some("bye"));
    assert_eq!(error_field(body, b'D'), None);
    assert_eq!(error_field(b"Cabc", b'C'), None, "unterminated");
}

#[test]
fn what_a_server_flushed_as_it_ended_is_dropped_for_a_request_sent_again() {
    let fatal = b"SFATAL\0VFATAL\0C57P01\0Mterminating connection\0\0";
    for keeps in [true, false] {
        let mut r = Requests::new();
        r.sent(
            Sent {
                copy: None,
                ..kept(true)
            },
            1,
            false,
        );
        if keeps {
            r.inflight[0].copy = kept(true).copy;
        }
        let mut pending = BytesMut::new();
        frame(&mut pending, b'2', b"");
        let bind_complete = pending.clone();
        frame(&mut pending, b'E', fatal);
        let mut client = BytesMut::new();
        assert!(r.relay(&mut pending, &mut client).unwrap().is_none());
        assert!(r.withheld.is_some());
        if keeps {
            assert!(client.is_empty(), "its reply comes from elsewhere");
            assert!(r.inflight[0].copy.is_some(), "still to be sent again");
        } else {
            assert_eq!(&client[..], &bind_complete[..]);
        }
    }
}

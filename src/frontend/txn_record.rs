//! The record transaction replay keeps of the open transaction (pure; the
//! session feeds it and `session/replay_txn.rs` replays it).
//!
//! With `failover.transaction_replay` on, every request sent on the
//! primary from the one that opens a transaction (its BEGIN included) is
//! kept as the bytes the client sent, with a checksum of the reply the
//! client was given ([`Checksum`]: its frames, and the status its
//! ReadyForQuery left). If the primary is lost before COMMIT, the
//! requests are sent again on the new primary and each reply's checksum
//! must match, or the client is told 40001. A transaction whose record
//! would pass `replay_max_bytes`, that copies data in (COPY's data frames
//! are not requests), or that opened where nothing was recording (a
//! replica, or behind a pipelined request) is *spoiled*: it cannot be
//! replayed. The record is dropped as the transaction ends.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::hash::Hasher;

use bytes::Bytes;

use crate::backend::Carried;
use crate::protocol::TxnStatus;

/// A running checksum of a reply's frames, chunking aside: the same bytes
/// give the same sum however they arrived. Frames a server may send
/// unasked or that say nothing of the results are left out: its
/// ParameterStatus (a promoted node reports `in_hot_standby`), notices,
/// notifications, and the ReadyForQuery (whose status [`Self::finish`]
/// adds).
#[derive(Debug, Clone, Default)]
pub struct Checksum {
    sum: DefaultHasher,
    /// The frame header being read, and how much of it has come.
    head: [u8; 5],
    have: usize,
    /// What is left of the current frame's body, and whether it counts.
    left: usize,
    skip: bool,
}

impl Checksum {
    pub fn add(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.left == 0 {
                let take = (5 - self.have).min(bytes.len());
                self.head[self.have..self.have + take].copy_from_slice(&bytes[..take]);
                self.have += take;
                bytes = &bytes[take..];
                if self.have < 5 {
                    return;
                }
                self.have = 0;
                let len =
                    u32::from_be_bytes([self.head[1], self.head[2], self.head[3], self.head[4]]);
                self.left = (len as usize).saturating_sub(4);
                self.skip = matches!(self.head[0], b'S' | b'N' | b'A' | b'Z');
                if !self.skip {
                    self.sum.write(&self.head);
                }
                continue;
            }
            let take = self.left.min(bytes.len());
            if !self.skip {
                self.sum.write(&bytes[..take]);
            }
            self.left -= take;
            bytes = &bytes[take..];
        }
    }

    /// The sum of the reply, closed by its ReadyForQuery's status.
    pub fn finish(mut self, status: TxnStatus) -> u64 {
        self.sum.write_u8(status as u8);
        self.sum.finish()
    }
}

/// One request of the open transaction.
#[derive(Debug, Clone)]
pub struct Entry {
    /// What the client sent, as sent.
    pub request: Bytes,
    /// Statements it prepares.
    pub parsed: Vec<String>,
    /// Its reply so far, until it is answered.
    reply: Checksum,
    /// The checksum of its whole reply, once answered.
    pub answered: Option<u64>,
}

/// A recorded transaction.
#[derive(Debug, Clone, Default)]
pub struct Open {
    /// What the connection held of the session when it began.
    pub begin: Carried,
    pub entries: Vec<Entry>,
    bytes: usize,
    /// Requests outside the transaction still in flight ahead of it
    /// (a driver's pipelined Close): their replies are not its own.
    ahead: usize,
}

impl Open {
    /// The requests answered, in order, and the statements any of them
    /// prepares.
    pub fn answered(&self) -> impl Iterator<Item = (&Bytes, u64)> {
        self.entries
            .iter()
            .filter_map(|e| Some((&e.request, e.answered?)))
    }

    pub fn parsed(&self) -> HashSet<&str> {
        self.entries
            .iter()
            .flat_map(|e| e.parsed.iter().map(String::as_str))
            .collect()
    }
}

#[derive(Debug, Clone, Default)]
enum Record {
    /// No transaction open (or replay off).
    #[default]
    Idle,
    Open(Open),
    /// A transaction is open that cannot be replayed.
    Spoiled,
}

/// What was recorded of a transaction whose connection was lost.
#[derive(Debug)]
pub enum Lost {
    /// Replayable: the answered requests and the ones still in flight
    /// (their bytes, to be sent again once the rest has been replayed).
    Open {
        open: Open,
        in_flight: Vec<Bytes>,
    },
    Spoiled,
    /// Replay is off.
    Off,
}

/// The session's recorder.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// `replay_max_bytes`; `None` when replay is off.
    limit: Option<usize>,
    record: Record,
}

impl Recorder {
    pub fn new(limit: Option<usize>) -> Recorder {
        Recorder {
            limit,
            record: Record::Idle,
        }
    }

    /// Transaction replay is on.
    pub fn on(&self) -> bool {
        self.limit.is_some()
    }

    /// Something is being recorded: replies must be fed in.
    pub fn recording(&self) -> bool {
        matches!(self.record, Record::Open(_))
    }

    /// A request went out. `starts` is what the connection held before it
    /// and how many requests outside any transaction are in flight ahead
    /// of it, when it may open a transaction the record can follow (sent
    /// on the primary); `continuing` when it is the rest of a flushed
    /// batch.
    pub fn sent(
        &mut self,
        request: &[u8],
        parsed: Vec<String>,
        continuing: bool,
        starts: Option<(Carried, usize)>,
    ) {
        let Some(limit) = self.limit else {
            return;
        };
        let open = match (&mut self.record, starts) {
            (Record::Open(open), _) => open,
            (Record::Idle, Some((begin, ahead))) => {
                self.record = Record::Open(Open {
                    begin,
                    ahead,
                    ..Open::default()
                });
                let Record::Open(open) = &mut self.record else {
                    return;
                };
                open
            }
            (Record::Idle | Record::Spoiled, _) => return,
        };
        open.bytes += request.len();
        if open.bytes > limit {
            self.record = Record::Spoiled;
            return;
        }
        match open.entries.last_mut().filter(|_| continuing) {
            Some(last) => {
                let mut joined = Vec::with_capacity(last.request.len() + request.len());
                joined.extend_from_slice(&last.request);
                joined.extend_from_slice(request);
                last.request = joined.into();
                last.parsed.extend(parsed);
            }
            None => open.entries.push(Entry {
                request: Bytes::copy_from_slice(request),
                parsed,
                reply: Checksum::default(),
                answered: None,
            }),
        }
    }

    /// Data went out that is not a request (COPY): the transaction cannot
    /// be replayed.
    pub fn spoil(&mut self) {
        if self.limit.is_some() && !matches!(self.record, Record::Idle) {
            self.record = Record::Spoiled;
        }
    }

    /// Bytes of the oldest unanswered request's reply reached the client.
    pub fn relayed(&mut self, bytes: &[u8]) {
        if let Record::Open(open) = &mut self.record {
            if open.ahead > 0 {
                return;
            }
            if let Some(e) = open.entries.iter_mut().find(|e| e.answered.is_none()) {
                e.reply.add(bytes);
            }
        }
    }

    /// The oldest unanswered request was answered with `status`; `now` is
    /// what the connection holds, for a transaction that requests already
    /// in flight behind it may open.
    pub fn answered(&mut self, status: TxnStatus, now: &Carried) {
        if self.limit.is_none() {
            return;
        }
        match &mut self.record {
            Record::Open(open) if open.ahead > 0 => open.ahead -= 1,
            Record::Open(open) => {
                if let Some(e) = open.entries.iter_mut().find(|e| e.answered.is_none()) {
                    e.answered = Some(std::mem::take(&mut e.reply).finish(status));
                }
                if status == TxnStatus::Idle {
                    // The transaction is over; what follows it starts afresh.
                    open.entries.retain(|e| e.answered.is_none());
                    if open.entries.is_empty() {
                        self.record = Record::Idle;
                    } else {
                        open.begin = now.clone();
                        open.bytes = open.entries.iter().map(|e| e.request.len()).sum();
                    }
                }
            }
            Record::Idle if status != TxnStatus::Idle => self.record = Record::Spoiled,
            Record::Idle => {}
            Record::Spoiled if status == TxnStatus::Idle => self.record = Record::Idle,
            Record::Spoiled => {}
        }
    }

    /// The connection holding the transaction was lost: what there is to
    /// replay. The recorder starts afresh.
    pub fn lost(&mut self) -> Lost {
        if self.limit.is_none() {
            return Lost::Off;
        }
        match std::mem::take(&mut self.record) {
            Record::Open(mut open) => {
                let at = open
                    .entries
                    .iter()
                    .position(|e| e.answered.is_none())
                    .unwrap_or(open.entries.len());
                let in_flight = open.entries.split_off(at);
                open.bytes = open.entries.iter().map(|e| e.request.len()).sum();
                Lost::Open {
                    open,
                    in_flight: in_flight.into_iter().map(|e| e.request).collect(),
                }
            }
            Record::Idle | Record::Spoiled => Lost::Spoiled,
        }
    }

    /// The transaction was replayed on a new connection: it is recorded
    /// as before, so that it survives another failover.
    pub fn resume(&mut self, open: Open) {
        if self.limit.is_some() {
            self.record = Record::Open(open);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 100;

    fn recorder() -> Recorder {
        Recorder::new(Some(LIMIT))
    }

    /// A request answered with `reply`, leaving `status`.
    fn round(r: &mut Recorder, request: &[u8], reply: &[u8], status: TxnStatus, starts: bool) {
        r.sent(
            request,
            vec![],
            false,
            starts.then(|| (Carried::default(), 0)),
        );
        r.relayed(reply);
        r.answered(status, &Carried::default());
    }

    /// One frame: tag, length, body.
    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![tag];
        f.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    fn sum(chunks: &[&[u8]], status: TxnStatus) -> u64 {
        let mut c = Checksum::default();
        for chunk in chunks {
            c.add(chunk);
        }
        c.finish(status)
    }

    #[test]
    fn a_checksum_ignores_chunking_and_what_a_server_says_unasked() {
        let reply = [frame(b'D', b"row one"), frame(b'C', b"SELECT 1\0")].concat();
        let whole = sum(&[&reply], TxnStatus::InTransaction);
        for cut in 0..reply.len() {
            let (a, b) = reply.split_at(cut);
            assert_eq!(
                sum(&[a, b], TxnStatus::InTransaction),
                whole,
                "cut at {cut}"
            );
        }
        assert_ne!(
            sum(&[&reply], TxnStatus::Failed),
            whole,
            "the status counts"
        );
        let other = [frame(b'D', b"row two"), frame(b'C', b"SELECT 1\0")].concat();
        assert_ne!(sum(&[&other], TxnStatus::InTransaction), whole);
        let chatty = [
            frame(b'S', b"in_hot_standby\0off\0"),
            frame(b'D', b"row one"),
            frame(b'N', b"SNOTICE\0Mhi\0\0"),
            frame(b'C', b"SELECT 1\0"),
            frame(b'Z', b"T"),
        ]
        .concat();
        assert_eq!(sum(&[&chatty], TxnStatus::InTransaction), whole);
    }

    #[test]
    fn a_transaction_is_recorded_from_its_begin_until_it_ends() {
        let mut r = recorder();
        round(&mut r, b"BEGIN", b"C-BEGIN", TxnStatus::InTransaction, true);
        round(
            &mut r,
            b"INSERT",
            b"C-INSERT 0 1",
            TxnStatus::InTransaction,
            false,
        );
        r.sent(b"UPDATE", vec!["s1".into()], false, None);
        let Lost::Open { open, in_flight } = r.clone().lost() else {
            panic!("replayable");
        };
        let done: Vec<_> = open.answered().map(|(b, _)| b.clone()).collect();
        assert_eq!(done, [&b"BEGIN"[..], b"INSERT"]);
        assert_eq!(in_flight, [&b"UPDATE"[..]]);
        assert!(
            !open.parsed().contains("s1"),
            "a request in flight is sent again as a new one"
        );
        // The sums are those of the replies as relayed.
        let mut c = Checksum::default();
        c.add(b"C-INSERT 0 1");
        assert_eq!(
            open.answered().nth(1).unwrap().1,
            c.finish(TxnStatus::InTransaction)
        );
        r.answered(TxnStatus::InTransaction, &Carried::default());
        round(&mut r, b"COMMIT", b"C-COMMIT", TxnStatus::Idle, false);
        assert!(!r.recording(), "over with its COMMIT");
        assert!(matches!(r.lost(), Lost::Spoiled), "nothing open to replay");
    }

    #[test]
    fn autocommit_requests_leave_nothing_recorded() {
        let mut r = recorder();
        round(&mut r, b"INSERT", b"C", TxnStatus::Idle, true);
        assert!(!r.recording());
        let mut off = Recorder::new(None);
        off.sent(b"BEGIN", vec![], false, Some((Carried::default(), 0)));
        assert!(!off.recording() && !off.on());
        assert!(matches!(off.lost(), Lost::Off));
    }

    #[test]
    fn a_transaction_past_the_limit_copying_or_unseen_is_spoiled_until_it_ends() {
        let mut r = recorder();
        round(&mut r, b"BEGIN", b"C", TxnStatus::InTransaction, true);
        round(
            &mut r,
            &[b'x'; LIMIT],
            b"C",
            TxnStatus::InTransaction,
            false,
        );
        assert!(!r.recording(), "past replay_max_bytes");
        assert!(matches!(r.clone().lost(), Lost::Spoiled));
        round(&mut r, b"ROLLBACK", b"C", TxnStatus::Idle, false);
        round(&mut r, b"BEGIN", b"C", TxnStatus::InTransaction, true);
        assert!(r.recording(), "the next transaction is recorded again");
        r.spoil();
        assert!(matches!(r.clone().lost(), Lost::Spoiled), "COPY data");
        round(&mut r, b"COMMIT", b"C", TxnStatus::Idle, false);
        // Opened where nothing recorded it (behind a pipelined request).
        round(&mut r, b"BEGIN", b"C", TxnStatus::InTransaction, false);
        assert!(matches!(r.lost(), Lost::Spoiled));
    }

    #[test]
    fn a_flushed_batchs_rest_joins_its_request_and_a_replayed_record_resumes() {
        let mut r = recorder();
        round(&mut r, b"BEGIN", b"C", TxnStatus::InTransaction, true);
        r.sent(b"Parse", vec!["a".into()], false, None);
        r.sent(b"Sync", vec![], true, None);
        r.relayed(b"1");
        r.answered(TxnStatus::InTransaction, &Carried::default());
        r.sent(b"Bind", vec![], false, None);
        let Lost::Open { open, in_flight } = r.lost() else {
            panic!("replayable");
        };
        assert_eq!(in_flight, [&b"Bind"[..]]);
        let done: Vec<_> = open.answered().map(|(b, _)| b.clone()).collect();
        assert_eq!(done, [&b"BEGIN"[..], b"ParseSync"]);
        assert!(open.parsed().contains("a"));
        assert!(!r.recording(), "nothing left after a loss");
        r.resume(open);
        assert!(r.recording());
        round(&mut r, b"COMMIT", b"C", TxnStatus::Idle, false);
        assert!(!r.recording());
    }

    #[test]
    fn a_begin_behind_a_pipelined_autocommit_request_skips_its_reply() {
        let mut r = recorder();
        r.sent(b"BEGIN", vec![], false, Some((Carried::default(), 1)));
        r.relayed(b"3");
        r.answered(TxnStatus::Idle, &Carried::default());
        assert!(r.recording(), "the Close's reply is not the BEGIN's");
        r.relayed(b"C-BEGIN");
        r.answered(TxnStatus::InTransaction, &Carried::default());
        let Lost::Open { open, .. } = r.lost() else {
            panic!("replayable");
        };
        let mut c = Checksum::default();
        c.add(b"C-BEGIN");
        let sums: Vec<u64> = open.answered().map(|(_, sum)| sum).collect();
        assert_eq!(sums, [c.finish(TxnStatus::InTransaction)]);
    }

    #[test]
    fn a_transaction_pipelined_behind_the_end_of_another_is_still_followed() {
        let mut r = recorder();
        round(&mut r, b"BEGIN", b"C", TxnStatus::InTransaction, true);
        r.sent(b"COMMIT", vec![], false, None);
        r.sent(b"BEGIN", vec![], false, None);
        r.relayed(b"C");
        r.answered(TxnStatus::Idle, &Carried::default());
        assert!(r.recording(), "the second BEGIN is in flight");
        r.relayed(b"C");
        r.answered(TxnStatus::InTransaction, &Carried::default());
        let Lost::Open { open, in_flight } = r.lost() else {
            panic!("replayable");
        };
        assert!(in_flight.is_empty());
        let done: Vec<_> = open.answered().map(|(b, _)| b.clone()).collect();
        assert_eq!(done, [&b"BEGIN"[..]]);
    }
}

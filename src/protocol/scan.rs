//! Finding frame boundaries in a byte stream without decoding the frames.
//!
//! A [`FrameScanner`] walks a read buffer frame by frame. Frames whose tag the
//! caller must look at are only reported once complete; any other frame is
//! passed through as soon as its bytes arrive, so a 500 MB DataRow streams
//! through a small buffer instead of being held whole. Every length is checked
//! against the cap before anything is allocated.

use bytes::BytesMut;

use super::be_i32;

/// A frame header that cannot be relayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("invalid message length {len} for message type {tag:?}")]
    BadLength { tag: char, len: i64 },
    #[error("message of type {tag:?} is {len} bytes, over the limit of {max} bytes")]
    TooLarge { tag: char, len: usize, max: usize },
}

/// One complete frame that the caller asked to inspect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub tag: u8,
    pub body: &'a [u8],
}

/// Walks frames across successive reads of one direction of a connection.
#[derive(Debug)]
pub struct FrameScanner {
    /// Bytes of a streamed (uninspected) frame still to pass through.
    streaming: usize,
    max_len: usize,
}

impl FrameScanner {
    /// `max_len` caps the length of any frame (tag excluded).
    pub fn new(max_len: usize) -> FrameScanner {
        FrameScanner {
            streaming: 0,
            max_len,
        }
    }

    /// True while part of a frame has been passed on and the rest has not
    /// arrived: nothing else may be written into that stream until it has.
    pub fn mid_frame(&self) -> bool {
        self.streaming > 0
    }

    /// Scans `buf` and returns how many leading bytes may be passed on.
    ///
    /// `inspect(tag)` says whether a tag must be seen whole; such frames are
    /// handed to `on_frame` and only counted as passable once complete.
    /// `on_frame` returns `false` to stop the scan after that frame (the
    /// frame itself is included in the returned count).
    pub fn scan(
        &mut self,
        buf: &[u8],
        inspect: impl Fn(u8) -> bool,
        mut on_frame: impl FnMut(Frame<'_>) -> bool,
    ) -> Result<usize, ScanError> {
        let mut pos = 0;
        loop {
            if self.streaming > 0 {
                let n = self.streaming.min(buf.len() - pos);
                pos += n;
                self.streaming -= n;
                if self.streaming > 0 {
                    return Ok(pos);
                }
            }
            let rest = &buf[pos..];
            if rest.len() < 5 {
                return Ok(pos);
            }
            let tag = rest[0];
            let len = self.checked_len(tag, be_i32(&rest[1..5]))?;
            let total = 1 + len;
            if rest.len() >= total {
                pos += total;
                if inspect(tag)
                    && !on_frame(Frame {
                        tag,
                        body: &rest[5..total],
                    })
                {
                    return Ok(pos);
                }
                continue;
            }
            if inspect(tag) {
                return Ok(pos);
            }
            self.streaming = total - rest.len();
            return Ok(buf.len());
        }
    }

    fn checked_len(&self, tag: u8, len: i32) -> Result<usize, ScanError> {
        checked_len(tag, len, self.max_len)
    }
}

/// A frame's length word (which counts itself, not the tag), checked.
fn checked_len(tag: u8, len: i32, max_len: usize) -> Result<usize, ScanError> {
    if len < 4 {
        return Err(ScanError::BadLength {
            tag: tag as char,
            len: len.into(),
        });
    }
    let len = len as usize;
    if len > max_len {
        return Err(ScanError::TooLarge {
            tag: tag as char,
            len,
            max: max_len,
        });
    }
    Ok(len)
}

/// Splits one whole frame (tag, length and body) off the front of `buf`, or
/// `None` until it has all arrived. For the short exchanges that read whole
/// messages (logins, the pool's reset) rather than relay them.
pub fn take_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<BytesMut>, ScanError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let total = 1 + checked_len(buf[0], be_i32(&buf[1..5]), max_len)?;
    Ok((buf.len() >= total).then(|| buf.split_to(total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn all(_: u8) -> bool {
        true
    }

    #[test]
    fn complete_frames_are_reported_and_partial_ones_held() {
        let mut buf = frame(b'Z', b"I");
        buf.extend(frame(b'C', b"SELECT 1\0"));
        let whole = buf.len();
        buf.extend(&frame(b'Z', b"T")[..3]);
        let mut seen = vec![];
        let mut s = FrameScanner::new(1 << 20);
        let n = s
            .scan(&buf, all, |f| {
                seen.push((f.tag, f.body.to_vec()));
                true
            })
            .unwrap();
        assert_eq!(n, whole);
        assert_eq!(
            seen,
            vec![(b'Z', b"I".to_vec()), (b'C', b"SELECT 1\0".to_vec())]
        );
        assert!(!s.mid_frame());
    }

    #[test]
    fn uninspected_large_frames_stream_across_reads() {
        let big = frame(b'D', &vec![7u8; 1000]);
        let mut s = FrameScanner::new(1 << 20);
        let inspect = |t| t == b'Z';
        assert_eq!(s.scan(&big[..100], inspect, |_| true).unwrap(), 100);
        assert!(s.mid_frame());
        let mut rest = big[100..].to_vec();
        let tail = frame(b'Z', b"I");
        rest.extend(&tail);
        let mut z = 0;
        let n = s
            .scan(&rest, inspect, |f| {
                z += 1;
                assert_eq!(f.body, b"I");
                true
            })
            .unwrap();
        assert_eq!(n, rest.len());
        assert_eq!(z, 1);
        assert!(!s.mid_frame());
    }

    #[test]
    fn lengths_are_capped_before_allocation() {
        let mut s = FrameScanner::new(1024);
        let mut huge = vec![b'Q'];
        huge.extend_from_slice(&i32::MAX.to_be_bytes());
        let err = s.scan(&huge, all, |_| true).unwrap_err();
        assert!(matches!(err, ScanError::TooLarge { tag: 'Q', .. }));
        let mut neg = vec![b'Q'];
        neg.extend_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(
            s.scan(&neg, all, |_| true).unwrap_err(),
            ScanError::BadLength { len: -5, .. }
        ));
        let mut short = vec![b'Q'];
        short.extend_from_slice(&3i32.to_be_bytes());
        assert!(s.scan(&short, all, |_| true).is_err());
    }

    #[test]
    fn take_frame_waits_for_whole_frames_and_checks_lengths() {
        let whole = frame(b'S', b"a\0b\0");
        let mut buf = BytesMut::from(&whole[..4]);
        assert_eq!(take_frame(&mut buf, 64).unwrap(), None);
        buf.extend_from_slice(&whole[4..]);
        buf.extend_from_slice(b"Z");
        assert_eq!(
            take_frame(&mut buf, 64).unwrap().as_deref(),
            Some(&whole[..])
        );
        assert_eq!(&buf[..], b"Z");
        let mut big = BytesMut::from(&frame(b'S', &[0; 100])[..]);
        assert!(matches!(
            take_frame(&mut big, 64),
            Err(ScanError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_stop_request_ends_the_scan_after_the_frame() {
        let mut buf = frame(b'Z', b"I");
        buf.extend(frame(b'A', b"x"));
        let mut s = FrameScanner::new(1 << 20);
        let n = s.scan(&buf, all, |f| f.tag != b'Z').unwrap();
        assert_eq!(n, 6);
    }
}

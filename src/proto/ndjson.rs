//! NDJSON framing: one JSON object per `\n`-terminated line, as the npm 0.2.x client and broker
//! write it (`JSON.stringify(obj) + "\n"`).
//!
//! The framer owns one buffer that the socket reads into directly ([`LineFramer::spare`] /
//! [`LineFramer::commit`], or [`LineFramer::read_from`]), and hands out each complete line as a
//! mutable slice of that buffer, because simd-json parses in place. Consumed bytes are dropped
//! by resetting to the start when everything was consumed (the usual case: no copy at all), or
//! by compacting only when the consumed prefix is at least as long as the unconsumed rest, so
//! every byte is moved O(1) times on average.

use std::io::{self, Read};

/// Default cap on one line, excluding its terminator.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;

/// The stream cannot be framed any more; the connection should be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("line longer than {max} bytes")]
#[non_exhaustive]
pub struct LineTooLong {
    /// The framer's limit, in bytes, excluding the `\n`.
    pub max: usize,
}

/// Splits a byte stream into lines without copying them out.
#[derive(Debug)]
pub struct LineFramer {
    /// Always fully initialised; `start..end` holds unconsumed bytes.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// `start..scanned` is known to contain no `\n`, so slow senders are not rescanned.
    scanned: usize,
    max_line: usize,
    failed: bool,
}

impl Default for LineFramer {
    fn default() -> Self {
        LineFramer::new(DEFAULT_MAX_LINE)
    }
}

impl LineFramer {
    /// A small initial buffer keeps idle connections cheap; it grows up to about `max_line`.
    pub fn new(max_line: usize) -> Self {
        LineFramer {
            buf: vec![0; 4096],
            start: 0,
            end: 0,
            scanned: 0,
            max_line,
            failed: false,
        }
    }

    /// Free space to read into, at least `min` bytes (caller then calls [`Self::commit`]).
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        if self.start == self.end {
            (self.start, self.end, self.scanned) = (0, 0, 0);
        }
        if self.buf.len() - self.end < min {
            let pending = self.end - self.start;
            if self.start >= pending {
                self.buf.copy_within(self.start..self.end, 0);
                self.scanned -= self.start;
                (self.start, self.end) = (0, pending);
            }
            if self.buf.len() - self.end < min {
                let want = (self.end + min).max(self.buf.len() * 2);
                self.buf.resize(want, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes of the slice returned by [`Self::spare`] as received.
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Copies `bytes` in (for transports that hand over owned chunks).
    pub fn extend(&mut self, bytes: &[u8]) {
        self.spare(bytes.len())[..bytes.len()].copy_from_slice(bytes);
        self.commit(bytes.len());
    }

    /// One `read` into the buffer; `Ok(0)` is EOF. Drain [`Self::next_line`] between reads.
    pub fn read_from<R: Read>(&mut self, r: &mut R) -> io::Result<usize> {
        self.read_some(r).map(|(n, _)| n)
    }

    /// One `read`, also telling whether it filled all the space it was given. A read that did
    /// not took everything the socket had at that moment, so a caller on edge-triggered
    /// readiness may wait for the next event instead of reading again just to see `WouldBlock`.
    pub fn read_some<R: Read>(&mut self, r: &mut R) -> io::Result<(usize, bool)> {
        let spare = self.spare(4096);
        let room = spare.len();
        let n = r.read(spare)?;
        self.commit(n);
        Ok((n, n == room))
    }

    /// The next complete, non-blank line without its `\n` / `\r\n`, or `None` until more bytes
    /// arrive. After `Err` the stream has lost framing and every later call fails too.
    pub fn next_line(&mut self) -> Result<Option<&mut [u8]>, LineTooLong> {
        loop {
            if self.failed {
                return Err(LineTooLong { max: self.max_line });
            }
            let Some(nl) = self.buf[self.scanned..self.end]
                .iter()
                .position(|&b| b == b'\n')
            else {
                self.scanned = self.end;
                // +1: the partial line may still end in a `\r` that will be trimmed.
                if self.end - self.start > self.max_line + 1 {
                    self.failed = true;
                    continue;
                }
                return Ok(None);
            };
            let (from, to) = (self.start, self.scanned + nl);
            (self.start, self.scanned) = (to + 1, to + 1);
            let line = trim_cr(from, to, &self.buf);
            if line.1 - line.0 > self.max_line {
                self.failed = true;
                continue;
            }
            if !self.buf[line.0..line.1].iter().all(u8::is_ascii_whitespace) {
                return Ok(Some(&mut self.buf[line.0..line.1]));
            }
        }
    }

    /// At EOF: the unterminated last line, if it is not blank (0.2.x parses it on stream end).
    pub fn finish(&mut self) -> Option<&mut [u8]> {
        let (from, to) = trim_cr(self.start, self.end, &self.buf);
        self.start = self.end;
        self.scanned = self.end;
        let blank = self.failed
            || to - from > self.max_line
            || self.buf[from..to].iter().all(u8::is_ascii_whitespace);
        (!blank).then(|| &mut self.buf[from..to])
    }

    /// Bytes received but not yet returned as lines.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }
}

fn trim_cr(from: usize, to: usize, buf: &[u8]) -> (usize, usize) {
    (
        from,
        if to > from && buf[to - 1] == b'\r' {
            to - 1
        } else {
            to
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lines(f: &mut LineFramer) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        while let Ok(Some(l)) = f.next_line() {
            v.push(l.to_vec());
        }
        v
    }

    #[test]
    fn frames_crlf_blank_and_partial_lines() {
        let mut f = LineFramer::new(100);
        f.extend(b"{\"a\":1}\r\n\n   \r\n\t\n{\"b\"");
        assert_eq!(lines(&mut f), vec![b"{\"a\":1}".to_vec()]);
        f.extend(b":2}\n{\"c\":3}");
        assert_eq!(lines(&mut f), vec![b"{\"b\":2}".to_vec()]);
        assert_eq!(f.finish().map(|l| l.to_vec()), Some(b"{\"c\":3}".to_vec()));
        assert_eq!(f.pending(), 0);
        assert!(f.finish().is_none());
    }

    #[test]
    fn over_long_line_poisons_the_stream() {
        let mut f = LineFramer::new(8);
        f.extend(b"12345678\n");
        assert_eq!(
            f.next_line().unwrap().map(|l| l.to_vec()),
            Some(b"12345678".to_vec())
        );
        f.extend(b"123456789");
        assert_eq!(f.next_line(), Ok(None), "9 bytes may still be 8 + a CR");
        f.extend(b"0");
        assert_eq!(f.next_line(), Err(LineTooLong { max: 8 }));
        f.extend(b"\n{}\n");
        assert!(f.next_line().is_err());
        // A complete over-long line in one chunk fails too, even with a CR trimmed.
        let mut f = LineFramer::new(8);
        f.extend(b"123456789\r\n");
        assert!(f.next_line().is_err());
    }

    #[test]
    fn buffer_stays_bounded_by_line_length() {
        let mut f = LineFramer::new(1000);
        let line = [b'x'; 999];
        for _ in 0..10_000 {
            f.extend(&line[..500]);
            assert!(lines(&mut f).is_empty());
            f.extend(&line[500..]);
            f.extend(b"\n");
            assert_eq!(lines(&mut f).len(), 1);
        }
        assert!(f.buf.len() <= 4 * 1024, "buffer grew to {}", f.buf.len());
    }

    #[test]
    fn reads_from_a_reader() {
        let mut f = LineFramer::default();
        let mut src: &[u8] = b"{\"x\":1}\n{\"y\":2}\n";
        while f.read_from(&mut src).unwrap() > 0 {}
        assert_eq!(lines(&mut f).len(), 2);
    }

    proptest! {
        #[test]
        fn chunking_does_not_change_framing(
            stream in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b' '), Just(b'a'), any::<u8>()], 0..600),
            cuts in proptest::collection::vec(1usize..64, 0..40),
        ) {
            let mut whole = LineFramer::new(40);
            whole.extend(&stream);
            let mut want = Vec::new();
            let whole_res = loop {
                match whole.next_line() {
                    Ok(Some(l)) => want.push(l.to_vec()),
                    Ok(None) => break Ok(whole.finish().map(|l| l.to_vec())),
                    Err(e) => break Err(e),
                }
            };
            let mut f = LineFramer::new(40);
            let (mut got, mut rest, mut err) = (Vec::new(), &stream[..], None);
            for cut in cuts.iter().copied().chain(std::iter::repeat(usize::MAX)) {
                let (chunk, tail) = rest.split_at(cut.min(rest.len()));
                rest = tail;
                f.extend(chunk);
                loop {
                    match f.next_line() {
                        Ok(Some(l)) => got.push(l.to_vec()),
                        Ok(None) => break,
                        Err(e) => { err = Some(e); break }
                    }
                }
                if err.is_some() || rest.is_empty() { break }
            }
            prop_assert_eq!(got, want);
            match whole_res {
                Ok(last) => {
                    prop_assert_eq!(err, None);
                    prop_assert_eq!(f.finish().map(|l| l.to_vec()), last);
                }
                Err(e) => prop_assert_eq!(err, Some(e)),
            }
        }
    }
}

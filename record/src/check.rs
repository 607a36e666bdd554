//! The fast path of [`crate::decode_checked`]: one pass over a line in the shape producers
//! write, answering "certainly a valid record" or "not sure" — never "invalid".
//!
//! Checking a line with serde ([`crate::RecordView`]) converts each of its numbers (the
//! eight round-trip times are floats) and visits each field through serde's machinery; on
//! the worker's benchmark (worker/README.md) that was about half of its CPU. This reads
//! the same JSON grammar (RFC 8259) for the fields a record has, with the same types and
//! ranges as serde would give them, converting nothing but the `ts` and deciding `loss`
//! from its digits. It gives up (returns `None`) on anything it does not handle exactly as
//! serde does — an escape or a byte outside ASCII in a string, a key the record does not
//! have (a later schema's field), a repeated key, an exponent in `loss`, a minus sign on
//! any number but the float ones of `rtt_ms`, — and the
//! caller then decides with serde, the rule's one statement ([`crate::RecordView`] and
//! [`crate::RecordView::validate_utc`]), which also gives the reason when the line is bad.
//! So the fast path can make no line valid that serde would refuse: the test
//! `fast_path_never_accepts_what_serde_refuses` checks that on every one-byte edit of
//! records of each schema.

use time::OffsetDateTime;

/// The fields of a record (and of its `rtt_ms`), one bit each, to refuse repeated keys
/// (serde does) and find missing required ones.
const SCHEMA: u32 = 1 << 0;
const ID: u32 = 1 << 1;
const TS: u32 = 1 << 2;
const STACK: u32 = 1 << 3;
const REGION: u32 = 1 << 4;
const AGENT: u32 = 1 << 5;
const TARGET: u32 = 1 << 6;
const STATUS: u32 = 1 << 7;
const LOSS: u32 = 1 << 8;
const RTT: u32 = 1 << 9;
const ERROR: u32 = 1 << 10;
const SENT: u32 = 1 << 11;
const TTL: u32 = 1 << 12;
const ADDR: u32 = 1 << 13;
const RESOLVE: u32 = 1 << 14;
const LATE: u32 = 1 << 15;
const SYNCED: u32 = 1 << 16;
const SEQ: u32 = 1 << 17;
/// Fields without a default in [`crate::PingRecord`] (`rtt_ms` and `error` are `Option`s,
/// which serde reads as `None` when absent).
const REQUIRED: u32 = ID | TS | STACK | REGION | AGENT | TARGET | STATUS | LOSS;

/// Checks the line that starts at `text[at]` and ends at the next `\n` (or the end of
/// `text`). `Some((end, utc))` when it is certainly a valid record: `end` is the index of
/// that `\n` (or `text.len()`), and `utc` the record's time as [`crate::parse_ts`] reads it.
/// `None` when not sure: the caller must check the line with serde.
pub(crate) fn record_line(text: &[u8], at: usize) -> Option<(usize, OffsetDateTime)> {
    let mut c = Cursor { b: text, i: at };
    c.expect(b'{')?;
    let mut seen = 0u32;
    let mut ts: &[u8] = &[];
    loop {
        let key = c.string()?;
        c.expect(b':')?;
        let bit = match key {
            b"schema" => SCHEMA,
            b"id" => ID,
            b"ts" => TS,
            b"stack" => STACK,
            b"region" => REGION,
            b"agent" => AGENT,
            b"target" => TARGET,
            b"status" => STATUS,
            b"loss" => LOSS,
            b"rtt_ms" => RTT,
            b"error" => ERROR,
            b"sent" => SENT,
            b"ttl" => TTL,
            b"addr" => ADDR,
            b"resolve_ms" => RESOLVE,
            b"late_ms" => LATE,
            b"clock_synced" => SYNCED,
            b"seq" => SEQ,
            _ => return None,
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        match bit {
            // u32 without a default for null; schema 0 is refused by validation.
            SCHEMA => (c.unsigned(u32::MAX.into())? > 0).then_some(())?,
            ID | AGENT | TARGET => (!c.string()?.is_empty()).then_some(())?,
            TS => ts = c.string()?,
            STACK | REGION => c.string().map(drop)?,
            STATUS => matches!(c.string()?, b"ok" | b"error").then_some(())?,
            LOSS => c.loss()?,
            RTT => c.or_null(Cursor::rtt)?,
            ERROR | ADDR => c.or_null(|c| c.string().map(drop))?,
            SENT => c.or_null(|c| c.unsigned(u16::MAX.into()).map(drop))?,
            TTL => c.or_null(|c| c.unsigned(u8::MAX.into()).map(drop))?,
            // Not negative (JSON has no NaN): a leading minus is left to serde.
            RESOLVE | LATE => c.or_null(|c| c.float(false))?,
            SYNCED => c.or_null(|c| c.literal(b"true").or_else(|| c.literal(b"false")))?,
            _ => c.or_null(|c| c.unsigned(u64::MAX).map(drop))?, // SEQ
        }
        match c.next()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    if seen & REQUIRED != REQUIRED {
        return None;
    }
    // Only JSON whitespace may follow the object on its line (`\r` included: the caller
    // drops a `\r` before `\n`, and serde reads the rest as whitespace).
    c.space();
    if c.i != text.len() && text[c.i] != b'\n' {
        return None;
    }
    let utc = crate::parse_ts(std::str::from_utf8(ts).ok()?).ok()?;
    Some((c.i, utc))
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    /// Skips JSON whitespace but `\n`, which ends the line.
    #[inline]
    fn space(&mut self) {
        while let Some(b' ' | b'\t' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte after whitespace, taken.
    #[inline]
    fn next(&mut self) -> Option<u8> {
        self.space();
        let c = *self.b.get(self.i)?;
        self.i += 1;
        Some(c)
    }

    #[inline]
    fn expect(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// A string of ASCII without escapes or control characters (anything else is left to
    /// serde); its content.
    #[inline]
    fn string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.i;
        // Eight bytes at a time up to the first that may be special, then byte by byte.
        while let Some(chunk) = self.b.get(self.i..self.i + 8) {
            if may_end_string(u64::from_le_bytes(chunk.try_into().expect("8 bytes"))) {
                break;
            }
            self.i += 8;
        }
        loop {
            let c = *self.b.get(self.i)?;
            self.i += 1;
            match c {
                b'"' => return Some(&self.b[start..self.i - 1]),
                b'\\' | 0..0x20 | 0x80.. => return None,
                _ => {}
            }
        }
    }

    /// `null` (taken: `Some(())`), or else the value `f` reads.
    #[inline]
    fn or_null(&mut self, f: impl FnOnce(&mut Self) -> Option<()>) -> Option<()> {
        self.space();
        if self.b[self.i..].starts_with(b"null") {
            self.i += 4;
            Some(())
        } else {
            f(self)
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.space();
        self.b[self.i..].starts_with(word).then(|| self.i += word.len())
    }

    /// Digits `0-9`, at least one; how many.
    #[inline]
    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.b.get(self.i) {
            self.i += 1;
        }
        self.i - start
    }

    /// An integer in `0..=max` as JSON writes it (no sign, no leading zero, no fraction or
    /// exponent: serde refuses those for an unsigned field, or reads them otherwise).
    fn unsigned(&mut self, max: u64) -> Option<u64> {
        self.space();
        let start = self.i;
        let n = self.digits();
        if n == 0 || (n > 1 && self.b[start] == b'0') {
            return None;
        }
        let v =
            self.b[start..self.i].iter().try_fold(0u64, |v, d| v.checked_mul(10)?.checked_add(u64::from(d - b'0')))?;
        (v <= max).then_some(v)
    }

    /// A JSON number (RFC 8259 §6) that serde reads as a finite f64: at most 100 digits
    /// before and after the point and an exponent of at most two digits, so that it can
    /// neither overflow (serde: "number out of range") nor be anything but a number.
    /// A minus sign only when `negative` is allowed.
    #[inline]
    fn float(&mut self, negative: bool) -> Option<()> {
        self.space();
        if self.b.get(self.i) == Some(&b'-') {
            if !negative {
                return None;
            }
            self.i += 1;
        }
        let start = self.i;
        let int = self.digits();
        if int == 0 || int > 100 || (int > 1 && self.b[start] == b'0') {
            return None;
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if !(1..=100).contains(&self.digits()) {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            if !(1..=2).contains(&self.digits()) {
                return None;
            }
        }
        Some(())
    }

    /// `loss`, certainly within 0..=1 ([`crate::RecordView::validate_utc`]) whichever way
    /// the digits are rounded: `0`, `0.` and any digits, `1`, or `1.` and zeros; no sign
    /// and no exponent.
    fn loss(&mut self) -> Option<()> {
        self.space();
        let start = self.i;
        self.float(false)?;
        let n = &self.b[start..self.i];
        let ok = match n {
            [b'0'] | [b'1'] => true,
            [b'0', b'.', frac @ ..] => frac.iter().all(u8::is_ascii_digit),
            [b'1', b'.', frac @ ..] => frac.iter().all(|&d| d == b'0'),
            _ => false,
        };
        ok.then_some(())
    }

    /// An `rtt_ms` object ([`crate::Rtt`]): `min`, `avg`, `max`, `stddev` numbers,
    /// `p50`, `p90`, `p99`, `jitter` numbers or null, each at most once, nothing else.
    fn rtt(&mut self) -> Option<()> {
        self.expect(b'{')?;
        let mut seen = 0u32;
        loop {
            let (bit, optional) = match self.string()? {
                b"min" => (1, false),
                b"avg" => (2, false),
                b"max" => (4, false),
                b"stddev" => (8, false),
                b"p50" => (16, true),
                b"p90" => (32, true),
                b"p99" => (64, true),
                b"jitter" => (128, true),
                _ => return None,
            };
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            self.expect(b':')?;
            if optional {
                self.or_null(|c| c.float(true))?;
            } else {
                self.float(true)?;
            }
            match self.next()? {
                b',' => {}
                b'}' => break,
                _ => return None,
            }
        }
        (seen & 15 == 15).then_some(())
    }
}

/// Whether any of the 8 bytes of `w` may be `"`, `\\`, a control character (below 0x20)
/// or not ASCII: exact when none is (the bit tricks of "Bit Twiddling Hacks", "Determine if
/// a word has a byte less than n"), and perhaps true for a byte after one that is.
#[inline]
fn may_end_string(w: u64) -> bool {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let zero = |x: u64| below(x, 1);
    (zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\'))) | below(w, 0x20) | (w & HIGH)) != 0
}

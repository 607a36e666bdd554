//! The fast path of [`crate::decode_checked`]: one pass over a line in the shape producers
//! write, answering "certainly a valid record" or "not sure" — never "invalid".
//!
//! Checking a line with serde ([`crate::RecordView`]) converts each of its numbers (the
//! eight round-trip times are floats) and visits each field through serde's machinery; on
//! the worker's benchmark (worker/README.md) that was about half of its CPU. This reads
//! the same JSON grammar (RFC 8259) for the fields a record has, with the same types and
//! ranges as serde would give them, converting nothing but the `ts` and deciding `loss`
//! from its digits. First one pass eight bytes at a time finds the line's end and makes
//! sure every byte before it is printable ASCII but `\\` (what producers write); the
//! structure is then read without looking for escapes, control characters or other
//! encodings inside strings. It gives up (returns `None`) on anything it does not handle
//! exactly as serde does — a control character anywhere in the line (tabs and a `\r`
//! before the `\n` included), a backslash, a byte outside ASCII, a key the record does not
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

/// The record's keys as serde_json writes them (`"key":`), in [`crate::PingRecord`]'s
/// order: the `n`th is the field of bit `1 << n`.
const RECORD_KEYS: [&[u8]; 18] = [
    b"\"schema\":",
    b"\"id\":",
    b"\"ts\":",
    b"\"stack\":",
    b"\"region\":",
    b"\"agent\":",
    b"\"target\":",
    b"\"status\":",
    b"\"loss\":",
    b"\"rtt_ms\":",
    b"\"error\":",
    b"\"sent\":",
    b"\"ttl\":",
    b"\"addr\":",
    b"\"resolve_ms\":",
    b"\"late_ms\":",
    b"\"clock_synced\":",
    b"\"seq\":",
];

/// `rtt_ms`'s keys likewise ([`crate::Rtt`]'s order): `min`, `avg`, `max`, `stddev`, then
/// the optional `p50`, `p90`, `p99`, `jitter`.
const RTT_KEYS: [&[u8]; 8] =
    [b"\"min\":", b"\"avg\":", b"\"max\":", b"\"stddev\":", b"\"p50\":", b"\"p90\":", b"\"p99\":", b"\"jitter\":"];

/// Checks the line that starts at `text[at]` and ends at the next `\n` (or the end of
/// `text`). `Some((end, utc))` when it is certainly a valid record: `end` is the index of
/// that `\n` (or `text.len()`), and `utc` the record's time as [`crate::parse_ts`] reads it.
/// `None` when not sure: the caller must check the line with serde.
pub(crate) fn record_line(text: &[u8], at: usize) -> Option<(usize, OffsetDateTime)> {
    let end = plain_line_end(text, at)?;
    let mut c = Cursor { b: &text[at..end], i: 0 };
    c.expect(b'{')?;
    let mut seen = 0u32;
    let mut ts: &[u8] = &[];
    // Keys are looked for first as serde writes them, in the struct's order (the bits'
    // order): the next one's `"key":` compared whole; only a line in another shape has its
    // keys read one by one.
    let mut next = 0;
    loop {
        let (bit, at) = c.key(&RECORD_KEYS, next)?;
        next = at + 1;
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
            SEQ => c.or_null(|c| c.unsigned(u64::MAX).map(drop))?,
            _ => return None,
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
    // Only spaces may follow the object on its line.
    c.space();
    if c.i != c.b.len() {
        return None;
    }
    let utc = crate::parse_ts(std::str::from_utf8(ts).ok()?).ok()?;
    Some((end, utc))
}

/// The index of the `\n` that ends the line starting at `text[at]` (or `text.len()`) when
/// every byte before it is printable ASCII but `\\` (`0x20..=0x7e`, `0x7f` included);
/// `None` at the first byte that is not (a control character, a backslash, a byte of a
/// multi-byte UTF-8 character or not UTF-8 at all).
#[inline]
fn plain_line_end(text: &[u8], at: usize) -> Option<usize> {
    let mut i = at;
    while let Some(chunk) = text.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let special = below(w, 0x20) | zero(w ^ (ONES * u64::from(b'\\'))) | (w & HIGH);
        if special != 0 {
            // The lowest flagged byte is exact (the tricks' false positives only follow a
            // byte that is flagged rightly).
            let j = i + (special.trailing_zeros() / 8) as usize;
            return (text[j] == b'\n').then_some(j);
        }
        i += 8;
    }
    for (j, &b) in text.iter().enumerate().skip(i) {
        match b {
            b'\n' => return Some(j),
            b'\\' | 0..0x20 | 0x80.. => return None,
            _ => {}
        }
    }
    Some(text.len())
}

/// A reader over one line that [`plain_line_end`] found plain: no control character,
/// backslash or non-ASCII byte in `b`.
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    /// Skips JSON whitespace: spaces (the line holds no other).
    #[inline]
    fn space(&mut self) {
        while self.b.get(self.i) == Some(&b' ') {
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

    /// A string (a plain line's: printable ASCII, no escapes); its content.
    #[inline]
    fn string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.i;
        // Eight bytes at a time up to the chunk holding the closing quote.
        while let Some(chunk) = self.b.get(self.i..self.i + 8) {
            let quotes = zero(u64::from_le_bytes(chunk.try_into().expect("8 bytes")) ^ (ONES * u64::from(b'"')));
            if quotes != 0 {
                self.i += (quotes.trailing_zeros() / 8) as usize + 1;
                return Some(&self.b[start..self.i - 1]);
            }
            self.i += 8;
        }
        let n = self.b[self.i..].iter().position(|&b| b == b'"')?;
        self.i += n + 1;
        Some(&self.b[start..self.i - 1])
    }

    /// A key and its `:`, one of `keys` (each `"key":`): the bit of its place in them and
    /// the place. Those from `keys[next]` on are compared whole first (a line in the order
    /// they are listed finds each at once); else the key is read as a string (spaces
    /// before the `:` allowed) and looked up among all of them. `None` when it is none.
    #[inline]
    fn key(&mut self, keys: &[&[u8]], next: usize) -> Option<(u32, usize)> {
        self.space();
        let rest = &self.b[self.i..];
        let found = keys.iter().skip(next).position(|k| rest.starts_with(k));
        let at = match found {
            Some(n) => {
                self.i += keys[next + n].len();
                next + n
            }
            None => {
                let key = self.string()?;
                let at = keys.iter().position(|k| &k[1..k.len() - 2] == key)?;
                self.expect(b':')?;
                at
            }
        };
        Some((1 << at, at))
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
        // Eight at a time: a byte of a plain line (below 0x80) is a digit when it is
        // `0x30..=0x39`, i.e. when `byte ^ 0x30` is below 10, i.e. when adding 0x76 leaves
        // its high bit clear (no carry crosses bytes: at most 0x7f + 0x76).
        while let Some(chunk) = self.b.get(self.i..self.i + 8) {
            let t = u64::from_le_bytes(chunk.try_into().expect("8 bytes")) ^ (ONES * 0x30);
            let not_digit = t.wrapping_add(ONES * 0x76) & HIGH;
            if not_digit != 0 {
                self.i += (not_digit.trailing_zeros() / 8) as usize;
                return self.i - start;
            }
            self.i += 8;
        }
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
        let mut next = 0;
        loop {
            let (bit, at) = self.key(&RTT_KEYS, next)?;
            next = at + 1;
            let optional = at >= 4;
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
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

/// The bit tricks of "Bit Twiddling Hacks" ("Determine if a word has a byte less than
/// n"), on eight bytes at once (little-endian: the first byte is the lowest).
const ONES: u64 = u64::from_le_bytes([1; 8]);
const HIGH: u64 = ONES << 7;

/// The high bit of each byte of `x` below `n` (`n` at most 0x80): exact for the lowest such
/// byte, perhaps also set for a byte after it.
#[inline]
fn below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH
}

/// The high bit of each zero byte of `x`, as [`below`] (`below(x, 1)`).
#[inline]
fn zero(x: u64) -> u64 {
    below(x, 1)
}

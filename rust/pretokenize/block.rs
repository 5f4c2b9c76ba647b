//! Class bitmaps of a 64-byte window of text, the scanners' fast path.
//!
//! Scanning one pretoken at a time makes every pretoken wait for the previous one to end: the
//! next load depends on the last end, so even a branch-free step costs a load and a chain of
//! dependent operations per pretoken. English prose averages about four bytes a pretoken, so
//! that chain, not the work, bounds the speed. Instead a scanner classifies 64 bytes at once into
//! one bitmap per class (bit `j` is byte `j` of the window), derives with a handful of shifts
//! and ANDs the bitmap of the bytes where a pretoken starts, and then emits the pretokens between
//! consecutive starts: per pretoken only a `trailing_zeros` and a clear-lowest-bit remain.
//!
//! Only ASCII is classified here, and for GPT-2's scanner the characters of two and three
//! bytes (see `Block::load`): a window stops at its first other byte, and the scanners take the
//! general path there. The bitmaps are built sixteen bytes at a time with SSE2 on x86_64 (part
//! of its baseline, so no runtime detection), elsewhere eight at a time with SWAR
//! (SIMD-within-a-register) range tests, which need no `unsafe` and no target features.

use super::classes::{three_byte_class, two_byte_class, LETTER, NUMBER, SPACE};

/// Eight copies of byte `x`.
pub(crate) const fn splat(x: u8) -> u64 {
    0x0101_0101_0101_0101 * x as u64
}

/// The high bit of every byte.
pub(crate) const HIGH: u64 = splat(0x80);

/// The high bit of each of sixteen bytes.
const HIGH_128: u128 = (HIGH as u128) << 64 | HIGH as u128;

/// The high bit of each byte of `x` (little-endian lanes) that is in `lo..=hi`; `1 <= lo <= hi`
/// and both ASCII, and bytes >= 0x80 never match.
///
/// Why this works without carries between lanes: with the high bit masked off, a lane is at most
/// 0x7F, and adding `0x80 - lo` or `0x7F - hi` (each at most 0x7F) stays below 0x100. The sum's
/// high bit then says "lane >= lo", respectively "lane > hi".
#[inline(always)]
pub(crate) const fn lanes_in(x: u64, lo: u8, hi: u8) -> u64 {
    let low7 = x & !HIGH;
    let ge_lo = low7.wrapping_add(splat(0x80 - lo));
    let gt_hi = low7.wrapping_add(splat(0x7F - hi));
    ge_lo & !gt_hi & !x & HIGH
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
/// One bit per lane (bit `k` for lane `k`) from lane masks that use only the high bits.
///
/// The multiplier moves lane `k`'s bit (at `8k` after the shift) to bit `56 + k`; the other
/// partial products land either above bit 63 or below bit 56 without carrying into the top byte.
#[inline(always)]
const fn gather(lanes: u64) -> u64 {
    ((lanes >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56
}

/// The bitmaps of a window, eight bytes at a time with SWAR (the portable path).
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[inline(always)]
fn classify(window: &[u8; 64]) -> Block {
    let mut blk = Block::default();
    let mut non_ascii = 0;
    for (k, chunk) in window.chunks_exact(8).enumerate() {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(chunk);
        let x = u64::from_le_bytes(bytes);
        let shift = 8 * k;
        non_ascii |= gather(x & HIGH) << shift;
        blk.upper |= gather(lanes_in(x, b'A', b'Z')) << shift;
        blk.lower |= gather(lanes_in(x, b'a', b'z')) << shift;
        blk.digit |= gather(lanes_in(x, b'0', b'9')) << shift;
        let blank = lanes_in(x, b' ', b' ');
        let newline = lanes_in(x, b'\n', b'\n') | lanes_in(x, b'\r', b'\r');
        blk.blank |= gather(blank) << shift;
        blk.newline |= gather(newline) << shift;
        blk.space |= gather(lanes_in(x, 0x09, 0x0D) | blank) << shift;
        blk.apostrophe |= gather(lanes_in(x, b'\'', b'\'')) << shift;
        blk.slash |= gather(lanes_in(x, b'/', b'/')) << shift;
    }
    blk.high = non_ascii;
    blk.valid = non_ascii.trailing_zeros();
    blk
}

/// The bitmaps of a window with SSE2, sixteen bytes per instruction.
///
/// Inlined into the scanners' loops: a `#[target_feature]` function stays a call, and returning
/// the 80-byte `Block` through memory each window was 5% of encoding English text.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
fn classify(window: &[u8; 64]) -> Block {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi8, _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8, _mm_set_epi64x,
    };
    // SAFETY: the intrinsics need only SSE2, which the `cfg` above establishes at compile time
    // (it is part of the x86_64 baseline); they read nothing but their arguments.
    #[allow(unused_unsafe)]
    unsafe {
        // `lo..=hi` as a signed compare: adding `0x80 - lo` maps `lo..=hi` onto the lowest signed
        // bytes, one to one, so no other byte lands there.
        let in_range = |v: __m128i, lo: u8, hi: u8| {
            let shifted = _mm_add_epi8(v, _mm_set1_epi8(0x80u8.wrapping_sub(lo) as i8));
            _mm_cmplt_epi8(shifted, _mm_set1_epi8((0x80 + (hi - lo) + 1) as i8))
        };
        let eq = |v: __m128i, c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
        let bits = |m: __m128i| u64::from(_mm_movemask_epi8(m) as u16);
        let mut blk = Block::default();
        let mut non_ascii = 0;
        for (k, chunk) in window.chunks_exact(16).enumerate() {
            let (mut lo, mut hi) = ([0; 8], [0; 8]);
            lo.copy_from_slice(&chunk[..8]);
            hi.copy_from_slice(&chunk[8..]);
            let v = _mm_set_epi64x(i64::from_le_bytes(hi), i64::from_le_bytes(lo));
            let shift = 16 * k;
            non_ascii |= bits(v) << shift;
            blk.upper |= bits(in_range(v, b'A', b'Z')) << shift;
            blk.lower |= bits(in_range(v, b'a', b'z')) << shift;
            blk.digit |= bits(in_range(v, b'0', b'9')) << shift;
            let blank = eq(v, b' ');
            blk.blank |= bits(blank) << shift;
            blk.newline |= bits(_mm_or_si128(eq(v, b'\n'), eq(v, b'\r'))) << shift;
            blk.space |= bits(_mm_or_si128(in_range(v, 0x09, 0x0D), blank)) << shift;
            blk.apostrophe |= bits(eq(v, b'\'')) << shift;
            blk.slash |= bits(eq(v, b'/')) << shift;
        }
        blk.high = non_ascii;
        blk.valid = non_ascii.trailing_zeros();
        blk
    }
}

/// Bitmaps of the classes of 64 bytes of text, exact below `valid`: ASCII bytes, and with
/// `load::<true>` characters of two and three bytes too (see there). Bits at or above `valid`
/// are meaningless.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Block {
    /// `[A-Za-z]`.
    pub upper: u64,
    pub lower: u64,
    /// `[0-9]`.
    pub digit: u64,
    /// ASCII `\s`: `[\t\n\x0b\x0c\r ]`.
    pub space: u64,
    /// `' '`.
    pub blank: u64,
    /// `\r` and `\n`.
    pub newline: u64,
    /// `'`.
    pub apostrophe: u64,
    /// `/`.
    pub slash: u64,
    /// Bytes >= 0x80.
    pub high: u64,
    /// How many bytes from the window's start are classified (at most 64).
    pub valid: u32,
}

impl Block {
    /// The bitmaps of `b[i..i + 64]`, if there are 64 bytes and the first sixteen are ASCII (a
    /// window that stops almost at once is not worth its cost; the caller's general path is
    /// faster there).
    ///
    /// With `MULTI_BYTE`, for the scanners whose classes of non-ASCII characters are only
    /// letters, numbers, whitespace and the rest (GPT-2's), the window also goes on over the
    /// characters of two and three bytes (U+0080..U+FFFF: Latin-1, Greek, Cyrillic, Hebrew,
    /// Arabic, ..., curly quotes and dashes, CJK) other than whitespace: every byte of a letter
    /// is set in `lower`, every byte of a number in `digit`, and the rest are in no bitmap
    /// (`punct`). It stops at a non-ASCII whitespace character (whose run end the byte-level
    /// rules would misplace), at a character of four bytes, and at a character cut by the
    /// window's end; the first sixteen bytes need only hold no four-byte character. Random
    /// Latin-1 text, half of it two-byte characters, otherwise takes the general path a
    /// character at a time, at a mispredicted branch each, and English prose left the window
    /// at every curly quote (three bytes).
    #[inline(always)]
    pub fn load<const MULTI_BYTE: bool>(b: &[u8], i: usize) -> Option<Block> {
        let window = b.get(i..)?.first_chunk::<64>()?;
        // Checked before classifying so that text where this fails at almost every pretoken
        // pays one load and not a whole window. (`valid` is then at least 16 without
        // `MULTI_BYTE`; with it, it may be 0, at a non-ASCII space: the window then emits
        // nothing and the general path takes the pretoken.)
        let head = window
            .first_chunk::<16>()
            .map_or(0, |c| u128::from_le_bytes(*c));
        let rejected = if MULTI_BYTE {
            // A byte >= 0xF0 (bits 7 to 4 set) starts a character of four bytes.
            head & (head << 1) & (head << 2) & (head << 3) & HIGH_128 != 0
        } else {
            head & HIGH_128 != 0
        };
        if rejected {
            return None;
        }
        let mut blk = classify(window);
        if MULTI_BYTE && blk.valid < 64 {
            blk.extend_multi_byte(window);
        }
        Some(blk)
    }

    /// Classifies the characters of two and three bytes from `valid` on (see `load`), moving
    /// `valid` to the first byte that is not classified.
    #[inline(always)]
    fn extend_multi_byte(&mut self, window: &[u8; 64]) {
        let mut j = self.valid;
        loop {
            // Valid UTF-8: the next byte >= 0x80 after a whole character starts a character.
            let rest = self.high & !low_bits(j);
            if rest == 0 {
                j = 64;
                break;
            }
            let p = rest.trailing_zeros();
            let at = |k: u32| window.get((p + k) as usize).copied();
            let (flag, len) = match (at(0), at(1), at(2)) {
                (Some(b0 @ 0xC2..=0xDF), Some(b1), _) => (two_byte_class(b0, b1), 2),
                (Some(b0 @ 0xE0..=0xEF), Some(b1), Some(b2)) => (three_byte_class(b0, b1, b2), 3),
                _ => (SPACE, 0), // four bytes, or cut by the window's end: stop here
            };
            if flag & SPACE != 0 {
                j = p;
                break;
            }
            let bytes = low_bits(len) << p;
            let all_if = |f: u8| u64::from(f != 0).wrapping_neg();
            self.lower |= bytes & all_if(flag & LETTER);
            self.digit |= bytes & all_if(flag & NUMBER);
            j = p + len;
        }
        self.valid = j;
    }

    /// `[A-Za-z]`.
    #[inline(always)]
    pub fn letter(&self) -> u64 {
        self.upper | self.lower
    }

    /// ASCII `[^\s\p{L}\p{N}]`: everything else (punctuation, symbols, controls).
    #[inline(always)]
    pub fn punct(&self) -> u64 {
        !(self.upper | self.lower | self.digit | self.space)
    }
}

/// The scanners' driver (`MULTI_BYTE` as in `Block::load`). Where a window loads at a pretoken
/// start `i`, `starts` gives its
/// start bitmap and the bound below which the bits are exact, and the window's pretokens are
/// emitted at once; elsewhere, or when a window completes no pretoken, `token_end` takes one
/// pretoken the general way. `f` gets each pretoken as its byte range `start, end` of `text`
/// (both char boundaries, by construction).
#[inline(always)]
pub(crate) fn scan_windows<const MULTI_BYTE: bool>(
    text: &str,
    f: &mut impl FnMut(usize, usize),
    starts: impl Fn(&Block, &[u8], usize) -> (u64, u32),
    token_end: impl Fn(&[u8], usize) -> usize,
) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if let Some(blk) = Block::load::<MULTI_BYTE>(b, i) {
            let (bits, limit) = starts(&blk, b, i);
            let done = emit(i, bits, limit, f);
            if done > 0 {
                i += done;
                continue;
            }
        }
        let end = token_end(b, i);
        f(i, end);
        i = end;
    }
}

/// Emits the pretokens of a window whose start bitmap is `starts` (bit 0 set), using only the
/// starts below `limit`, and returns how many bytes they covered (0 if none was complete).
///
/// A start bit that depends on bytes at or past the window's last valid byte may be wrong, so
/// the caller passes `limit` such that every start bit below it is exact; the pretoken after
/// the last trusted start is left for the next window.
#[inline(always)]
pub(crate) fn emit(i: usize, starts: u64, limit: u32, f: &mut impl FnMut(usize, usize)) -> usize {
    let trusted = starts & low_bits(limit);
    let mut rest = trusted & !1;
    let mut from = i;
    while rest != 0 {
        let to = i + rest.trailing_zeros() as usize;
        f(from, to);
        from = to;
        rest &= rest - 1;
    }
    from - i
}

/// The bits below `n` (all of them for `n >= 64`).
#[inline(always)]
pub(crate) const fn low_bits(n: u32) -> u64 {
    match 1u64.checked_shl(n) {
        Some(bit) => bit - 1,
        None => u64::MAX,
    }
}

/// Bit `n`, or no bit if `n >= 64`.
#[inline(always)]
pub(crate) const fn bit(n: usize) -> u64 {
    if n < 64 {
        1 << n
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmaps_match_bytes() {
        let bytes: Vec<u8> = (0u8..128)
            .chain(0..64)
            .map(|c| c.wrapping_mul(37) & 0x7F)
            .collect();
        for i in 0..bytes.len() - 64 {
            let blk = Block::load::<false>(&bytes, i).expect("ASCII");
            assert_eq!(blk.valid, 64);
            for j in 0..64 {
                let c = bytes[i + j];
                let has = |m: u64| m >> j & 1 == 1;
                assert_eq!(has(blk.letter()), c.is_ascii_alphabetic(), "{c}");
                assert_eq!(has(blk.upper), c.is_ascii_uppercase(), "{c}");
                assert_eq!(has(blk.digit), c.is_ascii_digit(), "{c}");
                assert_eq!(has(blk.space), b"\t\n\x0b\x0c\r ".contains(&c), "{c}");
                assert_eq!(has(blk.blank), c == b' ');
                assert_eq!(has(blk.newline), c == b'\r' || c == b'\n');
                assert_eq!(has(blk.apostrophe), c == b'\'');
                assert_eq!(has(blk.slash), c == b'/');
                assert_eq!(
                    has(blk.punct()),
                    !c.is_ascii_alphanumeric() && !b"\t\n\x0b\x0c\r ".contains(&c)
                );
            }
        }
    }

    #[test]
    fn valid_stops_at_non_ascii() {
        let mut bytes = vec![b'a'; 200];
        bytes[20] = 0xC3;
        assert_eq!(Block::load::<false>(&bytes, 0).map(|b| b.valid), Some(20));
        assert!(Block::load::<false>(&bytes, 5).is_none());
        assert!(Block::load::<false>(&bytes, 17).is_none());
        assert_eq!(Block::load::<false>(&bytes, 21).map(|b| b.valid), Some(64));
        assert!(Block::load::<false>(&bytes, 137).is_none());
    }

    #[test]
    fn masks() {
        assert_eq!(low_bits(0), 0);
        assert_eq!(low_bits(3), 7);
        assert_eq!(low_bits(64), u64::MAX);
        assert_eq!(bit(64), 0);
    }
}

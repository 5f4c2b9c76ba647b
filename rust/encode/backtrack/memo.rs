//! Remembered answers of `is_valid_pair` within one piece.
//!
//! A long pretoken repeats few pairs (a run of one letter repeats one or two), and a validity
//! check walks two merge trees with a join lookup per step, so a small direct-mapped table of
//! answers saves most checks. It is sized by the piece (a byte of text is worth at most one
//! slot, up to `MAX_SLOTS`) and emptied per piece, because its keys are token numbers of one
//! vocabulary, and emptying it costs no more than the piece's own first pass.

/// An empty slot (no pair of token numbers below `u32::MAX` packs to it).
const EMPTY: u64 = u64::MAX;

const MIN_SLOTS: usize = 64;
const MAX_SLOTS: usize = 1 << 12;

/// Slot `i` holds a pair `(a, b)` hashed to `i`, packed as `a << 32 | b`, with the answer in
/// `answers[i]`.
#[derive(Default)]
pub struct Memo {
    keys: Vec<u64>,
    answers: Vec<bool>,
}

impl Memo {
    /// Forgets every answer and sizes the table for a piece of `len` bytes.
    pub fn reset(&mut self, len: usize) {
        let slots = len.clamp(MIN_SLOTS, MAX_SLOTS).next_power_of_two();
        self.keys.clear();
        self.keys.resize(slots, EMPTY);
        self.answers.clear();
        self.answers.resize(slots, false);
    }

    /// The answer for `(a, b)`, computed by `check` if it is not remembered.
    #[inline]
    pub fn get_or(&mut self, a: u32, b: u32, check: impl FnOnce() -> bool) -> bool {
        let key = u64::from(a) << 32 | u64::from(b);
        let slot = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & (self.keys.len() - 1);
        if self.keys[slot] == key {
            return self.answers[slot];
        }
        let answer = check();
        self.keys[slot] = key;
        self.answers[slot] = answer;
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_reset() {
        let mut memo = Memo::default();
        memo.reset(10);
        let mut calls = 0;
        for _ in 0..3 {
            assert!(memo.get_or(1, 2, || {
                calls += 1;
                true
            }));
        }
        assert_eq!(calls, 1);
        memo.reset(10);
        assert!(!memo.get_or(1, 2, || false));
    }
}

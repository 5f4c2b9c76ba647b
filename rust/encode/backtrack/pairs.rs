//! The joins the validity walk looks up, `(a, b) -> c`, one `u64` a slot.
//!
//! On the worst inputs (random letters) most of the walk's lookups find a token, so they reach
//! the table: with the key and the value packed into eight bytes (21 bits a token number) it is
//! half the size of a `FlatTable` with 16-byte slots (1 MiB for GPT-2's 50,000 merges), and
//! random letters encode ~3% faster. A bitmap of the keys' hashes (`Filter`, in L2) answers most
//! lookups of pairs that form no token without touching the table.

use crate::flat::Filter;

/// Bits of a token number in a slot: vocabularies of up to 2^21 tokens.
pub const NUMBER_BITS: u32 = 21;
const NUMBER_MASK: u64 = (1 << NUMBER_BITS) - 1;
/// An empty slot: its top bit is set, a packed entry's (63 bits) never is.
const EMPTY: u64 = u64::MAX;

#[derive(Clone)]
pub struct Pairs {
    /// `(a << 21 | b) << 21 | c`, linear probing from the key's hash, at most half full.
    slots: Box<[u64]>,
    /// 64 minus log2 of the number of slots.
    shift: u32,
    filter: Filter,
}

#[inline(always)]
fn key(a: u32, b: u32) -> u64 {
    u64::from(a) << NUMBER_BITS | u64::from(b)
}

#[inline(always)]
fn hash(key: u64) -> u64 {
    key.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Pairs {
    /// The table of `(a, b, c)` (distinct `(a, b)`), or `None` if a number does not fit in
    /// `NUMBER_BITS` bits.
    pub fn new(entries: &[(u32, u32, u32)]) -> Option<Pairs> {
        let bits = (2 * entries.len())
            .max(2)
            .next_power_of_two()
            .trailing_zeros();
        let mut slots = vec![EMPTY; 1 << bits].into_boxed_slice();
        let mask = slots.len() - 1;
        let shift = 64 - bits;
        for &(a, b, c) in entries {
            if [a, b, c].iter().any(|&x| u64::from(x) > NUMBER_MASK) {
                return None;
            }
            let k = key(a, b);
            let mut i = (hash(k) >> shift) as usize;
            while slots[i] != EMPTY && slots[i] >> NUMBER_BITS != k {
                i = (i + 1) & mask;
            }
            slots[i] = k << NUMBER_BITS | u64::from(c);
        }
        let filter = Filter::new(entries.iter().map(|&(a, b, _)| hash(key(a, b))));
        Some(Pairs {
            slots,
            shift,
            filter,
        })
    }

    /// The token that `a` then `b` form, if any.
    #[inline(always)]
    pub fn get(&self, a: u32, b: u32) -> Option<u32> {
        let k = key(a, b);
        let h = hash(k);
        if !self.filter.may_hold(h) {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = (h >> self.shift) as usize;
        loop {
            let slot = self.slots[i];
            if slot == EMPTY {
                return None;
            }
            if slot >> NUMBER_BITS == k {
                return Some((slot & NUMBER_MASK) as u32);
            }
            i = (i + 1) & mask;
        }
    }

    /// Bytes of memory the table holds.
    pub fn memory(&self) -> usize {
        self.slots.len() * 8 + self.filter.memory()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_pair_and_no_other() {
        let entries: Vec<(u32, u32, u32)> = (0..5000u32)
            .map(|k| (k * 7 % 4099, k / 3 + (1 << 20), k + 256))
            .collect();
        let t = Pairs::new(&entries).unwrap();
        for &(a, b, c) in &entries {
            assert_eq!(t.get(a, b), Some(c));
            assert_eq!(t.get(b, a), None);
            assert_eq!(t.get(a, b + 1 + (1 << 20)), None);
        }
        assert!(Pairs::new(&[(1 << 21, 0, 0)]).is_none());
        assert!(Pairs::new(&[]).unwrap().get(0, 0).is_none());
    }
}

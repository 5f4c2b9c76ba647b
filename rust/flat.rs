//! Open-addressing tables of merged tokens, `key -> (rank, id)`, for the encoder's lookups.
//!
//! A slot holds the key and the value together and probing is linear from the key's home slot,
//! at most half the slots full: a lookup is nearly always one cache line, and a key is one
//! multiply to hash. (For the 3..15-byte tokens keyed by `ShortKey`, hashbrown measured faster on
//! cold text, where most pieces looked up are tokens; this table is used for the joins.)
//!
//! A table may also keep a bitmap of its keys' hashes (`Filter`, `with_filter`), small enough
//! to stay in the core's L2 cache: lookups that find nothing, most of them when BPE tries every
//! pair of neighbours, are then answered without touching the table. The vocabulary puts one in
//! front of its hashbrown map too, for the pieces of random text, nearly none of them a token.

/// A key of a flat table: hashed to 64 bits whose top bits pick the home slot.
pub trait FlatKey: Copy + Eq + Default {
    fn hash(self) -> u64;
}

impl FlatKey for u64 {
    #[inline(always)]
    fn hash(self) -> u64 {
        self.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

#[derive(Clone, Copy)]
struct Slot<K> {
    key: K,
    /// `u32::MAX` in an empty slot (no merge has that rank: ranks index the merges).
    rank: u32,
    id: u32,
}

/// `key -> (rank, id)`, fixed once built.
#[derive(Clone)]
pub struct FlatTable<K> {
    slots: Box<[Slot<K>]>,
    /// 64 minus log2 of the number of slots.
    shift: u32,
    filter: Filter,
}

/// Size of a filter in bits (128 KiB).
const FILTER_BITS: usize = 1 << 20;

/// A bitmap of 64-bit hashes: bit `h` is set when some key's hash has bits 24..44 equal to `h`
/// (a flat table's home slot takes the top bits, and no table has 2^20 slots). Empty: it
/// filters nothing out.
#[derive(Clone, Default)]
pub struct Filter(Box<[u64]>);

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Filter({} bits)", self.0.len() * 64)
    }
}

impl Filter {
    /// The filter of `hashes`.
    pub fn new(hashes: impl Iterator<Item = u64>) -> Self {
        let mut words = vec![0u64; FILTER_BITS / 64].into_boxed_slice();
        for h in hashes {
            words[filter_bit(h) / 64] |= 1 << (filter_bit(h) % 64);
        }
        Filter(words)
    }

    /// False when no key has hash `h`.
    #[inline(always)]
    pub fn may_hold(&self, h: u64) -> bool {
        self.0
            .get(filter_bit(h) / 64)
            .map_or(true, |&word| word >> (filter_bit(h) % 64) & 1 == 1)
    }

    pub fn memory(&self) -> usize {
        self.0.len() * 8
    }
}

impl<K: FlatKey> FlatTable<K> {
    /// The table of `entries` (`(key, rank, id)`, ranks below `u32::MAX`; a repeated key keeps
    /// its last value).
    pub fn new(entries: impl ExactSizeIterator<Item = (K, u32, u32)>, with_filter: bool) -> Self {
        let bits = (2 * entries.len())
            .max(2)
            .next_power_of_two()
            .trailing_zeros();
        let empty = Slot {
            key: K::default(),
            rank: u32::MAX,
            id: u32::MAX,
        };
        let mut table = FlatTable {
            slots: vec![empty; 1 << bits].into_boxed_slice(),
            shift: 64 - bits,
            filter: Filter::default(),
        };
        let mask = table.slots.len() - 1;
        for (key, rank, id) in entries {
            let h = key.hash();
            let mut i = (h >> table.shift) as usize;
            while table.slots[i].rank != u32::MAX && table.slots[i].key != key {
                i = (i + 1) & mask;
            }
            table.slots[i] = Slot { key, rank, id };
        }
        if with_filter {
            let keys = table.slots.iter().filter(|s| s.rank != u32::MAX);
            table.filter = Filter::new(keys.map(|s| s.key.hash()));
        }
        table
    }

    /// `(rank, id)` of `key`.
    #[inline(always)]
    pub fn get(&self, key: K) -> Option<(u32, u32)> {
        let h = key.hash();
        if !self.filter.may_hold(h) {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = (h >> self.shift) as usize;
        loop {
            let slot = self.slots[i];
            if slot.rank == u32::MAX {
                return None;
            }
            if slot.key == key {
                return Some((slot.rank, slot.id));
            }
            i = (i + 1) & mask;
        }
    }

    /// Bytes of memory the table holds.
    pub fn memory(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot<K>>() + self.filter.memory()
    }

    /// How many keys the table holds.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.rank != u32::MAX).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[inline(always)]
fn filter_bit(hash: u64) -> usize {
    (hash >> 24) as usize % FILTER_BITS
}

impl<K> std::fmt::Debug for FlatTable<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FlatTable({} slots)", self.slots.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_key_and_no_other() {
        for with_filter in [false, true] {
            let entries: Vec<(u64, u32, u32)> = (0..5000u64)
                .map(|k| (k * 7919, k as u32, k as u32 + 1))
                .collect();
            let t = FlatTable::new(entries.iter().copied(), with_filter);
            assert_eq!(t.len(), 5000);
            for &(k, r, i) in &entries {
                assert_eq!(t.get(k), Some((r, i)));
                assert_eq!(t.get(k + 1), None);
            }
        }
    }
}

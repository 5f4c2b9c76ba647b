//! Short byte strings (at most 15 bytes) as one `u128`: the key of the trainer's pretoken
//! counts and of the encoder's pretoken cache.
//!
//! Nearly all pretokens of natural text are this short. Inline keys hash and compare as two
//! machine words, with no pointer to chase and no `memcmp` call, which is what those hot maps
//! spend their time on.

/// A pretoken of at most 15 bytes, stored inline with its length in the last byte: hashing and
/// comparing it is two machine words, with no pointer to chase and no `memcmp` call. Nearly all
/// pretokens of natural text are this short; longer ones go to a map of boxed bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ShortKey(pub u128);

impl ShortKey {
    /// The key of `text[start..end]`, if it is short. Reads 16 bytes at once when `text` has
    /// them, so the common case is one load and a mask rather than a variable-length copy.
    #[inline]
    pub fn new(text: &[u8], start: usize, end: usize) -> Option<Self> {
        let len = end - start;
        if len > 15 {
            return None;
        }
        let word = match text.get(start..).and_then(<[u8]>::first_chunk::<16>) {
            Some(block) => u128::from_le_bytes(*block),
            None => tail_word(&text[start..end]),
        };
        // A table rather than `(1 << 8 * len) - 1`, which on a `u128` is a dozen instructions.
        Some(ShortKey(word & LOW_BYTES[len] | (len as u128) << 120))
    }

    /// The key's slot in a direct-mapped cache of `2^bits` slots (top bits of its hash).
    #[inline]
    pub fn slot(self, bits: u32) -> usize {
        let mut h = FoldHasher::default();
        std::hash::Hasher::write_u128(&mut h, self.0);
        (std::hash::Hasher::finish(&h) >> (64 - bits)) as usize
    }

    pub fn to_bytes(self) -> ([u8; 16], usize) {
        (self.0.to_le_bytes(), (self.0 >> 120) as usize)
    }
}

/// `LOW_BYTES[n]`: the low `n` bytes of a `u128` set.
static LOW_BYTES: [u128; 16] = {
    let mut masks = [0u128; 16];
    let mut n = 1;
    while n < 16 {
        masks[n] = (1u128 << (8 * n)) - 1;
        n += 1;
    }
    masks
};

/// `bytes` (at most 15) zero-padded to 16, little-endian: the last few pretokens of a text,
/// kept out of line so that the common path stays small enough to inline.
#[cold]
#[inline(never)]
fn tail_word(bytes: &[u8]) -> u128 {
    let mut block = [0u8; 16];
    block[..bytes.len()].copy_from_slice(bytes);
    u128::from_le_bytes(block)
}

impl crate::flat::FlatKey for ShortKey {
    /// The same hash as `slot`'s and hashbrown's (`FoldHasher`).
    #[inline(always)]
    fn hash(self) -> u64 {
        let mut h = FoldHasher::default();
        std::hash::Hasher::write_u128(&mut h, self.0);
        std::hash::Hasher::finish(&h)
    }
}

impl std::hash::Hash for ShortKey {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u128(self.0);
    }
}

/// Hasher for `ShortKey`: one folded 64x64->128-bit multiply mixes all 16 bytes into every
/// output bit (hashbrown uses both the top and the bottom bits).
#[derive(Default, Clone, Copy)]
pub struct FoldHasher(u64);

impl std::hash::Hasher for FoldHasher {
    #[inline]
    fn write_u128(&mut self, x: u128) {
        let (lo, hi) = (x as u64, (x >> 64) as u64);
        let product =
            u128::from(lo ^ 0x243f_6a88_85a3_08d3) * u128::from(hi ^ 0x1319_8a2e_0370_7344);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

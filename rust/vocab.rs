//! The vocabulary of a byte-level BPE tokenizer: token bytes by id, the ordered merges, and
//! the special tokens.
//!
//! Any id layout is accepted (GPT-2's own puts the 256 bytes in a printable-first order), so a
//! tokenizer is fully determined by vocab + merges + special tokens + pattern. Encoding ranks a
//! merged token by the index of the merge that creates it, which for trained vocabularies (and
//! GPT-2's) equals tiktoken's rank-by-id rule.

use rustc_hash::FxHashMap;

use crate::encode::Backtracks;
use crate::error::{Error, Result};
use crate::flat::{Filter, FlatKey, FlatTable};
use crate::shortkey::{FoldHasher, ShortKey};

type ShortMap = hashbrown::HashMap<ShortKey, (u32, u32), std::hash::BuildHasherDefault<FoldHasher>>;

/// (rank, id) of each two-byte merged token; `NO_PAIR` where two bytes form no token.
#[derive(Clone)]
struct PairTable(Box<[(u32, u32)]>);

const NO_PAIR: (u32, u32) = (u32::MAX, u32::MAX);

impl std::fmt::Debug for PairTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.iter().filter(|&&p| p != NO_PAIR).count();
        write!(f, "PairTable({n} two-byte tokens)")
    }
}

/// A validated vocabulary.
#[derive(Debug, Clone)]
pub struct Vocab {
    /// Ordinary tokens (bytes and merges) by id.
    tokens: FxHashMap<u32, Vec<u8>>,
    /// Id of each single byte.
    byte_ids: [u32; 256],
    /// Merged token bytes -> (merge rank, id).
    merged: FxHashMap<Vec<u8>, (u32, u32)>,
    /// The same for the two-byte tokens, indexed by `first << 8 | second`,
    pairs: PairTable,
    /// and for those of 3 to 15 bytes, keyed inline (no pointer to chase on a lookup).
    short: ShortMap,
    /// A filter of their keys' hashes, small enough to stay in the L2 cache: the pieces of random
    /// text, nearly none of them a token, are turned away without a probe of the map (on text,
    /// where most pieces looked up are tokens, the map is the faster table when cold).
    short_filter: Filter,
    /// The same by the ids of any two tokens whose bytes concatenate to the merged token (every
    /// such split, not only the merge that made it), keyed `a << 32 | b`. BPE only ever joins
    /// two parts that are tokens, so the encoder looks joins up by the parts' ids, with no key
    /// built from bytes and no length limit, and gets exactly the byte rule's answer.
    joins: FlatTable<u64>,
    /// Merges as pairs of ids, in rank order.
    merges: Vec<(u32, u32)>,
    /// The id each merge produces, in rank order.
    merge_results: Vec<u32>,
    /// Special tokens and their ids, in the order given.
    specials: Vec<(String, u32)>,
    /// Largest id + 1.
    n_vocab: u64,
    /// The tables of backtracking BPE for long pieces (`None`: merge trees not rank-ordered).
    backtracks: Option<Backtracks>,
}

impl Vocab {
    /// Validates and indexes a vocabulary.
    ///
    /// Errors: a missing single byte, an empty or duplicate token, a merge whose parts or result
    /// are not in the vocabulary, two merges with the same result, special tokens that are empty,
    /// duplicated or share an id with another token.
    pub fn new(
        tokens: FxHashMap<u32, Vec<u8>>,
        merges: Vec<(Vec<u8>, Vec<u8>)>,
        specials: Vec<(String, u32)>,
    ) -> Result<Self> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        let mut ids: FxHashMap<&[u8], u32> = FxHashMap::default();
        ids.reserve(tokens.len());
        let mut byte_ids = [u32::MAX; 256];
        for (&id, bytes) in &tokens {
            if bytes.is_empty() {
                return bad(format!(
                    "token {id} is empty; every token needs at least one byte"
                ));
            }
            if let Some(other) = ids.insert(bytes.as_slice(), id) {
                let (a, b) = (other.min(id), other.max(id));
                return bad(format!("tokens {a} and {b} have the same bytes {bytes:?}"));
            }
            if bytes.len() == 1 {
                byte_ids[bytes[0] as usize] = id;
            }
        }
        if let Some(b) = byte_ids.iter().position(|&id| id == u32::MAX) {
            return bad(format!(
                "byte 0x{b:02x} has no token; a byte-level vocabulary must contain all 256 bytes"
            ));
        }
        let mut merged = FxHashMap::default();
        merged.reserve(merges.len());
        let mut pairs = PairTable(vec![NO_PAIR; 1 << 16].into_boxed_slice());
        let mut short = ShortMap::default();
        let mut merge_ids = Vec::with_capacity(merges.len());
        let mut merge_results = Vec::with_capacity(merges.len());
        for (rank, (left, right)) in merges.iter().enumerate() {
            let find = |part: &[u8]| {
                ids.get(part).copied().ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "merge {rank} uses {part:?}, which is not in the vocabulary"
                    ))
                })
            };
            let (l, r) = (find(left)?, find(right)?);
            let joined = [left.as_slice(), right.as_slice()].concat();
            let id = find(&joined)?;
            let rank = u32::try_from(rank)
                .map_err(|_| Error::InvalidArgument("more than 2^32 merges".into()))?;
            if let [a, b] = joined[..] {
                pairs.0[usize::from(a) << 8 | usize::from(b)] = (rank, id);
            } else if let Some(key) = ShortKey::new(&joined, 0, joined.len()) {
                short.insert(key, (rank, id));
            }
            if let Some((first, _)) = merged.insert(joined, (rank, id)) {
                return bad(format!(
                    "merges {first} and {rank} produce the same token {:?}",
                    String::from_utf8_lossy(&[left.as_slice(), right.as_slice()].concat())
                ));
            }
            merge_ids.push((l, r));
            merge_results.push(id);
        }
        for (i, (text, id)) in specials.iter().enumerate() {
            if text.is_empty() {
                return bad("special tokens must be non-empty strings".into());
            }
            if specials[..i].iter().any(|(t, _)| t == text) {
                return bad(format!("special token {text:?} is given twice"));
            }
            if tokens.contains_key(id) || specials[..i].iter().any(|(_, j)| j == id) {
                return bad(format!(
                    "special token {text:?} has id {id}, which another token already uses"
                ));
            }
        }
        let mut splits = Vec::new();
        for (bytes, &(rank, id)) in &merged {
            for k in 1..bytes.len() {
                if let (Some(&a), Some(&b)) = (ids.get(&bytes[..k]), ids.get(&bytes[k..])) {
                    splits.push((u64::from(a) << 32 | u64::from(b), rank, id));
                }
            }
        }
        let joins = FlatTable::new(splits.into_iter(), true);
        let short_filter = Filter::new(short.keys().map(|&key| key.hash()));
        let ordinary = tokens.keys().copied().max();
        let special = specials.iter().map(|&(_, id)| id).max();
        let n_vocab = ordinary.max(special).map_or(0, |m| u64::from(m) + 1);
        let mut vocab = Vocab {
            tokens,
            byte_ids,
            merged,
            pairs,
            short,
            short_filter,
            joins,
            merges: merge_ids,
            merge_results,
            specials,
            n_vocab,
            backtracks: None,
        };
        vocab.backtracks = Backtracks::build(&vocab);
        Ok(vocab)
    }

    /// The canonical layout made by training: bytes 0..=255, merged tokens in merge order,
    /// special tokens last.
    pub fn from_training(
        token_bytes: Vec<Vec<u8>>,
        merges: Vec<(u32, u32)>,
        specials: &[String],
    ) -> Result<Self> {
        let pairs = merges
            .iter()
            .map(|&(a, b)| {
                (
                    token_bytes[a as usize].clone(),
                    token_bytes[b as usize].clone(),
                )
            })
            .collect();
        let n = token_bytes.len() as u32;
        let tokens = token_bytes
            .into_iter()
            .enumerate()
            .map(|(i, b)| (i as u32, b))
            .collect();
        let specials = specials
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), n + i as u32))
            .collect();
        Vocab::new(tokens, pairs, specials)
    }

    /// Bytes of an ordinary token.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.tokens.get(&id).map(Vec::as_slice)
    }

    /// Ordinary tokens by id (unordered).
    pub fn tokens(&self) -> &FxHashMap<u32, Vec<u8>> {
        &self.tokens
    }

    /// Id of a single byte.
    #[inline]
    pub fn byte_id(&self, b: u8) -> u32 {
        self.byte_ids[b as usize]
    }

    /// `(rank, id)` of a merged token, if `bytes` is one.
    #[inline]
    pub fn merged(&self, bytes: &[u8]) -> Option<(u32, u32)> {
        self.merged_in(bytes, 0, bytes.len())
    }

    /// `merged(&text[start..end])`, faster when `text` goes on past `end` (the short key is then
    /// one 16-byte load).
    #[inline]
    pub fn merged_in(&self, text: &[u8], start: usize, end: usize) -> Option<(u32, u32)> {
        if end - start == 2 {
            return self.merged_pair(text[start], text[start + 1]);
        }
        match ShortKey::new(text, start, end) {
            Some(key) if self.short_filter.may_hold(key.hash()) => self.short.get(&key).copied(),
            Some(_) => None,
            None => self.merged.get(&text[start..end]).copied(),
        }
    }

    /// `merged(&[a, b])` by a table lookup instead of hashing.
    #[inline]
    pub fn merged_pair(&self, a: u8, b: u8) -> Option<(u32, u32)> {
        let found = self.pairs.0[usize::from(a) << 8 | usize::from(b)];
        (found != NO_PAIR).then_some(found)
    }

    /// `(rank, id)` of the merged token whose bytes are those of tokens `a` and `b` joined, if
    /// there is one (equal to `merged` of the joined bytes).
    #[inline]
    pub fn joined(&self, a: u32, b: u32) -> Option<(u32, u32)> {
        self.joins.get(u64::from(a) << 32 | u64::from(b))
    }

    /// The id of the token that merge `rank` produces.
    #[inline]
    pub fn merge_result(&self, rank: u32) -> u32 {
        self.merge_results[rank as usize]
    }

    /// The merges as pairs of ids, in rank order.
    pub fn merges(&self) -> &[(u32, u32)] {
        &self.merges
    }

    /// The tables of backtracking BPE, the encoder's merge for long pieces; `None` when the
    /// merge trees are not rank-ordered (a token made from a later-ranked one, possible in a
    /// vocabulary loaded from files), and long pieces then take the heap-based merge.
    pub fn backtracks(&self) -> Option<&Backtracks> {
        self.backtracks.as_ref()
    }

    /// The special tokens and their ids, in the order given.
    pub fn specials(&self) -> &[(String, u32)] {
        &self.specials
    }

    /// Number of tokens, special tokens included.
    pub fn len(&self) -> usize {
        self.tokens.len() + self.specials.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Largest id + 1 (tiktoken's `n_vocab`): the smallest embedding table that fits every id.
    pub fn n_vocab(&self) -> u64 {
        self.n_vocab
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_vocab() -> FxHashMap<u32, Vec<u8>> {
        (0..=255u8).map(|b| (u32::from(b), vec![b])).collect()
    }

    #[test]
    fn trained_layout_and_n_vocab() {
        let mut bytes: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        bytes.push(b"ab".to_vec());
        let v = Vocab::from_training(bytes, vec![(97, 98)], &["<s>".into()]).unwrap();
        assert_eq!(v.len(), 258);
        assert_eq!(v.n_vocab(), 258);
        assert_eq!(v.merged(b"ab"), Some((0, 256)));
        assert_eq!(v.specials(), &[("<s>".to_string(), 257)]);
    }

    /// The three lookup paths (two-byte table, inline keys up to 15 bytes, boxed bytes beyond)
    /// agree with the merges that made the tokens, inside a longer text too.
    #[test]
    fn merged_finds_every_length() {
        // "a" * 2, "a" * 3, ..., "a" * 20, each one more "a" than the last, plus "ab".
        let mut tokens = bytes_vocab();
        let mut merges = Vec::new();
        for len in 2..=20usize {
            tokens.insert(254 + len as u32, vec![b'a'; len]);
            merges.push((vec![b'a'; len - 1], b"a".to_vec()));
        }
        tokens.insert(300, b"ab".to_vec());
        merges.push((b"a".to_vec(), b"b".to_vec()));
        let v = Vocab::new(tokens, merges, vec![]).unwrap();
        let text = [vec![b'a'; 20], b"b".repeat(20)].concat();
        for len in 2..=20usize {
            let expected = Some((len as u32 - 2, 254 + len as u32));
            assert_eq!(v.merged(&vec![b'a'; len]), expected, "{len}");
            assert_eq!(v.merged_in(&text, 20 - len, 20), expected, "{len}");
            assert_eq!(v.merge_result(len as u32 - 2), 254 + len as u32);
            if len > 2 {
                assert_eq!(v.merged_in(&text, 21 - len, 21), None, "{len}");
            }
        }
        assert_eq!(v.merged_pair(b'a', b'b'), Some((19, 300)));
        assert_eq!(v.merged_in(&text, 19, 21), Some((19, 300)));
        assert_eq!(v.merged_pair(b'b', b'a'), None);
        assert_eq!(v.merged(b"aab"), None);
    }

    /// `joined` equals `merged` of the concatenated bytes for every pair of tokens, including
    /// splits other than the merge that made a token ("a" + "aa" for "aaa", made as "aa" + "a").
    #[test]
    fn joined_equals_merged_of_the_bytes() {
        let mut tokens = bytes_vocab();
        let mut merges = Vec::new();
        for len in 2..=20usize {
            tokens.insert(254 + len as u32, vec![b'a'; len]);
            merges.push((vec![b'a'; len - 1], b"a".to_vec()));
        }
        tokens.insert(300, b"ab".to_vec());
        merges.push((b"a".to_vec(), b"b".to_vec()));
        tokens.insert(301, b"aab".to_vec());
        merges.push((b"aa".to_vec(), b"b".to_vec()));
        let v = Vocab::new(tokens, merges, vec![]).unwrap();
        let all: Vec<(u32, Vec<u8>)> = v.tokens().iter().map(|(&i, b)| (i, b.clone())).collect();
        let mut found = 0;
        for (a, x) in &all {
            for (b, y) in &all {
                let want = v.merged(&[x.as_slice(), y.as_slice()].concat());
                assert_eq!(v.joined(*a, *b), want, "{x:?} + {y:?}");
                found += usize::from(want.is_some());
            }
        }
        // "a" * n splits n - 1 ways, "ab" one way, "aab" two ways ("a" + "ab", "aa" + "b").
        assert_eq!(found, (2..=20).map(|n| n - 1).sum::<usize>() + 1 + 2);
    }

    #[test]
    fn rejects_inconsistent_input() {
        let mut t = bytes_vocab();
        t.remove(&7);
        assert!(Vocab::new(t, vec![], vec![]).is_err());
        let merge = vec![(b"a".to_vec(), b"b".to_vec())];
        assert!(Vocab::new(bytes_vocab(), merge, vec![]).is_err());
        let mut t = bytes_vocab();
        t.insert(300, b"a".to_vec());
        assert!(Vocab::new(t, vec![], vec![]).is_err());
        let clash = vec![("<s>".to_string(), 5)];
        assert!(Vocab::new(bytes_vocab(), vec![], clash).is_err());
    }
}

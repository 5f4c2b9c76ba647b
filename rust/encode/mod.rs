//! Applying a vocabulary's merges to text.
//!
//! Text is split on special tokens, pretokenized by the pattern's scanner, and each pretoken is
//! looked up in a per-thread cache (`cache`) or merged by tiktoken's rank rule (`bpe`; long pieces
//! by backtracking over the vocabulary's trie, `backtrack`), so the
//! ids equal tiktoken's for the same ranks. Large texts and batches are encoded in parallel,
//! cut at the same provably safe points as the trainer's chunks (`corpus::Cutter`).

mod backtrack;
mod bpe;
mod buffers;
mod cache;
mod sink;
mod trie;

pub use backtrack::Backtracks;

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use rayon::prelude::*;

use crate::corpus::Cutter;
use crate::error::{Error, Result};
use crate::pretokenize::Pattern;
use crate::special::{Segment, Specials};
use crate::vocab::Vocab;

/// A complete tokenizer: vocabulary, pretokenization pattern and special-token matcher.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    vocab: Vocab,
    pattern: Pattern,
    specials: Specials,
    /// Names this tokenizer's entries in the per-thread pretoken caches.
    uid: u64,
}

/// Which special tokens found in a text become their ids (the rest is plain text).
#[derive(Debug, Clone, Copy)]
pub enum Allowed<'a> {
    All,
    Only(&'a [String]),
}

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

impl Tokenizer {
    pub fn new(vocab: Vocab, pattern: Pattern) -> Result<Self> {
        let specials = Specials::new(vocab.specials().iter().map(|(s, _)| s.clone()).collect())?;
        Ok(Tokenizer {
            vocab,
            pattern,
            specials,
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
        })
    }

    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    pub fn specials(&self) -> &Specials {
        &self.specials
    }

    /// Encodes `text`; special tokens in it become their ids.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.encode_into(text, &mut out);
        out
    }

    /// Encodes `text` into `out`; special tokens in it become their ids.
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        self.specials.split(text, |seg| match seg {
            Segment::Text(t) => self.encode_ordinary_into(t, out),
            Segment::Special(i) => out.push(self.vocab.specials()[i].1),
        });
    }

    /// Encodes `text` treating special-token strings as plain text.
    pub fn encode_ordinary_into(&self, text: &str, out: &mut Vec<u32>) {
        let bytes = text.as_bytes();
        let merge = |piece: &[u8], out: &mut Vec<u32>| bpe::merge_piece(&self.vocab, piece, out);
        cache::with_cache(self.uid, |cache| {
            // Inlined into the scanner's loop (it is called from two places there, so LLVM would
            // keep it a function): 12% fewer instructions per byte.
            let mut pipe = cache::Pipeline::new();
            self.pattern.for_each_range(
                text,
                #[inline(always)]
                |start, end| cache.encode_later(&mut pipe, bytes, start, end, out, merge),
            );
            cache.finish(&mut pipe, bytes, out, merge);
        });
    }

    /// Encodes `text` with tiktoken's special-token rules: an occurrence of a `disallowed`
    /// special token is an error; `allowed` ones become their ids; any other special-token text
    /// is encoded as plain text.
    pub fn encode_with(
        &self,
        text: &str,
        allowed: Allowed<'_>,
        disallowed: &[String],
        out: &mut Vec<u32>,
    ) -> Result<()> {
        self.check_disallowed(text, disallowed)?;
        match allowed {
            Allowed::All => self.encode_into(text, out),
            Allowed::Only([]) => self.encode_ordinary_into(text, out),
            Allowed::Only(names) => {
                let subset = Specials::new(names.to_vec())?;
                let ids = names
                    .iter()
                    .map(|name| self.special_id(name))
                    .collect::<Result<Vec<u32>>>()?;
                subset.split(text, |seg| match seg {
                    Segment::Text(t) => self.encode_ordinary_into(t, out),
                    Segment::Special(i) => out.push(ids[i]),
                });
            }
        }
        Ok(())
    }

    /// The id of a registered special token.
    pub fn special_id(&self, name: &str) -> Result<u32> {
        self.vocab
            .specials()
            .iter()
            .find(|(s, _)| s == name)
            .map(|&(_, id)| id)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("{name:?} is not a special token of this tokenizer"))
            })
    }

    fn check_disallowed(&self, text: &str, disallowed: &[String]) -> Result<()> {
        if disallowed.is_empty() {
            return Ok(());
        }
        let matcher = Specials::new(disallowed.to_vec())?;
        if let Some(&(start, end)) = matcher.find_all(text.as_bytes()).first() {
            return Err(Error::DisallowedSpecial {
                token: text[start..end].to_string(),
                offset: text[..start].chars().count(),
            });
        }
        Ok(())
    }

    /// Encodes `text` on the current rayon pool: cut at safe points into pieces (sized by
    /// `piece_bytes` for the pool) and encoded in parallel, each thread appending its pieces'
    /// ids to one buffer (taken from, and given back to, the buffers kept between calls).
    pub fn encode_parallel(
        &self,
        text: &str,
        allowed: Allowed<'_>,
        disallowed: &[String],
    ) -> Result<Encoded> {
        self.check_disallowed(text, disallowed)?;
        let threads = rayon::current_num_threads().max(1);
        let pieces = self.cut_into(text, piece_bytes(text.len(), threads));
        // A thread's share of the ids, with room for an uneven share (about 4 bytes a token).
        let share = text.len() / 3 / threads + text.len() / 12 / threads;
        let slots: Vec<Mutex<Vec<u32>>> = buffers::take(threads)
            .into_iter()
            .map(|b| Mutex::new(buffers::with_room(b, share)))
            .collect();
        let spans = pieces
            .par_iter()
            .map(|piece| {
                // Each pool thread has its own slot, so the lock is not contended; it is held
                // while the piece is encoded all the same, so that a thread outside the pool's
                // numbering could never interleave with the slot's owner. The vector is moved
                // to the stack meanwhile: its length is written on every pretoken the cache
                // misses, and slots of different threads share cache lines (16 threads: 40%
                // slower with the vector left in its slot).
                let buffer = rayon::current_thread_index().unwrap_or(0) % slots.len();
                let mut slot = slots[buffer].lock().unwrap_or_else(PoisonError::into_inner);
                let mut ids = std::mem::take(&mut *slot);
                let start = ids.len();
                ids.reserve(piece.len() / 3 + 1);
                let result = self.encode_with(piece, allowed, &[], &mut ids);
                let end = ids.len();
                *slot = ids;
                drop(slot);
                result.map(|()| Span { buffer, start, end })
            })
            .collect::<Result<Vec<Span>>>();
        let mut encoded = Encoded {
            buffers: slots
                .into_iter()
                .map(|m| m.into_inner().unwrap_or_else(PoisonError::into_inner))
                .collect(),
            spans: Vec::new(),
        };
        // On an error the buffers still go back, when `encoded` is dropped.
        encoded.spans = spans?;
        Ok(encoded)
    }

    /// Splits `text` into consecutive pieces of about `chunk` bytes that encode independently.
    pub fn cut_into<'t>(&self, text: &'t str, chunk: usize) -> Vec<&'t str> {
        let cutter = Cutter {
            pattern: &self.pattern,
            specials: &self.specials,
        };
        let mut pieces = Vec::new();
        let mut rest = text;
        let mut window = chunk.max(1);
        while rest.len() > window {
            // A cut inside the window is safe whatever follows it, so the rest of the text
            // need not be looked at.
            match cutter.cut(&rest.as_bytes()[..window]) {
                Some(p) => {
                    pieces.push(&rest[..p]);
                    rest = &rest[p..];
                    window = chunk.max(1);
                }
                None => window *= 2,
            }
        }
        if !rest.is_empty() {
            pieces.push(rest);
        }
        pieces
    }

    /// The bytes of `ids` concatenated. Unknown ids are an error.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if let Some(b) = self.vocab.token_bytes(id) {
                out.extend_from_slice(b);
            } else if let Some((s, _)) = self.vocab.specials().iter().find(|(_, j)| *j == id) {
                out.extend_from_slice(s.as_bytes());
            } else {
                return Err(Error::InvalidArgument(format!(
                    "token id {id} is not in the vocabulary (n_vocab = {})",
                    self.vocab.n_vocab()
                )));
            }
        }
        Ok(out)
    }
}

/// The piece size for encoding `len` bytes on `threads` threads: about `PIECES_PER_THREAD`
/// pieces per thread, so that the last pieces to finish leave few threads idle (50 MB in
/// one-megabyte pieces on 16 threads is four rounds, the last with two of the sixteen busy),
/// but no smaller than `MIN_PIECE` (a piece's fixed cost) nor larger than `MAX_PIECE`.
pub fn piece_bytes(len: usize, threads: usize) -> usize {
    const PIECES_PER_THREAD: usize = 8;
    const MIN_PIECE: usize = 64 << 10;
    const MAX_PIECE: usize = 1 << 20;
    (len / (threads.max(1) * PIECES_PER_THREAD)).clamp(MIN_PIECE, MAX_PIECE)
}

/// The ids of a parallel encode: pieces in the text's order, each a range of one thread's
/// buffer. The buffers go back to be reused when this is dropped.
pub struct Encoded {
    buffers: Vec<Vec<u32>>,
    spans: Vec<Span>,
}

/// Where one piece's ids are: `buffers[buffer][start..end]`.
struct Span {
    buffer: usize,
    start: usize,
    end: usize,
}

impl Encoded {
    /// The pieces' ids, in order.
    pub fn parts(&self) -> Vec<&[u32]> {
        self.spans
            .iter()
            .map(|s| &self.buffers[s.buffer][s.start..s.end])
            .collect()
    }

    /// The number of ids.
    pub fn len(&self) -> usize {
        self.spans.iter().map(|s| s.end - s.start).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All ids in one vector.
    pub fn to_vec(&self) -> Vec<u32> {
        self.parts().concat()
    }

    /// Writes the ids, in order, as little-endian `u32` into `dst`, which must be `len()` long
    /// (memory not yet initialised is fine): one task per piece on the current rayon pool, so a
    /// fresh buffer's pages are first touched in parallel.
    pub fn write_le(&self, dst: &mut [MaybeUninit<[u8; 4]>]) {
        assert_eq!(
            dst.len(),
            self.len(),
            "write_le needs room for exactly the ids"
        );
        write_parts_le(dst, &self.parts());
    }
}

/// Writes `parts` one after another as little-endian `u32` into `dst` (memory not yet
/// initialised is fine), one task per part on the current rayon pool, so a fresh buffer's pages
/// are first touched in parallel. `dst` must hold at least all the parts' ids.
pub fn write_parts_le(dst: &mut [MaybeUninit<[u8; 4]>], parts: &[&[u32]]) {
    let mut rest = dst;
    let mut pairs = Vec::with_capacity(parts.len());
    for &part in parts {
        let (head, tail) = rest.split_at_mut(part.len());
        pairs.push((head, part));
        rest = tail;
    }
    pairs
        .into_par_iter()
        .for_each(|(dst, ids)| write_le(dst, ids));
}

/// Writes `ids` as little-endian `u32` into `dst` (memory not yet initialised is fine), as far
/// as the shorter of the two goes.
pub fn write_le(dst: &mut [MaybeUninit<[u8; 4]>], ids: &[u32]) {
    for (d, id) in dst.iter_mut().zip(ids) {
        d.write(id.to_le_bytes());
    }
}

impl Drop for Encoded {
    fn drop(&mut self) {
        buffers::give_back(std::mem::take(&mut self.buffers));
    }
}

/// Encodes a stream of text pieces as if they were one string, holding only the unfinished tail.
#[derive(Debug, Default)]
pub struct StreamEncoder {
    buf: String,
}

impl StreamEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `text` and encodes into `out` every complete part of the buffer.
    pub fn feed(&mut self, tok: &Tokenizer, text: &str, out: &mut Vec<u32>) {
        self.buf.push_str(text);
        let cutter = Cutter {
            pattern: &tok.pattern,
            specials: &tok.specials,
        };
        if let Some(cut) = cutter.cut(self.buf.as_bytes()) {
            tok.encode_into(&self.buf[..cut], out);
            self.buf.drain(..cut);
        }
    }

    /// Encodes what is left.
    pub fn finish(&mut self, tok: &Tokenizer, out: &mut Vec<u32>) {
        tok.encode_into(&self.buf, out);
        self.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_sized_for_the_threads() {
        assert_eq!(piece_bytes(50_000_000, 16), 50_000_000 / 128);
        assert_eq!(piece_bytes(50_000_000, 1), 1 << 20);
        assert_eq!(piece_bytes(100_000, 16), 64 << 10);
        assert_eq!(piece_bytes(0, 0), 64 << 10);
    }

    fn tiny() -> Tokenizer {
        let mut bytes: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        bytes.push(b"ab".to_vec()); // 256
        bytes.push(b"abc".to_vec()); // 257
        let merges = vec![(97, 98), (256, 99)];
        let vocab = Vocab::from_training(bytes, merges, &["<|e|>".into()]).unwrap();
        Tokenizer::new(vocab, Pattern::new("gpt2").unwrap()).unwrap()
    }

    #[test]
    fn merges_by_rank_and_handles_specials() {
        let t = tiny();
        assert_eq!(t.encode("abcab<|e|>c"), [257, 256, 258, 99]);
        assert_eq!(t.decode_bytes(&[257, 258]).unwrap(), b"abc<|e|>");
        assert!(t.decode_bytes(&[999]).is_err());
    }

    /// A custom regex may match the empty string; those matches give no ids (as in tiktoken),
    /// however many pretokens the cache's pipeline holds around them.
    #[test]
    fn empty_regex_matches_give_nothing() {
        let mut bytes: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        bytes.push(b"aa".to_vec()); // 256
        let vocab = Vocab::from_training(bytes, vec![(97, 97)], &[]).unwrap();
        let t = Tokenizer::new(vocab, Pattern::new("a*").unwrap()).unwrap();
        let text = "baab".repeat(40);
        // Per "baab": "" at b, "aa", "" at b (and one "" at the very end).
        assert_eq!(t.encode(&text), vec![256; 40]);
    }

    /// Pieces encoded on several threads into reused buffers give the serial ids, in order,
    /// call after call, also from two callers at once.
    #[test]
    fn parallel_equals_serial() {
        let t = tiny();
        let text: String = (0..120_000)
            .map(|i| ["abc ", "ab<|e|>", "cab  ", "x\n", "abcabc "][i % 5])
            .collect();
        let want = t.encode(&text);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..3 {
                        let got = pool
                            .install(|| t.encode_parallel(&text, Allowed::All, &[]))
                            .unwrap_or_else(|e| panic!("{e}"));
                        assert!(got.parts().len() > 3);
                        assert_eq!(got.len(), want.len());
                        assert_eq!(got.to_vec(), want);
                        let mut le = vec![MaybeUninit::new([0u8; 4]); got.len()];
                        pool.install(|| got.write_le(&mut le));
                        // SAFETY: `write_le` wrote every element (and they started initialised).
                        let le: Vec<u32> = le
                            .iter()
                            .map(|b| u32::from_le_bytes(unsafe { b.assume_init() }))
                            .collect();
                        assert_eq!(le, want);
                    }
                });
            }
        });
        let err = pool.install(|| t.encode_parallel(&text, Allowed::All, &["<|e|>".into()]));
        assert!(err.is_err());
        // Fewer pieces than threads, from several callers at once.
        let wide = rayon::ThreadPoolBuilder::new()
            .num_threads(8)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let short = &text[..200_000];
        let want = t.encode(short);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..20 {
                        let got = wide
                            .install(|| t.encode_parallel(short, Allowed::All, &[]))
                            .unwrap_or_else(|e| panic!("{e}"));
                        assert_eq!(got.to_vec(), want);
                    }
                });
            }
        });
    }

    #[test]
    fn stream_equals_whole() {
        let t = tiny();
        let text = "abc ab<|e|>cab abcabc  x\n\nab";
        for size in 1..6 {
            let mut s = StreamEncoder::new();
            let mut out = Vec::new();
            let chars: Vec<char> = text.chars().collect();
            for piece in chars.chunks(size) {
                s.feed(&t, &piece.iter().collect::<String>(), &mut out);
            }
            s.finish(&t, &mut out);
            assert_eq!(out, t.encode(text), "piece size {size}");
        }
    }
}

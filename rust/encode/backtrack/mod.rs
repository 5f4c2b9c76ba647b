//! Backtracking BPE for long pretokens: the rank rule's output in about linear time.
//!
//! The idea is that of GitHub's `bpe` crate (rust-gems): BPE's output is the one sequence of
//! tokens that each encode to themselves and whose every neighbouring pair is *valid*, i.e.
//! is what BPE leaves at that boundary when run on the pair's bytes alone. So the encoder walks
//! the text left to right, each time placing the longest token that starts there (`Trie`) and
//! checking it against the previous one; on a failure it tries the next shorter token that
//! starts there (`shorter`), and when none is left it takes back the previous token and marks
//! the position it started from as a dead end (one bit a byte), so no position is given up
//! twice. On the worst cases measured (runs of one or two letters, random letters) it tries
//! one to five tokens per token placed, where the heap-based merge (`bpe::merge_long`) keeps
//! 12 bytes of state a byte and a heap of ranks.
//!
//! Whether `a` then `b` is a valid pair is decided by undoing the merges that made them,
//! newest first (ranks order merges in time), and checking each intermediate boundary pair:
//! BPE would have joined it instead if the two form a token of lower rank than the merge that
//! ended that boundary (lower or equal on the right side, where the leftmost of equal ranks
//! wins). See `stands`; answers are remembered per piece (`memo`). The joins it looks up are
//! only the tokens' splits (see `pairs`), a table of one entry a token.
//!
//! Tokens are numbered here by when they are made, `k`: byte `b` is `b`, merge `r` is `256 +
//! r`, so "made later" is "larger number" and the tables are dense arrays.

mod build;
mod memo;
mod pairs;

use std::cell::RefCell;

use crate::encode::trie::Trie;
use memo::Memo;
use pairs::Pairs;

/// Marks "no token".
const NONE: u32 = u32::MAX;

/// The tables of backtracking BPE for one vocabulary (built by `Backtracks::build`).
#[derive(Clone)]
pub struct Backtracks {
    /// The tokens that encode to themselves, by bytes, valued by number.
    trie: Trie,
    /// Vocabulary id of each number.
    ids: Vec<u32>,
    /// What the search needs of each token, in one place (one cache miss, not three).
    tokens: Vec<Token>,
    /// `(a, b)` -> the number of the token split into `a`, `b`. Two neighbours BPE
    /// leaves standing can only ever join into the token that splits into them (were it made
    /// otherwise, BPE on its own bytes would have crossed their boundary, and so would BPE on
    /// any text where they stand side by side), so the splits are all the joins the validity
    /// walk needs: a table of one entry a token instead of one per way to cut it.
    pairs: Pairs,
    /// Bit `a * SMALL + b`: whether `a` then `b` is a valid pair, for the first `SMALL` tokens
    /// (the bytes and the earliest merges), which make a third of the checks on random letters
    /// and all of them on runs of two letters: one load in L1/L2 instead of a memo and a walk.
    small: Box<[u64]>,
}

/// Tokens numbered below this have their pairs' validity in `Backtracks::small` (32 KiB).
const SMALL: u32 = 512;

impl std::fmt::Debug for Backtracks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Backtracks({:?}, {} bytes)", self.trie, self.memory())
    }
}

/// A token as the search sees it.
#[derive(Clone, Copy, Debug)]
struct Token {
    /// Length in bytes.
    len: u32,
    /// The longest token in the trie that is a proper prefix of this one (`NONE`: none).
    shorter: u32,
    /// The two tokens whose merge made this one (`(b, b)` for a byte; `(NONE, NONE)` for a
    /// token that does not encode to itself).
    split: (u32, u32),
}

/// What a thread keeps between pieces: the tokens placed so far and the dead-end bits.
#[derive(Default)]
struct Scratch {
    tokens: Vec<u32>,
    alive: Vec<u64>,
    memo: Memo,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// Scratch buffers are trimmed back to this many elements after a piece.
const KEEP: usize = 1 << 16;

impl Backtracks {
    /// Appends the ids of `piece` to `out`, as the rank rule would, and returns true; false
    /// (and nothing appended) if the search fails, which BPE's theory rules out (the caller
    /// then uses the heap-based merge rather than panic).
    pub fn encode(&self, piece: &[u8], out: &mut Vec<u32>) -> bool {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let found = self.search(piece, &mut scratch);
            if found {
                out.extend(scratch.tokens.iter().map(|&k| self.ids[k as usize]));
            }
            scratch.tokens.clear();
            scratch.tokens.shrink_to(KEEP);
            scratch.alive.shrink_to(KEEP / 64);
            found
        })
    }

    /// Leaves the tokens of `piece`, by number, in `scratch.tokens`; false on failure.
    fn search(&self, piece: &[u8], scratch: &mut Scratch) -> bool {
        let Scratch {
            tokens,
            alive,
            memo,
        } = scratch;
        let n = piece.len();
        tokens.clear();
        tokens.reserve(n);
        alive.clear();
        alive.resize(n / 64 + 1, u64::MAX);
        memo.reset(n);
        let is_alive = |alive: &[u64], pos: usize| alive[pos / 64] >> (pos % 64) & 1 == 1;
        let small = &self.small;
        let mut pos = 0;
        let Some(mut next) = self.longest(piece) else {
            return n == 0;
        };
        while pos < n {
            let mut token = next;
            loop {
                let end = pos + self.tokens[token as usize].len as usize;
                let fits = is_alive(alive, end)
                    && tokens.last().map_or(true, |&last| {
                        if last | token < SMALL {
                            let bit = (last * SMALL + token) as usize;
                            return small[bit / 64] >> (bit % 64) & 1 == 1;
                        }
                        memo.get_or(last, token, || self.is_valid_pair(last, token))
                    });
                if fits {
                    tokens.push(token);
                    pos = end;
                    if pos < n {
                        match self.longest(&piece[pos..]) {
                            Some(k) => next = k,
                            None => return false,
                        }
                    }
                    break;
                }
                let shorter = self.tokens[token as usize].shorter;
                if shorter != NONE {
                    token = shorter;
                    continue;
                }
                // No token placed at `pos` leads anywhere: give up `pos` for good and take
                // back the token before it.
                alive[pos / 64] &= !(1 << (pos % 64));
                let Some(last) = tokens.pop() else {
                    return false;
                };
                pos -= self.tokens[last as usize].len as usize;
                next = last;
                break;
            }
        }
        true
    }

    /// The number of the longest token that starts `text`.
    #[inline]
    fn longest(&self, text: &[u8]) -> Option<u32> {
        self.trie.longest_prefix(text).map(|(k, _)| k)
    }

    /// Whether BPE run on the bytes of token `a` then token `b` leaves exactly `a`, `b`.
    fn is_valid_pair(&self, a: u32, b: u32) -> bool {
        stands(
            |x, y| self.pairs.get(x, y),
            |t| self.tokens[t as usize].split,
            a,
            b,
            NONE,
        )
    }

    /// Bytes of memory the tables hold.
    pub fn memory(&self) -> usize {
        self.trie.memory()
            + 4 * self.ids.len()
            + std::mem::size_of::<Token>() * self.tokens.len()
            + self.pairs.memory()
            + 8 * self.small.len()
    }
}

/// Whether BPE on the bytes of tokens `a` then `b` (both encoding to themselves) reaches `a`,
/// `b` with no merge across their boundary before a merge of rank number `limit`. `join(x, y)`
/// gives the number of the token that `x` and `y` form, if BPE could ever join them;
/// `split(t)` the two tokens whose merge made `t`.
///
/// Before their last merges, the boundary between them was between `a`'s right part and `b`,
/// or `a` and `b`'s left part, and so on down their merge trees; the later-made token (the
/// larger number) was made last, so it is undone first. A boundary pair that forms a token `c`
/// would have been joined while it stood if `c` ranks below the merge that ended it: strictly
/// below for the left token's merge, which is left of the pair, and at or below for the right
/// token's, where the pair is the leftmost. The final pair stands until `limit` (`NONE`: for
/// ever, the question `is_valid_pair` asks).
fn stands(
    join: impl Fn(u32, u32) -> Option<u32>,
    split: impl Fn(u32) -> (u32, u32),
    a: u32,
    b: u32,
    limit: u32,
) -> bool {
    let (mut a, mut b, mut limit) = (a, b, limit);
    loop {
        if join(a, b).is_some_and(|c| c < limit) {
            return false;
        }
        if a > b {
            if a < 256 {
                return true;
            }
            limit = a;
            a = split(a).1;
        } else {
            if b < 256 {
                return true;
            }
            limit = b + 1;
            b = split(b).0;
        }
    }
}

#[cfg(test)]
mod tests;

//! Training a byte-level BPE vocabulary, as GPT-2 did: start from the 256 bytes and repeatedly
//! merge the most frequent adjacent pair, counted over pretokens (pairs never cross pretoken or
//! special-token boundaries), until the vocabulary reaches the requested size.
//!
//! Two phases: `count` streams the corpus and counts unique pretokens in parallel; `merge`
//! learns the merges from those counts. The resulting layout is canonical: ids 0..=255 are the
//! bytes in byte order, merged tokens follow in merge order (id = 256 + merge rank), and special
//! tokens come last.

pub mod count;
pub mod merge;
pub mod words;

pub use count::PretokenCounts;

use crate::error::{Error, Result};
use crate::progress::Bar;
use crate::vocab::Vocab;
use merge::learn_merges;
use words::Words;

/// A trained vocabulary and whether the corpus ran out of pairs before reaching the size asked.
pub struct Trained {
    pub vocab: Vocab,
    pub exhausted: bool,
}

/// How many merges `vocab_size` leaves room for, after the 256 bytes and the special tokens.
pub fn merges_for(vocab_size: u64, n_specials: usize) -> Result<usize> {
    let floor = 256 + n_specials as u64;
    if vocab_size < floor {
        return Err(Error::InvalidArgument(format!(
            "vocab_size={vocab_size} is too small: it must be at least 256 (one token per byte) + \
             {n_specials} special token(s) = {floor}"
        )));
    }
    if vocab_size > u64::from(u32::MAX) {
        return Err(Error::InvalidArgument(format!(
            "vocab_size={vocab_size} does not fit 32-bit token ids"
        )));
    }
    Ok((vocab_size - floor) as usize)
}

/// Learns merges from pretoken counts and builds the vocabulary.
///
/// Parallel work runs on `pool`; the merge loop itself runs on the calling thread, where
/// `check` is called every few hundred merges and may abort (the bindings poll Ctrl-C there).
pub fn train_from_counts(
    counts: PretokenCounts,
    vocab_size: u64,
    specials: &[String],
    pool: &rayon::ThreadPool,
    progress: bool,
    check: &mut dyn FnMut() -> Result<()>,
) -> Result<Trained> {
    let n_merges = merges_for(vocab_size, specials.len())?;
    if counts.is_empty() {
        return Err(Error::EmptyCorpus(format!("{} input bytes", counts.bytes)));
    }
    let mut symbols = 0;
    counts.for_each(|bytes, _| symbols += bytes.len());
    let mut words = Words::with_capacity(counts.len(), symbols);
    let mut pushed = Ok(());
    counts.for_each(|bytes, count| {
        if pushed.is_ok() {
            pushed = words.push(bytes, count);
        }
    });
    pushed?;
    drop(counts);
    let bar = Bar::new(progress, "merge", Some(n_merges as u64), false);
    let learned = learn_merges(words, n_merges, pool, &bar, check)?;
    bar.finish();
    let exhausted = learned.exhausted;
    let vocab = Vocab::from_training(learned.token_bytes, learned.merges, specials)?;
    Ok(Trained { vocab, exhausted })
}

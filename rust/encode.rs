//! Applying a vocabulary's merges to text.
//!
//! Text is split on special tokens, pretokenized, and each pretoken is merged with tiktoken's
//! rule: repeatedly join the adjacent pair whose concatenation is the lowest-ranked merged token
//! (leftmost on ties) until no adjacent pair forms a token. For vocabularies made by BPE training
//! this gives exactly the ids of replaying the merges in order, and it equals tiktoken's output
//! for the same ranks. (The fast, linear-time encoder is the encoding issue's work; this one is
//! the straightforward quadratic-per-pretoken loop, which is fine for natural text.)

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
}

impl Tokenizer {
    pub fn new(vocab: Vocab, pattern: Pattern) -> Result<Self> {
        let specials = Specials::new(vocab.specials().iter().map(|(s, _)| s.clone()).collect())?;
        Ok(Tokenizer {
            vocab,
            pattern,
            specials,
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
        self.pattern
            .for_each(text, |piece| self.encode_piece(piece.as_bytes(), out));
    }

    /// Merges one pretoken.
    fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>) {
        if let [b] = piece {
            out.push(self.vocab.byte_id(*b));
            return;
        }
        if let Some((_, id)) = self.vocab.merged(piece) {
            out.push(id);
            return;
        }
        // bounds[i]..bounds[i + 1] are the current parts.
        let mut bounds: Vec<usize> = (0..=piece.len()).collect();
        let rank_at = |bounds: &[usize], i: usize| {
            (i + 2 < bounds.len())
                .then(|| self.vocab.merged(&piece[bounds[i]..bounds[i + 2]]))
                .flatten()
                .map_or(u32::MAX, |(rank, _)| rank)
        };
        let mut ranks: Vec<u32> = (0..bounds.len() - 1).map(|i| rank_at(&bounds, i)).collect();
        while let Some((best, &rank)) = ranks.iter().enumerate().min_by_key(|&(_, r)| *r) {
            if rank == u32::MAX {
                break;
            }
            bounds.remove(best + 1);
            ranks.remove(best + 1);
            ranks[best] = rank_at(&bounds, best);
            if best > 0 {
                ranks[best - 1] = rank_at(&bounds, best - 1);
            }
        }
        for w in bounds.windows(2) {
            let part = &piece[w[0]..w[1]];
            out.push(match part {
                [b] => self.vocab.byte_id(*b),
                _ => self.vocab.merged(part).map_or(u32::MAX, |(_, id)| id),
            });
        }
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

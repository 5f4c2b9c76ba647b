//! Backtracking BPE against the heap-based merge (`bpe::merge_long`, itself checked against the
//! textbook loop), on the strings that make long pretokens: runs of one letter, two letters,
//! random strings over small alphabets, random bytes; for hand-made vocabularies (including
//! tokens that do not encode to themselves), a vocabulary trained here, and GPT-2's ranks when
//! `../shared/data/gpt2` is present.

use std::path::PathBuf;

use rustc_hash::FxHashMap;

use super::*;
use crate::encode::bpe::merge_long;
use crate::vocab::Vocab;

/// A fixed-seed generator (xorshift64), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn string(&mut self, alphabet: &[u8], len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize])
            .collect()
    }
}

fn bytes_vocab() -> FxHashMap<u32, Vec<u8>> {
    (0..=255u8).map(|b| (u32::from(b), vec![b])).collect()
}

/// The vocabulary whose merges are `merges` (byte strings), ids 256.. in merge order.
fn vocab_of(merges: &[(&[u8], &[u8])]) -> Vocab {
    let mut tokens = bytes_vocab();
    let mut pairs = Vec::new();
    for (i, (l, r)) in merges.iter().enumerate() {
        tokens.insert(256 + i as u32, [*l, *r].concat());
        pairs.push((l.to_vec(), r.to_vec()));
    }
    Vocab::new(tokens, pairs, vec![]).unwrap()
}

fn assert_agrees(vocab: &Vocab, piece: &[u8]) {
    let tables = vocab.backtracks().expect("rank-ordered vocabulary");
    let (mut expected, mut got) = (Vec::new(), Vec::new());
    merge_long(vocab, piece, &mut expected);
    assert!(tables.encode(piece, &mut got));
    assert_eq!(got, expected, "{:?}", String::from_utf8_lossy(piece));
}

/// Random strings of every length up to `max_len` over each alphabet, plus runs.
fn check_many(vocab: &Vocab, alphabets: &[&[u8]], max_len: usize, per_len: usize) {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for alphabet in alphabets {
        for len in 1..=max_len {
            for _ in 0..per_len {
                assert_agrees(vocab, &rng.string(alphabet, len));
            }
        }
        for &b in *alphabet {
            assert_agrees(vocab, &vec![b; max_len * 3 + 1]);
        }
    }
}

#[test]
fn agrees_on_a_small_vocabulary() {
    let v = vocab_of(&[
        (b"a", b"a"),
        (b"a", b"b"),
        (b"aa", b"aa"),
        (b"b", b"a"),
        (b"ab", b"ab"),
        (b"aa", b"b"),
    ]);
    check_many(&v, &[b"ab", b"aab", b"abc"], 120, 20);
}

/// "abcd" is made as "a" + "bcd", but the rank rule stops at "ab", "c", "d" on its bytes: it is
/// not in the trie, and never output.
#[test]
fn tokens_that_do_not_encode_to_themselves_are_left_out() {
    let v = vocab_of(&[(b"a", b"b"), (b"b", b"c"), (b"bc", b"d"), (b"a", b"bcd")]);
    let tables = v.backtracks().unwrap();
    assert_eq!(tables.longest(b"abcd"), Some(256));
    assert_eq!(tables.tokens[256 + 3].split, (NONE, NONE));
    check_many(&v, &[b"abcd", b"abd", b"bcd"], 100, 20);
}

/// "abc" ranks before "ab", which it is made of: no tables; long pieces take the heap merge.
#[test]
fn merge_trees_out_of_rank_order_have_no_tables() {
    let mut tokens = bytes_vocab();
    tokens.insert(256, b"abc".to_vec());
    tokens.insert(257, b"ab".to_vec());
    let merges = vec![
        (b"ab".to_vec(), b"c".to_vec()),
        (b"a".to_vec(), b"b".to_vec()),
    ];
    let v = Vocab::new(tokens, merges, vec![]).unwrap();
    assert!(v.backtracks().is_none());
    let mut out = Vec::new();
    crate::encode::bpe::merge_piece(&v, &b"abc".repeat(20), &mut out);
    assert_eq!(out, vec![256; 20]);
}

/// Merges learned here by the textbook rule (most frequent pair, first seen on ties) from text
/// over a few letters with some repeated words, so the trees are deep and some tokens do not
/// encode to themselves under the rank rule.
fn trained(merges: usize) -> Vocab {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let words: Vec<Vec<u8>> = (0..40)
        .map(|_| {
            let len = 2 + (rng.next() % 7) as usize;
            rng.string(b"abcde", len)
        })
        .collect();
    let mut corpus: Vec<Vec<Vec<u8>>> = (0..3000)
        .map(|_| {
            let word = if rng.next() % 3 == 0 {
                let len = 1 + (rng.next() % 12) as usize;
                rng.string(b"abcdef", len)
            } else {
                words[(rng.next() % 40) as usize].clone()
            };
            word.into_iter().map(|b| vec![b]).collect()
        })
        .collect();
    let mut learned: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut made = std::collections::HashSet::new();
    for _ in 0..merges {
        let mut counts: FxHashMap<(Vec<u8>, Vec<u8>), usize> = FxHashMap::default();
        let mut order = Vec::new();
        for word in &corpus {
            for pair in word.windows(2) {
                let key = (pair[0].clone(), pair[1].clone());
                let count = counts.entry(key.clone()).or_insert(0);
                if *count == 0 {
                    order.push(key);
                }
                *count += 1;
            }
        }
        // A pair whose bytes are already a token (made from another split) is not learned
        // again: a vocabulary holds each byte string once.
        let mut best: Option<&(Vec<u8>, Vec<u8>)> = None;
        for key in &order {
            let fresh = !made.contains(&[key.0.as_slice(), key.1.as_slice()].concat());
            if fresh && best.map_or(true, |b| counts[key] > counts[b]) {
                best = Some(key);
            }
        }
        let Some(best) = best.cloned() else {
            break;
        };
        made.insert([best.0.as_slice(), best.1.as_slice()].concat());
        for word in &mut corpus {
            let mut i = 0;
            while i + 1 < word.len() {
                if word[i] == best.0 && word[i + 1] == best.1 {
                    let right = word.remove(i + 1);
                    word[i].extend(right);
                }
                i += 1;
            }
        }
        learned.push(best);
    }
    let merges: Vec<(&[u8], &[u8])> = learned
        .iter()
        .map(|(l, r)| (l.as_slice(), r.as_slice()))
        .collect();
    vocab_of(&merges)
}

#[test]
fn agrees_on_a_trained_vocabulary() {
    let v = trained(300);
    let tables = v.backtracks().expect("trained merges are rank-ordered");
    let left_out = tables.tokens[256..]
        .iter()
        .filter(|t| t.split.0 == NONE)
        .count();
    eprintln!("{left_out} of 300 tokens do not encode to themselves");
    // Pairs of tokens numbered below `SMALL` are answered by a table, the rest by the walk.
    assert!(
        tables.tokens.len() > SMALL as usize,
        "both ways of checking a pair are used"
    );
    check_many(&v, &[b"ab", b"abc", b"abcde", b"abcdefg"], 150, 10);
    let mut rng = Rng(5);
    let all: Vec<u8> = (0..=255).collect();
    for len in [30, 100, 1000] {
        assert_agrees(&v, &rng.string(&all, len));
    }
}

/// GPT-2's vocabulary from its published files, or `None` when they are absent.
fn gpt2() -> Option<Vocab> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/gpt2");
    let encoder = std::fs::read_to_string(dir.join("encoder.json")).ok()?;
    let merges = std::fs::read_to_string(dir.join("merges.txt")).ok()?;
    // GPT-2 writes each byte as a printable character: the printable Latin-1 ones as
    // themselves, the others as 256, 257, ... in byte order.
    let mut decode: FxHashMap<char, u8> = FxHashMap::default();
    let mut extra = 0;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            char::from(b)
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap()
        };
        decode.insert(c, b);
    }
    let bytes = |s: &str| -> Vec<u8> { s.chars().map(|c| decode[&c]).collect() };
    let table: FxHashMap<String, u32> = serde_json::from_str(&encoder).unwrap();
    let tokens = table
        .iter()
        .filter(|(s, _)| *s != "<|endoftext|>")
        .map(|(s, &id)| (id, bytes(s)))
        .collect();
    let pairs = merges
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("#version"))
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (bytes(a), bytes(b))
        })
        .collect();
    Some(Vocab::new(tokens, pairs, vec![]).unwrap())
}

#[test]
fn agrees_with_gpt2_ranks() {
    let Some(v) = gpt2() else {
        eprintln!("skipped: ../shared/data/gpt2 is absent");
        return;
    };
    let tables = v.backtracks().expect("GPT-2's merges are rank-ordered");
    let left_out = tables.tokens[256..]
        .iter()
        .filter(|t| t.split.0 == NONE)
        .count();
    eprintln!("GPT-2: {left_out} tokens do not encode to themselves");
    let lower: Vec<u8> = (b'a'..=b'z').collect();
    let letters: Vec<u8> = (b'a'..=b'z').chain(b'A'..=b'Z').collect();
    let all: Vec<u8> = (0..=255).collect();
    check_many(&v, &[b"a", b"ab", b"abc", b"xyz", b"0123456789"], 200, 3);
    let mut rng = Rng(11);
    for alphabet in [&lower, &letters, &all, &b"etaoin shrdlu".to_vec()] {
        for len in [25, 26, 40, 64, 100, 300, 1000, 5000] {
            for _ in 0..5 {
                assert_agrees(&v, &rng.string(alphabet, len));
            }
        }
    }
    for unit in [&b"ab"[..], b"aab", b"abc", b"  ", b"=-", b"\xc3\xa9"] {
        assert_agrees(&v, &unit.repeat(3001));
    }
}

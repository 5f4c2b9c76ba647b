//! lmforge's tokenizer file: versioned JSON, lossless for arbitrary token bytes.
//!
//! ```json
//! {"format": "lmforge-tokenizer", "version": 1,
//!  "pattern": "gpt2", "pattern_regex": "'s|'t|...",
//!  "vocab": [[0, "00"], [1, "01"], ..., [256, "6865"]],
//!  "merges": [[104, 101], ...],
//!  "special_tokens": [["<|endoftext|>", 50256]]}
//! ```
//! Token bytes are hex (any bytes survive; the Python API shows them as `bytes`); merges name
//! the ids of their two parts, in rank order; `pattern` is a built-in name or a regex, and
//! `pattern_regex` is informative only. Files are written atomically (temp file, fsync, rename).

use std::io::Write;
use std::path::Path;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::encode::Tokenizer;
use crate::error::{Error, Result};
use crate::pretokenize::Pattern;
use crate::vocab::Vocab;

pub const FORMAT: &str = "lmforge-tokenizer";
pub const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct File {
    format: String,
    version: u32,
    pattern: String,
    #[serde(default)]
    pattern_regex: Option<String>,
    vocab: Vec<(u32, String)>,
    merges: Vec<(u32, u32)>,
    special_tokens: Vec<(String, u32)>,
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Serialises a tokenizer to the JSON text of the format.
pub fn to_json(tok: &Tokenizer) -> String {
    let v = tok.vocab();
    let mut vocab: Vec<(u32, String)> = v.tokens().iter().map(|(&id, b)| (id, to_hex(b))).collect();
    vocab.sort_unstable_by_key(|&(id, _)| id);
    let file = File {
        format: FORMAT.into(),
        version: VERSION,
        pattern: tok.pattern().name().to_string(),
        pattern_regex: Some(tok.pattern().regex_source().to_string()),
        vocab,
        merges: v.merges().to_vec(),
        special_tokens: v.specials().to_vec(),
    };
    // Serialising plain strings and integers cannot fail.
    serde_json::to_string(&file).unwrap_or_default()
}

/// Parses the JSON text of the format; `origin` names the source in errors.
pub fn from_json(text: &str, origin: &str) -> Result<Tokenizer> {
    let corrupt = |message: String| Error::CorruptTokenizer {
        path: origin.to_string(),
        message,
    };
    let file: File = serde_json::from_str(text).map_err(|e| {
        let hint = if e.is_eof() {
            " (the file looks truncated)"
        } else {
            ""
        };
        corrupt(format!("{e}{hint}"))
    })?;
    if file.format != FORMAT {
        return Err(corrupt(format!(
            "format is {:?}, expected {FORMAT:?}",
            file.format
        )));
    }
    if file.version != VERSION {
        return Err(corrupt(format!(
            "version {} is not supported by this lmforge (reads version {VERSION}); upgrade lmforge",
            file.version
        )));
    }
    let mut tokens = FxHashMap::default();
    for (id, hex) in &file.vocab {
        let bytes =
            from_hex(hex).ok_or_else(|| corrupt(format!("token {id}: {hex:?} is not hex")))?;
        if tokens.insert(*id, bytes).is_some() {
            return Err(corrupt(format!("token id {id} appears twice")));
        }
    }
    let mut merges = Vec::with_capacity(file.merges.len());
    for (rank, (a, b)) in file.merges.iter().enumerate() {
        let part = |id: &u32| {
            tokens
                .get(id)
                .cloned()
                .ok_or_else(|| corrupt(format!("merge {rank} names unknown token id {id}")))
        };
        merges.push((part(a)?, part(b)?));
    }
    let vocab =
        Vocab::new(tokens, merges, file.special_tokens).map_err(|e| corrupt(e.to_string()))?;
    let pattern = Pattern::new(&file.pattern).map_err(|e| corrupt(e.to_string()))?;
    Tokenizer::new(vocab, pattern)
}

/// A hash of the tokenizer's canonical content: the pattern's regex, every ordinary token (id
/// and bytes, by id), the merges (as byte pairs, in rank order) and the special tokens (id and
/// text, by id). The same tokenizer loaded from any format has the same fingerprint; token files
/// record it so a file is never read with a different tokenizer.
pub fn fingerprint(tok: &Tokenizer) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut field = |tag: u8, bytes: &[u8]| {
        h.update([tag]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(b'p', tok.pattern().regex_source().as_bytes());
    let v = tok.vocab();
    let mut ids: Vec<(&u32, &Vec<u8>)> = v.tokens().iter().collect();
    ids.sort_unstable_by_key(|(id, _)| **id);
    for (id, bytes) in ids {
        field(b'i', &id.to_le_bytes());
        field(b't', bytes);
    }
    for &(a, b) in v.merges() {
        field(b'l', v.token_bytes(a).unwrap_or_default());
        field(b'r', v.token_bytes(b).unwrap_or_default());
    }
    let mut specials = v.specials().to_vec();
    specials.sort_unstable_by_key(|&(_, id)| id);
    for (text, id) in &specials {
        field(b'I', &id.to_le_bytes());
        field(b's', text.as_bytes());
    }
    let digest = h.finalize();
    format!("sha256:{}", to_hex(&digest))
}

/// Writes `contents` to `path` atomically: a temp file beside it, fsync, rename.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all(); // best effort: makes the rename itself durable
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Saves a tokenizer to `path` (atomically).
pub fn save(tok: &Tokenizer, path: &Path) -> Result<()> {
    write_atomic(path, to_json(tok).as_bytes())
}

/// Loads a tokenizer saved by `save`.
pub fn load(path: &Path) -> Result<Tokenizer> {
    crate::corpus::check_file(path)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let name = path.display().to_string();
    let text = String::from_utf8(bytes).map_err(|e| Error::CorruptTokenizer {
        path: name.clone(),
        message: format!(
            "not UTF-8 text (bad byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })?;
    from_json(&text, &name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> Tokenizer {
        let mut bytes: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        bytes.push(vec![0xff, 0x00]);
        let vocab = Vocab::from_training(bytes, vec![(255, 0)], &["<s>".into()]).unwrap();
        Tokenizer::new(vocab, Pattern::new("cl100k").unwrap()).unwrap()
    }

    #[test]
    fn round_trips() {
        let t = tok();
        let back = from_json(&to_json(&t), "mem").unwrap();
        assert_eq!(to_json(&back), to_json(&t));
        assert_eq!(back.vocab().merged(&[0xff, 0]), Some((0, 256)));
        assert_eq!(back.pattern().name(), "cl100k");
    }

    #[test]
    fn fingerprint_depends_on_content_only() {
        let t = tok();
        let back = from_json(&to_json(&t), "mem").unwrap();
        assert_eq!(fingerprint(&t), fingerprint(&back));
        assert!(fingerprint(&t).starts_with("sha256:"));
        let other = Tokenizer::new(t.vocab().clone(), Pattern::new("gpt2").unwrap()).unwrap();
        assert_ne!(fingerprint(&t), fingerprint(&other));
    }

    #[test]
    fn corrupt_files_are_errors() {
        let json = to_json(&tok());
        for bad in [
            &json[..json.len() / 2],
            "{}",
            "null",
            &json.replace("\"version\":1", "\"version\":9"),
            &json.replace("\"ff00\"", "\"zz\""),
            &json.replace("[255,0]", "[255,7000]"),
        ] {
            assert!(
                matches!(from_json(bad, "x"), Err(Error::CorruptTokenizer { .. })),
                "{bad:.60}"
            );
        }
    }
}

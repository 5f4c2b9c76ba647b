//! Streaming a corpus as chunks of text that can be pretokenized independently.
//!
//! Files are read in blocks and cut only where cutting provably cannot change the pretokens:
//! at special tokens (text is split there anyway) or at the pattern's restart points (see
//! `Pattern::last_restart_point`). Memory therefore stays at a few blocks per thread, whatever
//! the file size. A custom regex has no restart points, so without special tokens in the text a
//! file is held whole; the built-in patterns never need that. Chunk buffers come from a `Pool`
//! that their consumers give them back to, so a long stream reuses a few of them.

use std::borrow::Cow;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::pool::Pool;
use crate::pretokenize::Pattern;
use crate::special::Specials;

/// What to do with bytes that are not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Utf8Policy {
    /// Stop with an error naming the file and byte offset.
    Strict,
    /// Replace each invalid sequence with U+FFFD.
    Replace,
}

impl Utf8Policy {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "strict" => Ok(Utf8Policy::Strict),
            "replace" => Ok(Utf8Policy::Replace),
            _ => Err(Error::InvalidArgument(format!(
                "errors={s:?} is not supported; use \"strict\" or \"replace\""
            ))),
        }
    }

    /// Decodes `bytes`, which start at byte `offset` of `source`.
    pub fn decode(self, bytes: Vec<u8>, source: &str, offset: u64) -> Result<String> {
        match String::from_utf8(bytes) {
            Ok(s) => Ok(s),
            Err(e) => match self {
                Utf8Policy::Strict => Err(Error::InvalidUtf8 {
                    source_name: source.to_string(),
                    offset: offset + e.utf8_error().valid_up_to() as u64,
                }),
                Utf8Policy::Replace => Ok(match String::from_utf8_lossy(e.as_bytes()) {
                    Cow::Owned(s) => s,
                    Cow::Borrowed(s) => s.to_string(),
                }),
            },
        }
    }
}

/// Finds where a growing buffer of text may be cut.
#[derive(Clone, Copy)]
pub struct Cutter<'a> {
    pub pattern: &'a Pattern,
    pub specials: &'a Specials,
}

impl Cutter<'_> {
    /// The last position `p` in `buf` (0 < p < buf.len()) where `buf[..p]` can be processed now,
    /// whatever bytes later follow `buf`. `None` when there is none yet: read more.
    ///
    /// Prefers the pattern's last restart point that no special-token occurrence straddles (a
    /// look at a few bytes around it, so cutting costs nothing next to scanning); falls back
    /// to the end of the last special token when the pattern has no restart point there.
    pub fn cut(&self, buf: &[u8]) -> Option<usize> {
        // A special token that starts before `limit` lies wholly inside `buf`, and the matcher
        // decides it exactly as it would on the whole stream.
        let limit = buf.len().checked_sub(self.specials.max_len().max(1))?;
        let mut hi = limit;
        while let Some(p) = self.pattern.last_restart_point(buf, hi) {
            if !self.specials.overlaps(buf, p) {
                return Some(p);
            }
            hi = p - 1;
        }
        let ends = self.specials.find_all(buf);
        ends.iter()
            .rev()
            .map(|&(_, e)| e)
            .find(|&e| 0 < e && e <= limit)
    }
}

/// A chunk of a corpus as read: raw bytes, their offset in the source, and the source's name.
/// Decoding is left to the worker that takes it, so UTF-8 validation runs in parallel.
pub struct Chunk {
    pub bytes: Vec<u8>,
    pub offset: u64,
    pub source: Arc<str>,
}

impl Chunk {
    /// The chunk's text under `policy`. Once done with it, give `String::into_bytes` back to
    /// the reader's pool.
    pub fn decode(self, policy: Utf8Policy) -> Result<String> {
        policy.decode(self.bytes, &self.source, self.offset)
    }
}

/// Reads one file as a sequence of independently pretokenizable chunks.
pub struct ChunkReader<'a> {
    path: PathBuf,
    name: Arc<str>,
    reader: Box<dyn Read + Send>,
    cutter: Cutter<'a>,
    block: usize,
    /// Where the buffers of the chunks after this one come from.
    spare: &'a Pool<u8>,
    buf: Vec<u8>,
    offset: u64,
    eof: bool,
}

/// Checks that `path` is a readable regular file and returns its size.
pub fn check_file(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::FileNotFound(path.to_path_buf()),
        _ => Error::io(path, e),
    })?;
    if meta.is_dir() {
        return Err(Error::IsADirectory(path.to_path_buf()));
    }
    Ok(meta.len())
}

/// Compression of an input file, by its last suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    pub fn of(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("gz") => Compression::Gzip,
            Some("xz") => Compression::Xz,
            Some("zst") => Compression::Zstd,
            _ => Compression::None,
        }
    }
}

/// Opens an input file for reading, decompressing `.gz`, `.xz` and `.zst` on the fly.
/// Byte offsets in later errors then count decompressed bytes.
pub fn open_input(path: &Path) -> Result<Box<dyn Read + Send>> {
    check_file(path)?;
    let file = std::io::BufReader::with_capacity(
        1 << 16,
        File::open(path).map_err(|e| Error::io(path, e))?,
    );
    Ok(match Compression::of(path) {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(file)),
        Compression::Zstd => {
            Box::new(ruzstd::decoding::StreamingDecoder::new(file).map_err(|e| {
                Error::io(
                    path,
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
                )
            })?)
        }
    })
}

impl<'a> ChunkReader<'a> {
    /// Opens `path` (decompressing `.gz`, `.xz`, `.zst`); chunks are about `block` bytes, in
    /// buffers taken from `spare`.
    pub fn open(
        path: &Path,
        cutter: Cutter<'a>,
        block: usize,
        spare: &'a Pool<u8>,
    ) -> Result<Self> {
        Ok(Self::new(path, open_input(path)?, cutter, block, spare))
    }

    /// As `open`, reading `reader` (the already opened, decompressing input of `path`).
    pub fn new(
        path: &Path,
        reader: Box<dyn Read + Send>,
        cutter: Cutter<'a>,
        block: usize,
        spare: &'a Pool<u8>,
    ) -> Self {
        ChunkReader {
            path: path.to_path_buf(),
            name: path.display().to_string().into(),
            reader,
            cutter,
            block: block.max(1),
            spare,
            buf: spare.take(),
            offset: 0,
            eof: false,
        }
    }

    /// Reads until `buf` holds at least `want` bytes or the file ends. Reads into the vector's
    /// spare capacity (`read_to_end` on a `Take`), so the bytes about to be overwritten are not
    /// zero-filled first.
    fn fill(&mut self, want: usize) -> Result<()> {
        if self.buf.capacity() == 0 && !self.eof {
            self.buf = self.spare.take();
        }
        while !self.eof && self.buf.len() < want {
            let missing = (want - self.buf.len()) as u64;
            self.buf.reserve(want - self.buf.len());
            // `read_to_end` retries reads that were interrupted; it stops after `missing`
            // bytes or at the end of the input.
            let n = (&mut self.reader)
                .take(missing)
                .read_to_end(&mut self.buf)
                .map_err(|e| Error::io(&self.path, e))?;
            self.eof = (n as u64) < missing;
        }
        Ok(())
    }

    fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        let mut want = self.block;
        let cut = loop {
            self.fill(want)?;
            if self.eof {
                break self.buf.len();
            }
            if let Some(p) = self.cutter.cut(&self.buf) {
                break p;
            }
            // No safe cut yet (e.g. a very long line without spaces): read more.
            want = self.buf.len() * 2;
        };
        if cut == 0 {
            return Ok(None);
        }
        // The bytes after the cut (usually a few) start the next chunk's buffer; with none (the
        // input's end), no buffer is taken until the next read needs one (`fill`).
        let mut rest = Vec::new();
        if cut < self.buf.len() {
            rest = self.spare.take();
            rest.extend_from_slice(&self.buf[cut..]);
        }
        self.buf.truncate(cut);
        let chunk = Chunk {
            bytes: std::mem::replace(&mut self.buf, rest),
            offset: self.offset,
            source: self.name.clone(),
        };
        self.offset += cut as u64;
        Ok(Some(chunk))
    }
}

impl Drop for ChunkReader<'_> {
    /// The buffer of the next chunk goes back to the pool (a corpus of many small inputs would
    /// otherwise lose one per input).
    fn drop(&mut self) {
        self.spare.give(std::mem::take(&mut self.buf));
    }
}

impl Iterator for ChunkReader<'_> {
    type Item = Result<Chunk>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_chunk().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn chunks_of(content: &[u8], specials: &[&str], block: usize) -> Result<Vec<String>> {
        let dir = std::env::temp_dir().join(format!("lmforge-corpus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let id = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("f{id}.txt"));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(content)
            .unwrap();
        let pattern = Pattern::new("gpt2").unwrap();
        let specials = Specials::new(specials.iter().map(|s| s.to_string()).collect()).unwrap();
        let cutter = Cutter {
            pattern: &pattern,
            specials: &specials,
        };
        let spare = Pool::new(2, 1 << 20);
        let out = ChunkReader::open(&path, cutter, block, &spare)?
            .map(|c| c.and_then(|c| c.decode(Utf8Policy::Strict)))
            .map(|t| {
                // Given back, as a consumer does: the next chunk reuses the buffer.
                t.map(|t| {
                    let copy = t.clone();
                    spare.give(t.into_bytes());
                    copy
                })
            })
            .collect();
        std::fs::remove_file(&path).unwrap();
        out
    }

    #[test]
    fn chunks_preserve_text_and_pretokens() {
        let text =
            "Hello there,  world!\n\nIt's 12345 o'clock<|endoftext|>Next doc   here.\n".repeat(50);
        let pattern = Pattern::new("gpt2").unwrap();
        for block in [1, 7, 64, 1000] {
            let chunks = chunks_of(text.as_bytes(), &["<|endoftext|>"], block).unwrap();
            assert!(chunks.len() > 1 || block >= text.len());
            assert_eq!(chunks.concat(), text);
            let whole: Vec<&str> = text
                .split("<|endoftext|>")
                .flat_map(|d| pattern.split(d))
                .collect();
            let parts: Vec<String> = chunks
                .iter()
                .flat_map(|c| {
                    c.split("<|endoftext|>")
                        .flat_map(|d| pattern.split(d))
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .collect();
            assert_eq!(parts, whole, "block {block}");
        }
    }

    #[test]
    fn random_texts_with_overlapping_specials_split_identically() {
        use crate::special::Segment;
        let specials_list = ["<|a|>", "<|a|><|b|>", "|>x", "a b"];
        let specials =
            Specials::new(specials_list.iter().map(|s| s.to_string()).collect()).unwrap();
        let pattern = Pattern::new("gpt2").unwrap();
        let pieces = [
            "a", "b", " ", "\n", "x", "<|a|>", "<|b|>", "|>", "1", "é", "  ",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let split = |text: &str| {
            let mut out = Vec::new();
            specials.split(text, |seg| match seg {
                Segment::Text(t) => out.extend(pattern.split(t).into_iter().map(str::to_string)),
                Segment::Special(i) => out.push(format!("<special {i}>")),
            });
            out
        };
        for _ in 0..300 {
            let n = (next() % 60) as usize;
            let text: String = (0..n)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect();
            let block = 1 + (next() % 12) as usize;
            let chunks = chunks_of(text.as_bytes(), &specials_list, block).unwrap();
            assert_eq!(chunks.concat(), text);
            let parts: Vec<String> = chunks.iter().flat_map(|c| split(c)).collect();
            assert_eq!(parts, split(&text), "{text:?} block {block}");
        }
    }

    #[test]
    fn never_cuts_inside_a_special_token() {
        let text = "ab <|x y|> cd <|x y|> ef ".repeat(20);
        for block in 1..30 {
            for c in chunks_of(text.as_bytes(), &["<|x y|>"], block).unwrap() {
                assert_eq!(c.matches("<|").count(), c.matches("|>").count(), "{c:?}");
            }
        }
    }

    #[test]
    fn invalid_utf8_reports_offset() {
        let mut content = b"good text here ".repeat(10);
        content.extend_from_slice(&[0xff, b'x']);
        match chunks_of(&content, &[], 16) {
            Err(Error::InvalidUtf8 { offset, .. }) => assert_eq!(offset, 150),
            other => panic!("expected InvalidUtf8, got {:?}", other.map(|v| v.len())),
        }
    }
}

//! Encoding whole corpora into a flat file of token ids (the hand-off to training).
//!
//! One reader thread streams the inputs (plain text cut at safe points, or `.jsonl` records;
//! `.gz`/`.xz`/`.zst` decompressed on the fly), the pool's threads encode the pieces, and one
//! writer puts them in the file in input order. A fixed number of pieces may be in flight at
//! once (permits taken by the reader and returned by the writer), so memory is bounded whatever
//! the input size, and a slow piece only stalls the pipeline, never grows it. Compressed inputs
//! are decompressed ahead, up to one per pool thread at once (`ahead`), so a corpus of
//! compressed shards is not bound to one core's decompression. The pieces'
//! buffers go round too (`Shared`), so a long run maps no fresh memory per piece whatever malloc
//! does with freed blocks. Pieces are small on many threads (`piece_bytes`), and the disk writes
//! the file while it is encoded (`writeback`), so that starting, finishing and the final fsync
//! add little to the encoding itself.
//!
//! Documents: a whole text file, the text between two end-of-text separators in it, or one
//! `.jsonl` record. With an end-of-text id, each non-empty document is followed by exactly one
//! end-of-text token: separators in the text become that id, empty documents (two separators in
//! a row, a leading separator) add nothing, and a document that does not end with one gets one.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

use crate::ahead::Inputs;
use crate::corpus::{check_file, ChunkReader, Compression, Cutter, Utf8Policy};
use crate::encode::Tokenizer;
use crate::error::{Error, Result};
use crate::pool::Pool;
use crate::progress::Bar;
use crate::writeback::Writeback;

/// Bytes of input per piece of work, for `total` bytes of input on `threads` threads: about 32
/// pieces per thread, from 128 KiB to 1 MiB. Small pieces let all threads start within a
/// fraction of a millisecond and finish together: with 1 MiB pieces on 16 threads the last
/// worker waited for 16 reads before its first piece, and at the end threads sat idle for up to
/// a piece's ~6 ms while the last ones finished (host, 50 MB: 1,100–1,200 MB/s; 128 KiB:
/// 1,740–1,870). Large pieces cost fewer hand-overs between threads, each a wake-up or two: on
/// two cores 128 KiB pieces were 3–5% slower than 1 MiB, where a large input gets 1 MiB.
fn piece_bytes(total: u64, threads: usize) -> usize {
    const PIECES_PER_THREAD: u64 = 32;
    const MIN: usize = 128 << 10;
    const MAX: usize = 1 << 20;
    let per_piece = total / (threads.max(1) as u64 * PIECES_PER_THREAD);
    usize::try_from(per_piece).unwrap_or(MAX).clamp(MIN, MAX)
}

/// Pieces in flight per thread (plus one): the reader runs this far ahead of the writer, so a
/// piece that takes longer than the others holds up its successors' writing, not the workers.
const IN_FLIGHT_PER_THREAD: usize = 4;

/// Largest buffer kept for reuse, in pieces: the stored ids of a piece of random bytes as
/// uint32 (a token a byte); a text chunk this large held a long stretch with no safe cut point.
const MAX_KEPT_PIECES: usize = 4;

/// What the stages of one run share: the flag that stops them all after an error, and the
/// buffers that go round (see `pool`): text chunks from the workers back to the reader, stored
/// ids from the writer back to the workers.
struct Shared {
    failed: AtomicBool,
    /// The pool's threads.
    threads: usize,
    /// Bytes of input per piece (`piece_bytes`).
    piece: usize,
    text: Pool<u8>,
    stored: Pool<u8>,
}

/// How token ids are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    U16,
    U32,
}

impl Width {
    fn push(self, id: u32, out: &mut Vec<u8>) {
        match self {
            Width::U16 => out.extend_from_slice(&(id as u16).to_le_bytes()),
            Width::U32 => out.extend_from_slice(&id.to_le_bytes()),
        }
    }

    fn bytes(self) -> usize {
        match self {
            Width::U16 => 2,
            Width::U32 => 4,
        }
    }
}

/// What `encode_files` wrote for one input.
#[derive(Debug, Clone, Default)]
pub struct SourceStats {
    pub path: PathBuf,
    /// Size of the input file on disk.
    pub bytes: u64,
    pub tokens: u64,
    pub documents: u64,
}

/// One piece of work: a chunk of a text file or a batch of `.jsonl` lines.
enum Piece {
    Text(crate::corpus::Chunk),
    Records {
        lines: Vec<String>,
        first_line: u64,
        name: String,
    },
}

struct Work {
    seq: u64,
    source: usize,
    /// The last piece of its source: the writer closes the document there.
    last: bool,
    piece: Piece,
}

struct Done {
    seq: u64,
    source: usize,
    last: bool,
    /// Encoded ids as stored bytes; consecutive end-of-text tokens already collapsed.
    data: Result<Vec<u8>>,
    documents: u64,
}

/// Options of `encode_files`.
pub struct EncodeFiles<'a> {
    pub tokenizer: &'a Tokenizer,
    pub eot: Option<u32>,
    pub width: Width,
    pub policy: Utf8Policy,
    pub progress: bool,
}

impl EncodeFiles<'_> {
    /// Encodes `inputs` into `out` (created or truncated, written to disk as it goes and fsynced
    /// at the end) on the threads of `pool`. Returns per-input statistics.
    pub fn run(
        &self,
        inputs: &[PathBuf],
        out: &Path,
        pool: &rayon::ThreadPool,
    ) -> Result<Vec<SourceStats>> {
        let mut stats = Vec::with_capacity(inputs.len());
        for p in inputs {
            stats.push(SourceStats {
                path: p.clone(),
                bytes: check_file(p)?,
                ..Default::default()
            });
        }
        if let Some(max) = self.tokenizer.vocab().n_vocab().checked_sub(1) {
            if self.width == Width::U16 && max > u64::from(u16::MAX) {
                return Err(Error::InvalidArgument(format!(
                    "uint16 cannot hold token id {max}; use dtype uint32"
                )));
            }
        }
        let file = File::create(out).map_err(|e| Error::io(out, e))?;
        let threads = pool.current_num_threads();
        let in_flight = IN_FLIGHT_PER_THREAD * (threads + 1);
        let (work_tx, work_rx) = sync_channel::<Work>(2 * threads);
        let (done_tx, done_rx) = sync_channel::<Done>(2 * threads);
        let (permit_tx, permit_rx) = sync_channel::<()>(in_flight);
        for _ in 0..in_flight {
            let _ = permit_tx.send(());
        }
        let total: u64 = stats.iter().map(|s| s.bytes).sum();
        let piece = piece_bytes(total, threads);
        let shared = Shared {
            failed: AtomicBool::new(false),
            threads,
            piece,
            // Pieces in flight, plus the reader's next chunk and the bytes after its cut.
            text: Pool::new(in_flight + 2, MAX_KEPT_PIECES * piece),
            stored: Pool::new(in_flight, MAX_KEPT_PIECES * piece),
        };
        let work_rx = Mutex::new(work_rx);
        let bar = Bar::new(self.progress, "encode", Some(total), true);
        let written = std::thread::scope(|scope| {
            let writer =
                scope.spawn(|| self.write(file, out, done_rx, &permit_tx, &shared, &mut stats));
            let workers = scope.spawn(|| {
                pool.broadcast(|_| self.work(&work_rx, done_tx.clone(), &shared));
                drop(done_tx);
            });
            let read = self.read(inputs, &work_tx, &permit_rx, &shared, &bar);
            drop(work_tx);
            if read.is_err() {
                shared.failed.store(true, Ordering::Relaxed);
            }
            let _ = workers.join();
            let wrote = writer.join().unwrap_or_else(|_| {
                Err(Error::InvalidArgument(
                    "the token writer thread panicked".into(),
                ))
            });
            read.and(wrote)
        });
        bar.finish();
        written.map(|stats| stats.to_vec())
    }

    /// Streams the inputs as pieces of work, in order.
    fn read(
        &self,
        inputs: &[PathBuf],
        work: &SyncSender<Work>,
        permits: &Receiver<()>,
        shared: &Shared,
        bar: &Bar,
    ) -> Result<()> {
        let mut seq = 0;
        let mut send = |source: usize, last: bool, piece: Piece| -> bool {
            // A permit per piece in flight; the writer returns it once the piece is written.
            if shared.failed.load(Ordering::Relaxed) || permits.recv().is_err() {
                return false;
            }
            let ok = work
                .send(Work {
                    seq,
                    source,
                    last,
                    piece,
                })
                .is_ok();
            seq += 1;
            ok
        };
        let tok = self.tokenizer;
        let cutter = Cutter {
            pattern: tok.pattern(),
            specials: tok.specials(),
        };
        let mut opened = Inputs::new(inputs, shared.threads);
        for (source, path) in inputs.iter().enumerate() {
            let size = check_file(path)?;
            // Progress counts bytes on disk: per piece for plain files, per file otherwise.
            let plain = Compression::of(path) == Compression::None;
            let input = opened.open(source)?;
            if is_jsonl(path) {
                let name = path.display().to_string();
                let mut lines = BufReader::with_capacity(1 << 16, input);
                let mut batch: (Vec<String>, usize, u64) = (Vec::new(), 0, 1);
                let mut line_no = 0u64;
                let mut line = Vec::new();
                loop {
                    line.clear();
                    let n = lines
                        .read_until(b'\n', &mut line)
                        .map_err(|e| Error::io(path, e))?;
                    if n == 0 {
                        break;
                    }
                    line_no += 1;
                    let text = String::from_utf8(std::mem::take(&mut line)).map_err(|e| {
                        Error::InvalidArgument(format!(
                            "{name}:{line_no}: invalid UTF-8 at byte {} of the line",
                            e.utf8_error().valid_up_to()
                        ))
                    })?;
                    batch.1 += text.len();
                    if plain {
                        bar.inc(text.len() as u64);
                    }
                    batch.0.push(text);
                    if batch.1 >= shared.piece {
                        let lines = std::mem::take(&mut batch.0);
                        if !send(
                            source,
                            false,
                            Piece::Records {
                                lines,
                                first_line: batch.2,
                                name: name.clone(),
                            },
                        ) {
                            return Ok(());
                        }
                        batch = (Vec::new(), 0, line_no + 1);
                    }
                }
                let lines = batch.0;
                if !send(
                    source,
                    true,
                    Piece::Records {
                        lines,
                        first_line: batch.2,
                        name,
                    },
                ) {
                    return Ok(());
                }
            } else {
                let mut chunks =
                    ChunkReader::new(path, input, cutter, shared.piece, &shared.text).peekable();
                if chunks.peek().is_none() {
                    let empty = crate::corpus::Chunk {
                        bytes: Vec::new(),
                        offset: 0,
                        source: path.display().to_string().into(),
                    };
                    if !send(source, true, Piece::Text(empty)) {
                        return Ok(());
                    }
                }
                while let Some(chunk) = chunks.next() {
                    let chunk = chunk?;
                    if plain {
                        bar.inc(chunk.bytes.len() as u64);
                    }
                    let last = chunks.peek().is_none();
                    if !send(source, last, Piece::Text(chunk)) {
                        return Ok(());
                    }
                }
            }
            if !plain {
                bar.inc(size);
            }
        }
        Ok(())
    }

    /// A worker: encodes pieces until the reader is done.
    fn work(&self, work: &Mutex<Receiver<Work>>, done: SyncSender<Done>, shared: &Shared) {
        // Reused from piece to piece: a fresh vector grew by doubling and page-faulted its way
        // through every piece.
        let mut ids = Vec::new();
        loop {
            let next = match work.lock() {
                Ok(rx) => rx.recv(),
                Err(_) => return,
            };
            let Ok(w) = next else { return };
            let (data, documents) = if shared.failed.load(Ordering::Relaxed) {
                (Ok(Vec::new()), 0)
            } else {
                match self.encode_piece(w.piece, &mut ids, shared) {
                    Ok((data, docs)) => (Ok(data), docs),
                    Err(e) => (Err(e), 0),
                }
            };
            let reply = Done {
                seq: w.seq,
                source: w.source,
                last: w.last,
                data,
                documents,
            };
            if done.send(reply).is_err() {
                return;
            }
        }
    }

    /// Encodes one piece into stored bytes, collapsing runs of end-of-text tokens.
    fn encode_piece(
        &self,
        piece: Piece,
        ids: &mut Vec<u32>,
        shared: &Shared,
    ) -> Result<(Vec<u8>, u64)> {
        let tok = self.tokenizer;
        ids.clear();
        let mut documents = 0;
        match piece {
            Piece::Text(chunk) => {
                let text = chunk.decode(self.policy)?;
                ids.reserve(text.len() / 3 + 1);
                tok.encode_into(&text, ids);
                shared.text.give(text.into_bytes());
            }
            Piece::Records {
                lines,
                first_line,
                name,
            } => {
                for (i, line) in lines.iter().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let record: Record = serde_json::from_str(line).map_err(|e| {
                        Error::InvalidArgument(format!(
                            "{name}:{}: not a JSON object with a string \"text\" field ({e})",
                            first_line + i as u64
                        ))
                    })?;
                    tok.encode_into(&record.text, ids);
                    if let Some(eot) = self.eot {
                        ids.push(eot);
                    }
                }
            }
        }
        if let Some(eot) = self.eot {
            let mut previous = None;
            ids.retain(|&id| {
                if id == eot {
                    if previous == Some(eot) {
                        return false; // an empty document
                    }
                    documents += 1;
                }
                previous = Some(id);
                true
            });
        }
        let mut data = shared.stored.take();
        data.reserve(ids.len() * self.width.bytes());
        match self.width {
            Width::U16 => data.extend(ids.iter().flat_map(|&id| (id as u16).to_le_bytes())),
            Width::U32 => data.extend(ids.iter().flat_map(|&id| id.to_le_bytes())),
        }
        Ok((data, documents))
    }

    /// The writer: puts finished pieces in the file in input order.
    fn write<'s>(
        &self,
        file: File,
        out: &Path,
        done: Receiver<Done>,
        permits: &SyncSender<()>,
        shared: &Shared,
        stats: &'s mut [SourceStats],
    ) -> Result<&'s [SourceStats]> {
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        let (mut writeback, mut written) = (Writeback::default(), 0u64);
        let mut pending: BTreeMap<u64, Done> = BTreeMap::new();
        let mut next = 0u64;
        let mut first_error: Option<Error> = None;
        let width = self.width.bytes();
        let eot_bytes = self.eot.map(|e| {
            let mut b = Vec::new();
            self.width.push(e, &mut b);
            b
        });
        // Per source: whether anything was written and whether the last token was end-of-text.
        let (mut wrote, mut ends_with_eot) = (false, true);
        for d in done {
            pending.insert(d.seq, d);
            while let Some(d) = pending.remove(&next) {
                next += 1;
                let _ = permits.send(());
                let data = match d.data {
                    Ok(data) => data,
                    Err(e) => {
                        shared.failed.store(true, Ordering::Relaxed);
                        first_error.get_or_insert(e);
                        continue;
                    }
                };
                if first_error.is_some() {
                    continue;
                }
                let mut body = &data[..];
                if let Some(eot) = &eot_bytes {
                    // Drop an end-of-text token that would open the source or follow another.
                    if body.starts_with(eot) && ends_with_eot {
                        body = &body[width..];
                        stats[d.source].documents += d.documents.saturating_sub(1);
                    } else {
                        stats[d.source].documents += d.documents;
                    }
                }
                if !body.is_empty() {
                    ends_with_eot = eot_bytes.as_ref().is_some_and(|e| body.ends_with(e));
                    wrote = true;
                }
                let mut tokens = (body.len() / width) as u64;
                let mut result = writer.write_all(body);
                if d.last {
                    if let Some(eot) = &eot_bytes {
                        if wrote && !ends_with_eot {
                            result = result.and_then(|_| writer.write_all(eot));
                            tokens += 1;
                            stats[d.source].documents += 1;
                        }
                    }
                    (wrote, ends_with_eot) = (false, true);
                }
                stats[d.source].tokens += tokens;
                written += tokens * width as u64;
                // The disk writes what the buffer has passed on while the threads encode.
                writeback.advance(writer.get_ref(), written - writer.buffer().len() as u64);
                if let Err(e) = result {
                    shared.failed.store(true, Ordering::Relaxed);
                    first_error.get_or_insert(Error::io(out, e));
                }
                shared.stored.give(data);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let file = writer
            .into_inner()
            .map_err(|e| Error::io(out, e.into_error()))?;
        // Waits only for what `writeback` has not started yet, and the metadata.
        file.sync_all().map_err(|e| Error::io(out, e))?;
        Ok(stats)
    }
}

#[derive(serde::Deserialize)]
struct Record {
    text: String,
}

/// Whether `path` holds JSON lines (`.jsonl`, possibly compressed: `x.jsonl.gz`).
fn is_jsonl(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    [".jsonl", ".jsonl.gz", ".jsonl.xz", ".jsonl.zst"]
        .iter()
        .any(|s| name.ends_with(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_32_a_thread_within_bounds() {
        assert_eq!(piece_bytes(0, 16), 128 << 10);
        assert_eq!(piece_bytes(50_000_000, 16), 128 << 10);
        assert_eq!(piece_bytes(50_000_000, 2), 781_250);
        assert_eq!(piece_bytes(u64::MAX, 1), 1 << 20);
        assert_eq!(piece_bytes(1 << 40, 0), 1 << 20);
    }
}

//! Decompressing the next compressed inputs while the current one is read.
//!
//! `encode_files` reads its inputs one after the other on one thread, so a compressed corpus was
//! encoded no faster than one core decompresses it (dev VM: xz ~100 MB/s, gzip and zstd ~400 MB/s,
//! against ~500 MB/s encoded per core). Corpora usually come as many compressed shards. So the
//! reader starts each of the next few compressed inputs on a thread of its own (`Ahead::start`),
//! which decompresses it into a short queue of 1 MiB chunks; the reader, reaching that input,
//! reads the queue (`Ahead` is a `Read`). The order of the inputs is untouched, and memory is
//! bounded: `QUEUED` chunks per input started.
//!
//! The thread ends when its input does, when it fails (the error is the reader's next read), or
//! when the reader drops the `Ahead` (its next send fails; the drop waits for it). An
//! end-of-input marker tells a finished input from a thread that died.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use crate::corpus::{open_input, Compression};
use crate::error::Result;
use crate::pool::Pool;

/// Most compressed inputs decompressed at once, each on a thread of its own; the chunks queued
/// for each (`QUEUED`, 4 MiB) bound the memory.
const MAX_DECOMPRESSING: usize = 16;

/// A run's inputs, opened in order as the reader reaches each; the compressed ones among the
/// next `window` are started on threads of their own beforehand (`Ahead`).
pub struct Inputs<'p> {
    paths: &'p [PathBuf],
    window: usize,
    /// Inputs up to here have been considered for starting.
    next: usize,
    started: HashMap<usize, Ahead>,
}

impl<'p> Inputs<'p> {
    /// Up to one input decompressing per thread of the caller's pool (`threads`), at most
    /// `MAX_DECOMPRESSING`.
    pub fn new(paths: &'p [PathBuf], threads: usize) -> Self {
        Inputs {
            paths,
            window: threads.clamp(1, MAX_DECOMPRESSING),
            next: 0,
            started: HashMap::new(),
        }
    }

    /// The reader of input `i` (called for `i = 0, 1, …` in turn): its decompressing thread's
    /// queue if it was started, else the input opened here. An input that fails to open when
    /// started ahead is simply opened again here, so its error comes in order.
    pub fn open(&mut self, i: usize) -> Result<Box<dyn Read + Send>> {
        while self.next < self.paths.len() && self.next < i + self.window {
            let j = self.next;
            self.next += 1;
            if Compression::of(&self.paths[j]) == Compression::None {
                continue; // reading a plain file costs little next to encoding it
            }
            if let Some(ahead) = open_input(&self.paths[j]).ok().and_then(Ahead::start) {
                self.started.insert(j, ahead);
            }
        }
        match self.started.remove(&i) {
            Some(ahead) => Ok(Box::new(ahead)),
            None => open_input(&self.paths[i]),
        }
    }
}

/// Bytes a decompressing thread hands over at a time.
const CHUNK: usize = 1 << 20;
/// Chunks queued per input before its thread waits for the reader.
const QUEUED: usize = 4;

/// What a decompressing thread sends: a chunk, the end of the input, or its error.
enum Message {
    Chunk(Vec<u8>),
    End,
    Failed(io::Error),
}

/// An input being decompressed on its own thread, read as a `Read`.
pub struct Ahead {
    /// `None` only while being dropped.
    rx: Option<Receiver<Message>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Chunk buffers, handed back to the thread once read.
    buffers: Arc<Pool<u8>>,
    current: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl Ahead {
    /// Starts decompressing `input` (an opened decompressing reader) on a new thread. `None`
    /// (and `input` dropped) if no thread could be started; the caller then reads it itself.
    pub fn start(input: Box<dyn Read + Send>) -> Option<Self> {
        let (tx, rx) = sync_channel(QUEUED);
        let buffers = Arc::new(Pool::new(QUEUED + 2, 2 * CHUNK));
        let spare = Arc::clone(&buffers);
        let mut input = input;
        let thread = std::thread::Builder::new()
            .name("lmforge-decompress".into())
            .spawn(move || loop {
                let mut buf = spare.take();
                buf.reserve(CHUNK);
                let message = match (&mut input).take(CHUNK as u64).read_to_end(&mut buf) {
                    Ok(0) => Message::End,
                    Ok(_) => Message::Chunk(buf),
                    Err(e) => Message::Failed(e),
                };
                let last = !matches!(message, Message::Chunk(_));
                if tx.send(message).is_err() || last {
                    return;
                }
            })
            .ok()?;
        Some(Ahead {
            rx: Some(rx),
            thread: Some(thread),
            buffers,
            current: Vec::new(),
            pos: 0,
            ended: false,
        })
    }
}

impl Read for Ahead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.ended || out.is_empty() {
                return Ok(0);
            }
            let Some(rx) = &self.rx else { return Ok(0) };
            match rx.recv() {
                Ok(Message::Chunk(buf)) => {
                    self.buffers.give(std::mem::replace(&mut self.current, buf));
                    self.pos = 0;
                }
                Ok(Message::End) => self.ended = true,
                Ok(Message::Failed(e)) => {
                    self.ended = true;
                    return Err(e);
                }
                Err(_) => {
                    self.ended = true;
                    return Err(io::Error::other(
                        "the decompressing thread stopped before the end of the input",
                    ));
                }
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for Ahead {
    /// Stops the thread (its next send fails once the queue is gone) and waits for it: at most
    /// the chunk it is decompressing.
    fn drop(&mut self) {
        drop(self.rx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader of `n` bytes (`i % 251`) that fails after `fail_at` bytes, if given.
    struct Source {
        pos: usize,
        n: usize,
        fail_at: Option<usize>,
    }

    impl Read for Source {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.fail_at.is_some_and(|f| self.pos >= f) {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "corrupt frame"));
            }
            let end = self
                .n
                .min(self.pos + out.len())
                .min(self.fail_at.unwrap_or(usize::MAX));
            for (i, b) in out[..end - self.pos].iter_mut().enumerate() {
                *b = ((self.pos + i) % 251) as u8;
            }
            let k = end - self.pos;
            self.pos = end;
            Ok(k)
        }
    }

    fn expected(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn reads_every_byte_in_order() {
        for n in [0, 1, CHUNK - 1, CHUNK, 3 * CHUNK + 17] {
            let source = Source {
                pos: 0,
                n,
                fail_at: None,
            };
            let mut ahead = Ahead::start(Box::new(source)).unwrap();
            let mut got = Vec::new();
            ahead.read_to_end(&mut got).unwrap();
            assert_eq!(got, expected(n), "{n} bytes");
            assert_eq!(ahead.read(&mut [0u8; 8]).unwrap(), 0, "stays at the end");
        }
    }

    #[test]
    fn an_error_reaches_the_reader_in_place_of_the_rest() {
        let fail_at = 2 * CHUNK + 5;
        let source = Source {
            pos: 0,
            n: 5 * CHUNK,
            fail_at: Some(fail_at),
        };
        let mut ahead = Ahead::start(Box::new(source)).unwrap();
        let mut got = Vec::new();
        let err = ahead.read_to_end(&mut got).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // whole chunks before the failing one arrive first (the run stops on the error anyway)
        assert_eq!(got, expected(2 * CHUNK));
    }

    #[test]
    fn dropping_it_early_stops_the_thread() {
        // Far more than the queue holds: the thread must end on its failed send, not block.
        let source = Source {
            pos: 0,
            n: 64 * CHUNK,
            fail_at: None,
        };
        let mut ahead = Ahead::start(Box::new(source)).unwrap();
        let mut first = [0u8; 10];
        ahead.read_exact(&mut first).unwrap();
        drop(ahead); // joins the thread: a thread blocked on its full queue would hang here
    }
}

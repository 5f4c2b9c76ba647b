//! Single-thread throughput of the Rust encoder, without Python (for profiling; not a test).
//!
//!     cargo run --release --example encode_throughput -- TOKENIZER.json TEXT [REPEAT] [MODE]
//!
//! TOKENIZER.json is an lmforge tokenizer file (`Tokenizer.save`). MODE (default `all`):
//!
//! - `text`: encodes TEXT one document at a time (documents end after each `<|endoftext|>`, as
//!   in `bench_encode.py`), REPEAT times on one thread; MB/s of the best pass and of the first
//!   (whose pretokens all miss the cache once).
//! - `worst` (or `worst:CASE`): the worst cases of `bench_encode.py` (1 MB of text, one letter,
//!   two letters, random Latin-1, random letters, random lowercase), each on a fresh thread so that no pretoken
//!   cache is carried over; time per byte against the text's.
//! - `miss`: every distinct pretoken of TEXT encoded once (all cache misses), then again.
//! - `scan`, `hash`, `table`: the scanner alone, plus each pretoken's key and hash, plus a load
//!   from a table of the cache's size: where the time goes.
//! - `threads[:1,2,4]`: the parallel encode of the whole TEXT on pools of each size (default
//!   1, 2, 4, 8, 16), REPEAT rounds in turn: its wall time, and an instrumented copy of it that
//!   times the cutting and each piece on its thread, so that the wall time splits into the
//!   threads' mean busy time (the encoding, slower per thread only if the cores slow down when
//!   all are busy), their imbalance (busiest thread minus the mean) and the rest (serial work).
//! - `files:N`: `encode_files` on TEXT (as a file) with N threads, REPEAT times, against the
//!   parallel encode of the same text in memory on the same pool: MB/s and minor page faults
//!   per MB of each; the worker's steps on one thread; and the single-threaded stages alone
//!   (reading and cutting, writing, fsync) in ms per MB, which bound `encode_files` at any
//!   number of workers.
//! - `all`: `text` and `worst`.
//!
//! Deterministic comparisons (instruction counts, simulated cache misses) come from running it
//! under `valgrind --tool=cachegrind` with `text` and two values of REPEAT.

use std::time::Instant;

use lmforge::format;

fn mb_per_s(bytes: usize, seconds: f64) -> f64 {
    bytes as f64 / seconds / 1e6
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(tok_path), Some(text_path)) = (args.get(1), args.get(2)) else {
        return Err("usage: encode_throughput TOKENIZER.json TEXT [REPEAT] [MODE]".into());
    };
    let repeat: usize = args.get(3).map_or(Ok(3), |s| s.parse())?;
    let mode = args.get(4).map_or("all", String::as_str);
    let tok = format::load(std::path::Path::new(tok_path))?;
    let raw = std::fs::read(text_path)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let sep = "<|endoftext|>";
    let docs: Vec<&str> = text.split_inclusive(sep).collect();
    if mode == "all" || mode == "text" {
        let mut best = f64::INFINITY;
        let mut first = 0.0;
        let mut tokens = 0;
        for r in 0..repeat {
            let t0 = Instant::now();
            tokens = 0;
            for d in &docs {
                tokens += tok.encode(d).len();
            }
            let dt = t0.elapsed().as_secs_f64();
            if r == 0 {
                first = dt;
            }
            best = best.min(dt);
        }
        println!(
            "text: {} bytes, {} docs, {} tokens, best {:.4} s, {:.1} MB/s (first pass {:.1} MB/s)",
            text.len(),
            docs.len(),
            tokens,
            best,
            mb_per_s(text.len(), best),
            mb_per_s(text.len(), first)
        );
    }
    if mode == "miss" {
        // Every distinct pretoken once (all cache misses), then again (all hits).
        let mut seen = std::collections::HashSet::new();
        let mut pieces = Vec::new();
        for d in &docs {
            tok.pattern().for_each(d, |p| {
                if seen.insert(p) {
                    pieces.push(p);
                }
            });
        }
        let mut out = Vec::new();
        for pass in ["miss", "hit"] {
            let t0 = Instant::now();
            for p in &pieces {
                out.clear();
                tok.encode_ordinary_into(p, &mut out);
            }
            let dt = t0.elapsed().as_secs_f64();
            println!(
                "{pass}: {} distinct pretokens, {:.1} ns each",
                pieces.len(),
                dt / pieces.len() as f64 * 1e9
            );
        }
    }
    if mode == "hash" || mode == "table" {
        let table = vec![[0u128; 2]; 1 << 17];
        let mut best = f64::INFINITY;
        let mut acc = 0u128;
        for _ in 0..repeat {
            let t0 = Instant::now();
            for d in &docs {
                let b = d.as_bytes();
                let base = d.as_ptr() as usize;
                tok.pattern().for_each(d, |p| {
                    let start = p.as_ptr() as usize - base;
                    if let Some(k) = lmforge::shortkey::ShortKey::new(b, start, start + p.len()) {
                        let slot = k.slot(17);
                        acc = acc.wrapping_add(if mode == "table" {
                            table[slot][0]
                        } else {
                            slot as u128
                        });
                    }
                });
            }
            best = best.min(t0.elapsed().as_secs_f64());
        }
        println!(
            "{mode}: {acc} best {best:.4} s, {:.1} MB/s",
            mb_per_s(text.len(), best)
        );
    }
    if mode == "scan" {
        let mut best = f64::INFINITY;
        let mut pieces = 0;
        for _ in 0..repeat {
            let t0 = Instant::now();
            pieces = 0;
            for d in &docs {
                tok.pattern().for_each(d, |p| pieces += p.len() & 1);
            }
            best = best.min(t0.elapsed().as_secs_f64());
        }
        println!(
            "scan only: {pieces} odd pieces, best {best:.4} s, {:.1} MB/s",
            mb_per_s(text.len(), best)
        );
    }
    if let Some(n) = mode.strip_prefix("files:") {
        files(&tok, &text, text_path, n.parse()?, repeat)?;
    }
    if let Some(list) = mode.strip_prefix("threads") {
        threads(&tok, &text, list.trim_start_matches(':'), repeat)?;
    }
    if mode == "all" || mode.starts_with("worst") {
        let n = 1_000_000;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let letters = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut head = text.len().min(n);
        while !text.is_char_boundary(head) {
            head -= 1;
        }
        let cases: Vec<(&str, String)> = vec![
            ("text", text[..head].to_string()),
            ("one_char", "a".repeat(n)),
            ("two_chars", "ab".repeat(n / 2)),
            (
                "random_latin1",
                (0..n).map(|_| char::from(next() as u8)).collect(),
            ),
            (
                "random_letters",
                (0..n)
                    .map(|_| char::from(letters[(next() % 52) as usize]))
                    .collect(),
            ),
            (
                "random_lower",
                (0..n)
                    .map(|_| char::from(letters[(next() % 26) as usize]))
                    .collect(),
            ),
        ];
        let mut base = 0.0;
        let only = mode.strip_prefix("worst:");
        for (name, s) in cases
            .iter()
            .filter(|(n, _)| only.map_or(true, |o| o == *n || *n == "text"))
        {
            let mut best = f64::INFINITY;
            for _ in 0..repeat {
                let dt = std::thread::scope(|sc| {
                    sc.spawn(|| {
                        let t0 = Instant::now();
                        let ids = tok.encode(s);
                        (t0.elapsed().as_secs_f64(), ids.len())
                    })
                    .join()
                })
                .map_err(|_| "encoder thread panicked")?;
                best = best.min(dt.0);
            }
            let per_byte = best / s.len() as f64;
            if *name == "text" {
                base = per_byte;
            }
            println!(
                "{name:>15}: {:.1} MB/s, {:.2} ns/byte, {:.2}x text",
                mb_per_s(s.len(), best),
                per_byte * 1e9,
                per_byte / base
            );
        }
    }
    Ok(())
}

/// Minor page faults of the process so far.
fn minor_faults() -> u64 {
    // SAFETY: `getrusage` only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_minflt as u64
}

/// Runs `f`, returning its result, its seconds and the minor page faults taken meanwhile.
fn measured<T>(f: impl FnOnce() -> T) -> (T, f64, u64) {
    let faults = minor_faults();
    let t0 = Instant::now();
    let out = f();
    let seconds = t0.elapsed().as_secs_f64();
    (out, seconds, minor_faults() - faults)
}

/// The `files:N` mode (see the module's documentation).
fn files(
    tok: &lmforge::Tokenizer,
    text: &str,
    text_path: &str,
    n: usize,
    repeat: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mb = text.len() as f64 / 1e6;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(n).build()?;
    let job = lmforge::files::EncodeFiles {
        tokenizer: tok,
        eot: tok.special_id("<|endoftext|>").ok(),
        width: lmforge::files::Width::U16,
        policy: lmforge::corpus::Utf8Policy::Strict,
        progress: false,
    };
    let out = std::env::temp_dir().join("encode_throughput_files.bin");
    let inputs = [std::path::PathBuf::from(text_path)];
    // Per call: the first round (a cold process: fresh pool threads, empty pretoken caches,
    // nothing in malloc's free lists, as for the command line) and the best of the rounds.
    let mut files_rounds = Vec::new();
    let mut mem_rounds = Vec::new();
    for _ in 0..repeat {
        // A new file each time, as the Python wrapper writes (truncating the last round's
        // fsynced file took milliseconds of the call).
        let _ = std::fs::remove_file(&out);
        let (ran, dt, faults) = measured(|| job.run(&inputs, &out, &pool));
        ran?;
        files_rounds.push((dt, faults));
        let (e, dt, faults) = measured(|| {
            pool.install(|| tok.encode_parallel(text, lmforge::encode::Allowed::All, &[]))
        });
        drop(e?);
        mem_rounds.push((dt, faults));
    }
    let _ = std::fs::remove_file(&out);
    worker_steps(tok, text)?;
    serial_stages(tok, text, text_path, repeat)?;
    for (name, rounds) in [
        ("encode_files", &files_rounds),
        ("encode_parallel", &mem_rounds),
    ] {
        let (first, first_faults) = rounds[0];
        let best = rounds.iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
        let fewest = rounds.iter().map(|r| r.1).min().unwrap_or(0);
        println!(
            "{n} threads: {name:>15} first call {:.1} MB/s, {:.0} faults/MB; best {:.1} MB/s, fewest {:.1} faults/MB (of {repeat})",
            mb / first,
            first_faults as f64 / mb,
            mb / best,
            fewest as f64 / mb,
        );
    }
    Ok(())
}

/// The worker's steps alone, on one thread, on the same 1 MB pieces: validate, encode, convert
/// to stored bytes.
fn worker_steps(tok: &lmforge::Tokenizer, text: &str) -> Result<(), Box<dyn std::error::Error>> {
    let pieces = tok.cut_into(text, 1 << 20);
    let (mut validate, mut encode, mut convert) = (0.0f64, 0.0f64, 0.0f64);
    let mut ids = Vec::new();
    // Twice, timing the second pass: this thread's pretoken cache is cold on the first.
    for pass in 0..2 {
        for p in &pieces {
            let raw = p.as_bytes().to_vec();
            let t0 = Instant::now();
            let s = String::from_utf8(raw)?;
            let t1 = Instant::now();
            ids.clear();
            ids.reserve(s.len() / 3 + 1);
            tok.encode_into(&s, &mut ids);
            let t2 = Instant::now();
            let data: Vec<u8> = ids
                .iter()
                .flat_map(|&id| (id as u16).to_le_bytes())
                .collect();
            let t3 = Instant::now();
            std::hint::black_box(data);
            if pass == 1 {
                validate += (t1 - t0).as_secs_f64();
                encode += (t2 - t1).as_secs_f64();
                convert += (t3 - t2).as_secs_f64();
            }
        }
    }
    println!(
        "one thread, the worker's steps: validate {:.1} ms, encode {:.1} ms, convert {:.1} ms",
        validate * 1e3,
        encode * 1e3,
        convert * 1e3
    );
    Ok(())
}

/// The single-threaded stages of `encode_files` alone, best of `repeat`, in ms per MB of text:
/// the reader (reading the file and cutting it into 1 MB chunks; and the cutting alone, on the
/// text in memory), the writer's writes of the stored ids and the final fsync.
fn serial_stages(
    tok: &lmforge::Tokenizer,
    text: &str,
    text_path: &str,
    repeat: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;
    let mb = text.len() as f64 / 1e6;
    let cutter = lmforge::corpus::Cutter {
        pattern: tok.pattern(),
        specials: tok.specials(),
    };
    let path = std::path::Path::new(text_path);
    let stored: Vec<Vec<u8>> = tok
        .cut_into(text, 1 << 20)
        .iter()
        .map(|p| {
            tok.encode(p)
                .iter()
                .flat_map(|&id| (id as u16).to_le_bytes())
                .collect()
        })
        .collect();
    let out = std::env::temp_dir().join("encode_throughput_stages.bin");
    let mut best = [(f64::INFINITY, u64::MAX); 4];
    let mut keep = |k: usize, dt: f64, faults: u64| {
        best[k] = (best[k].0.min(dt), best[k].1.min(faults));
    };
    for _ in 0..repeat {
        // Each chunk's buffer given back at once, as the workers of `encode_files` do.
        let spare = lmforge::pool::Pool::new(4, 4 << 20);
        let (read, dt, faults) = measured(|| -> lmforge::Result<usize> {
            let mut n = 0;
            for chunk in lmforge::corpus::ChunkReader::open(path, cutter, 1 << 20, &spare)? {
                let bytes = chunk?.bytes;
                n += bytes.len();
                spare.give(bytes);
            }
            Ok(n)
        });
        read?;
        keep(0, dt, faults);
        let (_, dt, faults) = measured(|| tok.cut_into(text, 1 << 20).len());
        keep(1, dt, faults);
        let file = std::fs::File::create(&out)?;
        let (wrote, dt, faults) = measured(|| -> std::io::Result<std::fs::File> {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
            for s in &stored {
                w.write_all(s)?;
            }
            w.into_inner().map_err(|e| e.into_error())
        });
        let file = wrote?;
        keep(2, dt, faults);
        let (synced, dt, faults) = measured(|| file.sync_all());
        synced?;
        keep(3, dt, faults);
    }
    let _ = std::fs::remove_file(&out);
    for (name, (dt, faults)) in ["read+cut", "cut alone", "write", "fsync"].iter().zip(best) {
        println!(
            "serial stage {name:>9}: {:.3} ms/MB of text, {:.1} faults/MB (best of {repeat})",
            dt * 1e3 / mb,
            faults as f64 / mb
        );
    }
    Ok(())
}

/// The `threads` mode (see the module's documentation).
fn threads(
    tok: &lmforge::Tokenizer,
    text: &str,
    list: &str,
    repeat: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    use rayon::prelude::*;
    let counts: Vec<usize> = if list.is_empty() {
        vec![1, 2, 4, 8, 16]
    } else {
        list.split(',').map(str::parse).collect::<Result<_, _>>()?
    };
    let pools = counts
        .iter()
        .map(|&n| rayon::ThreadPoolBuilder::new().num_threads(n).build())
        .collect::<Result<Vec<_>, _>>()?;
    // Per thread count: best wall of the real call; and of the instrumented copy, the sums over
    // rounds of wall, cutting, mean busy and busiest thread.
    let mut best = vec![f64::INFINITY; counts.len()];
    let mut sums = vec![[0.0f64; 4]; counts.len()];
    let mut assembly = vec![[0.0f64; 2]; counts.len()];
    for round in 0..repeat + 1 {
        for (k, (&n, pool)) in counts.iter().zip(&pools).enumerate() {
            let t0 = Instant::now();
            let encoded =
                pool.install(|| tok.encode_parallel(text, lmforge::encode::Allowed::All, &[]))?;
            let wall = t0.elapsed().as_secs_f64();
            // The Python binding then copies the pieces into one fresh array: time that, into
            // 4 KiB pages and into pages advised huge.
            let assemble_small = pool.install(|| assemble(&encoded, false));
            let assemble_huge = pool.install(|| assemble(&encoded, true));
            drop(encoded);
            let t0 = Instant::now();
            let chunk = lmforge::encode::piece_bytes(text.len(), n);
            let pieces = tok.cut_into(text, chunk);
            let cut = t0.elapsed().as_secs_f64();
            let busy: Vec<(usize, f64)> = pool.install(|| {
                pieces
                    .par_iter()
                    .map(|p| {
                        let t = Instant::now();
                        let mut ids = Vec::with_capacity(p.len() / 3 + 1);
                        tok.encode_into(p, &mut ids);
                        (
                            rayon::current_thread_index().unwrap_or(0),
                            t.elapsed().as_secs_f64(),
                        )
                    })
                    .collect()
            });
            let copy_wall = t0.elapsed().as_secs_f64();
            let mut per_thread = vec![0.0; n];
            for (i, dt) in busy {
                per_thread[i % n] += dt;
            }
            let mean = per_thread.iter().sum::<f64>() / n as f64;
            let max = per_thread.iter().copied().fold(0.0, f64::max);
            if round > 0 {
                best[k] = best[k].min(wall);
                assembly[k][0] += assemble_small / repeat as f64;
                assembly[k][1] += assemble_huge / repeat as f64;
                for (acc, v) in sums[k].iter_mut().zip([copy_wall, cut, mean, max]) {
                    *acc += v / repeat as f64;
                }
            }
        }
    }
    for (k, &n) in counts.iter().enumerate() {
        println!(
            "{n:>7} threads: copying the ids into a fresh array {:.1} ms (4 KiB pages), {:.1} ms (huge pages advised)",
            assembly[k][0] * 1e3,
            assembly[k][1] * 1e3
        );
    }
    let base_busy = sums[0][2] * counts[0] as f64;
    println!(
        "threads  MB/s(best)  eff   | instrumented, mean of rounds (ms): wall  cut  busy  imbalance  rest  busy x threads / 1-thread busy"
    );
    for (k, &n) in counts.iter().enumerate() {
        let [wall, cut, mean, max] = sums[k];
        let rate = mb_per_s(text.len(), best[k]);
        println!(
            "{n:>7}  {rate:>10.1}  {:.2}  | {:>6.1} {:>5.1} {:>6.1} {:>9.1} {:>5.1}  {:.2}",
            rate / (n as f64 * mb_per_s(text.len(), best[0]) / counts[0] as f64),
            wall * 1e3,
            cut * 1e3,
            mean * 1e3,
            (max - mean) * 1e3,
            (wall - max - cut) * 1e3,
            mean * n as f64 / base_busy,
        );
    }
    Ok(())
}

/// Copies the ids in order into a fresh array on the current pool, as the Python binding does
/// (`Encoded::write_le`); with `huge`, huge pages are advised for it first. Returns the seconds
/// taken.
fn assemble(encoded: &lmforge::encode::Encoded, huge: bool) -> f64 {
    let t0 = Instant::now();
    let total = encoded.len();
    let mut out: Vec<[u8; 4]> = Vec::with_capacity(total);
    if huge {
        lmforge::hugepages::advise(out.as_mut_ptr().cast(), total * 4);
    }
    encoded.write_le(&mut out.spare_capacity_mut()[..total]);
    // SAFETY: `write_le` wrote all `total` elements.
    unsafe { out.set_len(total) };
    let seconds = t0.elapsed().as_secs_f64();
    drop(out);
    seconds
}

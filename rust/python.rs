//! PyO3 bindings: `lmforge._bpe`. The only file that touches Python.
//!
//! Every O(n) call releases the GIL (`Python::detach`) and runs its parallel work on a rayon
//! pool of the requested size. Core errors map to Python exceptions in `to_py_err`, in one place.
//! The public face is the Python wrapper `lmforge.Tokenizer`; this module stays private.

use std::path::PathBuf;
use std::sync::OnceLock;

use pyo3::exceptions::{
    PyFileNotFoundError, PyIsADirectoryError, PyKeyboardInterrupt, PyOSError, PyTypeError,
    PyValueError,
};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList};
use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::corpus::Utf8Policy;
use crate::encode::{Allowed, StreamEncoder, Tokenizer};
use crate::error::Error;
use crate::files::{EncodeFiles, Width};
use crate::format;
use crate::parallel::thread_pool;
use crate::pretokenize::Pattern;
use crate::progress::Bar;
use crate::special::Specials;
use crate::train::{train_from_counts, PretokenCounts, Trained};
use crate::vocab::Vocab;

pyo3::create_exception!(
    lmforge,
    TokenizerFileError,
    PyValueError,
    "A tokenizer file is truncated, corrupt or of an unsupported version."
);
pyo3::create_exception!(
    lmforge,
    InvalidUtf8Error,
    PyValueError,
    "Input bytes are not UTF-8; the message names the source and the byte offset."
);
pyo3::create_exception!(
    lmforge,
    EmptyCorpusError,
    PyValueError,
    "The training input holds no text."
);

thread_local! {
    /// The ids of a single-text `encode`, kept between calls: a call then writes into memory
    /// already mapped and warm instead of a fresh allocation that grows (and copies) as it fills.
    static ID_BUFFER: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// How many ids ahead `id_list` prefetches the int objects.
const PREFETCH_IDS: usize = 16;

/// Most ids `ID_BUFFER` keeps between calls (4 MiB).
const ID_BUFFER_KEEP: usize = 1 << 20;

/// Texts up to this long go into an array on the calling thread, not the pool: one piece of
/// the parallel encode (`encode::piece_bytes`' smallest) takes ~0.1 ms, the round trip to the
/// pool tens of microseconds.
const SERIAL_BYTES: usize = 64 << 10;

/// Runs `f` with this thread's id buffer, empty.
fn with_id_buffer<R>(f: impl FnOnce(&mut Vec<u32>) -> R) -> R {
    let mut buf = ID_BUFFER.take();
    buf.clear();
    let result = f(&mut buf);
    buf.clear();
    buf.shrink_to(ID_BUFFER_KEEP);
    ID_BUFFER.set(buf);
    result
}

/// A new bytearray of `len` bytes whose contents are not initialised (no zero-filling pass
/// over a buffer that the caller overwrites anyway). The caller must write every byte before
/// the object reaches Python code.
fn uninit_bytearray(py: Python<'_>, len: usize) -> PyResult<Bound<'_, PyByteArray>> {
    let len = pyo3::ffi::Py_ssize_t::try_from(len)
        .map_err(|_| PyValueError::new_err(format!("output of {len} bytes is too large")))?;
    // SAFETY: a null source asks CPython for an uninitialised buffer of `len` bytes; the
    // returned reference is owned (or null with an exception set, which becomes the error).
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            pyo3::ffi::PyByteArray_FromStringAndSize(std::ptr::null(), len),
        )
        .map(|o| o.cast_into_unchecked())
    }
}

/// A new bytearray of `n` little-endian `u32` ids, advised huge pages when large, written by
/// `fill`, which must write every element: the array reaches Python only afterwards.
fn ids_bytearray<'py>(
    py: Python<'py>,
    n: usize,
    fill: impl FnOnce(&mut [std::mem::MaybeUninit<[u8; 4]>]),
) -> PyResult<Bound<'py, PyByteArray>> {
    let out = uninit_bytearray(py, n * 4)?;
    crate::hugepages::advise(out.data(), n * 4);
    // SAFETY: the new bytearray's buffer holds `n * 4` bytes (`MaybeUninit<[u8; 4]>` has
    // alignment 1); it is not visible to Python yet, so nothing else touches it while `fill`
    // writes it.
    let dst = unsafe {
        std::slice::from_raw_parts_mut(out.data().cast::<std::mem::MaybeUninit<[u8; 4]>>(), n)
    };
    fill(dst);
    Ok(out)
}

fn to_py_err(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::FileNotFound(_) => PyFileNotFoundError::new_err(msg),
        Error::IsADirectory(_) => PyIsADirectoryError::new_err(msg),
        Error::Io { .. } => PyOSError::new_err(msg),
        Error::InvalidUtf8 { .. } => InvalidUtf8Error::new_err(msg),
        Error::CorruptTokenizer { .. } => TokenizerFileError::new_err(msg),
        Error::EmptyCorpus(_) => EmptyCorpusError::new_err(msg),
        Error::InvalidArgument(_)
        | Error::InvalidPattern { .. }
        | Error::DisallowedSpecial { .. } => PyValueError::new_err(msg),
        Error::Interrupted => PyKeyboardInterrupt::new_err(msg),
    }
}

/// Pretokenizes `text` with a built-in pattern name or a regex (for tests and inspection).
#[pyfunction]
fn pretokenize(py: Python<'_>, text: &str, pattern: &str) -> PyResult<Vec<String>> {
    let pattern = Pattern::new(pattern).map_err(to_py_err)?;
    Ok(py.detach(|| {
        pattern
            .split(text)
            .into_iter()
            .map(str::to_string)
            .collect()
    }))
}

/// What a training run saw and did, returned beside the tokenizer.
fn train_info<'py>(
    py: Python<'py>,
    t: &Trained,
    counts: (u64, u64, u64),
    seconds: (f64, f64),
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("seconds_count", seconds.0)?;
    d.set_item("seconds_merge", seconds.1)?;
    d.set_item("bytes", counts.0)?;
    d.set_item("pretokens", counts.1)?;
    d.set_item("unique_pretokens", counts.2)?;
    d.set_item("merges", t.vocab.merges().len())?;
    d.set_item("exhausted", t.exhausted)?;
    Ok(d)
}

/// What both training entry points need: validated options and a thread pool.
struct TrainSetup {
    vocab_size: u64,
    special_tokens: Vec<String>,
    specials: Specials,
    pattern: Pattern,
    pool: std::sync::Arc<rayon::ThreadPool>,
    progress: bool,
    started: std::time::Instant,
}

impl TrainSetup {
    fn new(
        vocab_size: u64,
        special_tokens: Vec<String>,
        pattern: &str,
        num_threads: Option<usize>,
        progress: bool,
    ) -> PyResult<Self> {
        let pattern = Pattern::new(pattern).map_err(to_py_err)?;
        let specials = Specials::new(special_tokens.clone()).map_err(to_py_err)?;
        crate::train::merges_for(vocab_size, special_tokens.len()).map_err(to_py_err)?;
        let pool = thread_pool(num_threads).map_err(to_py_err)?;
        Ok(TrainSetup {
            vocab_size,
            special_tokens,
            specials,
            pattern,
            pool,
            progress,
            started: std::time::Instant::now(),
        })
    }

    /// Runs the merge phase with the GIL released, polling Ctrl-C between batches of merges.
    fn finish<'py>(
        self,
        py: Python<'py>,
        counts: PretokenCounts,
    ) -> PyResult<(CoreTokenizer, Bound<'py, PyDict>)> {
        let stats = (counts.bytes, counts.total(), counts.len() as u64);
        let counted = std::time::Instant::now();
        let mut interrupt: Option<PyErr> = None;
        let trained = py.detach(|| {
            let mut check = || {
                Python::attach(|py| py.check_signals()).map_err(|e| {
                    interrupt = Some(e);
                    Error::Interrupted
                })
            };
            let specials = &self.special_tokens;
            train_from_counts(
                counts,
                self.vocab_size,
                specials,
                &self.pool,
                self.progress,
                &mut check,
            )
        });
        if let Some(e) = interrupt {
            return Err(e);
        }
        let trained = trained.map_err(to_py_err)?;
        let seconds = (
            (counted - self.started).as_secs_f64(),
            counted.elapsed().as_secs_f64(),
        );
        let info = train_info(py, &trained, stats, seconds)?;
        let inner = Tokenizer::new(trained.vocab, self.pattern).map_err(to_py_err)?;
        Ok((CoreTokenizer::wrap(inner), info))
    }
}

fn allowed_of(allowed: &Option<Vec<String>>) -> Allowed<'_> {
    match allowed {
        None => Allowed::All,
        Some(names) => Allowed::Only(names),
    }
}

/// The Rust tokenizer behind `lmforge.Tokenizer`.
#[pyclass(module = "lmforge._bpe", frozen)]
struct CoreTokenizer {
    inner: Tokenizer,
    /// One Python int per token id, made on first use: a list of ids is then filled with new
    /// references to them instead of a fresh int object per token.
    ints: OnceLock<Vec<Py<PyAny>>>,
}

/// Vocabularies up to this size get the shared int objects.
const SHARED_INTS: u64 = 1 << 22;

impl CoreTokenizer {
    fn wrap(inner: Tokenizer) -> Self {
        CoreTokenizer {
            inner,
            ints: OnceLock::new(),
        }
    }

    /// `encode_to_bytes` of a short text, on the calling thread: handing it to the pool and
    /// waiting for it would cost two thread wake-ups, more than encoding it (one 8 KB document
    /// of stories: 96 MB/s that way against 227 MB/s for `encode`, dev VM).
    fn encode_to_bytes_here<'py>(
        &self,
        py: Python<'py>,
        text: &str,
        allowed: &Option<Vec<String>>,
        disallowed: &[String],
    ) -> PyResult<Bound<'py, PyByteArray>> {
        with_id_buffer(|ids| {
            py.detach(|| {
                self.inner
                    .encode_with(text, allowed_of(allowed), disallowed, ids)
            })
            .map_err(to_py_err)?;
            ids_bytearray(py, ids.len(), |dst| crate::encode::write_le(dst, ids))
        })
    }

    /// The ids of each of `texts`, encoded in parallel on `pool` with the GIL released.
    fn encode_each(
        &self,
        py: Python<'_>,
        pool: &rayon::ThreadPool,
        texts: &[PyBackedStr],
        allowed: &Option<Vec<String>>,
        disallowed: &[String],
    ) -> PyResult<Vec<Vec<u32>>> {
        let allowed = allowed_of(allowed);
        py.detach(|| {
            pool.install(|| {
                texts
                    .par_iter()
                    .map(|t| {
                        let mut out = Vec::with_capacity(t.len() / 3 + 1);
                        self.inner.encode_with(t, allowed, disallowed, &mut out)?;
                        Ok(out)
                    })
                    .collect::<crate::Result<Vec<Vec<u32>>>>()
            })
        })
        .map_err(to_py_err)
    }

    /// `ids` as a Python list.
    fn id_list<'py>(&self, py: Python<'py>, ids: &[u32]) -> PyResult<Bound<'py, PyList>> {
        let n = self.inner.vocab().n_vocab();
        if n > SHARED_INTS {
            return PyList::new(py, ids);
        }
        let ints = self.ints.get_or_init(|| {
            (0..n as u32)
                .map(|i| i.into_pyobject(py).map(|o| o.unbind().into_any()))
                .collect::<Result<Vec<_>, _>>()
                .unwrap_or_default()
        });
        if ints.len() as u64 != n {
            return PyList::new(py, ids);
        }
        // Every id an encoder produces is below n_vocab. Taking a reference writes to the int
        // object, which for a rare id is far away in memory: fetch those a few ids ahead.
        let ahead = |k: usize| {
            ids.get(k + PREFETCH_IDS)
                .and_then(|&i| ints.get(i as usize))
        };
        PyList::new(
            py,
            ids.iter().enumerate().map(|(k, &i)| {
                if let Some(obj) = ahead(k) {
                    crate::prefetch::prefetch(obj.as_ptr());
                }
                ints[i as usize].clone_ref(py)
            }),
        )
    }
}

#[pymethods]
impl CoreTokenizer {
    #[new]
    #[pyo3(signature = (vocab, merges, special_tokens, pattern))]
    fn new(
        vocab: FxHashMap<u32, Vec<u8>>,
        merges: Vec<(Vec<u8>, Vec<u8>)>,
        special_tokens: Vec<(String, u32)>,
        pattern: &str,
    ) -> PyResult<Self> {
        let vocab = Vocab::new(vocab, merges, special_tokens).map_err(to_py_err)?;
        let pattern = Pattern::new(pattern).map_err(to_py_err)?;
        let inner = Tokenizer::new(vocab, pattern).map_err(to_py_err)?;
        Ok(CoreTokenizer::wrap(inner))
    }

    /// Trains on text files, streamed in chunks. Returns the tokenizer and a dict of statistics.
    #[staticmethod]
    #[pyo3(signature = (paths, vocab_size, special_tokens, pattern, num_threads, progress, errors))]
    #[allow(clippy::too_many_arguments)]
    fn train_files<'py>(
        py: Python<'py>,
        paths: Vec<PathBuf>,
        vocab_size: u64,
        special_tokens: Vec<String>,
        pattern: &str,
        num_threads: Option<usize>,
        progress: bool,
        errors: &str,
    ) -> PyResult<(Self, Bound<'py, PyDict>)> {
        let policy = Utf8Policy::parse(errors).map_err(to_py_err)?;
        let setup = TrainSetup::new(vocab_size, special_tokens, pattern, num_threads, progress)?;
        let counts = py
            .detach(|| {
                let mut counts = PretokenCounts::new();
                let (pat, specials) = (&setup.pattern, &setup.specials);
                setup
                    .pool
                    .install(|| counts.add_files(&paths, pat, specials, policy, progress))?;
                if counts.is_empty() {
                    let names: Vec<String> =
                        paths.iter().map(|p| p.display().to_string()).collect();
                    return Err(Error::EmptyCorpus(names.join(", ")));
                }
                Ok(counts)
            })
            .map_err(to_py_err)?;
        setup.finish(py, counts)
    }

    /// Trains on an iterable of `str`, each item a separate document.
    #[staticmethod]
    #[pyo3(signature = (texts, vocab_size, special_tokens, pattern, num_threads, progress, batch_bytes = 16 << 20))]
    #[allow(clippy::too_many_arguments)]
    fn train_texts<'py>(
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        vocab_size: u64,
        special_tokens: Vec<String>,
        pattern: &str,
        num_threads: Option<usize>,
        progress: bool,
        batch_bytes: usize,
    ) -> PyResult<(Self, Bound<'py, PyDict>)> {
        let setup = TrainSetup::new(vocab_size, special_tokens, pattern, num_threads, progress)?;
        let bar = Bar::new(progress, "pretokenize", None, true);
        let mut counts = PretokenCounts::new();
        let mut batch: Vec<String> = Vec::new();
        let mut size = 0usize;
        let flush = |batch: &mut Vec<String>, counts: &mut PretokenCounts| {
            let (pat, specials) = (&setup.pattern, &setup.specials);
            py.detach(|| {
                setup
                    .pool
                    .install(|| counts.add_texts(batch, pat, specials))
            });
            bar.inc(batch.iter().map(|s| s.len() as u64).sum());
            batch.clear();
        };
        for (i, item) in texts.try_iter()?.enumerate() {
            let item = item?;
            let text: String = item.extract().map_err(|_| {
                PyTypeError::new_err(format!(
                    "training texts must be str; item {i} is {}",
                    item.get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ))
            })?;
            size += text.len();
            batch.push(text);
            if size >= batch_bytes {
                flush(&mut batch, &mut counts);
                size = 0;
            }
        }
        flush(&mut batch, &mut counts);
        bar.finish();
        if counts.is_empty() {
            return Err(to_py_err(Error::EmptyCorpus(format!(
                "the given texts ({} bytes)",
                counts.bytes
            ))));
        }
        setup.finish(py, counts)
    }

    /// Encodes `text`. `allowed`: the special tokens that become their ids (None: all);
    /// `disallowed`: special tokens whose presence is an error.
    #[pyo3(signature = (text, allowed = None, disallowed = Vec::new()))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        text: &str,
        allowed: Option<Vec<String>>,
        disallowed: Vec<String>,
    ) -> PyResult<Bound<'py, PyList>> {
        with_id_buffer(|out| {
            py.detach(|| {
                self.inner
                    .encode_with(text, allowed_of(&allowed), &disallowed, out)
            })
            .map_err(to_py_err)?;
            self.id_list(py, out)
        })
    }

    /// Encodes many texts in parallel on `num_threads` threads.
    #[pyo3(signature = (texts, allowed = None, disallowed = Vec::new(), num_threads = None))]
    fn encode_batch<'py>(
        &self,
        py: Python<'py>,
        // borrowed from the Python strings (their UTF-8), not copied
        texts: Vec<PyBackedStr>,
        allowed: Option<Vec<String>>,
        disallowed: Vec<String>,
        num_threads: Option<usize>,
    ) -> PyResult<Vec<Bound<'py, PyList>>> {
        let pool = thread_pool(num_threads).map_err(to_py_err)?;
        self.encode_each(py, &pool, &texts, &allowed, &disallowed)?
            .iter()
            .map(|ids| self.id_list(py, ids))
            .collect()
    }

    /// Encodes many texts in parallel into one run of little-endian uint32 ids and the
    /// little-endian int64 offsets of each text's ids in it (`len(texts) + 1` of them, from 0),
    /// for `np.frombuffer`: no Python int or per-text object is made.
    #[pyo3(signature = (texts, allowed = None, disallowed = Vec::new(), num_threads = None))]
    fn encode_batch_to_bytes<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<PyBackedStr>,
        allowed: Option<Vec<String>>,
        disallowed: Vec<String>,
        num_threads: Option<usize>,
    ) -> PyResult<(Bound<'py, PyByteArray>, Bound<'py, PyByteArray>)> {
        let pool = thread_pool(num_threads).map_err(to_py_err)?;
        let per_text = self.encode_each(py, &pool, &texts, &allowed, &disallowed)?;
        let mut offsets = Vec::with_capacity(8 * (per_text.len() + 1));
        let mut total = 0usize;
        offsets.extend_from_slice(&0i64.to_le_bytes());
        for ids in &per_text {
            total += ids.len();
            // a length in memory fits an i64
            offsets.extend_from_slice(&(total as i64).to_le_bytes());
        }
        let parts: Vec<&[u32]> = per_text.iter().map(Vec::as_slice).collect();
        let ids = ids_bytearray(py, total, |dst| {
            py.detach(|| pool.install(|| crate::encode::write_parts_le(dst, &parts)));
        })?;
        drop(parts);
        py.detach(move || drop(per_text));
        Ok((ids, PyByteArray::new(py, &offsets)))
    }

    /// Encodes `text` in parallel into little-endian uint32 bytes (for `np.frombuffer`).
    #[pyo3(signature = (text, allowed = None, disallowed = Vec::new(), num_threads = None))]
    fn encode_to_bytes<'py>(
        &self,
        py: Python<'py>,
        text: &str,
        allowed: Option<Vec<String>>,
        disallowed: Vec<String>,
        num_threads: Option<usize>,
    ) -> PyResult<Bound<'py, PyByteArray>> {
        if text.len() <= SERIAL_BYTES {
            // the thread count is checked all the same, so that a bad one fails for any text
            crate::parallel::requested_threads(num_threads).map_err(to_py_err)?;
            return self.encode_to_bytes_here(py, text, &allowed, &disallowed);
        }
        let pool = thread_pool(num_threads).map_err(to_py_err)?;
        let encoded = py
            .detach(|| {
                pool.install(|| {
                    let allowed = allowed_of(&allowed);
                    self.inner.encode_parallel(text, allowed, &disallowed)
                })
            })
            .map_err(to_py_err)?;
        let out = ids_bytearray(py, encoded.len(), |dst| {
            py.detach(|| pool.install(|| encoded.write_le(dst)));
        })?;
        // The buffers go back to be reused (and any beyond the kept capacity are unmapped)
        // without the GIL.
        py.detach(move || drop(encoded));
        Ok(out)
    }

    /// Encodes files into `out` (uint16 when `width` is 2, uint32 when 4), appending `eot` after
    /// every document when given. Returns one dict per input: path, bytes, tokens, documents.
    #[pyo3(signature = (paths, out, eot, width, num_threads, progress, errors))]
    #[allow(clippy::too_many_arguments)]
    fn encode_files<'py>(
        &self,
        py: Python<'py>,
        paths: Vec<PathBuf>,
        out: PathBuf,
        eot: Option<u32>,
        width: u8,
        num_threads: Option<usize>,
        progress: bool,
        errors: &str,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let width = match width {
            2 => Width::U16,
            4 => Width::U32,
            _ => {
                return Err(PyValueError::new_err(
                    "width must be 2 (uint16) or 4 (uint32)",
                ))
            }
        };
        let job = EncodeFiles {
            tokenizer: &self.inner,
            eot,
            width,
            policy: Utf8Policy::parse(errors).map_err(to_py_err)?,
            progress,
        };
        let pool = thread_pool(num_threads).map_err(to_py_err)?;
        let stats = py
            .detach(|| job.run(&paths, &out, &pool))
            .map_err(to_py_err)?;
        stats
            .iter()
            .map(|s| {
                let d = PyDict::new(py);
                d.set_item("path", s.path.display().to_string())?;
                d.set_item("bytes", s.bytes)?;
                d.set_item("tokens", s.tokens)?;
                d.set_item("documents", s.documents)?;
                Ok(d)
            })
            .collect()
    }

    /// A hash of the tokenizer's canonical content ("sha256:...").
    #[getter]
    fn fingerprint(&self, py: Python<'_>) -> String {
        py.detach(|| format::fingerprint(&self.inner))
    }

    /// Encodes `text` treating special-token strings as plain text.
    fn encode_ordinary<'py>(&self, py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyList>> {
        with_id_buffer(|out| {
            py.detach(|| self.inner.encode_ordinary_into(text, out));
            self.id_list(py, out)
        })
    }

    /// The bytes of `ids` concatenated.
    fn decode_bytes<'py>(&self, py: Python<'py>, ids: Vec<u32>) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = py
            .detach(|| self.inner.decode_bytes(&ids))
            .map_err(to_py_err)?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// `{id: bytes}` for the ordinary tokens (special tokens are in `special_tokens`).
    fn vocab<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let mut ids: Vec<(&u32, &Vec<u8>)> = self.inner.vocab().tokens().iter().collect();
        ids.sort_unstable_by_key(|(id, _)| **id);
        for (id, b) in ids {
            d.set_item(id, PyBytes::new(py, b))?;
        }
        Ok(d)
    }

    /// The merges as `(left, right)` byte strings, in rank order.
    fn merges<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let v = self.inner.vocab();
        let bytes = |id: u32| PyBytes::new(py, v.token_bytes(id).unwrap_or_default());
        let pairs = v.merges().iter().map(|&(a, b)| (bytes(a), bytes(b)));
        PyList::new(py, pairs)
    }

    /// The special tokens and their ids, in the order given.
    fn special_tokens(&self) -> Vec<(String, u32)> {
        self.inner.vocab().specials().to_vec()
    }

    /// The pattern's built-in name, or its regex.
    #[getter]
    fn pattern(&self) -> String {
        self.inner.pattern().name().to_string()
    }

    /// The regex the pattern is equivalent to.
    #[getter]
    fn pattern_regex(&self) -> String {
        self.inner.pattern().regex_source().to_string()
    }

    /// Largest id + 1.
    #[getter]
    fn n_vocab(&self) -> u64 {
        self.inner.vocab().n_vocab()
    }

    fn __len__(&self) -> usize {
        self.inner.vocab().len()
    }

    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| format::save(&self.inner, &path))
            .map_err(to_py_err)
    }

    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = py.detach(|| format::load(&path)).map_err(to_py_err)?;
        Ok(CoreTokenizer::wrap(inner))
    }

    fn to_json(&self, py: Python<'_>) -> String {
        py.detach(|| format::to_json(&self.inner))
    }

    #[staticmethod]
    #[pyo3(signature = (text, origin = "<string>"))]
    fn from_json(py: Python<'_>, text: &str, origin: &str) -> PyResult<Self> {
        let inner = py
            .detach(|| format::from_json(text, origin))
            .map_err(to_py_err)?;
        Ok(CoreTokenizer::wrap(inner))
    }
}

/// Encodes pieces of a stream as one text, holding only the unfinished tail.
#[pyclass(module = "lmforge._bpe")]
struct CoreStreamEncoder {
    inner: StreamEncoder,
}

#[pymethods]
impl CoreStreamEncoder {
    #[new]
    fn new() -> Self {
        CoreStreamEncoder {
            inner: StreamEncoder::new(),
        }
    }

    fn feed(&mut self, py: Python<'_>, tok: &CoreTokenizer, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        py.detach(|| self.inner.feed(&tok.inner, text, &mut out));
        out
    }

    fn finish(&mut self, py: Python<'_>, tok: &CoreTokenizer) -> Vec<u32> {
        let mut out = Vec::new();
        py.detach(|| self.inner.finish(&tok.inner, &mut out));
        out
    }
}

#[pymodule]
fn _bpe(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<CoreTokenizer>()?;
    m.add_class::<CoreStreamEncoder>()?;
    m.add_function(wrap_pyfunction!(pretokenize, m)?)?;
    m.add("TokenizerFileError", py.get_type::<TokenizerFileError>())?;
    m.add("InvalidUtf8Error", py.get_type::<InvalidUtf8Error>())?;
    m.add("EmptyCorpusError", py.get_type::<EmptyCorpusError>())?;
    m.add("GPT2_PATTERN", crate::pretokenize::GPT2_PATTERN)?;
    m.add("CL100K_PATTERN", crate::pretokenize::CL100K_PATTERN)?;
    m.add("O200K_PATTERN", crate::pretokenize::O200K_PATTERN)?;
    Ok(())
}

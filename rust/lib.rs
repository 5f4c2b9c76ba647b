//! lmforge's Rust core: byte-level BPE for language-model training.
//!
//! The core has no Python in it. `pretokenize` splits text with hand-written scanners,
//! `special` finds special tokens, `corpus` streams files in independently pretokenizable
//! chunks, `train` learns merges, `vocab` holds them, `encode` applies them and `format` saves
//! and loads a tokenizer. The `python` feature adds the PyO3 bindings (`lmforge._bpe`) in
//! `python.rs`, the only file that touches Python.

pub mod ahead;
pub mod corpus;
pub mod encode;
pub mod error;
pub mod files;
pub mod flat;
pub mod format;
pub mod hugepages;
pub mod parallel;
pub mod pool;
pub mod prefetch;
pub mod pretokenize;
pub mod progress;
pub mod shortkey;
pub mod special;
pub mod train;
pub mod vocab;
pub mod writeback;

#[cfg(feature = "python")]
mod python;

pub use encode::{StreamEncoder, Tokenizer};
pub use error::{Error, Result};
pub use pretokenize::Pattern;
pub use vocab::Vocab;

//! lmforge's Rust core: byte-level BPE for language-model training.
//!
//! The core has no Python in it. `pretokenize` splits text with hand-written scanners, `train`
//! learns merges from a corpus, `encode` applies them, `vocab` and `format` hold and persist a
//! tokenizer. The `python` feature adds the PyO3 bindings (`lmforge._bpe`) in `python.rs`.

pub mod error;
pub mod pretokenize;

pub use error::{Error, Result};
pub use pretokenize::Pattern;

//! Progress bars on stderr for long phases (read, count, merge), drawn from Rust so they keep
//! moving while the GIL is released. A disabled bar is free: every call is a no-op.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// One phase's bar; cheap to clone and share between threads.
#[derive(Clone)]
pub struct Bar(Option<ProgressBar>);

impl Bar {
    /// A bar counting `unit`s up to `total` (a spinner when `total` is unknown).
    pub fn new(enabled: bool, phase: &str, total: Option<u64>, bytes: bool) -> Self {
        if !enabled {
            return Bar(None);
        }
        let template = match (total, bytes) {
            (Some(_), true) => "{msg:>10} [{bar:32}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
            (Some(_), false) => "{msg:>10} [{bar:32}] {human_pos}/{human_len} eta {eta}",
            (None, true) => "{msg:>10} {spinner} {binary_bytes} {binary_bytes_per_sec}",
            (None, false) => "{msg:>10} {spinner} {human_pos}",
        };
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = match total {
            Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
        };
        bar.set_style(style);
        bar.set_message(phase.to_string());
        Bar(Some(bar))
    }

    /// A bar that draws nothing.
    pub fn hidden() -> Self {
        Bar(None)
    }

    #[inline]
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }

    /// Draws the final state and ends the line, so the next phase's bar starts below it.
    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish();
            if !b.is_hidden() {
                eprintln!();
            }
        }
    }
}

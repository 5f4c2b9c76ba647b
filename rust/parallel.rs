//! Thread pools for the core's parallel work. Each call builds its own pool of the requested
//! size, so `num_threads` is honoured exactly and no global state leaks between callers.

use rayon::ThreadPool;

use crate::error::{Error, Result};

/// Environment variable that sets the default thread count.
pub const THREADS_ENV: &str = "LMFORGE_NUM_THREADS";

/// The thread count to use: `requested`, else `$LMFORGE_NUM_THREADS`, else all cores.
pub fn resolve_threads(requested: Option<usize>) -> Result<usize> {
    if let Some(n) = requested {
        if n == 0 {
            return Err(Error::InvalidArgument(
                "num_threads must be at least 1 (or None for all cores)".into(),
            ));
        }
        return Ok(n);
    }
    if let Ok(v) = std::env::var(THREADS_ENV) {
        return match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Error::InvalidArgument(format!(
                "{THREADS_ENV}={v:?} is not a positive integer"
            ))),
        };
    }
    Ok(std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// A rayon pool with `resolve_threads(requested)` threads.
pub fn thread_pool(requested: Option<usize>) -> Result<ThreadPool> {
    let n = resolve_threads(requested)?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("lmforge-{i}"))
        .build()
        .map_err(|e| Error::InvalidArgument(format!("cannot start {n} threads: {e}")))
}

//! Thread pools for the core's parallel work.
//!
//! Pools are kept per thread count and reused across calls, so per-thread caches (the encoder's
//! pretoken cache) stay warm and short calls pay no thread start-up. A pool belongs to the
//! process that made it: after `fork` (e.g. in a PyTorch DataLoader worker) the child has none
//! of the parent's threads, so a pool made before the fork is abandoned and a fresh one built,
//! rather than waiting forever on threads that do not exist.

use std::sync::{Arc, Mutex};

use rayon::ThreadPool;
use rustc_hash::FxHashMap;

use crate::error::{Error, Result};

/// Environment variable that sets the default thread count.
pub const THREADS_ENV: &str = "LMFORGE_NUM_THREADS";

/// The thread count to use: `requested`, else `$LMFORGE_NUM_THREADS`, else all cores.
pub fn resolve_threads(requested: Option<usize>) -> Result<usize> {
    Ok(requested_threads(requested)?
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())))
}

/// The thread count asked for, checked: `requested`, else `$LMFORGE_NUM_THREADS`; `None` for
/// all cores. It does not ask the system for its core count, which on Linux reads the cgroup
/// files (tens of microseconds, more than encoding a short text).
pub fn requested_threads(requested: Option<usize>) -> Result<Option<usize>> {
    if let Some(n) = requested {
        if n == 0 {
            return Err(Error::InvalidArgument(
                "num_threads must be at least 1 (or None for all cores)".into(),
            ));
        }
        return Ok(Some(n));
    }
    match std::env::var(THREADS_ENV) {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(Error::InvalidArgument(format!(
                "{THREADS_ENV}={v:?} is not a positive integer"
            ))),
        },
        Err(_) => Ok(None),
    }
}

type Pools = FxHashMap<usize, Arc<ThreadPool>>;

/// Pools of this process, by size, and the process id they belong to.
static POOLS: Mutex<Option<(u32, Pools)>> = Mutex::new(None);

/// A rayon pool with `resolve_threads(requested)` threads, reused across calls.
pub fn thread_pool(requested: Option<usize>) -> Result<Arc<ThreadPool>> {
    let n = resolve_threads(requested)?;
    let pid = std::process::id();
    let mut guard = POOLS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if guard.as_ref().is_some_and(|(owner, _)| *owner != pid) {
        // Forked: the parent's worker threads do not exist here. Leak the old pools (dropping
        // them would try to join those threads) and start afresh.
        if let Some((_, old)) = guard.take() {
            std::mem::forget(old);
        }
    }
    let (_, pools) = guard.get_or_insert_with(|| (pid, Pools::default()));
    if let Some(pool) = pools.get(&n) {
        return Ok(pool.clone());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("lmforge-{i}"))
        .build()
        .map_err(|e| Error::InvalidArgument(format!("cannot start {n} threads: {e}")))?;
    let pool = Arc::new(pool);
    pools.insert(n, pool.clone());
    Ok(pool)
}

//! Process-wide settings for training on small shared CPUs, chosen once here for every
//! binary that links the library (the CLI, the tests, the benches).
//!
//! Measured on this project's 2-core VMs (benches/distill.rs; numbers in README):
//! candle allocates a fresh buffer for every op's output. glibc's malloc serves large
//! ones with mmap and returns them with munmap, so each training step page-faults in
//! memory it has just freed (1.46M minor faults, 8 s of system time against 24 s user,
//! in the distill bench's student row). mimalloc keeps freed memory for reuse, but by
//! default still hands it back to the OS 10 ms after a free, and with transparent huge
//! pages the kernel then zeroes 2 MiB pages again on the next touch: about 90k faults
//! and a second of system time per student step, against 29 faults and 0.15 s with
//! purging off. [`init`] turns it off.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Call first thing in `main`: keeps freed memory in the process for reuse.
pub fn init() {
    #[cfg(feature = "mimalloc")]
    keep_freed_memory();
    one_thread_pool();
}

/// candle runs its own element-wise ops (the gradient sums of backward passes, mostly)
/// on a pool of its own whose idle workers spin for a while before they sleep; this
/// crate's kernels and the BLAS products run on rayon's pool. Two pools on the same
/// cores take turns: after each candle op its worker spins while rayon's threads
/// multiply (8% of the quick start's samples were that spin, in `perf`). With
/// `CANDLE_NUM_THREADS=1` candle's ops run on the calling thread, and the SST-2 epoch
/// of benches/distill.rs took 21.4 s instead of 23.0-24.2 s on 2 cores; the student,
/// teacher and inference rows did not change beyond their noise. Set the variable to
/// choose otherwise.
fn one_thread_pool() {
    if let Some(threads) = candle_threads(std::env::var_os("CANDLE_NUM_THREADS")) {
        // Before any candle op (its pool reads the variable once, when first used) and
        // before `main` starts other threads.
        std::env::set_var("CANDLE_NUM_THREADS", threads);
    }
}

/// What to set `CANDLE_NUM_THREADS` to, given its value: one thread unless the user
/// chose.
fn candle_threads(chosen: Option<std::ffi::OsString>) -> Option<&'static str> {
    chosen.is_none().then_some("1")
}

/// mimalloc's `mi_option_purge_delay` (its `mi_option_e` enum, mimalloc.h): -1 never
/// returns freed memory to the OS. A training process reaches its peak in the first
/// step and stays there, so nothing is gained by returning it.
#[cfg(feature = "mimalloc")]
fn keep_freed_memory() {
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets one process-wide allocator option; no pointers are involved, and
    // mimalloc reads options atomically.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

#[cfg(test)]
mod tests {
    /// candle's own pool gets one thread unless the user chose a number. (The decision
    /// alone: setting the variable here would race with the other tests' threads.)
    #[test]
    fn candle_runs_on_the_calling_thread_unless_told_otherwise() {
        assert_eq!(super::candle_threads(None), Some("1"));
        assert_eq!(super::candle_threads(Some("4".into())), None);
    }
}

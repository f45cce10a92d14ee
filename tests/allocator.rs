//! The allocator setting of `runtime::init`. How many pages a thread faults in depends
//! on what every other thread of the process allocates and frees (mimalloc hands the
//! heaps of exited threads to live ones), so the measurement must be alone in its
//! process: the test runs this test binary again, filtered to itself, and reads the
//! child's verdict. Run beside the others (in the library's unit tests) it failed
//! about one run in eight, beside the corpus tests' reader threads.
#![cfg(all(target_os = "linux", feature = "mimalloc"))]

use std::process::Command;

/// Set in the child process, which measures instead of spawning.
const ALONE: &str = "CANDLE_DISTILL_ALLOCATOR_TEST_ALONE";

/// Minor page faults of the calling thread so far (field 10 of its stat line).
fn thread_minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc/thread-self/stat");
    let rest = stat.rsplit_once(')').expect("a stat line").1;
    let field = rest.split_whitespace().nth(7).expect("a minflt field");
    field.parse().expect("a number of faults")
}

/// Allocates, touches and frees 64 MiB, then waits past mimalloc's default purge delay;
/// returns the faults the touching took.
fn churn() -> u64 {
    let before = thread_minor_faults();
    let mut buffer = vec![0u8; 64 << 20];
    for page in buffer.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&buffer);
    drop(buffer);
    let faults = thread_minor_faults() - before;
    // Past the purge delay, other work allocates (as the next ops of a step do): that
    // is when mimalloc purges what it holds for longer than the delay.
    std::thread::sleep(std::time::Duration::from_millis(300));
    for size in (1..200).map(|i| i << 14) {
        std::hint::black_box(vec![1u8; size]);
    }
    faults
}

#[test]
fn freed_memory_is_reused_without_page_faults() {
    if std::env::var_os(ALONE).is_some() {
        return measure();
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let name = "allocator::freed_memory_is_reused_without_page_faults";
    let out = Command::new(exe)
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(ALONE, "1")
        .output()
        .expect("running the test binary again");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the measurement, alone in its process, failed:\n{stdout}\n{stderr}"
    );
}

fn measure() {
    candle_distill::runtime::init();
    let first = churn();
    let again: Vec<u64> = (0..4).map(|_| churn()).collect();
    // Purged memory faults in again as fresh pages (16,384 of 4 KiB, or 32 huge pages);
    // kept memory does not fault at all.
    assert!(first > 0, "touching fresh memory must fault");
    assert!(
        again.iter().all(|&f| f * 4 < first),
        "freed memory faulted in again: first {first}, then {again:?}"
    );
}

//! The allocator of tpc-xfer and of everything built on its library (tests, benches), so
//! that they all measure and run the same memory behaviour.

/// Chunk buffers are 4 MiB, allocated and freed per chunk. glibc returns such blocks to the
/// kernel, so every chunk's buffer page-faulted in again: measured on 2 GiB, `check` spent
/// 4.6 s in the kernel against mimalloc's 0.7 s, a local copy 8.6 s against 2.2 s, and a
/// push took 280,000 page faults against 17,000. (mallopt thresholds did not hold under
/// glommio's aligned allocations.) mimalloc keeps freed blocks mapped for reuse.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (the same index in mimalloc v2 and v3; the
/// Rust bindings do not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// By default mimalloc hands memory freed for 10 ms back to the kernel, and a push's 4 MiB
/// chunk buffers are freed and allocated again at about that pace: measured on a 2 GiB
/// push, 57,700 page faults with the default against 430 with purging off. A command
/// that runs one job keeps at most its in-flight data (flow-control windows and buffers
/// of ranges in flight), so keeping freed memory until it exits costs little. Call once,
/// first thing.
pub fn keep_freed_memory() {
    set_purge_delay(-1);
}

/// How long memory stays free before a long-lived process hands it back to the kernel
/// ([`give_back_when_idle`]): a second outlasts the reuse of chunk buffers by far.
const PURGE_DELAY_IDLE_MS: std::os::raw::c_long = 1000;

/// For a process that outlives its jobs (`serve`): memory free for a second goes back to
/// the kernel, and [`trim`] gives back what an idle thread holds. Kept for good, a burst's
/// peak stays (PERFORMANCE.md, "A server gives its memory back once idle"). With
/// purging off (a negative delay), mimalloc marks each segment it creates as never purged,
/// so a later [`trim`] could not give it back: call this before the threads that should
/// give memory back allocate.
pub fn give_back_when_idle() {
    set_purge_delay(PURGE_DELAY_IDLE_MS);
}

fn set_purge_delay(ms: std::os::raw::c_long) {
    // SAFETY: sets an allocator option; valid at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms) };
}

/// Hands the memory the calling thread's heap holds free back to the kernel at once (and
/// what threads that ended left behind). Purges are otherwise made only when the thread
/// that owns the memory allocates or frees again, so an idle thread keeps its peak: for a
/// long-lived thread gone idle after a burst (a server's shard, `remote::server`).
pub fn trim() {
    // SAFETY: collects the calling thread's heap; valid at any time.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

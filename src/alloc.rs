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
/// push, 57,700 page faults with the default against 430 with purging off. The process
/// keeps at most its in-flight data (flow-control windows and buffers of ranges in
/// flight), so keeping freed memory costs little. Call once, first thing.
pub fn keep_freed_memory() {
    // SAFETY: sets an allocator option; valid at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

//! cargo-fuzz entry for `tpc_xfer_fuzz::relpath` (the body is shared with tests/fuzz_replay.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tpc_xfer_fuzz::relpath(data));

//! cargo-fuzz entry for `tpc_xfer_fuzz::mux` (the body is shared with tests/fuzz_replay.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tpc_xfer_fuzz::mux(data));

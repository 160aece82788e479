//! Sets `cfg(uring)` when the io_uring driver is both asked for (feature `uring`) and
//! possible (a Linux target), so the code has one name for that condition and a
//! default build for macOS or Windows simply leaves the driver out.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(uring)");
    let feature = std::env::var_os("CARGO_FEATURE_URING").is_some();
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    if feature && linux {
        println!("cargo::rustc-cfg=uring");
    }
}

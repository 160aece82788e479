//! tpc-delayline's command line refuses bad settings before it touches any namespace.
//! (Being a test of this package also makes `cargo test --workspace` build the binary,
//! which tpc-xfer's tests/wan.rs runs.)

use std::process::Command;

fn delayline(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tpc-delayline"))
        .args(args)
        .output()
        .expect("tpc-delayline runs")
}

#[test]
fn bad_settings_are_refused_with_a_reason() {
    for (args, reason) in [
        (
            &["--loss-pct", "200"][..],
            "--loss-pct 200 is not within 0..100",
        ),
        (
            &["--delay-ms=-1"][..],
            "--delay-ms -1 is not within 0..10000",
        ),
        (&["--rate-mbit", "0"][..], "--rate-mbit must be within"),
        (&["--mtu", "100"][..], "--mtu 100 is not within 576..65535"),
        (
            &["--ns-a", "same", "--ns-b", "same"][..],
            "--ns-a and --ns-b must differ",
        ),
    ] {
        let out = delayline(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(reason), "{args:?}: {err}");
    }
}

#[test]
fn help_documents_every_setting() {
    let out = delayline(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--delay-ms",
        "--loss-pct",
        "--rate-mbit",
        "--queue-bytes",
        "--mtu",
        "--seed",
        "--stats",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

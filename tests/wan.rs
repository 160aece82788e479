//! Remote transfers across an emulated WAN: two namespaces joined by tools/delayline with
//! delay, random loss and a rate limit. The edge-case tree must arrive intact through a
//! path that loses packets (the loss-tolerant controller runs here: the RTT is above its
//! long-path threshold), text must travel compressed there, and the emulator must remove
//! its namespaces when stopped. Needs
//! root; CI runs as root, and elsewhere the test says it was skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;

const CLIENT_IP: &str = "10.78.0.1";
const SERVER_IP: &str = "10.78.0.2";

/// The emulator, built beside tpc-xfer by `cargo test --workspace`.
fn delayline() -> PathBuf {
    let path = Path::new(bin()).with_file_name("tpc-delayline");
    assert!(
        path.exists(),
        "{} is missing: run the tests with --workspace (tools/test.sh does)",
        path.display()
    );
    path
}

/// A running delay line; stopped (SIGTERM) and waited for when dropped.
struct Wan {
    child: Child,
    stopped: bool,
    client_ns: String,
    server_ns: String,
}

impl Wan {
    fn start(s: &Scratch, delay_ms: &str, loss_pct: &str, rate_mbit: &str) -> Wan {
        let id = std::process::id();
        let (client_ns, server_ns) = (format!("tpcx-wc-{id}"), format!("tpcx-ws-{id}"));
        let stats = s.path("delayline.json");
        let child = Command::new(delayline())
            .args(["--ns-a", &client_ns, "--ns-b", &server_ns])
            .args(["--addr-a", CLIENT_IP, "--addr-b", SERVER_IP])
            .args(["--delay-ms", delay_ms, "--loss-pct", loss_pct])
            .args(["--rate-mbit", rate_mbit, "--stats"])
            .arg(&stats)
            .spawn()
            .expect("tpc-delayline starts");
        let mut wan = Wan {
            child,
            stopped: false,
            client_ns,
            server_ns,
        };
        let until = Instant::now() + Duration::from_secs(20);
        while !stats.exists() {
            if let Some(status) = wan.child.try_wait().unwrap() {
                wan.stopped = true;
                panic!("tpc-delayline exited at start: {status}");
            }
            assert!(Instant::now() < until, "tpc-delayline did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        wan
    }

    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        // SAFETY: kill with the pid of our child, not yet waited for (so not reused).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        self.stop();
    }
}

fn namespace_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

#[test]
fn a_tree_crosses_a_lossy_delayed_path_intact() {
    if !is_root() {
        eprintln!("skipped: network namespaces need root (CI runs as root)");
        return;
    }
    if !Path::new("/dev/net/tun").exists() {
        eprintln!("skipped: no /dev/net/tun (the emulator needs TUN devices)");
        return;
    }
    let s = Scratch::new("wan");
    let src = s.path("src");
    edge_case_tree(&src, 6 * CHUNK_BYTES + 5, 200);
    let (cs, ss) = keys(&s);
    // 10 ms RTT (above the controller's 5 ms long-path threshold), 2% loss each way.
    let mut wan = Wan::start(&s, "5", "2", "400");
    let server = Server::start_in(
        Some(&wan.server_ns),
        &s.path("root"),
        &ss,
        &format!("{SERVER_IP}:0"),
    );
    let ns = Some(wan.client_ns.as_str());

    let summary = push_and_pull_back(ns, &cs, &src, &server, &s.path("root"), &s.path("back"));
    // The path really lost packets, and QUIC recovered every one of them.
    let lost: u64 = summary["path_per_shard"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["lost_packets"].as_u64().unwrap())
        .sum();
    assert!(lost > 0, "no packet was lost on a 2% loss path: {summary}");

    // Text on a path slower than zstd travels compressed (`--compress auto`), and intact.
    let text = s.path("text");
    std::fs::create_dir_all(&text).unwrap();
    text_file(&text.join("log.txt"), 2 * CHUNK_BYTES as usize);
    let out = copy_in(ns, &cs, with_slash(&text), server.url("text"), &["--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let summary = json(&out);
    assert!(
        summary["compressed_chunks"].as_u64().unwrap() >= 1,
        "{summary}"
    );
    assert_identical(&text, &s.path("root/text"));

    drop(server);
    let (client_ns, server_ns) = (wan.client_ns.clone(), wan.server_ns.clone());
    assert!(namespace_exists(&client_ns) && namespace_exists(&server_ns));
    wan.stop();
    assert!(
        !namespace_exists(&client_ns) && !namespace_exists(&server_ns),
        "tpc-delayline left its namespaces behind"
    );
}

//! Remote transfers across a real link: two network namespaces joined by a veth pair, at
//! MTU 1500 and at MTU 9000. The edge-case tree is pushed and pulled back, and the path
//! MTU discovery must reach the link's MTU, no more. Needs root (`ip netns`); CI runs as
//! root, and elsewhere the tests say they were skipped.

mod common;

use std::process::Command;

use common::*;

/// Two namespaces joined by a veth pair with `mtu`, removed when dropped.
struct Link {
    server_ns: String,
    client_ns: String,
}

/// The server side's address on the link.
const SERVER_IP: &str = "10.77.0.1";
const CLIENT_IP: &str = "10.77.0.2";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Link {
    fn new(tag: &str, mtu: u32) -> Link {
        let id = format!("{tag}-{}", std::process::id());
        let link = Link {
            server_ns: format!("tpcx-s-{id}"),
            client_ns: format!("tpcx-c-{id}"),
        };
        let (s, c) = (&link.server_ns, &link.client_ns);
        ip(&["netns", "add", s]);
        ip(&["netns", "add", c]);
        // Created straight inside the namespaces: the root namespace never sees the names.
        ip(&[
            "link", "add", "v0", "netns", s, "type", "veth", "peer", "name", "v0", "netns", c,
        ]);
        let mtu = mtu.to_string();
        for (ns, addr) in [(s, SERVER_IP), (c, CLIENT_IP)] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", "v0", "mtu", &mtu, "up"]);
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "v0"]);
        }
        link
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and with it the pair.
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn can_run() -> bool {
    if !is_root() {
        eprintln!("skipped: network namespaces need root (CI runs as root)");
        return false;
    }
    true
}

/// Push the edge-case tree from the client namespace to the server namespace, pull it back,
/// and check both copies and the UDP payload size path MTU discovery settled on (measured:
/// exactly 1472 and 8972 bytes).
fn tree_over_veth(tag: &str, mtu: u32) {
    if !can_run() {
        return;
    }
    let s = Scratch::new(&format!("netns-{tag}"));
    let src = s.path("src");
    edge_case_tree(&src, 12 * CHUNK_BYTES + 5, 400);
    let (cs, ss) = keys(&s);
    let link = Link::new(tag, mtu);
    let server = Server::start_in(
        Some(&link.server_ns),
        &s.path("root"),
        &ss,
        &format!("{SERVER_IP}:0"),
    );
    let ns = Some(link.client_ns.as_str());

    let summary = push_and_pull_back(ns, &cs, &src, &server, &s.path("root"), &s.path("back"));
    // IPv4 (20) and UDP (8) headers come off the link MTU.
    let payload_max = u64::from(mtu) - 28;
    let payloads = summary["udp_payload_per_shard"].as_array().unwrap();
    assert_eq!(payloads.len() as u64, summary["shards"].as_u64().unwrap());
    for p in payloads {
        let p = p.as_u64().unwrap();
        // At most the link allows, and within the last step of the search below it.
        assert!(
            p <= payload_max && p + 20 >= payload_max,
            "UDP payload {p}, link allows {payload_max}: {summary}"
        );
    }
    drop(server);
}

#[test]
fn push_and_pull_over_a_veth_link_at_mtu_1500() {
    tree_over_veth("1500", 1500);
}

#[test]
fn push_and_pull_over_a_veth_link_at_mtu_9000() {
    tree_over_veth("9000", 9000);
}

/// Whether `nft` is here (tools/test.sh installs Debian's nftables).
fn has_nft() -> bool {
    let found = Command::new("nft").arg("--version").output().is_ok();
    if !found {
        eprintln!("skipped: nft not found (tools/test.sh installs nftables)");
    }
    found
}

/// With UDP dropped between the namespaces (an nftables rule in the server's namespace),
/// `--transport auto` falls back to TCP, says so on stderr and in `--json`, and moves the
/// edge-case tree both ways; with UDP open it uses QUIC.
#[test]
fn auto_falls_back_to_tcp_where_udp_is_blocked() {
    if !can_run() || !has_nft() {
        return;
    }
    let s = Scratch::new("netns-udp-blocked");
    let src = s.path("src");
    edge_case_tree(&src, 2 * CHUNK_BYTES + 5, 100);
    let (cs, ss) = keys(&s);
    let link = Link::new("udp", 1500);
    let server = Server::start_in(
        Some(&link.server_ns),
        &s.path("root"),
        &ss,
        &format!("{SERVER_IP}:0"),
    );
    let ns = Some(link.client_ns.as_str());
    let auto = ["--accept-new", "--json", "--transport", "auto"];

    let out = copy_in(ns, &cs, with_slash(&src), server.url("open"), &auto);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json(&out)["transport"], "quic", "{}", stderr(&out));
    assert!(!stderr(&out).contains("using TCP"), "{}", stderr(&out));

    let rules = "add table inet tpcx\n\
                 add chain inet tpcx input { type filter hook input priority 0; }\n\
                 add rule inet tpcx input meta l4proto udp drop\n";
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &link.server_ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft runs");
    use std::io::Write;
    nft.stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(nft.wait().unwrap().success(), "nft refused the rules");

    let started = std::time::Instant::now();
    let out = copy_in(ns, &cs, with_slash(&src), server.url("tree"), &auto);
    let took = started.elapsed();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("using TCP"), "{}", stderr(&out));
    let summary = json(&out);
    assert_eq!(summary["transport"], "tcp", "{summary}");
    assert_identical(&src, &s.path("root").join("tree"));
    eprintln!("push over the TCP fallback took {took:?}: {summary}");

    let back = s.path("back");
    let out = copy_in(
        ns,
        &cs,
        server.url("tree/"),
        &back,
        &["--transport", "auto"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("using TCP"), "{}", stderr(&out));
    assert_identical(&src, &back);
    drop(server);
}

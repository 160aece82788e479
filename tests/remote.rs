//! End-to-end tests of remote transfers through the real binary: a real `tpc-xfer serve`
//! on loopback, real QUIC, real keys; push and pull of the edge-case tree, and the
//! authentication and reachability errors.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn push_and_pull_the_edge_case_tree_on_loopback() {
    let s = Scratch::new("remote-tree");
    let src = s.path("src");
    edge_case_tree(&src, 80 * CHUNK_BYTES + 3, 2000);
    let (cs, ss) = keys(&s);
    let server = Server::start(&s.path("root"), &ss);

    let out = copy(
        &cs,
        with_slash(&src),
        server.url("tree"),
        &["--accept-new", "--json"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let summary = json(&out);
    assert_identical(&src, &s.path("root/tree"));
    // Every client shard carried traffic, over its own connection.
    let per_shard = summary["bytes_per_shard"].as_array().unwrap();
    assert!(
        per_shard.iter().all(|b| b.as_u64().unwrap() > 0),
        "{summary}"
    );

    // A rerun sends nothing.
    let out = copy(&cs, with_slash(&src), server.url("tree"), &["--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json(&out)["files_copied"], 0);

    // Pull it back into a fresh directory.
    let back = s.path("back");
    let out = copy(&cs, server.url("tree/"), &back, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_identical(&src, &back);
    let out = tpc(&[os("check"), src.clone().into(), back.into()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn unknown_changed_and_unauthorized_keys_are_refused() {
    let s = Scratch::new("remote-auth");
    let src = s.path("f");
    random_file(&src, 1000, 1);
    let (cs, ss) = keys(&s);
    let server = Server::start(&s.path("root"), &ss);

    // Unknown server, no --accept-new: exit 9, nothing written.
    let out = copy(&cs, &src, server.url("f"), &[]);
    assert_eq!(code(&out), 9, "{}", stderr(&out));
    assert!(stderr(&out).contains("not known"), "{}", stderr(&out));
    assert!(!s.path("root/f").exists());

    // Trusted on first use, then it works without the flag.
    assert_eq!(
        code(&copy(&cs, &src, server.url("f"), &["--accept-new"])),
        0
    );
    assert_eq!(code(&copy(&cs, &src, server.url("g"), &[])), 0);

    // Another client, not authorized: exit 9.
    let other = s.path("other-state");
    let out = copy(&other, &src, server.url("h"), &["--accept-new"]);
    assert_eq!(code(&out), 9, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused this client"),
        "{}",
        stderr(&out)
    );
    assert!(!s.path("root/h").exists());

    // Same address, another server key: refused even with --accept-new.
    let port = server.port;
    drop(server);
    let ss2 = s.path("server-state-2");
    std::fs::create_dir_all(&ss2).unwrap();
    chmod(&ss2, 0o700);
    std::fs::copy(
        ss.join("authorized-clients"),
        ss2.join("authorized-clients"),
    )
    .unwrap();
    let impostor = Server::start_on(&s.path("root2"), &ss2, &format!("127.0.0.1:{port}"));
    let out = copy(&cs, &src, impostor.url("f"), &["--accept-new"]);
    let log = impostor.log();
    drop(impostor);
    assert_eq!(code(&out), 9, "{}\nserver: {log}", stderr(&out));
    assert!(stderr(&out).contains("CHANGED"), "{}", stderr(&out));
}

#[test]
fn unreachable_server_fails_within_seconds() {
    let s = Scratch::new("remote-unreachable");
    let src = s.path("f");
    random_file(&src, 10, 2);
    // A bound socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let started = Instant::now();
    let out = copy(
        &s.path("cs"),
        &src,
        format!("tpc://127.0.0.1:{port}/f"),
        &["--accept-new"],
    );
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(stderr(&out).contains("unreachable"), "{}", stderr(&out));
}

#[test]
fn pulling_a_missing_remote_path_is_exit_3_and_the_server_keeps_serving() {
    let s = Scratch::new("remote-missing");
    let (cs, ss) = keys(&s);
    let server = Server::start(&s.path("root"), &ss);
    let out = copy(&cs, server.url("nope"), s.path("dst"), &["--accept-new"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let src = s.path("f");
    random_file(&src, 5000, 3);
    let out = copy(&cs, &src, server.url("f"), &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_identical(&src, &s.path("root/f"));
}

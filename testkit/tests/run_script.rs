//! `make run` for a first-time user: `scripts/run.sh` finds the binaries
//! where cargo put them, and says why instead of printing its banner when a
//! binary cannot start. (Killing the control plane under it is walkthrough
//! step 6, exercised by `readme.rs`.)

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use llmlb_testkit::run_script::BANNER;
use llmlb_testkit::{RunAddrs, RunScript};

#[test]
fn no_banner_and_a_reason_when_the_proxy_cannot_listen() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addrs = RunAddrs {
        proxy: taken.local_addr().unwrap(),
        ..RunAddrs::free()
    };
    let mut run = RunScript::spawn(dir.path(), &addrs, &[]);
    let (status, out) = run
        .wait_banner(Duration::from_secs(60))
        .expect_err("run.sh printed its banner although the proxy could not listen");
    let status = status.expect("run.sh exits");
    assert!(!status.success(), "exit status {status}:\n{out}");
    assert!(!out.contains(BANNER), "{out}");
    assert!(
        out.contains("llmlb-proxy exited with code 1 before it was ready"),
        "{out}"
    );
    assert!(out.contains("Address already in use"), "{out}");
}

#[test]
fn make_run_takes_the_binaries_from_cargos_target_directory() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new("make")
        .args(["-n", "run"])
        .current_dir(root)
        .env("CARGO_TARGET_DIR", elsewhere.path())
        .output()
        .expect("make");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = format!("scripts/run.sh \"{}/debug\"", elsewhere.path().display());
    assert!(
        stdout.contains(&expected),
        "expected `{expected}` in:\n{stdout}"
    );
}

//! The `fake-openai` binary: flags, the `listening on` line, SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use hyper::StatusCode;

#[tokio::test]
async fn binary_prints_its_address_serves_and_exits_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fake-openai"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--models",
            "a,b",
            "--latency",
            "0ms",
            "--tokens",
            "3",
            "--token-interval",
            "0ms",
            "--prompt-tokens",
            "2",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .trim_end()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();

    let models = common::get(addr, "/v1/models", None).await.json();
    assert_eq!(models["data"][1]["id"], "b");
    let chat = common::post(
        addr,
        "/v1/chat/completions",
        None,
        &serde_json::json!({"model": "a"}),
    )
    .await;
    assert_eq!(chat.status, StatusCode::OK);
    assert_eq!(chat.json()["usage"]["total_tokens"], 5);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "exits 0 on SIGTERM: {status:?}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest, "", "exactly one line on stdout");
}

#[test]
fn bad_flags_exit_64() {
    let status = Command::new(env!("CARGO_BIN_EXE_fake-openai"))
        .args(["--latency", "soon"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(64));
    let status = Command::new(env!("CARGO_BIN_EXE_fake-openai"))
        .args(["--mode", "status:abc"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(64));
}

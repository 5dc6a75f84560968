//! The README walkthrough works verbatim: `scripts/run.sh` (what `make run`
//! starts) runs the binaries, and every `grpcurl`, `curl` and `kill` command
//! the README shows runs, in order, in the directory `make run` was started
//! from (only the addresses are swapped for the test's own ports). Step 6
//! kills the control plane: the proxy must answer while it is down, and the
//! dashboard must count those requests once it is back.

use std::time::Duration;

use llmlb_testkit::*;

/// Shell commands of the README's code blocks that start with `grpcurl`,
/// `curl` or `kill`, continuation lines joined.
fn readme_commands() -> Vec<String> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            continue;
        }
        let runs = ["grpcurl ", "curl ", "kill "];
        if current.is_empty() && !runs.iter().any(|r| line.starts_with(r)) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    commands
}

#[tokio::test]
async fn every_readme_command_works() {
    let commands = readme_commands();
    assert!(
        commands.iter().filter(|c| c.starts_with("grpcurl")).count() >= 4,
        "{commands:#?}"
    );
    assert!(
        commands.iter().filter(|c| c.starts_with("curl")).count() >= 4,
        "{commands:#?}"
    );

    assert_eq!(
        commands.iter().filter(|c| c.starts_with("kill")).count(),
        1,
        "step 6 kills the control plane: {commands:#?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let addrs = RunAddrs::free();
    // Long enough to see the control plane down, short enough for a test.
    let mut run = RunScript::spawn(dir.path(), &addrs, &[("LLMLB_RESTART_DELAY", "4")]);
    run.wait_banner(Duration::from_secs(60))
        .unwrap_or_else(|(status, out)| panic!("run.sh did not start ({status:?}):\n{out}"));
    let fake = FakeServer::start(FakeConfig {
        models: vec!["demo".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let swap = |c: &str| {
        c.replace("127.0.0.1:50051", &addrs.grpc.to_string())
            .replace("127.0.0.1:8080", &addrs.http.to_string())
            .replace("127.0.0.1:8000", &addrs.proxy.to_string())
            .replace("127.0.0.1:9000", &fake.addr().to_string())
    };
    let sh = |command: String| {
        let cwd = dir.path().to_path_buf();
        async move {
            let out = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(command)
                .current_dir(cwd)
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            (out.status.success(), stdout, stderr)
        }
    };
    let control_plane_up = || async {
        http()
            .get(format!("http://{}/healthz", addrs.http))
            .send()
            .await
            .is_ok()
    };
    let models_url = format!("http://{}/v1/models", addrs.proxy);
    let grpc = format!("http://{}", addrs.grpc);
    let mut sent = 0u64;
    let mut killed = false;
    let mut sent_while_down = 0;
    for command in &commands {
        if command.starts_with("kill") {
            let (ok, _, stderr) = sh(swap(command)).await;
            assert!(ok, "{command}\n{stderr}");
            eventually(Duration::from_secs(2), "the control plane down", || async {
                (!control_plane_up().await).then_some(())
            })
            .await;
            killed = true;
            continue;
        }
        let to_proxy = command.contains("127.0.0.1:8000");
        if to_proxy {
            // Requests need the endpoint the walkthrough registered to be ONLINE.
            eventually(
                Duration::from_secs(20),
                "the proxy routes model demo",
                || async {
                    let v: serde_json::Value = http()
                        .get(&models_url)
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()?;
                    v["data"]
                        .as_array()?
                        .iter()
                        .any(|m| m["id"] == "demo")
                        .then_some(())
                },
            )
            .await;
        }
        let down = killed && !control_plane_up().await;
        let chat = command.contains("127.0.0.1:8000/v1/chat");
        // After the kill, a control-plane command waits for run.sh to bring it
        // back; the dashboard then counts every request, those made while it
        // was down included.
        let patience = match (
            killed && !to_proxy,
            command.contains("/api/dashboard/stats"),
        ) {
            (true, _) => 30,
            (false, true) => 5,
            (false, false) => 0,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(patience);
        let stdout = loop {
            let (ok, stdout, stderr) = sh(swap(command)).await;
            let counted = !command.contains("/api/dashboard/stats")
                || serde_json::from_str::<serde_json::Value>(&stdout)
                    .map(|v| v["totalRequests"].as_str().and_then(|n| n.parse().ok()) == Some(sent))
                    .unwrap_or(false);
            if ok && counted {
                break stdout;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{command}\n{stdout}\n{stderr}\n(counted {counted}, sent {sent})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if chat {
            sent += 1;
            if down {
                assert!(
                    !control_plane_up().await,
                    "the request of step 6 was meant to run while the control plane is down"
                );
                sent_while_down += 1;
            }
        }
        assert!(!stdout.trim().is_empty(), "{command} printed nothing");
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&stdout) {
            assert!(
                v.get("error").is_none() && v.get("code").is_none(),
                "{command} answered an error:\n{stdout}"
            );
        }
    }
    assert!(killed);
    assert_eq!(
        sent_while_down, 1,
        "step 6 sends one request while the control plane is down"
    );
    // The walkthrough's requests reached the dashboard, the one made while
    // the control plane was down included.
    assert!(sent >= 3);
    eventually(
        Duration::from_secs(5),
        "walkthrough requests counted",
        || async { (overview(&grpc).await.stats.unwrap().total_requests == sent).then_some(()) },
    )
    .await;
}

//! The README walkthrough works verbatim: every `grpcurl` and `curl`
//! command it shows runs, in order, against real binaries (only the
//! addresses are swapped for the test's own ports).

use std::time::Duration;

use llmlb_testkit::*;

/// Shell commands of the README's code blocks that start with `grpcurl` or
/// `curl`, continuation lines joined.
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
        if current.is_empty() && !(line.starts_with("grpcurl ") || line.starts_with("curl ")) {
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

    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(ControlPlaneOptions::new(dir.path().join("llmlb.db")));
    let fake = FakeServer::start(FakeConfig {
        models: vec!["demo".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let proxy = Proxy::start(&cp.grpc_url(), &[]);
    let swap = |c: &str| {
        c.replace("127.0.0.1:50051", &cp.options.grpc.to_string())
            .replace("127.0.0.1:8080", &cp.options.http.to_string())
            .replace("127.0.0.1:8000", &proxy.addr.to_string())
            .replace("127.0.0.1:9000", &fake.addr().to_string())
    };
    let models_url = format!("{}/v1/models", proxy.url());
    for command in &commands {
        if command.contains("127.0.0.1:8000") {
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
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(swap(command))
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{command}\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!stdout.trim().is_empty(), "{command} printed nothing");
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&stdout) {
            assert!(
                v.get("error").is_none() && v.get("code").is_none(),
                "{command} answered an error:\n{stdout}"
            );
        }
    }
    // The walkthrough's requests reached the dashboard.
    let grpc = cp.grpc_url();
    let sent = commands
        .iter()
        .filter(|c| c.contains("127.0.0.1:8000/v1/chat"))
        .count() as u64;
    assert!(sent >= 2);
    eventually(
        Duration::from_secs(5),
        "walkthrough requests counted",
        || async { (overview(&grpc).await.stats.unwrap().total_requests == sent).then_some(()) },
    )
    .await;
}

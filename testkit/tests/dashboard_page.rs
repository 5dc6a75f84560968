//! The dashboard page (`GET /` of the control plane) in a real headless
//! Chromium: after traffic through a real proxy, every figure the page prints
//! equals the REST API's; with `--admin-token` the page shows a 401 banner
//! until it is given the token (`/#token=...`).
//!
//! Needs Debian's `chromium` (`apt-get update && apt-get install -y chromium`);
//! `LLMLB_CHROMIUM` may name another binary. Without it the test fails.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use llmlb_testkit::*;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::os::unix::process::CommandExt;

const INSTALL: &str = "apt-get update && apt-get install -y chromium";

// === chromium ===

/// The browser binary: `LLMLB_CHROMIUM`, else `chromium`/`chromium-browser` on PATH.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("LLMLB_CHROMIUM") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "LLMLB_CHROMIUM={} is not a file; unset it to use `chromium` from PATH ({INSTALL})",
            path.display()
        );
        return path;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!("chromium is not installed: the dashboard test needs a headless browser; install it with `{INSTALL}` (or set LLMLB_CHROMIUM)");
}

/// Runs headless Chromium on `url` with `extra` flags and returns its stdout.
/// Fresh profile per run; the whole process group is killed after 90 s.
fn run_chromium(url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out_path = profile.path().join("stdout");
    let err_path = profile.path().join("stderr");
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!(
        "--user-data-dir={}",
        profile.path().join("profile").display()
    ))
    .args(extra)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(File::create(&out_path).expect("stdout file"))
    .stderr(File::create(&err_path).expect("stderr file"))
    .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start chromium ({e}); install it with `{INSTALL}`"));
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
            panic!("chromium did not finish within 90 s on {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Helpers it forked may outlive it; they are in its group.
    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        status.success(),
        "chromium failed ({status}) on {url}; stderr:\n{stderr}"
    );
    std::fs::read_to_string(&out_path).expect("chromium stdout")
}

/// The page's DOM after its script ran for a while (virtual time), once its
/// `<body data-state>` is `want` (reloads until then, up to 60 s).
async fn load_dom(url: &str, want: &str) -> Dom {
    eventually(
        Duration::from_secs(60),
        &format!("the page at {url} to reach data-state={want}"),
        || {
            let url = url.to_string();
            let want = want.to_string();
            async move {
                let html = tokio::task::spawn_blocking(move || {
                    run_chromium(
                        &url,
                        &["--dump-dom".into(), "--virtual-time-budget=3000".into()],
                    )
                })
                .await
                .expect("chromium task");
                let dom = Dom::parse(&html);
                (dom.body_attr("data-state") == Some(want.as_str())).then_some(dom)
            }
        },
    )
    .await
}

/// `target/` of the running test (`target/<profile>/deps/<test>` → `target/`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .expect("target dir")
}

// === a minimal view of the dumped DOM ===

/// Start tags (name, attributes, the text right after them) in document order.
/// Enough for the page's flat figures; not a general HTML parser.
struct Dom {
    tags: Vec<(String, HashMap<String, String>, String)>,
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

impl Dom {
    fn parse(html: &str) -> Dom {
        let mut tags = Vec::new();
        let mut rest = html;
        while let Some(start) = rest.find('<') {
            rest = &rest[start + 1..];
            if rest.starts_with("!--") {
                // A comment: skip to its end.
                let Some(end) = rest.find("-->") else { break };
                rest = &rest[end + 3..];
                continue;
            }
            let Some(end) = rest.find('>') else { break };
            let tag = &rest[..end];
            rest = &rest[end + 1..];
            if tag.starts_with('/') || tag.starts_with('!') {
                continue;
            }
            let name = tag
                .split(|c: char| c.is_whitespace() || c == '/')
                .next()
                .unwrap_or("")
                .to_lowercase();
            let mut attrs = HashMap::new();
            let mut a = tag[name.len()..].trim_start();
            while let Some(eq) = a.find("=\"") {
                let key = a[..eq].trim().to_string();
                let value_end = a[eq + 2..].find('"').expect("closing quote");
                attrs.insert(key, unescape(&a[eq + 2..eq + 2 + value_end]));
                a = a[eq + 2 + value_end + 1..].trim_start();
            }
            let text = unescape(&rest[..rest.find('<').unwrap_or(rest.len())]);
            tags.push((name, attrs, text));
        }
        Dom { tags }
    }

    fn body_attr(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(n, _, _)| n == "body")
            .and_then(|(_, a, _)| a.get(key))
            .map(String::as_str)
    }

    fn by_id(&self, id: &str) -> Option<&(String, HashMap<String, String>, String)> {
        self.tags
            .iter()
            .find(|(_, a, _)| a.get("id").map(String::as_str) == Some(id))
    }

    /// Trimmed text of the element with this id (panics if missing).
    fn text(&self, id: &str) -> String {
        let (_, attrs, text) = self
            .by_id(id)
            .unwrap_or_else(|| panic!("no element id={id} on the page"));
        assert_eq!(
            attrs.get("data-testid").map(String::as_str),
            Some(id),
            "id={id} has a matching data-testid"
        );
        text.trim().to_string()
    }

    fn hidden(&self, id: &str) -> bool {
        self.by_id(id)
            .unwrap_or_else(|| panic!("no element id={id}"))
            .1
            .contains_key("hidden")
    }

    /// `data-field` cells per `data-endpoint-id` row.
    fn endpoint_cells(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut rows: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut current = None;
        for (name, attrs, text) in &self.tags {
            if name == "tr" {
                current = attrs.get("data-endpoint-id").cloned();
                if let Some(id) = &current {
                    rows.entry(id.clone()).or_default();
                }
            } else if let (Some(id), Some(field)) = (&current, attrs.get("data-field")) {
                rows.entry(id.clone())
                    .or_default()
                    .insert(field.clone(), text.trim().to_string());
            }
        }
        rows
    }

    /// Timeline bars: (minute, success, failure).
    fn bars(&self) -> Vec<(String, String, String)> {
        self.tags
            .iter()
            .filter_map(|(_, a, _)| {
                Some((
                    a.get("data-minute")?.clone(),
                    a.get("data-success")?.clone(),
                    a.get("data-failure")?.clone(),
                ))
            })
            .collect()
    }
}

// === API side ===

async fn rest_overview(http_url: &str) -> Value {
    let resp = http()
        .get(format!("{http_url}/api/dashboard/overview"))
        .send()
        .await
        .expect("GET overview");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("overview JSON")
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "0".into(),
        other => other.to_string(),
    }
}

fn history_sum(o: &Value, key: &str) -> u64 {
    o["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|m| s(&m[key]).parse::<u64>().expect("count"))
        .sum()
}

// === tests ===

#[tokio::test]
async fn dashboard_page_shows_the_apis_figures() {
    chromium(); // fail early, and clearly, without a browser
    let dir = tempfile::tempdir().unwrap();
    let mut options = ControlPlaneOptions::new(dir.path().join("llmlb.db"));
    // One probe at registration, then none for the test's duration: the fake is
    // later switched to answer 400, which would also fail the probes and take
    // the endpoint out of the routing table.
    options.args = vec![
        "--health-check-interval".into(),
        "10m".into(),
        "--health-check-timeout".into(),
        "2s".into(),
    ];
    let cp = ControlPlane::start(options);
    let fake = FakeServer::start(FakeConfig {
        tokens: 12,
        token_interval: Duration::from_millis(2),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let ep = create_endpoint(&cp.grpc_url(), "gpu-a", &fake.base_url(), &["fake-model"]).await;
    wait_online(&cp.grpc_url(), &ep.id).await;

    let proxy = Proxy::start(&cp.grpc_url(), &[]);
    let client = http();
    eventually(
        Duration::from_secs(20),
        "the proxy to route fake-model",
        || async {
            let resp = client
                .get(format!("{}/v1/models", proxy.url()))
                .send()
                .await
                .ok()?;
            resp.text().await.ok()?.contains("fake-model").then_some(())
        },
    )
    .await;

    // 5 successes (2 streamed), then 2 that the upstream answers 400.
    let chat = format!("{}/v1/chat/completions", proxy.url());
    for i in 0..5 {
        let resp = client
            .post(&chat)
            .json(&chat_body("fake-model", i % 2 == 1))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap();
    }
    fake.set_mode(FakeMode::Status(400));
    for _ in 0..2 {
        let resp = client
            .post(&chat)
            .json(&chat_body("fake-model", false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        resp.text().await.unwrap();
    }

    let http_url = cp.http_url();
    let api = eventually(
        Duration::from_secs(10),
        "7 requests (5 ok, 2 failed) in the API",
        || async {
            let o = rest_overview(&http_url).await;
            let st = &o["stats"];
            let done = s(&st["totalRequests"]) == "7"
                && s(&st["successfulRequests"]) == "5"
                && s(&st["failedRequests"]) == "2"
                && s(&st["activeRequests"]) == "0"
                && history_sum(&o, "success") == 5
                && history_sum(&o, "failure") == 2;
            done.then_some(o)
        },
    )
    .await;

    let dom = load_dom(&format!("{http_url}/"), "ready").await;
    let st = &api["stats"];

    // Summary cards.
    for (id, key) in [
        ("total-requests", "totalRequests"),
        ("successful-requests", "successfulRequests"),
        ("failed-requests", "failedRequests"),
        ("active-requests", "activeRequests"),
        ("total-input-tokens", "totalInputTokens"),
        ("total-output-tokens", "totalOutputTokens"),
        ("online-endpoints", "onlineEndpoints"),
        ("total-endpoints", "totalEndpoints"),
        ("connected-proxies", "connectedProxies"),
    ] {
        assert_eq!(dom.text(id), s(&st[key]), "#{id} vs stats.{key}");
    }
    assert_eq!(dom.text("total-requests"), "7");
    assert_eq!(dom.text("failed-requests"), "2");
    assert_eq!(dom.text("success-rate"), "71.4 %");
    assert_eq!(
        dom.by_id("average-response-time-source").unwrap().1["data-source"],
        "REQUESTS"
    );
    assert!(
        dom.text("average-response-time").ends_with("ms")
            || dom.text("average-response-time").ends_with(" s")
    );
    assert!(dom.hidden("error-banner"), "no error banner on success");

    // Endpoint table.
    let rows = dom.endpoint_cells();
    assert_eq!(
        rows.len(),
        api["endpoints"].as_array().unwrap().len(),
        "one row per endpoint"
    );
    for e in api["endpoints"].as_array().unwrap() {
        let id = e["id"].as_str().unwrap();
        let row = rows
            .get(id)
            .unwrap_or_else(|| panic!("no row data-endpoint-id={id}"));
        for field in [
            "totalRequests",
            "successfulRequests",
            "failedRequests",
            "activeRequests",
            "totalInputTokens",
            "totalOutputTokens",
        ] {
            assert_eq!(row.get(field), Some(&s(&e[field])), "endpoint {id} {field}");
        }
        assert_eq!(row.get("name").map(String::as_str), e["name"].as_str());
        assert_eq!(
            row.get("baseUrl").map(String::as_str),
            e["baseUrl"].as_str()
        );
    }
    assert_eq!(rows[&ep.id]["totalRequests"], "7");
    let tps = dom
        .tags
        .iter()
        .find(|(_, a, _)| a.get("data-model").map(String::as_str) == Some("fake-model"));
    assert!(tps.is_some(), "a TPS entry for fake-model");

    // Timeline: 60 bars, same non-empty minutes and sums as the API.
    let bars = dom.bars();
    assert_eq!(bars.len(), 60, "one bar per minute");
    let sum = |i: usize| {
        bars.iter()
            .map(|b| [&b.1, &b.2][i].parse::<u64>().unwrap())
            .sum::<u64>()
    };
    assert_eq!(
        (sum(0), sum(1)),
        (history_sum(&api, "success"), history_sum(&api, "failure"))
    );
    assert_eq!(
        (
            dom.text("timeline-success-total"),
            dom.text("timeline-failure-total")
        ),
        ("5".into(), "2".into())
    );
    let busy = |v: Vec<(String, String, String)>| {
        v.into_iter()
            .filter(|b| b.1 != "0" || b.2 != "0")
            .collect::<Vec<_>>()
    };
    let api_bars = api["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["minute"].as_str().unwrap().to_string(),
                s(&m["success"]),
                s(&m["failure"]),
            )
        })
        .collect();
    assert_eq!(busy(bars), busy(api_bars), "non-empty minutes");

    // A screenshot, for people.
    let shot = target_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let url = format!("{http_url}/");
    let args = vec![
        format!("--screenshot={}", shot.display()),
        "--window-size=1400,1000".into(),
        "--virtual-time-budget=3000".into(),
    ];
    tokio::task::spawn_blocking(move || run_chromium(&url, &args))
        .await
        .unwrap();
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 0)
            .unwrap_or(false),
        "screenshot written"
    );
    println!("dashboard screenshot: {}", shot.display());
    drop(proxy);
}

#[tokio::test]
async fn dashboard_page_asks_for_the_admin_token() {
    chromium();
    let dir = tempfile::tempdir().unwrap();
    let mut options = ControlPlaneOptions::new(dir.path().join("llmlb.db"));
    options
        .args
        .extend(["--admin-token".to_string(), "s3cret-admin".to_string()]);
    let cp = ControlPlane::start(options);

    let dom = load_dom(&format!("{}/", cp.http_url()), "error").await;
    assert_eq!(dom.body_attr("data-http-status"), Some("401"));
    assert!(!dom.hidden("error-banner"), "the error banner is shown");
    assert!(
        dom.text("error-banner").contains("401"),
        "banner: {}",
        dom.text("error-banner")
    );

    let dom = load_dom(&format!("{}/#token=s3cret-admin", cp.http_url()), "ready").await;
    assert!(dom.hidden("error-banner"));
    assert_eq!(dom.text("total-requests"), "0");
    assert_eq!(dom.text("total-endpoints"), "0");
    assert_eq!(dom.bars().len(), 60);
}

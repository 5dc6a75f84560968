//! Clients that attack the proxy's resources instead of using its API:
//! connections that send nothing, bodies that stall, answers nobody reads,
//! more connections than file descriptors, malformed HTTP/1 framing, and
//! a shutdown during all that. Each test uses short timeouts (flags) and
//! polls with deadlines.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{endpoint, eventually, start_routable, table, TestControlPlane};
use http_body::Frame;
use llmlb_fake_openai::{FakeConfig, FakeServer};
use llmlb_proto::v1::EndpointStatus;
use llmlb_proxy::metrics::TimeoutKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MODEL: &str = "m";

/// A fake backend serving [`MODEL`], `tokens` tokens `interval` apart.
async fn fake_backend(tokens: u32, interval: Duration) -> FakeServer {
    FakeServer::start(FakeConfig {
        models: vec![MODEL.into()],
        tokens,
        token_interval: interval,
        ..FakeConfig::default()
    })
    .await
    .unwrap()
}

async fn control_plane(base_url: &str) -> TestControlPlane {
    TestControlPlane::start(
        table(
            1,
            vec![endpoint("e1", base_url, EndpointStatus::Online, &[MODEL])],
        ),
        true,
    )
    .await
}

/// Whether the peer closes `stream` within `within` (whatever it sends
/// before).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let read_to_end = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_to_end).await.is_ok()
}

/// Reads an HTTP/1 response head from `stream`; returns its status.
async fn read_status(stream: &mut TcpStream, within: Duration) -> Option<u16> {
    let read = async {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head);
        text.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(within, read).await.ok().flatten()
}

/// A chat request head for a body of `len` bytes.
fn post_head(len: usize) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    )
}

fn chat(stream: bool) -> String {
    serde_json::json!({"model": MODEL, "stream": stream, "messages": []}).to_string()
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed_and_slow_streams_are_not() {
    let fake = fake_backend(20, Duration::from_millis(100)).await;
    let cp = control_plane(&fake.base_url()).await;
    let flags = ["--header-timeout=500ms", "--idle-timeout=1s"];
    let (proxy, base, client) = start_routable(&cp.url(), &flags, MODEL).await;
    let addr = proxy.local_addr();
    let limit = Duration::from_secs(5);

    // Sends nothing.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // Part of the HTTP/2 preface.
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    // The whole preface and an empty SETTINGS frame, then no stream.
    let mut h2_idle = TcpStream::connect(addr).await.unwrap();
    h2_idle
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // One HTTP/1 request, then keep-alive silence.
    let mut kept_alive = TcpStream::connect(addr).await.unwrap();
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: proxy\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_status(&mut kept_alive, limit).await, Some(200));

    // A stream of 2 s, longer than both timeouts, is not cut.
    let streamed = tokio::spawn(async move {
        client
            .post(format!("{base}/v1/chat/completions"))
            .body(chat(true))
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });

    for (what, stream) in [
        ("a silent connection", &mut silent),
        ("a partial HTTP/2 preface", &mut partial),
        ("an HTTP/2 connection with no stream", &mut h2_idle),
        ("an idle HTTP/1 keep-alive connection", &mut kept_alive),
    ] {
        assert!(closed_within(stream, limit).await, "{what} is still open");
    }
    let body = streamed.await.unwrap();
    assert!(body.contains("data: [DONE]"), "{body}");
    assert!(proxy.metrics().timeouts_total(TimeoutKind::Header) >= 3);
    let records = cp.wait_records(1).await;
    assert!(records[0].success, "{:?}", records[0]);
    proxy.shutdown().await;
    cp.stop().await;
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_the_streams_of_a_connection_share_a_body_budget() {
    let fake = fake_backend(1, Duration::ZERO).await;
    let cp = control_plane(&fake.base_url()).await;
    let flags = [
        "--body-timeout=2s",
        "--max-body-size=64KiB",
        "--connection-body-budget=96KiB",
    ];
    let (proxy, _base, _client) = start_routable(&cp.url(), &flags, MODEL).await;
    let limit = Duration::from_secs(5);

    // HTTP/1: 10 bytes of 1000, then silence.
    let mut stalled = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let head = post_head(1000);
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(b"{\"model\":").await.unwrap();
    assert_eq!(read_status(&mut stalled, limit).await, Some(408));
    assert!(closed_within(&mut stalled, limit).await);

    // HTTP/2: two streams on one connection, 60 KiB each, then silence:
    // the budget holds one of them (413), the other stalls (408).
    let tcp = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let mut bodies = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let request =
            http::Request::post(format!("http://{}/v1/chat/completions", proxy.local_addr()))
                .header("content-type", "application/json")
                .body(body)
                .unwrap();
        sender.ready().await.unwrap();
        answers.push(tokio::spawn(sender.send_request(request)));
        tx.send(Ok(Frame::data(Bytes::from(vec![b' '; 60 * 1024]))))
            .await
            .unwrap();
        bodies.push(tx);
    }
    let mut statuses = Vec::new();
    for answer in answers {
        let response = tokio::time::timeout(limit, answer)
            .await
            .expect("an answer within the deadline")
            .unwrap()
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [408, 413]);
    drop(bodies);
    assert_eq!(proxy.metrics().timeouts_total(TimeoutKind::Body), 2);
    proxy.shutdown().await;
    cp.stop().await;
}

/// An upstream that answers every request with an endless body, and says
/// when the proxy closed its connection.
async fn endless_upstream() -> (String, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let flag = flag.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // The request is small: its head and body end with `}`.
                while !request.ends_with(b"}") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
                while socket.write_all(chunk.as_bytes()).await.is_ok() {}
                flag.store(true, Ordering::SeqCst);
            });
        }
    });
    (format!("http://{addr}"), closed)
}

#[tokio::test]
async fn a_client_that_never_reads_has_its_upstream_cancelled_after_the_send_timeout() {
    let (upstream, upstream_closed) = endless_upstream().await;
    let cp = control_plane(&upstream).await;
    let (proxy, _base, _client) = start_routable(&cp.url(), &["--send-timeout=1s"], MODEL).await;
    let mut reader_that_never_reads = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let body = chat(false);
    reader_that_never_reads
        .write_all(format!("{}{body}", post_head(body.len())).as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    eventually("the upstream connection closed", || async {
        upstream_closed.load(Ordering::SeqCst).then_some(())
    })
    .await;
    let records = cp.wait_records(1).await;
    assert!(!records[0].success, "{:?}", records[0]);
    assert_eq!(proxy.metrics().timeouts_total(TimeoutKind::Send), 1);
    eprintln!(
        "upstream cancelled {:?} after the request",
        started.elapsed()
    );
    drop(reader_that_never_reads);
    proxy.shutdown().await;
    cp.stop().await;
}

#[tokio::test]
async fn http1_requests_without_one_host_or_with_unknown_codings_are_refused() {
    let fake = fake_backend(1, Duration::ZERO).await;
    let cp = control_plane(&fake.base_url()).await;
    let (proxy, _base, _client) = start_routable(&cp.url(), &[], MODEL).await;
    let body = chat(false);
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let cases = [
        ("no Host", "GET /healthz HTTP/1.1\r\n\r\n".to_owned(), 400),
        (
            "two Hosts",
            "GET /healthz HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n".to_owned(),
            400,
        ),
        ("HTTP/1.0 without Host", "GET /healthz HTTP/1.0\r\n\r\n".to_owned(), 200),
        (
            "gzip, chunked",
            format!("POST /v1/chat/completions HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\ntransfer-encoding: gzip, chunked\r\n\r\n{chunked}"),
            501,
        ),
        (
            "chunked",
            format!("POST /v1/chat/completions HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{chunked}"),
            200,
        ),
    ];
    for (what, request, status) in cases {
        let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let got = read_status(&mut stream, Duration::from_secs(5)).await;
        assert_eq!(got, Some(status), "{what}");
    }
    // Only the chunked request reached the upstream.
    let records = cp.wait_records(1).await;
    assert_eq!(records.len(), 1);
    proxy.shutdown().await;
    cp.stop().await;
}

#[tokio::test]
async fn a_stalled_body_does_not_hold_the_shutdown_and_only_open_connections_count_as_cut() {
    // A 1 s stream, a body stalled halfway, and ten idle keep-alive
    // connections: the drain waits for the stream only.
    let fake = fake_backend(20, Duration::from_millis(50)).await;
    let cp = control_plane(&fake.base_url()).await;
    let (proxy, base, client) = start_routable(&cp.url(), &["--shutdown-grace=10s"], MODEL).await;
    let addr = proxy.local_addr();
    let mut idle = Vec::new();
    for _ in 0..10 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: proxy\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            read_status(&mut stream, Duration::from_secs(5)).await,
            Some(200)
        );
        idle.push(stream);
    }
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled.write_all(post_head(1000).as_bytes()).await.unwrap();
    stalled.write_all(b"{\"model\":").await.unwrap();
    let response = client
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat(true))
        .send()
        .await
        .unwrap();
    let streamed = tokio::spawn(async move { response.text().await.unwrap() });
    let started = Instant::now();
    let report = proxy.shutdown().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert_eq!(report.aborted_connections, 0);
    assert!(streamed.await.unwrap().contains("data: [DONE]"));
    cp.stop().await;

    // Same, with a grace shorter than the stream: only the stream's
    // connection is cut.
    let fake = fake_backend(100, Duration::from_millis(50)).await;
    let cp = control_plane(&fake.base_url()).await;
    let (proxy, base, client) = start_routable(&cp.url(), &["--shutdown-grace=1s"], MODEL).await;
    let mut idle = Vec::new();
    for _ in 0..10 {
        let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: proxy\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            read_status(&mut stream, Duration::from_secs(5)).await,
            Some(200)
        );
        idle.push(stream);
    }
    let response = client
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat(true))
        .send()
        .await
        .unwrap();
    let report = proxy.shutdown().await;
    assert_eq!(report.aborted_connections, 1);
    drop(response);
    cp.stop().await;
}

/// A real `llmlb-proxy` under `prlimit --nofile=N:N`, killed on drop.
struct LimitedProxy {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl LimitedProxy {
    fn start(nofile: u32, control_plane: &str) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new("prlimit")
            .arg(format!("--nofile={nofile}:{nofile}"))
            .arg(env!("CARGO_BIN_EXE_llmlb-proxy"))
            .args(["--listen=127.0.0.1:0", "--workers=1", "--proxy-id=limited"])
            .arg(format!("--control-plane={control_plane}"))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("prlimit (util-linux) runs llmlb-proxy");
        let stdout = child.stdout.take().unwrap();
        let line = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("llmlb-proxy listening"))
            .expect("readiness line");
        let addr = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("http="))
            .and_then(|a| a.parse().ok())
            .expect("http=ADDR");
        Self { child, addr }
    }
}

impl Drop for LimitedProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn more_connections_than_descriptors_leave_the_proxy_serving() {
    let fake = fake_backend(1, Duration::ZERO).await;
    let cp = control_plane(&fake.base_url()).await;
    // 128 descriptors: a cap of (128 - 36) / 2 = 46 connections.
    let proxy = LimitedProxy::start(128, &cp.url());
    let base = format!("http://{}", proxy.addr);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    common::wait_routable(&client, &base, MODEL).await;
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    // Every new connection sheds an old silent one; a real client is served.
    for _ in 0..3 {
        // A new client each time: a pooled connection may have been shed.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let response = client
            .post(format!("{base}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(chat(false))
            .send()
            .await
            .expect("served while 200 silent connections are open");
        assert_eq!(response.status(), 200);
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let metrics = common::get_text(&client, &format!("{base}/metrics")).await;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{metrics}"))
    };
    assert_eq!(value("llmlb_proxy_connection_limit "), 46.0);
    assert!(value("llmlb_proxy_open_connections ") <= 46.0);
    assert!(value("llmlb_proxy_connections_shed_total ") >= 150.0);
    drop(silent);
    drop(proxy);
    cp.stop().await;
}

//! Size limits of HTTP heads: a client request head over 8 KiB is answered
//! 431; an upstream response head over 4 KiB fails the attempt (502 when no
//! other endpoint is left), as nginx's default `proxy_buffer_size` does.

mod common;

use common::{endpoint, start_routable, table, TestControlPlane};
use llmlb_fake_openai::{FakeConfig, FakeServer};
use llmlb_proto::v1::EndpointStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves one HTTP/1 response per connection with a `x-big` header of
/// `header_len` bytes and a small JSON body.
async fn upstream_with_big_head(header_len: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                // Read the request head and body (small) before answering.
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request);
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let length: usize = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                let (name, value) = l.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if request.len() >= head_end + 4 + length {
                            break;
                        }
                    }
                }
                let body = r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-big: {}\r\ncontent-length: {}\r\n\r\n{body}",
                    "a".repeat(header_len),
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn head_size_limits() {
    let small = upstream_with_big_head(3 * 1024).await;
    let big = upstream_with_big_head(5 * 1024).await;
    let fake = FakeServer::start(FakeConfig {
        models: vec!["m".into()],
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let cp = TestControlPlane::start(
        table(
            1,
            vec![
                endpoint("fake", &fake.base_url(), EndpointStatus::Online, &["m"]),
                endpoint("small", &small, EndpointStatus::Online, &["small"]),
                endpoint("big", &big, EndpointStatus::Online, &["big"]),
            ],
        ),
        true,
    )
    .await;
    let (proxy, base, client) = start_routable(&cp.url(), &[], "m").await;
    let url = format!("{base}/v1/chat/completions");

    // Client request heads: 7 KiB of headers pass, 9 KiB are refused.
    for (len, status) in [(7 * 1024, 200), (9 * 1024, 431)] {
        let response = client
            .post(&url)
            .header("x-pad", "p".repeat(len))
            .json(&serde_json::json!({"model": "m", "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "request head of {len} bytes");
    }

    // Upstream response heads: 3 KiB are relayed, 5 KiB fail the attempt.
    for (model, status) in [("small", 200), ("big", 502)] {
        let response = client
            .post(&url)
            .json(&serde_json::json!({"model": model, "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "model {model}");
        if status == 200 {
            assert_eq!(response.headers()["x-big"].len(), 3 * 1024);
        }
    }
    let records = cp.wait_records(3).await;
    let big_record = records.iter().find(|r| r.endpoint_id == "big").unwrap();
    assert!(!big_record.success, "{big_record:?}");
    proxy.shutdown().await;
    cp.stop().await;
}

//! Bad input against the real binaries, one table per interface. Every row
//! is listed in `docs/bad-input.md` with its result; keep the two in step.

use std::time::Duration;

use futures::StreamExt;
use llmlb_proto::v1 as pb;
use llmlb_testkit::*;
use serde_json::{json, Value};

/// What a bad request must get back.
enum Expect {
    /// The proxy's own OpenAI error: status and `error.code`.
    Proxy(u16, &'static str),
    /// A control plane gateway error: HTTP status and gRPC code number.
    Gateway(u16, i32),
}

struct Case {
    what: &'static str,
    method: reqwest::Method,
    path: String,
    body: Vec<u8>,
    expect: Expect,
}

fn case(
    what: &'static str,
    method: reqwest::Method,
    path: impl Into<String>,
    body: impl Into<Vec<u8>>,
    expect: Expect,
) -> Case {
    Case {
        what,
        method,
        path: path.into(),
        body: body.into(),
        expect,
    }
}

/// Sends every case to `base` and checks status and error body; returns how
/// many were tried.
async fn run(base: &str, cases: Vec<Case>) -> usize {
    let n = cases.len();
    for c in cases {
        let resp = http()
            .request(c.method.clone(), format!("{base}{}", c.path))
            .header("content-type", "application/json")
            .body(c.body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", c.what));
        let status = resp.status().as_u16();
        let allow = resp.headers().get("allow").cloned();
        let text = resp.text().await.unwrap();
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: the error body is JSON ({e}): {text}", c.what));
        match c.expect {
            Expect::Proxy(want, code) => {
                assert_eq!(status, want, "{}: {body}", c.what);
                assert_eq!(body["error"]["code"], code, "{}: {body}", c.what);
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(!message.is_empty(), "{}: {body}", c.what);
                assert!(message.len() < 2048, "{}: a short message", c.what);
                if want == 405 {
                    assert!(allow.is_some(), "{}: 405 says what is allowed", c.what);
                }
            }
            Expect::Gateway(want, code) => {
                assert_eq!(status, want, "{}: {body}", c.what);
                assert_eq!(body["code"], code, "{}: {body}", c.what);
                assert!(
                    body["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{}: {body}",
                    c.what
                );
                assert_eq!(body["details"], json!([]), "{}", c.what);
            }
        }
    }
    n
}

struct Setup {
    cp: ControlPlane,
    proxy: Proxy,
    fake: FakeServer,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(ControlPlaneOptions::new(dir.path().join("llmlb.db")));
    let fake = FakeServer::start(FakeConfig {
        models: vec!["m".into()],
        tokens: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    let e = create_endpoint(&cp.grpc_url(), "backend", &fake.base_url(), &[]).await;
    wait_online(&cp.grpc_url(), &e.id).await;
    let proxy = Proxy::start(&cp.grpc_url(), &[]);
    wait_model_listed(&proxy.url(), "m", None).await;
    Setup {
        cp,
        proxy,
        fake,
        _dir: dir,
    }
}

async fn total_requests(grpc: &str) -> u64 {
    overview(grpc).await.stats.unwrap().total_requests
}

/// Requests the proxy refuses itself: a clear OpenAI error, nothing sent
/// upstream, nothing counted.
#[tokio::test]
async fn the_proxy_refuses_malformed_requests_with_openai_errors() {
    use reqwest::Method;
    let s = setup().await;
    let chat = "/v1/chat/completions";
    let mut deep = String::from(r#"{"model":"nope","x":"#);
    deep.push_str(&"[".repeat(10_000));
    deep.push_str(&"]".repeat(10_000));
    deep.push('}');
    let cases = vec![
        case(
            "malformed JSON",
            Method::POST,
            chat,
            "{not json",
            Expect::Proxy(400, "invalid_json"),
        ),
        case(
            "empty body",
            Method::POST,
            chat,
            "",
            Expect::Proxy(400, "invalid_json"),
        ),
        case(
            "trailing bytes after the object",
            Method::POST,
            chat,
            r#"{"model":"m"} x"#,
            Expect::Proxy(400, "invalid_json"),
        ),
        case(
            "invalid UTF-8 inside a string",
            Method::POST,
            chat,
            &b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}"[..],
            Expect::Proxy(400, "invalid_json"),
        ),
        case(
            "a JSON array",
            Method::POST,
            chat,
            "[1,2]",
            Expect::Proxy(400, "invalid_request"),
        ),
        case(
            "a JSON string",
            Method::POST,
            chat,
            r#""m""#,
            Expect::Proxy(400, "invalid_request"),
        ),
        case(
            "missing model",
            Method::POST,
            chat,
            r#"{"messages":[]}"#,
            Expect::Proxy(400, "missing_model"),
        ),
        case(
            "model: 5",
            Method::POST,
            chat,
            r#"{"model":5}"#,
            Expect::Proxy(400, "missing_model"),
        ),
        case(
            "model: null",
            Method::POST,
            chat,
            r#"{"model":null}"#,
            Expect::Proxy(400, "missing_model"),
        ),
        case(
            r#"model: """#,
            Method::POST,
            chat,
            r#"{"model":""}"#,
            Expect::Proxy(400, "missing_model"),
        ),
        case(
            "unknown model",
            Method::POST,
            chat,
            r#"{"model":"gpt-nope"}"#,
            Expect::Proxy(404, "model_not_found"),
        ),
        case(
            "unknown model, 100 KB name",
            Method::POST,
            chat,
            json!({"model": "x".repeat(100_000)}).to_string(),
            Expect::Proxy(404, "model_not_found"),
        ),
        case(
            "unknown model, JSON nested 10,000 deep",
            Method::POST,
            chat,
            deep,
            Expect::Proxy(404, "model_not_found"),
        ),
        case(
            "unknown path",
            Method::POST,
            "/v1/chat/completion",
            r#"{"model":"m"}"#,
            Expect::Proxy(404, "unknown_url"),
        ),
        case(
            "unknown path outside /v1",
            Method::GET,
            "/admin",
            "",
            Expect::Proxy(404, "unknown_url"),
        ),
        case(
            "GET on a POST API",
            Method::GET,
            chat,
            "",
            Expect::Proxy(405, "method_not_allowed"),
        ),
        case(
            "POST on /v1/models",
            Method::POST,
            "/v1/models",
            "{}",
            Expect::Proxy(405, "method_not_allowed"),
        ),
        case(
            "DELETE on /v1/embeddings",
            Method::DELETE,
            "/v1/embeddings",
            "",
            Expect::Proxy(405, "method_not_allowed"),
        ),
    ];
    let n = run(&s.proxy.url(), cases).await;
    assert_eq!(n, 18);
    assert_eq!(s.fake.requests(), 0, "nothing went upstream");

    // Bodies over --max-body-size (8 MiB): announced, and streamed without
    // a length.
    let limit = 8 << 20;
    let big = vec![b' '; limit + 1];
    let resp = http()
        .post(format!("{}{chat}", s.proxy.url()))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "request_too_large");
    let chunks = futures::stream::iter(
        big.chunks(64 * 1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let resp = http()
        .post(format!("{}{chat}", s.proxy.url()))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413, "chunked, no content-length");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "request_too_large");
    // Exactly at the limit is read (and then judged as JSON).
    let mut at_limit = br#"{"model":"nope"}"#.to_vec();
    at_limit.resize(limit, b' ');
    let resp = http()
        .post(format!("{}{chat}", s.proxy.url()))
        .body(at_limit)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // Oversized request headers, as hyper answers them (no OpenAI body).
    let resp = http()
        .post(format!("{}{chat}", s.proxy.url()))
        .header("x-big", "a".repeat(512 * 1024))
        .body(r#"{"model":"m"}"#)
        .send()
        .await;
    assert_header_refused(resp, "one 512 KiB header");
    let mut many = http().post(format!("{}{chat}", s.proxy.url()));
    for i in 0..200 {
        many = many.header(format!("x-h{i}"), "v");
    }
    assert_header_refused(many.body(r#"{"model":"m"}"#).send().await, "200 headers");

    // The proxy is fine afterwards and counted nothing.
    let resp = http()
        .post(format!("{}{chat}", s.proxy.url()))
        .json(&chat_body("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let grpc = s.cp.grpc_url();
    eventually(
        Duration::from_secs(5),
        "the good request counted",
        || async { (total_requests(&grpc).await == 1).then_some(()) },
    )
    .await;
    assert_eq!(s.fake.requests(), 1);
}

/// hyper refuses request headers it cannot hold with 431 and closes the
/// connection; a client may also see the connection closed first.
fn assert_header_refused(resp: reqwest::Result<reqwest::Response>, what: &str) {
    match resp {
        Ok(r) => assert_eq!(r.status(), 431, "{what}"),
        Err(e) => assert!(
            e.is_request() || e.is_connect() || e.to_string().contains("connection"),
            "{what}: {e:?}"
        ),
    }
}

/// Well-formed JSON that the proxy does not judge: it goes upstream byte
/// for byte (the proxy reads only `model`, `stream` and `stream_options`),
/// and the upstream's answer is relayed.
#[tokio::test]
async fn the_proxy_passes_what_it_does_not_own_through_untouched() {
    let s = setup().await;
    let url = format!("{}/v1/chat/completions", s.proxy.url());
    let send = |body: String| {
        let url = url.clone();
        async move {
            let resp = http().post(&url).body(body).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap())
        }
    };
    let mut tried = 0;

    // Wrong types of fields the proxy does not read: forwarded as they
    // are, and the upstream's verdict relayed (the fake ignores `messages`
    // and insists on a boolean `stream`).
    for (body, upstream_says) in [
        (json!({"model": "m", "messages": "x"}), 200),
        (
            json!({"model": "m", "messages": [{"role": 5, "content": {"a": [1]}}]}),
            200,
        ),
        (json!({"model": "m", "stream": "yes"}), 400),
    ] {
        let (status, text) = send(body.to_string()).await;
        assert_eq!(status, upstream_says, "{text}");
        assert_eq!(s.fake.last_request().unwrap().body, body);
        tried += 1;
    }

    // Huge n / max_tokens: untouched (the fake honours
    // max_completion_tokens and ignores n).
    let huge = json!({
        "model": "m",
        "messages": [],
        "n": u64::MAX,
        "max_tokens": u32::MAX,
        "max_completion_tokens": 2,
        "temperature": 1e300,
    });
    let (status, text) = send(huge.to_string()).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(s.fake.last_request().unwrap().body, huge);
    tried += 1;

    // Numbers no 64-bit type holds reach the upstream as written: the fake
    // cannot parse the body as a JSON value either and records its text.
    let text_body = r#"{"model":"m","max_completion_tokens":2,"n":1e400,"seed":123456789012345678901234567890}"#;
    let (status, _) = send(text_body.into()).await;
    assert_eq!(status, 200);
    assert_eq!(s.fake.last_request().unwrap().body, Value::from(text_body));
    tried += 1;
    // Also when the proxy rewrites a streaming request to ask for usage.
    let stream_body = r#"{"model":"m","stream":true,"max_completion_tokens":2,"n":1e400,"seed":123456789012345678901234567890}"#;
    let (status, text) = send(stream_body.into()).await;
    assert_eq!(status, 200);
    assert!(text.contains("data: [DONE]"));
    assert_eq!(
        s.fake.last_request().unwrap().body,
        Value::from(
            r#"{"model":"m","stream":true,"max_completion_tokens":2,"n":1e400,"seed":123456789012345678901234567890,"stream_options":{"include_usage":true}}"#
        )
    );
    tried += 1;
    // Nested 10,000 deep: the proxy's reader does not recurse; forwarded.
    let mut deep = String::from(r#"{"model":"m","max_completion_tokens":2,"x":"#);
    deep.push_str(&"[".repeat(10_000));
    deep.push_str(&"]".repeat(10_000));
    deep.push('}');
    let (status, _) = send(deep).await;
    assert_eq!(status, 200);
    tried += 1;
    assert_eq!(tried, 7);
    assert_eq!(s.fake.requests(), 7);
}

/// The REST gateway: gateway error bodies with the right status for every
/// bad input, and nothing changed by them.
#[tokio::test]
async fn the_rest_gateway_refuses_bad_input_with_gateway_errors() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(ControlPlaneOptions::new(dir.path().join("llmlb.db")));
    let grpc = cp.grpc_url();
    let e = create_endpoint(&grpc, "taken", "http://127.0.0.1:9", &["m"]).await;
    let ep = "/api/endpoints";
    let one = format!("{ep}/{}", e.id);
    let create = |name: Value, url: Value| json!({"name": name, "baseUrl": url}).to_string();
    let long_name = "n".repeat(129);
    let cases = vec![
        case(
            "malformed JSON",
            Method::POST,
            ep,
            "{not json",
            Expect::Gateway(400, 3),
        ),
        case(
            "invalid UTF-8",
            Method::POST,
            ep,
            &b"{\"name\":\"\xff\",\"baseUrl\":\"http://h\"}"[..],
            Expect::Gateway(400, 3),
        ),
        case(
            "a JSON array",
            Method::POST,
            ep,
            "[]",
            Expect::Gateway(400, 3),
        ),
        case(
            "name: 5",
            Method::POST,
            ep,
            create(json!(5), json!("http://h")),
            Expect::Gateway(400, 3),
        ),
        case(
            "models: \"m\"",
            Method::POST,
            ep,
            r#"{"name":"x","baseUrl":"http://h","models":"m"}"#,
            Expect::Gateway(400, 3),
        ),
        case(
            "unknown field",
            Method::POST,
            ep,
            r#"{"name":"x","baseUrl":"http://h","bogus":1}"#,
            Expect::Gateway(400, 3),
        ),
        case(
            "baseUrl ftp://",
            Method::POST,
            ep,
            create(json!("x"), json!("ftp://h")),
            Expect::Gateway(400, 3),
        ),
        case(
            "baseUrl not a URL",
            Method::POST,
            ep,
            create(json!("x"), json!("not a url")),
            Expect::Gateway(400, 3),
        ),
        case(
            "baseUrl without host",
            Method::POST,
            ep,
            create(json!("x"), json!("http://")),
            Expect::Gateway(400, 3),
        ),
        case(
            "baseUrl with user info",
            Method::POST,
            ep,
            create(json!("x"), json!("http://u:pw@h")),
            Expect::Gateway(400, 3),
        ),
        case(
            "baseUrl with a query",
            Method::POST,
            ep,
            create(json!("x"), json!("http://h/?a=1")),
            Expect::Gateway(400, 3),
        ),
        case(
            "baseUrl port 99999",
            Method::POST,
            ep,
            create(json!("x"), json!("http://h:99999")),
            Expect::Gateway(400, 3),
        ),
        case(
            "baseUrl javascript:",
            Method::POST,
            ep,
            create(json!("x"), json!("javascript:alert(1)")),
            Expect::Gateway(400, 3),
        ),
        case(
            "baseUrl missing",
            Method::POST,
            ep,
            r#"{"name":"x"}"#,
            Expect::Gateway(400, 3),
        ),
        case(
            "name empty",
            Method::POST,
            ep,
            create(json!(""), json!("http://h")),
            Expect::Gateway(400, 3),
        ),
        case(
            "name blank",
            Method::POST,
            ep,
            create(json!("   "), json!("http://h")),
            Expect::Gateway(400, 3),
        ),
        case(
            "name of 129 characters",
            Method::POST,
            ep,
            create(json!(long_name), json!("http://h")),
            Expect::Gateway(400, 3),
        ),
        case(
            "name with a newline",
            Method::POST,
            ep,
            create(json!("a\nb"), json!("http://h")),
            Expect::Gateway(400, 3),
        ),
        case(
            "duplicate name",
            Method::POST,
            ep,
            create(json!("taken"), json!("http://h")),
            Expect::Gateway(409, 6),
        ),
        case(
            "duplicate name after trimming",
            Method::POST,
            ep,
            create(json!(" taken "), json!("http://h")),
            Expect::Gateway(409, 6),
        ),
        case(
            "empty model name",
            Method::POST,
            ep,
            r#"{"name":"x","baseUrl":"http://h","models":[""]}"#,
            Expect::Gateway(400, 3),
        ),
        case(
            "model name of 257 characters",
            Method::POST,
            ep,
            json!({"name": "x", "baseUrl": "http://h", "models": ["m".repeat(257)]}).to_string(),
            Expect::Gateway(400, 3),
        ),
        case(
            "PATCH with a bad baseUrl",
            Method::PATCH,
            one.clone(),
            r#"{"baseUrl":"ftp://h"}"#,
            Expect::Gateway(400, 3),
        ),
        case(
            "PATCH with a wrong type",
            Method::PATCH,
            one.clone(),
            r#"{"name":["a"]}"#,
            Expect::Gateway(400, 3),
        ),
        case(
            "malformed UUID, GET",
            Method::GET,
            format!("{ep}/not-a-uuid"),
            "",
            Expect::Gateway(400, 3),
        ),
        case(
            "malformed UUID, PATCH",
            Method::PATCH,
            format!("{ep}/123"),
            "{}",
            Expect::Gateway(400, 3),
        ),
        case(
            "malformed UUID, DELETE",
            Method::DELETE,
            format!("{ep}/{}x", e.id),
            "",
            Expect::Gateway(400, 3),
        ),
        case(
            "malformed UUID, DELETE api key",
            Method::DELETE,
            "/api/api-keys/xyz",
            "",
            Expect::Gateway(400, 3),
        ),
        case(
            "unknown UUID",
            Method::GET,
            format!("{ep}/{}", uuid::Uuid::new_v4()),
            "",
            Expect::Gateway(404, 5),
        ),
        case(
            "unknown UUID, DELETE api key",
            Method::DELETE,
            format!("/api/api-keys/{}", uuid::Uuid::new_v4()),
            "",
            Expect::Gateway(404, 5),
        ),
        case(
            "api key without a name",
            Method::POST,
            "/api/api-keys",
            "{}",
            Expect::Gateway(400, 3),
        ),
        case(
            "unknown path",
            Method::GET,
            "/api/nope",
            "",
            Expect::Gateway(404, 5),
        ),
        case(
            "unknown sub-path",
            Method::GET,
            format!("{one}/extra"),
            "",
            Expect::Gateway(404, 5),
        ),
        case(
            "the proxy's path",
            Method::POST,
            "/v1/chat/completions",
            "{}",
            Expect::Gateway(404, 5),
        ),
        case(
            "PUT on a collection",
            Method::PUT,
            ep,
            "{}",
            Expect::Gateway(405, 12),
        ),
        case(
            "POST on a read-only view",
            Method::POST,
            "/api/dashboard/stats",
            "{}",
            Expect::Gateway(405, 12),
        ),
        case(
            "DELETE on the key list",
            Method::DELETE,
            "/api/api-keys",
            "",
            Expect::Gateway(405, 12),
        ),
        case(
            "PATCH on an api key",
            Method::PATCH,
            "/api/api-keys/x",
            "{}",
            Expect::Gateway(405, 12),
        ),
        case(
            "body over 1 MiB",
            Method::POST,
            ep,
            vec![b' '; (1 << 20) + 1],
            Expect::Gateway(413, 11),
        ),
    ];
    let n = run(&cp.http_url(), cases).await;
    assert_eq!(n, 39);

    // Nothing was created or changed; the keys list is empty.
    let listed = endpoints_client(&grpc)
        .list_endpoints(pb::ListEndpointsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.endpoints.len(), 1);
    assert_eq!(listed.endpoints[0].name, "taken");
    assert_eq!(listed.endpoints[0].base_url, "http://127.0.0.1:9");
    let keys: Value = get_json(format!("{}/api/api-keys", cp.http_url())).await;
    assert_eq!(keys["apiKeys"], json!([]));
}

/// gRPC: messages over tonic's 4 MiB decoding limit are refused with
/// OUT_OF_RANGE and a message that says so, on a unary call and on the
/// stats stream; bad records and a stream without its hello are refused;
/// nothing is stored.
#[tokio::test]
async fn grpc_refuses_oversized_messages_and_bad_records_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(ControlPlaneOptions::new(dir.path().join("llmlb.db")));
    let grpc = cp.grpc_url();
    let mut ec = endpoints_client(&grpc);

    // A 5 MiB CreateEndpoint.
    let err = ec
        .create_endpoint(pb::CreateEndpointRequest {
            name: "big".into(),
            base_url: "http://h".into(),
            api_key: Some("k".repeat(5 << 20)),
            models: vec![],
            health_path: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
    assert!(err.message().contains("too large"), "{err}");
    assert!(ec
        .list_endpoints(pb::ListEndpointsRequest {})
        .await
        .unwrap()
        .into_inner()
        .endpoints
        .is_empty());

    // Invalid arguments over gRPC too.
    let err = ec
        .get_endpoint(pb::GetEndpointRequest { id: "zzz".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = ec
        .create_endpoint(pb::CreateEndpointRequest {
            name: "x".into(),
            base_url: "gopher://h".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let e = create_endpoint(&grpc, "e", "http://127.0.0.1:9", &["m"]).await;

    // A stats batch over 4 MiB: the stream fails with OUT_OF_RANGE.
    let records: Vec<_> = (0..12_000)
        .map(|_| pb::RequestRecord {
            error: Some("e".repeat(400)),
            ..record(&e.id, now_ms(), 1, 1.0)
        })
        .collect();
    let status = stats_stream_error(&grpc, Some("big-proxy"), records).await;
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status}");
    assert!(status.message().contains("too large"), "{status}");

    // A stream that does not start with a hello.
    let status = stats_stream_error(&grpc, None, vec![record(&e.id, now_ms(), 1, 1.0)]).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");

    // Records with malformed ids are dropped (and logged), not stored.
    let bad = vec![
        pb::RequestRecord {
            request_id: "not-a-uuid".into(),
            ..record(&e.id, now_ms(), 1, 1.0)
        },
        record("not-an-endpoint", now_ms(), 1, 1.0),
    ];
    let ack = send_stats(&grpc, "p", 1, bad).await;
    assert_eq!(ack.applied, 0);

    let o = overview(&grpc).await;
    assert_eq!(o.stats.unwrap().total_requests, 0);
    assert_eq!(endpoint_stats(&o, &e.id).total_requests, 0);
}

/// Opens a stats stream, sends a hello (when `proxy_id` is given) and one
/// batch, and returns the error the stream ends with.
async fn stats_stream_error(
    grpc: &str,
    proxy_id: Option<&str>,
    records: Vec<pb::RequestRecord>,
) -> tonic::Status {
    use pb::stats_upload::Kind;
    let mut client = pb::stats_service_client::StatsServiceClient::new(channel(grpc));
    let mut messages = Vec::new();
    if let Some(id) = proxy_id {
        messages.push(pb::StatsUpload {
            kind: Some(Kind::Hello(pb::StatsHello {
                proxy_id: id.into(),
            })),
        });
    }
    messages.push(pb::StatsUpload {
        kind: Some(Kind::Batch(pb::StatsBatch {
            batch_id: 1,
            records,
        })),
    });
    // Keep the request stream open so only the server ends the call.
    let outbound = futures::stream::iter(messages).chain(futures::stream::pending());
    match client.stream_stats(outbound).await {
        Err(status) => status,
        Ok(response) => {
            let mut acks = response.into_inner();
            match tokio::time::timeout(Duration::from_secs(10), acks.message()).await {
                Ok(Err(status)) => status,
                other => panic!("expected the stream to fail, got {other:?}"),
            }
        }
    }
}

/// The value of a control plane metric line starting with `prefix`.
async fn control_metric(http_url: &str, prefix: &str) -> f64 {
    let text = http()
        .get(format!("{http_url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A backend reporting `prompt_tokens: 9223372036854775807` on two
/// requests: the counts over the per-record bound (2^40) are stored as 0
/// and counted in `/metrics`; the requests count; the control plane boots
/// again afterwards with the same figures.
#[tokio::test]
async fn absurd_token_counts_are_refused_counted_and_never_stop_boot() {
    let dir = tempfile::tempdir().unwrap();
    let options = ControlPlaneOptions::new(dir.path().join("llmlb.db"));
    let cp = ControlPlane::start(options.clone());
    let grpc = cp.grpc_url();
    let e = create_endpoint(&grpc, "e", "http://127.0.0.1:9", &["m"]).await;
    let absurd = |out| pb::RequestRecord {
        input_tokens: i64::MAX as u64,
        ..record(&e.id, now_ms(), out, 100.0)
    };
    assert_eq!(send_stats(&grpc, "p", 1, vec![absurd(7)]).await.applied, 1);
    assert_eq!(
        send_stats(&grpc, "p", 2, vec![absurd(u64::MAX)])
            .await
            .applied,
        1
    );
    let before = overview(&grpc).await;
    let stats = before.stats.unwrap();
    assert_eq!(
        (
            stats.total_requests,
            stats.total_input_tokens,
            stats.total_output_tokens
        ),
        (2, 0, 7)
    );
    assert_eq!(
        control_metric(
            &cp.http_url(),
            "llmlb_control_stats_values_rejected_total{reason=\"tokens\"}"
        )
        .await,
        3.0
    );
    let _ = cp.terminate();
    let cp = ControlPlane::restart_same(&options);
    let after = overview(&cp.grpc_url()).await;
    assert_eq!(after.stats.unwrap().total_requests, 2);
    assert_eq!(endpoint_stats(&after, &e.id).total_output_tokens, 7);
}

//! A minimal HTTP client over hyper's connection API, so tests control which
//! connection each request uses.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        Ok(Conn { sender })
    }

    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Option<&Value>,
    ) -> hyper::Result<Response<Incoming>> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "fake");
        if let Some(key) = auth {
            builder = builder.header("authorization", format!("Bearer {key}"));
        }
        let bytes = match body {
            Some(body) => {
                builder = builder.header("content-type", "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        self.sender.ready().await?;
        self.sender
            .send_request(builder.body(Full::new(bytes)).unwrap())
            .await
    }

    pub async fn send_raw(&mut self, path: &str, body: &'static str) -> Reply {
        let request = Request::post(path)
            .header("host", "fake")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        self.sender.ready().await.unwrap();
        Reply::read(self.sender.send_request(request).await.unwrap()).await
    }

    pub async fn get(&mut self, path: &str, auth: Option<&str>) -> Reply {
        Reply::read(self.send(Method::GET, path, auth, None).await.unwrap()).await
    }

    pub async fn post(&mut self, path: &str, auth: Option<&str>, body: &Value) -> Reply {
        Reply::read(
            self.send(Method::POST, path, auth, Some(body))
                .await
                .unwrap(),
        )
        .await
    }
}

/// A whole response, body frames kept apart.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub retry_after: Option<String>,
    pub location: Option<String>,
    pub frames: Vec<Bytes>,
}

impl Reply {
    pub async fn read(response: Response<Incoming>) -> Reply {
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let location = response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned());
        let mut body = response.into_body();
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                frames.push(data);
            }
        }
        Reply {
            status,
            content_type,
            retry_after,
            location,
            frames,
        }
    }

    pub fn text(&self) -> String {
        let bytes: Vec<u8> = self.frames.iter().flat_map(|f| f.iter().copied()).collect();
        String::from_utf8(bytes).unwrap()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text()).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }

    /// Server-sent events as (event name, data) pairs.
    pub fn events(&self) -> Vec<(Option<String>, String)> {
        self.text()
            .split("\n\n")
            .filter(|block| !block.is_empty())
            .map(|block| {
                let mut event = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event: ") {
                        event = Some(name.to_owned());
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = Some(d.to_owned());
                    } else {
                        panic!("unexpected SSE line {line:?}");
                    }
                }
                (event, data.expect("SSE block without data"))
            })
            .collect()
    }

    /// `data:` payloads of an OpenAI chat / completions stream, up to and
    /// excluding `[DONE]`, parsed; panics unless the stream ends with `[DONE]`.
    pub fn chunks(&self) -> Vec<Value> {
        let events = self.events();
        let (last, rest) = events.split_last().expect("empty stream");
        assert_eq!(last.1, "[DONE]", "stream must end with [DONE]");
        rest.iter()
            .map(|(_, data)| serde_json::from_str(data).unwrap())
            .collect()
    }
}

pub async fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> Reply {
    Conn::open(addr).await.unwrap().get(path, auth).await
}

pub async fn post(addr: SocketAddr, path: &str, auth: Option<&str>, body: &Value) -> Reply {
    Conn::open(addr).await.unwrap().post(path, auth, body).await
}

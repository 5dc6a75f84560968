//! A bare HTTP/1.1 keep-alive client connection on hyper: no pool, no
//! redirects, no decompression — the least client-side work per request, so
//! the latency measured is the server's.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One keep-alive connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    /// Connects (TCP_NODELAY) and drives the connection in a task.
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender })
    }

    /// Sends a request; returns the response with its body unread.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>> {
        self.sender.ready().await?;
        Ok(self.sender.send_request(req).await?)
    }

    /// Sends a request and reads the whole body; returns status and body length.
    pub async fn call(&mut self, req: Request<Full<Bytes>>) -> Result<(u16, usize)> {
        let resp = self.send(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body.len()))
    }
}

/// `POST path` (origin form) to `addr` with a JSON body.
pub fn post(addr: SocketAddr, path: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::post(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .expect("valid request")
}

/// `GET path` (origin form) to `addr`.
pub fn get(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))
        .expect("valid request")
}

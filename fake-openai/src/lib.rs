#![forbid(unsafe_code)]
//! A fake OpenAI-compatible backend for tests and benchmarks.
//!
//! Serves `GET /v1/models`, `POST /v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings` and `/v1/responses` (streaming and not) with configurable
//! latency, token count and token rate, and injectable failures ([`FakeMode`]).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use llmlb_fake_openai::{FakeConfig, FakeServer};
//! let server = FakeServer::start(FakeConfig::default()).await?;
//! let url = format!("{}/v1/chat/completions", server.base_url());
//! # let _ = url;
//! server.stop().await;
//! # Ok(()) }
//! ```
//!
//! Timing: `latency` passes before the response headers on every route. A
//! stream then sends one frame per token, each after `token_interval`; a
//! non-streaming reply waits `tokens * token_interval` before its headers.

mod body;
mod config;
mod handler;
mod openai;
mod server;
mod state;

pub use config::{FakeConfig, FakeMode, Habits};
pub use server::FakeServer;
pub use state::RecordedRequest;

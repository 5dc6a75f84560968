//! llmlb control plane: endpoint registry, SQLite persistence, health
//! checks, the stats writer and the LoadManager, served over gRPC and a
//! REST/JSON gateway. See `docs/architecture.md`.
#![forbid(unsafe_code)]

pub mod api_keys;
pub mod app;
pub mod config;
pub mod db;
pub mod events;
pub mod grpc;
pub mod health;
pub mod ingest;
pub mod load;
pub mod metrics;
pub mod registry;
pub mod rest;
pub mod restore;
pub mod tls;
pub mod types;

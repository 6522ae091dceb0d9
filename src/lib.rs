//! maskserve: Mask R-CNN inference — ONNX Runtime (or tract, feature `tract`) graphs for the
//! dense work, Rust for the data-dependent stages (anchors, proposals, NMS, mask paste,
//! encoding).
//!
//! `config` (every setting) → `loader` (runtime, manifest, backends) → `engine` (CPU pool,
//! batcher, backend threads) running `pipeline` (the model: `detection` stages between the
//! `backend`'s graphs, `encode` for the masks) → `server` (HTTP).

pub mod backend;
pub mod config;
pub mod decode;
pub mod detection;
pub mod encode;
pub mod engine;
pub mod loader;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod models;
pub mod pipeline;
pub mod server;
pub mod types;

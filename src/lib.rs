//! maskserve: Mask R-CNN inference — ONNX Runtime graphs for the dense work, Rust for the
//! data-dependent stages (anchors, proposals, NMS, mask paste, encoding).

pub mod anchors;
pub mod box_coder;
pub mod decode;
pub mod logging;
pub mod model;
pub mod nms;
pub mod paste;
pub mod pipeline;
pub mod polygons;
pub mod rle;
pub mod roi_heads;
pub mod rpn;
pub mod runtime;
pub mod server;
pub mod server_args;
pub mod transform;
pub mod types;

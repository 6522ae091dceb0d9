//! maskserve: Mask R-CNN inference — ONNX Runtime graphs for the dense work, Rust for the
//! data-dependent stages (anchors, proposals, NMS, mask paste, encoding).

pub mod types;

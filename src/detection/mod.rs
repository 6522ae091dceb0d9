//! The data-dependent stages of Mask R-CNN in Rust, one file per stage as in torchvision's
//! detection package: `transform` (GeneralizedRCNNTransform), `anchors` and `rpn`
//! (RegionProposalNetwork), `box_coder`, `nms`, `roi_heads` (RoIHeads.postprocess_detections)
//! `poolers` (MultiScaleRoIAlign) and `paste` (paste_masks_in_image).

pub mod anchors;
pub mod box_coder;
pub mod nms;
pub mod paste;
pub mod poolers;
pub mod roi_heads;
pub mod rpn;
pub mod tiling;
pub mod transform;

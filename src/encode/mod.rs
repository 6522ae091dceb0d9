//! Mask encodings of the responses: COCO RLE, polygons, PNG.

pub mod png;
pub mod polygons;
pub mod rle;

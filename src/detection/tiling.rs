//! Tiled inference for images far larger than the model's input: the image is cut into
//! overlapping tiles of one size (so they batch together), each tile runs at the model's own
//! scale, and the detections, mapped back to image coordinates, are merged across tiles.
//!
//! The merge, in order of (seen whole first, then score). Two detections from different tiles
//! are the same object when their boxes, clipped to the part of the image both tiles see,
//! overlap by IoU above the model's NMS threshold: in that shared part both tiles saw the same
//! pixels, so one object gives nearly the same clipped box twice, while two objects side by
//! side do not. A detection seen whole that matches a kept one of its class is a duplicate and
//! dropped (per class, as the model's own NMS). A detection cut by a tile border (its box
//! touches an edge of its tile that is not an edge of the image) is only part of an object,
//! and its class is unreliable (half a circle looks like a square): it is matched whatever the
//! classes. Matched to a detection seen whole, it is dropped; matched to another cut one, the
//! two are united (box and mask union, the class of the better-scoring piece), which is how an
//! object larger than the overlap, seen whole by no tile, comes out as one detection.
//! Detections of the same tile are never merged: the model's own NMS already separated them.

use super::nms::box_iou;
use super::roi_heads::RawDetection;
use crate::types::Tiling;

/// A tile: `[x0, x0 + width) × [y0, y0 + height)` of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    pub x0: usize,
    pub y0: usize,
    pub width: usize,
    pub height: usize,
}

/// Distance from a tile's inner edge within which a box counts as cut by it: a box regressed
/// onto an object the border cuts can stop a few pixels short of the border.
fn cut_margin(tile: Tile) -> f32 {
    (tile.width.min(tile.height) as f32 / 32.0).max(4.0)
}

/// Start offsets along one axis: every `stride`, the last tile flush with the end.
fn starts(len: usize, size: usize, stride: usize) -> Vec<usize> {
    if len <= size {
        return vec![0];
    }
    let mut v: Vec<usize> = (0..)
        .map(|i| i * stride)
        .take_while(|&s| s + size < len)
        .collect();
    v.push(len - size);
    v.dedup();
    v
}

/// The tiles covering an `h × w` image, row by row. Every tile has the same size (the image's
/// side where it is smaller than the tile), so all of them share one padded input shape.
pub fn grid(h: usize, w: usize, t: Tiling) -> Vec<Tile> {
    let stride = t.size.saturating_sub(t.overlap).max(1);
    let (th, tw) = (t.size.min(h), t.size.min(w));
    let mut tiles = Vec::new();
    for y0 in starts(h, t.size, stride) {
        for x0 in starts(w, t.size, stride) {
            tiles.push(Tile {
                x0,
                y0,
                width: tw,
                height: th,
            });
        }
    }
    tiles
}

/// One detection of one tile, in image coordinates, with its mask probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct TileDetection {
    pub det: RawDetection,
    pub probs: Vec<f32>,
    pub tile: Tile,
    /// A border of its tile inside the image cuts the box.
    pub cut: bool,
}

impl TileDetection {
    /// Moves a detection of `tile` (tile coordinates) into the image (`h × w`).
    pub fn new(mut det: RawDetection, probs: Vec<f32>, tile: Tile, h: usize, w: usize) -> Self {
        let [x1, y1, x2, y2] = det.bbox;
        let (tx1, ty1) = (tile.x0 as f32, tile.y0 as f32);
        let (tx2, ty2) = (tx1 + tile.width as f32, ty1 + tile.height as f32);
        det.bbox = [x1 + tx1, y1 + ty1, x2 + tx1, y2 + ty1];
        let [x1, y1, x2, y2] = det.bbox;
        let margin = cut_margin(tile);
        let cut = (tile.x0 > 0 && x1 <= tx1 + margin)
            || (tile.y0 > 0 && y1 <= ty1 + margin)
            || (tile.x0 + tile.width < w && x2 >= tx2 - margin)
            || (tile.y0 + tile.height < h && y2 >= ty2 - margin);
        TileDetection {
            det,
            probs,
            tile,
            cut,
        }
    }
}

/// One tile's view of a merged detection.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub bbox: [f32; 4],
    pub probs: Vec<f32>,
    pub tile: Tile,
}

/// A detection of the whole image: the box (a union when pieces were united) and the pieces
/// whose masks make up its mask.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub det: RawDetection,
    pub parts: Vec<Part>,
    /// Seen whole by one tile.
    pub whole: bool,
}

fn clip(b: &[f32; 4], r: &[f32; 4]) -> [f32; 4] {
    [
        b[0].max(r[0]),
        b[1].max(r[1]),
        b[2].min(r[2]),
        b[3].min(r[3]),
    ]
}

fn positive(b: &[f32; 4]) -> bool {
    b[2] > b[0] && b[3] > b[1]
}

/// Whether detection `a` of tile `ta` and `b` of tile `tb` are one object (module docs).
fn same_object(a: &[f32; 4], ta: Tile, b: &[f32; 4], tb: Tile, thresh: f64) -> bool {
    if ta == tb {
        return false;
    }
    let rect = |t: Tile| {
        [
            t.x0 as f32,
            t.y0 as f32,
            (t.x0 + t.width) as f32,
            (t.y0 + t.height) as f32,
        ]
    };
    let shared = clip(&rect(ta), &rect(tb));
    if !positive(&shared) {
        return false;
    }
    let (ca, cb) = (clip(a, &shared), clip(b, &shared));
    positive(&ca) && positive(&cb) && f64::from(box_iou(&ca, &cb)) > thresh
}

/// Merges the detections of all tiles (see the module docs); at most `max` detections, best
/// score first.
pub fn merge(mut dets: Vec<TileDetection>, nms_thresh: f64, max: usize) -> Vec<Merged> {
    dets.sort_by(|a, b| a.cut.cmp(&b.cut).then(b.det.score.total_cmp(&a.det.score)));
    let mut kept: Vec<Merged> = Vec::new();
    for d in dets {
        let host = kept.iter_mut().find(|m| {
            (d.cut || m.det.label == d.det.label)
                && m.parts
                    .iter()
                    .any(|p| same_object(&d.det.bbox, d.tile, &p.bbox, p.tile, nms_thresh))
        });
        let part = Part {
            bbox: d.det.bbox,
            probs: d.probs,
            tile: d.tile,
        };
        match host {
            // A duplicate of, or a piece of, an object some tile saw whole.
            Some(m) if m.whole || !d.cut => {}
            Some(m) => {
                let b = &mut m.det.bbox;
                let o = part.bbox;
                *b = [
                    b[0].min(o[0]),
                    b[1].min(o[1]),
                    b[2].max(o[2]),
                    b[3].max(o[3]),
                ];
                m.det.score = m.det.score.max(d.det.score);
                m.parts.push(part);
            }
            None => kept.push(Merged {
                det: d.det,
                parts: vec![part],
                whole: !d.cut,
            }),
        }
    }
    kept.sort_by(|a, b| b.det.score.total_cmp(&a.det.score));
    kept.truncate(max);
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(bbox: [f32; 4], score: f32, label: usize) -> RawDetection {
        RawDetection { bbox, score, label }
    }

    #[test]
    fn grid_covers_the_image_with_equal_tiles() {
        let t = Tiling {
            size: 100,
            overlap: 20,
        };
        let tiles = grid(250, 180, t);
        let ys: Vec<usize> = tiles.iter().map(|t| t.y0).collect();
        assert_eq!(ys, [0, 0, 80, 80, 150, 150]);
        assert_eq!(tiles[1].x0, 80);
        assert!(tiles.iter().all(|t| t.width == 100 && t.height == 100));
        // Smaller than a tile: one tile, the image itself.
        assert_eq!(
            grid(60, 90, t),
            [Tile {
                x0: 0,
                y0: 0,
                width: 90,
                height: 60
            }]
        );
        // Exactly one tile wide: no second column.
        assert_eq!(grid(100, 100, t).len(), 1);
    }

    #[test]
    fn cut_is_only_an_inner_border() {
        let tile = Tile {
            x0: 80,
            y0: 0,
            width: 100,
            height: 100,
        };
        // Touches the tile's left edge (inside the image): cut.
        let d = TileDetection::new(det([0.5, 10.0, 30.0, 40.0], 0.9, 1), vec![], tile, 100, 300);
        assert!(d.cut);
        assert_eq!(d.det.bbox, [80.5, 10.0, 110.0, 40.0]);
        // Touches the top edge, which is the image's: not cut.
        let d = TileDetection::new(det([20.0, 0.0, 30.0, 40.0], 0.9, 1), vec![], tile, 100, 300);
        assert!(!d.cut);
        // Stops 3 px short of the right edge (inside the image): cut all the same.
        let d = TileDetection::new(
            det([50.0, 10.0, 97.0, 40.0], 0.9, 1),
            vec![],
            tile,
            100,
            300,
        );
        assert!(d.cut);
    }

    #[test]
    fn duplicates_and_pieces_merge_into_one() {
        // Two tiles side by side, overlapping on x in [80, 100).
        let left = Tile {
            x0: 0,
            y0: 0,
            width: 100,
            height: 100,
        };
        let right = Tile { x0: 80, ..left };
        let td = |b, s, label, tile, cut| TileDetection {
            det: det(b, s, label),
            probs: vec![s],
            tile,
            cut,
        };
        let merged = merge(
            vec![
                // An object inside the overlap, seen whole by both tiles.
                td([82.0, 10.0, 95.0, 30.0], 0.8, 1, left, false),
                td([82.5, 10.0, 95.0, 30.5], 0.9, 1, right, false),
                // An object cut by the left tile's border, whole in the right tile: the
                // higher-scoring piece is dropped.
                td([90.0, 50.0, 100.0, 60.0], 0.95, 1, left, true),
                td([90.0, 50.0, 110.0, 60.0], 0.7, 1, right, false),
                // A piece of the same object taken for another class: dropped too.
                td([90.0, 50.0, 100.0, 60.0], 0.6, 2, left, true),
                // Whole, another class, at the place of the first: kept (per-class NMS).
                td([82.0, 10.0, 95.0, 30.0], 0.4, 2, left, false),
                // An object wider than the overlap, cut in both tiles: united.
                td([40.0, 70.0, 100.0, 90.0], 0.6, 1, left, true),
                td([80.0, 70.0, 150.0, 90.0], 0.65, 3, right, true),
                // Next to it in the left tile, a distinct object of the same class.
                td([84.0, 92.0, 100.0, 99.0], 0.5, 1, left, true),
            ],
            0.5,
            100,
        );
        let boxes: Vec<[f32; 4]> = merged.iter().map(|m| m.det.bbox).collect();
        assert_eq!(merged.len(), 5, "{boxes:?}");
        assert_eq!(merged[0].det.bbox, [82.5, 10.0, 95.0, 30.5]);
        assert!(boxes.contains(&[90.0, 50.0, 110.0, 60.0]));
        let united = merged.iter().find(|m| m.parts.len() == 2).unwrap();
        assert_eq!(united.det.bbox, [40.0, 70.0, 150.0, 90.0]);
        assert_eq!((united.det.score, united.det.label), (0.65, 3));
        assert!(merged.iter().any(|m| m.det.label == 2));
        assert!(boxes.contains(&[84.0, 92.0, 100.0, 99.0]));
    }
}

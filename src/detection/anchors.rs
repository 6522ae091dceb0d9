//! torchvision's `AnchorGenerator`: cell anchors per level, shifted over each feature map with
//! stride `padded_size // feature_size`; anchors ordered (y, x, a).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Base anchors of one level, as `generate_anchors` in float32: ratio-major, scale-minor,
/// `round([-ws, -hs, ws, hs] / 2)` with round-half-to-even like `torch.round`.
pub fn cell_anchors(sizes: &[f64], aspect_ratios: &[f64]) -> Vec<[f32; 4]> {
    let mut out = Vec::with_capacity(sizes.len() * aspect_ratios.len());
    for &r in aspect_ratios {
        let h_ratio = (r as f32).sqrt();
        let w_ratio = 1.0 / h_ratio;
        for &s in sizes {
            let ws = w_ratio * s as f32;
            let hs = h_ratio * s as f32;
            out.push([
                (-ws / 2.0).round_ties_even(),
                (-hs / 2.0).round_ties_even(),
                (ws / 2.0).round_ties_even(),
                (hs / 2.0).round_ties_even(),
            ]);
        }
    }
    out
}

/// Anchors of one level over a `(fh, fw)` feature map of a `(ph, pw)` padded batch.
pub fn grid_anchors(
    cell: &[[f32; 4]],
    feat: (usize, usize),
    padded: (usize, usize),
) -> Vec<[f32; 4]> {
    let (fh, fw) = feat;
    let sy = (padded.0 / fh.max(1)) as f32;
    let sx = (padded.1 / fw.max(1)) as f32;
    let mut out = Vec::with_capacity(fh * fw * cell.len());
    for y in 0..fh {
        for x in 0..fw {
            let (shx, shy) = (x as f32 * sx, y as f32 * sy);
            for c in cell {
                out.push([shx + c[0], shy + c[1], shx + c[2], shy + c[3]]);
            }
        }
    }
    out
}

type Key = ((usize, usize), Vec<(usize, usize)>);
/// Anchors of every level, (y, x, a) order.
pub type LevelAnchors = Arc<Vec<Vec<[f32; 4]>>>;

/// Anchors cached per (padded size, feature-map sizes): images of one size share them.
pub struct AnchorGenerator {
    cells: Vec<Vec<[f32; 4]>>,
    cache: Mutex<HashMap<Key, LevelAnchors>>,
}

/// Bounds the cache; a server sees a handful of sizes, a hostile client could send many.
const MAX_CACHED: usize = 64;

impl AnchorGenerator {
    pub fn new(sizes: &[Vec<f64>], aspect_ratios: &[Vec<f64>]) -> Self {
        Self {
            cells: sizes
                .iter()
                .zip(aspect_ratios)
                .map(|(s, r)| cell_anchors(s, r))
                .collect(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn num_anchors_per_location(&self) -> Vec<usize> {
        self.cells.iter().map(Vec::len).collect()
    }

    /// Anchors per level for one image of the batch (all images share them).
    pub fn anchors(&self, padded: (usize, usize), feats: &[(usize, usize)]) -> LevelAnchors {
        let key = (padded, feats.to_vec());
        if let Ok(c) = self.cache.lock() {
            if let Some(a) = c.get(&key) {
                return a.clone();
            }
        }
        let a: LevelAnchors = Arc::new(
            self.cells
                .iter()
                .zip(feats)
                .map(|(cell, &f)| grid_anchors(cell, f, padded))
                .collect(),
        );
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= MAX_CACHED {
                c.clear();
            }
            c.insert(key, a.clone());
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_anchors_match_torchvision() {
        // torchvision AnchorGenerator(((32,),), ((0.5, 1.0, 2.0),)).cell_anchors[0]
        let a = cell_anchors(&[32.0], &[0.5, 1.0, 2.0]);
        assert_eq!(
            a,
            vec![
                [-23.0, -11.0, 23.0, 11.0],
                [-16.0, -16.0, 16.0, 16.0],
                [-11.0, -23.0, 11.0, 23.0]
            ]
        );
        // sizes (16,) ratio 0.5: ws = 16/sqrt(.5) = 22.627 → ±11.31 → 11; hs = 11.31 → ±5.66 → 6
        assert_eq!(cell_anchors(&[16.0], &[0.5])[0], [-11.0, -6.0, 11.0, 6.0]);
    }

    #[test]
    fn grid_order_is_y_x_a() {
        let cell = vec![[-1.0, -1.0, 1.0, 1.0], [-2.0, -2.0, 2.0, 2.0]];
        let g = grid_anchors(&cell, (2, 3), (64, 96));
        assert_eq!(g.len(), 12);
        // stride 32: (y=0,x=1,a=0) at index 2, (y=1,x=0,a=1) at index 7
        assert_eq!(g[2], [31.0, -1.0, 33.0, 1.0]);
        assert_eq!(g[7], [-2.0, 30.0, 2.0, 34.0]);
    }

    #[test]
    fn pool_level_stride_is_integer_division() {
        // 96 // 2 = 48, not 64: torchvision's stride for an odd pooled size.
        let g = grid_anchors(&[[0.0; 4]], (2, 2), (96, 96));
        assert_eq!(g[3], [48.0, 48.0, 48.0, 48.0]);
    }

    #[test]
    fn cache_returns_same() {
        let g = AnchorGenerator::new(&[vec![32.0]], &[vec![1.0]]);
        let a = g.anchors((64, 64), &[(2, 2)]);
        let b = g.anchors((64, 64), &[(2, 2)]);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(g.num_anchors_per_location(), vec![1]);
    }
}

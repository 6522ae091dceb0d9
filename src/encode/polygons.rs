//! Outer contours of a binary mask, simplified with Douglas-Peucker, as flat `[x0, y0, …]` lists.

use image::GrayImage;
use imageproc::contours::{find_contours, BorderType};
use imageproc::geometry::approximate_polygon_dp;
use imageproc::point::Point;

use crate::detection::paste::PastedMask;

/// Douglas-Peucker tolerance in pixels.
pub const EPSILON: f64 = 1.0;

pub fn polygons(m: &PastedMask) -> Vec<Vec<f32>> {
    // Work on the window plus a 1-pixel border (or the whole image when the outside is set) so
    // contour tracing stays proportional to the object.
    let (x0, y0, x1, y1) = if m.outside == 0 {
        if m.window.iter().all(|&v| v == 0) {
            return Vec::new();
        }
        (
            m.x0.saturating_sub(1),
            m.y0.saturating_sub(1),
            (m.x1 + 1).min(m.width),
            (m.y1 + 1).min(m.height),
        )
    } else {
        (0, 0, m.width, m.height)
    };
    let (w, h) = (x1 - x0, y1 - y0);
    let img = GrayImage::from_fn(w as u32, h as u32, |x, y| {
        image::Luma([m.get(x as usize + x0, y as usize + y0) * 255])
    });
    find_contours::<i32>(&img)
        .into_iter()
        .filter(|c| c.border_type == BorderType::Outer)
        .map(|c| {
            let pts = if c.points.len() > 2 {
                approximate_polygon_dp(&c.points, EPSILON, true)
            } else {
                c.points
            };
            pts.iter()
                .flat_map(|p: &Point<i32>| [(p.x + x0 as i32) as f32, (p.y + y0 as i32) as f32])
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_has_four_corners() {
        let m = PastedMask {
            height: 10,
            width: 10,
            x0: 2,
            y0: 3,
            x1: 6,
            y1: 7,
            window: vec![1; 16],
            outside: 0,
        };
        let p = polygons(&m);
        assert_eq!(p.len(), 1);
        let mut xs: Vec<f32> = p[0].iter().step_by(2).copied().collect();
        xs.sort_by(f32::total_cmp);
        assert_eq!((xs[0], xs[xs.len() - 1]), (2.0, 5.0));
        assert_eq!(p[0].len(), 8, "{p:?}");
    }

    #[test]
    fn empty_mask_has_none() {
        let m = PastedMask {
            height: 4,
            width: 4,
            x0: 0,
            y0: 0,
            x1: 2,
            y1: 2,
            window: vec![0; 4],
            outside: 0,
        };
        assert!(polygons(&m).is_empty());
    }
}

//! COCO run-length encoding: column-major runs starting with zeros, and pycocotools' compressed
//! counts string (`rleToString` / `rleFrString` in maskApi.c).

use crate::detection::paste::PastedMask;
use crate::types::Rle;

/// Accumulates runs in column-major order.
#[derive(Debug, Default)]
pub struct RunBuilder {
    counts: Vec<u64>,
    current: u8,
    run: u64,
}

impl RunBuilder {
    pub fn push(&mut self, value: u8, len: u64) {
        if len == 0 {
            return;
        }
        if value != self.current {
            self.counts.push(self.run);
            self.current = value;
            self.run = 0;
        }
        self.run += len;
    }

    pub fn finish(mut self) -> Vec<u64> {
        self.counts.push(self.run);
        self.counts
    }
}

/// Runs of a dense row-major `h × w` 0/1 mask, column-major.
pub fn runs_from_dense(mask: &[u8], h: usize, w: usize) -> Vec<u64> {
    let mut b = RunBuilder::default();
    for x in 0..w {
        for y in 0..h {
            b.push(u8::from(mask[y * w + x] != 0), 1);
        }
    }
    b.finish()
}

/// Runs of a pasted mask without materialising the full image.
pub fn runs_from_pasted(m: &PastedMask) -> Vec<u64> {
    let mut b = RunBuilder::default();
    let ww = m.x1 - m.x0;
    for x in 0..m.width {
        if x < m.x0 || x >= m.x1 {
            b.push(m.outside, m.height as u64);
            continue;
        }
        b.push(m.outside, m.y0 as u64);
        for y in m.y0..m.y1 {
            b.push(m.window[(y - m.y0) * ww + (x - m.x0)], 1);
        }
        b.push(m.outside, (m.height - m.y1) as u64);
    }
    b.finish()
}

/// pycocotools' compressed string: each count (minus the count two before it, from the third on)
/// as 5-bit groups, little-end first, 0x20 = more, offset by 48.
pub fn counts_to_string(counts: &[u64]) -> String {
    let mut s = String::new();
    for (i, &c) in counts.iter().enumerate() {
        let mut x = c as i64;
        if i > 2 {
            x -= counts[i - 2] as i64;
        }
        loop {
            let mut ch = x & 0x1f;
            x >>= 5;
            let more = if ch & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                ch |= 0x20;
            }
            s.push((ch as u8 + 48) as char);
            if !more {
                break;
            }
        }
    }
    s
}

/// Inverse of [`counts_to_string`].
pub fn string_to_counts(s: &str) -> Result<Vec<u64>, String> {
    let bytes = s.as_bytes();
    let mut counts: Vec<i64> = Vec::new();
    let mut p = 0;
    while p < bytes.len() {
        let mut x: i64 = 0;
        let mut k = 0;
        loop {
            let c = i64::from(bytes.get(p).ok_or("truncated RLE string")?.wrapping_sub(48));
            if k > 12 {
                return Err("RLE count too long".into());
            }
            x |= (c & 0x1f) << (5 * k);
            let more = c & 0x20 != 0;
            p += 1;
            k += 1;
            if !more {
                if c & 0x10 != 0 {
                    x |= -1i64 << (5 * k);
                }
                break;
            }
        }
        if counts.len() > 2 {
            x += counts[counts.len() - 2];
        }
        if x < 0 {
            return Err("negative RLE count".into());
        }
        counts.push(x);
    }
    Ok(counts.into_iter().map(|c| c as u64).collect())
}

pub fn encode_pasted(m: &PastedMask) -> Rle {
    Rle {
        size: [m.height as u32, m.width as u32],
        counts: counts_to_string(&runs_from_pasted(m)),
    }
}

pub fn encode_dense(mask: &[u8], h: usize, w: usize) -> Rle {
    Rle {
        size: [h as u32, w as u32],
        counts: counts_to_string(&runs_from_dense(mask, h, w)),
    }
}

/// Decodes to a row-major 0/1 mask.
pub fn decode(rle: &Rle) -> Result<Vec<u8>, String> {
    let (h, w) = (rle.size[0] as usize, rle.size[1] as usize);
    let counts = string_to_counts(&rle.counts)?;
    let mut out = vec![0u8; h * w];
    let mut pos = 0usize;
    let mut v = 0u8;
    for c in counts {
        let end = pos + c as usize;
        if end > h * w {
            return Err("RLE longer than the mask".into());
        }
        if v == 1 {
            for i in pos..end {
                // column-major index i → (x = i / h, y = i % h)
                out[(i % h) * w + i / h] = 1;
            }
        }
        pos = end;
        v ^= 1;
    }
    if pos != h * w {
        return Err(format!("RLE covers {pos} of {} pixels", h * w));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors_from_pycocotools() {
        // mask = np.zeros((3,4)); mask[1,1:3] = 1 → Fortran runs [4,1,2,1,4]
        // pycocotools.mask.encode(np.asfortranarray(mask))["counts"] == b"41202"
        let mut m = vec![0u8; 12];
        m[5] = 1;
        m[6] = 1;
        let runs = runs_from_dense(&m, 3, 4);
        assert_eq!(runs, vec![4, 1, 2, 1, 4]);
        // 4→'4', 1→'1', 2→'2', 1-1=0→'0', 4-2=2→'2'
        assert_eq!(counts_to_string(&runs), "41202");
        // Large and negative differences use continuation groups (values from pycocotools).
        assert_eq!(counts_to_string(&[0, 100]), "0T3");
        assert_eq!(counts_to_string(&[5, 5, 5, 1]), "555L");
        assert_eq!(counts_to_string(&[0, 1, 40, 1]), "01X10");
        // All ones starts with a zero run.
        assert_eq!(runs_from_dense(&[1, 1], 1, 2), vec![0, 2]);
    }

    #[test]
    fn roundtrip() {
        let mut seed = 7u64;
        for &(h, w) in &[(1, 1), (5, 7), (64, 33), (200, 300)] {
            let mask: Vec<u8> = (0..h * w)
                .map(|i| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    u8::from((seed >> 60) < 5 || (i % 97) < 40)
                })
                .collect();
            let rle = encode_dense(&mask, h, w);
            assert_eq!(decode(&rle).unwrap(), mask);
            assert_eq!(
                string_to_counts(&rle.counts).unwrap(),
                runs_from_dense(&mask, h, w)
            );
        }
    }

    #[test]
    fn pasted_equals_dense() {
        let p = PastedMask {
            height: 4,
            width: 5,
            x0: 1,
            y0: 1,
            x1: 3,
            y1: 4,
            window: vec![1, 0, 1, 1, 0, 1],
            outside: 0,
        };
        assert_eq!(runs_from_pasted(&p), runs_from_dense(&p.to_dense(), 4, 5));
        let q = PastedMask { outside: 1, ..p };
        assert_eq!(runs_from_pasted(&q), runs_from_dense(&q.to_dense(), 4, 5));
    }

    #[test]
    fn rejects_bad_strings() {
        let bad = Rle {
            size: [2, 2],
            counts: "9".into(),
        };
        assert!(decode(&bad).is_err());
    }
}

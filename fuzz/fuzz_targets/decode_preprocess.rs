//! The image path of a request before the graphs: decode (every format, EXIF orientation, the
//! pixel limit checked on the header) → normalise + resize → pad into a batch.
//!
//! Calls `decode_unguarded`, so a panic inside a decoder shows up here (the server's `decode`
//! turns one into a 400). The pixel limit is small (256 × 256) to keep iterations fast; the
//! resize targets are small too.
//! Invariants: no panic; the output sizes follow the header and the resize rule; all values
//! finite; the batch is padded to the divisor.

#![no_main]

use libfuzzer_sys::fuzz_target;
use maskserve::decode::decode_unguarded;
use maskserve::model::Preprocess;
use maskserve::detection::transform::{batch_images, normalize_and_resize, resized_size};
use maskserve::types::PredictError;

const MAX_PIXELS: u64 = 256 * 256;

fuzz_target!(|data: &[u8]| {
    let img = match decode_unguarded(data, MAX_PIXELS) {
        Ok(img) => img,
        Err(PredictError::TooManyPixels { width, height, .. }) => {
            assert!(u64::from(width) * u64::from(height) > MAX_PIXELS);
            return;
        }
        Err(_) => return,
    };
    assert!(img.width >= 1 && img.height >= 1);
    assert!((img.width * img.height) as u64 <= MAX_PIXELS);
    assert_eq!(img.data.len(), img.width * img.height * 3);

    let p = Preprocess {
        channel_order: "RGB".into(),
        value_scale: 255.0,
        mean: vec![0.485, 0.456, 0.406],
        std: vec![0.229, 0.224, 0.225],
        min_size: 64,
        max_size: 96,
        size_divisible: 32,
    };
    let r = normalize_and_resize(&img.data, img.height, img.width, &p);
    assert_eq!(
        (r.height, r.width),
        resized_size(img.height, img.width, p.min_size, p.max_size)
    );
    assert!(r.height >= 1 && r.width >= 1 && r.height.max(r.width) <= 96);
    assert_eq!(r.data.len(), 3 * r.height * r.width);
    assert!(r.data.iter().all(|v| v.is_finite()));
    let b = batch_images(&[r], p.size_divisible);
    assert_eq!((b.height % 32, b.width % 32), (0, 0));
    assert_eq!(b.data.len(), 3 * b.height * b.width);
});

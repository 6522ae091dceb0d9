//! Decode + resize of JPEGs: the `image` crate with maskserve's normalise-and-resize (what
//! `maskserve` does today) against OpenCV (system libopencv through the `opencv` crate).
//! Prints the median milliseconds per image of each method, one JSON line.
//!
//! Usage: decode-bench [--reps N] [--min-size 800] [--max-size 1333] IMG.jpg…

use std::io::Cursor;
use std::time::Instant;

use opencv::core::{Mat, Size, Vec3f, CV_32FC3};
use opencv::prelude::*;
use opencv::{imgcodecs, imgproc};

const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// maskserve's decode (src/decode.rs without the EXIF / limit checks): RGB8, interleaved.
fn image_decode(bytes: &[u8]) -> (Vec<u8>, usize, usize) {
    let img = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .unwrap()
        .decode()
        .unwrap()
        .to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    (img.into_raw(), h, w)
}

fn resized_size(h: usize, w: usize, min_size: f64, max_size: f64) -> (usize, usize) {
    let scale = (min_size / h.min(w) as f64).min(max_size / h.max(w) as f64);
    (((h as f64) * scale).floor() as usize, ((w as f64) * scale).floor() as usize)
}

struct Axis {
    i0: Vec<usize>,
    i1: Vec<usize>,
    w0: Vec<f32>,
    w1: Vec<f32>,
}

/// Copy of maskserve's transform::axis_weights (upsample_bilinear2d, align_corners=False).
fn axis(n_in: usize, n_out: usize) -> Axis {
    let scale = n_in as f32 / n_out as f32;
    let mut a = Axis { i0: vec![], i1: vec![], w0: vec![], w1: vec![] };
    for i in 0..n_out {
        let real = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
        let idx = (real.floor() as usize).min(n_in - 1);
        let l = (real - idx as f32).clamp(0.0, 1.0);
        a.i0.push(idx);
        a.i1.push(idx + usize::from(idx < n_in - 1));
        a.w0.push(1.0 - l);
        a.w1.push(l);
    }
    a
}

/// Copy of maskserve's transform::normalize_and_resize: CHW float32.
fn maskserve_resize(rgb: &[u8], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let (ya, xa) = (axis(h, oh), axis(w, ow));
    let mut plane = vec![0f32; h * w];
    let mut out = vec![0f32; 3 * oh * ow];
    for c in 0..3 {
        for (d, px) in plane.iter_mut().zip(rgb.chunks_exact(3)) {
            *d = (f32::from(px[c]) / 255.0 - MEAN[c]) / STD[c];
        }
        let o = &mut out[c * oh * ow..(c + 1) * oh * ow];
        for y in 0..oh {
            let r0 = &plane[ya.i0[y] * w..ya.i0[y] * w + w];
            let r1 = &plane[ya.i1[y] * w..ya.i1[y] * w + w];
            for x in 0..ow {
                let t0 = r0[xa.i0[x]] * xa.w0[x] + r0[xa.i1[x]] * xa.w1[x];
                let t1 = r1[xa.i0[x]] * xa.w0[x] + r1[xa.i1[x]] * xa.w1[x];
                o[y * ow + x] = t0 * ya.w0[y] + t1 * ya.w1[y];
            }
        }
    }
    out
}

fn cv_decode(bytes: &[u8]) -> Mat {
    let buf = Mat::from_slice(bytes).unwrap();
    let bgr = imgcodecs::imdecode(&buf, imgcodecs::IMREAD_COLOR).unwrap();
    let mut rgb = Mat::default();
    imgproc::cvt_color_def(&bgr, &mut rgb, imgproc::COLOR_BGR2RGB).unwrap();
    rgb
}

/// OpenCV float path equivalent to maskserve's: u8 → f32 /255, bilinear resize (half-pixel
/// centres, no antialias, like torch), then (x - mean) / std (resize and the affine
/// normalisation commute), written CHW.
fn cv_resize_f32(rgb: &Mat, oh: usize, ow: usize) -> Vec<f32> {
    let mut f = Mat::default();
    rgb.convert_to(&mut f, CV_32FC3, 1.0 / 255.0, 0.0).unwrap();
    let mut r = Mat::default();
    imgproc::resize(&f, &mut r, Size::new(ow as i32, oh as i32), 0.0, 0.0, imgproc::INTER_LINEAR).unwrap();
    chw(r.data_typed::<Vec3f>().unwrap(), oh, ow)
}

/// OpenCV's fastest path: resize the u8 image (fixed-point), then normalise. Not bit-compatible.
fn cv_resize_u8(rgb: &Mat, oh: usize, ow: usize) -> Vec<f32> {
    let mut r = Mat::default();
    imgproc::resize(rgb, &mut r, Size::new(ow as i32, oh as i32), 0.0, 0.0, imgproc::INTER_LINEAR).unwrap();
    let px = r.data_bytes().unwrap();
    let mut out = vec![0f32; 3 * oh * ow];
    for (i, p) in px.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * oh * ow + i] = (f32::from(p[c]) / 255.0 - MEAN[c]) / STD[c];
        }
    }
    out
}

fn chw(px: &[Vec3f], oh: usize, ow: usize) -> Vec<f32> {
    let mut out = vec![0f32; 3 * oh * ow];
    for (i, p) in px.iter().enumerate() {
        for c in 0..3 {
            out[c * oh * ow + i] = (p[c] - MEAN[c]) / STD[c];
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2] * 1000.0).round() / 1000.0
}

fn main() {
    let mut reps = 10;
    let (mut min_size, mut max_size) = (800.0, 1333.0);
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--reps" => reps = args.next().unwrap().parse().unwrap(),
            "--min-size" => min_size = args.next().unwrap().parse().unwrap(),
            "--max-size" => max_size = args.next().unwrap().parse().unwrap(),
            _ => files.push(std::fs::read(&a).unwrap()),
        }
    }
    // maskserve's preprocessing is single-threaded per request; compare like with like.
    opencv::core::set_num_threads(1).unwrap();
    type Method = Box<dyn Fn(&[u8]) -> usize>;
    let methods: Vec<(&str, Method)> = vec![
        ("image_decode", Box::new(|b| image_decode(b).0.len())),
        (
            "image_decode_maskserve_resize",
            Box::new(move |b| {
                let (px, h, w) = image_decode(b);
                let (oh, ow) = resized_size(h, w, min_size, max_size);
                maskserve_resize(&px, h, w, oh, ow).len()
            }),
        ),
        ("opencv_decode", Box::new(|b| cv_decode(b).total())),
        (
            "opencv_decode_resize_f32",
            Box::new(move |b| {
                let m = cv_decode(b);
                let (oh, ow) = resized_size(m.rows() as usize, m.cols() as usize, min_size, max_size);
                cv_resize_f32(&m, oh, ow).len()
            }),
        ),
        (
            "opencv_decode_resize_u8",
            Box::new(move |b| {
                let m = cv_decode(b);
                let (oh, ow) = resized_size(m.rows() as usize, m.cols() as usize, min_size, max_size);
                cv_resize_u8(&m, oh, ow).len()
            }),
        ),
    ];
    // Agreement of the decoders and of the float resize with maskserve's, on the first image.
    let (px, h, w) = image_decode(&files[0]);
    let cv = cv_decode(&files[0]);
    let cvpx = cv.data_bytes().unwrap();
    let max_pixel_diff = px.iter().zip(cvpx).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0);
    let (oh, ow) = resized_size(h, w, min_size, max_size);
    let a = maskserve_resize(&px, h, w, oh, ow);
    let same = Mat::from_slice(&px).unwrap().reshape(3, h as i32).unwrap().try_clone().unwrap();
    let b = cv_resize_f32(&same, oh, ow);
    let max_resize_diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let mut result = serde_like(&[("images", files.len() as f64), ("reps", reps as f64)]);
    for (name, f) in &methods {
        for b in &files {
            f(b);
        }
        let mut times = Vec::new();
        for _ in 0..reps {
            for b in &files {
                let t = Instant::now();
                std::hint::black_box(f(b));
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        result.push_str(&format!(", \"{name}_ms\": {}", median(times)));
    }
    result.push_str(&format!(
        ", \"max_decoded_pixel_diff\": {max_pixel_diff}, \"max_resize_diff_same_pixels\": {max_resize_diff:e}}}"
    ));
    println!("{result}");
}

fn serde_like(kv: &[(&str, f64)]) -> String {
    let body: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
    format!("{{{}", body.join(", "))
}

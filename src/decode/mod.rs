//! Image decoding: JPEG, PNG (grayscale, RGBA, 16-bit), GIF, BMP, TIFF, WebP; EXIF orientation
//! applied; the pixel limit checked on the header before the pixels are decoded.
//!
//! JPEG goes through libjpeg-turbo with Pillow's settings ([`jpeg`]), so the model sees the
//! pixels PIL would have given PyTorch; the other formats through the `image` crate.

mod jpeg;
mod orientation;

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageBuffer, ImageDecoder, ImageReader};

use crate::types::PredictError;

pub use jpeg::MAX_SCANS as MAX_JPEG_SCANS;

/// An RGB image, interleaved HWC, after orientation.
#[derive(Debug, Clone)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Bytes a decoder may allocate beyond the decoded image itself (palettes, ICC/EXIF blocks,
/// compressed chunks, row buffers).
const DECODER_SLACK_BYTES: u64 = 64 << 20;

/// Decodes an image (see the module docs). A panic inside a decoder is caught and reported as
/// an undecodable image, so one malformed file never costs more than its own 400.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, PredictError> {
    std::panic::catch_unwind(|| decode_unguarded(bytes, max_pixels)).unwrap_or_else(|_| {
        Err(PredictError::BadImage(
            "the decoder failed on this file (malformed image)".into(),
        ))
    })
}

/// [`decode`] without the panic guard (the fuzz target calls this one, to see decoder panics).
#[doc(hidden)]
pub fn decode_unguarded(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, PredictError> {
    if bytes.is_empty() {
        return Err(PredictError::BadImage("empty body".into()));
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return decode_jpeg(bytes, max_pixels);
    }
    decode_with_image_crate(bytes, max_pixels)
}

fn check_pixels(width: u32, height: u32, max_pixels: u64) -> Result<u64, PredictError> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(PredictError::TooManyPixels {
            width,
            height,
            limit: max_pixels,
        });
    }
    if pixels == 0 {
        return Err(PredictError::BadImage(format!(
            "image has no pixels ({width}x{height})"
        )));
    }
    Ok(pixels)
}

fn decode_jpeg(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, PredictError> {
    // Header only first: refuse before allocating the pixels.
    let header = jpeg::header(bytes)?;
    check_pixels(header.width, header.height, max_pixels)?;
    let data = jpeg::decode_rgb(bytes, &header)?;
    let orientation = orientation::jpeg_orientation(bytes)
        .and_then(|v| u8::try_from(v).ok())
        .and_then(Orientation::from_exif)
        .unwrap_or(Orientation::NoTransforms);
    if orientation == Orientation::NoTransforms {
        return Ok(RgbImage {
            width: header.width as usize,
            height: header.height as usize,
            data,
        });
    }
    let buf = ImageBuffer::<image::Rgb<u8>, _>::from_raw(header.width, header.height, data)
        .ok_or_else(|| PredictError::BadImage("decoded JPEG has the wrong size".into()))?;
    Ok(oriented_rgb(DynamicImage::ImageRgb8(buf), orientation))
}

/// The `image` crate's decoders (its JPEG decoder too: `maskserve debug-decode` compares).
#[doc(hidden)]
pub fn decode_with_image_crate(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, PredictError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| PredictError::BadImage(e.to_string()))?;
    // Our pixel limit replaces image's allocation limit, so that an oversized image gets the
    // TooManyPixels answer rather than a generic decoding error.
    reader.no_limits();
    if reader.format().is_none() {
        return Err(PredictError::UnsupportedFormat(
            "not a JPEG, PNG, GIF, BMP, TIFF or WebP image".into(),
        ));
    }
    let mut decoder = reader.into_decoder().map_err(map_err)?;
    // Header only so far: refuse before allocating the pixels.
    let (w, h) = decoder.dimensions();
    let pixels = check_pixels(w, h, max_pixels)?;
    // Within the pixel limit: now bound what the decoder may allocate (the image at up to 16
    // bytes a pixel, 16-bit RGBA or float, plus slack), so a file whose chunks claim more than
    // its header (a zTXt or ICC bomb, a frame larger than the canvas) fails cleanly.
    let mut limits = image::Limits::no_limits();
    limits.max_alloc = Some(
        pixels
            .saturating_mul(16)
            .saturating_add(DECODER_SLACK_BYTES),
    );
    decoder.set_limits(limits).map_err(map_err)?;
    // A broken EXIF block should not reject an otherwise fine image.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(decoder).map_err(map_err)?;
    Ok(oriented_rgb(img, orientation))
}

/// `img` turned upright, as interleaved RGB.
fn oriented_rgb(mut img: DynamicImage, orientation: Orientation) -> RgbImage {
    img.apply_orientation(orientation);
    // into_rgb8 drops alpha, replicates gray and scales 16-bit/float samples to 8 bits, and
    // takes an RGB image's buffer as it is (no second full-size copy).
    let rgb = img.into_rgb8();
    RgbImage {
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        data: rgb.into_raw(),
    }
}

fn map_err(e: image::ImageError) -> PredictError {
    match e {
        image::ImageError::Unsupported(u) => PredictError::UnsupportedFormat(u.to_string()),
        other => PredictError::BadImage(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, ImageFormat, Luma, Rgba};

    fn encode(img: DynamicImage, fmt: ImageFormat) -> Vec<u8> {
        let mut v = Vec::new();
        img.write_to(&mut Cursor::new(&mut v), fmt).unwrap();
        v
    }

    #[test]
    fn gray_rgba_and_16bit_png() {
        let g = DynamicImage::ImageLuma8(ImageBuffer::from_pixel(3, 2, Luma([77u8])));
        let d = decode(&encode(g, ImageFormat::Png), 1 << 20).unwrap();
        assert_eq!((d.width, d.height), (3, 2));
        assert_eq!(&d.data[..3], &[77, 77, 77]);

        let rgba = DynamicImage::ImageRgba8(ImageBuffer::from_pixel(2, 2, Rgba([10u8, 20, 30, 0])));
        let d = decode(&encode(rgba, ImageFormat::Png), 1 << 20).unwrap();
        assert_eq!(&d.data[..3], &[10, 20, 30]);

        let g16 = DynamicImage::ImageLuma16(ImageBuffer::from_pixel(2, 2, Luma([65535u16])));
        let d = decode(&encode(g16, ImageFormat::Png), 1 << 20).unwrap();
        assert_eq!(&d.data[..3], &[255, 255, 255]);
    }

    #[test]
    fn too_many_pixels_refused() {
        let g = DynamicImage::ImageLuma8(ImageBuffer::from_pixel(100, 50, Luma([0u8])));
        match decode(&encode(g, ImageFormat::Png), 4999) {
            Err(PredictError::TooManyPixels {
                width: 100,
                height: 50,
                limit: 4999,
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn header_claiming_huge_size_is_refused_without_decoding() {
        // A PNG header declaring 100000 x 100000 and no pixel data.
        let mut png = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13];
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let crc = crc32fast::hash(&ihdr);
        png.extend_from_slice(&ihdr);
        png.extend_from_slice(&crc.to_be_bytes());
        // An empty IDAT so the decoder gets past the header.
        png.extend_from_slice(&[0, 0, 0, 0]);
        png.extend_from_slice(b"IDAT");
        png.extend_from_slice(&crc32fast::hash(b"IDAT").to_be_bytes());
        let r = decode(&png, 40_000_000);
        assert!(
            matches!(r, Err(PredictError::TooManyPixels { .. })),
            "{r:?}"
        );
    }

    #[test]
    fn jpeg_header_claiming_huge_size_is_refused_before_decoding() {
        let img = DynamicImage::ImageRgb8(ImageBuffer::from_pixel(16, 8, image::Rgb([1u8, 2, 3])));
        let mut jpeg = encode(img, ImageFormat::Jpeg);
        let sof = jpeg
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .expect("baseline SOF");
        // SOF0: length (2), precision (1), height (2), width (2).
        jpeg[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
        match decode(&jpeg, 40_000_000) {
            Err(PredictError::TooManyPixels {
                width: 60000,
                height: 60000,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        // Within the limit, the same file is decoded (libjpeg-turbo, not the image crate).
        let small = decode(
            &encode(
                DynamicImage::ImageRgb8(ImageBuffer::from_pixel(
                    16,
                    8,
                    image::Rgb([200u8, 100, 50]),
                )),
                ImageFormat::Jpeg,
            ),
            1 << 20,
        )
        .unwrap();
        assert_eq!((small.width, small.height), (16, 8));
        assert!(small
            .data
            .chunks(3)
            .all(|p| p[0].abs_diff(200) < 8 && p[2].abs_diff(50) < 8));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(
            decode(b"hello world", 100),
            Err(PredictError::UnsupportedFormat(_))
        ));
        assert!(decode(&[], 100).is_err());
        // Truncated PNG
        let g = DynamicImage::ImageLuma8(ImageBuffer::from_pixel(30, 30, Luma([9u8])));
        let v = encode(g, ImageFormat::Png);
        assert!(decode(&v[..v.len() / 2], 1 << 20).is_err());
        // Truncated JPEG at every length: an error each time, never a panic or a partial image.
        let rgb = DynamicImage::ImageRgb8(ImageBuffer::from_fn(40, 24, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 10) as u8, 77])
        }));
        let j = encode(rgb, ImageFormat::Jpeg);
        for cut in 0..j.len() - 2 {
            assert!(decode(&j[..cut], 1 << 20).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn cmyk_jpeg_is_converted_to_rgb() {
        // 96x64, written by Pillow (Adobe APP14, inverted CMYK): red disc around (30, 30),
        // blue square around (75, 35), dark background.
        let d = decode(include_bytes!("../../tests/data/cmyk.jpg"), 1 << 20).unwrap();
        assert_eq!((d.width, d.height), (96, 64));
        let px = |x: usize, y: usize| {
            let i = (y * d.width + x) * 3;
            [d.data[i], d.data[i + 1], d.data[i + 2]]
        };
        let [r, g, b] = px(30, 30);
        assert!(r > 180 && g < 90 && b < 90, "disc {:?}", px(30, 30));
        let [r, g, b] = px(75, 35);
        assert!(b > 180 && r < 90 && g < 90, "square {:?}", px(75, 35));
        let [r, g, b] = px(2, 60);
        assert!(r < 70 && g < 70 && b < 70, "background {:?}", px(2, 60));
    }

    #[test]
    fn jpeg_exif_orientation_rotates() {
        // 4x2 JPEG with EXIF orientation 6 (rotate 90° clockwise) → 2x4.
        let img =
            DynamicImage::ImageRgb8(ImageBuffer::from_pixel(4, 2, image::Rgb([200u8, 100, 50])));
        let jpeg = encode(img, ImageFormat::Jpeg);
        // Insert an APP1 Exif segment after SOI.
        let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
        tiff.extend_from_slice(&[0, 1]); // one IFD entry
        tiff.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0]); // Orientation = 6
        tiff.extend_from_slice(&[0, 0, 0, 0]);
        let mut app1 = b"Exif\x00\x00".to_vec();
        app1.extend_from_slice(&tiff);
        let len = (app1.len() + 2) as u16;
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xff, 0xe1]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        let d = decode(&out, 1 << 20).unwrap();
        assert_eq!((d.width, d.height), (2, 4));
    }
}

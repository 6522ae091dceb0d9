//! A pasted mask as a base64 PNG (8-bit grayscale, 0 or 255), full image size.

use base64::Engine;

use crate::detection::paste::PastedMask;

pub fn png_base64(m: &PastedMask) -> Option<String> {
    let dense: Vec<u8> = m.to_dense().into_iter().map(|v| v * 255).collect();
    let img = image::GrayImage::from_raw(m.width as u32, m.height as u32, dense)?;
    let mut buf = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Png)
        .ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(buf))
}

//! JPEG through libjpeg-turbo (see `jpeg_shim.c`), pixel for pixel as Pillow decodes it: RGB
//! for YCbCr/RGB/gray files, and 4-component files converted from CMYK as Pillow converts
//! them (Adobe's inverted polarity assumed, no colour management).

use std::ffi::{c_char, c_int, c_uchar, c_uint, CStr};

use crate::types::PredictError;

// The libjpeg symbols the shim calls come from turbojpeg-sys's static library.
use turbojpeg_sys as _;

/// A progressive file may hold any number of scans, each a pass over the whole image; real
/// encoders write about ten. libjpeg-turbo's own tools default to this bound.
pub const MAX_SCANS: c_int = 500;

const MS_OK: c_int = 0;
const MS_TRUNCATED: c_int = 2;
const MS_TOO_MANY_SCANS: c_int = 3;
const JMSG_LENGTH_MAX: usize = 200;

#[repr(C)]
struct Info {
    width: c_uint,
    height: c_uint,
    components: c_int,
    color_space: c_int,
    precision: c_int,
    progressive: c_int,
    status: c_int,
    message: [c_char; JMSG_LENGTH_MAX],
}

extern "C" {
    fn ms_jpeg_decode(
        data: *const c_uchar,
        len: usize,
        out: *mut c_uchar,
        out_len: usize,
        max_scans: c_int,
        info: *mut Info,
    ) -> c_int;
}

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub width: u32,
    pub height: u32,
    pub components: u32,
    pub progressive: bool,
}

fn call(data: &[u8], out: Option<&mut [u8]>) -> (c_int, Info) {
    let mut info = Info {
        width: 0,
        height: 0,
        components: 0,
        color_space: 0,
        precision: 0,
        progressive: 0,
        status: 0,
        message: [0; JMSG_LENGTH_MAX],
    };
    let (ptr, len) = match out {
        Some(buf) => (buf.as_mut_ptr(), buf.len()),
        None => (std::ptr::null_mut(), 0),
    };
    // SAFETY: `data` and `out` are valid for their lengths for the whole call; the shim writes
    // only within `out_len` bytes of `out` (it checks the size against the header first) and
    // into `info`, and keeps no pointer after it returns.
    let status =
        unsafe { ms_jpeg_decode(data.as_ptr(), data.len(), ptr, len, MAX_SCANS, &mut info) };
    (status, info)
}

fn error(status: c_int, info: &Info) -> PredictError {
    // SAFETY: the shim always NUL-terminates `message` within its length (it was zeroed, and
    // libjpeg's format_message and snprintf stay within JMSG_LENGTH_MAX).
    let text = unsafe { CStr::from_ptr(info.message.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    match status {
        MS_TRUNCATED => {
            PredictError::BadImage("truncated JPEG: the data ends before the image".into())
        }
        MS_TOO_MANY_SCANS => PredictError::BadImage(format!(
            "progressive JPEG with {text} (the limit is {MAX_SCANS})"
        )),
        _ => PredictError::BadImage(format!("invalid JPEG: {text}")),
    }
}

/// Reads the header only (the pixel limit is checked on this, before anything is allocated).
pub fn header(data: &[u8]) -> Result<Header, PredictError> {
    let (status, info) = call(data, None);
    if status != MS_OK {
        return Err(error(status, &info));
    }
    if info.precision != 8 {
        // Pillow refuses these too ("cannot handle 12-bit layers").
        return Err(PredictError::UnsupportedFormat(format!(
            "{}-bit JPEG (8-bit samples only)",
            info.precision
        )));
    }
    if !matches!(info.components, 1 | 3 | 4) {
        return Err(PredictError::UnsupportedFormat(format!(
            "JPEG with {} components (1, 3 or 4 only)",
            info.components
        )));
    }
    Ok(Header {
        width: info.width,
        height: info.height,
        components: info.components as u32,
        progressive: info.progressive != 0,
    })
}

/// Decodes to interleaved RGB; `header` is what [`header`] returned for the same bytes.
pub fn decode_rgb(data: &[u8], header: &Header) -> Result<Vec<u8>, PredictError> {
    let pixels = header.width as usize * header.height as usize;
    let channels = if header.components == 4 { 4 } else { 3 };
    let mut out = vec![0u8; pixels * channels];
    let (status, info) = call(data, Some(&mut out));
    if status != MS_OK {
        return Err(error(status, &info));
    }
    if channels == 4 {
        cmyk_to_rgb_in_place(&mut out);
    }
    Ok(out)
}

/// Pillow's CMYK;I unpacking (libjpeg's stored values inverted) followed by its CMYK -> RGB
/// conversion, `255 - k` scaled by `255 - c` with its rounding: written with the stored
/// values, `r = s_k - s_k * (255 - s_c) / 255`. Compacts 4 bytes a pixel to 3 in place.
fn cmyk_to_rgb_in_place(buf: &mut Vec<u8>) {
    let pixels = buf.len() / 4;
    for p in 0..pixels {
        let s = [buf[4 * p], buf[4 * p + 1], buf[4 * p + 2], buf[4 * p + 3]];
        let nk = u32::from(s[3]);
        for c in 0..3 {
            let ink = 255 - u32::from(s[c]);
            buf[3 * p + c] = (nk - muldiv255(ink, nk)) as u8;
        }
    }
    buf.truncate(pixels * 3);
}

/// Pillow's MULDIV255: a * b / 255, rounded.
fn muldiv255(a: u32, b: u32) -> u32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn muldiv255_matches_exact_rounding() {
        for a in 0..=255u32 {
            for b in 0..=255u32 {
                let exact = (f64::from(a * b) / 255.0).round() as u32;
                assert_eq!(muldiv255(a, b), exact, "{a} {b}");
            }
        }
    }

    #[test]
    fn cmyk_white_black_and_ink() {
        // Stored (inverted) values: 255 = no ink.
        let mut buf = vec![255, 255, 255, 255, 0, 0, 0, 0, 0, 255, 255, 255];
        cmyk_to_rgb_in_place(&mut buf);
        assert_eq!(buf, vec![255, 255, 255, 0, 0, 0, 0, 255, 255]);
    }

    #[test]
    fn not_a_jpeg_and_truncated_header() {
        assert!(matches!(
            header(b"\xff\xd8\xff"),
            Err(PredictError::BadImage(_))
        ));
        assert!(matches!(header(b"hello"), Err(PredictError::BadImage(_))));
    }
}

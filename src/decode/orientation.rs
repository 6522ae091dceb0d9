//! A JPEG's orientation, found as Pillow's `ImageOps.exif_transpose` finds it: the Orientation
//! tag of the EXIF IFD0 (APP1 "Exif" segments, later ones appended to the first), else
//! `tiff:Orientation` in the XMP packet (the last APP1 XMP segment).

const EXIF: &[u8] = b"Exif\0\0";
const XMP: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";
const ORIENTATION_TAG: u16 = 0x0112;

/// The orientation (1-8 are meaningful; anything else means none), or None when the file
/// says nothing.
pub fn jpeg_orientation(data: &[u8]) -> Option<u32> {
    let mut exif: Option<Vec<u8>> = None;
    let mut xmp: Option<&[u8]> = None;
    for (marker, body) in segments(data) {
        if marker != 0xE1 {
            continue;
        }
        if body.starts_with(EXIF) {
            match exif.as_mut() {
                Some(e) => e.extend_from_slice(&body[EXIF.len()..]),
                None => exif = Some(body[EXIF.len()..].to_vec()),
            }
        } else if body.starts_with(XMP) {
            xmp = Some(&body[XMP.len()..]);
        }
    }
    match exif.as_deref().map(ifd0_orientation) {
        Some(Tag::Value(v)) => Some(v),
        // Present but not a single integer: Pillow finds the tag and no transpose for it.
        Some(Tag::Unusable) => None,
        Some(Tag::Absent) | None => xmp.and_then(xmp_orientation),
    }
}

/// The marker segments before the first scan, as Pillow walks them: junk between segments
/// skipped, 0xFF fill bytes skipped, standalone markers without a length.
fn segments(data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut i = 2; // after SOI
    std::iter::from_fn(move || loop {
        if i + 1 >= data.len() {
            return None;
        }
        if data[i] != 0xFF {
            i += 1;
            continue;
        }
        let marker = data[i + 1];
        match marker {
            0xFF => i += 1,
            0x00 => i += 2,
            0xDA | 0xD9 => return None,
            0x01 | 0xD0..=0xD7 => i += 2,
            _ => {
                if i + 4 > data.len() {
                    return None;
                }
                let len = usize::from(u16::from_be_bytes([data[i + 2], data[i + 3]]));
                if len < 2 || i + 2 + len > data.len() {
                    return None;
                }
                let body = &data[i + 4..i + 2 + len];
                i += 2 + len;
                return Some((marker, body));
            }
        }
    })
}

enum Tag {
    Absent,
    Unusable,
    Value(u32),
}

/// The Orientation entry of a TIFF structure's first IFD.
fn ifd0_orientation(tiff: &[u8]) -> Tag {
    let big = match tiff.get(..4) {
        Some(b"MM\0*") => true,
        Some(b"II*\0") => false,
        _ => return Tag::Absent,
    };
    let u16_at = |o: usize| {
        tiff.get(o..o + 2).map(|b| {
            let b = [b[0], b[1]];
            if big {
                u16::from_be_bytes(b)
            } else {
                u16::from_le_bytes(b)
            }
        })
    };
    let u32_at = |o: usize| {
        tiff.get(o..o + 4).map(|b| {
            let b = [b[0], b[1], b[2], b[3]];
            if big {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        })
    };
    let Some(ifd) = u32_at(4).map(|o| o as usize) else {
        return Tag::Absent;
    };
    let Some(count) = u16_at(ifd) else {
        return Tag::Absent;
    };
    let mut found = Tag::Absent;
    for k in 0..usize::from(count) {
        let e = ifd + 2 + 12 * k;
        let (Some(tag), Some(kind), Some(n)) = (u16_at(e), u16_at(e + 2), u32_at(e + 4)) else {
            break; // a cut-off IFD: what was read stands
        };
        if tag != ORIENTATION_TAG {
            continue;
        }
        // Integers of one value: the value sits in the entry itself. Later entries win.
        found = match (kind, n) {
            (1 | 6, 1) => tiff.get(e + 8).map_or(Tag::Unusable, |&b| {
                if kind == 6 {
                    Tag::Value((b as i8) as u32)
                } else {
                    Tag::Value(u32::from(b))
                }
            }),
            (3 | 8, 1) => u16_at(e + 8).map_or(Tag::Unusable, |v| Tag::Value(u32::from(v))),
            (4 | 9, 1) => u32_at(e + 8).map_or(Tag::Unusable, Tag::Value),
            _ => Tag::Unusable,
        };
    }
    found
}

/// `tiff:Orientation="N"` or `tiff:Orientation>N`, one digit, first match.
fn xmp_orientation(xmp: &[u8]) -> Option<u32> {
    const KEY: &[u8] = b"tiff:Orientation";
    let mut from = 0;
    while let Some(pos) = find(&xmp[from..], KEY) {
        let rest = &xmp[from + pos + KEY.len()..];
        let digit = match rest {
            [b'=', b'"', d, ..] | [b'>', d, ..] => Some(*d),
            _ => None,
        };
        if let Some(d) = digit.filter(u8::is_ascii_digit) {
            return Some(u32::from(d - b'0'));
        }
        from += pos + 1;
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app1(body: &[u8]) -> Vec<u8> {
        let mut v = vec![0xFF, 0xE1];
        v.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn exif(big: bool, kind: u16, value: u32) -> Vec<u8> {
        let mut t = Vec::new();
        let p16 = |t: &mut Vec<u8>, v: u16| {
            t.extend_from_slice(&if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            })
        };
        t.extend_from_slice(if big { b"MM\0*" } else { b"II*\0" });
        t.extend_from_slice(&if big {
            8u32.to_be_bytes()
        } else {
            8u32.to_le_bytes()
        });
        p16(&mut t, 1);
        p16(&mut t, ORIENTATION_TAG);
        p16(&mut t, kind);
        t.extend_from_slice(&if big {
            1u32.to_be_bytes()
        } else {
            1u32.to_le_bytes()
        });
        if kind == 3 {
            p16(&mut t, value as u16);
            p16(&mut t, 0);
        } else {
            t.extend_from_slice(&if big {
                value.to_be_bytes()
            } else {
                value.to_le_bytes()
            });
        }
        let mut body = EXIF.to_vec();
        body.extend_from_slice(&t);
        body
    }

    fn jpeg(segments: &[Vec<u8>]) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8];
        for s in segments {
            v.extend_from_slice(s);
        }
        v.extend_from_slice(&[0xFF, 0xDA, 0, 2]);
        v
    }

    #[test]
    fn exif_short_and_long_both_byte_orders() {
        assert_eq!(jpeg_orientation(&jpeg(&[app1(&exif(true, 3, 6))])), Some(6));
        assert_eq!(
            jpeg_orientation(&jpeg(&[app1(&exif(false, 3, 8))])),
            Some(8)
        );
        assert_eq!(
            jpeg_orientation(&jpeg(&[app1(&exif(false, 4, 3))])),
            Some(3)
        );
        assert_eq!(jpeg_orientation(&jpeg(&[])), None);
    }

    #[test]
    fn xmp_only_when_exif_has_no_tag() {
        let mut x = XMP.to_vec();
        x.extend_from_slice(b"<x:xmpmeta><tiff:Orientation>5</tiff:Orientation>");
        assert_eq!(jpeg_orientation(&jpeg(&[app1(&x)])), Some(5));
        assert_eq!(
            jpeg_orientation(&jpeg(&[app1(&exif(true, 3, 2)), app1(&x)])),
            Some(2)
        );
        let mut attr = XMP.to_vec();
        attr.extend_from_slice(b"<rdf:Description tiff:Orientation=\"7\"/>");
        assert_eq!(jpeg_orientation(&jpeg(&[app1(&attr)])), Some(7));
    }

    #[test]
    fn broken_segments_end_the_walk_without_panicking() {
        let mut v = jpeg(&[app1(&exif(true, 3, 6))]);
        v.truncate(20);
        assert_eq!(jpeg_orientation(&v), None);
        assert_eq!(jpeg_orientation(&[0xFF, 0xD8, 0xFF, 0xE1, 0xFF]), None);
        // A rational orientation is found but unusable.
        assert_eq!(jpeg_orientation(&jpeg(&[app1(&exif(true, 5, 6))])), None);
    }
}

//! Image decoding edge cases of `load_rgb` / `load_rgb_upright`: grayscale, 16-bit and RGBA
//! PNG, grayscale and CMYK JPEG, EXIF orientation, and truncated or corrupt files (an error
//! naming the file, never a panic). Every fixture is generated here.

use std::path::{Path, PathBuf};

use image::{ExtendedColorType, ImageEncoder};
use rlip_data::DataError;
use rlip_data::preprocess::{RgbImage, load_rgb, load_rgb_upright};

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("rlip-images-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn png(w: u32, h: u32, data: &[u8], ty: ExtendedColorType, exif: Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = image::codecs::png::PngEncoder::new(&mut out);
    if let Some(e) = exif {
        enc.set_exif_metadata(e).unwrap();
    }
    enc.write_image(data, w, h, ty).unwrap();
    out
}

fn jpeg(w: u32, h: u32, data: &[u8], ty: ExtendedColorType) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 100)
        .write_image(data, w, h, ty)
        .unwrap();
    out
}

fn px(img: &RgbImage, x: usize, y: usize) -> [u8; 3] {
    let i = (y * img.width + x) * 3;
    [img.data[i], img.data[i + 1], img.data[i + 2]]
}

fn close(a: [u8; 3], b: [u8; 3], tol: u8) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= tol)
}

/// A 16 x 8 test card: left half `a`, right half `b`, top row of the right half `c`.
fn card(a: [u8; 3], b: [u8; 3], c: [u8; 3]) -> Vec<u8> {
    let mut v = Vec::new();
    for y in 0..8 {
        for x in 0..16 {
            v.extend(match (x < 8, y) {
                (true, _) => a,
                (false, 0) => c,
                _ => b,
            });
        }
    }
    v
}

#[test]
fn grayscale_16bit_and_rgba_png_become_rgb() {
    let gray: Vec<u8> = (0..12).map(|i| i * 20).collect();
    let img = load_rgb(&write(
        "gray.png",
        &png(4, 3, &gray, ExtendedColorType::L8, None),
    ))
    .unwrap();
    assert_eq!((img.width, img.height), (4, 3));
    for (i, g) in gray.iter().enumerate() {
        assert_eq!(px(&img, i % 4, i / 4), [*g; 3]);
    }
    let g16: Vec<u8> = [0u16, 0x8080, 0xffff]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    let img = load_rgb(&write(
        "gray16.png",
        &png(3, 1, &g16, ExtendedColorType::L16, None),
    ))
    .unwrap();
    assert_eq!(img.data, vec![0, 0, 0, 128, 128, 128, 255, 255, 255]);
    // Alpha is dropped, not composited (as PIL's convert('RGB')).
    let rgba = [10u8, 20, 30, 0, 200, 100, 50, 128];
    let img = load_rgb(&write(
        "rgba.png",
        &png(2, 1, &rgba, ExtendedColorType::Rgba8, None),
    ))
    .unwrap();
    assert_eq!(img.data, vec![10, 20, 30, 200, 100, 50]);
}

#[test]
fn grayscale_jpeg_becomes_rgb() {
    let gray = vec![77u8; 16 * 8];
    let img = load_rgb(&write(
        "gray.jpg",
        &jpeg(16, 8, &gray, ExtendedColorType::L8),
    ))
    .unwrap();
    assert_eq!((img.width, img.height), (16, 8));
    assert!(
        img.data
            .chunks(3)
            .all(|p| close([p[0], p[1], p[2]], [77; 3], 1))
    );
}

/// A baseline JPEG of flat 8 x 8 blocks, one byte per component per pixel (`stored`), with an
/// optional Adobe APP14 segment (`transform` 0 = CMYK / RGB, 1 = YCbCr, 2 = YCCK). Quantisation
/// is 1 and only DC coefficients are coded, so the samples decode exactly.
fn flat_jpeg(w: u16, h: u16, stored: &[u8], adobe_transform: Option<u8>) -> Vec<u8> {
    let n = stored.len() as u8;
    let seg = |out: &mut Vec<u8>, marker: u8, body: &[u8]| {
        out.extend([0xFF, marker]);
        out.extend(((body.len() + 2) as u16).to_be_bytes());
        out.extend(body);
    };
    let mut out = vec![0xFF, 0xD8];
    if let Some(t) = adobe_transform {
        seg(
            &mut out,
            0xEE,
            &[b"Adobe".as_slice(), &[0, 100, 0, 0, 0, 0, t]].concat(),
        );
    }
    seg(&mut out, 0xDB, &[[0u8].as_slice(), &[1; 64]].concat());
    let mut sof = vec![8];
    sof.extend(h.to_be_bytes());
    sof.extend(w.to_be_bytes());
    sof.push(n);
    for c in 1..=n {
        sof.extend([c, 0x11, 0]);
    }
    seg(&mut out, 0xC0, &sof);
    // DC table: categories 0..=11, all 4-bit codes; AC table: EOB and one spare, 2-bit codes.
    let mut dht = vec![0x00, 0, 0, 0, 12];
    dht.extend([0; 12]);
    dht.extend(0..12u8);
    dht.extend([0x10, 0, 2]);
    dht.extend([0; 14]);
    dht.extend([0x00, 0x01]);
    seg(&mut out, 0xC4, &dht);
    let mut sos = vec![n];
    for c in 1..=n {
        sos.extend([c, 0x00]);
    }
    sos.extend([0, 63, 0]);
    seg(&mut out, 0xDA, &sos);
    let mut bits: Vec<bool> = Vec::new();
    let mut put = |v: u32, len: u32| bits.extend((0..len).rev().map(|i| v >> i & 1 == 1));
    let blocks = usize::from(w.div_ceil(8)) * usize::from(h.div_ceil(8));
    for b in 0..blocks {
        for &s in stored {
            let dc = if b == 0 { 8 * (i32::from(s) - 128) } else { 0 };
            let cat = 32 - dc.unsigned_abs().leading_zeros();
            put(cat, 4);
            let v = if dc < 0 { dc + (1 << cat) - 1 } else { dc };
            put(v as u32, cat);
            put(0, 2); // EOB
        }
    }
    while !bits.len().is_multiple_of(8) {
        bits.push(true);
    }
    for byte in bits.chunks(8) {
        let v = byte.iter().fold(0u8, |a, &b| a << 1 | u8::from(b));
        out.push(v);
        if v == 0xFF {
            out.push(0);
        }
    }
    out.extend([0xFF, 0xD9]);
    out
}

#[test]
fn cmyk_jpeg_is_converted_to_rgb() {
    // Our hand-made encoder is right: a 3-component Adobe-RGB JPEG decodes to its samples.
    let rgb = load_rgb(&write(
        "adobe-rgb.jpg",
        &flat_jpeg(16, 8, &[200, 100, 50], Some(0)),
    ))
    .unwrap();
    assert!(
        rgb.data
            .chunks(3)
            .all(|p| close([p[0], p[1], p[2]], [200, 100, 50], 1)),
        "{:?}",
        &rgb.data[..6]
    );
    // Adobe CMYK stores inverted ink: C'=255 (no cyan), M'=0 (full magenta), Y'=255, K'=255
    // (no black) is magenta. Saturated values, so Pillow's additive and the decoder's
    // multiplicative CMYK -> RGB formulas agree.
    for (name, transform) in [("cmyk-adobe.jpg", Some(0)), ("cmyk-plain.jpg", None)] {
        let p = write(name, &flat_jpeg(16, 8, &[255, 0, 255, 255], transform));
        let img = load_rgb(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((img.width, img.height), (16, 8));
        assert!(
            img.data
                .chunks(3)
                .all(|p| close([p[0], p[1], p[2]], [255, 0, 255], 2)),
            "{name}: {:?}",
            &img.data[..6]
        );
    }
    let p = write(
        "cmyk-black.jpg",
        &flat_jpeg(8, 8, &[255, 255, 255, 0], Some(0)),
    );
    assert!(load_rgb(&p).unwrap().data.iter().all(|&v| v <= 2));
}

/// A JPEG with a hand-made little-endian EXIF APP1 segment (orientation tag only).
fn with_exif_app1(jpg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00".to_vec();
    tiff.extend(orientation.to_le_bytes());
    tiff.extend([0, 0, 0, 0, 0, 0]);
    let body = [b"Exif\x00\x00".as_slice(), &tiff].concat();
    let mut out = jpg[..2].to_vec();
    out.extend([0xFF, 0xE1]);
    out.extend(((body.len() + 2) as u16).to_be_bytes());
    out.extend(body);
    out.extend(&jpg[2..]);
    out
}

#[test]
fn exif_orientation_is_ignored_by_load_rgb_and_applied_by_load_rgb_upright() {
    let (red, blue, green) = ([250, 0, 0], [0, 0, 250], [0, 250, 0]);
    let src = card(red, blue, green);
    // JPEG, orientation 3 (rotate 180°): the stored left half is red; upright, the right half.
    let p = write(
        "exif3.jpg",
        &with_exif_app1(&jpeg(16, 8, &src, ExtendedColorType::Rgb8), 3),
    );
    let raw = load_rgb(&p).unwrap();
    assert_eq!((raw.width, raw.height), (16, 8));
    assert!(close(px(&raw, 2, 4), red, 40) && close(px(&raw, 13, 4), blue, 40));
    let up = load_rgb_upright(&p).unwrap();
    assert_eq!((up.width, up.height), (16, 8));
    assert!(close(px(&up, 13, 4), red, 40) && close(px(&up, 2, 4), blue, 40));
    // PNG with an eXIf chunk, orientation 6 (rotate 90° clockwise): 16 x 8 -> 8 x 16, and the
    // stored top row of the right half (green) becomes the right column's bottom half.
    let tiff = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00\x00\x00\x00\x00".to_vec();
    let p = write(
        "exif6.png",
        &png(16, 8, &src, ExtendedColorType::Rgb8, Some(tiff)),
    );
    let raw = load_rgb(&p).unwrap();
    assert_eq!(raw.data, src, "load_rgb keeps the stored pixels");
    let up = load_rgb_upright(&p).unwrap();
    assert_eq!((up.width, up.height), (8, 16));
    assert_eq!(
        (px(&up, 7, 12), px(&up, 7, 2), px(&up, 3, 12)),
        (green, red, blue)
    );
}

fn assert_image_error(p: &Path, what: &str) {
    for (loader, r) in [
        ("load_rgb", load_rgb(p)),
        ("load_rgb_upright", load_rgb_upright(p)),
    ] {
        match r {
            Err(e @ DataError::Image { .. }) => {
                assert!(e.to_string().contains(&*p.to_string_lossy()), "{what}: {e}")
            }
            other => {
                panic!("{what} ({loader}): expected an image error naming the file, got {other:?}")
            }
        }
    }
}

#[test]
fn truncated_and_corrupt_images_are_errors_naming_the_file() {
    let src = card([250, 0, 0], [0, 0, 250], [0, 250, 0]);
    let jpg = jpeg(16, 8, &src, ExtendedColorType::Rgb8);
    let pngb = png(16, 8, &src, ExtendedColorType::Rgb8, None);
    let flat = flat_jpeg(16, 8, &[200, 100, 50], Some(0));
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("empty.jpg".into(), vec![]),
        ("text.jpg".into(), b"not an image at all\n".to_vec()),
        ("soi-only.jpg".into(), vec![0xFF, 0xD8]),
        ("png-signature.png".into(), pngb[..8].to_vec()),
        ("zero-size.jpg".into(), {
            let mut j = flat.clone();
            let sof = j.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
            j[sof + 5..sof + 9].fill(0); // height = width = 0
            j
        }),
        ("bad-png-crc.png".into(), {
            let mut b = pngb.clone();
            let i = b.len() / 2;
            b[i] ^= 0xFF;
            b
        }),
    ];
    for cut in [3, 20, jpg.len() / 2, jpg.len() - 2] {
        cases.push((format!("truncated-{cut}.jpg"), jpg[..cut].to_vec()));
    }
    for cut in [flat.len() - 3, flat.len() - 2] {
        cases.push((format!("flat-truncated-{cut}.jpg"), flat[..cut].to_vec()));
    }
    for cut in [12, 40, pngb.len() / 2, pngb.len() - 20] {
        cases.push((format!("truncated-{cut}.png"), pngb[..cut].to_vec()));
    }
    for (name, bytes) in &cases {
        assert_image_error(&write(name, bytes), name);
    }
    // Bytes after the JPEG end-of-image marker, and a PNG cut inside the IEND chunk after all the
    // pixel data, are not errors (Pillow accepts both too).
    let mut trailing = jpg.clone();
    trailing.extend(b"trailing garbage");
    assert!(load_rgb(&write("trailing.jpg", &trailing)).is_ok());
    assert_eq!(
        load_rgb(&write("cut-iend.png", &pngb[..pngb.len() - 1]))
            .unwrap()
            .data,
        src
    );
    // A missing file is an I/O error naming it.
    let missing = dir().join("missing.jpg");
    match load_rgb(&missing) {
        Err(e @ DataError::Io { .. }) => assert!(e.to_string().contains("missing.jpg")),
        other => panic!("missing file: {other:?}"),
    }
}

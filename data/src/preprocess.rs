//! Evaluation preprocessing of the official code: resize with the short side to `size` (long side
//! capped at `max_size`), Pillow-exact bilinear resampling, ToTensor and ImageNet normalisation,
//! and DETR's zero-padded batching with a pixel mask.
//!
//! The official transforms resize PIL images with `Image.resize(BILINEAR)`, which is an
//! antialiased triangle filter computed in 8-bit fixed point (Pillow's `ImagingResample`). The
//! resampler here follows that algorithm (separable, horizontal pass first, 22-bit coefficients,
//! rounding and clipping to u8 after each pass) so that it reproduces Pillow's pixels.

/// An 8-bit RGB image, row-major `[h, w, 3]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width * 3` bytes.
    pub data: Vec<u8>,
}

/// ImageNet mean used by the official `Normalize`.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation used by the official `Normalize`.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Output `(height, width)` of the official `RandomResize([size], max_size)` for an image of
/// `(width, height)` (`get_size_with_aspect_ratio`: the long side is truncated, not rounded).
pub fn eval_size(
    width: usize,
    height: usize,
    size: usize,
    max_size: Option<usize>,
) -> (usize, usize) {
    let (w, h) = (width as f64, height as f64);
    let mut size = size;
    if let Some(max) = max_size {
        let (mn, mx) = (w.min(h), w.max(h));
        if mx / mn * size as f64 > max as f64 {
            size = (max as f64 * mn / mx).round_ties_even() as usize;
        }
    }
    if (width <= height && width == size) || (height <= width && height == size) {
        return (height, width);
    }
    if width < height {
        (((size * height) as f64 / w) as usize, size)
    } else {
        (size, ((size * width) as f64 / h) as usize)
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point coefficients of one output pixel: first input index and weights.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    k: Vec<i32>,
    ksize: usize,
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

fn precompute(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 1.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut k = vec![0i32; out_size * ksize];
    let mut pre = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5).trunc() as i64).max(0) as usize;
        let xmax = (((center + support + 0.5).trunc() as i64).min(in_size as i64) as usize)
            .saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, p) in pre.iter_mut().enumerate().take(xmax) {
            let w = triangle((x as f64 + xmin as f64 - center + 0.5) * ss);
            *p = w;
            ww += w;
        }
        for x in 0..ksize {
            let v = if x < xmax && ww != 0.0 {
                pre[x] / ww
            } else {
                0.0
            };
            // Pillow rounds half away from zero when converting to fixed point.
            let f = v * (1u64 << PRECISION_BITS) as f64;
            k[xx * ksize + x] = if f < 0.0 {
                (f - 0.5) as i32
            } else {
                (f + 0.5) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs { bounds, k, ksize }
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes like Pillow's `Image.resize((w, h), Image.BILINEAR)` on an RGB image.
pub fn resize_bilinear(img: &RgbImage, out_w: usize, out_h: usize) -> RgbImage {
    let (w, h) = (img.width, img.height);
    // Horizontal pass (skipped when the width is unchanged, as Pillow does).
    let horiz = if out_w != w {
        let c = precompute(w, out_w);
        let mut out = vec![0u8; h * out_w * 3];
        for y in 0..h {
            let row = &img.data[y * w * 3..(y + 1) * w * 3];
            for xx in 0..out_w {
                let (xmin, xmax) = c.bounds[xx];
                let k = &c.k[xx * c.ksize..];
                for ch in 0..3 {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for x in 0..xmax {
                        ss += row[(x + xmin) * 3 + ch] as i64 * k[x] as i64;
                    }
                    out[(y * out_w + xx) * 3 + ch] = clip8(ss);
                }
            }
        }
        RgbImage {
            width: out_w,
            height: h,
            data: out,
        }
    } else {
        img.clone()
    };
    if out_h == h {
        return horiz;
    }
    let c = precompute(h, out_h);
    let mut out = vec![0u8; out_h * out_w * 3];
    for yy in 0..out_h {
        let (ymin, ymax) = c.bounds[yy];
        let k = &c.k[yy * c.ksize..];
        for xx in 0..out_w {
            for ch in 0..3 {
                let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                for (y, &ky) in k[..ymax].iter().enumerate() {
                    ss += horiz.data[((y + ymin) * out_w + xx) * 3 + ch] as i64 * ky as i64;
                }
                out[(yy * out_w + xx) * 3 + ch] = clip8(ss);
            }
        }
    }
    RgbImage {
        width: out_w,
        height: out_h,
        data: out,
    }
}

/// `ToTensor` + `Normalize`: `[3, h, w]` float32, `(x/255 − mean) / std` in that order.
pub fn normalize(img: &RgbImage) -> Vec<f32> {
    let n = img.width * img.height;
    let mut out = vec![0f32; 3 * n];
    for i in 0..n {
        for c in 0..3 {
            let v = img.data[i * 3 + c] as f32 / 255.0;
            out[c * n + i] = (v - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    out
}

/// A zero-padded batch: `[B, 3, H, W]` values and the per-image unpadded `(h, w)`.
#[derive(Debug, Clone, PartialEq)]
pub struct PaddedBatch {
    /// Batch height (max over images).
    pub height: usize,
    /// Batch width (max over images).
    pub width: usize,
    /// `[B, 3, H, W]` row-major values.
    pub data: Vec<f32>,
    /// `(h, w)` of each image before padding.
    pub sizes: Vec<(usize, usize)>,
}

/// DETR's `nested_tensor_from_tensor_list`: pads `[3, h, w]` images with zeros at the bottom and
/// right to the largest height and width of the batch.
pub fn pad_batch(images: &[(Vec<f32>, usize, usize)]) -> PaddedBatch {
    let height = images.iter().map(|i| i.1).max().unwrap_or(0);
    let width = images.iter().map(|i| i.2).max().unwrap_or(0);
    let mut data = vec![0f32; images.len() * 3 * height * width];
    for (b, (v, h, w)) in images.iter().enumerate() {
        for c in 0..3 {
            for y in 0..*h {
                let src = &v[(c * h + y) * w..(c * h + y) * w + w];
                let dst = ((b * 3 + c) * height + y) * width;
                data[dst..dst + w].copy_from_slice(src);
            }
        }
    }
    PaddedBatch {
        height,
        width,
        data,
        sizes: images.iter().map(|i| (i.1, i.2)).collect(),
    }
}

/// Decodes an image file (PNG or JPEG) to RGB as stored, ignoring any EXIF orientation, as the
/// official loaders do (`Image.open(..).convert('RGB')`): dataset annotations are in these pixel
/// coordinates.
pub fn load_rgb(path: &std::path::Path) -> Result<RgbImage, crate::DataError> {
    load_rgb_with(path, false)
}

/// Decodes an image file to RGB, turned upright by its EXIF orientation (for photos without
/// annotations, e.g. `rlip infer` on a phone picture).
pub fn load_rgb_upright(path: &std::path::Path) -> Result<RgbImage, crate::DataError> {
    load_rgb_with(path, true)
}

fn load_rgb_with(path: &std::path::Path, exif: bool) -> Result<RgbImage, crate::DataError> {
    let bytes = crate::read_bytes(path)?;
    let bad = |msg: String| crate::DataError::Image {
        path: path.to_path_buf(),
        msg,
    };
    let reader = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    // The JPEG decoder fills missing data with grey where Pillow (the official loader) fails
    // with "image file is truncated": check that the last scan is followed by a marker.
    if reader.format() == Some(image::ImageFormat::Jpeg) && !jpeg_scans_complete(&bytes) {
        return Err(bad(
            "truncated JPEG: the data ends inside a scan (no end-of-image marker)".into(),
        ));
    }
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| bad(format!("cannot decode: {e}")))?;
    use image::ImageDecoder;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = image::DynamicImage::from_decoder(decoder)
        .map_err(|e| bad(format!("cannot decode: {e}")))?;
    if exif {
        img.apply_orientation(orientation);
    }
    let rgb = img.to_rgb8();
    Ok(RgbImage {
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        data: rgb.into_raw(),
    })
}

/// Whether a JPEG's segments and entropy-coded scans end with the end-of-image marker before
/// the data does (bytes after it are ignored). Segments are skipped by their length, so an EXIF
/// thumbnail's markers do not count. Stricter than Pillow in one rare case: a file that lacks
/// only its final EOI marker is reported truncated (Pillow accepts it once every row decoded).
fn jpeg_scans_complete(b: &[u8]) -> bool {
    let mut i = 2; // after SOI
    loop {
        // Next marker: skip stray bytes and fill bytes.
        while i < b.len() && b[i] != 0xFF {
            i += 1;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&m) = b.get(i) else { return false };
        i += 1;
        match m {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = b
            .get(i..i + 2)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            return false;
        };
        i += len;
        if i > b.len() {
            return false;
        }
        if m == 0xDA {
            // Entropy-coded data up to the next marker that is not a stuffed 0xFF or a restart.
            loop {
                match (b.get(i), b.get(i + 1)) {
                    (Some(0xFF), Some(0x00 | 0xD0..=0xD7)) => i += 2,
                    (Some(0xFF), Some(0xFF)) => i += 1,
                    (Some(0xFF), Some(_)) => break,
                    (Some(_), _) => i += 1,
                    (None, _) => return false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn golden() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden")
    }

    #[test]
    fn eval_sizes_follow_the_official_rule() {
        assert_eq!(eval_size(451, 300, 320, Some(533)), (320, 481));
        assert_eq!(eval_size(640, 427, 320, Some(533)), (320, 479));
        assert_eq!(eval_size(300, 400, 320, Some(533)), (426, 320));
        // long side capped: 1000x200 at 800/1333 -> short side round(1333*200/1000)=267
        assert_eq!(eval_size(1000, 200, 800, Some(1333)), (267, 1335));
    }

    /// Our resize against the official pipeline's `resized_u8` tensors (Pillow 13 BILINEAR).
    #[test]
    fn resize_matches_pillow_on_the_fixture_images() {
        for (case, n) in [
            ("rlipv2_parseda_r50", 1),
            ("rlipv2_parseda_r50_batch2", 2),
            ("rlipv2_parseda_swint", 1),
        ] {
            let dir = golden().join(case);
            let st = std::fs::read(dir.join("inputs.safetensors")).unwrap();
            let st = safetensors::SafeTensors::deserialize(&st).unwrap();
            for i in 0..n {
                let img = load_rgb(&dir.join(format!("image{i}.png"))).unwrap();
                let want = st.tensor(&format!("resized_u8.{i}")).unwrap();
                let (h, w) = (want.shape()[0], want.shape()[1]);
                assert_eq!(
                    eval_size(img.width, img.height, 320, Some(533)),
                    (h, w),
                    "{case}/{i} size"
                );
                let got = resize_bilinear(&img, w, h);
                let max_diff = got
                    .data
                    .iter()
                    .zip(want.data())
                    .map(|(a, b)| a.abs_diff(*b))
                    .max()
                    .unwrap();
                let differing = got
                    .data
                    .iter()
                    .zip(want.data())
                    .filter(|(a, b)| a != b)
                    .count();
                println!(
                    "{case}/{i}: max |diff| {max_diff}, {differing} of {} values differ",
                    got.data.len()
                );
                assert_eq!(
                    max_diff, 0,
                    "{case}/{i}: resize must reproduce Pillow exactly"
                );
            }
        }
    }

    /// Normalisation and padding reproduce the batched `image` input of the fixtures.
    #[test]
    fn normalised_padded_batch_matches_fixture() {
        let dir = golden().join("rlipv2_parseda_r50_batch2");
        let st = std::fs::read(dir.join("inputs.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&st).unwrap();
        let mut images = Vec::new();
        for i in 0..2 {
            let r = st.tensor(&format!("resized_u8.{i}")).unwrap();
            let img = RgbImage {
                height: r.shape()[0],
                width: r.shape()[1],
                data: r.data().to_vec(),
            };
            images.push((normalize(&img), img.height, img.width));
        }
        let batch = pad_batch(&images);
        let want = st.tensor("image").unwrap();
        assert_eq!(want.shape(), &[2, 3, batch.height, batch.width]);
        let want: Vec<f32> = want
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(batch.data, want, "normalised batch must be bit-identical");
    }

    /// A JPEG tagged "rotate 90° clockwise" (EXIF orientation 6): the official loaders ignore the
    /// tag, `load_rgb_upright` applies it.
    #[test]
    fn exif_orientation_only_when_asked() {
        use image::ImageEncoder;
        let (w, h) = (8u32, 4u32);
        let pixels = vec![128u8; (w * h * 3) as usize];
        let mut jpg = Vec::new();
        let mut enc = image::codecs::jpeg::JpegEncoder::new(&mut jpg);
        // TIFF header (big endian), one IFD entry: Orientation (0x0112), SHORT, 1, value 6
        let exif = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00\x00\x00\x00\x00".to_vec();
        enc.set_exif_metadata(exif).unwrap();
        enc.write_image(&pixels, w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        let path = std::env::temp_dir().join(format!("rlip-exif-{}.jpg", std::process::id()));
        std::fs::write(&path, &jpg).unwrap();
        let raw = load_rgb(&path).unwrap();
        assert_eq!((raw.width, raw.height), (8, 4));
        let up = load_rgb_upright(&path).unwrap();
        assert_eq!((up.width, up.height), (4, 8));
        std::fs::remove_file(&path).ok();
    }
}

//! The official training augmentation of the HOI data sets (`make_hico_transforms('train')` in
//! `datasets/hico.py`; the same chain is used by V-COCO and the VG pre-training sets):
//!
//! ```text
//! RandomHorizontalFlip(0.5)
//! ColorJitter(brightness .4, contrast .4, saturation .4)
//! RandomSelect(p = 0.5,
//!     RandomResize(scales, max_size),
//!     [RandomResize([400, 500, 600]), RandomSizeCrop(384, 600), RandomResize(scales, max_size)])
//! ```
//!
//! on a [`Sample`] in pixel coordinates. Geometry follows `datasets/transforms.py` (`hflip`,
//! `resize`, `crop`, `RandomSizeCrop`); the colour operations follow torchvision's `ColorJitter`
//! on PIL images, i.e. Pillow's `ImageEnhance` (blend with black, with the rounded mean grey, with
//! the per-pixel grey), in 8-bit arithmetic. Randomness comes from [`Rng`], so a sample is
//! reproducible from its seed (the streams differ from Python's `random` / torch's generator).

use crate::preprocess::{RgbImage, eval_size, resize_bilinear};
use crate::rng::Rng;

/// One training image with its boxes and relation pairs, in pixels of `image`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The image.
    pub image: RgbImage,
    /// `[x0, y0, x1, y1]` boxes in pixels.
    pub boxes: Vec<[f32; 4]>,
    /// Class index of each box.
    pub labels: Vec<usize>,
    /// `(subject box, object box, verb indices)`, one entry per distinct pair; the object is
    /// `None` for a relation without an object (V-COCO actions such as `stand` or `smile`).
    pub pairs: Vec<(usize, Option<usize>, Vec<usize>)>,
}

/// Why a [`Sample`] or a [`TrainAugment`] cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TransformError {
    /// The pixel buffer does not hold `width * height * 3` bytes.
    #[error("image {width}x{height} needs {} bytes, has {len}", width * height * 3)]
    ImageSize {
        /// Width.
        width: usize,
        /// Height.
        height: usize,
        /// Bytes present.
        len: usize,
    },
    /// `boxes` and `labels` differ in length.
    #[error("{boxes} boxes but {labels} labels")]
    Labels {
        /// Boxes.
        boxes: usize,
        /// Labels.
        labels: usize,
    },
    /// A box is not finite, not ordered, or outside the image.
    #[error("box {index} {coords:?} is not an ordered box inside the {width}x{height} image")]
    Box {
        /// Box index.
        index: usize,
        /// Its coordinates.
        coords: [f32; 4],
        /// Image width.
        width: usize,
        /// Image height.
        height: usize,
    },
    /// A pair points past the box list.
    #[error("pair {index} refers to box {sub} or {obj:?}, but there are {boxes} boxes")]
    Pair {
        /// Pair index.
        index: usize,
        /// Subject box.
        sub: usize,
        /// Object box (`None`: no object).
        obj: Option<usize>,
        /// Number of boxes.
        boxes: usize,
    },
    /// An inconsistent augmentation setting.
    #[error("augmentation setting: {0}")]
    Config(String),
}

impl Sample {
    /// Checks that the image buffer, boxes, labels and pairs are consistent (boxes finite,
    /// `x0 <= x1`, `y0 <= y1`, inside the image). [`augment`] expects a checked sample.
    pub fn check(&self) -> Result<(), TransformError> {
        let (w, h) = (self.image.width, self.image.height);
        if self.image.data.len() != w * h * 3 {
            return Err(TransformError::ImageSize {
                width: w,
                height: h,
                len: self.image.data.len(),
            });
        }
        if self.boxes.len() != self.labels.len() {
            return Err(TransformError::Labels {
                boxes: self.boxes.len(),
                labels: self.labels.len(),
            });
        }
        for (index, b) in self.boxes.iter().enumerate() {
            let ok = b.iter().all(|v| v.is_finite())
                && 0.0 <= b[0]
                && b[0] <= b[2]
                && b[2] <= w as f32
                && 0.0 <= b[1]
                && b[1] <= b[3]
                && b[3] <= h as f32;
            if !ok {
                return Err(TransformError::Box {
                    index,
                    coords: *b,
                    width: w,
                    height: h,
                });
            }
        }
        for (index, &(sub, obj, _)) in self.pairs.iter().enumerate() {
            if sub >= self.boxes.len() || obj.is_some_and(|o| o >= self.boxes.len()) {
                return Err(TransformError::Pair {
                    index,
                    sub,
                    obj,
                    boxes: self.boxes.len(),
                });
            }
        }
        Ok(())
    }
}

/// Settings of [`augment`]; [`TrainAugment::hico`] (= `Default`) is the official chain.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainAugment {
    /// Probability of the horizontal flip (official 0.5).
    pub flip_prob: f64,
    /// `ColorJitter` strengths `[brightness, contrast, saturation]`: each factor is drawn
    /// uniformly from `[max(0, 1 - s), 1 + s]`; 0 disables that operation, all 0 the whole step
    /// (official HOI sets .4 each; COCO / Objects365 detection have no jitter).
    pub color_jitter: [f32; 3],
    /// Probability of the plain-resize branch of `RandomSelect` (official 0.5); otherwise the
    /// resize-crop-resize branch.
    pub resize_prob: f64,
    /// Candidate short sides of the final `RandomResize` (official 480..=800 step 32).
    pub scales: Vec<usize>,
    /// Long-side cap of the final resize (official 1333).
    pub max_size: usize,
    /// Candidate short sides of the resize before the crop, without a long-side cap (official
    /// 400, 500, 600).
    pub crop_resize: Vec<usize>,
    /// `RandomSizeCrop(min, max)`: crop width and height are drawn from `min..=min(side, max)`
    /// (official 384, 600).
    pub crop_size: (usize, usize),
}

/// The official short sides of the final resize.
pub const HICO_SCALES: [usize; 11] = [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800];

impl Default for TrainAugment {
    fn default() -> Self {
        Self::hico()
    }
}

impl TrainAugment {
    /// The official HICO-DET / V-COCO / VG training chain (800-pixel scale).
    pub fn hico() -> Self {
        TrainAugment {
            flip_prob: 0.5,
            color_jitter: [0.4; 3],
            resize_prob: 0.5,
            scales: HICO_SCALES.to_vec(),
            max_size: 1333,
            crop_resize: vec![400, 500, 600],
            crop_size: (384, 600),
        }
    }

    /// The official chain with every size scaled by `short_side_max / 800` (the largest of the
    /// official scales becomes `short_side_max`), the final long side capped at `max_size`. For
    /// small images, e.g. `scaled(128, 213)` for the 128-pixel synthetic demo.
    pub fn scaled(short_side_max: usize, max_size: usize) -> Self {
        let r = short_side_max as f64 / 800.0;
        let s = |v: usize| ((v as f64 * r).round() as usize).max(1);
        let mut scales: Vec<usize> = HICO_SCALES.iter().map(|&v| s(v)).collect();
        scales.dedup();
        let mut crop_resize: Vec<usize> = [400, 500, 600].iter().map(|&v| s(v)).collect();
        crop_resize.dedup();
        TrainAugment {
            scales,
            max_size: max_size.max(1),
            crop_resize,
            crop_size: (s(384), s(600)),
            ..Self::hico()
        }
    }

    /// Checks the settings: probabilities in `[0, 1]`, strengths finite and non-negative,
    /// non-empty lists of positive sizes, `0 < crop min <= crop max`.
    pub fn check(&self) -> Result<(), TransformError> {
        let bad = |m: &str| Err(TransformError::Config(m.to_string()));
        if !(0.0..=1.0).contains(&self.flip_prob) || !(0.0..=1.0).contains(&self.resize_prob) {
            return bad("probabilities must lie in [0, 1]");
        }
        if self.color_jitter.iter().any(|s| !s.is_finite() || *s < 0.0) {
            return bad("colour jitter strengths must be finite and non-negative");
        }
        if self.scales.is_empty() || self.crop_resize.is_empty() {
            return bad("scales and crop_resize must not be empty");
        }
        if self.scales.iter().chain(&self.crop_resize).any(|&v| v == 0) || self.max_size == 0 {
            return bad("sizes must be positive");
        }
        if self.crop_size.0 == 0 || self.crop_size.0 > self.crop_size.1 {
            return bad("crop_size must satisfy 0 < min <= max");
        }
        Ok(())
    }
}

/// `hflip`: mirrors the image; `x0' = w − x1`, `x1' = w − x0`. Labels and pairs are unchanged
/// (the official HOI code swaps no left/right classes).
pub fn hflip(s: &Sample) -> Sample {
    let w = s.image.width;
    let mut data = vec![0u8; s.image.data.len()];
    let row = (w * 3).max(1);
    for (dst, src) in data
        .chunks_exact_mut(row)
        .zip(s.image.data.chunks_exact(row))
    {
        for (d, p) in dst.chunks_exact_mut(3).zip(src.chunks_exact(3).rev()) {
            d.copy_from_slice(p);
        }
    }
    let wf = w as f32;
    Sample {
        image: RgbImage { data, ..s.image },
        boxes: s
            .boxes
            .iter()
            .map(|b| [wf - b[2], b[1], wf - b[0], b[3]])
            .collect(),
        labels: s.labels.clone(),
        pairs: s.pairs.clone(),
    }
}

/// `resize(image, target, size, max_size)`: short side to `size` (long side capped at
/// `max_size`, [`eval_size`]), Pillow bilinear; boxes scaled by the f32 ratios of new to old
/// width and height. Boxes are then clamped to the new image (the official code can overshoot
/// the border by a rounding error).
pub fn resize(s: &Sample, size: usize, max_size: Option<usize>) -> Sample {
    let (w0, h0) = (s.image.width, s.image.height);
    if w0 == 0 || h0 == 0 || size == 0 {
        return s.clone();
    }
    let (h, w) = eval_size(w0, h0, size, max_size);
    let (h, w) = (h.max(1), w.max(1));
    let image = if (w, h) == (w0, h0) {
        s.image.clone()
    } else {
        resize_bilinear(&s.image, w, h)
    };
    let (rw, rh) = ((w as f64 / w0 as f64) as f32, (h as f64 / h0 as f64) as f32);
    let (wf, hf) = (w as f32, h as f32);
    let boxes = s
        .boxes
        .iter()
        .map(|b| {
            [
                (b[0] * rw).clamp(0.0, wf),
                (b[1] * rh).clamp(0.0, hf),
                (b[2] * rw).clamp(0.0, wf),
                (b[3] * rh).clamp(0.0, hf),
            ]
        })
        .collect();
    Sample {
        image,
        boxes,
        labels: s.labels.clone(),
        pairs: s.pairs.clone(),
    }
}

/// A crop rectangle in pixels (torchvision's `(i, j, h, w)` = `(top, left, height, width)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropRegion {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

/// `crop(image, target, region)`: cuts the region (clipped to the image), shifts the boxes by
/// `(left, top)`, clips them to `[0, width] × [0, height]` and removes those left without area
/// (`x1 > x0` and `y1 > y0` must both hold) together with their labels. As the official HOI
/// datasets then build the relation targets only from pairs whose subject and object boxes both
/// survived (`kept_box_indices`), pairs with a removed box are dropped and the others re-indexed,
/// each keeping its subject and object (a pair without an object needs only its subject).
pub fn crop(s: &Sample, region: CropRegion) -> Sample {
    let (iw, ih) = (s.image.width, s.image.height);
    let top = region.top.min(ih);
    let left = region.left.min(iw);
    let (ch, cw) = (region.height.min(ih - top), region.width.min(iw - left));
    let mut data = Vec::with_capacity(ch * cw * 3);
    for y in top..top + ch {
        let row = (y * iw + left) * 3;
        data.extend_from_slice(&s.image.data[row..row + cw * 3]);
    }
    let (dx, dy, wf, hf) = (left as f32, top as f32, cw as f32, ch as f32);
    let mut new_index = vec![None; s.boxes.len()];
    let (mut boxes, mut labels) = (Vec::new(), Vec::new());
    for (i, b) in s.boxes.iter().enumerate() {
        let c = [
            (b[0] - dx).min(wf).max(0.0),
            (b[1] - dy).min(hf).max(0.0),
            (b[2] - dx).min(wf).max(0.0),
            (b[3] - dy).min(hf).max(0.0),
        ];
        if c[2] > c[0] && c[3] > c[1] {
            new_index[i] = Some(boxes.len());
            boxes.push(c);
            if let Some(&l) = s.labels.get(i) {
                labels.push(l);
            }
        }
    }
    let at = |i: usize| new_index.get(i).copied().flatten();
    let pairs = s
        .pairs
        .iter()
        .filter_map(|(sb, ob, v)| {
            let o = match ob {
                Some(o) => Some(at(*o)?),
                None => None,
            };
            Some((at(*sb)?, o, v.clone()))
        })
        .collect();
    Sample {
        image: RgbImage {
            width: cw,
            height: ch,
            data,
        },
        boxes,
        labels,
        pairs,
    }
}

/// Inclusive uniform integer in `lo..=hi` (`lo <= hi`), like Python's `random.randint`.
fn randint(rng: &mut Rng, lo: usize, hi: usize) -> usize {
    lo + rng.below(hi - lo + 1)
}

/// `RandomSizeCrop(min, max)`: width from `min..=min(w, max)`, then height from
/// `min..=min(h, max)`, then the position as torchvision's `RandomCrop.get_params` (no draw when
/// the crop is the whole image). Where the image is smaller than `min` (the official code would
/// raise) the side is kept whole.
pub fn random_size_crop(s: &Sample, min: usize, max: usize, rng: &mut Rng) -> Sample {
    let (w, h) = (s.image.width, s.image.height);
    let side = |rng: &mut Rng, len: usize| {
        let hi = len.min(max);
        randint(rng, min.min(hi), hi)
    };
    let tw = side(rng, w);
    let th = side(rng, h);
    let (top, left) = if (tw, th) == (w, h) {
        (0, 0)
    } else {
        (randint(rng, 0, h - th), randint(rng, 0, w - tw))
    };
    crop(
        s,
        CropRegion {
            top,
            left,
            height: th,
            width: tw,
        },
    )
}

/// Pillow's `Image.blend(a, b, alpha)` on one 8-bit value: `a + alpha·(b − a)` in f32, truncated
/// to an integer and clipped to `0..=255`.
fn blend(a: u8, b: u8, alpha: f32) -> u8 {
    // `as u8` truncates toward zero and saturates, which is Pillow's cast and its clipping.
    (a as f32 + alpha * (b as i32 - a as i32) as f32) as u8
}

/// Pillow's `convert('L')`: ITU-R 601-2 luma in 16-bit fixed point, rounded.
fn luma(p: &[u8]) -> u8 {
    ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8
}

/// Applies `blend(base, v, factor)` to every value through a 256-entry table.
fn blend_all(img: &mut RgbImage, base: u8, factor: f32) {
    let lut: [u8; 256] = std::array::from_fn(|v| blend(base, v as u8, factor));
    for v in &mut img.data {
        *v = lut[*v as usize];
    }
}

/// torchvision `adjust_brightness` on a PIL image (`ImageEnhance.Brightness`): blend with black.
pub fn adjust_brightness(img: &mut RgbImage, factor: f32) {
    blend_all(img, 0, factor);
}

/// torchvision `adjust_contrast` on a PIL image (`ImageEnhance.Contrast`): blend with the mean of
/// the grey image, rounded to an integer level.
pub fn adjust_contrast(img: &mut RgbImage, factor: f32) {
    let n = img.data.len() / 3;
    if n == 0 {
        return;
    }
    let sum: u64 = img.data.chunks_exact(3).map(|p| luma(p) as u64).sum();
    let mean = (sum as f64 / n as f64 + 0.5) as u8;
    blend_all(img, mean, factor);
}

/// torchvision `adjust_saturation` on a PIL image (`ImageEnhance.Color`): blend each pixel with
/// its grey level.
pub fn adjust_saturation(img: &mut RgbImage, factor: f32) {
    for p in img.data.chunks_exact_mut(3) {
        let g = luma(p);
        for v in p {
            *v = blend(g, *v, factor);
        }
    }
}

/// `ColorJitter(brightness, contrast, saturation)` with given factors, applied in `order`
/// (0 = brightness, 1 = contrast, 2 = saturation); a `None` factor is skipped.
pub fn color_jitter_with(img: &mut RgbImage, factors: [Option<f32>; 3], order: [usize; 3]) {
    for op in order {
        match (op, factors.get(op).copied().flatten()) {
            (0, Some(f)) => adjust_brightness(img, f),
            (1, Some(f)) => adjust_contrast(img, f),
            (2, Some(f)) => adjust_saturation(img, f),
            _ => {}
        }
    }
}

/// torchvision `ColorJitter.get_params` + forward: a random order of the three operations, then a
/// factor uniform in `[max(0, 1 − s), 1 + s]` for each non-zero strength `s`; returns the factors
/// and order used.
pub fn color_jitter(
    img: &mut RgbImage,
    strength: [f32; 3],
    rng: &mut Rng,
) -> ([Option<f32>; 3], [usize; 3]) {
    let mut order = [0, 1, 2];
    rng.shuffle(&mut order);
    let factors = strength.map(|s| (s > 0.0).then(|| rng.range_f32((1.0 - s).max(0.0), 1.0 + s)));
    color_jitter_with(img, factors, order);
    (factors, order)
}

/// The official training augmentation (see the module documentation) of a checked sample
/// ([`Sample::check`]) under checked settings ([`TrainAugment::check`]); deterministic given
/// `rng`. An empty image or an inconsistent pixel buffer is returned unchanged; empty size lists
/// skip their resize.
pub fn augment(s: &Sample, cfg: &TrainAugment, rng: &mut Rng) -> Sample {
    let img = &s.image;
    if img.width == 0 || img.height == 0 || img.data.len() != img.width * img.height * 3 {
        return s.clone();
    }
    let mut out = if rng.chance(cfg.flip_prob) {
        hflip(s)
    } else {
        s.clone()
    };
    if cfg.color_jitter.iter().any(|&v| v > 0.0) {
        color_jitter(&mut out.image, cfg.color_jitter, rng);
    }
    let random_resize = |s: Sample, sizes: &[usize], max: Option<usize>, rng: &mut Rng| {
        if sizes.is_empty() {
            s
        } else {
            resize(&s, rng.pick(sizes), max)
        }
    };
    let max = Some(cfg.max_size);
    if !rng.chance(cfg.resize_prob) {
        out = random_resize(out, &cfg.crop_resize, None, rng);
        out = random_size_crop(&out, cfg.crop_size.0, cfg.crop_size.1, rng);
    }
    random_resize(out, &cfg.scales, max, rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(w: usize, h: usize, f: impl Fn(usize, usize, usize) -> u8) -> RgbImage {
        let mut data = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    data.push(f(x, y, c));
                }
            }
        }
        RgbImage {
            width: w,
            height: h,
            data,
        }
    }

    #[test]
    fn pillow_blend_and_luma() {
        // Pillow: Image.blend(black, 200, 0.5) = 100; extrapolation clips.
        assert_eq!(blend(0, 200, 0.5), 100);
        assert_eq!(blend(0, 200, 1.4), 255);
        assert_eq!(blend(100, 10, 1.4), 0);
        // a + alpha (b - a) truncates: 10 + 0.6 * 7 = 14.2 -> 14
        assert_eq!(blend(10, 17, 0.6), 14);
        assert_eq!(luma(&[255, 255, 255]), 255);
        assert_eq!(luma(&[255, 0, 0]), 76); // 0.299 * 255 = 76.2
        assert_eq!(luma(&[0, 255, 0]), 150); // 0.587 * 255 = 149.7
    }

    #[test]
    fn contrast_uses_rounded_grey_mean() {
        let mut a = img(2, 1, |x, _, _| if x == 0 { 0 } else { 101 });
        // mean of L = 50.5 -> 51; factor 0 gives the flat mean image.
        adjust_contrast(&mut a, 0.0);
        assert!(a.data.iter().all(|&v| v == 51));
    }

    #[test]
    fn crop_drops_pairs_with_an_emptied_box() {
        let s = Sample {
            image: img(10, 10, |x, y, c| (x + 10 * y + c) as u8),
            boxes: vec![
                [0.0, 0.0, 4.0, 4.0],
                [6.0, 6.0, 9.0, 9.0],
                [3.0, 3.0, 8.0, 8.0],
            ],
            labels: vec![0, 5, 7],
            pairs: vec![
                (0, Some(1), vec![1]),
                (2, Some(1), vec![2, 3]),
                (0, Some(2), vec![4]),
                // no object: kept while its subject is
                (2, None, vec![5]),
                (0, None, vec![6]),
            ],
        };
        let r = CropRegion {
            top: 5,
            left: 5,
            height: 5,
            width: 5,
        };
        let c = crop(&s, r);
        assert_eq!((c.image.width, c.image.height), (5, 5));
        assert_eq!(&c.image.data[..3], &[55, 56, 57]);
        assert_eq!(c.boxes, vec![[1.0, 1.0, 4.0, 4.0], [0.0, 0.0, 3.0, 3.0]]);
        assert_eq!(c.labels, vec![5, 7]);
        assert_eq!(c.pairs, vec![(1, Some(0), vec![2, 3]), (1, None, vec![5])]);
    }

    #[test]
    fn scaled_config_follows_the_official_ratios() {
        let c = TrainAugment::scaled(800, 1333);
        assert_eq!(c, TrainAugment::hico());
        let c = TrainAugment::scaled(128, 213);
        assert_eq!(c.scales.first(), Some(&77));
        assert_eq!(c.scales.last(), Some(&128));
        assert_eq!(c.crop_resize, vec![64, 80, 96]);
        assert_eq!(c.crop_size, (61, 96));
        c.check().unwrap();
    }
}

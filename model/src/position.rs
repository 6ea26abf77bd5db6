//! Padding masks, the 2-D sine positional encoding, and other functions of the mask alone.
//!
//! These depend only on image sizes. The cumulative sums are computed on the host in float32
//! exactly as the official code computes them (its `cumsum(dtype=float32)` and float32 `dim_t`);
//! the sines and cosines of the encoding on the model's device, so only `2·B·H·W` coordinates are
//! uploaded instead of `256·B·H·W` encoding values.

use burn::prelude::*;

/// A batch padding mask `[B, H, W]`, true on padded pixels (DETR's convention).
#[derive(Debug, Clone, PartialEq)]
pub struct PaddingMask {
    /// Batch size.
    pub batch: usize,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// Row-major `[B, H, W]`, true = padding.
    pub data: Vec<bool>,
}

impl PaddingMask {
    /// The mask of a batch zero-padded at the bottom/right to `(height, width)`, from each image's
    /// `(h, w)` (DETR's `nested_tensor_from_tensor_list`).
    pub fn from_sizes(sizes: &[(usize, usize)], height: usize, width: usize) -> Self {
        let mut data = Vec::with_capacity(sizes.len() * height * width);
        for &(h, w) in sizes {
            assert!(
                h <= height && w <= width,
                "image {h}x{w} larger than the batch {height}x{width}"
            );
            for y in 0..height {
                for x in 0..width {
                    data.push(y >= h || x >= w);
                }
            }
        }
        Self {
            batch: sizes.len(),
            height,
            width,
            data,
        }
    }

    /// From `[B, H, W]` bytes, non-zero = padding.
    pub fn from_u8(batch: usize, height: usize, width: usize, bytes: &[u8]) -> Self {
        assert_eq!(bytes.len(), batch * height * width, "mask bytes");
        Self {
            batch,
            height,
            width,
            data: bytes.iter().map(|&b| b != 0).collect(),
        }
    }

    fn at(&self, b: usize, y: usize, x: usize) -> bool {
        self.data[(b * self.height + y) * self.width + x]
    }

    /// Nearest-neighbour resize to `(h, w)`, as `F.interpolate(mask.float(), size).bool()`:
    /// source index `floor(dst · (in / out))` with the scale in float32.
    pub fn resize_nearest(&self, h: usize, w: usize) -> Self {
        let sy = self.height as f32 / h as f32;
        let sx = self.width as f32 / w as f32;
        let src = |d: usize, s: f32, n: usize| ((d as f32 * s).floor() as usize).min(n - 1);
        let mut data = Vec::with_capacity(self.batch * h * w);
        for b in 0..self.batch {
            for y in 0..h {
                let ys = src(y, sy, self.height);
                for x in 0..w {
                    data.push(self.at(b, ys, src(x, sx, self.width)));
                }
            }
        }
        Self {
            batch: self.batch,
            height: h,
            width: w,
            data,
        }
    }

    /// `[B, H, W]` boolean tensor (true = padding).
    pub fn to_tensor(&self, device: &Device) -> Tensor<3, Bool> {
        Tensor::from_data(
            TensorData::new(self.data.clone(), [self.batch, self.height, self.width]),
            device,
        )
    }

    /// Per-image valid ratios `(w, h)`: unpadded columns of the first row over W, unpadded rows of
    /// the first column over H (float32, as the official `get_valid_ratio`).
    pub fn valid_ratios(&self) -> Vec<[f32; 2]> {
        (0..self.batch)
            .map(|b| {
                let vh = (0..self.height).filter(|&y| !self.at(b, y, 0)).count();
                let vw = (0..self.width).filter(|&x| !self.at(b, 0, x)).count();
                [
                    vw as f32 / self.width as f32,
                    vh as f32 / self.height as f32,
                ]
            })
            .collect()
    }
}

/// The normalised cumulative coordinates the sine encoding is taken of, `(y, x)`, each
/// row-major `[B, H·W]`: the cumulative sums of the unpadded indicator along y and x, minus
/// `0.5` when `offset` (the Swin variant), over the column's / row's total plus `1e-6`, times 2π.
pub fn sine_coordinates(mask: &PaddingMask, offset: bool) -> (Vec<f32>, Vec<f32>) {
    let (bs, h, w) = (mask.batch, mask.height, mask.width);
    let scale = 2.0 * std::f32::consts::PI;
    let eps = 1e-6f32;
    let off = if offset { 0.5 } else { 0.0 };
    let mut yn = vec![0f32; bs * h * w];
    let mut xn = vec![0f32; bs * h * w];
    let mut ye = vec![0f32; h * w];
    let mut xe = vec![0f32; h * w];
    for b in 0..bs {
        for y in 0..h {
            for x in 0..w {
                let v = if mask.at(b, y, x) { 0.0 } else { 1.0 };
                ye[y * w + x] = v + if y > 0 { ye[(y - 1) * w + x] } else { 0.0 };
                xe[y * w + x] = v + if x > 0 { xe[y * w + x - 1] } else { 0.0 };
            }
        }
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                yn[b * h * w + i] = (ye[i] - off) / (ye[(h - 1) * w + x] + eps) * scale;
                xn[b * h * w + i] = (xe[i] - off) / (xe[y * w + w - 1] + eps) * scale;
            }
        }
    }
    (yn, xn)
}

/// The `feats / 2` distinct frequencies `10000^(2k / feats)` of the sine encoding (channels `2k`
/// and `2k + 1` share one, taking its sine and cosine).
fn sine_frequencies(feats: usize) -> Vec<f32> {
    (0..feats / 2)
        .map(|k| 10000f32.powf((2 * k) as f32 / feats as f32))
        .collect()
}

/// DETR's normalised 2-D sine positional encoding, `[B, 2·feats, H, W]` (y features first),
/// computed on the host. The model computes the same on its device with [`sine_embed`].
///
/// `offset` selects the Swin variant of the official code, which subtracts 0.5 from the cumulative
/// sums before normalising; the ResNet variant does not.
pub fn sine_position_embedding(mask: &PaddingMask, feats: usize, offset: bool) -> Vec<f32> {
    let (bs, h, w) = (mask.batch, mask.height, mask.width);
    let (yn, xn) = sine_coordinates(mask, offset);
    let freq = sine_frequencies(feats);
    let mut out = vec![0f32; bs * 2 * feats * h * w];
    for b in 0..bs {
        for i in 0..h * w {
            let (y, x) = (yn[b * h * w + i], xn[b * h * w + i]);
            for c in 0..feats {
                let d = freq[c / 2];
                let (py, px) = (y / d, x / d);
                let (vy, vx) = if c % 2 == 0 {
                    (py.sin(), px.sin())
                } else {
                    (py.cos(), px.cos())
                };
                out[(b * 2 * feats + c) * h * w + i] = vy;
                out[(b * 2 * feats + feats + c) * h * w + i] = vx;
            }
        }
    }
    out
}

/// The sine encoding of normalised coordinates `coords [B, S, 1]` (from [`sine_coordinates`])
/// on their device: `[B, S, feats]`, channel `2k` the sine and `2k + 1` the cosine of
/// `coords / 10000^(2k / feats)`.
pub fn sine_embed(coords: Tensor<3>, feats: usize) -> Tensor<3> {
    let [b, s, _] = coords.dims();
    let freq = sine_frequencies(feats);
    let n = freq.len();
    let freq = Tensor::<1>::from_data(TensorData::new(freq, [n]), &coords.device());
    let a = coords / freq.reshape([1, 1, n]);
    Tensor::cat(
        vec![
            a.clone().sin().unsqueeze_dim::<4>(3),
            a.cos().unsqueeze_dim::<4>(3),
        ],
        3,
    )
    .reshape([b, s, 2 * n])
}

/// Encoder reference points `[B, S, L, 2]`: pixel centres of every level normalised by the valid
/// size, then scaled by each level's valid ratio (`get_reference_points`, in float32).
pub fn encoder_reference_points(
    shapes: &[[usize; 2]],
    ratios: &[Vec<[f32; 2]>],
) -> (Vec<f32>, [usize; 4]) {
    let bs = ratios.len();
    let l = shapes.len();
    let s: usize = shapes.iter().map(|[h, w]| h * w).sum();
    let mut out = Vec::with_capacity(bs * s * l * 2);
    let linspace = |n: usize| -> Vec<f32> {
        // torch.linspace(0.5, n - 0.5, n) in float32: start + i * step, symmetric from the end
        let (a, b) = (0.5f32, n as f32 - 0.5);
        let step = if n > 1 { (b - a) / (n - 1) as f32 } else { 0.0 };
        let half = n / 2;
        (0..n)
            .map(|i| {
                if i < half {
                    a + step * i as f32
                } else {
                    b - step * (n - 1 - i) as f32
                }
            })
            .collect()
    };
    for r in ratios {
        for (lvl, &[h, w]) in shapes.iter().enumerate() {
            let ys = linspace(h);
            let xs = linspace(w);
            let (rx, ry) = (r[lvl][0], r[lvl][1]);
            for yv in &ys {
                for xv in &xs {
                    let px = xv / (rx * w as f32);
                    let py = yv / (ry * h as f32);
                    for rr in r.iter().take(l) {
                        out.push(px * rr[0]);
                        out.push(py * rr[1]);
                    }
                }
            }
        }
    }
    (out, [bs, s, l, 2])
}

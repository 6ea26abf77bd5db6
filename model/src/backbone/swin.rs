//! Swin Transformer backbone, as RLIPv2 builds it for detection.
//!
//! Reference: Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted
//! Windows" (ICCV 2021). The official RLIPv2 code (`models/swin/swin_transformer.py`, built by
//! `models/swin/backbone.py`) uses the detection variant of Swin:
//!
//! - the image is zero-padded on the right/bottom to a multiple of the patch size, embedded by a
//!   `patch×patch` stride-`patch` convolution and layer-normed (`patch_norm`); no absolute
//!   position embedding (`ape = False`);
//! - every block zero-pads its (layer-normed) feature map on the right/bottom to a multiple of the
//!   window size; the window size is never shrunk for small maps, and odd blocks always shift by
//!   `window / 2`;
//! - shifted windows use an additive mask of `-100.0` between tokens of different regions; padded
//!   tokens are *not* masked (they take part in attention as zero inputs);
//! - patch merging zero-pads odd sizes and concatenates the 2×2 neighbours in the order
//!   (even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col);
//! - each returned stage `i` in `out_indices` is the stage output *before* its patch merging,
//!   normed by `norm{i}` and reshaped to `[B, C, H, W]`.
//!
//! Drop path and dropout are identity at inference and are not modelled. Following the official
//! `BackboneBase`, every LayerNorm parameter and every relative-position-bias table of the
//! backbone is frozen (`requires_grad = False`).

use crate::dense::{Linear, conv_forward, matmul};
use crate::norm::LayerNorm;
use crate::norm::softmax;
use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::activation::gelu;
use burn::tensor::ops::PadMode;
use serde::{Deserialize, Serialize};

use crate::weights::layers::{ConvSpec, conv2d, layer_norm, linear_from};
use crate::weights::{Init, Loader};

/// Additive attention mask between tokens of different regions in a shifted window.
const SHIFT_MASK_VALUE: f32 = -100.0;

/// Swin Transformer hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwinConfig {
    /// Channels after the patch embedding (stage `i` has `embed_dim · 2^i` channels).
    pub embed_dim: usize,
    /// Number of blocks in each stage.
    pub depths: Vec<usize>,
    /// Attention heads in each stage.
    pub num_heads: Vec<usize>,
    /// Side of the square attention window.
    pub window_size: usize,
    /// MLP hidden width as a multiple of the stage width (truncated like Python's `int`).
    pub mlp_ratio: f64,
    /// Side of the square patch embedded by the stem convolution.
    pub patch_size: usize,
    /// Whether the `qkv` projection has a bias.
    pub qkv_bias: bool,
    /// Stages whose outputs are returned (each gets its own `norm{i}` LayerNorm).
    pub out_indices: Vec<usize>,
    /// Epsilon of every LayerNorm.
    pub norm_eps: f64,
    /// Stochastic depth in training (`--drop_path_rate`: RLIPv2 uses 0.2 for Swin-T and 0.5
    /// for Swin-L): block `k` of `n` drops its residual branches per image with probability
    /// `rate · k / (n − 1)`. 0 when absent from a file.
    #[serde(default)]
    pub drop_path_rate: f64,
}

impl SwinConfig {
    fn preset(embed_dim: usize, depths: [usize; 4], num_heads: [usize; 4]) -> Self {
        Self {
            embed_dim,
            depths: depths.to_vec(),
            num_heads: num_heads.to_vec(),
            window_size: 7,
            mlp_ratio: 4.0,
            patch_size: 4,
            qkv_bias: true,
            out_indices: vec![1, 2, 3],
            norm_eps: 1e-5,
            drop_path_rate: 0.0,
        }
    }

    /// Swin-T (`swin_tiny`): embed 96, depths 2-2-6-2, heads 3-6-12-24, drop path 0.2 (the
    /// RLIPv2 scripts).
    pub fn tiny() -> Self {
        Self {
            drop_path_rate: 0.2,
            ..Self::preset(96, [2, 2, 6, 2], [3, 6, 12, 24])
        }
    }

    /// Swin-S (`swin_small`): embed 96, depths 2-2-18-2, heads 3-6-12-24.
    pub fn small() -> Self {
        Self {
            drop_path_rate: 0.3,
            ..Self::preset(96, [2, 2, 18, 2], [3, 6, 12, 24])
        }
    }

    /// Swin-B (`swin_base`, window 7): embed 128, depths 2-2-18-2, heads 4-8-16-32.
    pub fn base() -> Self {
        Self {
            drop_path_rate: 0.5,
            ..Self::preset(128, [2, 2, 18, 2], [4, 8, 16, 32])
        }
    }

    /// Swin-L (`swin_large`, window 7): embed 192, depths 2-2-18-2, heads 6-12-24-48, drop path
    /// 0.5 (the RLIPv2 scripts; Swin-S 0.3 and Swin-B 0.5 are Swin's own settings).
    pub fn large() -> Self {
        Self {
            drop_path_rate: 0.5,
            ..Self::preset(192, [2, 2, 18, 2], [6, 12, 24, 48])
        }
    }

    /// Channels of stage `i` (`embed_dim · 2^i`).
    pub fn stage_channels(&self, i: usize) -> usize {
        self.embed_dim << i
    }

    /// Channels of the returned levels, in `out_indices` order.
    pub fn out_channels(&self) -> Vec<usize> {
        self.out_indices
            .iter()
            .map(|&i| self.stage_channels(i))
            .collect()
    }

    /// Strides of the returned levels relative to the input image.
    pub fn out_strides(&self) -> Vec<usize> {
        self.out_indices
            .iter()
            .map(|&i| self.patch_size << i)
            .collect()
    }

    /// Panics with a clear message if the configuration cannot be built.
    fn validate(&self) {
        let n = self.depths.len();
        assert!(n > 0, "SwinConfig: at least one stage is required");
        assert_eq!(
            self.num_heads.len(),
            n,
            "SwinConfig: num_heads must have one entry per stage"
        );
        assert!(
            self.window_size > 0 && self.patch_size > 0,
            "SwinConfig: window and patch must be > 0"
        );
        for (i, &h) in self.num_heads.iter().enumerate() {
            let c = self.stage_channels(i);
            assert!(
                h > 0 && c.is_multiple_of(h),
                "SwinConfig: stage {i} width {c} is not divisible by {h} heads"
            );
        }
        for &i in &self.out_indices {
            assert!(i < n, "SwinConfig: out index {i} is outside the {n} stages");
        }
    }
}

/// Swin's `relative_position_index` for a `w×w` window, row-major `[w², w²]`.
///
/// Entry `(a, b)` indexes the bias table row of the offset from token `b` to token `a`:
/// `(Δrow + w − 1) · (2w − 1) + (Δcol + w − 1)`.
pub fn relative_position_index(w: usize) -> Vec<i64> {
    let n = w * w;
    let w = w as i64;
    let mut out = Vec::with_capacity(n * n);
    for a in 0..n as i64 {
        for b in 0..n as i64 {
            let dr = a / w - b / w + w - 1;
            let dc = a % w - b % w + w - 1;
            out.push(dr * (2 * w - 1) + dc);
        }
    }
    out
}

/// The shifted-window attention mask `[nW, w², w²]` for a padded `hp×wp` map (row-major values).
///
/// Rows/columns are split into three regions, `[0, n−w)`, `[n−w, n−shift)`, `[n−shift, n)`; two
/// tokens of one window attend freely if they share a region label, else get `-100`.
fn shift_mask_values(hp: usize, wp: usize, w: usize, shift: usize) -> Vec<f32> {
    let region = |i: usize, n: usize| -> usize {
        if i + w < n {
            0
        } else if i + shift < n {
            1
        } else {
            2
        }
    };
    let (nh, nw) = (hp / w, wp / w);
    let n = w * w;
    let mut out = Vec::with_capacity(nh * nw * n * n);
    let mut labels = vec![0usize; n];
    for wr in 0..nh {
        for wc in 0..nw {
            for (t, l) in labels.iter_mut().enumerate() {
                let (r, c) = (wr * w + t / w, wc * w + t % w);
                *l = region(r, hp) * 3 + region(c, wp);
            }
            for &la in &labels {
                for &lb in &labels {
                    out.push(if la == lb { 0.0 } else { SHIFT_MASK_VALUE });
                }
            }
        }
    }
    out
}

/// `nn.Linear` with Swin's own initialisation (weight N(0, 0.02), bias 0) when not loaded.
fn swin_linear(ld: &mut Loader, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Linear {
    let w = ld.tensor(
        &format!("{prefix}.weight"),
        [d_out, d_in],
        Init::Normal(0.02),
    );
    let b = bias.then(|| ld.tensor(&format!("{prefix}.bias"), [d_out], Init::Zeros));
    linear_from(w, b)
}

/// A LayerNorm whose parameters are frozen, as the official backbone freezes every `*norm*`.
fn frozen_norm(ld: &mut Loader, prefix: &str, d: usize, eps: f64) -> LayerNorm {
    let mut n = layer_norm(ld, prefix, d, eps);
    n.gamma = n.gamma.set_require_grad(false);
    n.beta = n.beta.map(|b| b.set_require_grad(false));
    n
}

/// Window multi-head self-attention with a learned relative position bias.
#[derive(Module, Debug)]
struct WindowAttention {
    qkv: Linear,
    proj: Linear,
    /// `[(2w−1)², heads]`.
    bias_table: Param<Tensor<2>>,
    /// `[w⁴]` rows of `bias_table` for each (query, key) pair.
    bias_index: Tensor<1, Int>,
    heads: usize,
    window: usize,
}

impl WindowAttention {
    fn load(ld: &mut Loader, p: &str, dim: usize, heads: usize, cfg: &SwinConfig) -> Self {
        let w = cfg.window_size;
        let table = ld.tensor(
            &format!("{p}.relative_position_bias_table"),
            [(2 * w - 1) * (2 * w - 1), heads],
            Init::Normal(0.02),
        );
        let index = relative_position_index(w);
        ld.buffer_i64(&format!("{p}.relative_position_index"), &index);
        let n = index.len();
        let bias_index = Tensor::from_data(TensorData::new(index, [n]), ld.device());
        Self {
            qkv: swin_linear(ld, &format!("{p}.qkv"), dim, 3 * dim, cfg.qkv_bias),
            proj: swin_linear(ld, &format!("{p}.proj"), dim, dim, true),
            bias_table: Param::from_tensor(table).set_require_grad(false),
            bias_index,
            heads,
            window: w,
        }
    }

    /// `[B·nW, N, C]` windows → same shape; `mask` is `[nW, N, N]` for shifted windows.
    fn forward(&self, x: Tensor<3>, mask: Option<&Tensor<3>>) -> Tensor<3> {
        let [bw, n, c] = x.dims();
        let (h, hd) = (self.heads, c / self.heads);
        let qkv = self.qkv.forward(x).reshape([bw, n, 3, h, hd]);
        let part = |i: usize| {
            qkv.clone()
                .slice_dim(2, i..i + 1)
                .reshape([bw, n, h, hd])
                .swap_dims(1, 2)
        };
        let scale = (hd as f64).powf(-0.5);
        let q = part(0) * scale;
        let (k, v) = (part(1), part(2));
        let mut attn = matmul(q, k.swap_dims(2, 3)); // [bw, h, n, n]

        let nn = self.window * self.window;
        let bias = self
            .bias_table
            .val()
            .select(0, self.bias_index.clone())
            .reshape([nn, nn, h])
            .permute([2, 0, 1])
            .unsqueeze::<4>();
        attn = attn + bias;
        if let Some(m) = mask {
            let nw = m.dims()[0];
            let masked = attn.reshape([bw / nw, nw, h, n, n]) + m.clone().reshape([1, nw, 1, n, n]);
            attn = masked.reshape([bw, h, n, n]);
        }
        let attn = softmax(attn, 3);
        let out = matmul(attn, v).swap_dims(1, 2).reshape([bw, n, c]);
        self.proj.forward(out)
    }
}

/// The two-layer GELU MLP of a block.
#[derive(Module, Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

/// One Swin block: (shifted) window attention and an MLP, each pre-normed with a residual.
#[derive(Module, Debug)]
struct SwinBlock {
    norm1: LayerNorm,
    attn: WindowAttention,
    norm2: LayerNorm,
    mlp: Mlp,
    window: usize,
    shift: usize,
    drop_path: f64,
}

impl SwinBlock {
    fn load(
        ld: &mut Loader,
        p: &str,
        dim: usize,
        heads: usize,
        shift: usize,
        drop_path: f64,
        cfg: &SwinConfig,
    ) -> Self {
        let hidden = (dim as f64 * cfg.mlp_ratio) as usize;
        Self {
            norm1: frozen_norm(ld, &format!("{p}.norm1"), dim, cfg.norm_eps),
            attn: WindowAttention::load(ld, &format!("{p}.attn"), dim, heads, cfg),
            norm2: frozen_norm(ld, &format!("{p}.norm2"), dim, cfg.norm_eps),
            mlp: Mlp {
                fc1: swin_linear(ld, &format!("{p}.mlp.fc1"), dim, hidden, true),
                fc2: swin_linear(ld, &format!("{p}.mlp.fc2"), hidden, dim, true),
            },
            window: cfg.window_size,
            shift,
            drop_path,
        }
    }

    /// `[B, H·W, C]` → same shape; `mask` is the stage's shifted-window mask.
    fn forward(&self, x: Tensor<3>, h: usize, w: usize, mask: &Tensor<3>) -> Tensor<3> {
        let [b, _, c] = x.dims();
        let ws = self.window;
        let hp = h.div_ceil(ws) * ws;
        let wp = w.div_ceil(ws) * ws;

        let y = self.norm1.forward(x.clone()).reshape([b, h, w, c]);
        let mut y = y.pad([(0, hp - h), (0, wp - w), (0, 0)], PadMode::Constant(0.0));
        let s = self.shift as i64;
        if s > 0 {
            y = y.roll(&[-s, -s], &[1, 2]);
        }
        let (nh, nw) = (hp / ws, wp / ws);
        let windows = y
            .reshape([b, nh, ws, nw, ws, c])
            .permute([0, 1, 3, 2, 4, 5])
            .reshape([b * nh * nw, ws * ws, c]);
        let windows = self.attn.forward(windows, (s > 0).then_some(mask));
        let mut y: Tensor<4> = windows
            .reshape([b, nh, nw, ws, ws, c])
            .permute([0, 1, 3, 2, 4, 5])
            .reshape([b, hp, wp, c]);
        if s > 0 {
            y = y.roll(&[s, s], &[1, 2]);
        }
        if hp > h || wp > w {
            y = y.slice(s![.., 0..h, 0..w, ..]);
        }
        let x = x + drop_path(y.reshape([b, h * w, c]), self.drop_path);
        let z = self.mlp.fc1.forward(self.norm2.forward(x.clone()));
        x + drop_path(self.mlp.fc2.forward(gelu(z)), self.drop_path)
    }
}

/// Stochastic depth (`timm`'s `DropPath`): in training on an autodiff device, keeps each
/// image's residual branch with probability `1 − p`, scaled by `1 / (1 − p)`; the identity
/// otherwise.
fn drop_path(x: Tensor<3>, p: f64) -> Tensor<3> {
    if p <= 0.0 || !x.device().is_autodiff() {
        return x;
    }
    let [b, _, _] = x.dims();
    let keep = 1.0 - p;
    let mask = Tensor::<3>::random(
        [b, 1, 1],
        burn::tensor::Distribution::Bernoulli(keep),
        &x.device(),
    );
    (x * mask).mul_scalar(1.0 / keep)
}

/// 2×2 patch merging: concatenate neighbours (4C), LayerNorm, project to 2C without bias.
#[derive(Module, Debug)]
struct PatchMerging {
    norm: LayerNorm,
    reduction: Linear,
}

impl PatchMerging {
    fn load(ld: &mut Loader, p: &str, dim: usize, cfg: &SwinConfig) -> Self {
        Self {
            norm: frozen_norm(ld, &format!("{p}.norm"), 4 * dim, cfg.norm_eps),
            reduction: swin_linear(ld, &format!("{p}.reduction"), 4 * dim, 2 * dim, false),
        }
    }

    /// `[B, H·W, C]` → `[B, ⌈H/2⌉·⌈W/2⌉, 2C]`.
    fn forward(&self, x: Tensor<3>, h: usize, w: usize) -> Tensor<3> {
        let [b, _, c] = x.dims();
        let x = x
            .reshape([b, h, w, c])
            .pad([(0, h % 2), (0, w % 2), (0, 0)], PadMode::Constant(0.0));
        let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
        // [B, h2, dr, w2, dc, C] → [B, h2, w2, dc, dr, C]: the 4C channels come in the order
        // (dr, dc) = (0,0), (1,0), (0,1), (1,1).
        let x = x
            .reshape([b, h2, 2, w2, 2, c])
            .permute([0, 1, 3, 4, 2, 5])
            .reshape([b, h2 * w2, 4 * c]);
        self.reduction.forward(self.norm.forward(x))
    }
}

/// One stage: `depth` blocks alternating plain and shifted windows, then optional patch merging.
#[derive(Module, Debug)]
struct Stage {
    blocks: Vec<SwinBlock>,
    downsample: Option<PatchMerging>,
    window: usize,
}

impl Stage {
    /// `[B, H·W, C]` → the stage output (same size) and the merged input of the next stage.
    fn forward(&self, x: Tensor<3>, h: usize, w: usize) -> (Tensor<3>, Option<Tensor<3>>) {
        let ws = self.window;
        let (hp, wp) = (h.div_ceil(ws) * ws, w.div_ceil(ws) * ws);
        let mask_values = shift_mask_values(hp, wp, ws, ws / 2);
        let nw = (hp / ws) * (wp / ws);
        let mask = Tensor::from_data(
            TensorData::new(mask_values, [nw, ws * ws, ws * ws]),
            &x.device(),
        );
        let mut x = x;
        for blk in &self.blocks {
            x = blk.forward(x, h, w, &mask);
        }
        let next = self.downsample.as_ref().map(|d| d.forward(x.clone(), h, w));
        (x, next)
    }
}

/// The patch-embedding stem: pad to a patch multiple, strided conv, LayerNorm.
#[derive(Module, Debug)]
struct PatchEmbed {
    proj: Conv2d,
    norm: LayerNorm,
    patch: usize,
}

/// Swin Transformer backbone returning the normed outputs of the stages in `out_indices`.
#[derive(Module, Debug)]
pub struct Swin {
    patch_embed: PatchEmbed,
    stages: Vec<Stage>,
    /// `norm{i}` for each `i` of `out_indices`, in that order.
    out_norms: Vec<LayerNorm>,
    out_indices: Vec<usize>,
    channels: Vec<usize>,
}

impl Swin {
    /// Builds the backbone from official keys under `prefix` (`backbone.0.body` in RLIPv2):
    /// `patch_embed.*`, `layers.{i}.blocks.{j}.*`, `layers.{i}.downsample.*`, `norm{i}.*`.
    ///
    /// Panics if `cfg` is inconsistent (see [`SwinConfig`]).
    pub fn load(ld: &mut Loader, prefix: &str, cfg: &SwinConfig) -> Self {
        cfg.validate();
        let p = prefix;
        let e = cfg.embed_dim;
        let patch_embed = PatchEmbed {
            proj: conv2d(
                ld,
                &format!("{p}.patch_embed.proj"),
                ConvSpec::new(3, e, cfg.patch_size, cfg.patch_size, 0, true),
            ),
            norm: frozen_norm(ld, &format!("{p}.patch_embed.norm"), e, cfg.norm_eps),
            patch: cfg.patch_size,
        };
        let n = cfg.depths.len();
        // the official linear schedule: torch.linspace(0, rate, total blocks)
        let total: usize = cfg.depths.iter().sum();
        let rate = |k: usize| cfg.drop_path_rate * k as f64 / (total.max(2) - 1) as f64;
        let stages = (0..n)
            .map(|i| {
                let dim = cfg.stage_channels(i);
                let before: usize = cfg.depths[..i].iter().sum();
                let blocks = (0..cfg.depths[i])
                    .map(|j| {
                        let shift = if j % 2 == 0 { 0 } else { cfg.window_size / 2 };
                        SwinBlock::load(
                            ld,
                            &format!("{p}.layers.{i}.blocks.{j}"),
                            dim,
                            cfg.num_heads[i],
                            shift,
                            rate(before + j),
                            cfg,
                        )
                    })
                    .collect();
                let downsample = (i + 1 < n).then(|| {
                    PatchMerging::load(ld, &format!("{p}.layers.{i}.downsample"), dim, cfg)
                });
                Stage {
                    blocks,
                    downsample,
                    window: cfg.window_size,
                }
            })
            .collect();
        let out_norms = cfg
            .out_indices
            .iter()
            .map(|&i| {
                frozen_norm(
                    ld,
                    &format!("{p}.norm{i}"),
                    cfg.stage_channels(i),
                    cfg.norm_eps,
                )
            })
            .collect();
        Self {
            patch_embed,
            stages,
            out_norms,
            out_indices: cfg.out_indices.clone(),
            channels: cfg.out_channels(),
        }
    }

    /// Channels of the returned levels, in `out_indices` order.
    pub fn out_channels(&self) -> Vec<usize> {
        self.channels.clone()
    }

    /// `[B, 3, H, W]` → one `[B, C_i, H_i, W_i]` map per entry of `out_indices`, where stage `i`
    /// has size `⌈…⌈⌈H/patch⌉/2⌉…/2⌉` (`i` halvings, rounding up).
    pub fn forward(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let pe = &self.patch_embed;
        let [_, _, h, w] = x.dims();
        let (pad_b, pad_r) = (
            (pe.patch - h % pe.patch) % pe.patch,
            (pe.patch - w % pe.patch) % pe.patch,
        );
        let x = if pad_b > 0 || pad_r > 0 {
            x.pad((0, pad_r, 0, pad_b), PadMode::Constant(0.0))
        } else {
            x
        };
        let x = conv_forward(&pe.proj, x);
        let [b, c, mut h, mut w] = x.dims();
        let mut x = pe.norm.forward(x.flatten::<3>(2, 3).swap_dims(1, 2)); // [B, H·W, C]

        let mut outs: Vec<Option<Tensor<4>>> = vec![None; self.out_indices.len()];
        let mut c = c;
        for (i, stage) in self.stages.iter().enumerate() {
            let (y, next) = stage.forward(x.clone(), h, w);
            for (k, _) in self
                .out_indices
                .iter()
                .enumerate()
                .filter(|(_, oi)| **oi == i)
            {
                let t = self.out_norms[k]
                    .forward(y.clone())
                    .reshape([b, h, w, c])
                    .permute([0, 3, 1, 2]);
                outs[k] = Some(t);
            }
            match next {
                Some(nx) => {
                    x = nx;
                    h = h.div_ceil(2);
                    w = w.div_ceil(2);
                    c *= 2;
                }
                None => break,
            }
        }
        outs.into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_matches_definition() {
        let idx = relative_position_index(7);
        assert_eq!(idx.len(), 49 * 49);
        assert_eq!(idx[0], 6 * 13 + 6);
        assert_eq!(*idx.iter().max().unwrap_or(&0), 168);
        assert_eq!(*idx.iter().min().unwrap_or(&-1), 0);
    }

    #[test]
    fn shift_mask_regions() {
        // 14×14 map, window 7, shift 3: window (0,0) is one region, window (1,1) mixes four.
        let m = shift_mask_values(14, 14, 7, 3);
        assert_eq!(m.len(), 4 * 49 * 49);
        assert!(m[..49 * 49].iter().all(|&v| v == 0.0));
        let last = &m[3 * 49 * 49..];
        // token 0 (row 7, col 7: region (1,1)) vs token 48 (row 13, col 13: region (2,2)).
        assert_eq!(last[48], SHIFT_MASK_VALUE);
        assert_eq!(last[1], 0.0);
    }
}

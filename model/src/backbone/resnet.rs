//! ResNet backbone (torchvision layout) with DETR's frozen batch norm.
//!
//! Reference: He et al., "Deep Residual Learning for Image Recognition" (2016); the official RLIPv2
//! `models/backbone.py` builds torchvision's ResNet with `FrozenBatchNorm2d` and returns the
//! outputs of `layer2`, `layer3`, `layer4` (strides 8, 16, 32). Bottleneck blocks put the stride on
//! the 3×3 convolution (torchvision's "v1.5").

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;

use crate::dense::conv_forward;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::weights::Loader;
use crate::weights::layers::{ConvSpec, FrozenBatchNorm, conv2d};

/// Which residual block a ResNet uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// Two 3×3 convolutions (ResNet-18/34).
    Basic,
    /// 1×1, 3×3, 1×1 with 4× expansion (ResNet-50/101/152).
    Bottleneck,
}

/// ResNet depth configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// Block type.
    pub block: BlockKind,
    /// Number of blocks in layer1..layer4.
    pub layers: [usize; 4],
    /// Channels of the stem and `layer1` (64 in torchvision; each later layer doubles it).
    /// Narrower networks are for small from-scratch models only: no official weights exist.
    #[serde(default = "default_width")]
    pub width: usize,
}

fn default_width() -> usize {
    64
}

impl ResNetConfig {
    /// ResNet-18.
    pub fn resnet18() -> Self {
        Self {
            block: BlockKind::Basic,
            layers: [2, 2, 2, 2],
            width: 64,
        }
    }
    /// ResNet-34.
    pub fn resnet34() -> Self {
        Self {
            block: BlockKind::Basic,
            layers: [3, 4, 6, 3],
            width: 64,
        }
    }
    /// ResNet-50.
    pub fn resnet50() -> Self {
        Self {
            block: BlockKind::Bottleneck,
            layers: [3, 4, 6, 3],
            width: 64,
        }
    }
    /// ResNet-101.
    pub fn resnet101() -> Self {
        Self {
            block: BlockKind::Bottleneck,
            layers: [3, 4, 23, 3],
            width: 64,
        }
    }

    fn expansion(&self) -> usize {
        match self.block {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }

    /// Channels of the returned levels (layer2, layer3, layer4).
    pub fn out_channels(&self) -> [usize; 3] {
        let e = self.expansion();
        [2, 4, 8].map(|m| m * self.width * e)
    }
}

/// A conv followed by a frozen batch norm.
#[derive(Module, Debug)]
struct ConvBn {
    conv: Conv2d,
    bn: FrozenBatchNorm,
}

impl ConvBn {
    fn load(ld: &mut Loader, conv: &str, bn: &str, spec: ConvSpec) -> Self {
        Self {
            conv: conv2d(ld, conv, spec),
            bn: FrozenBatchNorm::load(ld, bn, spec.c_out),
        }
    }
    /// `bn(conv(x))`, then `+ residual` when given, then ReLU when `relu`.
    fn forward(&self, x: Tensor<4>, residual: Option<Tensor<4>>, relu: bool) -> Tensor<4> {
        self.bn
            .forward_act(conv_forward(&self.conv, x), residual, relu)
    }
}

/// One residual block (basic or bottleneck).
#[derive(Module, Debug)]
struct Block {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Block {
    fn load(
        ld: &mut Loader,
        p: &str,
        kind: BlockKind,
        c_in: usize,
        width: usize,
        stride: usize,
    ) -> Self {
        let (convs, c_out) = match kind {
            BlockKind::Basic => (
                vec![
                    ConvBn::load(
                        ld,
                        &format!("{p}.conv1"),
                        &format!("{p}.bn1"),
                        ConvSpec::new(c_in, width, 3, stride, 1, false),
                    ),
                    ConvBn::load(
                        ld,
                        &format!("{p}.conv2"),
                        &format!("{p}.bn2"),
                        ConvSpec::new(width, width, 3, 1, 1, false),
                    ),
                ],
                width,
            ),
            BlockKind::Bottleneck => (
                vec![
                    ConvBn::load(
                        ld,
                        &format!("{p}.conv1"),
                        &format!("{p}.bn1"),
                        ConvSpec::new(c_in, width, 1, 1, 0, false),
                    ),
                    ConvBn::load(
                        ld,
                        &format!("{p}.conv2"),
                        &format!("{p}.bn2"),
                        ConvSpec::new(width, width, 3, stride, 1, false),
                    ),
                    ConvBn::load(
                        ld,
                        &format!("{p}.conv3"),
                        &format!("{p}.bn3"),
                        ConvSpec::new(width, width * 4, 1, 1, 0, false),
                    ),
                ],
                width * 4,
            ),
        };
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            ConvBn::load(
                ld,
                &format!("{p}.downsample.0"),
                &format!("{p}.downsample.1"),
                ConvSpec::new(c_in, c_out, 1, stride, 0, false),
            )
        });
        Self { convs, downsample }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let identity = match &self.downsample {
            Some(d) => d.forward(x.clone(), None, false),
            None => x.clone(),
        };
        let (last, inner) = self.convs.split_last().expect("a block has convolutions");
        let mut h = x;
        for c in inner {
            h = c.forward(h, None, true);
        }
        last.forward(h, Some(identity), true)
    }
}

/// A torchvision ResNet returning the `layer2`, `layer3`, `layer4` feature maps.
#[derive(Module, Debug)]
pub struct ResNet {
    stem: ConvBn,
    pool: MaxPool2d,
    layers: Vec<Vec<Block>>,
}

impl ResNet {
    /// Builds the network from `{prefix}.conv1`, `{prefix}.bn1`, `{prefix}.layer{1..4}.*`.
    pub fn load(ld: &mut Loader, prefix: &str, cfg: &ResNetConfig) -> Self {
        let stem = ConvBn::load(
            ld,
            &format!("{prefix}.conv1"),
            &format!("{prefix}.bn1"),
            ConvSpec::new(3, cfg.width, 7, 2, 3, false),
        );
        let pool = MaxPool2dConfig::new([3, 3])
            .with_strides([2, 2])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init();
        let mut c_in = cfg.width;
        let mut layers = Vec::new();
        for (li, &n) in cfg.layers.iter().enumerate() {
            let width = cfg.width << li;
            let mut blocks = Vec::new();
            for b in 0..n {
                let stride = if b == 0 && li > 0 { 2 } else { 1 };
                let blk = Block::load(
                    ld,
                    &format!("{prefix}.layer{}.{b}", li + 1),
                    cfg.block,
                    c_in,
                    width,
                    stride,
                );
                c_in = width * cfg.expansion();
                blocks.push(blk);
            }
            layers.push(blocks);
        }
        Self { stem, pool, layers }
    }

    /// Stops gradients into the stem and `layer1`, as the official `BackboneBase` does when the
    /// backbone is trained (only `layer2`–`layer4` learn; batch norms are frozen anyway).
    pub fn freeze_stem_and_layer1(mut self) -> Self {
        self.stem = self.stem.no_grad();
        if let Some(first) = self.layers.first_mut() {
            let blocks = std::mem::take(first);
            *first = blocks.into_iter().map(|b| b.no_grad()).collect();
        }
        self
    }

    /// `[B, 3, H, W]` → the three maps of strides 8, 16, 32.
    pub fn forward(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let mut h = self.pool.forward(self.stem.forward(x, None, true));
        let mut outs = Vec::with_capacity(3);
        for (i, layer) in self.layers.iter().enumerate() {
            for b in layer {
                h = b.forward(h);
            }
            if i >= 1 {
                outs.push(h.clone());
            }
        }
        outs
    }
}

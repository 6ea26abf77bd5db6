//! Visual backbones returning three feature maps of strides 8, 16 and 32.

pub mod resnet;
pub mod swin;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

pub use resnet::{ResNet, ResNetConfig};
pub use swin::{Swin, SwinConfig};

use crate::weights::Loader;

/// Which backbone to build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackboneConfig {
    /// A torchvision ResNet with frozen batch norm.
    ResNet(ResNetConfig),
    /// A Swin Transformer.
    Swin(SwinConfig),
}

impl BackboneConfig {
    /// Channels of the three returned levels.
    pub fn out_channels(&self) -> [usize; 3] {
        match self {
            Self::ResNet(c) => c.out_channels(),
            Self::Swin(c) => {
                let v = c.out_channels();
                [v[0], v[1], v[2]]
            }
        }
    }

    /// Whether the sine positional encoding subtracts 0.5 before normalising (the official Swin
    /// path does, the ResNet path does not).
    pub fn pos_offset(&self) -> bool {
        matches!(self, Self::Swin(_))
    }
}

/// A backbone of either family.
// One backbone per model: the size difference of the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Backbone {
    /// ResNet.
    ResNet(ResNet),
    /// Swin Transformer.
    Swin(Swin),
}

impl Backbone {
    /// Builds the backbone from official keys under `prefix` (`backbone.0.body` in RLIPv2).
    pub fn load(ld: &mut Loader, prefix: &str, cfg: &BackboneConfig) -> Self {
        match cfg {
            BackboneConfig::ResNet(c) => Self::ResNet(ResNet::load(ld, prefix, c)),
            BackboneConfig::Swin(c) => Self::Swin(Swin::load(ld, prefix, c)),
        }
    }

    /// Freezes what the official training freezes: the ResNet stem and `layer1` (Swin: nothing
    /// beyond its non-trainable buffers).
    pub fn freeze_official(self) -> Self {
        match self {
            Self::ResNet(r) => Self::ResNet(r.freeze_stem_and_layer1()),
            other => other,
        }
    }

    /// `[B, 3, H, W]` → three maps of strides 8, 16, 32.
    pub fn forward(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        match self {
            Self::ResNet(m) => m.forward(x),
            Self::Swin(m) => m.forward(x),
        }
    }
}

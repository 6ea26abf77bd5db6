//! Helpers shared by the trainer tests: a tiny two-image batch and label texts.

use burn::prelude::*;
use rlip_data::preprocess::RgbImage;
use rlip_train::trainer::{LabelTexts, TrainSample};

pub fn scene(w: usize, h: usize, boxes: &[([usize; 4], [u8; 3])]) -> RgbImage {
    let mut data = vec![40u8; w * h * 3];
    for (b, c) in boxes {
        for y in b[1]..b[3] {
            for x in b[0]..b[2] {
                data[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(c);
            }
        }
    }
    RgbImage {
        width: w,
        height: h,
        data,
    }
}

pub fn samples() -> Vec<TrainSample> {
    let a = [
        ([10, 10, 40, 80], [220, 180, 150]),
        ([45, 50, 80, 85], [30, 90, 220]),
    ];
    let b = [
        ([50, 5, 85, 70], [220, 180, 150]),
        ([5, 20, 40, 50], [230, 40, 40]),
    ];
    let mk = |boxes: &[([usize; 4], [u8; 3])], obj: usize, verb: usize| TrainSample {
        image: scene(96, 96, boxes),
        boxes: boxes.iter().map(|(b, _)| b.map(|v| v as f32)).collect(),
        labels: vec![0, obj],
        pairs: vec![(0, Some(1), vec![verb])],
    };
    vec![mk(&a, 1, 0), mk(&b, 2, 1)]
}

pub fn text(dev: &Device) -> LabelTexts {
    // 3 objects + "no objects" + 2 relations, 4 tokens each
    let ids: Vec<i64> = (0..6)
        .flat_map(|i| [0, 10 + 3 * i, 11 + 3 * i, 2])
        .collect();
    LabelTexts {
        ids: Tensor::from_data(TensorData::new(ids, [6, 4]), dev),
        mask: Tensor::ones([6, 4], dev),
        n_obj: 4,
    }
}

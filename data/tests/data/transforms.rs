//! Properties of the training augmentation over a few hundred random samples per property
//! (seeded loops over `Rng`, no external property-testing crate): boxes stay inside the image,
//! the flip only mirrors x, crops keep pair identities, colour jitter is Pillow's arithmetic, and
//! padded batches are zero exactly outside each image.

use std::collections::HashSet;

use rlip_data::preprocess::{RgbImage, normalize, pad_batch};
use rlip_data::rng::Rng;
use rlip_data::transforms::{
    CropRegion, Sample, TrainAugment, adjust_brightness, adjust_contrast, adjust_saturation,
    augment, color_jitter, color_jitter_with, crop, hflip, random_size_crop, resize,
};

const CASES: u64 = 300;

fn random_image(rng: &mut Rng, w: usize, h: usize) -> RgbImage {
    RgbImage {
        width: w,
        height: h,
        data: (0..w * h * 3).map(|_| rng.below(256) as u8).collect(),
    }
}

/// A random consistent sample with `w, h` in `1..=max_side`; label `i` on box `i` so that box
/// identities can be followed through the transforms.
fn random_sample(rng: &mut Rng, max_side: usize) -> Sample {
    let (w, h) = (1 + rng.below(max_side), 1 + rng.below(max_side));
    let image = random_image(rng, w, h);
    let nb = rng.below(8);
    let boxes: Vec<[f32; 4]> = (0..nb)
        .map(|_| {
            let (a, b) = (rng.range_f32(0.0, w as f32), rng.range_f32(0.0, w as f32));
            let (c, d) = (rng.range_f32(0.0, h as f32), rng.range_f32(0.0, h as f32));
            [a.min(b), c.min(d), a.max(b), c.max(d)]
        })
        .collect();
    let pairs = if nb == 0 {
        vec![]
    } else {
        (0..rng.below(6))
            .map(|_| {
                let verbs = (0..1 + rng.below(3)).map(|_| rng.below(10)).collect();
                // one pair in four without an object (V-COCO)
                let obj = (rng.below(4) != 0).then(|| rng.below(nb));
                (rng.below(nb), obj, verbs)
            })
            .collect()
    };
    let s = Sample {
        image,
        labels: (0..nb).collect(),
        boxes,
        pairs,
    };
    s.check().expect("generated sample is consistent");
    s
}

fn assert_inside(s: &Sample, what: &str) {
    s.check().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        s.image.data.len(),
        s.image.width * s.image.height * 3,
        "{what}"
    );
}

/// Pairs of `out` mapped back to the original boxes through the identity labels.
fn pairs_by_identity(out: &Sample) -> Vec<(usize, Option<usize>, Vec<usize>)> {
    out.pairs
        .iter()
        .map(|(s, o, v)| (out.labels[*s], o.map(|o| out.labels[o]), v.clone()))
        .collect()
}

/// The final `RandomResize`: the short side is a scale, or the long side was capped (it can pass
/// the cap by half the aspect ratio, as the capped short side is rounded).
fn capped_or_scaled(cfg: &TrainAugment, short: usize, long: usize) -> bool {
    let slack = 0.5 * long as f64 / short as f64 + 1.0;
    cfg.scales.contains(&short) || long as f64 <= cfg.max_size as f64 + slack
}

#[test]
fn flip_mirrors_x_only() {
    for seed in 0..CASES {
        let mut rng = Rng::new(seed);
        let s = random_sample(&mut rng, 40);
        let f = hflip(&s);
        assert_inside(&f, "hflip");
        let w = s.image.width as f32;
        assert_eq!(
            (f.labels.clone(), f.pairs.clone()),
            (s.labels.clone(), s.pairs.clone())
        );
        for (a, b) in s.boxes.iter().zip(&f.boxes) {
            assert_eq!([b[0], b[2]], [w - a[2], w - a[0]], "seed {seed}");
            assert_eq!([b[1], b[3]], [a[1], a[3]], "seed {seed}");
        }
        let (iw, ih) = (s.image.width, s.image.height);
        for y in 0..ih {
            for x in 0..iw {
                let p = (y * iw + x) * 3;
                let q = (y * iw + iw - 1 - x) * 3;
                assert_eq!(f.image.data[p..p + 3], s.image.data[q..q + 3]);
            }
        }
        assert_eq!(hflip(&f).image, s.image, "flip twice restores the image");
    }
}

#[test]
fn resize_keeps_boxes_inside_and_scales_them() {
    for seed in 0..CASES {
        let mut rng = Rng::new(seed);
        let s = random_sample(&mut rng, 40);
        let size = 1 + rng.below(60);
        let max = rng.chance(0.5).then(|| size + rng.below(60));
        let r = resize(&s, size, max);
        assert_inside(&r, "resize");
        let (rw, rh) = (
            r.image.width as f32 / s.image.width as f32,
            r.image.height as f32 / s.image.height as f32,
        );
        for (a, b) in s.boxes.iter().zip(&r.boxes) {
            for k in 0..4 {
                let ratio = if k % 2 == 0 { rw } else { rh };
                assert!(
                    (a[k] * ratio - b[k]).abs() <= 1e-3 * (1.0 + b[k]),
                    "seed {seed}"
                );
            }
        }
        assert_eq!((&r.labels, &r.pairs), (&s.labels, &s.pairs));
    }
}

#[test]
fn crop_clips_boxes_and_keeps_pair_identities() {
    for seed in 0..CASES {
        let mut rng = Rng::new(seed);
        let s = random_sample(&mut rng, 40);
        let (w, h) = (s.image.width, s.image.height);
        let region = CropRegion {
            top: rng.below(h + 2),
            left: rng.below(w + 2),
            height: rng.below(h + 2),
            width: rng.below(w + 2),
        };
        let c = crop(&s, region);
        assert_inside(&c, "crop");
        // Kept boxes are exactly those with area inside the region, shifted and clipped.
        let (t, l) = (region.top as f32, region.left as f32);
        let (cw, ch) = (c.image.width as f32, c.image.height as f32);
        let mut kept = Vec::new();
        for (i, b) in s.boxes.iter().enumerate() {
            let x = [
                (b[0] - l).clamp(0.0, cw),
                (b[1] - t).clamp(0.0, ch),
                (b[2] - l).clamp(0.0, cw),
                (b[3] - t).clamp(0.0, ch),
            ];
            if x[2] > x[0] && x[3] > x[1] {
                kept.push(i);
                assert_eq!(c.boxes[kept.len() - 1], x, "seed {seed}");
            }
        }
        assert_eq!(c.labels, kept, "seed {seed}: labels follow their boxes");
        let kept: HashSet<usize> = kept.into_iter().collect();
        let want: Vec<_> = s
            .pairs
            .iter()
            .filter(|(a, b, _)| kept.contains(a) && b.is_none_or(|b| kept.contains(&b)))
            .cloned()
            .collect();
        assert_eq!(pairs_by_identity(&c), want, "seed {seed}");
    }
}

#[test]
fn random_size_crop_stays_in_bounds() {
    for seed in 0..CASES {
        let mut rng = Rng::new(seed);
        let s = random_sample(&mut rng, 50);
        let (lo, hi) = (1 + rng.below(30), 20 + rng.below(40));
        let (lo, hi) = (lo.min(hi), hi);
        let c = random_size_crop(&s, lo, hi, &mut rng);
        assert_inside(&c, "random_size_crop");
        let (w, h) = (s.image.width, s.image.height);
        assert!(c.image.width <= w.min(hi) && c.image.width >= lo.min(w.min(hi)));
        assert!(c.image.height <= h.min(hi) && c.image.height >= lo.min(h.min(hi)));
    }
}

#[test]
fn augment_is_deterministic_and_stays_consistent() {
    let cfg = TrainAugment::scaled(48, 80);
    cfg.check().unwrap();
    let mut crops = 0;
    for seed in 0..CASES {
        let mut rng = Rng::new(seed);
        let s = random_sample(&mut rng, 60);
        let a = augment(&s, &cfg, &mut Rng::new(seed ^ 77));
        assert_eq!(
            a,
            augment(&s, &cfg, &mut Rng::new(seed ^ 77)),
            "seed {seed}"
        );
        assert_inside(&a, "augment");
        // The last resize decides the size: a scale on the short side or the long-side cap.
        let (sw, lw) = (
            a.image.width.min(a.image.height),
            a.image.width.max(a.image.height),
        );
        assert!(capped_or_scaled(&cfg, sw, lw), "seed {seed}: {sw}x{lw}");
        // Identity labels: every surviving box and pair is an original one.
        let orig: HashSet<_> = s.pairs.iter().cloned().collect();
        assert!(pairs_by_identity(&a).iter().all(|p| orig.contains(p)));
        assert!(
            a.labels.windows(2).all(|w| w[0] < w[1]),
            "boxes keep their order"
        );
        crops += usize::from(a.boxes.len() < s.boxes.len());
    }
    assert!(crops > 0, "the crop branch removed boxes in some cases");
}

#[test]
fn official_scale_augment_on_small_images() {
    let cfg = TrainAugment::hico();
    for seed in 0..12 {
        let mut rng = Rng::new(seed);
        let s = random_sample(&mut rng, 64);
        let a = augment(&s, &cfg, &mut rng);
        assert_inside(&a, "augment(hico)");
        let short = a.image.width.min(a.image.height);
        let long = a.image.width.max(a.image.height);
        assert!(capped_or_scaled(&cfg, short, long), "{short}x{long}");
    }
}

#[test]
fn color_jitter_with_unit_factors_is_identity() {
    for seed in 0..CASES {
        let mut rng = Rng::new(seed);
        let (w, h) = (1 + rng.below(20), 1 + rng.below(20));
        let img = random_image(&mut rng, w, h);
        let mut order = [0, 1, 2];
        rng.shuffle(&mut order);
        let mut j = img.clone();
        color_jitter_with(&mut j, [Some(1.0); 3], order);
        assert_eq!(j, img);
        let mut j = img.clone();
        let (f, _) = color_jitter(&mut j, [0.0; 3], &mut rng);
        assert_eq!((f, &j), ([None; 3], &img), "zero strength does nothing");
    }
}

/// Reference in f64 with Pillow's rules (grey = 601-2 luma rounded, contrast mean rounded);
/// results agree within two levels (fixed-point grey, f32 vs f64 truncation).
#[test]
fn color_ops_follow_pillow_formulas() {
    for seed in 0..CASES {
        let mut rng = Rng::new(seed);
        let (w, h) = (1 + rng.below(16), 1 + rng.below(16));
        let img = random_image(&mut rng, w, h);
        let f = rng.range_f32(0.0, 2.0);
        let grey = |p: &[u8]| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64;
        let blend = |a: f64, b: f64| (a + f as f64 * (b - a)).clamp(0.0, 255.0).trunc();
        let n = (img.width * img.height) as f64;
        let mean = (img.data.chunks(3).map(|p| grey(p).round()).sum::<f64>() / n + 0.5).trunc();
        let check = |got: &RgbImage, want: &dyn Fn(usize, &[u8]) -> f64| {
            for (i, (g, p)) in got
                .data
                .iter()
                .zip(img.data.chunks(3).flat_map(|p| [p; 3]))
                .enumerate()
            {
                let w = want(i % 3, p);
                assert!((*g as f64 - w).abs() <= 2.0, "seed {seed}: {g} vs {w}");
            }
        };
        let mut b = img.clone();
        adjust_brightness(&mut b, f);
        check(&b, &|c, p| blend(0.0, p[c] as f64));
        let mut c = img.clone();
        adjust_contrast(&mut c, f);
        check(&c, &|ch, p| blend(mean, p[ch] as f64));
        let mut s = img.clone();
        adjust_saturation(&mut s, f);
        check(&s, &|ch, p| blend(grey(p).round(), p[ch] as f64));
        // Saturation 0 is the grey image; brightness 0 is black.
        let mut g = img.clone();
        adjust_saturation(&mut g, 0.0);
        assert!(g.data.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
        let mut k = img.clone();
        adjust_brightness(&mut k, 0.0);
        assert!(k.data.iter().all(|&v| v == 0));
    }
}

#[test]
fn color_jitter_draws_factors_in_range() {
    let mut rng = Rng::new(5);
    let mut seen = HashSet::new();
    for _ in 0..CASES {
        let mut img = random_image(&mut rng, 4, 4);
        let (f, order) = color_jitter(&mut img, [0.4, 0.4, 0.4], &mut rng);
        for v in f {
            let v = v.unwrap();
            assert!((0.6..1.4).contains(&v));
        }
        let mut o = order;
        o.sort();
        assert_eq!(o, [0, 1, 2]);
        seen.insert(order);
    }
    assert_eq!(seen.len(), 6, "every order of the three operations occurs");
}

#[test]
fn padded_batches_are_zero_exactly_outside_each_image() {
    for seed in 0..100 {
        let mut rng = Rng::new(seed);
        let cfg = TrainAugment::scaled(32, 53);
        let images: Vec<(Vec<f32>, usize, usize)> = (0..1 + rng.below(4))
            .map(|_| {
                let a = augment(&random_sample(&mut rng, 40), &cfg, &mut rng);
                (normalize(&a.image), a.image.height, a.image.width)
            })
            .collect();
        let b = pad_batch(&images);
        assert_eq!(
            b.sizes,
            images.iter().map(|i| (i.1, i.2)).collect::<Vec<_>>()
        );
        assert_eq!(b.height, images.iter().map(|i| i.1).max().unwrap());
        assert_eq!(b.width, images.iter().map(|i| i.2).max().unwrap());
        for (k, (v, h, w)) in images.iter().enumerate() {
            for c in 0..3 {
                for y in 0..b.height {
                    for x in 0..b.width {
                        let got = b.data[((k * 3 + c) * b.height + y) * b.width + x];
                        let padding = y >= *h || x >= *w;
                        if padding {
                            assert_eq!(got, 0.0, "seed {seed}");
                        } else {
                            assert_eq!(got, v[(c * h + y) * w + x], "seed {seed}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn bad_inputs_are_reported_not_panicked() {
    let mut rng = Rng::new(1);
    let mut s = random_sample(&mut rng, 10);
    s.image.data.pop();
    assert!(s.check().is_err());
    // augment leaves an inconsistent sample as it is rather than panicking.
    assert_eq!(augment(&s, &TrainAugment::hico(), &mut rng), s);
    let empty = Sample {
        image: RgbImage {
            width: 0,
            height: 0,
            data: vec![],
        },
        boxes: vec![],
        labels: vec![],
        pairs: vec![],
    };
    assert_eq!(augment(&empty, &TrainAugment::hico(), &mut rng), empty);
    let bad_pair = Sample {
        pairs: vec![(0, Some(9), vec![])],
        ..random_sample(&mut Rng::new(3), 10)
    };
    assert!(bad_pair.check().is_err());
    let mut cfg = TrainAugment::hico();
    cfg.scales.clear();
    assert!(cfg.check().is_err());
    cfg.scales = vec![10];
    cfg.crop_size = (50, 10);
    assert!(cfg.check().is_err());
}

/// FNV-1a of the bytes.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Pillow 13 reference: FNV-1a hashes of `ImageEnhance.{Brightness, Contrast, Color}(img)
/// .enhance(f)` (f rounded to f32, as torchvision's factors are) on a fixed 37×23 pattern.
#[test]
fn color_ops_match_pillow_bit_exactly() {
    const PILLOW: [(f32, [u64; 3]); 6] = [
        (
            0.0,
            [0x08946163a88a99ff, 0x3ea41a560b4440b4, 0x709d17b6b7f66972],
        ),
        (
            0.6,
            [0x4c70113c7f3d2b78, 0x5bbf15fc0d2fc186, 0xf8532bf851f7b3b3],
        ),
        (
            0.7312345,
            [0x382f037fb4f01b0b, 0xb4960b61ac7a8f7b, 0xea048f5bc14d3335],
        ),
        (
            1.1734,
            [0xfd7ddf7d81543132, 0x6d70e15c5ff64cd3, 0x21ac1dfbf1c89764],
        ),
        (
            1.4,
            [0x2f6647b21871bb6e, 0x537b3c4827ff4ee1, 0xad55c4ed75cf6353],
        ),
        (
            2.3,
            [0x4df7bc719a23e3ab, 0xa493fb461009a2bd, 0xd80e304cc3608950],
        ),
    ];
    let (w, h) = (37, 23);
    let mut data = Vec::new();
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                data.push(((x * 37 + y * 91 + c * 53 + x * y) % 256) as u8);
            }
        }
    }
    let img = RgbImage {
        width: w,
        height: h,
        data,
    };
    let ops: [fn(&mut RgbImage, f32); 3] = [adjust_brightness, adjust_contrast, adjust_saturation];
    for (f, want) in PILLOW {
        for (op, want) in ops.iter().zip(want) {
            let mut x = img.clone();
            op(&mut x, f);
            assert_eq!(fnv(&x.data), want, "factor {f}");
        }
    }
}

//! The training loop: epochs of shuffled, augmented batches from a deterministic multi-threaded
//! loader, fine-tuning with a fixed label list or relational pre-training with label texts
//! sampled per batch (positives plus frequency-weighted negatives, official
//! `engine.py::sample_text`), step decay, a time/step budget, and resumption at any batch.
//!
//! Everything random is derived from the seed, the epoch and the position (shuffle, per-image
//! augmentation, per-batch text sampling), so a run resumed from a checkpoint sees exactly the
//! batches an uninterrupted run would have seen.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use rlip_data::labels::LabelSet;
use rlip_data::loader::{Loader, LoaderConfig};
use rlip_data::preprocess::load_rgb;
use rlip_data::pretrain::{RelationImage, TextSampling, Vocabulary, sample_label_texts};
use rlip_data::transforms::{TrainAugment, augment};
use rlip_data::{DataError, rng::Rng};
use rlip_model::text::tokenizer::LabelTokenizer;
use serde::{Deserialize, Serialize};

use crate::matcher::PairTargets;
use crate::samples::to_input;
use crate::trainer::{LabelTexts, StepLog, TrainError, TrainSample, Trainer};

/// Where the data comes from and how label texts are chosen.
// One value per run: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum TrainData {
    /// Fine-tuning: every step uses the same label texts; sample labels index them.
    Fixed {
        /// Decoded training images with boxes, labels and pairs.
        samples: Arc<Vec<TrainSample>>,
        /// The tokenised label texts.
        texts: LabelTexts,
        /// Relation texts.
        num_verbs: usize,
        /// Object class of pairs without an object (V-COCO's `missing objects` text; unused by
        /// datasets whose pairs all have objects).
        no_object_label: usize,
    },
    /// Relational pre-training: sample labels index `vocab`; each batch gets its own texts.
    Pretrain {
        /// Decoded images whose labels index `vocab.objects` / `vocab.relations`.
        samples: Arc<Vec<TrainSample>>,
        /// The same images by name (positives of a batch).
        images: Vec<RelationImage>,
        /// Object and relation names with their frequencies.
        vocab: Vocabulary,
        /// Texts per batch.
        sampling: TextSampling,
        /// Tokeniser of the label texts.
        tokenizer: LabelTokenizer,
    },
}

impl TrainData {
    fn samples(&self) -> &Arc<Vec<TrainSample>> {
        match self {
            TrainData::Fixed { samples, .. } | TrainData::Pretrain { samples, .. } => samples,
        }
    }

    /// Training images.
    pub fn num_samples(&self) -> usize {
        self.samples().len()
    }

    fn num_verbs(&self) -> usize {
        match self {
            TrainData::Fixed { num_verbs, .. } => *num_verbs,
            TrainData::Pretrain { vocab, .. } => vocab.relations.len(),
        }
    }

    fn no_object_label(&self) -> usize {
        match self {
            TrainData::Fixed {
                no_object_label, ..
            } => *no_object_label,
            // pre-training pairs always have an object; this is the "no objects" text
            TrainData::Pretrain { vocab, .. } => vocab.objects.len(),
        }
    }
}

/// Pre-training samples from scene-graph images: decoded images, box labels as indices into
/// `vocab.objects`, relations merged per (subject, object) into multi-label pairs (indices into
/// `vocab.relations`), at most `max_pairs` pairs per image (the first ones, as the official
/// loaders cap relations). Images without a usable pair are skipped (returned count).
pub fn pretrain_samples(
    images: &[RelationImage],
    vocab: &Vocabulary,
    max_pairs: usize,
) -> Result<(Vec<TrainSample>, Vec<RelationImage>, usize), DataError> {
    let index = |names: &[(String, u64)]| -> std::collections::HashMap<String, usize> {
        names
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect()
    };
    let (objs, rels) = (index(&vocab.objects), index(&vocab.relations));
    let (mut out, mut kept, mut skipped) = (Vec::new(), Vec::new(), 0);
    for img in images {
        let labels: Vec<Option<usize>> =
            img.box_names.iter().map(|n| objs.get(n).copied()).collect();
        let mut pairs: Vec<(usize, Option<usize>, Vec<usize>)> = Vec::new();
        for (s, o, pred) in &img.relations {
            let (Some(_), Some(_), Some(&r)) = (labels[*s], labels[*o], rels.get(pred)) else {
                continue;
            };
            let valid = |b: [f64; 4]| b[2] > b[0] && b[3] > b[1];
            if !valid(img.boxes[*s]) || !valid(img.boxes[*o]) {
                continue;
            }
            let full = pairs.len() >= max_pairs;
            match pairs.iter_mut().find(|p| p.0 == *s && p.1 == Some(*o)) {
                Some(p) if !p.2.contains(&r) => p.2.push(r),
                Some(_) => {}
                None if !full => pairs.push((*s, Some(*o), vec![r])),
                None => {}
            }
        }
        if pairs.is_empty() {
            skipped += 1;
            continue;
        }
        let image = load_rgb(&img.image_path)?;
        // boxes without a known name keep a placeholder label; no pair points at them
        out.push(TrainSample {
            image,
            boxes: img.boxes.iter().map(|b| b.map(|v| v as f32)).collect(),
            labels: labels.iter().map(|l| l.unwrap_or(0)).collect(),
            pairs,
        });
        kept.push(img.clone());
    }
    Ok((out, kept, skipped))
}

/// Schedule and data settings of a training run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FitConfig {
    /// Passes over the data.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Epoch from which every learning rate is multiplied by 0.1 (official `lr_drop`).
    pub lr_drop: Option<usize>,
    /// Step from which every learning rate is multiplied by 0.1 (the same drop counted in
    /// steps, for runs shorter than a few epochs); with both set, the earlier one applies.
    pub lr_drop_step: Option<usize>,
    /// Augmentation.
    pub augment: TrainAugment,
    /// Seed of shuffling, augmentation and text sampling.
    pub seed: u64,
    /// Stop once this many steps have been taken in all (resumed runs included).
    pub max_steps: Option<usize>,
    /// Stop once this many seconds of training have passed in this process.
    pub time_limit_s: Option<f64>,
    /// Data-loading threads (0: in the training thread).
    pub workers: usize,
}

impl FitConfig {
    /// The learning-rate factor of the step taken at `state`: 0.1 from the `lr_drop` epoch or
    /// the `lr_drop_step` step on, else 1.
    pub fn lr_scale(&self, state: &FitState) -> f64 {
        let by_epoch = self.lr_drop.is_some_and(|d| state.epoch >= d);
        let by_step = self.lr_drop_step.is_some_and(|d| state.steps >= d);
        if by_epoch || by_step { 0.1 } else { 1.0 }
    }
}

/// Position in a run: what a checkpoint needs to continue exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FitState {
    /// Current epoch.
    pub epoch: usize,
    /// Next batch within the epoch.
    pub batch: usize,
    /// Steps taken.
    pub steps: usize,
    /// Images seen.
    pub images: usize,
    /// Training seconds so far (all processes).
    pub seconds: f64,
}

/// Progress of [`fit`], passed to the hooks after every step.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// Position after this step.
    pub state: FitState,
    /// Batches per epoch.
    pub batches_per_epoch: usize,
    /// Images per second of this process so far.
    pub images_per_s: f64,
    /// The step's losses.
    pub log: StepLog,
}

/// Callbacks of [`fit`] (checkpointing, logging, evaluation).
pub trait FitHooks {
    /// After every step.
    fn on_step(&mut self, trainer: &Trainer, p: &Progress) -> Result<(), TrainError>;
    /// After the last batch of an epoch (`state` points at the next epoch).
    fn on_epoch_end(&mut self, trainer: &Trainer, state: &FitState) -> Result<(), TrainError>;
}

type Item = ((Vec<f32>, usize, usize), PairTargets);

/// Trains from position `start` (default for a fresh run) until `cfg.epochs`, the step limit
/// or the time limit; returns the final position.
pub fn fit(
    trainer: &mut Trainer,
    data: &TrainData,
    cfg: &FitConfig,
    start: FitState,
    hooks: &mut dyn FitHooks,
) -> Result<FitState, TrainError> {
    cfg.augment
        .check()
        .map_err(|e| TrainError::Invalid(format!("augmentation: {e}")))?;
    trainer.set_seed(cfg.seed);
    let samples = Arc::clone(data.samples());
    let n = samples.len();
    if n < cfg.batch_size || cfg.batch_size == 0 {
        return Err(TrainError::Invalid(format!(
            "{n} training images for a batch size of {}",
            cfg.batch_size
        )));
    }
    let (aug, num_verbs, none) = (
        cfg.augment.clone(),
        data.num_verbs(),
        data.no_object_label(),
    );
    let lcfg = LoaderConfig::new(cfg.batch_size, cfg.workers, cfg.seed);
    let loader = Loader::new(n, lcfg, move |i, rng: &mut Rng| {
        Ok::<Item, std::convert::Infallible>(to_input(
            &augment(&samples[i], &aug, rng),
            num_verbs,
            none,
        ))
    })
    .map_err(|e| TrainError::Loader(e.to_string()))?;
    let per_epoch = loader.num_batches();
    let clock = std::time::Instant::now();
    let (mut state, mut images_here) = (start, 0usize);
    let out_of_budget = |state: &FitState| {
        cfg.max_steps.is_some_and(|m| state.steps >= m)
            || cfg
                .time_limit_s
                .is_some_and(|t| clock.elapsed().as_secs_f64() >= t)
    };
    while state.epoch < cfg.epochs && !out_of_budget(&state) {
        let batches = loader
            .epoch(state.epoch as u64, state.batch)
            .map_err(|e| TrainError::Loader(e.to_string()))?;
        for batch in batches {
            let batch = batch.map_err(|e| TrainError::Loader(e.to_string()))?;
            let (imgs, mut tgts): (Vec<_>, Vec<_>) = batch.items.into_iter().unzip();
            let (texts, _) =
                batch_texts(data, trainer, cfg.seed, &state, &batch.indices, &mut tgts)?;
            let before = clock.elapsed().as_secs_f64();
            let log = trainer.step(&imgs, &tgts, &texts, cfg.lr_scale(&state))?;
            state.seconds += clock.elapsed().as_secs_f64() - before;
            state.steps += 1;
            state.images += imgs.len();
            images_here += imgs.len();
            state.batch = batch.index + 1;
            hooks.on_step(
                trainer,
                &Progress {
                    state,
                    batches_per_epoch: per_epoch,
                    images_per_s: images_here as f64 / clock.elapsed().as_secs_f64().max(1e-9),
                    log,
                },
            )?;
            if out_of_budget(&state) {
                break;
            }
        }
        if state.batch >= per_epoch {
            state.epoch += 1;
            state.batch = 0;
            hooks.on_epoch_end(trainer, &state)?;
        }
    }
    Ok(state)
}

/// The label texts of a batch: the fixed ones, or for pre-training the batch's sampled texts
/// (also returned as text), with the targets rewritten from vocabulary indices to indices into
/// them.
fn batch_texts<'a>(
    data: &'a TrainData,
    trainer: &Trainer,
    seed: u64,
    state: &FitState,
    indices: &[usize],
    targets: &mut [PairTargets],
) -> Result<(Cow<'a, LabelTexts>, Option<LabelSet>), TrainError> {
    let (images, vocab, sampling, tokenizer) = match data {
        TrainData::Fixed { texts, .. } => return Ok((Cow::Borrowed(texts), None)),
        TrainData::Pretrain {
            images,
            vocab,
            sampling,
            tokenizer,
            ..
        } => (images, vocab, sampling, tokenizer),
    };
    let refs: Vec<&RelationImage> = indices.iter().map(|&i| &images[i]).collect();
    let mut rng = Rng::derive(seed ^ 0x7e47_5a3b, state.epoch as u64, state.batch as u64);
    let lb = sample_label_texts(&refs, vocab, sampling, &mut rng)?;
    let position = |texts: &[String], name: &str| texts.iter().position(|t| t == name);
    let obj_map: Vec<Option<usize>> = vocab
        .objects
        .iter()
        .map(|(n, _)| position(&lb.object_texts, n))
        .collect();
    let rel_map: Vec<Option<usize>> = vocab
        .relations
        .iter()
        .map(|(n, _)| position(&lb.relation_texts, n))
        .collect();
    let missing = |what: &str, g: usize| {
        TrainError::Invalid(format!(
            "batch at epoch {} position {}: {what} {g} of the vocabulary is not among the batch's texts",
            state.epoch, state.batch
        ))
    };
    for t in targets.iter_mut() {
        for l in t.sub_labels.iter_mut().chain(t.obj_labels.iter_mut()) {
            *l = obj_map[*l].ok_or_else(|| missing("object", *l))?;
        }
        for row in t.verb_labels.iter_mut() {
            let mut local = vec![0f32; lb.relation_texts.len()];
            for (g, v) in row.iter().enumerate().filter(|(_, v)| **v > 0.0) {
                local[rel_map[g].ok_or_else(|| missing("relation", g))?] = *v;
            }
            *row = local;
        }
    }
    let set: LabelSet = lb.label_set();
    let texts = LabelTexts::encode(tokenizer, &set, trainer.device())
        .map_err(|e| TrainError::Invalid(format!("tokenising the batch's label texts: {e}")))?;
    Ok((Cow::Owned(texts), Some(set)))
}

/// Reads `dir/state.json` of a training checkpoint.
pub fn read_state(dir: &Path) -> Result<FitState, TrainError> {
    let p = dir.join(STATE_FILE);
    let bytes =
        std::fs::read(&p).map_err(|e| TrainError::Checkpoint(format!("{}: {e}", p.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", p.display())))
}

/// Position file inside a training checkpoint folder.
pub const STATE_FILE: &str = "state.json";

/// Writes a training checkpoint folder `dir` (model with parameter ids and `metadata`,
/// optimiser state, position) so that it appears complete or not at all: everything goes to
/// `dir.tmp` first, which is then renamed (an existing `dir` is replaced). A kill at any point
/// leaves either the previous checkpoint or the new one.
pub fn save_checkpoint(
    trainer: &Trainer,
    dir: &Path,
    state: &FitState,
    metadata: &std::collections::BTreeMap<String, String>,
) -> Result<(), TrainError> {
    let err = |p: &Path, e: std::io::Error| TrainError::Checkpoint(format!("{}: {e}", p.display()));
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| err(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| err(&tmp, e))?;
    trainer.save(&tmp, metadata)?;
    let state_json = serde_json::to_vec_pretty(state).expect("plain data serialises");
    rlip_model::util::write_atomic(&tmp.join(STATE_FILE), &state_json)
        .map_err(|e| err(&tmp.join(STATE_FILE), e))?;
    if dir.exists() {
        let old = dir.with_extension("old");
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| err(&old, e))?;
        }
        std::fs::rename(dir, &old).map_err(|e| err(dir, e))?;
        std::fs::rename(&tmp, dir).map_err(|e| err(dir, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| err(&old, e))?;
    } else {
        std::fs::rename(&tmp, dir).map_err(|e| err(dir, e))?;
    }
    Ok(())
}

/// Name of the checkpoint folder of a step (`step-00000123`), sorting by step.
pub fn checkpoint_name(steps: usize) -> String {
    format!("step-{steps:08}")
}

/// The complete step checkpoints under `dir`, oldest first (folders `step-N` with a state
/// file; unfinished `.tmp` folders are ignored).
pub fn list_checkpoints(dir: &Path) -> Vec<(usize, std::path::PathBuf)> {
    let mut v: Vec<(usize, std::path::PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let p = e.ok()?.path();
            let step = p
                .file_name()?
                .to_str()?
                .strip_prefix("step-")?
                .parse()
                .ok()?;
            p.join(STATE_FILE).is_file().then_some((step, p))
        })
        .collect();
    v.sort();
    v
}

/// Deletes all but the newest `keep` step checkpoints under `dir`.
pub fn prune_checkpoints(dir: &Path, keep: usize) -> Result<(), TrainError> {
    let all = list_checkpoints(dir);
    for (_, p) in all.iter().take(all.len().saturating_sub(keep)) {
        std::fs::remove_dir_all(p)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", p.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::{Criterion, CriterionConfig};
    use crate::trainer::OptimConfig;
    use rlip_data::preprocess::RgbImage;
    use rlip_model::rlip::{RlipConfig, RlipParSeDa};

    /// The drop applies from its epoch or its step on, whichever comes first.
    #[test]
    fn lr_drop_by_epoch_or_step() {
        let mut cfg = FitConfig {
            epochs: 5,
            batch_size: 4,
            lr_drop: Some(2),
            lr_drop_step: None,
            augment: TrainAugment::scaled(128, 213),
            seed: 0,
            max_steps: None,
            time_limit_s: None,
            workers: 0,
        };
        let at = |epoch, steps| FitState {
            epoch,
            steps,
            ..FitState::default()
        };
        assert_eq!(cfg.lr_scale(&at(1, 99)), 1.0);
        assert_eq!(cfg.lr_scale(&at(2, 100)), 0.1);
        cfg.lr_drop_step = Some(30);
        assert_eq!(cfg.lr_scale(&at(0, 29)), 1.0);
        assert_eq!(cfg.lr_scale(&at(0, 30)), 0.1);
        assert_eq!(cfg.lr_scale(&at(3, 0)), 0.1);
        cfg.lr_drop = None;
        assert_eq!(cfg.lr_scale(&at(4, 29)), 1.0);
        assert_eq!(cfg.lr_scale(&at(4, 31)), 0.1);
    }

    /// Pre-training targets index the batch's own texts: every subject/object label and every
    /// relation of a pair points at the text with the right name.
    #[test]
    fn pretraining_targets_are_remapped_to_the_batch_texts() {
        let dir = std::env::temp_dir().join(format!("rlip-fit-remap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = RgbImage {
            width: 40,
            height: 30,
            data: vec![90; 40 * 30 * 3],
        };
        let path = dir.join("a.png");
        std::fs::write(&path, rlip_data::draw::encode_png(&img)).unwrap();
        let names = |v: &[(&str, u64)]| v.iter().map(|(n, f)| (n.to_string(), *f)).collect();
        let vocab = Vocabulary {
            objects: names(&[
                ("person", 50),
                ("ball", 20),
                ("kite", 9),
                ("cup", 4),
                ("bird", 1),
            ]),
            relations: names(&[("hold", 30), ("above", 10), ("ride", 5), ("kick", 2)]),
        };
        let image = |boxes: Vec<&str>, rels: Vec<(usize, usize, &str)>| RelationImage {
            image_path: path.clone(),
            width: 40,
            height: 30,
            boxes: (0..boxes.len())
                .map(|i| [i as f64, 1.0, i as f64 + 9.0, 20.0])
                .collect(),
            box_names: boxes.iter().map(|s| s.to_string()).collect(),
            relations: rels
                .into_iter()
                .map(|(s, o, p)| (s, o, p.to_string()))
                .collect(),
            dataset: "vg".into(),
        };
        let images = vec![
            image(vec!["kite", "bird"], vec![(0, 1, "kick"), (0, 1, "above")]),
            image(vec!["cup", "person"], vec![(1, 0, "ride")]),
        ];
        let (samples, images, skipped) = pretrain_samples(&images, &vocab, 8).unwrap();
        assert_eq!((samples.len(), skipped), (2, 0));
        // the synthetic dataset's byte-level BPE tokenizer encodes any text
        let synth = dir.join("synth");
        let mut cfg = rlip_data::synth::SynthConfig::new(rlip_data::synth::SynthSize::Tiny, 0);
        cfg.overwrite = true;
        rlip_data::synth::generate(&synth, cfg).unwrap();
        let tokenizer = LabelTokenizer::from_tokenizer_json(synth.join("tokenizer.json")).unwrap();
        let dev = rlip_backends::default_device().unwrap();
        let (model, _) = RlipParSeDa::init(&RlipConfig::small(), &dev);
        let trainer = Trainer::new(
            model,
            Criterion::new(CriterionConfig::pretraining()).unwrap(),
            OptimConfig::default(),
            false,
            &dev,
        );
        // 3 texts: all positives (kite, dog, cup, person; kick, above, ride) exceed the budget
        let data = TrainData::Pretrain {
            samples: Arc::new(samples.clone()),
            images,
            vocab: vocab.clone(),
            sampling: TextSampling {
                num_texts: 3,
                ..TextSampling::default()
            },
            tokenizer,
        };
        let mut targets: Vec<PairTargets> = samples.iter().map(|s| to_input(s, 4, 0).1).collect();
        let (texts, set) = batch_texts(
            &data,
            &trainer,
            1,
            &FitState::default(),
            &[0, 1],
            &mut targets,
        )
        .unwrap();
        let set = set.expect("pre-training batches return their texts");
        assert_eq!(texts.n_obj, set.objects.len() + 1);
        assert_eq!(
            texts.ids.dims()[0],
            set.objects.len() + 1 + set.relations.len()
        );
        let obj = |i: usize| set.objects[i].as_str();
        let rel = |row: &[f32]| -> Vec<&str> {
            row.iter()
                .enumerate()
                .filter(|(_, v)| **v > 0.0)
                .map(|(k, _)| set.relations[k].as_str())
                .collect()
        };
        let t0 = &targets[0];
        assert_eq!(
            (obj(t0.sub_labels[0]), obj(t0.obj_labels[0])),
            ("kite", "bird")
        );
        let mut r0 = rel(&t0.verb_labels[0]);
        r0.sort();
        assert_eq!(r0, vec!["above", "kick"]);
        let t1 = &targets[1];
        assert_eq!(
            (obj(t1.sub_labels[0]), obj(t1.obj_labels[0])),
            ("person", "cup")
        );
        assert_eq!(rel(&t1.verb_labels[0]), vec!["ride"]);
        assert_eq!(t1.verb_labels[0].len(), set.relations.len());
        std::fs::remove_dir_all(&dir).ok();
    }
}

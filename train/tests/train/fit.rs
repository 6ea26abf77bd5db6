//! The training loop on the tiny synthetic dataset: a run stopped after a checkpoint and resumed
//! gives exactly the losses of an uninterrupted run, an unfinished checkpoint write is ignored,
//! and pre-training batches get their own label texts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rlip_data::hico::{coco_id_to_index, load_hoi_annotations};
use rlip_data::labels::LabelSet;
use rlip_data::synth::{SynthConfig, SynthSize, generate};
use rlip_data::transforms::TrainAugment;
use rlip_model::rlip::{RlipConfig, RlipParSeDa};
use rlip_model::text::tokenizer::LabelTokenizer;
use rlip_train::fit::{
    FitConfig, FitHooks, FitState, Progress, TrainData, fit, list_checkpoints, read_state,
    save_checkpoint,
};
use rlip_train::loss::{Criterion, CriterionConfig};
use rlip_train::samples::hico_samples;
use rlip_train::trainer::{LabelTexts, OptimConfig, TrainError, Trainer};

fn dataset(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rlip-fit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = SynthConfig::new(SynthSize::Tiny, 0);
    cfg.overwrite = true;
    generate(&dir, cfg).unwrap();
    dir
}

fn fixed_data(dir: &Path, dev: &burn::prelude::Device) -> TrainData {
    let labels = LabelSet::from_file(&dir.join("labels.json")).unwrap();
    let anns = load_hoi_annotations(dir.join("annotations/trainval_hico.json")).unwrap();
    let (samples, _) = hico_samples(
        &anns,
        &dir.join("images/train2015"),
        &coco_id_to_index,
        labels.relations.len(),
        128,
    )
    .unwrap();
    let tok = LabelTokenizer::from_tokenizer_json(dir.join("tokenizer.json")).unwrap();
    TrainData::Fixed {
        samples: Arc::new(samples),
        texts: LabelTexts::encode(&tok, &labels, dev).unwrap(),
        num_verbs: labels.relations.len(),
        no_object_label: labels.objects.len(),
    }
}

fn trainer(dev: &burn::prelude::Device) -> Trainer {
    let (model, _) = RlipParSeDa::init(&RlipConfig::small(), dev);
    let optim = OptimConfig {
        lr: 1e-3,
        lr_backbone: 5e-4,
        lr_text: 5e-4,
        ..OptimConfig::default()
    };
    Trainer::new(
        model,
        Criterion::new(CriterionConfig::default()).unwrap(),
        optim,
        false,
        dev,
    )
}

fn fit_cfg(max_steps: usize) -> FitConfig {
    FitConfig {
        epochs: 3,
        batch_size: 4,
        lr_drop: Some(1),
        lr_drop_step: None,
        augment: TrainAugment::scaled(128, 213),
        seed: 5,
        max_steps: Some(max_steps),
        time_limit_s: None,
        workers: 1,
    }
}

/// Records losses; checkpoints after step `save_at`.
struct Record {
    losses: Vec<(usize, f64)>,
    save_at: Option<(usize, PathBuf)>,
}

impl FitHooks for Record {
    fn on_step(&mut self, trainer: &Trainer, p: &Progress) -> Result<(), TrainError> {
        self.losses.push((p.log.step, p.log.loss));
        if let Some((at, dir)) = &self.save_at
            && p.state.steps == *at
        {
            save_checkpoint(trainer, dir, &p.state, &Default::default())?;
        }
        Ok(())
    }
    fn on_epoch_end(&mut self, _: &Trainer, _: &FitState) -> Result<(), TrainError> {
        Ok(())
    }
}

#[test]
fn resumed_run_repeats_the_uninterrupted_losses() {
    let dir = dataset("resume");
    let dev = rlip_backends::default_device().unwrap().autodiff();
    let data = fixed_data(&dir, &dev);
    // 24 images, batch 4: 6 steps per epoch; stop mid-epoch 2 (after the lr drop at epoch 1)
    let total = 9;
    let mut full = Record {
        losses: Vec::new(),
        save_at: None,
    };
    fit(
        &mut trainer(&dev),
        &data,
        &fit_cfg(total),
        FitState::default(),
        &mut full,
    )
    .unwrap();
    assert_eq!(full.losses.len(), total);

    let ckpts = dir.join("checkpoints");
    let at = 7;
    let mut first = Record {
        losses: Vec::new(),
        save_at: Some((at, ckpts.join(rlip_train::fit::checkpoint_name(at)))),
    };
    let stopped = fit(
        &mut trainer(&dev),
        &data,
        &fit_cfg(at),
        FitState::default(),
        &mut first,
    )
    .unwrap();
    assert_eq!((stopped.epoch, stopped.batch, stopped.steps), (1, 1, at));
    // a later checkpoint whose write was interrupted: only its temporary folder exists
    let partial = ckpts.join(format!("{}.tmp", rlip_train::fit::checkpoint_name(at + 1)));
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("model.safetensors"), b"trunc").unwrap();
    let found = list_checkpoints(&ckpts);
    assert_eq!(
        found.len(),
        1,
        "only the complete checkpoint counts: {found:?}"
    );

    let state = read_state(&found[0].1).unwrap();
    let mut resumed = trainer(&dev);
    resumed.restore(&found[0].1, state.steps).unwrap();
    let mut second = Record {
        losses: Vec::new(),
        save_at: None,
    };
    fit(&mut resumed, &data, &fit_cfg(total), state, &mut second).unwrap();
    let joined: Vec<(usize, f64)> = first.losses.into_iter().chain(second.losses).collect();
    println!("uninterrupted {:?}\nresumed       {joined:?}", full.losses);
    assert_eq!(joined, full.losses, "resumed losses differ");
    std::fs::remove_dir_all(&dir).ok();
}

//! `cargo xtask synth`: writes the deterministic synthetic relational dataset
//! ([`rlip_data::synth`]) and prints what it wrote.

use std::path::Path;

use anyhow::{Context, Result};
use rlip_data::synth::{
    NUM_OBJECTS, OBJECTS, RELATIONS, SynthConfig, SynthSize, SynthSummary, generate,
};

/// Generates the dataset into `out` and prints the summary.
pub fn run(out: &Path, size: &str, seed: u64, image_size: usize, overwrite: bool) -> Result<()> {
    let size: SynthSize = size.parse().map_err(anyhow::Error::msg)?;
    let cfg = SynthConfig {
        size,
        seed,
        image_size,
        overwrite,
    };
    let s = generate(out, cfg)
        .with_context(|| format!("generating the synthetic dataset into {}", out.display()))?;
    print_summary(&s);
    Ok(())
}

fn print_summary(s: &SynthSummary) {
    let c = &s.config;
    println!(
        "synthetic dataset '{}' (seed {}, {}x{} px) -> {}",
        c.size.name(),
        c.seed,
        c.image_size,
        c.image_size,
        s.out_dir.display()
    );
    println!(
        "{:<6} {:>7} {:>8} {:>8} {:>7} {:>10}",
        "split", "images", "persons", "objects", "pairs", "relations"
    );
    for (name, t) in [("train", &s.train), ("test", &s.test)] {
        println!(
            "{:<6} {:>7} {:>8} {:>8} {:>7} {:>10}",
            name, t.images, t.persons, t.objects, t.pairs, t.hois
        );
    }
    println!("\nrelation instances per class (train / test):");
    for (r, name) in RELATIONS.iter().enumerate() {
        let objs: Vec<String> = (0..NUM_OBJECTS)
            .filter(|&o| s.train.combo_counts[r][o] + s.test.combo_counts[r][o] > 0)
            .map(|o| {
                format!(
                    "{} {}/{}",
                    OBJECTS[o], s.train.combo_counts[r][o], s.test.combo_counts[r][o]
                )
            })
            .collect();
        println!(
            "  {:<8} {:>6} / {:<5}  {}",
            name,
            s.train.relation_counts[r],
            s.test.relation_counts[r],
            objs.join(", ")
        );
    }
    let list = |v: &[rlip_data::synth::ComboCount]| {
        v.iter()
            .map(|c| format!("{} ({}/{})", c.name, c.train, c.test))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "\nrare combinations (<10 training instances; train/test): {}",
        list(&s.rare)
    );
    println!(
        "unseen combinations (zero-shot, test only; train/test; annotations/unseen_hoi.json): {}",
        list(&s.unseen)
    );
    println!("\ngenerated in {:.2} s", s.seconds);
}

//! `cargo xtask prepare DATASET --root DIR [--convert] [--few-shot 1|10] [--seed N]`: checks a
//! dataset folder against the layout the official RLIPv2 code reads (README "Pre-training" /
//! "Downstream dataset preparation", `datasets/*.py::build`), prints each missing file with
//! where to get it, runs the conversions this repository implements (`--convert`), parses every
//! annotation file present with the `rlip_data` readers, and checks that the images the
//! annotations name exist. Exits non-zero when anything required is missing or malformed; a
//! parse error names the file, the record and the field. Never overwrites a file; every file it
//! writes is written atomically.
//!
//! Conversions (`--convert`; each only when its outputs are all missing):
//! - `vcoco`: `annotations/{trainval,test}_vcoco.json` and `corre_vcoco.npy` from the original
//!   release ([`rlip_data::vcoco_convert`]); `corre_vcoco.npy` alone when only it is missing.
//! - `vg`: `annotations/scene_graphs_preprocessv1.json` and the keep-names file from Visual
//!   Genome's raw `annotations/scene_graphs.json` ([`rlip_data::vg::preprocess_scene_graphs`],
//!   with `object_alias.txt` / `relationship_alias.txt` when present).
//! - `hico --few-shot P`: `annotations/trainval_hico_{P}percent.json` drawn from
//!   `trainval_hico.json` by the recipe of the official `convert_annotations/convert_hico_annotations.py::select_percentage`
//!   ([`few_shot_subset`]), seeded: the official draw is unseeded, so this is a new subset, not
//!   the released one (download that for comparable numbers).

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use rlip_data::DataError;
use rlip_data::hico::{HoiImageAnnotation, coco_id_to_index, load_hoi_annotations, load_hoi_list};
use rlip_data::labels::LabelSet;
use rlip_data::npy::read_npy;
use rlip_data::rng::Rng;
use rlip_data::vcoco_convert::{self as vc, VcocoRelease};

/// The datasets `prepare` knows.
pub const DATASETS: [&str; 6] = ["hico", "vcoco", "vg", "coco-pseudo", "o365-pseudo", "oi"];

/// Options of `xtask prepare`.
#[derive(Debug, Clone)]
pub struct PrepareArgs {
    /// One of [`DATASETS`].
    pub dataset: String,
    /// The dataset folder.
    pub root: PathBuf,
    /// Run the conversions whose inputs are present and outputs missing.
    pub convert: bool,
    /// HICO-DET few-shot subset to check (and with `convert`, make): 1 or 10 (percent).
    pub few_shot: Option<usize>,
    /// Seed of the few-shot draw.
    pub seed: u64,
}

// Where to get things (RLIPv2 README, "Annotation preparation" and the dataset sections).
const README_TABLE: &str = "the RLIPv2 README, table \"Annotation preparation\"";
const HICO_IMAGES: &str = "hico_20160224_det.tar.gz (https://drive.google.com/open?id=1QZcJmGVlF9f4h-XLWe9Gkmnmj2z1gSnk), unpacked here (RLIPv2 README, \"1. HICO-DET\")";
const HICO_PPDM: &str = "the PPDM annotation files (https://drive.google.com/open?id=1WI-gsNLS-t0Kh8TVki1wXqc3y2Ow1f2R), placed in annotations/ (RLIPv2 README, \"1. HICO-DET\")";
const HICO_FEW: &str = "row \"HICO-DET | Few-shot 1%, 10%\" (https://1drv.ms/f/c/e2b8cd450f9e9eb7/Qreeng9FzbgggOJAIgAAAAAAUXVUO7BPLCMolg), or --convert to draw a new subset by the official recipe";
const HICO_ZS: &str = "row \"HICO-DET | Zero-shot (UC-NF, UC-RF)\" (https://1drv.ms/f/c/e2b8cd450f9e9eb7/Qreeng9FzbgggOJCIgAAAAAAv6ldXAMKyzFtwA)";
const COCO2014: &str = "COCO 2014 train/val images (https://cocodataset.org/#download), as images/train2014 and images/val2014 (RLIPv2 README, \"2. V-COCO\")";
const VCOCO_REPO: &str = "a clone of https://github.com/s-gupta/v-coco, whose data/ folder this is (RLIPv2 README, \"2. V-COCO\")";
const VCOCO_PICK: &str =
    "v-coco's script_pick_annotations.py run on the COCO 2014 annotations (v-coco README, step 3)";
const VCOCO_PRIOR: &str = "prior.pickle from https://drive.google.com/drive/folders/10uuzvMUCVVv95-xAZg5KS94QXm7QXZW4 (RLIPv2 README, \"2. V-COCO\")";
const VCOCO_CONVERT: &str = "`cargo xtask prepare vcoco --convert` (the README's convert_vcoco_annotations.py step) from data/instances_vcoco_all_2014.json, data/vcoco/vcoco_{trainval,test}.json and prior.pickle";
const VG_IMAGES: &str = "Visual Genome images part 1 and 2 (https://visualgenome.org/api/v0/api_home.html) in images/ (RLIPv2 README, \"1. Visual Genome\")";
const VG_ANN: &str = "row \"VG | RLIP\" (https://1drv.ms/u/c/e2b8cd450f9e9eb7/Qbeeng9FzbgggOJOJAAAAAAAGbDzTYaCFQ2Z5Q), or --convert with Visual Genome's raw scene_graphs.json in annotations/";
const VG_KEEP: &str = "datasets/vg_keep_names_v1_no_lias_freq.json of the RLIPv2 repository (copy it here), or written by --convert";
const COCO2017: &str =
    "COCO 2017 images (https://cocodataset.org/#download) (RLIPv2 README, \"2. COCO\")";
const COCO_PSEUDO: &str = "row \"COCO (pseudo) | RLIP\" (https://1drv.ms/u/c/e2b8cd450f9e9eb7/Ebeeng9FzbgggOIMJAAAAAABSSme69DgBgxkoZj-u1xqkg), placed in annotations/";
const O365_IMAGES: &str = "Objects365 (https://www.objects365.org/download.html; scripts/datasets/ of the RLIPv2 repository) (RLIPv2 README, \"3. Objects365\")";
const O365_PSEUDO: &str = "row \"Objects365 (pseudo) | RLIP\" (https://1drv.ms/u/c/e2b8cd450f9e9eb7/Ebeeng9FzbgggOIMJAAAAAABSSme69DgBgxkoZj-u1xqkg), placed in rel_annotations/";
const O365_MAP: &str = "the RLIPv2 README's Objects365 layout (image id -> path of the image under this folder; the README names no download for it)";
const OI_IMAGES: &str = "Open Images v6 as PySGG prepares it (https://github.com/SHTUPLUS/PySGG/blob/main/DATASET.md), images in images/ (RLIPv2 README, \"3. Open Images v6\")";
const OI_ANN: &str = "row \"Open Images | Fully-finetuning\" (https://1drv.ms/u/c/e2b8cd450f9e9eb7/Ebeeng9FzbgggOIMJAAAAAABSSme69DgBgxkoZj-u1xqkg), placed in annotations/";

/// Runs `xtask prepare`.
pub fn run(a: &PrepareArgs) -> Result<()> {
    if !a.root.is_dir() {
        bail!("{}: no such folder", a.root.display());
    }
    if a.few_shot.is_some() && a.dataset != "hico" {
        bail!("--few-shot applies to hico only");
    }
    if let Some(p) = a.few_shot.filter(|p| ![1, 10].contains(p)) {
        bail!("--few-shot {p}: the official subsets are 1 and 10 (percent)");
    }
    let mut c = Check::new(&a.root);
    println!("{} at {}", a.dataset, a.root.display());
    match a.dataset.as_str() {
        "hico" => hico(&mut c, a),
        "vcoco" => vcoco(&mut c, a.convert),
        "vg" => vg(&mut c, a.convert),
        "coco-pseudo" => coco_pseudo(&mut c),
        "o365-pseudo" => o365_pseudo(&mut c),
        "oi" => oi(&mut c),
        other => bail!("unknown dataset {other:?} (one of {})", DATASETS.join(", ")),
    }
    if c.problems.is_empty() {
        println!("{}: ready", a.dataset);
        return Ok(());
    }
    eprintln!("\n{} problem(s):", c.problems.len());
    for p in &c.problems {
        eprintln!("  - {p}");
    }
    bail!("{} at {} is not ready", a.dataset, a.root.display())
}

/// The state of one check: what was found wrong so far.
struct Check {
    root: PathBuf,
    problems: Vec<String>,
}

impl Check {
    fn new(root: &Path) -> Self {
        Check {
            root: root.to_path_buf(),
            problems: Vec::new(),
        }
    }

    /// A file that must (or may) exist; prints where to get it when missing.
    fn file(&mut self, rel: &str, what: &str, source: &str, required: bool) -> Option<PathBuf> {
        self.entry(rel, what, source, required, false)
    }

    /// A folder that must (or may) exist and hold something.
    fn dir(&mut self, rel: &str, what: &str, source: &str, required: bool) -> Option<PathBuf> {
        self.entry(rel, what, source, required, true)
    }

    fn entry(&mut self, rel: &str, what: &str, src: &str, req: bool, dir: bool) -> Option<PathBuf> {
        let p = self.root.join(rel);
        let present = if dir {
            std::fs::read_dir(&p).is_ok_and(|mut d| d.next().is_some())
        } else {
            p.is_file()
        };
        if present {
            println!("  ok       {rel}");
            return Some(p);
        }
        let tag = if req { "MISSING" } else { "absent " };
        println!("  {tag}  {rel}  ({what})\n           get it from: {src}");
        if req {
            self.problems
                .push(format!("missing {}: {what}", p.display()));
        }
        None
    }

    fn note(&self, msg: &str) {
        println!("  note     {msg}");
    }

    fn fail(&mut self, msg: String) {
        println!("  ERROR    {msg}");
        self.problems.push(msg);
    }

    /// Parses `path` with `read`, showing a spinner; an error is recorded with the JSON path of
    /// the failing record and field when the reader reports a syntax or type error.
    fn parse<T>(
        &mut self,
        path: &Path,
        read: impl FnOnce(PathBuf) -> Result<T, DataError>,
    ) -> Option<T> {
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        let bar = spinner(format!("parsing {} ({})", path.display(), human(size)));
        let r = read(path.to_path_buf());
        bar.finish_and_clear();
        match r {
            Ok(v) => {
                println!("  parsed   {}", self.rel(path));
                Some(v)
            }
            Err(e) => {
                self.fail(describe(&e));
                None
            }
        }
    }

    fn rel(&self, p: &Path) -> String {
        p.strip_prefix(&self.root)
            .unwrap_or(p)
            .display()
            .to_string()
    }

    /// Checks that every image exists, with a progress bar.
    fn images(&mut self, what: &str, paths: impl IntoIterator<Item = PathBuf>) {
        let paths: Vec<PathBuf> = {
            let mut seen = HashSet::new();
            paths
                .into_iter()
                .filter(|p| seen.insert(p.clone()))
                .collect()
        };
        let bar = ProgressBar::new(paths.len() as u64).with_style(
            ProgressStyle::with_template("  {msg} [{bar:30}] {pos}/{len} ({eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(format!("checking {what}"));
        let mut missing = Vec::new();
        for p in &paths {
            if !p.is_file() {
                missing.push(p);
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        if missing.is_empty() {
            println!("  ok       {} {what} found", paths.len());
            return;
        }
        let shown: Vec<String> = missing
            .iter()
            .take(5)
            .map(|p| p.display().to_string())
            .collect();
        self.fail(format!(
            "{} of {} {what} are missing, e.g. {}",
            missing.len(),
            paths.len(),
            shown.join(", ")
        ));
    }
}

fn spinner(msg: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_message(msg);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.1} KiB", b as f64 / 1024.0),
    }
}

/// A reader error; JSON syntax and type errors get the path of the record and field at the
/// error position (e.g. `[12].annotations[3].bbox`).
fn describe(e: &DataError) -> String {
    if let DataError::Json { path, source } = e
        && source.line() > 0
        && let Ok(bytes) = std::fs::read(path)
    {
        let at = offset_of(&bytes, source.line(), source.column());
        return format!("{e} (record and field: {})", json_path_at(&bytes, at));
    }
    e.to_string()
}

/// Byte offset of serde_json's 1-based line and column.
fn offset_of(b: &[u8], line: usize, column: usize) -> usize {
    let start: usize = b
        .split(|&c| c == b'\n')
        .take(line - 1)
        .map(|l| l.len() + 1)
        .sum();
    (start + column.saturating_sub(1)).min(b.len())
}

/// The JSON path (`[i]`, `.key`) of the innermost value being read at byte `at`.
fn json_path_at(b: &[u8], at: usize) -> String {
    enum Frame {
        Arr(usize),
        Obj(Option<String>, bool), // current key, expecting a key
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < at.min(b.len()) {
        match b[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                if let Some(Frame::Obj(key, expecting @ true)) = stack.last_mut() {
                    *key = Some(String::from_utf8_lossy(&b[start..i.min(b.len())]).into_owned());
                    *expecting = false;
                }
            }
            b'[' => stack.push(Frame::Arr(0)),
            b'{' => stack.push(Frame::Obj(None, true)),
            b']' | b'}' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Arr(n)) => *n += 1,
                Some(Frame::Obj(_, expecting)) => *expecting = true,
                None => {}
            },
            _ => {}
        }
        i += 1;
    }
    let path: String = stack
        .iter()
        .map(|f| match f {
            Frame::Arr(n) => format!("[{n}]"),
            Frame::Obj(Some(k), _) => format!(".{k}"),
            Frame::Obj(None, _) => String::new(),
        })
        .collect();
    if path.is_empty() {
        "top level".into()
    } else {
        path
    }
}

/// Checks the verb ids of a HOI list (`1..=verbs` for HICO, `0..verbs` for V-COCO).
fn check_verbs(c: &mut Check, p: &Path, anns: &[HoiImageAnnotation], first: i64, verbs: usize) {
    let bad = anns.iter().enumerate().find_map(|(i, a)| {
        let h = a
            .hoi_annotation
            .iter()
            .position(|h| !(first..first + verbs as i64).contains(&h.category_id))?;
        Some((i, a, h))
    });
    if let Some((i, a, h)) = bad {
        c.fail(format!(
            "{}: [{i}] ({}): hoi_annotation[{h}].category_id {} is not a verb id {first}..={}",
            p.display(),
            a.file_name,
            a.hoi_annotation[h].category_id,
            first + verbs as i64 - 1
        ));
    }
}

fn check_shape(c: &mut Check, p: &Path, want: &[usize]) {
    if let Some(a) = c.parse(p, read_npy)
        && a.shape != want
    {
        c.fail(format!(
            "{}: shape {:?}, expected {want:?}",
            p.display(),
            a.shape
        ));
    }
}

fn hico(c: &mut Check, a: &PrepareArgs) {
    c.dir("images/train2015", "training images", HICO_IMAGES, true);
    c.dir("images/test2015", "test images", HICO_IMAGES, true);
    let trainval = c.file(
        "annotations/trainval_hico.json",
        "training annotations",
        HICO_PPDM,
        true,
    );
    let test = c.file(
        "annotations/test_hico.json",
        "test annotations",
        HICO_PPDM,
        true,
    );
    let corre = c.file(
        "annotations/corre_hico.npy",
        "verb x object validity matrix",
        HICO_PPDM,
        true,
    );
    let labels = c.root.join("labels.json");
    let (verbs, objects) = match labels
        .is_file()
        .then(|| c.parse(&labels, |p| LabelSet::from_file(&p)))
    {
        Some(Some(l)) => {
            c.note(&format!(
                "labels.json: a HICO-format dataset with its own {} verbs and {} objects",
                l.relations.len(),
                l.objects.len()
            ));
            (l.relations.len(), l.objects.len())
        }
        _ => (117, 80),
    };
    let mut train_anns = None;
    for (p, images) in [(&trainval, "images/train2015"), (&test, "images/test2015")] {
        let Some(p) = p else { continue };
        if let Some(anns) = c.parse(p, load_hoi_annotations) {
            check_verbs(c, p, &anns, 1, verbs);
            check_objects(c, p, &anns, objects);
            let dir = c.root.join(images);
            c.images(
                &format!("{images} files"),
                anns.iter().map(|x| dir.join(&x.file_name)),
            );
            if images.ends_with("train2015") {
                train_anns = Some(anns);
            }
        }
    }
    if let Some(p) = &corre {
        check_shape(c, p, &[verbs, objects]);
    }
    let list = c.file(
        "annotations/hoi_list_new.json",
        "the 600 HOI classes, for the zero-shot settings",
        "the annotation folder of the official training setup (not linked from the RLIPv2 README)",
        false,
    );
    let n_hoi = list
        .and_then(|p| c.parse(&p, load_hoi_list))
        .map(|l| l.len());
    let unseen = c.root.join("annotations/unseen_hoi.json");
    if unseen.is_file()
        && let Some(ids) = c.parse(&unseen, read_indices)
        && let (Some(n), Some(bad)) = (n_hoi, ids.iter().max())
        && *bad >= n
    {
        c.fail(format!(
            "{}: unseen HOI index {bad} is not below the {n} classes of hoi_list_new.json",
            unseen.display()
        ));
    }
    for zs in ["UC-NF", "UC-RF"] {
        let rel = format!("annotations/trainval_hico_{zs}.json");
        if let Some(p) = c.file(
            &rel,
            &format!("zero-shot {zs} training annotations"),
            &format!("{README_TABLE}, {HICO_ZS}"),
            false,
        ) && let Some(anns) = c.parse(&p, load_hoi_annotations)
        {
            check_verbs(c, &p, &anns, 1, verbs);
        }
    }
    if let Some(pct) = a.few_shot {
        let rel = format!("annotations/trainval_hico_{pct}percent.json");
        let out = c.root.join(&rel);
        if a.convert && !out.exists() {
            match &train_anns {
                Some(anns) => match make_few_shot(anns, pct, a.seed, &out) {
                    Ok(msg) => c.note(&msg),
                    Err(e) => c.fail(format!("{}: {e:#}", out.display())),
                },
                None => c.fail(format!(
                    "cannot draw {rel}: annotations/trainval_hico.json is missing or malformed"
                )),
            }
        }
        let what = format!("few-shot {pct}% training annotations");
        if let Some(p) = c.file(&rel, &what, &format!("{README_TABLE}, {HICO_FEW}"), true)
            && let Some(anns) = c.parse(&p, load_hoi_annotations)
        {
            check_verbs(c, &p, &anns, 1, verbs);
            let dir = c.root.join("images/train2015");
            c.images(
                "few-shot images/train2015 files",
                anns.iter().map(|x| dir.join(&x.file_name)),
            );
        }
    } else {
        for pct in [1, 10] {
            let rel = format!("annotations/trainval_hico_{pct}percent.json");
            if let Some(p) = c.file(
                &rel,
                &format!("few-shot {pct}% (optional; --few-shot {pct})"),
                &format!("{README_TABLE}, {HICO_FEW}"),
                false,
            ) {
                c.parse(&p, load_hoi_annotations);
            }
        }
    }
}

fn check_objects(c: &mut Check, p: &Path, anns: &[HoiImageAnnotation], objects: usize) {
    let bad = anns.iter().enumerate().find_map(|(i, a)| {
        let b = a
            .annotations
            .iter()
            .position(|b| coco_id_to_index(b.category_id).is_none_or(|k| k >= objects))?;
        Some((i, a, b))
    });
    if let Some((i, a, b)) = bad {
        c.fail(format!(
            "{}: [{i}] ({}): annotations[{b}].category_id {} is not one of the first {objects} COCO ids",
            p.display(),
            a.file_name,
            a.annotations[b].category_id
        ));
    }
}

/// Reads a JSON list of indices (`unseen_hoi.json`).
fn read_indices(p: PathBuf) -> Result<Vec<usize>, DataError> {
    let bytes = std::fs::read(&p).map_err(|source| DataError::Io {
        path: p.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| DataError::Json { path: p, source })
}

/// Draws the few-shot subset and writes it to `out` (never replacing a file).
fn make_few_shot(anns: &[HoiImageAnnotation], pct: usize, seed: u64, out: &Path) -> Result<String> {
    let bar = spinner(format!("drawing the {pct}% subset"));
    let r = few_shot_subset(anns, pct, seed, 10_000_000);
    bar.finish_and_clear();
    let (idx, draws) = r?;
    let subset: Vec<&HoiImageAnnotation> = idx.iter().map(|&i| &anns[i]).collect();
    vc::write_new(out, &serde_json::to_vec(&subset)?)?;
    Ok(format!(
        "wrote {} ({} of {} images, seed {seed}, {draws} draw(s)): a new draw by the official recipe, not the released subset",
        out.display(),
        idx.len(),
        anns.len()
    ))
}

/// The few-shot subset of `select_percentage` in the official
/// `convert_annotations/convert_hico_annotations.py`, with our seeded generator instead of
/// Python's unseeded `random`:
///
/// 1. for every verb id present, in ascending order, one image drawn uniformly from the list of
///    images of its interactions (an image appears once per interaction, so images with more
///    instances of the verb are likelier; the same image may be drawn for several verbs and is
///    then kept several times, as in the official lists);
/// 2. `floor(n · pct / 100)` minus the number of those draws further images, drawn without
///    replacement from the images not drawn in step 1 (an error if that is negative: the
///    official `random.sample` raises);
/// 3. step 2 is repeated until the subset covers every verb id and every object category id of
///    the whole file (the official code demands the full 117 verbs and 80 objects, which is the
///    same on HICO-DET's trainval), at most `max_draws` times.
///
/// Returns the image indices, step 2's images first, then step 1's, as the official list is
/// built, and the number of draws of step 2.
pub fn few_shot_subset(
    anns: &[HoiImageAnnotation],
    pct: usize,
    seed: u64,
    max_draws: usize,
) -> Result<(Vec<usize>, usize)> {
    let mut rng = Rng::new(seed);
    let verbs: BTreeSet<i64> = anns
        .iter()
        .flat_map(|a| a.hoi_annotation.iter().map(|h| h.category_id))
        .collect();
    let objects: Vec<i64> = anns
        .iter()
        .flat_map(|a| a.annotations.iter().map(|b| b.category_id))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut picks = Vec::with_capacity(verbs.len());
    for &v in &verbs {
        let with_v: Vec<usize> = anns
            .iter()
            .enumerate()
            .flat_map(|(i, a)| {
                a.hoi_annotation
                    .iter()
                    .filter(move |h| h.category_id == v)
                    .map(move |_| i)
            })
            .collect();
        picks.push(with_v[rng.below(with_v.len())]);
    }
    let target = anns.len() * pct / 100;
    let Some(rest) = target.checked_sub(picks.len()) else {
        bail!(
            "{pct}% of {} images is {target}, fewer than the {} images drawn for the {} verbs",
            anns.len(),
            picks.len(),
            verbs.len()
        );
    };
    let picked: HashSet<usize> = picks.iter().copied().collect();
    let mut left: Vec<usize> = (0..anns.len()).filter(|i| !picked.contains(i)).collect();
    if rest > left.len() {
        bail!(
            "{rest} more images are needed but only {} are left",
            left.len()
        );
    }
    // Object categories of each image as a bit set; the per-verb picks cover every verb.
    let words = objects.len().div_ceil(64);
    let mask = |i: usize| {
        let mut m = vec![0u64; words];
        for b in &anns[i].annotations {
            if let Ok(k) = objects.binary_search(&b.category_id) {
                m[k / 64] |= 1 << (k % 64);
            }
        }
        m
    };
    let masks: Vec<Vec<u64>> = (0..anns.len()).map(mask).collect();
    let mut base = vec![0u64; words];
    for &i in &picks {
        base.iter_mut().zip(&masks[i]).for_each(|(a, b)| *a |= b);
    }
    let full: Vec<u64> = (0..words)
        .map(|w| {
            let n = objects.len() - 64 * w;
            if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
        })
        .collect();
    for draw in 1..=max_draws {
        // Partial Fisher-Yates: `left[..rest]` becomes a uniform sample in random order.
        for k in 0..rest {
            let j = k + rng.below(left.len() - k);
            left.swap(k, j);
        }
        let mut cover = base.clone();
        for &i in &left[..rest] {
            cover.iter_mut().zip(&masks[i]).for_each(|(a, b)| *a |= b);
        }
        if cover == full {
            let mut out = left[..rest].to_vec();
            out.extend(&picks);
            return Ok((out, draw));
        }
    }
    bail!(
        "no {pct}% subset covering all {} object categories in {max_draws} draws",
        objects.len()
    )
}

fn vcoco(c: &mut Check, convert: bool) {
    c.dir(
        "images/train2014",
        "COCO train2014 images (training)",
        COCO2014,
        true,
    );
    c.dir(
        "images/val2014",
        "COCO val2014 images (test)",
        COCO2014,
        true,
    );
    let outs = [vc::TRAINVAL_FILE, vc::TEST_FILE, vc::CORRE_FILE]
        .map(|f| c.root.join("annotations").join(f));
    let rel = VcocoRelease::in_root(&c.root);
    if convert {
        let inputs = [&rel.instances, &rel.trainval, &rel.test];
        let have_inputs = inputs.iter().all(|p| p.is_file());
        if outs.iter().all(|p| !p.exists()) {
            if have_inputs {
                let bar = spinner("converting the V-COCO release".into());
                let r = vc::convert(&rel, &c.root.join("annotations"));
                bar.finish_and_clear();
                match r {
                    Ok(r) => {
                        c.note(&format!(
                            "converted: trainval {} images / {} interactions, test {} / {}, corre_vcoco.npy {}",
                            r.trainval.0,
                            r.trainval.1,
                            r.test.0,
                            r.test.1,
                            r.corre_shape.map_or("not written (no prior.pickle)".into(), |s| format!("{s:?}"))
                        ));
                        if r.verb_classes != rlip_data::vcoco::VCOCO_VERB_CLASSES {
                            c.note(&format!(
                                "the release gives other verb classes than the official 29: {:?}",
                                r.verb_classes
                            ));
                        }
                    }
                    Err(e) => c.fail(describe(&e)),
                }
            } else {
                c.note("--convert: the release files below are needed");
            }
        } else if !outs[2].exists() && outs[..2].iter().all(|p| p.exists()) {
            if let Some(prior) = &rel.prior
                && rel.trainval.is_file()
            {
                match corre_only(&rel.trainval, prior, &outs[2]) {
                    Ok(s) => c.note(&format!("wrote annotations/corre_vcoco.npy {s:?}")),
                    Err(e) => c.fail(describe(&e)),
                }
            }
        } else if outs.iter().any(|p| !p.exists()) {
            c.note("--convert: some converted files exist; remove them to convert again (nothing is overwritten)");
        }
    }
    // The HOIA files the training code reads.
    for (p, dir, req) in [
        (&outs[0], "images/train2014", true),
        (&outs[1], "images/val2014", true),
    ] {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(p) = c.file(
            &format!("annotations/{name}"),
            "HOIA-format V-COCO annotations",
            VCOCO_CONVERT,
            req,
        ) && let Some(anns) = c.parse(&p, rlip_data::vcoco::load_hoia_annotations)
        {
            check_verbs(c, &p, &anns, 0, 29);
            let d = c.root.join(dir);
            c.images(
                &format!("{dir} files"),
                anns.iter().map(|x| d.join(&x.file_name)),
            );
        }
    }
    if let Some(p) = c.file(
        "annotations/corre_vcoco.npy",
        "verb x object validity matrix",
        VCOCO_CONVERT,
        true,
    ) {
        check_shape(c, &p, &[29, 80]);
    }
    // The release (conversion input; the official evaluator reads vcoco_test.json, the instances
    // and the test split ids).
    let need = convert && outs.iter().any(|p| !p.exists());
    if let Some(p) = c.file(
        "data/instances_vcoco_all_2014.json",
        "COCO instances of the V-COCO images",
        VCOCO_PICK,
        need,
    ) {
        c.parse(&p, rlip_data::vcoco::load_coco_instances);
    }
    for split in ["trainval", "test"] {
        let rel = format!("data/vcoco/vcoco_{split}.json");
        if let Some(p) = c.file(&rel, "V-COCO role annotations", VCOCO_REPO, need) {
            c.parse(&p, rlip_data::vcoco::load_vsrl_annotations);
        }
    }
    if let Some(p) = c.file(
        "data/splits/vcoco_test.ids",
        "test image ids (official evaluator)",
        VCOCO_REPO,
        false,
    ) {
        c.parse(&p, rlip_data::vcoco::load_split_ids);
    }
    let need_prior = convert && !outs[2].exists();
    if let Some(p) = c.file(
        "prior.pickle",
        "VSGNet's verb prior, for corre_vcoco.npy",
        VCOCO_PRIOR,
        need_prior,
    ) && let Some(m) = c.parse(&p, vc::load_prior)
    {
        c.note(&format!(
            "prior.pickle: {} object classes x {} verbs",
            m.rows, m.cols
        ));
    }
}

/// Writes `corre_vcoco.npy` alone (the lists exist): the verb classes of the trainval release.
fn corre_only(trainval: &Path, prior: &Path, out: &Path) -> Result<[usize; 2], DataError> {
    let verbs = vc::verb_classes(&rlip_data::vcoco::load_vsrl_annotations(trainval)?);
    let m = vc::load_prior(prior)?;
    let data = vc::corre_from_prior(&m, &verbs).map_err(|msg| DataError::Invalid {
        path: prior.to_path_buf(),
        msg,
    })?;
    let shape = [verbs.len(), m.rows];
    vc::write_new(out, &rlip_data::synth::npy_f64_bytes(&shape, &data))?;
    Ok(shape)
}

fn vg(c: &mut Check, convert: bool) {
    use rlip_data::vg::{
        Aliases, KEEP_NAMES_FILE, PreprocessConfig, SCENE_GRAPHS_FILE, load_keep_names,
        load_scene_graphs, preprocess_scene_graphs,
    };
    let ann = c.root.join("annotations");
    let (sg, keep) = (ann.join(SCENE_GRAPHS_FILE), ann.join(KEEP_NAMES_FILE));
    let raw = ann.join("scene_graphs.json");
    if convert && !sg.exists() && !keep.exists() {
        if raw.is_file() {
            let (oa, ra) = (
                ann.join("object_alias.txt"),
                ann.join("relationship_alias.txt"),
            );
            let aliases = if oa.is_file() && ra.is_file() {
                Aliases::load(&oa, &ra)
            } else {
                c.note("no object_alias.txt / relationship_alias.txt in annotations/: names compare verbatim in the redundancy step");
                Ok(Aliases::default())
            };
            let bar = spinner(format!("preprocessing {}", raw.display()));
            let r = aliases.and_then(|al| {
                preprocess_scene_graphs(&raw, &ann, &PreprocessConfig::default(), &al)
            });
            bar.finish_and_clear();
            match r {
                Ok(s) => c.note(&format!(
                    "preprocessed: {} images, {} -> {} relationships, {} predicates, {} object names kept",
                    s.images, s.relations_raw, s.relations_kept, s.relationship_names, s.object_names
                )),
                Err(e) => c.fail(describe(&e)),
            }
        } else {
            c.note("--convert: annotations/scene_graphs.json (Visual Genome v1.4 scene graphs) is needed to preprocess");
        }
    }
    let synthetic = c.root.join("synth.json").is_file();
    let images = c.root.join(if synthetic {
        "images/train2015"
    } else {
        "images"
    });
    c.dir(
        if synthetic {
            "images/train2015"
        } else {
            "images"
        },
        "Visual Genome images",
        VG_IMAGES,
        true,
    );
    if c.root
        .join("annotations/scene_graphs_after_preprocessing.json")
        .is_file()
        && !sg.exists()
    {
        c.note("annotations/scene_graphs_after_preprocessing.json (the README's name) is here: datasets/vg.py reads it as scene_graphs_preprocessv1.json, rename it");
    }
    if let Some(p) = c.file(
        &format!("annotations/{SCENE_GRAPHS_FILE}"),
        "preprocessed scene graphs",
        &format!("{README_TABLE}, {VG_ANN}"),
        true,
    ) && let Some(imgs) = c.parse(&p, load_scene_graphs)
    {
        if synthetic {
            c.note("synthetic dataset (synth.json): its VG images are under images/train2015");
        }
        c.images("images", imgs.iter().map(|i| i.vg_image_path(&images)));
    }
    if let Some(p) = c.file(
        &format!("annotations/{KEEP_NAMES_FILE}"),
        "kept relation and object names with counts",
        VG_KEEP,
        false,
    ) {
        c.parse(&p, load_keep_names);
    }
    if raw.is_file() {
        c.parse(&raw, rlip_data::vg::load_raw_scene_graphs);
    }
}

/// `dir/prefix*.json` files, sorted (keep-names files excluded).
fn glob(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            n.starts_with(prefix) && n.ends_with(".json") && !n.contains("keep_names")
        })
        .collect();
    v.sort();
    v
}

/// Pseudo-relation files of one dataset, each parsed, their `dataset` checked and images found.
fn pseudo_files(
    c: &mut Check,
    dir: &str,
    prefix: &str,
    source: &str,
    dataset: &str,
    image: &dyn Fn(&rlip_data::vg::SceneGraphImage) -> Result<PathBuf, DataError>,
) {
    let files = glob(&c.root.join(dir), prefix);
    if files.is_empty() {
        c.file(
            &format!("{dir}/{prefix}*.json"),
            "pseudo-labelled relations",
            &format!("{README_TABLE}, {source}"),
            true,
        );
    }
    for p in files {
        println!("  ok       {}", c.rel(&p));
        let Some(imgs) = c.parse(&p, |p| rlip_data::pseudo::load_pseudo_relations(p, 0.0)) else {
            continue;
        };
        if let Some((i, img)) = imgs
            .iter()
            .enumerate()
            .find(|(_, i)| i.dataset.as_deref() != Some(dataset))
        {
            c.fail(format!(
                "{}: image {i} (image_id {}): dataset: expected {dataset:?}, found {:?}",
                p.display(),
                img.image_id,
                img.dataset
            ));
            continue;
        }
        let (mut paths, mut unmapped) = (Vec::new(), None);
        for img in &imgs {
            match image(img) {
                Ok(path) => paths.push(path),
                Err(e) => unmapped = unmapped.or(Some(e)),
            }
        }
        if let Some(e) = unmapped {
            c.fail(e.to_string());
        }
        c.images("images", paths);
    }
    for k in glob_keep(&c.root.join(dir)) {
        c.parse(&k, rlip_data::vg::load_keep_names);
    }
}

fn glob_keep(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with("keep_names_freq.json"))
        .collect();
    v.sort();
    v
}

fn coco_pseudo(c: &mut Check) {
    c.dir("train2017", "COCO 2017 training images", COCO2017, true);
    c.dir(
        "val2017",
        "COCO 2017 validation images (Relation Tagger only)",
        COCO2017,
        false,
    );
    let root = c.root.clone();
    pseudo_files(
        c,
        "annotations",
        "RLIPv2_train2017",
        COCO_PSEUDO,
        rlip_data::pseudo::COCO2017,
        &|img| Ok(rlip_data::pseudo::coco_image_path(&root, img)),
    );
    for split in ["train2017", "val2017"] {
        let rel = format!("annotations/instances_{split}.json");
        if let Some(p) = c.file(
            &rel,
            "COCO boxes (only for running the Relation Tagger)",
            COCO2017,
            false,
        ) {
            c.parse(&p, rlip_data::vcoco::load_coco_instances);
        }
    }
}

fn o365_pseudo(c: &mut Check) {
    c.dir("train", "Objects365 training patches", O365_IMAGES, true);
    c.dir("val", "Objects365 validation patches", O365_IMAGES, false);
    let map = c
        .file(
            "image_id_to_filepath.json",
            "image id -> file path",
            O365_MAP,
            true,
        )
        .and_then(|p| c.parse(&p, rlip_data::pseudo::O365FilePaths::load));
    match map {
        Some(map) => {
            let root = c.root.clone();
            pseudo_files(
                c,
                "rel_annotations",
                "RLIPv2_o365trainval",
                O365_PSEUDO,
                rlip_data::pseudo::O365,
                &|img| map.image_path(&root, img),
            );
        }
        None if glob(&c.root.join("rel_annotations"), "RLIPv2_o365trainval").is_empty() => {
            let src = format!("{README_TABLE}, {O365_PSEUDO}");
            c.file(
                "rel_annotations/RLIPv2_o365trainval*.json",
                "pseudo-labelled relations",
                &src,
                true,
            );
        }
        None => c.note(
            "relation files not checked: image_id_to_filepath.json is needed to find their images",
        ),
    }
    for (rel, what) in [
        ("train/zhiyuan_objv2_train.json", "training boxes"),
        ("val/zhiyuan_objv2_val.json", "validation boxes"),
    ] {
        if c.file(
            rel,
            &format!("Objects365 {what} (only for running the Relation Tagger)"),
            O365_IMAGES,
            false,
        )
        .is_some()
        {
            c.note(&format!(
                "{rel}: not parsed (only the Relation Tagger reads it; it is several GB)"
            ));
        }
    }
}

fn oi(c: &mut Check) {
    use rlip_data::oi::{load_oi_annotations, load_oi_categories};
    c.dir("images", "Open Images v6 images", OI_IMAGES, true);
    let src = format!("{README_TABLE}, {OI_ANN}");
    for (rel, what, req) in [
        (
            "annotations/OI_SGG_train_finetuning.json",
            "training annotations",
            true,
        ),
        ("annotations/OI_SGG_test.json", "test annotations", true),
        (
            "annotations/OI_SGG_trainval_finetuning.json",
            "train+val annotations (optional)",
            false,
        ),
    ] {
        if let Some(p) = c.file(rel, what, &src, req)
            && let Some(anns) = c.parse(&p, load_oi_annotations)
        {
            let d = c.root.join("images");
            c.images("images", anns.iter().map(|a| d.join(&a.file_name)));
        }
    }
    let all = c
        .file(
            "annotations/categories_dict.json",
            "all 601 object names and the relation names",
            &src,
            true,
        )
        .and_then(|p| c.parse(&p, load_oi_categories));
    let eval = c.file(
        "annotations/OI_SGG_trainval_test_categories_dict.json",
        "evaluated categories",
        &src,
        true,
    );
    let eval = eval.and_then(|p| c.parse(&p, load_oi_categories).map(|e| (p, e)));
    if let (Some(all), Some((p, eval))) = (&all, &eval)
        && let Err(e) = rlip_data::oi::valid_obj_ids(all, eval, p)
    {
        c.fail(e.to_string());
    }
    for (rel, req) in [
        ("annotations/OI_SGG_test_corre_mat.npy", true),
        ("annotations/OI_SGG_trainval_test_corre_mat.npy", false),
    ] {
        if let Some(p) = c.file(
            rel,
            "subject x relation x object validity matrix",
            &src,
            req,
        ) && let Some(a) = c.parse(&p, read_npy)
            && a.shape.len() != 3
        {
            c.fail(format!(
                "{}: shape {:?}, expected [subjects, relations, objects]",
                p.display(),
                a.shape
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rlip_data::hico::{BoxAnnotation, HoiAnnotation};

    fn image(verbs: &[i64], objects: &[i64]) -> HoiImageAnnotation {
        HoiImageAnnotation {
            file_name: String::new(),
            img_id: None,
            annotations: objects
                .iter()
                .map(|&c| BoxAnnotation {
                    bbox: [0.0; 4],
                    category_id: c,
                })
                .collect(),
            hoi_annotation: verbs
                .iter()
                .map(|&v| HoiAnnotation {
                    subject_id: 0,
                    object_id: 0,
                    category_id: v,
                    hoi_category_id: None,
                })
                .collect(),
        }
    }

    #[test]
    fn few_shot_subset_covers_every_verb_and_object_and_has_the_official_size() {
        // 200 images; verb 3 and object 90 are rare.
        let anns: Vec<_> = (0..200)
            .map(|i| match i {
                17 => image(&[3], &[1, 2]),
                150 => image(&[1], &[1, 90]),
                _ => image(&[1 + (i % 2) as i64], &[1, 2 + (i % 3) as i64]),
            })
            .collect();
        let (idx, draws) = few_shot_subset(&anns, 10, 7, 100_000).unwrap();
        assert_eq!(idx.len(), 20);
        assert!(draws >= 1);
        assert_eq!(
            &idx[17..],
            &[idx[17], idx[18], 17],
            "per-verb picks last, verb 3 -> image 17"
        );
        let objs: BTreeSet<i64> = idx
            .iter()
            .flat_map(|&i| anns[i].annotations.iter().map(|b| b.category_id))
            .collect();
        assert!(objs.contains(&90) && objs.len() == 5);
        assert_eq!(
            few_shot_subset(&anns, 10, 7, 100_000).unwrap().0,
            idx,
            "deterministic"
        );
        let e = few_shot_subset(&anns, 1, 7, 10).unwrap_err().to_string();
        assert!(e.contains("fewer than the 3 images"), "{e}");
    }

    #[test]
    fn json_error_positions_name_record_and_field() {
        let text = br#"[{"a": 1, "b": [1, 2]}, {"a": 2, "b": [3, "x"]}]"#;
        let at = text.iter().position(|&c| c == b'x').unwrap();
        assert_eq!(json_path_at(text, at), "[1].b[1]");
        let text = b"{\"images\": [],\n \"annotations\": [{\"id\": 1}, {\"bbox\": [1, 2,";
        assert_eq!(json_path_at(text, text.len()), ".annotations[1].bbox[2]");
        assert_eq!(offset_of(b"ab\ncd", 2, 2), 4);
    }
}

//! Conversion of the original V-COCO release into the HOIA layout the training code reads
//! (`trainval_vcoco.json`, `test_vcoco.json`, `corre_vcoco.npy`), with the semantics of the
//! official `convert_vcoco_annotations.py` (RLIPv2 / QPIC), which the RLIPv2 README runs as
//! `python convert_vcoco_annotations.py --load_path data/v-coco/data --prior_path
//! data/v-coco/prior.pickle --save_path data/v-coco/annotations`.
//!
//! # Inputs ([`VcocoRelease::in_root`])
//!
//! - `data/vcoco/vcoco_trainval.json`, `data/vcoco/vcoco_test.json` (s-gupta/v-coco): one entry
//!   per action with `action_name`, `role_name` (`"agent"` first), `include`, and flat lists
//!   `image_id`, `ann_id`, `label` (N entries) and `role_object_id` (roles × N, role-major, as
//!   `vsrl_utils.load_vcoco` reshapes it); read with [`crate::vcoco::load_vsrl_annotations`].
//! - `data/instances_vcoco_all_2014.json`: the COCO 2014 instances subset that v-coco's
//!   `script_pick_annotations.py` writes; read with [`crate::vcoco::load_coco_instances`].
//! - `prior.pickle` (VSGNet): a dict object class → float array `[1, 29]` of verb masks in
//!   VSGNet's verb order; read with [`load_prior`] (a restricted unpickler that accepts plain
//!   data and numpy arrays only, and never runs code).
//!
//! # What the conversion does
//!
//! - Verb classes ([`verb_classes`]), from the trainval actions in file order: an action whose
//!   only role is `agent` is one class named by the action (`stand`, `walk`, `run`, `smile`);
//!   any other action gives one class `{action}_{role}` per non-agent role, in role order. The
//!   official release gives the 29 classes of [`crate::vcoco::VCOCO_VERB_CLASSES`]; the HOIA
//!   `category_id` is the 0-based index in this list.
//! - Boxes: per image, every COCO annotation of the image in file order (crowd ones included),
//!   `bbox` converted from `[x, y, w, h]` to `[x, y, x + w, y + h]`, with its COCO
//!   `category_id`; the image's `file_name` is the COCO one.
//! - Interactions ([`hoia_annotations`]), for every action and entry with `label != 0`: the
//!   subject is the position of the entry's agent annotation id (`role_object_id` row 0) among
//!   the image's annotations; an agent-only action gives one row with `object_id` −1; otherwise
//!   each non-agent role gives a row whose object is the position of its annotation id, or −1
//!   when the id is 0 (role not annotated). Rows are not de-duplicated.
//! - Every image of a split file appears once, even without a positive label, in order of first
//!   appearance (actions in file order, entries in order). The official script, run under
//!   Python 2 as its README requires, writes a `dict`'s values, i.e. in hash order; the order
//!   carries no meaning (training shuffles, evaluation matches by position in the same file).
//! - `corre_vcoco.npy` ([`corre_from_prior`]): the prior arrays concatenated in ascending key
//!   order (`[classes, 29]`), transposed, and its rows re-ordered from VSGNet's verb order (the
//!   29 names sorted alphabetically) to the verb classes above: `[29, classes]`, float64.
//!
//! An annotation id that is not an annotation of its image, an image id missing from the
//! instances file, or a verb class unknown to the prior is an error naming the file, action and
//! entry (the official script raises `ValueError` / `KeyError`).
//!
//! [`convert`] writes the three files atomically and never replaces an existing file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::DataError;
pub use crate::fsutil::write_new;
use crate::fsutil::{refuse_existing, write_err};
use crate::hico::{BoxAnnotation, HoiAnnotation, HoiImageAnnotation};
use crate::vcoco::{
    CocoInstances, VCOCO_VERB_CLASSES, VsrlAction, load_coco_instances, load_vsrl_annotations,
};

/// Output file name of the converted training list.
pub const TRAINVAL_FILE: &str = "trainval_vcoco.json";
/// Output file name of the converted test list.
pub const TEST_FILE: &str = "test_vcoco.json";
/// Output file name of the verb × object validity matrix.
pub const CORRE_FILE: &str = "corre_vcoco.npy";

/// The release files a conversion reads.
#[derive(Debug, Clone, PartialEq)]
pub struct VcocoRelease {
    /// `instances_vcoco_all_2014.json`.
    pub instances: PathBuf,
    /// `vcoco_trainval.json`.
    pub trainval: PathBuf,
    /// `vcoco_test.json`.
    pub test: PathBuf,
    /// `prior.pickle`; without it no `corre_vcoco.npy` is written.
    pub prior: Option<PathBuf>,
}

impl VcocoRelease {
    /// The README's layout under the V-COCO root (`data/v-coco`): `data/instances_vcoco_all_2014.json`,
    /// `data/vcoco/vcoco_{trainval,test}.json` and `prior.pickle` (used when it exists).
    pub fn in_root(root: &Path) -> Self {
        let prior = root.join("prior.pickle");
        VcocoRelease {
            instances: root.join("data/instances_vcoco_all_2014.json"),
            trainval: root.join("data/vcoco/vcoco_trainval.json"),
            test: root.join("data/vcoco/vcoco_test.json"),
            prior: prior.exists().then_some(prior),
        }
    }
}

/// What [`convert`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct VcocoConversion {
    /// The verb classes (HOIA `category_id` = index).
    pub verb_classes: Vec<String>,
    /// Images and interaction rows of the training list.
    pub trainval: (usize, usize),
    /// Images and interaction rows of the test list.
    pub test: (usize, usize),
    /// Shape of `corre_vcoco.npy`, when a prior was given.
    pub corre_shape: Option<[usize; 2]>,
    /// The files written.
    pub written: Vec<PathBuf>,
}

/// The verb classes of the official conversion (see the module docs), from the trainval actions.
pub fn verb_classes(actions: &[VsrlAction]) -> Vec<String> {
    let mut out = Vec::new();
    for a in actions {
        if a.role_name.len() == 1 {
            out.push(a.action_name.clone());
        } else {
            out.extend(
                a.role_name[1..]
                    .iter()
                    .map(|r| format!("{}_{r}", a.action_name)),
            );
        }
    }
    out
}

/// The boxes of one image and their COCO annotation ids.
struct ImageBoxes<'a> {
    file_name: &'a str,
    boxes: Vec<BoxAnnotation>,
    ann_ids: Vec<i64>,
}

fn boxes_by_image(coco: &CocoInstances) -> HashMap<i64, ImageBoxes<'_>> {
    let mut map: HashMap<i64, ImageBoxes> = coco
        .images
        .iter()
        .map(|im| {
            let b = ImageBoxes {
                file_name: &im.file_name,
                boxes: Vec::new(),
                ann_ids: Vec::new(),
            };
            (im.id, b)
        })
        .collect();
    for a in &coco.annotations {
        if let Some(img) = map.get_mut(&a.image_id) {
            let [x, y, w, h] = a.bbox;
            img.boxes.push(BoxAnnotation {
                bbox: [x, y, x + w, y + h],
                category_id: a.category_id,
            });
            img.ann_ids.push(a.id);
        }
    }
    map
}

/// Converts one split's actions to HOIA images (see the module docs). `verbs` is the list of
/// [`verb_classes`] (from the trainval split). An error names the action, entry and field.
pub fn hoia_annotations(
    coco: &CocoInstances,
    actions: &[VsrlAction],
    verbs: &[String],
) -> Result<Vec<HoiImageAnnotation>, String> {
    let boxes = boxes_by_image(coco);
    let mut order: Vec<i64> = Vec::new();
    let mut images: HashMap<i64, HoiImageAnnotation> = HashMap::new();
    let verb = |name: String, a: &VsrlAction| -> Result<i64, String> {
        verbs
            .iter()
            .position(|v| *v == name)
            .map(|i| i as i64)
            .ok_or_else(|| {
                format!(
                    "action {:?}: verb class {name:?} is not one of the trainval verb classes",
                    a.action_name
                )
            })
    };
    for a in actions {
        let n = a.ann_id.len();
        let roles = a.role_name.len();
        for m in 0..n {
            let img_id = a.image_id[m];
            let at = |msg: String| {
                format!(
                    "action {:?}, entry {m} (image_id {img_id}): {msg}",
                    a.action_name
                )
            };
            let img = boxes
                .get(&img_id)
                .ok_or_else(|| at("image_id: not an image of the COCO instances file".into()))?;
            let out = images.entry(img_id).or_insert_with(|| {
                order.push(img_id);
                HoiImageAnnotation {
                    file_name: img.file_name.to_string(),
                    img_id: None,
                    annotations: img.boxes.clone(),
                    hoi_annotation: Vec::new(),
                }
            });
            if a.label[m] == 0 {
                continue;
            }
            let index_of = |role: usize| -> Result<i64, String> {
                let id = a.role_object(m, role);
                img.ann_ids.iter().position(|&x| x == id).map(|i| i as i64).ok_or_else(|| {
                    at(format!(
                        "role_object_id ({}): annotation id {id} is not an annotation of the image",
                        a.role_name[role]
                    ))
                })
            };
            let subject_id = index_of(0)?;
            let mut push = |object_id: i64, category_id: i64| {
                out.hoi_annotation.push(HoiAnnotation {
                    subject_id,
                    object_id,
                    category_id,
                    hoi_category_id: None,
                })
            };
            if roles == 1 {
                push(-1, verb(a.action_name.clone(), a)?);
                continue;
            }
            for r in 1..roles {
                let object_id = match a.role_object(m, r) {
                    0 => -1,
                    _ => index_of(r)?,
                };
                push(
                    object_id,
                    verb(format!("{}_{}", a.action_name, a.role_name[r]), a)?,
                );
            }
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|id| images.remove(&id))
        .collect())
}

/// The concatenated prior: `rows` arrays rows (object classes, ascending key order) × `cols`
/// verbs in VSGNet order, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorMatrix {
    /// Rows (object classes).
    pub rows: usize,
    /// Columns (verbs, VSGNet order).
    pub cols: usize,
    /// `rows * cols` values.
    pub data: Vec<f64>,
}

/// Reads `prior.pickle`: a dict of integer keys to 2-D numeric numpy arrays with the same number
/// of columns, concatenated along the rows in ascending key order (`np.concatenate` over
/// `sorted(prior.keys())`). Python 2 (protocols 0–2) and Python 3 (3–4) pickles are read.
pub fn load_prior(path: impl AsRef<Path>) -> Result<PriorMatrix, DataError> {
    let path = path.as_ref();
    let bytes = crate::read_bytes(path)?;
    let bad = |msg: String| DataError::Pickle {
        path: path.to_path_buf(),
        msg,
    };
    let mut entries = unpickle::dict_of_arrays(&bytes).map_err(bad)?;
    if entries.is_empty() {
        return Err(bad("the prior dict is empty".into()));
    }
    entries.sort_by_key(|e| e.0);
    let cols = match entries[0].1.shape[..] {
        [_, c] => c,
        ref s => {
            return Err(bad(format!(
                "key {}: array of shape {s:?}, expected 2-D",
                entries[0].0
            )));
        }
    };
    let mut data = Vec::new();
    let mut rows = 0;
    for (key, a) in &entries {
        if a.shape.len() != 2 || a.shape[1] != cols {
            return Err(bad(format!(
                "key {key}: array of shape {:?}, expected 2-D with {cols} columns like the first",
                a.shape
            )));
        }
        rows += a.shape[0];
        data.extend_from_slice(&a.data);
    }
    Ok(PriorMatrix { rows, cols, data })
}

/// `corre_vcoco.npy` from the prior (see the module docs): shape `[verbs.len(), prior.rows]`,
/// row `v` = prior column of verb `v` in VSGNet's (alphabetical) order. Fails on a verb that is
/// not one of the 29 V-COCO classes or a prior with too few columns.
pub fn corre_from_prior(prior: &PriorMatrix, verbs: &[String]) -> Result<Vec<f64>, String> {
    let mut vsgnet: Vec<&str> = VCOCO_VERB_CLASSES.to_vec();
    vsgnet.sort_unstable();
    let mut out = Vec::with_capacity(verbs.len() * prior.rows);
    for v in verbs {
        let col = vsgnet
            .iter()
            .position(|n| n == v)
            .ok_or_else(|| format!("verb class {v:?} has no column in the prior"))?;
        if col >= prior.cols {
            return Err(format!(
                "verb class {v:?} needs prior column {col}, the prior has {}",
                prior.cols
            ));
        }
        out.extend((0..prior.rows).map(|r| prior.data[r * prior.cols + col]));
    }
    Ok(out)
}

/// Runs the conversion and writes `out_dir/`[`TRAINVAL_FILE`], [`TEST_FILE`] and (with a prior)
/// [`CORRE_FILE`], creating `out_dir`. Nothing is written when any of them already exists (a
/// [`DataError::Write`] of kind `AlreadyExists`) or when any input fails.
pub fn convert(release: &VcocoRelease, out_dir: &Path) -> Result<VcocoConversion, DataError> {
    let mut targets = vec![out_dir.join(TRAINVAL_FILE), out_dir.join(TEST_FILE)];
    if release.prior.is_some() {
        targets.push(out_dir.join(CORRE_FILE));
    }
    refuse_existing(&targets)?;
    let coco = load_coco_instances(&release.instances)?;
    let trainval = load_vsrl_annotations(&release.trainval)?;
    let test = load_vsrl_annotations(&release.test)?;
    let verbs = verb_classes(&trainval);
    let tv = hoia_annotations(&coco, &trainval, &verbs)
        .map_err(|m| DataError::invalid(&release.trainval, m))?;
    let te =
        hoia_annotations(&coco, &test, &verbs).map_err(|m| DataError::invalid(&release.test, m))?;
    let corre = match &release.prior {
        Some(p) => {
            let prior = load_prior(p)?;
            let c = corre_from_prior(&prior, &verbs).map_err(|m| DataError::invalid(p, m))?;
            Some((
                crate::synth::npy_f64_bytes(&[verbs.len(), prior.rows], &c),
                prior.rows,
            ))
        }
        None => None,
    };
    let json =
        |v: &Vec<HoiImageAnnotation>, p: &Path| serde_json::to_vec(v).map_err(|e| write_err(p, e));
    let mut files = vec![json(&tv, &targets[0])?, json(&te, &targets[1])?];
    files.extend(corre.as_ref().map(|c| c.0.clone()));
    std::fs::create_dir_all(out_dir).map_err(|e| write_err(out_dir, e))?;
    refuse_existing(&targets)?;
    for (t, bytes) in targets.iter().zip(&files) {
        write_new(t, bytes)?;
    }
    let rows = |v: &[HoiImageAnnotation]| (v.len(), v.iter().map(|i| i.hoi_annotation.len()).sum());
    Ok(VcocoConversion {
        trainval: rows(&tv),
        test: rows(&te),
        corre_shape: corre.map(|c| [verbs.len(), c.1]),
        verb_classes: verbs,
        written: targets,
    })
}

/// A restricted unpickler for `prior.pickle`: plain data (numbers, strings, tuples, lists,
/// dicts) plus numpy arrays and dtypes, which are recognised by name and rebuilt from their
/// state; any other global or call is refused. Nothing is executed.
mod unpickle {
    use std::collections::HashMap;

    /// A decoded numeric array (C order).
    #[derive(Clone)]
    pub struct Array {
        pub shape: Vec<usize>,
        pub data: Vec<f64>,
    }

    enum Obj {
        None,
        Int(i64),
        /// A float (read, but not needed for the prior's structure).
        Float,
        Bytes(Vec<u8>),
        Text(String),
        Seq(Vec<usize>),
        Dict(Vec<(usize, usize)>),
        Global(String),
        Dtype {
            code: String,
            big_endian: bool,
        },
        NewArray,
        Array(Array),
    }

    const RECONSTRUCT: [&str; 2] = [
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
    ];

    struct Vm<'a> {
        d: &'a [u8],
        pos: usize,
        objs: Vec<Obj>,
        stack: Vec<Option<usize>>,
        memo: HashMap<usize, usize>,
    }

    /// Decodes a pickle whose top level is a dict of integer keys to numpy arrays.
    pub fn dict_of_arrays(bytes: &[u8]) -> Result<Vec<(i64, Array)>, String> {
        let mut vm = Vm {
            d: bytes,
            pos: 0,
            objs: Vec::new(),
            stack: Vec::new(),
            memo: HashMap::new(),
        };
        let top = vm.run()?;
        let Obj::Dict(items) = &vm.objs[top] else {
            return Err("top level is not a dict".into());
        };
        items
            .iter()
            .map(|&(k, v)| match (&vm.objs[k], &vm.objs[v]) {
                (Obj::Int(key), Obj::Array(a)) => Ok((*key, a.clone())),
                (Obj::Int(key), _) => Err(format!("key {key}: value is not a numpy array")),
                _ => Err("a dict key is not an integer".into()),
            })
            .collect()
    }

    impl<'a> Vm<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            let end = self.pos.checked_add(n).filter(|&e| e <= self.d.len());
            let e = end.ok_or_else(|| format!("truncated at byte {}", self.pos))?;
            let s = &self.d[self.pos..e];
            self.pos = e;
            Ok(s)
        }
        fn uint(&mut self, n: usize) -> Result<usize, String> {
            let b = self.take(n)?;
            let v = b
                .iter()
                .rev()
                .fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
            usize::try_from(v).map_err(|_| "length too large".to_string())
        }
        fn line_bytes(&mut self) -> Result<&'a [u8], String> {
            let rest = &self.d[self.pos..];
            let n = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or("unterminated line")?;
            self.pos += n + 1;
            Ok(&rest[..n])
        }
        fn line(&mut self) -> Result<&'a str, String> {
            let b = self.line_bytes()?;
            std::str::from_utf8(b).map_err(|_| "text argument is not UTF-8".into())
        }
        fn push(&mut self, o: Obj) {
            self.objs.push(o);
            self.stack.push(Some(self.objs.len() - 1));
        }
        fn pop(&mut self) -> Result<usize, String> {
            match self.stack.pop() {
                Some(Some(i)) => Ok(i),
                Some(None) => Err("unexpected MARK".into()),
                None => Err("stack underflow".into()),
            }
        }
        fn pop_mark(&mut self) -> Result<Vec<usize>, String> {
            let at = self
                .stack
                .iter()
                .rposition(Option::is_none)
                .ok_or("no MARK")?;
            let items = self.stack.split_off(at + 1).into_iter().flatten().collect();
            self.stack.pop();
            Ok(items)
        }
        fn top(&self) -> Result<usize, String> {
            self.stack
                .last()
                .copied()
                .flatten()
                .ok_or_else(|| "empty stack".into())
        }
        fn memo_get(&mut self, k: usize) -> Result<(), String> {
            let i = *self
                .memo
                .get(&k)
                .ok_or_else(|| format!("memo key {k} missing"))?;
            self.stack.push(Some(i));
            Ok(())
        }
        fn memo_put(&mut self, k: usize) -> Result<(), String> {
            let t = self.top()?;
            self.memo.insert(k, t);
            Ok(())
        }
        fn set_items(&mut self, dict: usize, items: Vec<usize>) -> Result<(), String> {
            if !items.len().is_multiple_of(2) {
                return Err("odd number of dict items".into());
            }
            let Obj::Dict(d) = &mut self.objs[dict] else {
                return Err("SETITEM(S) on a non-dict".into());
            };
            d.extend(items.chunks_exact(2).map(|c| (c[0], c[1])));
            Ok(())
        }
        fn append(&mut self, list: usize, items: Vec<usize>) -> Result<(), String> {
            let Obj::Seq(l) = &mut self.objs[list] else {
                return Err("APPEND(S) on a non-list".into());
            };
            l.extend(items);
            Ok(())
        }
        fn text(&self, i: usize) -> Option<String> {
            match &self.objs[i] {
                Obj::Text(s) => Some(s.clone()),
                Obj::Bytes(b) => String::from_utf8(b.clone()).ok(),
                _ => None,
            }
        }

        fn run(&mut self) -> Result<usize, String> {
            loop {
                let op = self.take(1)?[0];
                match op {
                    b'.' => return self.pop(),
                    0x80 => {
                        let v = self.take(1)?[0];
                        if v > 4 {
                            return Err(format!("unsupported pickle protocol {v}"));
                        }
                    }
                    0x95 => {
                        self.take(8)?;
                    }
                    b'(' => self.stack.push(None),
                    b'0' => {
                        self.stack.pop().ok_or("stack underflow")?;
                    }
                    b'1' => {
                        self.pop_mark()?;
                    }
                    b'2' => {
                        let t = self.top()?;
                        self.stack.push(Some(t));
                    }
                    b'N' => self.push(Obj::None),
                    0x88 => self.push(Obj::Int(1)),
                    0x89 => self.push(Obj::Int(0)),
                    b'I' => {
                        let s = self.line()?;
                        let v = match s {
                            "00" => 0,
                            "01" => 1,
                            _ => s.parse().map_err(|_| format!("bad INT {s:?}"))?,
                        };
                        self.push(Obj::Int(v));
                    }
                    b'L' => {
                        let s = self.line()?;
                        let v = s.trim_end_matches('L').parse();
                        self.push(Obj::Int(v.map_err(|_| format!("bad LONG {s:?}"))?));
                    }
                    b'J' => {
                        let v = self.uint(4)? as u32 as i32;
                        self.push(Obj::Int(i64::from(v)));
                    }
                    b'K' => {
                        let v = self.uint(1)?;
                        self.push(Obj::Int(v as i64));
                    }
                    b'M' => {
                        let v = self.uint(2)?;
                        self.push(Obj::Int(v as i64));
                    }
                    0x8a | 0x8b => {
                        let n = if op == 0x8a {
                            self.uint(1)?
                        } else {
                            self.uint(4)?
                        };
                        if n > 8 {
                            return Err(format!("{n}-byte integer does not fit in 64 bits"));
                        }
                        let b = self.take(n)?;
                        let mut v = b
                            .iter()
                            .rev()
                            .fold(0i64, |acc, &x| (acc << 8) | i64::from(x));
                        if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                            v -= 1i64 << (8 * n);
                        }
                        self.push(Obj::Int(v));
                    }
                    b'F' => {
                        let s = self.line()?;
                        s.parse::<f64>().map_err(|_| format!("bad FLOAT {s:?}"))?;
                        self.push(Obj::Float);
                    }
                    b'G' => {
                        self.take(8)?;
                        self.push(Obj::Float);
                    }
                    b'S' => {
                        let s = self.line()?;
                        let b = unescape_string(s)?;
                        self.push(Obj::Bytes(b));
                    }
                    b'V' => {
                        let t = crate::pickle::decode_raw_unicode_escape(self.line_bytes()?)?;
                        self.push(Obj::Text(t));
                    }
                    b'T' | b'U' | b'B' | b'C' | 0x8e => {
                        let n = match op {
                            b'U' | b'C' => self.uint(1)?,
                            0x8e => self.uint(8)?,
                            _ => self.uint(4)?,
                        };
                        let b = self.take(n)?.to_vec();
                        self.push(Obj::Bytes(b));
                    }
                    b'X' | 0x8c | 0x8d => {
                        let n = match op {
                            0x8c => self.uint(1)?,
                            0x8d => self.uint(8)?,
                            _ => self.uint(4)?,
                        };
                        let b = self.take(n)?;
                        let s = std::str::from_utf8(b).map_err(|_| "string is not UTF-8")?;
                        self.push(Obj::Text(s.to_string()));
                    }
                    b')' | b']' => self.push(Obj::Seq(Vec::new())),
                    b'}' => self.push(Obj::Dict(Vec::new())),
                    b't' | b'l' => {
                        let items = self.pop_mark()?;
                        self.push(Obj::Seq(items));
                    }
                    0x85..=0x87 => {
                        let n = usize::from(op - 0x84);
                        if self.stack.len() < n {
                            return Err("stack underflow".into());
                        }
                        let items = self.stack.split_off(self.stack.len() - n);
                        let items = items
                            .into_iter()
                            .collect::<Option<Vec<_>>>()
                            .ok_or("unexpected MARK")?;
                        self.push(Obj::Seq(items));
                    }
                    b'd' => {
                        let items = self.pop_mark()?;
                        self.push(Obj::Dict(Vec::new()));
                        let d = self.top()?;
                        self.set_items(d, items)?;
                    }
                    b's' | b'u' => {
                        let items = if op == b's' {
                            let v = self.pop()?;
                            let k = self.pop()?;
                            vec![k, v]
                        } else {
                            self.pop_mark()?
                        };
                        let d = self.top()?;
                        self.set_items(d, items)?;
                    }
                    b'a' | b'e' => {
                        let items = if op == b'a' {
                            vec![self.pop()?]
                        } else {
                            self.pop_mark()?
                        };
                        let l = self.top()?;
                        self.append(l, items)?;
                    }
                    b'p' => {
                        let s = self.line()?;
                        self.memo_put(s.parse().map_err(|_| format!("bad PUT {s:?}"))?)?;
                    }
                    b'q' | b'r' => {
                        let k = self.uint(if op == b'q' { 1 } else { 4 })?;
                        self.memo_put(k)?;
                    }
                    0x94 => {
                        let k = self.memo.len();
                        self.memo_put(k)?;
                    }
                    b'g' => {
                        let s = self.line()?;
                        self.memo_get(s.parse().map_err(|_| format!("bad GET {s:?}"))?)?;
                    }
                    b'h' | b'j' => {
                        let k = self.uint(if op == b'h' { 1 } else { 4 })?;
                        self.memo_get(k)?;
                    }
                    b'c' => {
                        let module = self.line()?;
                        let name = self.line()?;
                        self.push(Obj::Global(format!("{module}.{name}")));
                    }
                    0x93 => {
                        let name = self.pop()?;
                        let module = self.pop()?;
                        let (Some(m), Some(n)) = (self.text(module), self.text(name)) else {
                            return Err("STACK_GLOBAL needs two strings".into());
                        };
                        self.push(Obj::Global(format!("{m}.{n}")));
                    }
                    b'R' => {
                        let args = self.pop()?;
                        let f = self.pop()?;
                        let o = self.reduce(f, args)?;
                        self.push(o);
                    }
                    b'b' => {
                        let state = self.pop()?;
                        let target = self.top()?;
                        self.build(target, state)?;
                    }
                    _ => {
                        return Err(format!(
                            "unsupported opcode 0x{op:02x} at byte {} (only plain data and numpy arrays are read)",
                            self.pos - 1
                        ));
                    }
                }
            }
        }

        fn seq(&self, i: usize) -> Option<&[usize]> {
            match &self.objs[i] {
                Obj::Seq(s) => Some(s),
                _ => None,
            }
        }

        fn reduce(&mut self, f: usize, args: usize) -> Result<Obj, String> {
            let Obj::Global(name) = &self.objs[f] else {
                return Err("REDUCE on a non-global".into());
            };
            if RECONSTRUCT.contains(&name.as_str()) {
                return Ok(Obj::NewArray);
            }
            if name != "numpy.dtype" {
                return Err(format!("refusing to call {name}"));
            }
            let code = self
                .seq(args)
                .and_then(|a| a.first().copied())
                .and_then(|c| self.text(c))
                .ok_or("numpy.dtype without a type code")?;
            let big_endian = code.starts_with('>');
            let code = code.trim_start_matches(['<', '>', '=', '|']).to_string();
            Ok(Obj::Dtype { code, big_endian })
        }

        fn build(&mut self, target: usize, state: usize) -> Result<(), String> {
            let st = self
                .seq(state)
                .ok_or("BUILD state is not a tuple")?
                .to_vec();
            match &self.objs[target] {
                Obj::Dtype { .. } => {
                    let order = st.get(1).and_then(|&o| self.text(o)).unwrap_or_default();
                    if let Obj::Dtype { big_endian, .. } = &mut self.objs[target] {
                        *big_endian = order == ">";
                    }
                    Ok(())
                }
                Obj::NewArray => {
                    // (version, shape, dtype, is_fortran, raw) or, before version 1, without it.
                    let st = match st.len() {
                        5 => &st[1..],
                        4 => &st[..],
                        n => return Err(format!("numpy array state has {n} items")),
                    };
                    let shape = self
                        .seq(st[0])
                        .ok_or("array shape is not a tuple")?
                        .iter()
                        .map(|&d| match self.objs[d] {
                            Obj::Int(v) => {
                                usize::try_from(v).map_err(|_| "negative dimension".to_string())
                            }
                            _ => Err("array dimension is not an integer".to_string()),
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    let Obj::Dtype { code, big_endian } = &self.objs[st[1]] else {
                        return Err("array dtype is not a numpy.dtype".into());
                    };
                    let fortran = matches!(self.objs[st[2]], Obj::Int(v) if v != 0);
                    if fortran && shape.iter().filter(|&&d| d > 1).count() > 1 {
                        return Err("Fortran-ordered arrays are not supported".into());
                    }
                    let raw = match &self.objs[st[3]] {
                        Obj::Bytes(b) => b,
                        _ => return Err("array data is not a byte string".into()),
                    };
                    let data = decode(raw, code, *big_endian, &shape)?;
                    self.objs[target] = Obj::Array(Array { shape, data });
                    Ok(())
                }
                _ => Err("BUILD on an object that is not a numpy array or dtype".into()),
            }
        }
    }

    fn decode(raw: &[u8], code: &str, be: bool, shape: &[usize]) -> Result<Vec<f64>, String> {
        let count = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or("array shape overflows")?;
        let word = |c: &[u8]| -> u64 {
            let it = c.iter();
            let f = |acc: u64, &x: &u8| (acc << 8) | u64::from(x);
            if be {
                it.fold(0, f)
            } else {
                it.rev().fold(0, f)
            }
        };
        let conv: fn(u64) -> f64 = match code {
            "f8" => |w| f64::from_bits(w),
            "f4" => |w| f64::from(f32::from_bits(w as u32)),
            "i8" => |w| w as i64 as f64,
            "i4" => |w| f64::from(w as u32 as i32),
            "i2" => |w| f64::from(w as u16 as i16),
            "i1" => |w| f64::from(w as u8 as i8),
            "u8" | "u4" | "u2" | "u1" | "b1" => |w| w as f64,
            _ => return Err(format!("unsupported array dtype {code:?}")),
        };
        let size: usize = code[1..].parse().map_err(|_| "bad dtype size")?;
        if count.checked_mul(size) != Some(raw.len()) {
            return Err(format!(
                "array of dtype {code:?} and shape {shape:?} needs {count} × {size} bytes, found {}",
                raw.len()
            ));
        }
        Ok(raw.chunks_exact(size).map(|c| conv(word(c))).collect())
    }

    /// Python 2 `string-escape` decoding of a quoted `STRING` argument.
    fn unescape_string(s: &str) -> Result<Vec<u8>, String> {
        let b = s.as_bytes();
        let q = *b.first().ok_or("empty STRING")?;
        if b.len() < 2 || !matches!(q, b'\'' | b'"') || b[b.len() - 1] != q {
            return Err(format!("STRING argument {s:?} is not quoted"));
        }
        let b = &b[1..b.len() - 1];
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'\\' || i + 1 == b.len() {
                out.push(b[i]);
                i += 1;
                continue;
            }
            let c = b[i + 1];
            i += 2;
            match c {
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'a' => out.push(7),
                b'b' => out.push(8),
                b'f' => out.push(12),
                b'v' => out.push(11),
                b'\\' | b'\'' | b'"' => out.push(c),
                b'\n' => {}
                b'x' => {
                    let h = b.get(i..i + 2).and_then(|h| std::str::from_utf8(h).ok());
                    let v = h.and_then(|h| u8::from_str_radix(h, 16).ok());
                    out.push(v.ok_or("bad \\x escape")?);
                    i += 2;
                }
                b'0'..=b'7' => {
                    let mut v = u32::from(c - b'0');
                    for _ in 0..2 {
                        match b.get(i) {
                            Some(&d @ b'0'..=b'7') => {
                                v = v * 8 + u32::from(d - b'0');
                                i += 1;
                            }
                            _ => break,
                        }
                    }
                    out.push(v as u8);
                }
                _ => out.extend([b'\\', c]),
            }
        }
        Ok(out)
    }
}

//! PyTorch checkpoints written by `torch.save` (the zip format of torch ≥ 1.6), read without
//! executing any pickle code.
//!
//! A checkpoint is a zip archive whose single top folder is named after the file stem (any name
//! is accepted). `<top>/data.pkl` is a pickle (protocol 2–5) that [`super::pickle`]
//! turns into plain data; tensors in it refer to storage records `<top>/data/<key>` holding the
//! raw little-endian elements, which are read here and gathered by offset, size and stride into
//! dense row-major [`RawTensor`]s. Several tensors may view one record.
//!
//! Only the top-level entries that are tensors or dicts of tensors (state dicts) are read from
//! the zip; anything else (optimizer state, epoch, argparse flags, …) is summarised in a short
//! string. Legacy (pre-1.6) non-zip files and big-endian checkpoints are rejected with a clear
//! error.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use super::pickle::{self, TensorRef, Value};
use super::{RawTensor, StateDict, WeightError};

/// A whole checkpoint: its top-level entries in file order.
///
/// When the pickled object is not a dict, there is a single entry named [`TOP_LEVEL`].
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// `(name, entry)` pairs in the order they were saved.
    pub entries: Vec<(String, Entry)>,
}

/// One top-level entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// A dict whose values are all tensors (such as a model's `state_dict()`), read in full.
    StateDict(StateDict),
    /// A single tensor, read in full.
    Tensor(RawTensor),
    /// Anything else, as a short summary (under 300 characters), e.g. `"int 19"`,
    /// `"argparse.Namespace (305 fields: lr=0.0001, ...)"` or `"dict (2 keys: state, param_groups)"`.
    Value(String),
}

/// Name of the single entry of a checkpoint whose pickled object is not a dict.
pub const TOP_LEVEL: &str = "<top level>";

/// Largest `data.pkl` accepted (decompressed).
const MAX_PICKLE_BYTES: u64 = 1 << 31;

/// A view may expand (through zero strides) beyond its storage only up to this many bytes.
const MAX_EXPANDED_BYTES: usize = 1 << 30;

/// Longest summary of a [`Entry::Value`].
const SUMMARY_CHARS: usize = 290;

/// Reads every top-level entry of a `torch.save` zip checkpoint.
///
/// Tensors and state dicts are read from the storage records; other values are summarised.
pub fn read_checkpoint(path: &Path) -> Result<Checkpoint, WeightError> {
    let mut ck = Archive::open(path)?;
    let top = ck.parse_pickle()?;
    let items: Vec<(String, Value)> = match top {
        Value::Dict(pairs) => pairs.into_iter().map(|(k, v)| (key_name(&k), v)).collect(),
        other => vec![(TOP_LEVEL.to_string(), other)],
    };
    let mut entries = Vec::with_capacity(items.len());
    for (name, v) in items {
        let entry = match v {
            Value::Tensor(t) => {
                let mut st = ck.storages(std::iter::once(&t));
                Entry::Tensor(ck.materialise(&mut st, &name, &t)?)
            }
            Value::Dict(ref pairs) if is_state_dict(pairs) => {
                Entry::StateDict(ck.state_dict(&name, pairs)?)
            }
            other => Entry::Value(summary(&other)),
        };
        entries.push((name, entry));
    }
    Ok(Checkpoint { entries })
}

/// The state dict under `top_key` (e.g. `Some("model")`); with `None`, or when the top level
/// itself is a dict of tensors, that dict.
///
/// A top-level dict without `top_key` gives a [`WeightError::Format`] listing the top-level keys.
/// Only the tensors of the chosen dict are read from the zip.
pub fn read_state_dict(path: &Path, top_key: Option<&str>) -> Result<StateDict, WeightError> {
    let mut ck = Archive::open(path)?;
    let top = ck.parse_pickle()?;
    let Value::Dict(pairs) = top else {
        return Err(ck.err(format!(
            "the checkpoint holds a {}, not a dict of tensors",
            top.kind()
        )));
    };
    if !pairs.is_empty() && is_state_dict(&pairs) {
        return ck.state_dict(TOP_LEVEL, &pairs);
    }
    let keys = || {
        let names: Vec<String> = pairs.iter().map(|(k, _)| key_name(k)).collect();
        limit(&format!("[{}]", names.join(", ")), SUMMARY_CHARS)
    };
    let Some(want) = top_key else {
        return Err(ck.err(format!(
            "the top level is not a dict of tensors; its keys are {}",
            keys()
        )));
    };
    let Some((_, v)) = pairs.iter().rev().find(|(k, _)| k.as_str() == Some(want)) else {
        return Err(ck.err(format!(
            "no top-level entry {want:?}; the top-level keys are {}",
            keys()
        )));
    };
    match v {
        Value::Dict(inner) => {
            if let Some((k, bad)) = inner.iter().find(|(_, x)| !matches!(x, Value::Tensor(_))) {
                return Err(ck.err(format!(
                    "entry {want:?} is not a state dict: its key {} holds a {}, not a tensor",
                    key_name(k),
                    bad.kind()
                )));
            }
            if let Some((k, _)) = inner.iter().find(|(k, _)| k.as_str().is_none()) {
                return Err(ck.err(format!(
                    "entry {want:?} is not a state dict: key {} is not a string",
                    key_name(k)
                )));
            }
            ck.state_dict(want, inner)
        }
        other => Err(ck.err(format!(
            "entry {want:?} is not a state dict but {}",
            summary(other)
        ))),
    }
}

/// Whether a dict is a state dict: non-empty, string keys, tensor values.
fn is_state_dict(pairs: &[(Value, Value)]) -> bool {
    !pairs.is_empty()
        && pairs
            .iter()
            .all(|(k, v)| k.as_str().is_some() && matches!(v, Value::Tensor(_)))
}

/// An open checkpoint zip and the location of its records.
struct Archive<'p> {
    path: &'p Path,
    zip: zip::ZipArchive<BufReader<File>>,
    /// The top folder, e.g. `official_layout` (records are `<top>/data.pkl`, `<top>/data/<key>`).
    top: String,
}

/// Storage records being read, with how many of the pending tensors still need each.
struct Storages {
    uses: HashMap<String, usize>,
    cache: HashMap<String, Vec<u8>>,
}

impl<'p> Archive<'p> {
    fn err(&self, msg: impl Into<String>) -> WeightError {
        WeightError::format(self.path, msg)
    }

    /// Opens `path`, checks it is a little-endian `torch.save` zip and finds its `data.pkl`.
    fn open(path: &'p Path) -> Result<Self, WeightError> {
        let file = File::open(path).map_err(|e| WeightError::io(path, e))?;
        let mut reader = BufReader::new(file);
        let mut head = Vec::with_capacity(512);
        (&mut reader)
            .take(512)
            .read_to_end(&mut head)
            .map_err(|e| WeightError::io(path, e))?;
        reader.rewind().map_err(|e| WeightError::io(path, e))?;
        check_signature(path, &head)?;
        let zip = zip::ZipArchive::new(reader).map_err(|e| {
            WeightError::format(path, format!("corrupt or truncated zip archive: {e}"))
        })?;
        let pkls: Vec<&str> = zip
            .file_names()
            .filter(|n| {
                n.strip_suffix("/data.pkl")
                    .is_some_and(|top| !top.is_empty() && !top.contains('/'))
            })
            .collect();
        let top = match pkls.as_slice() {
            [one] => one.trim_end_matches("/data.pkl").to_string(),
            [] => {
                return Err(WeightError::format(
                    path,
                    "zip archive has no <top>/data.pkl record; not a torch.save checkpoint",
                ));
            }
            many => {
                return Err(WeightError::format(
                    path,
                    limit(
                        &format!(
                            "zip archive has several data.pkl records: {}",
                            many.join(", ")
                        ),
                        SUMMARY_CHARS,
                    ),
                ));
            }
        };
        let mut ck = Self { path, zip, top };
        ck.check_byteorder()?;
        Ok(ck)
    }

    fn check_byteorder(&mut self) -> Result<(), WeightError> {
        let name = format!("{}/byteorder", self.top);
        if self.zip.index_for_name(&name).is_none() {
            return Ok(()); // writers before torch 1.13 omit it; they were little-endian only
        }
        let bytes = self.read_record(&name, 64)?;
        match String::from_utf8_lossy(&bytes).trim() {
            "little" => Ok(()),
            "big" => Err(self.err("big-endian checkpoints are not supported")),
            other => Err(self.err(format!("unknown byteorder record {:?}", limit(other, 40)))),
        }
    }

    /// Reads up to `max` bytes of record `name` (the whole record when it is no longer).
    fn read_record(&mut self, name: &str, max: u64) -> Result<Vec<u8>, WeightError> {
        let path = self.path;
        let mut f = self
            .zip
            .by_name(name)
            .map_err(|e| WeightError::format(path, format!("record {name}: {e}")))?;
        let mut out = Vec::with_capacity(f.size().min(max).min(64 << 20) as usize);
        // `max + 1` so that a record of exactly `max` bytes is read to its end (CRC checked).
        (&mut f)
            .take(max.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| WeightError::format(path, format!("reading record {name}: {e}")))?;
        out.truncate(usize::try_from(max).unwrap_or(usize::MAX));
        Ok(out)
    }

    fn parse_pickle(&mut self) -> Result<Value, WeightError> {
        let name = format!("{}/data.pkl", self.top);
        let data = self.read_record(&name, MAX_PICKLE_BYTES)?;
        if data.len() as u64 >= MAX_PICKLE_BYTES {
            return Err(self.err(format!("{name} is larger than {MAX_PICKLE_BYTES} bytes")));
        }
        pickle::parse(&data).map_err(|e| self.err(format!("{name}: {e}")))
    }

    /// Use counts for the records viewed by `tensors`.
    fn storages<'t>(&self, tensors: impl Iterator<Item = &'t TensorRef>) -> Storages {
        let mut uses = HashMap::new();
        for t in tensors {
            *uses.entry(t.storage.key.clone()).or_insert(0) += 1;
        }
        Storages {
            uses,
            cache: HashMap::new(),
        }
    }

    /// Reads every tensor of a dict of tensors; `name` names it in errors.
    fn state_dict(
        &mut self,
        name: &str,
        pairs: &[(Value, Value)],
    ) -> Result<StateDict, WeightError> {
        let tensors = pairs.iter().filter_map(|(_, v)| match v {
            Value::Tensor(t) => Some(t),
            _ => None,
        });
        let mut st = self.storages(tensors);
        let mut sd = StateDict::new();
        for (k, v) in pairs {
            let Value::Tensor(t) = v else { continue };
            let key = key_name(k);
            let label = if name == TOP_LEVEL {
                key.clone()
            } else {
                format!("{name}.{key}")
            };
            let raw = self.materialise(&mut st, &label, t)?;
            sd.insert(key, raw);
        }
        Ok(sd)
    }

    /// Reads the record of `t` (through the cache) and gathers its view; `label` names the
    /// tensor in errors.
    fn materialise(
        &mut self,
        st: &mut Storages,
        label: &str,
        t: &TensorRef,
    ) -> Result<RawTensor, WeightError> {
        let s = &t.storage;
        let Some(dtype) = s.dtype else {
            return Err(self.err(format!(
                "tensor {label}: unsupported storage type {}",
                s.storage_type
            )));
        };
        let esz = dtype.size();
        let need = s.numel.checked_mul(esz).ok_or_else(|| {
            self.err(format!(
                "tensor {label}: storage of {} elements is too large",
                s.numel
            ))
        })?;
        let layout = view_layout(t).map_err(|m| self.err(format!("tensor {label}: {m}")))?;
        let out_bytes = layout
            .numel
            .checked_mul(esz)
            .filter(|&b| b <= need.max(MAX_EXPANDED_BYTES));
        let Some(out_bytes) = out_bytes else {
            return Err(self.err(format!(
                "tensor {label}: shape {:?} is too large for its storage of {} elements",
                t.size, s.numel
            )));
        };
        if layout.numel > 0 && layout.last >= s.numel {
            return Err(self.err(format!(
                "tensor {label}: view (offset {}, size {:?}, stride {:?}) reaches element {} \
                 of a storage of {} elements",
                t.offset, t.size, t.stride, layout.last, s.numel
            )));
        }
        let uses = st.uses.get_mut(&s.key).map(|u| {
            *u = u.saturating_sub(1);
            *u
        });
        let record = match st.cache.remove(&s.key) {
            Some(r) => r,
            None => {
                let name = format!("{}/data/{}", self.top, s.key);
                if self.zip.index_for_name(&name).is_none() {
                    return Err(
                        self.err(format!("tensor {label}: storage record {name} is missing"))
                    );
                }
                let r = self.read_record(&name, need as u64)?;
                if r.len() < need {
                    return Err(self.err(format!(
                        "tensor {label}: storage record {name} is too short: {} bytes, \
                         but {} {} elements need {need}",
                        r.len(),
                        s.numel,
                        dtype.name()
                    )));
                }
                r
            }
        };
        let whole = layout.contiguous && t.offset == 0 && out_bytes == record.len();
        let bytes = if whole && uses == Some(0) {
            record // last user of a record that is exactly this tensor: no copy
        } else {
            let b = gather(&record, t, esz, out_bytes);
            if uses != Some(0) {
                st.cache.insert(s.key.clone(), record);
            }
            b
        };
        Ok(RawTensor {
            dtype,
            shape: t.size.clone(),
            bytes,
        })
    }
}

/// Rejects files that are not zip archives, naming legacy `torch.save` files.
fn check_signature(path: &Path, head: &[u8]) -> Result<(), WeightError> {
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(());
    }
    let legacy_pickle = head.len() >= 2 && head[0] == 0x80 && (1..=5).contains(&head[1]);
    let legacy_tar = head.get(257..262) == Some(b"ustar".as_slice());
    let msg = if head.is_empty() {
        "file is empty".to_string()
    } else if legacy_pickle || legacy_tar {
        "legacy (pre-1.6) torch.save format is not supported; re-save it with \
         torch.save(..., _use_new_zipfile_serialization=True)"
            .to_string()
    } else {
        let shown: Vec<String> = head.iter().take(4).map(|b| format!("{b:02x}")).collect();
        format!(
            "not a torch.save checkpoint: no zip signature (starts with {})",
            shown.join(" ")
        )
    };
    Err(WeightError::format(path, msg))
}

/// Where a strided view lies in its storage.
struct Layout {
    numel: usize,
    /// Index of the last element viewed (meaningless when `numel == 0`).
    last: usize,
    /// Row-major contiguous (dims of size 1 may have any stride).
    contiguous: bool,
}

fn view_layout(t: &TensorRef) -> Result<Layout, String> {
    let mut numel = 1usize;
    for &d in &t.size {
        numel = numel
            .checked_mul(d)
            .ok_or_else(|| format!("shape {:?} has too many elements", t.size))?;
    }
    let mut last = t.offset;
    let mut contiguous = true;
    let mut expect = 1usize;
    for (&d, &s) in t.size.iter().zip(&t.stride).rev() {
        if d == 0 {
            continue;
        }
        last = (d - 1)
            .checked_mul(s)
            .and_then(|x| x.checked_add(last))
            .ok_or_else(|| format!("stride {:?} overflows", t.stride))?;
        if d != 1 {
            contiguous &= s == expect;
            expect = expect.saturating_mul(d);
        }
    }
    Ok(Layout {
        numel,
        last,
        contiguous,
    })
}

/// Copies the elements of view `t` (all in bounds of `record`) in row-major order.
fn gather(record: &[u8], t: &TensorRef, esz: usize, out_bytes: usize) -> Vec<u8> {
    let numel = out_bytes / esz.max(1);
    if numel == 0 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(out_bytes);
    let inner_len = t.size.last().copied().unwrap_or(1);
    let inner_stride = t.stride.last().copied().unwrap_or(1);
    let outer = &t.size[..t.size.len().saturating_sub(1)];
    let outer_stride = &t.stride[..t.stride.len().saturating_sub(1)];
    let mut idx = vec![0usize; outer.len()];
    let mut base = t.offset;
    loop {
        if inner_stride == 1 {
            out.extend_from_slice(&record[base * esz..(base + inner_len) * esz]);
        } else {
            for i in 0..inner_len {
                let p = (base + i * inner_stride) * esz;
                out.extend_from_slice(&record[p..p + esz]);
            }
        }
        // Odometer over the outer dims.
        let mut dim = outer.len();
        loop {
            if dim == 0 {
                return out;
            }
            dim -= 1;
            idx[dim] += 1;
            base += outer_stride[dim];
            if idx[dim] < outer[dim] {
                break;
            }
            base -= outer_stride[dim] * idx[dim];
            idx[dim] = 0;
        }
    }
}

/// A dict key as an entry name: strings as they are, anything else summarised.
fn key_name(k: &Value) -> String {
    match k {
        Value::Str(s) => s.clone(),
        other => repr(other, 60),
    }
}

/// Cuts `s` to at most `max` characters, marking the cut with `...`.
fn limit(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(3)).collect();
    out.push_str("...");
    out
}

/// A short, Python-like rendering of a value (at most about `max` characters).
fn repr(v: &Value, max: usize) -> String {
    let s = match v {
        Value::None => "None".to_string(),
        Value::Bool(true) => "True".to_string(),
        Value::Bool(false) => "False".to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => format!("{f:?}"),
        Value::Str(s) => format!("'{}'", limit(s, max)),
        Value::Bytes(b) => format!("<{} bytes>", b.len()),
        Value::List(x) => seq_repr("[", x, "]", max),
        Value::Tuple(x) if x.len() == 1 => seq_repr("(", x, ",)", max),
        Value::Tuple(x) => seq_repr("(", x, ")", max),
        Value::Set(x) if x.is_empty() => "set()".to_string(),
        Value::Set(x) => seq_repr("{", x, "}", max),
        Value::Dict(p) => format!("<dict of {}>", p.len()),
        Value::Global { module, name } => format!("{module}.{name}"),
        Value::Object { class, .. } => format!("<{}.{}>", class.0, class.1),
        Value::PersistentId(_) => "<persistent id>".to_string(),
        Value::Tensor(t) => format!("<tensor {:?}>", t.size),
    };
    limit(&s, max)
}

fn seq_repr(open: &str, items: &[Value], close: &str, max: usize) -> String {
    let mut s = open.to_string();
    for (i, x) in items.iter().enumerate() {
        if s.len() > max {
            s.push_str("...");
            break;
        }
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&repr(x, max));
    }
    s.push_str(close);
    s
}

/// `head (n what: a, b, c, ...)`, listing items until the summary is about full.
fn listing(head: &str, n: usize, what: &str, items: impl Iterator<Item = String>) -> String {
    let mut s = format!("{head} ({n} {what}");
    for (i, it) in items.enumerate() {
        let sep = if i == 0 { ": " } else { ", " };
        if s.len() + sep.len() + it.len() > SUMMARY_CHARS - 10 {
            s.push_str(sep);
            s.push_str("...");
            break;
        }
        s.push_str(sep);
        s.push_str(&it);
    }
    s.push(')');
    limit(&s, SUMMARY_CHARS)
}

/// A one-line summary of a top-level value that is not read as tensors.
fn summary(v: &Value) -> String {
    let s = match v {
        Value::Dict(p) => listing("dict", p.len(), "keys", p.iter().map(|(k, _)| key_name(k))),
        Value::List(x) => listing("list", x.len(), "items", x.iter().map(|i| repr(i, 40))),
        Value::Tuple(x) => listing("tuple", x.len(), "items", x.iter().map(|i| repr(i, 40))),
        Value::Set(x) => listing("set", x.len(), "items", x.iter().map(|i| repr(i, 40))),
        Value::Object {
            class, state, args, ..
        } => {
            let name = format!("{}.{}", class.0, class.1);
            match state.as_deref() {
                Some(Value::Dict(p)) => listing(
                    &name,
                    p.len(),
                    "fields",
                    p.iter()
                        .map(|(k, x)| format!("{}={}", key_name(k), repr(x, 40))),
                ),
                _ => format!(
                    "{name} object{}",
                    match args.as_ref() {
                        Value::Tuple(a) if !a.is_empty() => format!(" {}", repr(args, 120)),
                        _ => String::new(),
                    }
                ),
            }
        }
        Value::Tensor(t) => format!(
            "tensor {} {:?}",
            t.storage
                .dtype
                .map_or(t.storage.storage_type.as_str(), |d| d.name()),
            t.size
        ),
        other => format!("{} {}", other.kind(), repr(other, 200)),
    };
    limit(&s, SUMMARY_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::DType;
    use std::io::Write;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn golden() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden/checkpoint_format")
    }

    /// A temporary directory with a unique name, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let p = std::env::temp_dir()
                .join(format!("rlip-pth-{tag}-{}-{n}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A zip of stored (uncompressed) records.
    fn zip_of(records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, data) in records {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn format_msg(r: Result<impl std::fmt::Debug, WeightError>) -> String {
        match r {
            Err(WeightError::Format { msg, .. }) => msg,
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    /// Tiny pickle writer.
    #[derive(Default)]
    struct P(Vec<u8>);
    impl P {
        fn op(&mut self, b: &[u8]) -> &mut Self {
            self.0.extend_from_slice(b);
            self
        }
        fn s(&mut self, x: &str) -> &mut Self {
            self.0.push(0x8c);
            self.0.push(x.len() as u8);
            self.op(x.as_bytes())
        }
        fn k(&mut self, i: u8) -> &mut Self {
            self.op(&[b'K', i])
        }
        fn global(&mut self, m: &str, n: &str) -> &mut Self {
            self.op(format!("c{m}\n{n}\n").as_bytes())
        }
        /// `_rebuild_tensor_v2(('storage', torch.<ty>, key, 'cpu', numel), offset, size, stride,
        /// False, OrderedDict())`, with sizes and strides below 256.
        fn tensor(
            &mut self,
            ty: &str,
            key: &str,
            numel: u8,
            off: u8,
            size: &[u8],
            stride: &[u8],
        ) -> &mut Self {
            self.global("torch._utils", "_rebuild_tensor_v2")
                .op(b"((")
                .s("storage");
            self.global("torch", ty)
                .s(key)
                .s("cpu")
                .k(numel)
                .op(b"tQ")
                .k(off);
            self.op(b"(");
            for &d in size {
                self.k(d);
            }
            self.op(b"t(");
            for &d in stride {
                self.k(d);
            }
            self.op(b"t\x89")
                .global("collections", "OrderedDict")
                .op(b")RtR")
        }
    }

    fn f32_bytes(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
        v.into_iter().flat_map(f32::to_le_bytes).collect()
    }

    #[test]
    fn official_layout_matches_safetensors() {
        let pth = golden().join("official_layout.pth");
        let want =
            crate::weights::st::read(&golden().join("official_layout_model.safetensors")).unwrap();
        let got = read_state_dict(&pth, Some("model")).unwrap();
        assert_eq!(got.len(), 22);
        assert_eq!(want.len(), 22);
        // State-dict order comes from the layout description (the safetensors file is sorted).
        let layout: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(golden().join("official_layout.json")).unwrap(),
        )
        .unwrap();
        let order: Vec<&str> = layout["model_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["key"].as_str().unwrap())
            .collect();
        assert_eq!(got.keys().collect::<Vec<_>>(), order);
        for (k, a) in got.iter() {
            let b = want
                .get(k)
                .unwrap_or_else(|| panic!("{k} not in the safetensors file"));
            assert_eq!(a.dtype, b.dtype, "{k}");
            assert_eq!(a.shape, b.shape, "{k}");
            assert!(a.bytes == b.bytes, "{k}: bytes differ");
        }
        let pos = got.get("transformer.text_encoder.embeddings.position_ids");
        assert_eq!(pos.map(|t| t.dtype), Some(DType::I64));
        assert_eq!(StateDict::read(&pth).unwrap(), got);

        let ck = read_checkpoint(&pth).unwrap();
        let names: Vec<&str> = ck.entries.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["model", "optimizer", "epoch", "args"]);
        let Entry::StateDict(sd) = &ck.entries[0].1 else {
            panic!("{:?}", ck.entries[0])
        };
        assert_eq!(sd, &got);
        for (name, e) in &ck.entries[1..] {
            let Entry::Value(s) = e else {
                panic!("{name}: {e:?}")
            };
            assert!(s.chars().count() < 300, "{name}: {s}");
        }
        let value = |i: usize| match &ck.entries[i].1 {
            Entry::Value(s) => s.clone(),
            _ => unreachable!(),
        };
        assert!(
            value(1).starts_with("dict (2 keys: state, param_groups"),
            "{}",
            value(1)
        );
        assert!(value(2).contains("19"), "{}", value(2));
        assert!(value(3).contains("Namespace"), "{}", value(3));

        // A missing, absent or non-dict entry names what is there instead.
        let err = format_msg(read_state_dict(&pth, Some("ema")));
        assert!(
            err.contains("\"ema\"") && err.contains("model, optimizer, epoch, args"),
            "{err}"
        );
        let err = format_msg(read_state_dict(&pth, None));
        assert!(err.contains("model, optimizer, epoch, args"), "{err}");
        let err = format_msg(read_state_dict(&pth, Some("epoch")));
        assert!(err.contains("int 19"), "{err}");
    }

    #[test]
    fn truncated_and_random_files_are_errors() {
        let pth = golden().join("official_layout.pth");
        let good = std::fs::read(&pth).unwrap();
        let dir = TempDir::new("trunc");
        let mut cuts: Vec<usize> = (0..50).map(|i| good.len() * i / 50).collect();
        cuts.extend((0..2048).step_by(97));
        cuts.push(good.len() - 1);
        for n in cuts {
            let p = dir.file("t.pth", &good[..n]);
            for r in [
                read_checkpoint(&p).map(|_| ()),
                read_state_dict(&p, Some("model")).map(|_| ()),
            ] {
                let msg = format_msg(r);
                assert!(!msg.is_empty(), "cut {n}");
                if n == 0 {
                    assert_eq!(msg, "file is empty");
                } else if n < 22 {
                    assert!(msg.contains("zip"), "cut {n}: {msg}");
                }
            }
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..40 {
            let mut b: Vec<u8> = (0..1 + rnd() % 3000).map(|_| rnd() as u8).collect();
            if i % 2 == 0 {
                b.splice(0..0, *b"PK\x03\x04");
            }
            let p = dir.file("r.pth", &b);
            format_msg(read_checkpoint(&p));
        }
        // Flipped bytes in a valid archive: never a panic (some flips are harmless).
        for _ in 0..200 {
            let mut b = good.clone();
            for _ in 0..1 + rnd() % 3 {
                let i = (rnd() as usize) % b.len();
                b[i] ^= 1 << (rnd() % 8);
            }
            let p = dir.file("f.pth", &b);
            let _ = read_checkpoint(&p);
        }
        let missing = dir.0.join("absent.pth");
        assert!(matches!(
            read_checkpoint(&missing),
            Err(WeightError::Io { .. })
        ));
    }

    #[test]
    fn legacy_big_endian_and_broken_archives_are_errors() {
        let dir = TempDir::new("broken");
        // Legacy format: a pickled magic number, then more pickles.
        let legacy = dir.file(
            "old.pth",
            b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.",
        );
        let msg = format_msg(read_state_dict(&legacy, None));
        assert!(
            msg.starts_with("legacy (pre-1.6) torch.save format is not supported"),
            "{msg}"
        );
        assert!(msg.contains("_use_new_zipfile_serialization=True"), "{msg}");
        let text = dir.file("x.pth", b"hello world");
        assert!(format_msg(read_checkpoint(&text)).contains("no zip signature"));

        let mut p = P::default();
        p.op(b"\x80\x02}(").s("model").op(b"}(").s("w");
        p.tensor("FloatStorage", "0", 4, 0, &[2, 2], &[2, 1])
            .op(b"uu.");
        let pkl = p.0.clone();
        let data = f32_bytes([1.0, 2.0, 3.0, 4.0]);

        let ok = dir.file(
            "ok.pth",
            &zip_of(&[
                ("ok/data.pkl", &pkl),
                ("ok/byteorder", b"little"),
                ("ok/data/0", &data),
            ]),
        );
        assert_eq!(
            read_state_dict(&ok, Some("model"))
                .unwrap()
                .get("w")
                .unwrap()
                .to_f32(),
            [1.0, 2.0, 3.0, 4.0]
        );

        let big = dir.file(
            "big.pth",
            &zip_of(&[
                ("b/data.pkl", &pkl),
                ("b/byteorder", b"big"),
                ("b/data/0", &data),
            ]),
        );
        assert_eq!(
            format_msg(read_checkpoint(&big)),
            "big-endian checkpoints are not supported"
        );

        let no_pkl = dir.file(
            "nopkl.pth",
            &zip_of(&[("a/data/0", &data), ("a/version", b"3\n")]),
        );
        assert!(format_msg(read_checkpoint(&no_pkl)).contains("data.pkl"));
        let two = dir.file(
            "two.pth",
            &zip_of(&[("a/data.pkl", &pkl), ("b/data.pkl", &pkl)]),
        );
        assert!(format_msg(read_checkpoint(&two)).contains("several data.pkl"));

        for cut in [0, 1, 3, pkl.len() / 2, pkl.len() - 1] {
            let p = dir.file(
                "tp.pth",
                &zip_of(&[("t/data.pkl", &pkl[..cut]), ("t/data/0", &data)]),
            );
            let msg = format_msg(read_checkpoint(&p));
            assert!(
                msg.contains("t/data.pkl: pickle byte") && msg.contains("truncated"),
                "{msg}"
            );
        }

        let missing = dir.file("miss.pth", &zip_of(&[("m/data.pkl", &pkl)]));
        let msg = format_msg(read_state_dict(&missing, Some("model")));
        assert!(
            msg.contains("model.w") && msg.contains("m/data/0 is missing"),
            "{msg}"
        );

        let short = dir.file(
            "short.pth",
            &zip_of(&[("s/data.pkl", &pkl), ("s/data/0", &data[..12])]),
        );
        let msg = format_msg(read_checkpoint(&short));
        assert!(
            msg.contains("tensor model.w") && msg.contains("too short"),
            "{msg}"
        );

        // A view reaching past its storage's numel.
        let mut p = P::default();
        p.op(b"\x80\x02}(").s("w");
        p.tensor("FloatStorage", "0", 4, 1, &[2, 2], &[2, 1])
            .op(b"u.");
        let oob = dir.file(
            "oob.pth",
            &zip_of(&[("o/data.pkl", &p.0), ("o/data/0", &data)]),
        );
        let msg = format_msg(read_state_dict(&oob, None));
        assert!(
            msg.contains("tensor w") && msg.contains("reaches element 4"),
            "{msg}"
        );
    }

    #[test]
    fn hand_written_pickle_with_views_and_nested_values() {
        // {'model': {'t': view (offset 1, size (3, 2), stride (1, 3)) of storage '0',
        //            'whole': the whole storage '0' as (2, 4), 'e': empty (0, 3) view,
        //            'h': half scalar, 'b': broadcast (2, 3) with stride (0, 1)},
        //  'meta': {'l': [1, (2, 'x'), []], 'again': <memo of l>, 's': {3}},
        //  'epoch': 7, 'args': Namespace(lr=0.5, name='run'), 'x': a top-level tensor}
        let mut p = P::default();
        p.op(b"\x80\x02}(").s("model").op(b"}(");
        p.s("t").tensor("FloatStorage", "0", 8, 1, &[3, 2], &[1, 3]);
        p.s("whole")
            .tensor("FloatStorage", "0", 8, 0, &[2, 4], &[4, 1]);
        p.s("e").tensor("FloatStorage", "0", 8, 0, &[0, 3], &[3, 1]);
        p.s("h").tensor("HalfStorage", "h", 1, 0, &[], &[]);
        p.s("b").tensor("FloatStorage", "0", 8, 5, &[2, 3], &[0, 1]);
        p.op(b"u");
        p.s("meta")
            .op(b"}(")
            .s("l")
            .op(b"]q\x07(")
            .k(1)
            .k(2)
            .s("x")
            .op(b"\x86]e");
        p.s("again")
            .op(b"h\x07")
            .s("s")
            .op(b"\x8f(")
            .k(3)
            .op(b"\x90u");
        p.s("epoch").k(7);
        p.s("args")
            .global("argparse", "Namespace")
            .op(b")\x81}(")
            .s("lr");
        p.op(b"G\x3f\xe0\x00\x00\x00\x00\x00\x00")
            .s("name")
            .s("run")
            .op(b"ub");
        p.s("x").tensor("LongStorage", "x", 2, 0, &[2], &[1]);
        p.op(b"u.");
        let storage = f32_bytes((0..8).map(|i| i as f32));
        let half = half::f16::from_f32(1.5).to_le_bytes();
        let longs: Vec<u8> = [-3i64, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
        let dir = TempDir::new("hand");
        let path = dir.file(
            "hand.pth",
            &zip_of(&[
                ("hand/data.pkl", &p.0),
                ("hand/data/0", &storage),
                ("hand/data/h", &half),
                ("hand/data/x", &longs),
            ]),
        );
        let sd = read_state_dict(&path, Some("model")).unwrap();
        assert_eq!(sd.keys().collect::<Vec<_>>(), ["t", "whole", "e", "h", "b"]);
        let t = sd.get("t").unwrap();
        assert_eq!(t.shape, [3, 2]);
        // Element (i, j) is storage[1 + i + 3j].
        assert_eq!(t.to_f32(), [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        assert_eq!(
            sd.get("whole").unwrap().to_f32(),
            (0..8).map(|i| i as f32).collect::<Vec<_>>()
        );
        let e = sd.get("e").unwrap();
        assert_eq!((e.shape.as_slice(), e.bytes.len()), (&[0, 3][..], 0));
        let h = sd.get("h").unwrap();
        assert_eq!(
            (h.dtype, h.shape.len(), h.to_f32()),
            (DType::F16, 0, vec![1.5])
        );
        assert_eq!(
            sd.get("b").unwrap().to_f32(),
            [5.0, 6.0, 7.0, 5.0, 6.0, 7.0]
        );

        let ck = read_checkpoint(&path).unwrap();
        let got: Vec<(&str, String)> = ck
            .entries
            .iter()
            .map(|(n, e)| {
                let s = match e {
                    Entry::StateDict(sd) => format!("state dict of {}", sd.len()),
                    Entry::Tensor(t) => {
                        format!("tensor {} {:?} {:?}", t.dtype, t.shape, t.to_i64())
                    }
                    Entry::Value(v) => v.clone(),
                };
                (n.as_str(), s)
            })
            .collect();
        assert_eq!(
            got,
            [
                ("model", "state dict of 5".to_string()),
                ("meta", "dict (3 keys: l, again, s)".to_string()),
                ("epoch", "int 7".to_string()),
                (
                    "args",
                    "argparse.Namespace (2 fields: lr=0.5, name='run')".to_string()
                ),
                ("x", "tensor int64 [2] [-3, 9]".to_string()),
            ]
        );
        // The nested values themselves (memo sharing included) come from the pickle VM.
        let mut a = Archive::open(&path).unwrap();
        let v = a.parse_pickle().unwrap();
        let meta = v.get("meta").unwrap();
        let l = Value::List(vec![
            Value::Int(1),
            Value::Tuple(vec![Value::Int(2), Value::Str("x".into())]),
            Value::List(vec![]),
        ]);
        assert_eq!(meta.get("l"), Some(&l));
        assert_eq!(meta.get("again"), Some(&l));
        assert_eq!(meta.get("s"), Some(&Value::Set(vec![Value::Int(3)])));
        assert_eq!(
            summary(meta.get("l").unwrap()),
            "list (3 items: 1, (2, 'x'), [])"
        );
    }

    #[test]
    fn summaries_stay_short() {
        let fields: Vec<(Value, Value)> = (0..305)
            .map(|i| (Value::Str(format!("flag_{i}")), Value::Float(1e-4)))
            .collect();
        let ns = Value::Object {
            class: ("argparse".into(), "Namespace".into()),
            args: Box::new(Value::Tuple(vec![])),
            state: Some(Box::new(Value::Dict(fields))),
            list_items: vec![],
            dict_items: vec![],
        };
        let s = summary(&ns);
        assert!(
            s.starts_with("argparse.Namespace (305 fields: flag_0=0.0001, flag_1=0.0001"),
            "{s}"
        );
        assert!(s.ends_with(", ...)") && s.chars().count() < 300, "{s}");
        let long = Value::Str("é".repeat(1000));
        assert!(summary(&long).chars().count() < 300);
        assert_eq!(summary(&Value::Int(19)), "int 19");
    }
}

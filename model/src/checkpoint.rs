//! RLIP-rs checkpoints: the trainable parameters of a model under their Burn module paths, as
//! safetensors, with the model configuration in the metadata.
//!
//! Official checkpoints are read by their PyTorch key names ([`crate::weights`]); a model trained
//! here is saved with [`save_params`] and restored with [`load_params`] onto a model built from
//! the same configuration (constants such as frozen batch-norm statistics are not parameters:
//! they come from how the model was built, see [`META_BASE`]).

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::DType;

use crate::weights::WeightError;

/// Metadata key whose value identifies the format.
pub const META_FORMAT: &str = "format";
/// Value of [`META_FORMAT`] in files written by [`save_params`].
pub const FORMAT: &str = "rlip-rs-params-v1";
/// Metadata key of the model configuration (JSON).
pub const META_CONFIG: &str = "config";
/// Metadata key of the official checkpoint the model was built from before training (its
/// constants, e.g. frozen batch-norm statistics, are read from there), if any.
pub const META_BASE: &str = "base_checkpoint";
/// Metadata key of the parameter ids (JSON object: module path → id). Optimiser state is keyed
/// by parameter id, so resuming training restores them ([`load_params_with_ids`]).
pub const META_PARAM_IDS: &str = "param_ids";

struct Collect {
    path: Vec<String>,
    out: Vec<(String, Vec<usize>, Vec<f32>)>,
    ids: BTreeMap<String, u64>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        let v = t
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("float parameter");
        let key = self.path.join(".");
        self.ids.insert(key.clone(), param.id.val());
        self.out.push((key, shape, v));
    }
}

fn collect<M: Module>(module: &M) -> Collect {
    let mut c = Collect {
        path: Vec::new(),
        out: Vec::new(),
        ids: BTreeMap::new(),
    };
    module.visit(&mut c);
    c
}

/// `(path, shape, values)` of every float parameter of `module`, in visiting order.
pub fn collect_params<M: Module>(module: &M) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    collect(module).out
}

/// `(path, shape, element type)` of every float parameter of `module`, in visiting order,
/// without reading any values.
pub fn param_shapes<M: Module>(module: &M) -> Vec<(String, Vec<usize>, DType)> {
    struct Shapes {
        path: Vec<String>,
        out: Vec<(String, Vec<usize>, DType)>,
    }
    impl ModuleVisitor for Shapes {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            self.out
                .push((self.path.join("."), t.dims().to_vec(), t.dtype()));
        }
    }
    let mut v = Shapes {
        path: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

/// Serialises the float parameters of `module` to safetensors bytes with `metadata` (plus the
/// format tag).
pub fn params_to_bytes<M: Module>(
    module: &M,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, WeightError> {
    let Collect {
        out: params, ids, ..
    } = collect(module);
    let mut metadata = metadata.clone();
    metadata.insert(
        META_PARAM_IDS.to_string(),
        serde_json::to_string(&ids).expect("a map of numbers serialises"),
    );
    metadata.insert(META_FORMAT.into(), FORMAT.into());
    serialize_f32(&params, metadata)
        .map_err(|e| WeightError::format(Path::new("<memory>"), e.to_string()))
}

/// Safetensors bytes of float32 tensors `(name, shape, values)` with `metadata`.
pub fn serialize_f32<'a, I>(
    tensors: I,
    metadata: BTreeMap<String, String>,
) -> Result<Vec<u8>, safetensors::SafeTensorError>
where
    I: IntoIterator<Item = &'a (String, Vec<usize>, Vec<f32>)>,
{
    let bytes: Vec<(&String, &Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(k, s, v)| (k, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = bytes
        .iter()
        .map(|(k, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.to_vec(), b)
                .map(|v| (k.to_string(), v))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let meta: std::collections::HashMap<String, String> = metadata.into_iter().collect();
    safetensors::serialize(views, Some(meta))
}

/// The values of little-endian float32 tensor data (a safetensors view's bytes).
pub fn f32_from_le(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Writes the float parameters of `module` to `path` atomically (see [`params_to_bytes`]).
pub fn save_params<M: Module>(
    module: &M,
    path: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<(), WeightError> {
    let bytes = params_to_bytes(module, metadata)?;
    crate::util::write_atomic(path, &bytes).map_err(|e| WeightError::io(path, e))
}

/// The metadata of a safetensors file, or `None` when it is not one written by
/// [`save_params`].
pub fn read_metadata(path: &Path) -> Result<Option<BTreeMap<String, String>>, WeightError> {
    let bytes = std::fs::read(path).map_err(|e| WeightError::io(path, e))?;
    let map = st_metadata(&bytes, path)?;
    Ok((map.get(META_FORMAT).map(String::as_str) == Some(FORMAT)).then_some(map))
}

fn st_metadata(bytes: &[u8], path: &Path) -> Result<BTreeMap<String, String>, WeightError> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| WeightError::format(path, format!("not a safetensors file: {e}")))?;
    let map: BTreeMap<String, String> = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    Ok(map)
}

/// Stored tensors by name: `(shape, values)`.
pub type NamedValues = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Rewrites the per-branch tensors of a `MultiBranchFusion` as files written before its
/// branches were stacked held them (`….fc_{n}.{c}.{weight,bias}` for branches `c` = 0..K) into
/// the stacked layout of [`crate::parse_decoder::MultiBranchFusion`]: `fc_1`/`fc_2` weights side
/// by side (`[d, K·sub]`) with their biases concatenated, `fc_3` weights one under the other
/// (`[K·sub, repr]`) with the biases as rows of `[K, repr]`. Every value keeps its position in
/// its branch, so parameters and elementwise optimiser moments convert exactly. Returns each new
/// name with the old names it was built from (none when nothing needed rewriting); groups that
/// are not complete runs `0..K` of equal shapes are left alone (and then reported by the loader).
pub fn stack_branch_tensors(values: &mut NamedValues) -> Vec<(String, Vec<String>)> {
    // (prefix, n, kind) -> branch -> old name
    let mut groups: BTreeMap<(String, u8, String), BTreeMap<usize, String>> = BTreeMap::new();
    for name in values.keys() {
        let parts: Vec<&str> = name.rsplitn(4, '.').collect();
        let (kind, branch, fc, prefix) = match parts[..] {
            [kind, branch, fc, prefix] => (kind, branch, fc, prefix),
            [kind, branch, fc] => (kind, branch, fc, ""),
            _ => continue,
        };
        let n = match fc {
            "fc_1" => 1,
            "fc_2" => 2,
            "fc_3" => 3,
            _ => continue,
        };
        if !(kind == "weight" || kind == "bias") {
            continue;
        }
        let Ok(c) = branch.parse::<usize>() else {
            continue;
        };
        groups
            .entry((prefix.to_string(), n, kind.to_string()))
            .or_default()
            .insert(c, name.clone());
    }
    let mut done = Vec::new();
    for ((prefix, n, kind), branches) in groups {
        let k = branches.len();
        if branches.keys().copied().ne(0..k) {
            continue;
        }
        let olds: Vec<String> = branches.into_values().collect();
        let shape = values[&olds[0]].0.clone();
        if olds.iter().any(|o| values[o].0 != shape) {
            continue;
        }
        let parts: Vec<Vec<f32>> = olds
            .iter()
            .map(|o| values.remove(o).expect("listed above").1)
            .collect();
        let (new_shape, data) = match (n, kind.as_str(), shape.as_slice()) {
            // [d, sub] each, side by side: row i is the branches' rows i in turn
            (1 | 2, "weight", &[d, sub]) => {
                let mut data = Vec::with_capacity(d * sub * k);
                for i in 0..d {
                    for p in &parts {
                        data.extend_from_slice(&p[i * sub..(i + 1) * sub]);
                    }
                }
                (vec![d, k * sub], data)
            }
            (1 | 2, "bias", &[sub]) => (vec![k * sub], parts.concat()),
            (3, "weight", &[sub, repr]) => (vec![k * sub, repr], parts.concat()),
            (3, "bias", &[repr]) => (vec![k, repr], parts.concat()),
            _ => {
                for (o, p) in olds.iter().zip(parts) {
                    values.insert(o.clone(), (shape.clone(), p));
                }
                continue;
            }
        };
        let name = if prefix.is_empty() {
            format!("fc_{n}.{kind}")
        } else {
            format!("{prefix}.fc_{n}.{kind}")
        };
        values.insert(name.clone(), (new_shape, data));
        done.push((name, olds));
    }
    done
}

struct Assign {
    path: Vec<String>,
    values: NamedValues,
    ids: Option<BTreeMap<String, u64>>,
    missing: Vec<String>,
    misshaped: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl ModuleMapper for Assign {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let key = self.path.join(".");
        let Some((shape, v)) = self.values.remove(&key) else {
            self.missing.push(key);
            return param;
        };
        let (mut id, t, _) = param.consume();
        if let Some(saved) = self.ids.as_ref().and_then(|m| m.get(&key)) {
            id = (*saved).into();
        }
        let dims = t.dims().to_vec();
        if dims != shape {
            self.misshaped.push((key, dims, shape));
            return Param::initialized(id, t);
        }
        let require_grad = t.is_require_grad();
        let device = t.device();
        // in the parameter's own type (float32 masters of mixed-precision training stay float32)
        let new = Tensor::<D>::from_data(TensorData::new(v, dims), (&device, t.dtype()));
        Param::initialized(
            id,
            if require_grad {
                new.require_grad()
            } else {
                new
            },
        )
    }
}

/// Loads parameters written by [`save_params`] into `module` (built from the same
/// configuration). Every parameter must be present with its shape, and every stored tensor used.
/// Returns the module and the loaded parameter paths.
pub fn load_params<M: Module>(module: M, path: &Path) -> Result<(M, Vec<String>), WeightError> {
    load(module, path, false)
}

/// [`load_params`], also giving every parameter the id it had when saved (so optimiser state
/// saved with it applies). Files without recorded ids are an error.
pub fn load_params_with_ids<M: Module>(
    module: M,
    path: &Path,
) -> Result<(M, Vec<String>), WeightError> {
    load(module, path, true)
}

fn load<M: Module>(
    module: M,
    path: &Path,
    with_ids: bool,
) -> Result<(M, Vec<String>), WeightError> {
    let bytes = std::fs::read(path).map_err(|e| WeightError::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| WeightError::format(path, format!("not a safetensors file: {e}")))?;
    let mut values = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(WeightError::format(
                path,
                format!("{name}: expected F32, found {:?}", view.dtype()),
            ));
        }
        values.insert(name, (view.shape().to_vec(), f32_from_le(view.data())));
    }
    for (new, old) in stack_branch_tensors(&mut values) {
        tracing::info!(
            "{}: {new} stacked from {} per-branch tensors (older layout)",
            path.display(),
            old.len()
        );
    }
    let names: Vec<String> = values.keys().cloned().collect();
    let ids =
        if with_ids {
            let meta = st_metadata(&bytes, path)?;
            let text = meta.get(META_PARAM_IDS).ok_or_else(|| {
                WeightError::format(
                    path,
                    "no parameter ids recorded (not a training checkpoint)",
                )
            })?;
            Some(serde_json::from_str(text).map_err(|e| {
                WeightError::format(path, format!("metadata '{META_PARAM_IDS}': {e}"))
            })?)
        } else {
            None
        };
    let mut a = Assign {
        path: Vec::new(),
        values,
        ids,
        missing: Vec::new(),
        misshaped: Vec::new(),
    };
    let module = module.map(&mut a);
    let unexpected: Vec<String> = a.values.into_keys().collect();
    if !a.missing.is_empty() || !a.misshaped.is_empty() || !unexpected.is_empty() {
        let show = |v: &[String]| {
            let mut s = v.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
            if v.len() > 10 {
                s.push_str(&format!(", … ({} in all)", v.len()));
            }
            s
        };
        let mis: Vec<String> = a
            .misshaped
            .iter()
            .map(|(k, m, c)| format!("{k} (model {m:?}, file {c:?})"))
            .collect();
        return Err(WeightError::format(
            path,
            format!(
                "parameters do not match the model: missing [{}]; unexpected [{}]; mis-shaped [{}] \
                 (was it saved from another configuration?)",
                show(&a.missing),
                show(&unexpected),
                show(&mis)
            ),
        ));
    }
    Ok((module, names))
}

//! AdamW as the official code runs it (`torch.optim.AdamW`: decoupled weight decay, bias-corrected
//! moments, ε = 1e-8 added outside the square root), with its state kept in float32 whatever
//! type the device computes in, keyed by module path, and saved as safetensors. Where the
//! installed fused kernel takes it ([`rlip_model::fused::adamw`]: float32 on wgpu and cuda) a
//! parameter's update is one launch; elsewhere Burn's ops compute the same float32 formula.
//!
//! Burn's own AdamW differs in two ways that matter here: its ε defaults to 1e-5, and its state
//! restore creates the moments in the device's default float type, so a mixed-precision run
//! (bf16 or f16 default, float32 master weights) would get its float32 moments back rounded.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};
use rlip_model::fused::AdamWScalars;

/// Metadata key whose value identifies the format.
const META_FORMAT: &str = "format";
/// Value of the `format` metadata entry in files written by [`AdamW::to_bytes`].
pub const FORMAT: &str = "rlip-rs-adamw-v1";
/// Metadata key of the per-parameter step counts (JSON object: module path → steps).
const META_STEPS: &str = "steps";
/// Metadata key of the hyper-parameters (JSON), informational.
const META_HYPER: &str = "hyper";
/// Metadata key of extra training state stored with the optimiser (JSON object of numbers).
const META_EXTRA: &str = "extra";

/// An optimiser-state file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {msg}")]
pub struct OptimStateError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub msg: String,
}

/// AdamW hyper-parameters (PyTorch defaults apart from the weight decay, which the official
/// recipe sets to 1e-4).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the bias-corrected root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay (the parameter shrinks by `lr · weight_decay` each step).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

/// One parameter's moments (float32, flattened; `shape` is the parameter's).
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // one per parameter: the size does not matter
enum Moments {
    /// Live tensors on the parameter's device.
    Live {
        steps: u64,
        shape: Vec<usize>,
        exp_avg: Tensor<1>,
        exp_avg_sq: Tensor<1>,
    },
    /// Read from a file, made into tensors on the parameter's device at its next step.
    Stored {
        steps: u64,
        shape: Vec<usize>,
        exp_avg: Vec<f32>,
        exp_avg_sq: Vec<f32>,
    },
}

/// AdamW over the float parameters of a module (see the module documentation).
#[derive(Clone)]
pub struct AdamW {
    config: AdamWConfig,
    state: BTreeMap<String, Moments>,
}

impl AdamW {
    /// An optimiser with no state yet.
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            state: BTreeMap::new(),
        }
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Parameters with state (those that have had a gradient).
    pub fn len(&self) -> usize {
        self.state.len()
    }

    /// Whether no parameter has state yet.
    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    /// Updates every parameter of `module` that has a gradient in `grads` with learning rate
    /// `lr`; parameters without one (frozen, or in another group) are left as they are.
    pub fn step<M: Module>(&mut self, lr: f64, module: M, grads: &mut GradientsParams) -> M {
        self.step_scaled(lr, 1.0, module, grads)
    }

    /// [`AdamW::step`] with every gradient multiplied by `grad_scale` first (gradient clipping,
    /// loss-scale removal), in the same pass.
    pub fn step_scaled<M: Module>(
        &mut self,
        lr: f64,
        grad_scale: f64,
        module: M,
        grads: &mut GradientsParams,
    ) -> M {
        let mut m = Update {
            path: Vec::new(),
            lr,
            grad_scale,
            config: self.config,
            state: &mut self.state,
            grads,
        };
        module.map(&mut m)
    }

    /// The state as safetensors bytes: `{path}.exp_avg` and `{path}.exp_avg_sq` in float32 with
    /// the parameter's shape, step counts and hyper-parameters in the metadata, and `extra`
    /// (other training state, e.g. a loss scale) stored beside them.
    pub fn to_bytes(&self, extra: &BTreeMap<String, f64>) -> Result<Vec<u8>, String> {
        let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        let mut steps = BTreeMap::new();
        for (path, m) in &self.state {
            let (n, shape, avg, sq) = match m {
                Moments::Live {
                    steps,
                    shape,
                    exp_avg,
                    exp_avg_sq,
                } => {
                    let host = |t: &Tensor<1>| {
                        t.clone()
                            .into_data()
                            .convert::<f32>()
                            .try_to_vec::<f32>()
                            .expect("float moments")
                    };
                    (*steps, shape.clone(), host(exp_avg), host(exp_avg_sq))
                }
                Moments::Stored {
                    steps,
                    shape,
                    exp_avg,
                    exp_avg_sq,
                } => (*steps, shape.clone(), exp_avg.clone(), exp_avg_sq.clone()),
            };
            steps.insert(path.clone(), n);
            tensors.push((format!("{path}.exp_avg"), shape.clone(), avg));
            tensors.push((format!("{path}.exp_avg_sq"), shape, sq));
        }
        let meta: BTreeMap<String, String> = [
            (META_FORMAT.to_string(), FORMAT.to_string()),
            (
                META_STEPS.to_string(),
                serde_json::to_string(&steps).expect("numbers serialise"),
            ),
            (
                META_HYPER.to_string(),
                serde_json::to_string(&self.config).expect("numbers serialise"),
            ),
            (
                META_EXTRA.to_string(),
                serde_json::to_string(extra).map_err(|e| e.to_string())?,
            ),
        ]
        .into_iter()
        .collect();
        rlip_model::checkpoint::serialize_f32(&tensors, meta).map_err(|e| e.to_string())
    }

    /// Replaces the state with the one in `bytes` (written by [`AdamW::to_bytes`]; `path` names
    /// the file in errors) and returns its `extra` entries. The moments become tensors, in
    /// float32, on each parameter's device at its next step. Hyper-parameters are this
    /// optimiser's, not the file's.
    pub fn load_bytes(
        &mut self,
        bytes: &[u8],
        path: &Path,
    ) -> Result<BTreeMap<String, f64>, OptimStateError> {
        let err = |msg: String| OptimStateError {
            path: path.display().to_string(),
            msg,
        };
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| err(format!("not a safetensors file: {e}")))?;
        let meta: BTreeMap<String, String> = meta
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        if meta.get(META_FORMAT).map(String::as_str) != Some(FORMAT) {
            return Err(err(format!(
                "not an RLIP-rs AdamW state (metadata '{META_FORMAT}' is not '{FORMAT}')"
            )));
        }
        let json = |key: &str| {
            meta.get(key)
                .ok_or_else(|| err(format!("metadata '{key}' missing")))
        };
        let steps: BTreeMap<String, u64> = serde_json::from_str(json(META_STEPS)?)
            .map_err(|e| err(format!("metadata '{META_STEPS}': {e}")))?;
        let extra: BTreeMap<String, f64> = serde_json::from_str(json(META_EXTRA)?)
            .map_err(|e| err(format!("metadata '{META_EXTRA}': {e}")))?;
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| err(format!("not a safetensors file: {e}")))?;
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f32>), OptimStateError> {
            let view = st
                .tensor(name)
                .map_err(|_| err(format!("tensor '{name}' missing")))?;
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(err(format!(
                    "{name}: expected F32, found {:?}",
                    view.dtype()
                )));
            }
            let v = rlip_model::checkpoint::f32_from_le(view.data());
            Ok((view.shape().to_vec(), v))
        };
        let (mut avg, mut sq) = (BTreeMap::new(), BTreeMap::new());
        for name in steps.keys() {
            let (shape, exp_avg) = read(&format!("{name}.exp_avg"))?;
            let (shape2, exp_avg_sq) = read(&format!("{name}.exp_avg_sq"))?;
            if shape != shape2 {
                return Err(err(format!(
                    "{name}: moments of different shapes ({shape:?} and {shape2:?})"
                )));
            }
            avg.insert(name.clone(), (shape, exp_avg));
            sq.insert(name.clone(), (shape2, exp_avg_sq));
        }
        if st.len() != 2 * steps.len() {
            return Err(err(format!(
                "{} tensors for {} parameters with step counts",
                st.len(),
                steps.len()
            )));
        }
        // state saved before the relation-query fusion stacked its branches: stack the
        // moments the same way (they are elementwise, so this is exact)
        let mut steps = steps;
        rlip_model::checkpoint::stack_branch_tensors(&mut sq);
        for (new, old) in rlip_model::checkpoint::stack_branch_tensors(&mut avg) {
            let counts: Vec<u64> = old.iter().filter_map(|o| steps.remove(o)).collect();
            if counts.windows(2).any(|w| w[0] != w[1]) {
                return Err(err(format!("{new}: branches with different step counts")));
            }
            steps.insert(new, counts[0]);
        }
        let mut state = BTreeMap::new();
        for (name, (shape, exp_avg)) in avg {
            let Some((_, exp_avg_sq)) = sq.remove(&name) else {
                return Err(err(format!("{name}: second moment missing")));
            };
            state.insert(
                name.clone(),
                Moments::Stored {
                    steps: steps[&name],
                    shape,
                    exp_avg,
                    exp_avg_sq,
                },
            );
        }
        self.state = state;
        Ok(extra)
    }

    /// Checks the state against `module`: every path with state must be a float parameter of
    /// the same shape. Returns the problems, by name (empty when the state fits).
    pub fn mismatches<M: Module>(&self, module: &M) -> Vec<String> {
        let shapes: BTreeMap<String, Vec<usize>> = rlip_model::checkpoint::param_shapes(module)
            .into_iter()
            .map(|(path, shape, _)| (path, shape))
            .collect();
        let mut bad = Vec::new();
        for (path, m) in &self.state {
            let (Moments::Live { shape, .. } | Moments::Stored { shape, .. }) = m;
            match shapes.get(path) {
                None => bad.push(format!("{path} (not a parameter of the model)")),
                Some(s) if s != shape => bad.push(format!("{path} (model {s:?}, state {shape:?})")),
                Some(_) => {}
            }
        }
        bad
    }
}

struct Update<'a> {
    path: Vec<String>,
    lr: f64,
    grad_scale: f64,
    config: AdamWConfig,
    state: &'a mut BTreeMap<String, Moments>,
    grads: &'a mut GradientsParams,
}

impl ModuleMapper for Update<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let p = tensor.inner();
        let dims = p.dims();
        let n: usize = dims.iter().product();
        let device = grad.device();
        let p = p.to_device(&device);
        let key = self.path.join(".");
        let c = self.config;
        let (steps, exp_avg, exp_avg_sq) = match self.state.remove(&key) {
            Some(Moments::Live {
                steps,
                exp_avg,
                exp_avg_sq,
                ..
            }) => (
                steps,
                exp_avg.to_device(&device),
                exp_avg_sq.to_device(&device),
            ),
            Some(Moments::Stored {
                steps,
                exp_avg,
                exp_avg_sq,
                ..
            }) => {
                let t = |v: Vec<f32>| {
                    Tensor::<1>::from_data(TensorData::new(v, [n]), (&device, DType::F32))
                };
                (steps, t(exp_avg), t(exp_avg_sq))
            }
            None => {
                let z = Tensor::<1>::zeros([n], (&device, DType::F32));
                (0, z.clone(), z)
            }
        };
        let steps = steps + 1;
        let scalars = AdamWScalars::new(
            self.grad_scale,
            self.lr,
            c.beta1,
            c.beta2,
            c.eps,
            c.weight_decay,
            steps,
        );
        // one launch where a fused kernel takes it (the parameter keeps its memory layout)
        let fused = rlip_model::fused::adamw(&p, &grad, &exp_avg, &exp_avg_sq, &scalars);
        let (updated, exp_avg, exp_avg_sq) = match fused {
            Some(r) => r,
            None => {
                // Burn's scalar ops round their f64 scalars to the tensor's float32, as here
                let s = scalars;
                let mut g32 = grad.reshape([n]).cast(FloatDType::F32);
                if s.grad_scale != 1.0 {
                    g32 = g32.mul_scalar(s.grad_scale);
                }
                let exp_avg =
                    exp_avg.mul_scalar(s.beta1) + g32.clone().mul_scalar(s.one_minus_beta1);
                let exp_avg_sq =
                    exp_avg_sq.mul_scalar(s.beta2) + g32.square().mul_scalar(s.one_minus_beta2);
                let denom = exp_avg_sq
                    .clone()
                    .sqrt()
                    .div_scalar(s.bias_correction2_sqrt)
                    .add_scalar(s.eps);
                let update = exp_avg.clone().div(denom).mul_scalar(s.step_size);
                let dtype = p.dtype();
                let updated = (p.reshape([n]).cast(FloatDType::F32).mul_scalar(s.decay) - update)
                    .cast(dtype)
                    .reshape(dims);
                (updated, exp_avg, exp_avg_sq)
            }
        };
        self.state.insert(
            key,
            Moments::Live {
                steps,
                shape: dims.to_vec(),
                exp_avg,
                exp_avg_sq,
            },
        );
        let mut t = Tensor::from_inner(updated);
        if require_grad {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

/// Dynamic loss scaling for f16 training (PyTorch's `GradScaler` rule): the loss is multiplied
/// by `scale` before the backward pass so small gradients survive f16; a step whose gradients
/// overflow is skipped and the scale halved; after `growth_interval` finite steps in a row the
/// scale doubles.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossScaler {
    /// The current factor.
    pub scale: f64,
    /// Finite steps since the last overflow or growth.
    pub good_steps: u64,
    /// Finite steps in a row after which the scale doubles.
    pub growth_interval: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self {
            scale: 65536.0,
            good_steps: 0,
            growth_interval: 2000,
        }
    }
}

impl LossScaler {
    /// Records a step's outcome (`finite`: all gradients finite) and adapts the scale. Returns
    /// whether the optimiser may apply the step.
    pub fn update(&mut self, finite: bool) -> bool {
        if finite {
            self.good_steps += 1;
            if self.good_steps >= self.growth_interval {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale *= 0.5;
            self.good_steps = 0;
        }
        finite
    }

    /// The state as `extra` entries of the optimiser file.
    pub fn to_extra(&self, extra: &mut BTreeMap<String, f64>) {
        extra.insert("loss_scale".into(), self.scale);
        extra.insert("loss_scale_good_steps".into(), self.good_steps as f64);
    }

    /// Takes the scale and clean-step count saved by [`LossScaler::to_extra`], when `extra`
    /// has them (the growth interval stays this scaler's). Returns whether it did.
    pub fn load_extra(&mut self, extra: &BTreeMap<String, f64>) -> bool {
        let (Some(&scale), Some(&good)) =
            (extra.get("loss_scale"), extra.get("loss_scale_good_steps"))
        else {
            return false;
        };
        self.scale = scale;
        self.good_steps = good as u64;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::{AdamW, AdamWConfig, LossScaler};
    use burn::module::{Module, Param};
    use burn::optim::GradientsParams;
    use burn::prelude::*;

    #[derive(Module, Debug)]
    struct Weights {
        w: Param<Tensor<1>>,
    }

    /// `torch.optim.AdamW` on `w`, by hand, for gradients `gs`.
    fn reference(w: &[f64], gs: &[[f64; 3]], lr: f64, c: &AdamWConfig) -> Vec<f64> {
        let mut w = w.to_vec();
        let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
        for (t, g) in gs.iter().enumerate() {
            let t = t as i32 + 1;
            for i in 0..3 {
                w[i] *= 1.0 - lr * c.weight_decay;
                m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * g[i];
                v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g[i] * g[i];
                let denom = (v[i] / (1.0 - c.beta2.powi(t))).sqrt() + c.eps;
                w[i] -= lr * m[i] / (1.0 - c.beta1.powi(t)) / denom;
            }
        }
        w
    }

    /// The update is PyTorch's AdamW, and the saved state continues exactly.
    #[test]
    fn adamw_matches_torch_and_resumes_exactly() {
        let dev = rlip_backends::default_device().unwrap().autodiff();
        let start = [0.5, -1.0, 2.0];
        let gs = [[0.1, -0.2, 1e-6], [0.3, 0.0, -2e-6], [-0.05, 0.4, 3e-6]];
        let config = AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        };
        let step = |opt: &mut AdamW, m: Weights, g: &[f64; 3]| {
            let c = Tensor::<1>::from_floats([g[0] as f32, g[1] as f32, g[2] as f32], &dev);
            let loss = (m.w.val() * c).sum();
            let mut gp = GradientsParams::from_grads(loss.backward(), &m);
            opt.step(0.01, m, &mut gp)
        };
        let init = || Weights {
            w: Param::from_tensor(Tensor::<1>::from_floats([0.5, -1.0, 2.0], &dev).require_grad()),
        };
        let mut opt = AdamW::new(config);
        let mut m = init();
        for g in &gs[..2] {
            m = step(&mut opt, m, g);
        }
        // save after two steps, continue in a fresh optimiser
        let bytes = opt.to_bytes(&Default::default()).unwrap();
        let mut resumed = AdamW::new(config);
        resumed
            .load_bytes(&bytes, std::path::Path::new("mem"))
            .unwrap();
        assert!(resumed.mismatches(&m).is_empty());
        let a = step(&mut opt, m.clone(), &gs[2]);
        let b = step(&mut resumed, m, &gs[2]);
        let host = |m: &Weights| m.w.val().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(host(&a), host(&b));
        let want = reference(&start, &gs, 0.01, &config);
        for (x, y) in host(&a).iter().zip(&want) {
            assert!((*x as f64 - y).abs() < 1e-6, "{x} vs {y}");
        }
        // ε = 1e-8, not Burn's 1e-5: a tiny gradient still moves its weight by about lr
        let moved = (host(&a)[2] as f64 - start[2] * (1.0 - 0.01 * 0.1f64).powi(3)).abs();
        assert!(moved > 0.005, "{moved}");
    }

    /// State saved before the relation-query fusion stacked its branches (moments per branch,
    /// `m.fc_{n}.{c}.*`) loads into the stacked parameters, each value where its branch went.
    #[test]
    fn per_branch_moments_are_stacked() {
        use rlip_model::parse_decoder::MultiBranchFusion;
        #[derive(Module, Debug)]
        struct Wrap {
            m: MultiBranchFusion,
        }
        // 2 branches of d = 2, sub = 1, repr = 2: every moment tensor is [c·10 + 1, c·10 + 2]
        let shapes: [(&str, Vec<usize>); 6] = [
            ("fc_1.{c}.weight", vec![2, 1]),
            ("fc_1.{c}.bias", vec![1]),
            ("fc_2.{c}.weight", vec![2, 1]),
            ("fc_2.{c}.bias", vec![1]),
            ("fc_3.{c}.weight", vec![1, 2]),
            ("fc_3.{c}.bias", vec![2]),
        ];
        let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        let mut steps = std::collections::BTreeMap::new();
        for (pattern, shape) in &shapes {
            for c in 0..2 {
                let name = format!("m.{}", pattern.replace("{c}", &c.to_string()));
                let n: usize = shape.iter().product();
                for (suffix, scale) in [("exp_avg", 1.0f32), ("exp_avg_sq", 100.0)] {
                    let v: Vec<f32> = (0..n).map(|i| (c * 10 + i + 1) as f32 * scale).collect();
                    tensors.push((format!("{name}.{suffix}"), shape.clone(), v));
                }
                steps.insert(name, 3u64);
            }
        }
        let meta: std::collections::BTreeMap<String, String> = [
            ("format", super::FORMAT.to_string()),
            ("steps", serde_json::to_string(&steps).unwrap()),
            ("hyper", "{}".to_string()),
            ("extra", "{}".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let bytes = rlip_model::checkpoint::serialize_f32(&tensors, meta).unwrap();
        let mut opt = AdamW::new(AdamWConfig::default());
        opt.load_bytes(&bytes, std::path::Path::new("old")).unwrap();
        let dev = rlip_backends::default_device().unwrap();
        let sd = rlip_model::weights::StateDict::new();
        let mut ld = rlip_model::weights::Loader::new(&sd, &dev, "init");
        let module = Wrap {
            m: MultiBranchFusion::load(&mut ld, "m", 2, 2, 2),
        };
        assert_eq!(opt.mismatches(&module), Vec::<String>::new());
        let saved = opt.to_bytes(&Default::default()).unwrap();
        let st = safetensors::SafeTensors::deserialize(&saved).unwrap();
        let read = |k: &str| -> (Vec<usize>, Vec<f32>) {
            let t = st.tensor(k).unwrap();
            let v = rlip_model::checkpoint::f32_from_le(t.data());
            (t.shape().to_vec(), v)
        };
        // side by side: row i holds the branches' rows i in turn
        assert_eq!(
            read("m.fc_1.weight.exp_avg"),
            (vec![2, 2], vec![1., 11., 2., 12.])
        );
        assert_eq!(read("m.fc_2.bias.exp_avg"), (vec![2], vec![1., 11.]));
        // one under the other
        assert_eq!(
            read("m.fc_3.weight.exp_avg"),
            (vec![2, 2], vec![1., 2., 11., 12.])
        );
        assert_eq!(
            read("m.fc_3.bias.exp_avg_sq"),
            (vec![2, 2], vec![100., 200., 1100., 1200.])
        );
        assert_eq!(st.len(), 12);
    }

    #[test]
    fn loss_scale_halves_on_overflow_and_doubles_after_the_interval() {
        let mut s = LossScaler {
            growth_interval: 3,
            ..LossScaler::default()
        };
        assert!(s.update(true));
        assert!(s.update(true));
        assert!(!s.update(false));
        assert_eq!((s.scale, s.good_steps), (32768.0, 0));
        for _ in 0..2 {
            s.update(true);
        }
        assert_eq!(s.scale, 32768.0);
        s.update(true);
        assert_eq!((s.scale, s.good_steps), (65536.0, 0));
        let mut extra = Default::default();
        s.update(true);
        s.to_extra(&mut extra);
        let mut back = LossScaler::default();
        assert!(back.load_extra(&extra));
        assert_eq!((back.scale, back.good_steps), (65536.0, 1));
        assert!(!LossScaler::default().load_extra(&Default::default()));
    }
}

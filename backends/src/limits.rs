//! What one buffer of a device holds, checked against a model's parameters before it runs.
//!
//! A GPU backend allocates each tensor as one buffer, and a device caps the size of one buffer
//! (wgpu reports its storage-buffer limit; lavapipe's is below RoBERTa's 154 MB float32 word
//! embeddings). An allocation over the cap fails only when a result is read back, deep inside
//! a run; [`check_params_fit`] reports it up front, naming the parameter.

use burn::module::Module;
use burn::prelude::Device;
use burn::tensor::DType;

/// The largest single buffer `device` allocates, in bytes; `None` where no limit is known
/// (flex and tch allocate from host or libtorch memory).
pub fn max_buffer_bytes(device: &Device) -> Option<u64> {
    #[cfg(feature = "cube")]
    if let burn::backend::DispatchDevice::Cube(cube) = device.clone().inner().as_dispatch() {
        return Some(cube.client().properties().memory.max_page_size);
    }
    let _ = device;
    None
}

/// A parameter larger than the largest buffer its device allocates.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{param} ({shape:?}, {dtype:?}) takes {bytes} bytes ({:.1} MiB), more than the largest buffer \
     this device allocates ({limit} bytes, {:.1} MiB); run on a device with larger buffers, with \
     --backend flex, or, for inference, with --float-dtype f16 or bf16 (weights at half the size)",
    *bytes as f64 / MIB,
    *limit as f64 / MIB
)]
pub struct TooLargeForDevice {
    /// Module path of the parameter.
    pub param: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its element type.
    pub dtype: DType,
    /// Its size in bytes.
    pub bytes: u64,
    /// The device's largest buffer in bytes.
    pub limit: u64,
}

const MIB: f64 = 1024.0 * 1024.0;

/// Checks that every float parameter of `module` fits in one buffer of `device`; the error names
/// the largest one that does not.
pub fn check_params_fit<M: Module>(module: &M, device: &Device) -> Result<(), TooLargeForDevice> {
    let Some(limit) = max_buffer_bytes(device) else {
        return Ok(());
    };
    check_params_within(module, limit)
}

/// [`check_params_fit`] against a given limit in bytes.
pub fn check_params_within<M: Module>(module: &M, limit: u64) -> Result<(), TooLargeForDevice> {
    let mut worst: Option<TooLargeForDevice> = None;
    for (param, shape, dtype) in rlip_model::checkpoint::param_shapes(module) {
        let bytes = (shape.iter().product::<usize>() * dtype.size()) as u64;
        // the first of the largest, in visiting order
        if bytes > limit && worst.as_ref().is_none_or(|w| bytes > w.bytes) {
            worst = Some(TooLargeForDevice {
                param,
                shape,
                dtype,
                bytes,
                limit,
            });
        }
    }
    worst.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rlip_model::rlip::{RlipConfig, RlipParSeDa};

    #[test]
    fn names_the_largest_parameter_over_the_limit() {
        let dev = Device::flex();
        let (model, _) = RlipParSeDa::init(&RlipConfig::small(), &dev);
        assert_eq!(check_params_within(&model, u64::MAX), Ok(()));
        // the first of the largest parameters in visiting order, found independently
        let (path, shape, values) = rlip_model::checkpoint::collect_params(&model)
            .into_iter()
            .rev()
            .max_by_key(|(_, _, v)| v.len())
            .expect("parameters");
        let largest = 4 * values.len() as u64;
        assert_eq!(check_params_within(&model, largest), Ok(()));
        let err = check_params_within(&model, largest - 1).expect_err("one byte short");
        assert_eq!((err.param.as_str(), &err.shape), (path.as_str(), &shape));
        assert_eq!(
            (err.dtype, err.bytes, err.limit),
            (DType::F32, largest, largest - 1)
        );
        assert!(err.to_string().contains("--backend flex"), "{err}");
        // flex states no limit
        assert_eq!(max_buffer_bytes(&dev), None);
        assert_eq!(check_params_fit(&model, &dev), Ok(()));
    }
}

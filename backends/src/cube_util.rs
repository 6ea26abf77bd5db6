//! Helpers shared by the CubeCL kernels of [`crate::msda`], [`crate::fused`] and
//! [`crate::dense`].

use burn::prelude::Device;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

/// Whether `device` is a wgpu or cuda device (with or without autodiff).
pub(crate) fn on_cube(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        burn::backend::DispatchDevice::Cube(_)
    )
}

/// The widest address type any of `tensors` needs (a kernel launched with `address_type =
/// "dynamic"` indexes with it).
pub(crate) fn address_type(tensors: &[&CubeTensor]) -> AddressType {
    tensors
        .iter()
        .map(|t| t.required_address_type())
        .max()
        .unwrap_or_default()
}

/// Cubes of one unit per element for `n` elements on `t`'s device.
pub(crate) fn elementwise(t: &CubeTensor, n: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(&t.client, n);
    (calculate_cube_count_elemwise(&t.client, n, dim), dim)
}

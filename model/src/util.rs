//! Small shared helpers.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// [`dropout`] of a linear layer's output whose bias may still be due
/// ([`crate::dense::Linear::forward_biased`]): resolved first where dropout applies, unchanged
/// otherwise.
pub fn dropout_biased<const D: usize>(
    y: crate::dense::Biased<D>,
    p: f64,
) -> crate::dense::Biased<D> {
    if p <= 0.0 || !y.product.device().is_autodiff() {
        return y;
    }
    crate::dense::Biased {
        product: dropout(y.resolve(), p),
        bias: None,
    }
}

/// Training-time dropout: on an autodiff device, zeroes each element with probability `p` and
/// scales the others by `1 / (1 − p)`; the identity for `p = 0` and on inference devices
/// (evaluation runs on `.valid()` models), as PyTorch's `F.dropout(x, p, training)`. The mask
/// comes from the device's random generator (seeded per training step by the trainer).
pub fn dropout<const D: usize>(x: burn::tensor::Tensor<D>, p: f64) -> burn::tensor::Tensor<D> {
    if p <= 0.0 || !x.device().is_autodiff() {
        return x;
    }
    let keep = 1.0 - p;
    let mask = x.random_like(burn::tensor::Distribution::Bernoulli(keep));
    (x * mask).mul_scalar(1.0 / keep)
}

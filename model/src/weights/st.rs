//! `.safetensors` reading and atomic writing.

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::{DType, RawTensor, StateDict, WeightError};

fn from_st(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I16 => DType::I16,
        Dtype::I8 => DType::I8,
        Dtype::U8 => DType::U8,
        Dtype::BOOL => DType::Bool,
        _ => return None,
    })
}

fn to_st(d: DType) -> Dtype {
    match d {
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::I16 => Dtype::I16,
        DType::I8 => Dtype::I8,
        DType::U8 => Dtype::U8,
        DType::Bool => Dtype::BOOL,
    }
}

/// Parses safetensors bytes; `path` names the source in errors. Keys keep the file's order
/// (the header's offsets order, which is the order they were written).
pub fn parse(bytes: &[u8], path: &Path) -> Result<StateDict, WeightError> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| WeightError::format(path, format!("not a valid safetensors file: {e}")))?;
    let mut entries: Vec<_> = st.tensors();
    entries.sort_by_key(|(_, v)| v.data().as_ptr() as usize);
    let mut sd = StateDict::new();
    for (name, view) in entries {
        let dtype = from_st(view.dtype()).ok_or_else(|| {
            WeightError::format(
                path,
                format!("tensor {name}: unsupported dtype {:?}", view.dtype()),
            )
        })?;
        sd.insert(
            name,
            RawTensor {
                dtype,
                shape: view.shape().to_vec(),
                bytes: view.data().to_vec(),
            },
        );
    }
    Ok(sd)
}

/// Reads a `.safetensors` file.
pub fn read(path: &Path) -> Result<StateDict, WeightError> {
    let bytes = std::fs::read(path).map_err(|e| WeightError::io(path, e))?;
    parse(&bytes, path)
}

/// Writes `sd` as safetensors, atomically (temporary file in the same folder, then rename).
pub fn write(sd: &StateDict, path: &Path) -> Result<(), WeightError> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = sd
        .iter()
        .map(|(k, t)| {
            let v = safetensors::tensor::TensorView::new(to_st(t.dtype), t.shape.clone(), &t.bytes)
                .map_err(|e| WeightError::format(path, format!("tensor {k}: {e}")))?;
            Ok((k.to_string(), v))
        })
        .collect::<Result<_, WeightError>>()?;
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| WeightError::format(path, format!("serialising: {e}")))?;
    crate::util::write_atomic(path, &bytes).map_err(|e| WeightError::io(path, e))
}

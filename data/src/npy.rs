//! A small, safe reader for NumPy `.npy` files.
//!
//! Supports format versions 1.0, 2.0 and 3.0, C order, and the little-endian (or
//! byte-order-free) dtypes `f4`, `f8`, `i8`, `i4`, `u1` and `b1`. Fortran order, big-endian data,
//! object (pickled) arrays, truncated data and malformed headers are reported as
//! [`DataError::Npy`] naming the file.

use std::path::Path;

use crate::DataError;

const MAGIC: &[u8] = b"\x93NUMPY";

/// The element data of an array, by dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    /// `<f4`
    F32(Vec<f32>),
    /// `<f8`
    F64(Vec<f64>),
    /// `<i8`
    I64(Vec<i64>),
    /// `<i4`
    I32(Vec<i32>),
    /// `|u1`
    U8(Vec<u8>),
    /// `|b1`
    Bool(Vec<bool>),
}

/// A C-ordered array read from a `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// The shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// The elements in C order.
    pub data: NpyData,
}

impl NpyArray {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            NpyData::F32(v) => v.len(),
            NpyData::F64(v) => v.len(),
            NpyData::I64(v) => v.len(),
            NpyData::I32(v) => v.len(),
            NpyData::U8(v) => v.len(),
            NpyData::Bool(v) => v.len(),
        }
    }

    /// True when the array has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The dtype as the `.npy` header spells it (without byte order).
    pub fn dtype_name(&self) -> &'static str {
        match &self.data {
            NpyData::F32(_) => "f4",
            NpyData::F64(_) => "f8",
            NpyData::I64(_) => "i8",
            NpyData::I32(_) => "i4",
            NpyData::U8(_) => "u1",
            NpyData::Bool(_) => "b1",
        }
    }

    /// The elements as f32, when the dtype is f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            NpyData::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The elements as f64, when the dtype is f64.
    pub fn as_f64(&self) -> Option<&[f64]> {
        match &self.data {
            NpyData::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The elements widened to f64 (exact for every supported dtype except very large i64).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            NpyData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::F64(v) => v.clone(),
            NpyData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::I32(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::U8(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::Bool(v) => v.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect(),
        }
    }

    /// The elements as i64, when the dtype is an integer or bool type.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        match &self.data {
            NpyData::I64(v) => Some(v.clone()),
            NpyData::I32(v) => Some(v.iter().map(|&x| x as i64).collect()),
            NpyData::U8(v) => Some(v.iter().map(|&x| x as i64).collect()),
            NpyData::Bool(v) => Some(v.iter().map(|&x| x as i64).collect()),
            NpyData::F32(_) | NpyData::F64(_) => None,
        }
    }
}

/// Reads a `.npy` file.
pub fn read_npy(path: impl AsRef<Path>) -> Result<NpyArray, DataError> {
    let path = path.as_ref();
    let bytes = crate::read_bytes(path)?;
    parse_npy(&bytes, path)
}

/// Parses the bytes of a `.npy` file; `path` is only used in error messages.
pub fn parse_npy(bytes: &[u8], path: &Path) -> Result<NpyArray, DataError> {
    let err = |msg: String| DataError::Npy {
        path: path.to_path_buf(),
        msg,
    };
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(err("missing the \\x93NUMPY magic string".into()));
    }
    let major = bytes[6];
    let (header_len, header_start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(err("truncated header length".into()));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12usize,
            )
        }
        v => return Err(err(format!("unsupported format version {v}.{}", bytes[7]))),
    };
    let data_start = header_start
        .checked_add(header_len)
        .ok_or_else(|| err("header length overflows".into()))?;
    if bytes.len() < data_start {
        return Err(err(format!(
            "truncated header: needs {header_len} bytes, file has {}",
            bytes.len() - header_start
        )));
    }
    let header = std::str::from_utf8(&bytes[header_start..data_start])
        .map_err(|_| err("header is not valid UTF-8".into()))?;
    let descr = dict_value(header, "descr")
        .ok_or_else(|| err(format!("no 'descr' in header {header:?}")))?;
    let descr = strip_quotes(descr)
        .ok_or_else(|| err(format!("malformed 'descr' in header {header:?}")))?;
    let fortran = dict_value(header, "fortran_order")
        .ok_or_else(|| err(format!("no 'fortran_order' in header {header:?}")))?;
    match fortran.trim() {
        "False" => {}
        "True" => {
            return Err(err(
                "Fortran-ordered arrays are not supported (save with C order)".into(),
            ));
        }
        other => return Err(err(format!("malformed 'fortran_order' value {other:?}"))),
    }
    let shape_s = dict_value(header, "shape")
        .ok_or_else(|| err(format!("no 'shape' in header {header:?}")))?;
    let shape =
        parse_shape(shape_s).ok_or_else(|| err(format!("malformed 'shape' {shape_s:?}")))?;

    // Split after the first character (not byte: a non-ASCII descr must not panic).
    let (order, kind) = descr.split_at(descr.chars().next().map_or(0, char::len_utf8));
    if order == ">" {
        return Err(err(format!("big-endian dtype {descr:?} is not supported")));
    }
    if !matches!(order, "<" | "|" | "=") {
        return Err(err(format!("unsupported dtype {descr:?}")));
    }
    if kind.starts_with('O') {
        return Err(err(
            "object arrays (pickled Python objects) are not supported".into(),
        ));
    }
    let itemsize = match kind {
        "f4" | "i4" => 4,
        "f8" | "i8" => 8,
        "u1" | "b1" => 1,
        _ => return Err(err(format!("unsupported dtype {descr:?}"))),
    };
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| err("shape overflows".into()))?;
    let nbytes = count
        .checked_mul(itemsize)
        .ok_or_else(|| err("shape overflows".into()))?;
    let body = &bytes[data_start..];
    if body.len() < nbytes {
        return Err(err(format!(
            "truncated data: shape {shape:?} of {descr} needs {nbytes} bytes, file has {}",
            body.len()
        )));
    }
    if body.len() > nbytes {
        return Err(err(format!(
            "{} trailing bytes after the data of shape {shape:?}",
            body.len() - nbytes
        )));
    }
    let data = match kind {
        "f4" => NpyData::F32(
            body.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        "i4" => NpyData::I32(
            body.chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        "f8" => NpyData::F64(
            body.chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        "i8" => NpyData::I64(
            body.chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        "u1" => NpyData::U8(body.to_vec()),
        "b1" => {
            let mut out = Vec::with_capacity(body.len());
            for &b in body {
                match b {
                    0 => out.push(false),
                    1 => out.push(true),
                    v => return Err(err(format!("bool element with value {v}"))),
                }
            }
            NpyData::Bool(out)
        }
        _ => unreachable!("dtype checked above"),
    };
    Ok(NpyArray { shape, data })
}

/// Finds the raw text of `'key': value` in a Python dict literal (value up to the next
/// top-level comma or closing brace).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat_single = format!("'{key}'");
    let pat_double = format!("\"{key}\"");
    let pos = header
        .find(&pat_single)
        .map(|p| p + pat_single.len())
        .or_else(|| header.find(&pat_double).map(|p| p + pat_double.len()))?;
    let rest = header[pos..].trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    for (i, ch) in rest.char_indices() {
        match quote {
            Some(q) => {
                if ch == q {
                    quote = None;
                }
            }
            None => match ch {
                '\'' | '"' => quote = Some(ch),
                '(' | '[' => depth += 1,
                ')' | ']' => depth -= 1,
                ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
                _ => {}
            },
        }
    }
    None
}

fn strip_quotes(s: &str) -> Option<&str> {
    let s = s.trim();
    if s.len() >= 2
        && ((s.starts_with('\'') && s.ends_with('\'')) || (s.starts_with('"') && s.ends_with('"')))
    {
        Some(&s[1..s.len() - 1])
    } else {
        None
    }
}

fn parse_shape(s: &str) -> Option<Vec<usize>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.trim_end_matches('L').parse::<usize>().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(descr: &str, fortran: &str, shape: &str, body: &[u8], version: u8) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
        let pre = if version == 1 { 10 } else { 12 };
        while (pre + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = MAGIC.to_vec();
        out.push(version);
        out.push(0);
        if version == 1 {
            out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(body);
        out
    }

    fn p() -> &'static Path {
        Path::new("x.npy")
    }

    #[test]
    fn reads_each_dtype_and_version() {
        let body: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        for v in [1, 2, 3] {
            let a = parse_npy(&make("<f4", "False", "(2,)", &body, v), p()).unwrap();
            assert_eq!(a.shape, vec![2]);
            assert_eq!(a.as_f32().unwrap(), &[1.5, -2.0]);
        }
        let body: Vec<u8> = [3i64, -4, 5, 6]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let a = parse_npy(&make("<i8", "False", "(2, 2)", &body, 1), p()).unwrap();
        assert_eq!(a.to_i64_vec().unwrap(), vec![3, -4, 5, 6]);
        let body: Vec<u8> = [0.25f64].iter().flat_map(|x| x.to_le_bytes()).collect();
        let a = parse_npy(&make("<f8", "False", "()", &body, 1), p()).unwrap();
        assert!(a.shape.is_empty());
        assert_eq!(a.as_f64().unwrap(), &[0.25]);
        let a = parse_npy(&make("|b1", "False", "(3,)", &[1, 0, 1], 1), p()).unwrap();
        assert_eq!(a.data, NpyData::Bool(vec![true, false, true]));
        let a = parse_npy(&make("|u1", "False", "(0, 4)", &[], 1), p()).unwrap();
        assert!(a.is_empty());
        let body: Vec<u8> = [7i32].iter().flat_map(|x| x.to_le_bytes()).collect();
        let a = parse_npy(&make("<i4", "False", "(1,)", &body, 1), p()).unwrap();
        assert_eq!(a.to_i64_vec().unwrap(), vec![7]);
    }

    #[test]
    fn rejects_bad_files_naming_them() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not an npy".to_vec(), "magic"),
            (make("<f4", "True", "(1,)", &[0; 4], 1), "Fortran"),
            (make(">f4", "False", "(1,)", &[0; 4], 1), "big-endian"),
            (make("|O", "False", "(1,)", &[0; 8], 1), "object"),
            (make("<f4", "False", "(3,)", &[0; 8], 1), "truncated data"),
            (make("<f4", "False", "(1,)", &[0; 8], 1), "trailing"),
            (
                make("<c8", "False", "(1,)", &[0; 8], 1),
                "unsupported dtype",
            ),
            (make("<f4", "False", "(a,)", &[0; 4], 1), "shape"),
        ];
        for (bytes, needle) in cases {
            let e = parse_npy(&bytes, Path::new("bad_file.npy"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("bad_file.npy"), "{e}");
            assert!(e.contains(needle), "{e} should mention {needle}");
        }
        let mut truncated = make("<f4", "False", "(1,)", &[0; 4], 1);
        truncated.truncate(20);
        let e = parse_npy(&truncated, p()).unwrap_err().to_string();
        assert!(e.contains("truncated header"), "{e}");
        let e = read_npy("/nonexistent/dir/a.npy").unwrap_err().to_string();
        assert!(e.contains("/nonexistent/dir/a.npy"), "{e}");
    }
}

//! Output files: atomic JSON writes, the `.npy` writer, the official JSON layouts and the tokenizer.

use std::path::Path;

use serde::Serialize;

use crate::DataError;
use crate::fsutil::{write_atomic, write_err};

/// Serialises `value` as compact JSON and writes it atomically.
pub(crate) fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), DataError> {
    let bytes = serde_json::to_vec(value).map_err(|e| write_err(path, e))?;
    write_atomic(path, &bytes)
}

/// The bytes of a `.npy` file (format 1.0) holding a little-endian float64 C-order array.
///
/// The header is `{'descr': '<f8', 'fortran_order': False, 'shape': (…), }`, padded with
/// spaces and ended by a newline so that the data starts at a multiple of 64 bytes, as numpy
/// writes it.
///
/// # Panics
/// If `data.len()` is not the product of `shape`.
pub fn npy_f64_bytes(shape: &[usize], data: &[f64]) -> Vec<u8> {
    assert_eq!(
        shape.iter().product::<usize>(),
        data.len(),
        "npy: data length does not match the shape"
    );
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {dims}, }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + 8 * data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// One object of the official VG scene-graph layout (`scene_graphs_preprocessv1.json`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct VgObject {
    pub object_id: u64,
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
    pub names: String,
}

/// One relationship of the official VG layout.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct VgRelationship {
    pub relationship_id: u64,
    pub predicate: String,
    pub subject_id: u64,
    pub object_id: u64,
}

/// One image of the official VG layout, plus the (non-official) image file name.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct VgImage {
    pub image_id: u64,
    /// File under `images/train2015/` (the official loader opens `images/{image_id}.jpg`).
    pub file_name: String,
    pub width: usize,
    pub height: usize,
    pub objects: Vec<VgObject>,
    pub relationships: Vec<VgRelationship>,
}

/// The official keep-names file of the VG loader (`vg_keep_names_v1_no_lias_freq.json`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct VgKeepNames {
    pub relationship_names: Vec<String>,
    pub object_names: Vec<String>,
    pub relationship_freq: serde_json::Map<String, serde_json::Value>,
    pub object_freq: serde_json::Map<String, serde_json::Value>,
}

/// One entry of the official `hoi_list_new.json`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HoiListEntry {
    pub id: String,
    pub object_cat: i64,
    pub object_index: usize,
    pub object_name: String,
    pub verb_id: i64,
    pub verb_name: String,
}

/// Trains a byte-level BPE tokenizer on `texts` and returns its `tokenizer.json` text.
///
/// Special tokens `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3; RoBERTa post-processor (`<s> … </s>`),
/// byte-level pre-tokenizer without prefix space, byte-level decoder. The alphabet is the set of
/// (byte-level) characters of the texts, so the vocabulary stays far below 256 entries.
pub(crate) fn train_tokenizer(texts: &[String], vocab_size: usize) -> Result<String, String> {
    use tokenizers::models::TrainerWrapper;
    use tokenizers::models::bpe::{BPE, BpeTrainer};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::processors::roberta::RobertaProcessing;
    use tokenizers::{AddedToken, Tokenizer};

    let bpe = BPE::builder()
        .unk_token("<unk>".to_string())
        .build()
        .map_err(|e| e.to_string())?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_decoder(Some(ByteLevel::new(false, true, true)))
        .with_post_processor(Some(
            RobertaProcessing::new(("</s>".to_string(), 2), ("<s>".to_string(), 0))
                .trim_offsets(true)
                .add_prefix_space(false),
        ));
    let specials = ["<s>", "<pad>", "</s>", "<unk>"]
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(0)
        .show_progress(false)
        .special_tokens(specials)
        .build()
        .into();
    tok.train(&mut trainer, texts.iter())
        .map_err(|e| e.to_string())?;
    for (i, t) in ["<s>", "<pad>", "</s>", "<unk>"].iter().enumerate() {
        if tok.token_to_id(t) != Some(i as u32) {
            return Err(format!("special token {t} did not get id {i}"));
        }
    }
    tok.to_string(true).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trips_through_our_reader() {
        let data: Vec<f64> = (0..12).map(|i| i as f64 * 0.5 - 1.0).collect();
        let bytes = npy_f64_bytes(&[3, 4], &data);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let a = crate::npy::parse_npy(&bytes, Path::new("t.npy")).unwrap();
        assert_eq!(a.shape, vec![3, 4]);
        assert_eq!(a.as_f64().unwrap(), &data[..]);
        let one = npy_f64_bytes(&[2], &[1.0, 2.0]);
        let a = crate::npy::parse_npy(&one, Path::new("t.npy")).unwrap();
        assert_eq!(a.shape, vec![2]);
    }
}

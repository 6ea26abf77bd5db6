//! RoBERTa byte-level BPE tokenisation of label texts, as the official RLIPv2 code does it
//! (`RobertaTokenizerFast.batch_encode_plus(labels, padding="longest")`,
//! `engine.py::evaluate_hoi_with_text`).
//!
//! The tokenizer comes from a HuggingFace `tokenizer.json`, or from `vocab.json` + `merges.txt`
//! assembled the way `transformers` converts a slow RoBERTa tokenizer: byte-level BPE without
//! an unknown token, no prefix space, `<s> … </s>` around each text, right padding with `<pad>`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer};

/// Errors from loading a tokenizer or tokenising labels.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A tokenizer file could not be read.
    #[error("{path}: cannot read tokenizer file: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A tokenizer file is not valid.
    #[error("{path}: malformed tokenizer file: {msg}")]
    Malformed {
        /// File.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A special token RoBERTa needs is not in the vocabulary.
    #[error("{path}: the vocabulary has no {token} token")]
    MissingToken {
        /// File holding the vocabulary.
        path: PathBuf,
        /// The token.
        token: String,
    },
    /// A folder holds neither `tokenizer.json` nor `vocab.json` + `merges.txt`.
    #[error("{dir}: no tokenizer.json, and no vocab.json + merges.txt")]
    NotFound {
        /// Folder searched.
        dir: PathBuf,
    },
    /// A tokenizer file could not be written.
    #[error("{path}: cannot write tokenizer file: {msg}")]
    Write {
        /// File.
        path: PathBuf,
        /// Cause.
        msg: String,
    },
    /// Tokenising failed.
    #[error("tokenising labels failed: {0}")]
    Encode(String),
    /// A token id is outside the text encoder's vocabulary (tokenizer and weights disagree).
    #[error("label {index}: token id {id} is outside the text encoder's vocabulary of {vocab}")]
    IdOutOfRange {
        /// Index of the label.
        index: usize,
        /// The id.
        id: i64,
        /// Rows of the word-embedding table.
        vocab: usize,
    },
    /// The label list is empty.
    #[error("the label list is empty")]
    NoLabels,
    /// A label is longer than the text encoder's position table allows.
    #[error("label {index} has {tokens} tokens; the text encoder takes at most {max}")]
    TooLong {
        /// Index of the label.
        index: usize,
        /// Its token count, `<s>` and `</s>` included.
        tokens: usize,
        /// The largest count the encoder accepts.
        max: usize,
    },
}

/// Token ids of a batch of texts, padded to the longest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    /// `[batch, len]` row-major token ids.
    pub input_ids: Vec<i64>,
    /// `[batch, len]` row-major, 1 on real tokens and 0 on padding.
    pub attention_mask: Vec<i64>,
    /// Number of texts.
    pub batch: usize,
    /// Padded length.
    pub len: usize,
}

impl TokenBatch {
    /// `(input_ids, attention_mask)` as `[batch, len]` integer tensors on `device`.
    pub fn to_tensors(&self, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
        let shape = [self.batch, self.len];
        (
            Tensor::from_data(TensorData::new(self.input_ids.clone(), shape), device),
            Tensor::from_data(TensorData::new(self.attention_mask.clone(), shape), device),
        )
    }

    /// Real tokens (padding excluded) of text `i`.
    pub fn tokens_of(&self, i: usize) -> usize {
        self.attention_mask[i * self.len..(i + 1) * self.len]
            .iter()
            .filter(|&&m| m != 0)
            .count()
    }
}

/// A RoBERTa byte-level BPE tokenizer for label texts.
#[derive(Clone)]
pub struct LabelTokenizer {
    inner: Tokenizer,
    pad_id: u32,
}

impl std::fmt::Debug for LabelTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabelTokenizer")
            .field("pad_id", &self.pad_id)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TokenizerError> {
    std::fs::read(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn malformed(path: &Path, msg: impl Into<String>) -> TokenizerError {
    TokenizerError::Malformed {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn padding(pad_id: u32) -> PaddingParams {
    PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        direction: PaddingDirection::Right,
        pad_to_multiple_of: None,
        pad_id,
        pad_type_id: 0,
        pad_token: "<pad>".to_string(),
    }
}

impl LabelTokenizer {
    /// Loads `dir/tokenizer.json` if present, else `dir/vocab.json` + `dir/merges.txt`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let dir = dir.as_ref();
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_tokenizer_json(json);
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if vocab.is_file() || merges.is_file() {
            return Self::from_vocab_merges(vocab, merges);
        }
        Err(TokenizerError::NotFound {
            dir: dir.to_path_buf(),
        })
    }

    /// Loads a HuggingFace `tokenizer.json` (its model, pre-tokenizer, post-processor and added
    /// tokens are used as saved; padding is set to the longest text with `<pad>`).
    pub fn from_tokenizer_json(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let bytes = read(path)?;
        let mut inner =
            Tokenizer::from_bytes(&bytes).map_err(|e| malformed(path, e.to_string()))?;
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| TokenizerError::MissingToken {
                    path: path.to_path_buf(),
                    token: token.to_string(),
                })
        };
        let (cls, sep, pad_id) = (id("<s>")?, id("</s>")?, id("<pad>")?);
        inner
            .with_truncation(None)
            .map_err(|e| malformed(path, e.to_string()))?;
        inner.with_padding(None);
        // RoBERTa needs `<s> … </s>` around every text; a file without the post-processor
        // would silently give different ids.
        let probe = inner
            .encode("a", true)
            .map_err(|e| malformed(path, e.to_string()))?;
        let ids = probe.get_ids();
        if ids.first() != Some(&cls) || ids.last() != Some(&sep) || ids.len() < 3 {
            return Err(malformed(
                path,
                "texts are not encoded as <s> … </s> (RoBERTa post-processor missing)",
            ));
        }
        inner.with_padding(Some(padding(pad_id)));
        Ok(Self { inner, pad_id })
    }

    /// Writes the tokenizer as a HuggingFace `tokenizer.json` to `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), TokenizerError> {
        let path = path.as_ref();
        self.inner
            .save(path, false)
            .map_err(|e| TokenizerError::Write {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })
    }

    /// Builds the roberta-base tokenizer from `vocab.json` (token → id) and `merges.txt` (one
    /// `a b` pair per line by rank, an optional `#version` first line).
    pub fn from_vocab_merges(
        vocab: impl AsRef<Path>,
        merges: impl AsRef<Path>,
    ) -> Result<Self, TokenizerError> {
        let (vocab_path, merges_path) = (vocab.as_ref(), merges.as_ref());
        let vocab = parse_vocab(vocab_path, &read(vocab_path)?)?;
        let merges = parse_merges(merges_path, &read(merges_path)?)?;
        let id = |token: &str| {
            vocab
                .get(token)
                .copied()
                .ok_or_else(|| TokenizerError::MissingToken {
                    path: vocab_path.to_path_buf(),
                    token: token.to_string(),
                })
        };
        let (cls, sep, pad) = (id("<s>")?, id("</s>")?, id("<pad>")?);
        let mut special: Vec<AddedToken> = ["<s>", "<pad>", "</s>"]
            .iter()
            .map(|t| AddedToken::from(*t, true))
            .collect();
        if vocab.contains_key("<unk>") {
            special.push(AddedToken::from("<unk>", true));
        }
        if vocab.contains_key("<mask>") {
            special.push(AddedToken::from("<mask>", true).lstrip(true));
        }
        let bpe_vocab: Vocab = vocab.into_iter().collect();
        let bpe = BPE::builder()
            .vocab_and_merges(bpe_vocab, merges)
            .build()
            .map_err(|e| {
                malformed(
                    merges_path,
                    format!("{e} (vocabulary {})", vocab_path.display()),
                )
            })?;
        let mut inner = Tokenizer::new(bpe);
        inner
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
            .with_post_processor(Some(
                RobertaProcessing::new(("</s>".to_string(), sep), ("<s>".to_string(), cls))
                    .trim_offsets(true)
                    .add_prefix_space(false),
            ))
            .with_padding(Some(padding(pad)));
        inner.add_special_tokens(&special);
        Ok(Self { inner, pad_id: pad })
    }

    /// The padding token id.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Id of `token`, if in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Tokenises `texts` with `<s>`/`</s>` and pads them to the longest.
    pub fn batch_encode<S: AsRef<str>>(&self, texts: &[S]) -> Result<TokenBatch, TokenizerError> {
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let enc = self
            .inner
            .encode_batch(inputs, true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let len = enc.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
        let mut batch = TokenBatch {
            input_ids: Vec::new(),
            attention_mask: Vec::new(),
            batch: enc.len(),
            len,
        };
        for e in &enc {
            let pad = len - e.get_ids().len();
            batch
                .input_ids
                .extend(e.get_ids().iter().map(|&i| i as i64));
            batch
                .input_ids
                .extend(std::iter::repeat_n(self.pad_id as i64, pad));
            batch
                .attention_mask
                .extend(e.get_attention_mask().iter().map(|&m| m as i64));
            batch.attention_mask.extend(std::iter::repeat_n(0, pad));
        }
        Ok(batch)
    }
}

fn parse_vocab(path: &Path, bytes: &[u8]) -> Result<HashMap<String, u32>, TokenizerError> {
    let map: HashMap<String, serde_json::Value> = serde_json::from_slice(bytes)
        .map_err(|e| malformed(path, format!("expected a JSON object of token ids: {e}")))?;
    map.into_iter()
        .map(
            |(token, id)| match id.as_u64().and_then(|v| u32::try_from(v).ok()) {
                Some(id) => Ok((token, id)),
                None => Err(malformed(
                    path,
                    format!("token {token:?} has id {id}, not a 32-bit unsigned integer"),
                )),
            },
        )
        .collect()
}

fn parse_merges(path: &Path, bytes: &[u8]) -> Result<Merges, TokenizerError> {
    let text =
        std::str::from_utf8(bytes).map_err(|e| malformed(path, format!("not UTF-8: {e}")))?;
    let mut merges = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if (i == 0 && line.starts_with("#version")) || line.is_empty() {
            continue;
        }
        match line.split(' ').collect::<Vec<_>>()[..] {
            [a, b] if !a.is_empty() && !b.is_empty() => merges.push((a.to_string(), b.to_string())),
            _ => {
                return Err(malformed(
                    path,
                    format!("line {}: expected two tokens separated by one space", i + 1),
                ));
            }
        }
    }
    Ok(merges)
}

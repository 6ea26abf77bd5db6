//! Label features computed once per label list.
//!
//! In RLIPv2 (official `engine.py::evaluate_hoi_with_text`) the RoBERTa `pooler_output` of the
//! label texts is computed once and reused for every image; [`TextCache`] does the same for any
//! number of label lists.

use std::collections::HashMap;

use burn::prelude::*;

use super::roberta::RobertaModel;
use super::tokenizer::{LabelTokenizer, TokenizerError};

/// Pooled label features `[n_labels, d]`, keyed by the exact label list.
#[derive(Debug, Default)]
pub struct TextCache {
    entries: HashMap<Vec<String>, Tensor<2>>,
}

impl TextCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cached features of `labels`, if computed before.
    pub fn get(&self, labels: &[String]) -> Option<Tensor<2>> {
        self.entries.get(labels).cloned()
    }

    /// Features of `labels`: cached, or tokenised and encoded by `model` on `device` now.
    ///
    /// Fails when the list is empty, tokenising fails, a label is longer than the model's
    /// position table, or a token id is outside its vocabulary.
    pub fn get_or_encode<S: AsRef<str>>(
        &mut self,
        labels: &[S],
        tokenizer: &LabelTokenizer,
        model: &RobertaModel,
        device: &Device,
    ) -> Result<Tensor<2>, TokenizerError> {
        let key: Vec<String> = labels.iter().map(|s| s.as_ref().to_string()).collect();
        if let Some(t) = self.entries.get(&key) {
            return Ok(t.clone());
        }
        let t = encode_labels(&key, tokenizer, model, device)?;
        self.entries.insert(key, t.clone());
        Ok(t)
    }

    /// Number of cached label lists.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops every entry (e.g. after the text encoder's weights change).
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// Tokenises `labels` and returns their pooled RoBERTa features `[n, d]` (no caching).
pub fn encode_labels<S: AsRef<str>>(
    labels: &[S],
    tokenizer: &LabelTokenizer,
    model: &RobertaModel,
    device: &Device,
) -> Result<Tensor<2>, TokenizerError> {
    if labels.is_empty() {
        return Err(TokenizerError::NoLabels);
    }
    let batch = tokenizer.batch_encode(labels)?;
    let max = model.max_tokens();
    if let Some(index) = (0..batch.batch).find(|&i| batch.tokens_of(i) > max) {
        return Err(TokenizerError::TooLong {
            index,
            tokens: batch.tokens_of(index),
            max,
        });
    }
    let vocab = model.vocab_size();
    if let Some(pos) = batch
        .input_ids
        .iter()
        .position(|&id| id < 0 || id as usize >= vocab)
    {
        return Err(TokenizerError::IdOutOfRange {
            index: pos / batch.len.max(1),
            id: batch.input_ids[pos],
            vocab,
        });
    }
    let (ids, mask) = batch.to_tensors(device);
    Ok(model.pooled(ids, mask))
}

//! The key report of a weight load: what matched the model and what did not.

use std::collections::BTreeSet;
use std::fmt;

use super::StateDict;

/// Which checkpoint keys were applied, missing, unexpected, mis-shaped, or accepted as aliases.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyReport {
    /// Keys loaded into the model.
    pub applied: Vec<String>,
    /// Keys the model needs that the checkpoint lacks.
    pub missing: Vec<String>,
    /// Checkpoint keys the model does not use.
    pub unexpected: Vec<String>,
    /// `(key, model shape, checkpoint shape)` for keys whose shapes differ.
    pub misshaped: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// Duplicated shared-head keys equal to their canonical key.
    pub aliases: Vec<String>,
    /// Duplicated shared-head keys whose values differ from their canonical key.
    pub bad_aliases: Vec<String>,
    /// Integer buffers that the model recomputes and whose stored values agree.
    pub buffers: Vec<String>,
    /// Integer buffers whose stored values disagree with the recomputed ones.
    pub bad_buffers: Vec<String>,
}

/// The canonical name of a shared box-head key stored a second time by the official model, or
/// `None` if `key` is not such an alias.
///
/// `transformer.ho_decoder.{sub,obj}_bbox_embed.<i>.*` is `{sub,obj}_bbox_embed.<i>.*`, and
/// `transformer.verb_decoder.{sub,obj}_bbox_embed.<i>.*` is `{sub,obj}_bbox_embed.<i+n_ho>.*`
/// where `n_ho` is the number of subject/object decoder layers (3 in every official model).
pub fn alias_target(key: &str, n_ho_layers: usize) -> Option<String> {
    for (prefix, offset) in [
        ("transformer.ho_decoder.", 0),
        ("transformer.verb_decoder.", n_ho_layers),
    ] {
        let Some(rest) = key.strip_prefix(prefix) else {
            continue;
        };
        for head in ["sub_bbox_embed.", "obj_bbox_embed."] {
            let Some(tail) = rest.strip_prefix(head) else {
                continue;
            };
            let (idx, after) = tail.split_once('.')?;
            let idx: usize = idx.parse().ok()?;
            return Some(format!("{head}{}.{after}", idx + offset));
        }
    }
    None
}

impl KeyReport {
    /// Computes `unexpected` and sorts alias keys out of it.
    pub(crate) fn finalize(&mut self, sd: &StateDict) {
        let used: BTreeSet<&str> = self
            .applied
            .iter()
            .chain(&self.buffers)
            .chain(&self.bad_buffers)
            .chain(self.misshaped.iter().map(|m| &m.0))
            .map(String::as_str)
            .collect();
        let applied: BTreeSet<&str> = self.applied.iter().map(String::as_str).collect();
        for (key, t) in sd.iter() {
            if used.contains(key) {
                continue;
            }
            match alias_target(key, 3) {
                Some(canon) if applied.contains(canon.as_str()) => {
                    if sd.get(&canon) == Some(t) {
                        self.aliases.push(key.to_string());
                    } else {
                        self.bad_aliases.push(key.to_string());
                    }
                }
                _ => self.unexpected.push(key.to_string()),
            }
        }
    }

    /// Whether everything in the checkpoint matched the model exactly.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.misshaped.is_empty()
            && self.bad_aliases.is_empty()
            && self.bad_buffers.is_empty()
    }
}

/// Keys listed per category by the `Display` of [`KeyReport`] (the fields hold all of them).
const SHOWN: usize = 25;

impl fmt::Display for KeyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "applied {} tensors, {} shared-head aliases, {} recomputed buffers",
            self.applied.len(),
            self.aliases.len(),
            self.buffers.len()
        )?;
        let list = |f: &mut fmt::Formatter<'_>, title: &str, keys: &[String]| -> fmt::Result {
            if !keys.is_empty() {
                writeln!(f, "{title} ({}):", keys.len())?;
                for k in keys.iter().take(SHOWN) {
                    writeln!(f, "  {k}")?;
                }
                if keys.len() > SHOWN {
                    writeln!(f, "  ... and {} more", keys.len() - SHOWN)?;
                }
            }
            Ok(())
        };
        list(f, "missing", &self.missing)?;
        list(f, "unexpected", &self.unexpected)?;
        if !self.misshaped.is_empty() {
            writeln!(f, "mis-shaped ({}):", self.misshaped.len())?;
            for (k, want, got) in self.misshaped.iter().take(SHOWN) {
                writeln!(f, "  {k}: model {want:?}, checkpoint {got:?}")?;
            }
            if self.misshaped.len() > SHOWN {
                writeln!(f, "  ... and {} more", self.misshaped.len() - SHOWN)?;
            }
        }
        list(
            f,
            "aliases that differ from their canonical key",
            &self.bad_aliases,
        )?;
        list(
            f,
            "integer buffers that differ from the recomputed values",
            &self.bad_buffers,
        )
    }
}

//! Output-file helpers shared by the writers (synthetic data, VG preprocessing, V-COCO
//! conversion): the [`DataError::Write`] constructor, atomic writes and no-overwrite writes.

use std::path::{Path, PathBuf};

use crate::DataError;

/// A failure while writing `path`: a [`DataError::Write`]. An I/O error is kept as it is; any
/// other cause (serialisation, tokenizer training, a path without a folder) becomes an
/// [`std::io::Error`] of kind `Other` carrying it.
pub(crate) fn write_err<E>(path: &Path, e: E) -> DataError
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let source = match e.into().downcast::<std::io::Error>() {
        Ok(io) => *io,
        Err(other) => std::io::Error::other(other),
    };
    DataError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, then a rename
/// (which replaces an existing `path`).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let dir = path
        .parent()
        .ok_or_else(|| write_err(path, "no parent folder"))?;
    let name = path
        .file_name()
        .ok_or_else(|| write_err(path, "no file name"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| write_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        write_err(path, e)
    })
}

/// `Ok` when none of `targets` exists; otherwise a [`DataError::Write`] of kind
/// `AlreadyExists` naming the first one that does.
pub(crate) fn refuse_existing(targets: &[PathBuf]) -> Result<(), DataError> {
    match targets.iter().find(|t| t.exists()) {
        Some(t) => Err(write_err(
            t,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "refusing to overwrite an existing file",
            ),
        )),
        None => Ok(()),
    }
}

/// Writes `bytes` to `path`, which must not exist: a temporary file in the same folder, then a
/// hard link to `path` (fails if `path` appeared meanwhile) — or a rename where the file system
/// has no hard links.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy());
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| write_err(&tmp, e))?;
    let linked = match std::fs::hard_link(&tmp, path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e),
        Err(_) if !path.exists() => std::fs::rename(&tmp, path),
        other => other,
    };
    let _ = std::fs::remove_file(&tmp);
    linked.map_err(|e| write_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_failures_are_write_errors_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("rlip-fsutil-write-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let target = dir.join("no").join("such").join("x.json");
        let e = write_atomic(&target, b"{}").unwrap_err();
        match &e {
            DataError::Write { path, source } => {
                assert!(path.starts_with(&dir), "{e}");
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected DataError::Write, got {other:?}"),
        }
        assert!(e.to_string().contains("cannot write file"), "{e}");
        let e = write_atomic(Path::new("/"), b"").unwrap_err();
        assert!(matches!(e, DataError::Write { .. }), "{e}");
        let e = write_err(Path::new("t.json"), "tokenizer training failed");
        assert!(
            e.to_string().contains("t.json") && e.to_string().contains("tokenizer training failed"),
            "{e}"
        );
    }

    #[test]
    fn write_new_never_replaces_and_refuse_existing_names_the_file() {
        let dir = std::env::temp_dir().join(format!("rlip-fsutil-new-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.json"), dir.join("b.json"));
        refuse_existing(&[a.clone(), b.clone()]).unwrap();
        write_new(&a, b"first").unwrap();
        let e = write_new(&a, b"second").unwrap_err();
        assert!(
            matches!(&e, DataError::Write { path, source }
                if path == &a && source.kind() == std::io::ErrorKind::AlreadyExists),
            "{e}"
        );
        assert_eq!(std::fs::read(&a).unwrap(), b"first");
        let e = refuse_existing(&[b.clone(), a.clone()]).unwrap_err();
        assert!(
            matches!(&e, DataError::Write { path, source }
                if path == &a && source.kind() == std::io::ErrorKind::AlreadyExists),
            "{e}"
        );
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file is left"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}

//! What the examples share.

use std::path::PathBuf;

/// The example's database, `name` in the system's temporary directory; with
/// `fresh`, the files of an earlier run (the database, its WAL and its
/// shared memory) are removed first.
pub(crate) fn database(name: &str, fresh: bool) -> Result<PathBuf, String> {
    let path = std::env::temp_dir().join(name);
    if fresh {
        for suffix in ["", "-wal", "-shm"] {
            let file = format!("{}{suffix}", path.display());
            if let Err(e) = std::fs::remove_file(&file)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(format!("cannot remove {file}: {e}"));
            }
        }
    }
    Ok(path)
}

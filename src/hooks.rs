//! The datastore hooks: `hooks/<datastore> ACTION`, run as root, so the files
//! themselves must be as trustworthy as the binary.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::Settings;

pub fn hook_path(settings: &Settings) -> PathBuf {
    settings.hooks.dir.join(settings.datastore.name())
}

/// Refuses a hooks directory that others could change.
pub fn check_dir(dir: &Path) -> Result<(), String> {
    let meta =
        std::fs::metadata(dir).map_err(|e| format!("hooks directory {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!(
            "hooks directory {}: is not a directory",
            dir.display()
        ));
    }
    trusted(dir, &meta, "hooks directory")
}

/// Refuses a hook that is missing, not executable, or that someone other
/// than root could have changed.
pub fn check_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("hook {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("hook {}: is not a regular file", path.display()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "hook {}: is not executable; run: chmod 755 {}",
            path.display(),
            path.display()
        ));
    }
    trusted(path, &meta, "hook")
}

fn trusted(path: &Path, meta: &std::fs::Metadata, what: &str) -> Result<(), String> {
    if meta.uid() != 0 {
        return Err(format!(
            "{what} {}: is owned by uid {}, not root; volsnap runs it as root; run: chown root: {}",
            path.display(),
            meta.uid(),
            path.display()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "{what} {}: is writable by group or others (mode {mode:04o}); run: chmod go-w {}",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

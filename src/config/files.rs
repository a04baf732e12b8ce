//! Reading the files that tell volsnap what to run as root: volsnap.toml,
//! clouds.yaml and secure.yaml.
//!
//! Whoever can write one of them, or rename it away and put their own in its
//! place, runs code as root (the config names the hooks and their
//! environment). So they are held to sshd's `StrictModes`: a regular file
//! owned by root or by the user volsnap runs as, not writable by group or
//! others, in directories that are the same all the way up to `/`. A
//! root-owned sticky directory (`/tmp`) is fine: there, nobody else can
//! rename or remove what another user owns.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{line_column, ConfigError};

/// No hand-written config comes near this; a bigger file is a mistake (or
/// `/dev/zero` behind a symlink), never read to the end.
pub const MAX_SIZE: u64 = 1 << 20;

/// The text of a config file, read only if it is a regular file of at most
/// [`MAX_SIZE`] and valid UTF-8. A symlink is followed; a FIFO, a device or a
/// directory is refused before a byte is read (the open does not block on a
/// FIFO without a writer: `O_NONBLOCK`).
pub fn read_regular(path: &Path) -> Result<(String, Metadata), ConfigError> {
    let whole = |message: String| ConfigError::whole_file(path, message);
    let file = File::options()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(|e| whole(format!("cannot read: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| whole(format!("cannot stat: {e}")))?;
    if !meta.is_file() {
        return Err(whole(format!(
            "is {}, not a regular file; point --config at the file itself",
            kind(&meta)
        )));
    }
    if meta.len() > MAX_SIZE {
        return Err(whole(format!(
            "is {} bytes; a configuration file is at most {MAX_SIZE} bytes",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The size may change under us: never read more than the limit.
    file.take(MAX_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| whole(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_SIZE {
        return Err(whole(format!(
            "grew past {MAX_SIZE} bytes while being read"
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let prefix = std::str::from_utf8(&e.as_bytes()[..valid]).unwrap_or_default();
        ConfigError {
            file: path.to_path_buf(),
            position: Some(line_column(prefix, prefix.len())),
            key: None,
            message: "is not valid UTF-8 (TOML files are UTF-8)".into(),
        }
    })?;
    Ok((text, meta))
}

fn kind(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// sshd's StrictModes for `path` (already opened; `meta` is what the open
/// found): the file and every directory above it, as written and as
/// resolved through symlinks. `what` names the file in the message.
pub fn check_trusted(path: &Path, meta: &Metadata, what: &str) -> Result<(), String> {
    owner_and_mode(path, meta, what, false)?;
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| {
                format!(
                    "{what} {}: cannot know the current directory: {e}",
                    path.display()
                )
            })?
            .join(path)
    };
    let mut dirs: Vec<PathBuf> = absolute
        .ancestors()
        .skip(1)
        .map(Path::to_path_buf)
        .collect();
    // The file a symlink leads to can be swapped by whoever owns the
    // directories it is in, too.
    if let Ok(real) = std::fs::canonicalize(&absolute) {
        dirs.extend(real.ancestors().skip(1).map(Path::to_path_buf));
    }
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        let meta = std::fs::metadata(&dir).map_err(|e| {
            format!(
                "{what} {}: directory {}: {e}",
                path.display(),
                dir.display()
            )
        })?;
        owner_and_mode(
            &dir,
            &meta,
            &format!("{what} {}: directory", path.display()),
            true,
        )?;
    }
    Ok(())
}

fn owner_and_mode(path: &Path, meta: &Metadata, what: &str, is_dir: bool) -> Result<(), String> {
    let euid = nix::unistd::geteuid().as_raw();
    let uid = meta.uid();
    if uid != 0 && uid != euid {
        return Err(format!(
            "{what} {}: is owned by uid {uid}, not root: its owner could make volsnap run any \
             program as root; run: chown root: {}",
            path.display(),
            path.display()
        ));
    }
    let mode = meta.mode() & 0o7777;
    let sticky = is_dir && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        return Err(format!(
            "{what} {}: is writable by group or others (mode {:04o}): they could make volsnap \
             run any program as root; run: chmod go-w {}",
            path.display(),
            mode & 0o777,
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn refuses_what_is_not_a_regular_file_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = read_regular(&fifo).unwrap_err().to_string();
        assert!(e.contains("is a FIFO, not a regular file"), "{e}");
        let e = read_regular(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a character device"), "{e}");
        let e = read_regular(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let link = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let e = read_regular(&link).unwrap_err().to_string();
        assert!(e.contains("is a character device"), "{e}");
    }

    #[test]
    fn refuses_a_big_file_and_bad_utf8_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_SIZE as usize + 1]).unwrap();
        let e = read_regular(&big).unwrap_err().to_string();
        assert!(
            e.contains("a configuration file is at most 1048576 bytes"),
            "{e}"
        );
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, b"a = 1\nb = \"\xff\"\n").unwrap();
        let e = read_regular(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.toml:2:6: is not valid UTF-8"), "{e}");
    }

    #[test]
    fn strict_modes_walk_up_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("etc");
        std::fs::create_dir(&sub).unwrap();
        let file = sub.join("volsnap.toml");
        std::fs::write(&file, "").unwrap();
        set_mode(&file, 0o600);
        let meta = || std::fs::metadata(&file).unwrap();
        check_trusted(&file, &meta(), "configuration").unwrap();

        set_mode(&sub, 0o777);
        let e = check_trusted(&file, &meta(), "configuration").unwrap_err();
        assert!(
            e.contains(&format!(
                "directory {}: is writable by group or others (mode 0777)",
                sub.display()
            )),
            "{e}"
        );
        // Sticky, owned by root (or us): nobody else can swap the file.
        set_mode(&sub, 0o1777);
        check_trusted(&file, &meta(), "configuration").unwrap();
        set_mode(&sub, 0o755);

        set_mode(&file, 0o620);
        let e = check_trusted(&file, &meta(), "configuration").unwrap_err();
        assert!(e.contains("(mode 0620)") && e.contains("chmod go-w"), "{e}");
        set_mode(&file, 0o600);

        // Through a symlink, the directories of its target count too.
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        set_mode(&open, 0o757);
        let target = open.join("real.toml");
        std::fs::write(&target, "").unwrap();
        set_mode(&target, 0o600);
        let link = sub.join("link.toml");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e =
            check_trusted(&link, &std::fs::metadata(&link).unwrap(), "configuration").unwrap_err();
        assert!(e.contains(&format!("directory {}", open.display())), "{e}");
    }

    #[test]
    fn a_file_owned_by_another_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("volsnap.toml");
        std::fs::write(&file, "").unwrap();
        if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(&file, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            let e = check_trusted(&file, &std::fs::metadata(&file).unwrap(), "configuration")
                .unwrap_err();
            assert!(e.contains("is owned by uid 65534, not root"), "{e}");
            assert!(e.contains("run: chown root:"), "{e}");
        }
    }
}

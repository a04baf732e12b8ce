//! FIFREEZE/FITHAW and the guard that holds the frozen window.
//!
//! Kept small on purpose: `syncfs` first so the freeze has little to flush,
//! the ioctls with their errors made plain, and an RAII guard that thaws in
//! reverse order on an early return or an error. The watchdog process
//! (`watchdog`) covers what a guard cannot: SIGKILL, and a panic (the release
//! binary does not unwind, and `main` ends the process on any panic).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use nix::errno::Errno;
use nix::libc::c_int;

// SAFETY (both): FIFREEZE is _IOWR('X', 119, int) and FITHAW _IOWR('X', 120,
// int); the kernel ignores the int, so any valid pointer will do.
nix::ioctl_readwrite!(fifreeze, b'X', 119, c_int);
nix::ioctl_readwrite!(fithaw, b'X', 120, c_int);

/// Opens a mount for the ioctls. Done before the freeze: opening is a read,
/// but nothing about a frozen filesystem is worth finding out the hard way.
pub fn open_mount(mount: &Path) -> Result<File> {
    File::open(mount).with_context(|| format!("cannot open {}", mount.display()))
}

/// Flushes a filesystem's dirty data so the freeze itself is quick.
pub fn syncfs(mount: &Path) -> Result<()> {
    syncfs_fd(&open_mount(mount)?, mount)
}

/// [`syncfs`] on a mount already open.
pub fn syncfs_fd(file: &File, mount: &Path) -> Result<()> {
    nix::unistd::syncfs(file.as_raw_fd()).with_context(|| format!("syncfs {}", mount.display()))
}

pub fn freeze_fd(file: &File, mount: &Path) -> Result<()> {
    let mut arg: c_int = 0;
    // SAFETY: see the ioctl definitions above; `file` is an open descriptor.
    match unsafe { fifreeze(file.as_raw_fd(), &mut arg) } {
        Ok(_) => Ok(()),
        Err(Errno::EBUSY) => Err(anyhow!(
            "cannot freeze {}: it is already frozen by someone else (EBUSY); volsnap froze nothing there",
            mount.display()
        )),
        Err(Errno::EOPNOTSUPP) | Err(Errno::ENOTTY) => Err(anyhow!(
            "cannot freeze {}: its filesystem does not support freezing",
            mount.display()
        )),
        Err(Errno::EPERM) => Err(anyhow!(
            "cannot freeze {}: permission denied (FIFREEZE needs CAP_SYS_ADMIN; run as root)",
            mount.display()
        )),
        Err(e) => Err(anyhow!("cannot freeze {}: {e}", mount.display())),
    }
}

/// Thaws; EINVAL (it was not frozen) is an error too: someone else thawed it,
/// and the caller must say so rather than pretend.
pub fn thaw_fd(file: &File, mount: &Path) -> Result<(), ThawError> {
    let mut arg: c_int = 0;
    // SAFETY: see the ioctl definitions above; `file` is an open descriptor.
    match unsafe { fithaw(file.as_raw_fd(), &mut arg) } {
        Ok(_) => Ok(()),
        Err(Errno::EINVAL) => Err(ThawError::NotFrozen(mount.to_path_buf())),
        Err(e) => Err(ThawError::Failed(mount.to_path_buf(), e)),
    }
}

#[derive(Debug)]
pub enum ThawError {
    NotFrozen(PathBuf),
    Failed(PathBuf, Errno),
}

impl std::fmt::Display for ThawError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ThawError::NotFrozen(m) => write!(
                f,
                "{} was not frozen when volsnap thawed it (someone else thawed it)",
                m.display()
            ),
            ThawError::Failed(m, e) => write!(f, "cannot thaw {}: {e}", m.display()),
        }
    }
}

impl std::error::Error for ThawError {}

/// Thaws every mount in reverse order, trying each even when one fails: the
/// one thaw loop, for [`Frozen`], the watchdog and `volsnap thaw`.
pub fn thaw_in_reverse(mounts: &[(PathBuf, File)]) -> Vec<(PathBuf, Result<(), ThawError>)> {
    mounts
        .iter()
        .rev()
        .map(|(mount, file)| (mount.clone(), thaw_fd(file, mount)))
        .collect()
}

/// The frozen window. Mounts are frozen in the order given and thawed in
/// reverse; dropping the guard thaws whatever is still frozen.
pub struct Frozen {
    /// Frozen mounts, in freeze order; emptied by the thaw.
    mounts: Vec<(PathBuf, File)>,
    /// Just before the first FIFREEZE.
    pub since: Instant,
}

impl Frozen {
    /// `syncfs` on every mount (what is left to flush since the early sync),
    /// then FIFREEZE all of them at once, a thread each: most of a FIFREEZE
    /// is the kernel waiting for RCU grace periods, which concurrent freezes
    /// share (8 ext4 mounts: 60 ms at once against 290 ms one after the
    /// other, bench/RESULTS.md), and the window is open from the first. If
    /// any fails, thaws the ones that froze and returns the first error in
    /// mount order: all or nothing.
    pub fn freeze(opened: Vec<(PathBuf, File)>) -> Result<Frozen> {
        for (mount, file) in &opened {
            syncfs_fd(file, mount)?;
        }
        let mut frozen = Frozen {
            mounts: Vec::with_capacity(opened.len()),
            since: Instant::now(),
        };
        let tried: Vec<((PathBuf, File), Result<()>)> = std::thread::scope(|scope| {
            let freezing: Vec<_> = opened
                .into_iter()
                .map(|(mount, file)| {
                    scope.spawn(move || {
                        let froze = freeze_fd(&file, &mount);
                        ((mount, file), froze)
                    })
                })
                .collect();
            freezing
                .into_iter()
                .map(|t| t.join().expect("a FIFREEZE thread panicked"))
                .collect()
        });
        let mut first_error = None;
        for ((mount, file), froze) in tried {
            match froze {
                Ok(()) => {
                    log::debug!("froze {}", mount.display());
                    frozen.mounts.push((mount, file));
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            // `frozen` drops here and thaws the ones that froze.
            Some(e) => Err(e),
            None => Ok(frozen),
        }
    }

    /// Thaws in reverse order, trying every mount even when one fails.
    /// `NotFrozen` in the errors means someone else (the watchdog) thawed first.
    pub fn thaw(mut self) -> Result<(), Vec<ThawError>> {
        let errors = self.thaw_all();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn thaw_all(&mut self) -> Vec<ThawError> {
        let mounts = std::mem::take(&mut self.mounts);
        thaw_in_reverse(&mounts)
            .into_iter()
            .filter_map(|(mount, result)| match result {
                Ok(()) => {
                    log::debug!("thawed {}", mount.display());
                    None
                }
                Err(e) => Some(e),
            })
            .collect()
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for e in self.thaw_all() {
            log::error!("{e}");
        }
    }
}

/// Whether a filesystem is frozen, found without writing to it: a second
/// FIFREEZE answers EBUSY when it is; when it is not, the probe's own freeze
/// is undone at once. For tests and `volsnap thaw`, never inside a run.
pub fn is_frozen(mount: &Path) -> Result<bool> {
    let file = open_mount(mount)?;
    let mut arg: c_int = 0;
    // SAFETY: see the ioctl definitions above.
    match unsafe { fifreeze(file.as_raw_fd(), &mut arg) } {
        Err(Errno::EBUSY) => Ok(true),
        Ok(_) => {
            thaw_fd(&file, mount)?;
            Ok(false)
        }
        Err(e) => Err(anyhow!("cannot probe {}: {e}", mount.display())),
    }
}

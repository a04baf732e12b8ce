//! Which filesystems may be frozen: `/proc/self/mountinfo` parsing and the
//! rules that keep volsnap from freezing the filesystem it needs to write to.

use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the filesystem's device, as `st_dev` reports it.
    pub major: u32,
    pub minor: u32,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

impl MountEntry {
    pub fn dev(&self) -> u64 {
        nix::sys::stat::makedev(self.major.into(), self.minor.into())
    }
}

/// Parses the mountinfo format (proc(5)); fields after `-` are fs type,
/// source and options.
pub fn parse_mountinfo(input: impl Read) -> io::Result<Vec<MountEntry>> {
    let bad = |line: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad mountinfo line: {line}"),
        )
    };
    let mut entries = Vec::new();
    for line in BufReader::new(input).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(' ').collect();
        let dash = fields
            .iter()
            .position(|f| *f == "-")
            .ok_or_else(|| bad(&line))?;
        if fields.len() < 5 || fields.len() < dash + 3 {
            return Err(bad(&line));
        }
        let (major, minor) = fields[2].split_once(':').ok_or_else(|| bad(&line))?;
        entries.push(MountEntry {
            major: major.parse().map_err(|_| bad(&line))?,
            minor: minor.parse().map_err(|_| bad(&line))?,
            mount_point: PathBuf::from(unescape(fields[4])),
            fs_type: fields[dash + 1].to_string(),
            source: unescape(fields[dash + 2]),
        });
    }
    Ok(entries)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let octal = &field[i + 1..i + 4];
            if let Ok(value) = u8::from_str_radix(octal, 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn read_mountinfo() -> io::Result<Vec<MountEntry>> {
    parse_mountinfo(std::fs::File::open("/proc/self/mountinfo")?)
}

/// The mount whose mount point is exactly `path` (the last one wins when
/// mounts are stacked: it is the one visible).
pub fn mount_at<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries.iter().rev().find(|e| e.mount_point == path)
}

/// `st_dev` of `path`, or of its nearest existing ancestor (a runtime dir or
/// log file may not exist yet: it will be created on that filesystem).
pub fn device_of(path: &Path) -> io::Result<u64> {
    let mut candidate = Some(path);
    while let Some(p) = candidate {
        match std::fs::metadata(p) {
            Ok(meta) => return Ok(meta.dev()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => candidate = p.parent(),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no part of {} exists", path.display()),
    ))
}

/// A filesystem volsnap itself must keep writing to while the data mounts
/// are frozen, with a name for messages.
pub struct Protected<'a> {
    pub what: &'a str,
    pub path: &'a Path,
}

/// Why `mount` must not be frozen, or its canonical path and mount entry.
pub fn check_freezable<'a>(
    mount: &Path,
    entries: &'a [MountEntry],
    protected: &[Protected],
) -> Result<(PathBuf, &'a MountEntry), String> {
    let real = std::fs::canonicalize(mount).map_err(|e| format!("{}: {e}", mount.display()))?;
    if real == Path::new("/") {
        return Err(format!(
            "{}: is the root filesystem; freezing it would hang the machine",
            mount.display()
        ));
    }
    let entry = mount_at(entries, &real).ok_or_else(|| {
        format!(
            "{}: is not a mountpoint (it lives on the filesystem of {}); name the mountpoint of the data volume",
            mount.display(),
            containing_mount(entries, &real).map_or("?".into(), |e| e.mount_point.display().to_string())
        )
    })?;
    if let Some(why) = not_on_a_volume(&entry.fs_type) {
        return Err(format!(
            "{}: is a {} filesystem ({why}); name the mountpoint of the data volume",
            mount.display(),
            entry.fs_type
        ));
    }
    let dev = std::fs::metadata(&real)
        .map_err(|e| format!("{}: {e}", mount.display()))?
        .dev();
    for p in protected {
        match device_of(p.path) {
            Ok(other) if other == dev => {
                return Err(format!(
                    "{}: holds the {} ({}); volsnap must write there while the data is frozen",
                    mount.display(),
                    p.what,
                    p.path.display()
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(format!("{} {}: {e}", p.what, p.path.display())),
        }
    }
    Ok((real, entry))
}

/// Why a filesystem of this type cannot be what a Cinder snapshot copies:
/// the kernel's views (proc, sysfs, cgroup, …) and memory (tmpfs, ramfs)
/// live on no volume, and FIFREEZE on them fails or means nothing.
fn not_on_a_volume(fs_type: &str) -> Option<&'static str> {
    const KERNEL: &[&str] = &[
        "proc",
        "sysfs",
        "devtmpfs",
        "devpts",
        "cgroup",
        "cgroup2",
        "debugfs",
        "tracefs",
        "securityfs",
        "pstore",
        "bpf",
        "configfs",
        "fusectl",
        "mqueue",
        "hugetlbfs",
        "binfmt_misc",
        "autofs",
        "efivarfs",
        "nsfs",
    ];
    if KERNEL.contains(&fs_type) {
        Some("a view of the kernel, on no volume")
    } else if matches!(fs_type, "tmpfs" | "ramfs") {
        Some("held in memory, on no volume")
    } else {
        None
    }
}

/// The mount that holds `path`: the longest mount point that is a prefix.
pub fn containing_mount<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries
        .iter()
        .rev()
        .filter(|e| path.starts_with(&e.mount_point))
        .max_by_key(|e| e.mount_point.as_os_str().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
35 22 0:30 / /run rw,nosuid shared:12 - tmpfs tmpfs rw,mode=755
98 22 7:0 / /srv/my\\040db rw,relatime shared:50 - xfs /dev/loop0 rw,attr2
99 98 7:1 / /srv/my\\040db/wal rw shared:51 - ext4 /dev/loop1 rw
";

    #[test]
    fn parses_mountinfo_with_escapes() {
        let entries = parse_mountinfo(SAMPLE.as_bytes()).unwrap();
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[2].mount_point, Path::new("/srv/my db"));
        assert_eq!((entries[2].major, entries[2].minor), (7, 0));
        assert_eq!(entries[2].fs_type, "xfs");
        assert_eq!(entries[2].source, "/dev/loop0");
        assert!(mount_at(&entries, Path::new("/srv/my db/wal")).is_some());
        assert!(mount_at(&entries, Path::new("/srv")).is_none());
        let holder = containing_mount(&entries, Path::new("/srv/my db/wal/x")).unwrap();
        assert_eq!(holder.source, "/dev/loop1");
        assert_eq!(
            containing_mount(&entries, Path::new("/etc"))
                .unwrap()
                .mount_point,
            Path::new("/")
        );
    }

    #[test]
    fn pseudo_filesystems_are_not_freezable() {
        let entries = parse_mountinfo(
            "22 1 0:4 / /proc rw - proc proc rw\n23 1 0:5 / /run rw - tmpfs tmpfs rw\n\
             24 1 0:6 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
                .as_bytes(),
        )
        .unwrap();
        for (mount, kind) in [
            ("/proc", "proc"),
            ("/run", "tmpfs"),
            ("/sys/fs/cgroup", "cgroup2"),
        ] {
            let e = check_freezable(Path::new(mount), &entries, &[]).unwrap_err();
            assert!(e.contains(&format!("is a {kind} filesystem")), "{e}");
        }
        for fs in ["ext4", "xfs", "btrfs"] {
            assert_eq!(not_on_a_volume(fs), None);
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_mountinfo("nonsense\n".as_bytes()).is_err());
    }
}

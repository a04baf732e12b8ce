//! Volume discovery: mount → block device → virtio serial → Cinder volume.
//!
//! Nova passes the Cinder volume id to a virtio-blk disk as its serial, cut
//! to 20 characters (the virtio-blk serial field's size), which Linux shows
//! in `/sys/block/<disk>/serial`. A partition's serial is its disk's. The
//! sysfs root is a parameter so this is tested on a fixture tree.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::mounts::MountEntry;

/// Where a mount's data lives, as far as the guest can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDevice {
    /// The whole disk's kernel name, e.g. `vdb`.
    pub disk: String,
    /// The virtio serial: the first 20 characters of the volume id.
    pub serial: String,
}

/// The disk behind a mount and its serial, read from `sys_root`
/// (`/sys` in production).
pub fn block_device(sys_root: &Path, mount: &MountEntry) -> Result<BlockDevice> {
    let link = sys_root
        .join("dev/block")
        .join(format!("{}:{}", mount.major, mount.minor));
    let mut dir = std::fs::canonicalize(&link).with_context(|| {
        format!(
            "{} ({}) is not on a block device ({} is missing)",
            mount.mount_point.display(),
            mount.source,
            link.display()
        )
    })?;
    if dir.join("partition").exists() {
        dir = dir
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| anyhow!("{} has no parent disk", dir.display()))?;
    }
    let disk = name_of(&dir);
    if disk.starts_with("dm-") || dir.join("dm").exists() {
        bail!(
            "{} is on device-mapper ({disk}): name its volume in [cinder.volumes]",
            mount.mount_point.display()
        );
    }
    let serial_path = dir.join("serial");
    let serial = std::fs::read_to_string(&serial_path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if serial.is_empty() {
        bail!(
            "{} is on {disk}, which has no serial ({} missing or empty); is it a Cinder volume on virtio-blk? Name its volume in [cinder.volumes]",
            mount.mount_point.display(),
            serial_path.display()
        );
    }
    Ok(BlockDevice { disk, serial })
}

fn name_of(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A volume as discovery needs it.
pub struct Candidate<'a> {
    pub id: &'a str,
    /// Server ids this volume is attached to.
    pub servers: Vec<&'a str>,
}

/// The one volume whose id starts with the serial; among several (an id
/// prefix clash), the one attached to `server_id`.
pub fn match_serial(
    serial: &str,
    server_id: Option<&str>,
    volumes: &[Candidate],
) -> Result<String> {
    let serial = serial.to_ascii_lowercase();
    let matches: Vec<&Candidate> = volumes
        .iter()
        .filter(|v| v.id.to_ascii_lowercase().starts_with(&serial))
        .collect();
    let chosen: Vec<&&Candidate> = match (matches.len(), server_id) {
        (0, _) => {
            bail!("no volume of this project has an id starting with the disk serial {serial}")
        }
        (1, _) => return Ok(matches[0].id.to_string()),
        (_, Some(server)) => matches
            .iter()
            .filter(|v| v.servers.contains(&server))
            .collect(),
        (_, None) => Vec::new(),
    };
    match chosen[..] {
        [one] => Ok(one.id.to_string()),
        _ => bail!(
            "several volumes match the disk serial {serial} ({}); name the volume in [cinder.volumes]",
            matches.iter().map(|v| v.id).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The volume a mount lives on, among the project's volumes: the disk's
/// serial, matched against the volume ids.
pub fn volume_of(
    sys_root: &Path,
    mount: &MountEntry,
    volumes: &[crate::openstack::cinder::Volume],
) -> Result<(String, BlockDevice)> {
    let device = block_device(sys_root, mount)?;
    let candidates: Vec<Candidate> = volumes
        .iter()
        .map(|v| Candidate {
            id: &v.id,
            servers: v
                .attachments
                .iter()
                .filter_map(|a| a.server_id.as_deref())
                .collect(),
        })
        .collect();
    let server = server_id(sys_root);
    let id = match_serial(&device.serial, server.as_deref(), &candidates).with_context(|| {
        format!(
            "discovering the volume of {} ({})",
            mount.mount_point.display(),
            device.disk
        )
    })?;
    Ok((id, device))
}

/// This server's Nova id as the guest sees it: KVM guests get it as the
/// SMBIOS system UUID.
pub fn server_id(sys_root: &Path) -> Option<String> {
    let path: PathBuf = sys_root.join("class/dmi/id/product_uuid");
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sys")
    }

    fn entry(major: u32, minor: u32, mount: &str) -> MountEntry {
        MountEntry {
            major,
            minor,
            mount_point: PathBuf::from(mount),
            fs_type: "ext4".into(),
            source: "/dev/x".into(),
        }
    }

    #[test]
    fn whole_virtio_disk() {
        let dev = block_device(&fixture(), &entry(253, 16, "/var/lib/mysql")).unwrap();
        assert_eq!(
            dev,
            BlockDevice {
                disk: "vdb".into(),
                serial: "0b6f5a2e-5b4c-4b8e-9".into()
            }
        );
    }

    #[test]
    fn partition_uses_its_disks_serial() {
        let dev = block_device(&fixture(), &entry(253, 33, "/srv/pg")).unwrap();
        assert_eq!(dev.disk, "vdc");
        assert_eq!(dev.serial, "7d2c1e90-3f4a-4c5b-8");
    }

    #[test]
    fn disk_without_serial_is_a_clear_error() {
        let err = block_device(&fixture(), &entry(7, 0, "/mnt/loop")).unwrap_err();
        assert!(
            err.to_string().contains("loop0, which has no serial"),
            "{err:#}"
        );
        let err = block_device(&fixture(), &entry(8, 99, "/nowhere")).unwrap_err();
        assert!(
            err.to_string().contains("is not on a block device"),
            "{err:#}"
        );
    }

    #[test]
    fn serial_matches_a_volume() {
        let vols = [
            Candidate {
                id: "0b6f5a2e-5b4c-4b8e-9c1a-2f3e4d5c6b7a",
                servers: vec!["srv-1"],
            },
            Candidate {
                id: "7d2c1e90-3f4a-4c5b-8d6e-1a2b3c4d5e6f",
                servers: vec![],
            },
        ];
        assert_eq!(
            match_serial("0b6f5a2e-5b4c-4b8e-9", None, &vols).unwrap(),
            "0b6f5a2e-5b4c-4b8e-9c1a-2f3e4d5c6b7a"
        );
        assert!(match_serial("ffffffff-5b4c-4b8e-9", None, &vols).is_err());
        let clash = [
            Candidate {
                id: "0b6f5a2e-5b4c-4b8e-9c1a-000000000001",
                servers: vec!["srv-1"],
            },
            Candidate {
                id: "0b6f5a2e-5b4c-4b8e-9c1a-000000000002",
                servers: vec!["srv-2"],
            },
        ];
        assert_eq!(
            match_serial("0b6f5a2e-5b4c-4b8e-9", Some("srv-2"), &clash).unwrap(),
            "0b6f5a2e-5b4c-4b8e-9c1a-000000000002"
        );
        let err = match_serial("0b6f5a2e-5b4c-4b8e-9", None, &clash).unwrap_err();
        assert!(err.to_string().contains("several volumes match"), "{err:#}");
    }

    #[test]
    fn server_id_from_smbios() {
        assert_eq!(
            server_id(&fixture()).as_deref(),
            Some("5c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f")
        );
    }
}

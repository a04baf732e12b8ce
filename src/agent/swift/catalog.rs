//! This host's backups in Swift as stored: the client, the listing, a
//! backup's metadata and the identities that open it. Shared by the Swift
//! strategy and the archive (point-in-time recovery), below both.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _, Result};
use serde::Serialize;

use crate::config::Settings;
use crate::openstack::swift::Swift;
use crate::openstack::{self, Error as ApiError};
use crate::stream::{BackupMeta, BackupName, Encryption, Identities, META_PREFIX};

pub fn connect(settings: &Settings) -> Result<Swift> {
    let session = openstack::connect(&settings.openstack)?;
    openstack::swift(&session)
}

/// One backup in a listing.
#[derive(Debug, Serialize)]
pub struct Listed {
    pub name: String,
    pub created: String,
    pub size: Option<u64>,
    pub stored_size: u64,
    pub datastore: Option<String>,
    pub compression: Option<String>,
    pub encryption: Option<String>,
}

/// This host's backups, newest first, of every datastore.
pub(crate) fn backups(settings: &Settings, swift: &Swift) -> Result<Vec<(BackupName, Listed)>> {
    let s = &settings.swift;
    let host = crate::agent::cinder::hostname();
    let prefix = BackupName::host_prefix(&s.prefix, &host);
    let entries = match swift.list_objects(&s.container, &prefix) {
        Ok(entries) => entries,
        Err(e) if e.is_not_found() => Vec::new(),
        Err(e) => return Err(anyhow!(e).context(format!("listing {}", s.container))),
    };
    let mut out = Vec::new();
    for entry in entries {
        let Some(name) = BackupName::parse(&s.prefix, &entry.name) else {
            continue;
        };
        let info = swift
            .head_object(&s.container, &entry.name)
            .map_err(|e| anyhow!(e))?;
        let get = |k: &str| info.metadata.get(k).cloned();
        out.push((
            name.clone(),
            Listed {
                created: name.created.to_string(),
                name: entry.name.clone(),
                size: get("volsnap-size").and_then(|v| v.parse().ok()),
                stored_size: info.size,
                datastore: get("volsnap-datastore"),
                compression: get("volsnap-compression"),
                encryption: get("volsnap-encryption"),
            },
        ));
    }
    out.sort_by_key(|(name, _)| std::cmp::Reverse(name.created));
    Ok(out)
}

/// This host's backups of the configured datastore, newest first: what
/// `--latest` and retention choose from. Another datastore's backups in the
/// same container (another configuration of this host) are never theirs.
pub(crate) fn own_backups(settings: &Settings, swift: &Swift) -> Result<Vec<(BackupName, Listed)>> {
    let datastore = settings.datastore.name();
    Ok(backups(settings, swift)?
        .into_iter()
        .filter(|(_, l)| l.datastore.as_deref() == Some(datastore))
        .collect())
}

pub(crate) fn read_meta(swift: &Swift, container: &str, name: &str) -> Result<BackupMeta> {
    let info = swift
        .head_object(container, name)
        .map_err(|e: ApiError| anyhow!(e))
        .with_context(|| format!("backup {container}/{name}"))?;
    let headers: Vec<(String, String)> = info
        .metadata
        .iter()
        .map(|(k, v)| (format!("{META_PREFIX}{k}"), v.clone()))
        .collect();
    BackupMeta::from_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .with_context(|| format!("{container}/{name}"))
}

pub(crate) fn identities(
    settings: &Settings,
    meta: &BackupMeta,
    identity: Option<&Path>,
) -> Result<Option<Identities>> {
    if meta.encryption == Encryption::None {
        return Ok(None);
    }
    let path: Option<PathBuf> = identity
        .map(Path::to_path_buf)
        .or_else(|| settings.swift.age_identity_file.clone());
    match path {
        Some(p) => Ok(Some(Identities::from_file(&p)?)),
        None => Ok(None), // restore_into says which recipients it was encrypted to
    }
}

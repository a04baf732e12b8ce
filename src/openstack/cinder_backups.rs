//! Cinder's backup API (Block Storage v3 `/backups`): copies of a volume or
//! snapshot made by the cloud's cinder-backup service into another store
//! (Swift, Ceph, NFS, S3), full or incremental; restores into a new volume;
//! the project's backup quotas.
//!
//! Its own microversion: backup metadata needs 3.43, which many clouds have
//! but the rest of volsnap does not require (see [`super::cinder::MICROVERSION`]).
//! [`Cinder::backup_api`] asks the cloud once; below 3.43 volsnap's labels
//! live in the backup's description only (updatable from 3.9).

use std::collections::BTreeMap;
use std::time::Instant;

use reqwest::{Method, Url};
use serde::{Deserialize, Serialize};

use super::cinder::{seg, wait, Cinder, Schedule, Target, Until};
use super::http::Error;

/// Backup metadata (create, update, show).
pub const METADATA_MICROVERSION: &str = "volume 3.43";
/// Name and description updates; every Cinder since Ocata.
pub const PLAIN_MICROVERSION: &str = "volume 3.9";

/// What the cloud's backup API offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupApi {
    /// 3.43 or later: backups carry metadata.
    pub metadata: bool,
}

impl BackupApi {
    fn microversion(self) -> &'static str {
        if self.metadata {
            METADATA_MICROVERSION
        } else {
            PLAIN_MICROVERSION
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Backup {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub status: String,
    #[serde(default)]
    pub volume_id: String,
    #[serde(default)]
    pub snapshot_id: Option<String>,
    /// GiB: the size of the volume it copies.
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub object_count: Option<u64>,
    #[serde(default)]
    pub is_incremental: bool,
    #[serde(default)]
    pub has_dependent_backups: bool,
    #[serde(default)]
    pub container: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub data_timestamp: Option<String>,
    #[serde(default)]
    pub fail_reason: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// What `POST /backups` gets.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NewBackup {
    pub volume_id: String,
    pub snapshot_id: String,
    pub name: String,
    pub description: String,
    pub incremental: bool,
    /// Needed for a volume that is `in-use` (harmless for a snapshot's).
    pub force: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Sent only when [`BackupApi::metadata`].
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// One quota of the project: `limit` −1 is unlimited.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct QuotaUsage {
    pub limit: i64,
    #[serde(default)]
    pub in_use: i64,
    #[serde(default)]
    pub reserved: i64,
}

impl QuotaUsage {
    /// How many more fit, `None` when unlimited.
    pub fn room(&self) -> Option<i64> {
        (self.limit >= 0).then(|| self.limit - self.in_use - self.reserved)
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct BackupQuotas {
    pub backups: QuotaUsage,
    pub backup_gigabytes: QuotaUsage,
}

impl Cinder {
    /// The backup API this cloud offers: its version document says the
    /// maximum microversion (`GET /v3/`, beside the project's endpoint).
    pub fn backup_api(&self) -> Result<BackupApi, Error> {
        let url = self.versions_url();
        let req = super::http::Request::new(Method::GET, url);
        let body: VersionsBody = self.call(req)?;
        let max = body
            .versions
            .iter()
            .chain(body.version.iter())
            .filter_map(|v| parse_version(&v.version))
            .max()
            .unwrap_or((3, 0));
        Ok(BackupApi {
            metadata: max >= (3, 43),
        })
    }

    /// `http://host/v3/PROJECT` → `http://host/v3/`.
    fn versions_url(&self) -> Url {
        let mut url = self.endpoint().clone();
        let path = url.path().trim_end_matches('/').to_string();
        let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
        url.set_path(&format!("{parent}/"));
        url.set_query(None);
        url
    }

    pub fn create_backup(&self, api: BackupApi, new: &NewBackup) -> Result<Backup, Error> {
        let mut body = serde_json::to_value(new).expect("backup body");
        if !api.metadata {
            body.as_object_mut().expect("object").remove("metadata");
        }
        let req = self
            .request_at(Method::POST, "backups", &[], api.microversion())
            .json(&serde_json::json!({ "backup": body }));
        let created: BackupBody<Created> = self.call(req)?;
        // The 202 carries only id, name and links.
        Ok(Backup {
            id: created.backup.id,
            name: created.backup.name,
            description: Some(new.description.clone()),
            status: "creating".into(),
            volume_id: new.volume_id.clone(),
            snapshot_id: Some(new.snapshot_id.clone()),
            size: 0,
            object_count: None,
            is_incremental: new.incremental,
            has_dependent_backups: false,
            container: new.container.clone(),
            created_at: None,
            data_timestamp: None,
            fail_reason: None,
            metadata: new.metadata.clone(),
        })
    }

    pub fn backup(&self, api: BackupApi, id: &str) -> Result<Backup, Error> {
        let req = self.request_at(
            Method::GET,
            &format!("backups/{}", seg(id)),
            &[],
            api.microversion(),
        );
        Ok(self.call::<BackupBody<Backup>>(req)?.backup)
    }

    /// Every backup of the project, with details, following `next` links.
    pub fn backups(&self, api: BackupApi) -> Result<Vec<Backup>, Error> {
        let mut all: Vec<Backup> = Vec::new();
        loop {
            let marker = all.last().map(|b| b.id.clone());
            let mut query = Vec::new();
            if let Some(m) = &marker {
                query.push(("marker", m.as_str()));
            }
            let req = self.request_at(Method::GET, "backups/detail", &query, api.microversion());
            let page: BackupsPage = self.call(req)?;
            let more =
                page.backups_links.iter().any(|l| l.rel == "next") && !page.backups.is_empty();
            all.extend(page.backups);
            if !more {
                return Ok(all);
            }
        }
    }

    /// Replaces the description and (from 3.43) adds or replaces metadata
    /// keys. Setting the same values again changes nothing: safe to retry.
    pub fn update_backup(
        &self,
        api: BackupApi,
        id: &str,
        description: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let mut body = serde_json::json!({ "description": description });
        if api.metadata {
            body["metadata"] = serde_json::to_value(metadata).expect("metadata");
        }
        let req = self
            .request_at(
                Method::PUT,
                &format!("backups/{}", seg(id)),
                &[],
                api.microversion(),
            )
            .json(&serde_json::json!({ "backup": body }))
            .idempotent(true);
        self.session().send(&req).map(drop)
    }

    /// Cinder answers 400 for a backup that has incrementals, or one that is
    /// not `available` or `error`.
    pub fn delete_backup(&self, id: &str) -> Result<(), Error> {
        let req = self.request_at(
            Method::DELETE,
            &format!("backups/{}", seg(id)),
            &[],
            PLAIN_MICROVERSION,
        );
        self.session().send(&req).map(drop)
    }

    /// Restores into a new volume (Cinder creates it, status
    /// `restoring-backup` until done); returns the new volume's id.
    pub fn restore_backup(&self, id: &str, name: &str) -> Result<String, Error> {
        let req = self
            .request_at(
                Method::POST,
                &format!("backups/{}/restore", seg(id)),
                &[],
                PLAIN_MICROVERSION,
            )
            .json(&serde_json::json!({ "restore": { "name": name } }));
        Ok(self.call::<RestoreBody>(req)?.restore.volume_id)
    }

    /// Polls a backup until `target`, `error`, or the deadline.
    pub fn wait_backup(
        &self,
        api: BackupApi,
        id: &str,
        target: Target,
        until: &Until,
    ) -> anyhow::Result<Option<Backup>> {
        let path = format!("backups/{}", seg(id));
        wait(&format!("backup {id}"), target, until, |timeout| {
            let req = self
                .request_at(Method::GET, &path, &[], api.microversion())
                .timeout(timeout.min(self.session().http().request_timeout()))
                .no_retry();
            let b = self.call::<BackupBody<Backup>>(req)?.backup;
            let status = b.status.clone();
            Ok((b, status))
        })
    }

    /// Waits, patiently, for a backup to be deleted.
    pub fn wait_backup_gone(&self, id: &str, deadline: Instant) -> anyhow::Result<()> {
        let until = Until {
            deadline,
            schedule: Schedule::PATIENT,
            stop: None,
            stats: None,
        };
        let api = BackupApi { metadata: false };
        self.wait_backup(api, id, Target::Gone, &until).map(drop)
    }

    /// The project's `backups` and `backup_gigabytes` quotas with usage.
    pub fn backup_quotas(&self, project_id: &str) -> Result<BackupQuotas, Error> {
        let req = self.request_at(
            Method::GET,
            &format!("os-quota-sets/{}", seg(project_id)),
            &[("usage", "true")],
            PLAIN_MICROVERSION,
        );
        Ok(self.call::<QuotaBody>(req)?.quota_set)
    }
}

/// `"3.71"` → `(3, 71)`.
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[derive(Debug, Deserialize)]
struct BackupBody<T> {
    backup: T,
}

#[derive(Debug, Deserialize)]
struct Created {
    id: String,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Link {
    #[serde(default)]
    rel: String,
}

#[derive(Debug, Deserialize)]
struct BackupsPage {
    backups: Vec<Backup>,
    #[serde(default)]
    backups_links: Vec<Link>,
}

#[derive(Debug, Deserialize)]
struct RestoreBody {
    restore: Restored,
}

#[derive(Debug, Deserialize)]
struct Restored {
    volume_id: String,
}

#[derive(Debug, Deserialize)]
struct QuotaBody {
    quota_set: BackupQuotas,
}

#[derive(Debug, Default, Deserialize)]
struct VersionsBody {
    #[serde(default)]
    versions: Vec<VersionDoc>,
    /// `GET /v3/` answers `{"versions": [...]}`; some proxies `{"version": {...}}`.
    #[serde(default)]
    version: Option<VersionDoc>,
}

#[derive(Debug, Deserialize)]
struct VersionDoc {
    #[serde(default)]
    version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_quotas() {
        assert_eq!(parse_version("3.71"), Some((3, 71)));
        assert_eq!(parse_version(""), None);
        assert!((3, 43) <= parse_version("3.43").unwrap());
        let q = QuotaUsage {
            limit: 10,
            in_use: 7,
            reserved: 1,
        };
        assert_eq!(q.room(), Some(2));
        assert_eq!(QuotaUsage { limit: -1, ..q }.room(), None);
        let body: QuotaBody = serde_json::from_str(
            r#"{"quota_set": {"id": "p", "backups": {"limit": -1, "in_use": 2, "reserved": 0, "allocated": 0},
               "backup_gigabytes": {"limit": 1000, "in_use": 2, "reserved": 0}, "volumes": {"limit": 10}}}"#,
        )
        .unwrap();
        assert_eq!(body.quota_set.backup_gigabytes.room(), Some(998));
    }
}

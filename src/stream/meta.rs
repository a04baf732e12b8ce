//! The manifest's metadata: what a restore needs to read the stored stream
//! back and check it, as `X-Object-Meta-Volsnap-*` headers.
//!
//! Swift stores user metadata per object and returns it on HEAD and GET,
//! title-cased (`X-Object-Meta-Volsnap-Sha256`); names are compared here
//! without regard to case. Swift's default limits shape the encoding: a
//! value of at most 256 bytes, 90 items, 4096 bytes in all (names after the
//! prefix plus values). Values are printable ASCII: anything else from a
//! hook is replaced by `?`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};

use super::backup::{BackupPlan, BackupSummary};
use super::compress::{compression_name, parse_compression};
use crate::config::Compression;

/// What every metadata header name starts with.
pub const META_PREFIX: &str = "X-Object-Meta-";

const MAX_VALUE: usize = 256;
const MAX_TOTAL: usize = 4096;
const MAX_COUNT: usize = 90;
/// Recipients recorded one per key; more than this and the rest is only
/// counted, to leave room within Swift's limits.
const MAX_RECIPIENTS_LISTED: usize = 16;

/// How the stored stream is encrypted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encryption {
    None,
    /// Encrypted with age to these recipients: `age1…` public keys, or SSH
    /// key fingerprints. Public, never keys.
    Age {
        recipients: Vec<String>,
    },
}

/// Everything the manifest records about a backup.
#[derive(Clone, Debug, PartialEq)]
pub struct BackupMeta {
    /// `mysql`, `postgresql`, `redis`, `none`.
    pub datastore: String,
    /// From the hook's `datastore_version=` output, when it printed one.
    pub datastore_version: Option<String>,
    /// The volsnap that wrote the backup.
    pub volsnap_version: String,
    pub compression: Compression,
    pub encryption: Encryption,
    /// Lower-case hex SHA-256 of the plain stream (what the hook wrote).
    pub sha256: String,
    /// Bytes in the plain stream.
    pub size: u64,
    /// Bytes in the stored object (compressed, encrypted).
    pub stored_size: u64,
    pub segments: u32,
    pub duration: Duration,
    /// The hook's other `key=value` output (binlog position, WAL LSN…),
    /// stored as `volsnap-hook-<key>` while the limits leave room.
    pub hook: BTreeMap<String, String>,
}

impl BackupMeta {
    /// The metadata of a finished backup. `hook_values` is the hook's
    /// `key=value` output: `datastore_version` goes to its own field.
    pub fn new(
        datastore: &str,
        hook_values: &BTreeMap<String, String>,
        plan: &BackupPlan,
        summary: &BackupSummary,
    ) -> BackupMeta {
        let mut hook = hook_values.clone();
        let datastore_version = hook.remove("datastore_version");
        BackupMeta {
            datastore: datastore.to_string(),
            datastore_version,
            volsnap_version: env!("CARGO_PKG_VERSION").to_string(),
            compression: plan.compression,
            encryption: match &plan.recipients {
                None => Encryption::None,
                Some(r) => Encryption::Age {
                    recipients: r.labels().to_vec(),
                },
            },
            sha256: summary.sha256.clone(),
            size: summary.plain_bytes,
            stored_size: summary.stored_bytes,
            segments: summary.segments.len() as u32,
            // What the header can hold: milliseconds.
            duration: Duration::from_millis(summary.duration.as_millis() as u64),
            hook,
        }
    }

    /// The headers to send with the manifest PUT, names in Swift's title case.
    /// Hook values that do not fit Swift's limits are left out, with a warning.
    pub fn to_headers(&self) -> Vec<(String, String)> {
        let mut items: Vec<(String, String)> = vec![
            ("volsnap-datastore".into(), self.datastore.clone()),
            ("volsnap-version".into(), self.volsnap_version.clone()),
            (
                "volsnap-compression".into(),
                compression_name(self.compression).into(),
            ),
        ];
        if let Some(v) = &self.datastore_version {
            items.push(("volsnap-datastore-version".into(), v.clone()));
        }
        match &self.encryption {
            Encryption::None => items.push(("volsnap-encryption".into(), "none".into())),
            Encryption::Age { recipients } => {
                items.push(("volsnap-encryption".into(), "age".into()));
                items.push(("volsnap-recipients".into(), recipients.len().to_string()));
                for (i, r) in recipients.iter().take(MAX_RECIPIENTS_LISTED).enumerate() {
                    items.push((format!("volsnap-recipient-{}", i + 1), r.clone()));
                }
            }
        }
        items.extend([
            ("volsnap-sha256".into(), self.sha256.clone()),
            ("volsnap-size".into(), self.size.to_string()),
            ("volsnap-stored-size".into(), self.stored_size.to_string()),
            ("volsnap-segments".into(), self.segments.to_string()),
            (
                "volsnap-duration".into(),
                format!("{:.3}", self.duration.as_secs_f64()),
            ),
        ]);
        let mut total: usize = items.iter().map(|(k, v)| k.len() + v.len()).sum();
        for (key, value) in &self.hook {
            let name = format!("volsnap-hook-{}", header_token(key));
            let value = header_value(value);
            if total + name.len() + value.len() > MAX_TOTAL - 256 || items.len() >= MAX_COUNT - 8 {
                log::warn!("hook value {key:?} left out of the metadata: Swift's limits");
                continue;
            }
            total += name.len() + value.len();
            items.push((name, value));
        }
        items
            .into_iter()
            .map(|(k, v)| (format!("{META_PREFIX}{}", title_case(&k)), header_value(&v)))
            .collect()
    }

    /// Reads the metadata back from a HEAD's (or GET's) headers, in any case.
    pub fn from_headers<'h>(
        headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    ) -> Result<BackupMeta> {
        let prefix = META_PREFIX.to_ascii_lowercase();
        let mut meta: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            if let Some(key) = name.strip_prefix(&prefix) {
                meta.insert(key.to_string(), value.trim().to_string());
            }
        }
        let sha256 = meta.remove("volsnap-sha256").ok_or_else(|| {
            anyhow!("not a volsnap backup: no {META_PREFIX}Volsnap-Sha256 header")
        })?;
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("{META_PREFIX}Volsnap-Sha256 {sha256:?} is not a SHA-256 in hex");
        }
        fn take(meta: &mut BTreeMap<String, String>, key: &str) -> Result<String> {
            meta.remove(key)
                .ok_or_else(|| anyhow!("{META_PREFIX}{} is missing", title_case(key)))
        }
        let number = |key: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| anyhow!("{META_PREFIX}{}: {v:?} is not a number", title_case(key)))
        };
        let size = number("volsnap-size", take(&mut meta, "volsnap-size")?)?;
        let compression_text = take(&mut meta, "volsnap-compression")?;
        let compression = parse_compression(&compression_text).ok_or_else(|| {
            anyhow!(
                "{META_PREFIX}Volsnap-Compression {compression_text:?}: this volsnap knows \
                 zstd, gzip and none"
            )
        })?;
        let encryption = match take(&mut meta, "volsnap-encryption")?.as_str() {
            "none" => Encryption::None,
            "age" => {
                let mut recipients: Vec<(u32, String)> = Vec::new();
                let keys: Vec<String> = meta
                    .keys()
                    .filter(|k| k.starts_with("volsnap-recipient-"))
                    .cloned()
                    .collect();
                for key in keys {
                    let n = key["volsnap-recipient-".len()..]
                        .parse()
                        .unwrap_or(u32::MAX);
                    recipients.push((n, meta.remove(&key).unwrap_or_default()));
                }
                recipients.sort();
                Encryption::Age {
                    recipients: recipients.into_iter().map(|(_, r)| r).collect(),
                }
            }
            other => {
                bail!("{META_PREFIX}Volsnap-Encryption {other:?}: this volsnap knows age and none")
            }
        };
        let datastore = take(&mut meta, "volsnap-datastore")?;
        let volsnap_version = take(&mut meta, "volsnap-version")?;
        let stored_size = match meta.remove("volsnap-stored-size") {
            Some(v) => number("volsnap-stored-size", v)?,
            None => 0,
        };
        let segments = match meta.remove("volsnap-segments") {
            Some(v) => number("volsnap-segments", v)? as u32,
            None => 0,
        };
        let duration = meta
            .remove("volsnap-duration")
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or_default();
        let datastore_version = meta.remove("volsnap-datastore-version");
        let hook = meta
            .into_iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("volsnap-hook-")
                    .map(|k| (k.replace('-', "_"), v))
            })
            .collect();
        Ok(BackupMeta {
            datastore,
            datastore_version,
            volsnap_version,
            compression,
            encryption,
            sha256: sha256.to_ascii_lowercase(),
            size,
            stored_size,
            segments,
            duration,
            hook,
        })
    }
}

/// `volsnap-sha256` → `Volsnap-Sha256`, as Swift returns names.
fn title_case(name: &str) -> String {
    name.split('-')
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => {
                    first.to_ascii_uppercase().to_string() + &chars.as_str().to_ascii_lowercase()
                }
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// A hook key as a header name part: lower-case letters, digits and `-`.
fn header_token(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .take(64)
        .collect()
}

/// Printable ASCII, trimmed, at most 256 bytes.
fn header_value(value: &str) -> String {
    let clean: String = value
        .trim()
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .take(MAX_VALUE)
        .collect();
    clean.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BackupMeta {
        BackupMeta {
            datastore: "mysql".into(),
            datastore_version: Some("10.11.6".into()),
            volsnap_version: "0.1.0".into(),
            compression: Compression::Zstd,
            encryption: Encryption::Age {
                recipients: vec![
                    "age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq".into(),
                    "ssh-ed25519 SHA256:abc".into(),
                ],
            },
            sha256: "ab".repeat(32),
            size: 123_456_789,
            stored_size: 45_678,
            segments: 3,
            duration: Duration::from_millis(12_345),
            hook: BTreeMap::from([("binlog_pos".to_string(), "mysql-bin.000003:154".to_string())]),
        }
    }

    #[test]
    fn headers_round_trip_in_any_case() {
        let meta = sample();
        let headers = meta.to_headers();
        assert!(headers.contains(&("X-Object-Meta-Volsnap-Sha256".to_string(), "ab".repeat(32))));
        assert!(headers.contains(&(
            "X-Object-Meta-Volsnap-Hook-Binlog-Pos".to_string(),
            "mysql-bin.000003:154".to_string()
        )));
        assert_eq!(
            BackupMeta::from_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .unwrap(),
            meta
        );
        let lower: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .chain([(
                "content-type".to_string(),
                "application/octet-stream".to_string(),
            )])
            .collect();
        assert_eq!(
            BackupMeta::from_headers(lower.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap(),
            meta
        );
    }

    #[test]
    fn unencrypted_says_none_and_names_no_key() {
        let mut meta = sample();
        meta.encryption = Encryption::None;
        meta.datastore_version = None;
        let headers = meta.to_headers();
        assert!(headers.contains(&(
            "X-Object-Meta-Volsnap-Encryption".to_string(),
            "none".to_string()
        )));
        assert!(!headers.iter().any(|(k, _)| k.contains("Recipient")));
        let back = BackupMeta::from_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .unwrap();
        assert_eq!(back, meta);
    }

    #[test]
    fn values_stay_within_swift_limits() {
        let mut meta = sample();
        meta.datastore_version = Some("ver\nsion\u{e9}".to_string() + &"x".repeat(500));
        for i in 0..100 {
            meta.hook.insert(format!("key{i}"), "v".repeat(200));
        }
        let many = meta.to_headers();
        assert!(many.len() < 30, "{}", many.len());
        for i in 0..100 {
            meta.hook.insert(format!("k{i}"), "v".into());
        }
        let headers = meta.to_headers();
        assert!(headers.len() <= 90);
        let total: usize = headers
            .iter()
            .map(|(k, v)| k.len() - META_PREFIX.len() + v.len())
            .sum();
        assert!(total <= 4096, "{total}");
        let version = &headers
            .iter()
            .find(|(k, _)| k == "X-Object-Meta-Volsnap-Datastore-Version")
            .unwrap()
            .1;
        assert!(version.starts_with("ver?sion?x"), "{version}");
        assert_eq!(version.len(), 256);
    }

    #[test]
    fn missing_or_bad_fields_are_named() {
        let err = BackupMeta::from_headers([("X-Object-Meta-Other", "1")]).unwrap_err();
        assert!(err.to_string().contains("not a volsnap backup"), "{err}");
        let mut headers = sample().to_headers();
        headers.retain(|(k, _)| k != "X-Object-Meta-Volsnap-Size");
        let err = BackupMeta::from_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .unwrap_err();
        assert!(err.to_string().contains("Volsnap-Size is missing"), "{err}");
        let mut headers = sample().to_headers();
        for (k, v) in &mut headers {
            if k == "X-Object-Meta-Volsnap-Compression" {
                *v = "xz".into();
            }
        }
        let err = BackupMeta::from_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .unwrap_err();
        assert!(err.to_string().contains("\"xz\""), "{err}");
    }
}

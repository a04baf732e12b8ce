//! One small file stored whole as one object (a WAL segment; a binlog file
//! next): the format of a backup's stream — compressed, age-encrypted when
//! recipients are configured, the plain SHA-256 and size in the metadata —
//! without segments, so `swift download`, `age -d` and `zstd -d` open it too.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::compress::Compressor;
use super::crypt::{Identities, Recipients};
use super::meta::{BackupMeta, Encryption, META_PREFIX};
use super::progress::Progress;
use super::restore::{restore_into, Verified};
use crate::config::Compression;

/// A file ready to PUT: the stored bytes and the headers that describe them.
pub struct Sealed {
    pub stored: Vec<u8>,
    pub meta: BackupMeta,
}

impl Sealed {
    /// The metadata as Swift's `X-Object-Meta-*` keys without the prefix,
    /// with `extra` (lower-case keys) added.
    pub fn metadata(&self, extra: &[(&str, String)]) -> std::collections::BTreeMap<String, String> {
        let mut map: std::collections::BTreeMap<String, String> = self
            .meta
            .to_headers()
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(META_PREFIX)?.to_ascii_lowercase(), v)))
            .collect();
        for (k, v) in extra {
            map.insert((*k).to_string(), v.clone());
        }
        map
    }
}

/// The plain SHA-256 of `plain`, lower-case hex.
pub fn sha256_hex(plain: &[u8]) -> String {
    super::hex(&Sha256::digest(plain))
}

/// Compresses and encrypts `plain` as a backup's stream would be.
pub fn seal(
    plain: &[u8],
    datastore: &str,
    compression: Compression,
    level: i32,
    recipients: Option<&Recipients>,
) -> Result<Sealed> {
    let sha256 = sha256_hex(plain);
    let mut stored = Vec::with_capacity(plain.len() / 2 + 1024);
    match recipients {
        None => {
            let mut c = Compressor::new(&mut stored, compression, level)?;
            c.write_all(plain)?;
            c.finish()?;
        }
        Some(r) => {
            let mut enc = r.encrypt(&mut stored)?;
            let mut c = Compressor::new(&mut enc, compression, level)?;
            c.write_all(plain)?;
            c.finish()?;
            enc.finish().context("finishing the age stream")?;
        }
    }
    let meta = BackupMeta {
        datastore: datastore.to_string(),
        datastore_version: None,
        volsnap_version: env!("CARGO_PKG_VERSION").to_string(),
        compression,
        encryption: match recipients {
            None => Encryption::None,
            Some(r) => Encryption::Age {
                recipients: r.labels().to_vec(),
            },
        },
        sha256,
        size: plain.len() as u64,
        stored_size: stored.len() as u64,
        segments: 0,
        duration: Duration::ZERO,
        hook: Default::default(),
    };
    Ok(Sealed { stored, meta })
}

/// Reads the metadata back from Swift's `X-Object-Meta-*` keys (without
/// the prefix, as `ObjectInfo::metadata` holds them).
pub fn meta_from_metadata(
    metadata: &std::collections::BTreeMap<String, String>,
) -> Result<BackupMeta> {
    let headers: Vec<(String, String)> = metadata
        .iter()
        .map(|(k, v)| (format!("{META_PREFIX}{k}"), v.clone()))
        .collect();
    BackupMeta::from_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// Decrypts and decompresses `stored` into `out`, checking the SHA-256 and
/// size `meta` records; `out` gets the last bytes only once they matched.
pub fn open<R: Read, W: Write + ?Sized>(
    stored: R,
    out: &mut W,
    meta: &BackupMeta,
    identities: Option<&Identities>,
) -> Result<Verified> {
    restore_into(
        stored,
        out,
        meta,
        identities,
        &mut Progress::hidden("fetch"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_objects_open_and_a_damaged_one_fails() {
        let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 7) as u8).collect();
        let id = age::x25519::Identity::generate();
        let recipients = Recipients::parse(&id.to_public().to_string(), "test").unwrap();
        for r in [None, Some(&recipients)] {
            for c in [Compression::Zstd, Compression::Gzip, Compression::None] {
                let level = if c == Compression::None { 0 } else { 3 };
                let sealed = seal(&plain, "postgresql", c, level, r).unwrap();
                let metadata = sealed.metadata(&[("volsnap-wal-written", "x".into())]);
                assert_eq!(metadata["volsnap-wal-written"], "x");
                let meta = meta_from_metadata(&metadata).unwrap();
                assert_eq!(meta, sealed.meta);
                use age::secrecy::ExposeSecret;
                let ids =
                    Identities::parse(id.to_string().expose_secret(), std::path::Path::new("k"))
                        .unwrap();
                let mut out = Vec::new();
                open(&sealed.stored[..], &mut out, &meta, Some(&ids)).unwrap();
                assert_eq!(out, plain);
                let mut bad = sealed.stored.clone();
                let at = bad.len() / 2;
                bad[at] ^= 1;
                assert!(open(&bad[..], &mut Vec::new(), &meta, Some(&ids)).is_err());
            }
        }
    }
}

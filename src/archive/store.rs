//! The archive in Swift: one object per WAL file, named
//! `PREFIX/HOST/wal/NAME` (the WAL file's own name, so a file shipped twice
//! is the same object), or per MariaDB binary log, `PREFIX/HOST/binlog/NAME`,
//! stored as [`crate::stream::object`] stores it.

use std::time::SystemTime;

use crate::time::Timestamp;
use anyhow::{anyhow, Context, Result};

use crate::config::Settings;
use crate::openstack::swift::{ObjectEntry, Swift};
use crate::stream::{self, object, BackupName, Identities, Recipients};

/// When the database last wrote the file (its modification time when
/// pushed or, for a binary log, when shipped: it was closed by then).
pub const WRITTEN_KEY: &str = "volsnap-wal-written";

pub struct Store {
    pub swift: Swift,
    pub container: String,
    /// `PREFIX/HOST/wal/` or `PREFIX/HOST/binlog/`.
    pub prefix: String,
}

/// Swift holds another file under the name: nothing is overwritten.
#[derive(Debug)]
pub struct Conflict(pub String);

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Conflict {}

/// What shipping one file came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Shipped {
    Uploaded,
    /// The same bytes were in Swift already (shipped before a kill, or
    /// archived twice by PostgreSQL): nothing uploaded.
    AlreadyThere,
}

impl Store {
    pub fn open(settings: &Settings) -> Result<Store> {
        let archive = settings
            .archive
            .as_ref()
            .ok_or_else(|| anyhow!("no [archive] section in {}", settings.path.display()))?;
        let swift = crate::agent::swift::catalog::connect(settings)?;
        let host = crate::agent::cinder::hostname();
        let log = match settings.datastore {
            crate::config::Datastore::Mysql => "binlog",
            _ => "wal",
        };
        Ok(Store {
            swift,
            container: archive.container.clone(),
            prefix: format!(
                "{}{log}/",
                BackupName::host_prefix(&settings.swift.prefix, &host)
            ),
        })
    }

    pub fn object(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Ships one file unless Swift holds it already. The same name with
    /// other content in Swift is an error: nothing is overwritten.
    pub fn ship(
        &self,
        name: &str,
        plain: &[u8],
        written: SystemTime,
        settings: &Settings,
        recipients: Option<&Recipients>,
    ) -> Result<Shipped> {
        let object_name = self.object(name);
        let sha256 = object::sha256_hex(plain);
        match self.swift.head_object(&self.container, &object_name) {
            Ok(info) => {
                let stored = info.metadata.get("volsnap-sha256").map(String::as_str);
                if stored == Some(sha256.as_str()) {
                    return Ok(Shipped::AlreadyThere);
                }
                return Err(Conflict(format!(
                    "{}/{object_name} exists with other content (SHA-256 {}, this \
                     file's {sha256}); nothing was overwritten and the file stays in the spool: \
                     two servers archive under one name, or the archive was tampered with",
                    self.container,
                    stored.unwrap_or("not recorded")
                ))
                .into());
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(anyhow!(e)).context(format!("HEAD {object_name}")),
        }
        let archive = settings.archive.as_ref().expect("checked in open");
        let sealed = object::seal(
            plain,
            settings.datastore.name(),
            archive.compression,
            archive.compression_level,
            recipients,
        )?;
        let written = Timestamp::try_from(written).unwrap_or(Timestamp::UNIX_EPOCH);
        let metadata = sealed.metadata(&[(WRITTEN_KEY, written.to_string())]);
        // put_object sends the MD5 as ETag and compares Swift's answer.
        self.swift
            .put_object(
                &self.container,
                &object_name,
                sealed.stored.into(),
                &metadata,
            )
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("PUT {}/{object_name}", self.container))?;
        Ok(Shipped::Uploaded)
    }

    /// Every archived file of this host, in name order.
    pub fn list(&self) -> Result<Vec<ObjectEntry>> {
        match self.swift.list_objects(&self.container, &self.prefix) {
            Ok(list) => Ok(list),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(anyhow!(e)).context(format!("listing {}", self.container)),
        }
    }

    /// Downloads one file, checked against its SHA-256; with when it was written.
    pub fn fetch(
        &self,
        name: &str,
        identities: Option<&Identities>,
    ) -> Result<(Vec<u8>, Option<Timestamp>)> {
        let object_name = self.object(name);
        let reader = self
            .swift
            .get_object(&self.container, &object_name)
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("GET {}/{object_name}", self.container))?;
        let meta = object::meta_from_metadata(&reader.info.metadata)
            .with_context(|| format!("{}/{object_name}", self.container))?;
        let written = reader
            .info
            .metadata
            .get(WRITTEN_KEY)
            .and_then(|t| t.parse::<Timestamp>().ok());
        let mut plain = Vec::with_capacity(meta.size as usize);
        stream::object::open(reader, &mut plain, &meta, identities)
            .with_context(|| format!("{}/{object_name}", self.container))?;
        Ok((plain, written))
    }
}

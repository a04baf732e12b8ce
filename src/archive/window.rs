//! What `volsnap list` says of the archive: the window a `restore --until`
//! can reach — from the end of this host's oldest base backup to the time
//! the last segment of the unbroken archive after it was written — and the
//! first gap, if the archive has one.

use std::collections::BTreeSet;

use anyhow::{anyhow, Result};

use crate::time::Timestamp;

pub use super::reach::Window;
use super::retention::WAL_START;
use super::store::{Store, WRITTEN_KEY};
use super::wal::{self, Segment};
use crate::config::Settings;
use crate::openstack::Swift;

/// The window from this host's oldest base of the datastore (`oldest`, a
/// manifest name, with its creation time).
pub fn window(
    settings: &Settings,
    swift: &Swift,
    oldest: Option<(&str, Timestamp)>,
) -> Result<Window> {
    if settings.datastore == crate::config::Datastore::Mysql {
        return super::binlog_window::window(settings, swift, oldest);
    }
    let store = Store::open(settings)?;
    let listed: BTreeSet<String> = store
        .list()?
        .into_iter()
        .filter_map(|e| e.name.strip_prefix(&store.prefix).map(str::to_string))
        .collect();
    let mut w = Window {
        log: "WAL",
        archived_files: listed.len(),
        ..Window::default()
    };
    let Some((base, created)) = oldest else {
        w.note = Some("no base backup: nothing to restore from".into());
        return Ok(w);
    };
    let meta = crate::agent::swift::catalog::read_meta(swift, &settings.swift.container, base)?;
    let finished = super::pitr::base_finished(created, &meta);
    w.from = Some(finished.to_string());
    let Some(start) = meta.hook.get(WAL_START).filter(|s| !s.is_empty()) else {
        w.note = Some(format!("{base} does not record where its WAL starts"));
        return Ok(w);
    };
    let start_name = start.clone();
    // The segment size is every segment's plain size.
    let Some(first) = listed
        .iter()
        .find(|n| wal::kind(n) == Some(wal::Kind::Segment) && n[8..] >= start_name[8..])
    else {
        w.note = Some("no WAL archived since the oldest base".into());
        return Ok(w);
    };
    let info = store
        .swift
        .head_object(&store.container, &store.object(first))
        .map_err(|e| anyhow!(e))?;
    let seg_size: u64 = info
        .metadata
        .get("volsnap-size")
        .and_then(|s| s.parse().ok())
        .filter(|s| wal::valid_segment_size(*s))
        .ok_or_else(|| anyhow!("{first}: no valid segment size recorded"))?;
    let mut seg = Segment::parse(first, seg_size).ok_or_else(|| anyhow!("{first}"))?;
    w.first_segment = Some(first.clone());
    while listed.contains(&seg.next().name(seg_size)) {
        seg = seg.next();
    }
    let last = seg.name(seg_size);
    let later = listed
        .iter()
        .filter_map(|n| Segment::parse(n, seg_size))
        .any(|s| s.timeline == seg.timeline && s.number > seg.number + 1);
    if later {
        w.gap = Some(seg.next().name(seg_size));
    }
    let info = store
        .swift
        .head_object(&store.container, &store.object(&last))
        .map_err(|e| anyhow!(e))?;
    w.to = info.metadata.get(WRITTEN_KEY).cloned();
    w.last_segment = Some(last);
    Ok(w)
}

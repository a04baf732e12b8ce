//! The archive's gauges for node_exporter's textfile collector: written
//! after every pass to `volsnap-archive.prom` beside `metrics_file` (the
//! backup owns that file), so the lag shows while Swift is away.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::report::Report;
use super::spool;
use crate::config::Settings;

pub fn path(metrics_file: &Path) -> PathBuf {
    metrics_file.with_file_name("volsnap-archive.prom")
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub fn write(settings: &Settings, report: &Report) {
    let Some(archive) = &settings.archive else {
        return;
    };
    let waiting = spool::waiting(&archive.spool_dir)
        .map(|(w, _)| w)
        .unwrap_or_default();
    let oldest = waiting.iter().map(|w| w.written).min();
    write_gauges(settings, report, waiting.len(), oldest);
}

/// The gauges, from `waiting` files (in the spool, or binary logs closed
/// and not shipped) of which the oldest was written at `oldest`.
pub fn write_gauges(
    settings: &Settings,
    report: &Report,
    waiting: usize,
    oldest: Option<SystemTime>,
) {
    let (Some(metrics_file), Some(archive)) = (&settings.metrics_file, &settings.archive) else {
        return;
    };
    let now = SystemTime::now();
    let lag = oldest
        .and_then(|t| now.duration_since(t).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    let mut text = format!(
        "# HELP volsnap_archive_lag_seconds Age of the oldest WAL file or closed binary log not yet in Swift (0: none waiting).\n\
         # TYPE volsnap_archive_lag_seconds gauge\n\
         volsnap_archive_lag_seconds {lag:.3}\n\
         # HELP volsnap_archive_max_lag_seconds The configured archive.max_lag.\n\
         # TYPE volsnap_archive_max_lag_seconds gauge\n\
         volsnap_archive_max_lag_seconds {}\n\
         # HELP volsnap_archive_waiting_files WAL files in the spool, or closed binary logs not yet shipped.\n\
         # TYPE volsnap_archive_waiting_files gauge\n\
         volsnap_archive_waiting_files {}\n\
         # HELP volsnap_archive_failures Files that failed to ship since the service started.\n\
         # TYPE volsnap_archive_failures gauge\n\
         volsnap_archive_failures {}\n\
         # HELP volsnap_archive_last_pass_timestamp_seconds When the service last looked at the spool.\n\
         # TYPE volsnap_archive_last_pass_timestamp_seconds gauge\n\
         volsnap_archive_last_pass_timestamp_seconds {:.3}\n",
        archive.max_lag.as_secs(),
        waiting,
        report.failed,
        secs(now),
    );
    if let Some(last) = &report.last_shipped {
        text += &format!(
            "# HELP volsnap_archive_last_shipped_segment The newest WAL file or binary log shipped (label), since the service started.\n\
             # TYPE volsnap_archive_last_shipped_segment gauge\n\
             volsnap_archive_last_shipped_segment{{segment=\"{last}\"}} 1\n"
        );
    }
    if let Err(e) = crate::metrics::replace_file(&path(metrics_file), &text) {
        log::warn!("archive metrics {}: {e}", path(metrics_file).display());
    }
}

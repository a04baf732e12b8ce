//! Logs go to stderr through env_logger; `-v`/`-q` pick the level, and
//! `RUST_LOG` still overrides it. Once the config is read, `log_file` (and,
//! for the qemu-ga hook whose stderr is thrown away, syslog) get a copy.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result};

static FILE: OnceLock<Mutex<File>> = OnceLock::new();
static SYSLOG: OnceLock<UnixDatagram> = OnceLock::new();

pub fn init(verbose: u8, quiet: u8) {
    let level = match (i16::from(verbose) - i16::from(quiet)).clamp(-2, 2) {
        -2 => log::LevelFilter::Error,
        -1 => log::LevelFilter::Warn,
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level);
    // Dependencies are chatty at debug; keep them one level down unless asked.
    for noisy in ["reqwest", "rustls", "hyper_util", "h2"] {
        builder.filter_module(noisy, level.min(log::LevelFilter::Info));
    }
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    // journald stamps each line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.format(|buf, record| writeln!(buf, "{}: {}", record.level(), record.args()));
    } else {
        builder.format(|buf, record| {
            writeln!(
                buf,
                "{} {:5} {}",
                crate::time::Timestamp::now().rfc3339(3),
                record.level(),
                record.args()
            )
        });
    }
    builder.target(env_logger::Target::Pipe(Box::new(Tee { stderr: true })));
    let _ = builder.try_init();
}

/// Also append every log line to `path` (created 0600).
pub fn to_file(path: &Path) -> Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open log file {}", path.display()))?;
    let _ = FILE.set(Mutex::new(file));
    Ok(())
}

/// Also send every log line to the local syslog (`/dev/log`), if there is one.
pub fn to_syslog() -> bool {
    let Ok(socket) = UnixDatagram::unbound() else {
        return false;
    };
    if socket.connect("/dev/log").is_err() {
        return false;
    }
    SYSLOG.set(socket).is_ok()
}

/// A line for the log file and syslog only (stderr already has it).
pub fn to_sinks_only(line: &str) {
    let _ = Tee { stderr: false }.write(line.as_bytes());
}

/// stderr, plus the file and syslog once they are set. Write errors are
/// ignored: a closed stderr (a dead parent's pipe) must not stop a thaw.
struct Tee {
    stderr: bool,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.stderr {
            let _ = io::stderr().write_all(buf);
        }
        if let Some(file) = FILE.get() {
            if let Ok(mut f) = file.lock() {
                let _ = f.write_all(buf);
            }
        }
        if let Some(socket) = SYSLOG.get() {
            let line = String::from_utf8_lossy(buf);
            // daemon facility (3); severity from the level word.
            let severity = if line.contains("ERROR") {
                3
            } else if line.contains("WARN") {
                4
            } else {
                6
            };
            let message = format!(
                "<{}>volsnap[{}]: {}",
                3 * 8 + severity,
                std::process::id(),
                line.trim_end()
            );
            let _ = socket.send(message.as_bytes());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

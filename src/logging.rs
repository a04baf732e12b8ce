//! Logs go to stderr through env_logger; `-v`/`-q` pick the level, and
//! `RUST_LOG` still overrides it.

use std::io::Write;

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
                buf.timestamp_millis(),
                record.level(),
                record.args()
            )
        });
    }
    builder.target(env_logger::Target::Stderr);
    let _ = builder.try_init();
}

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

use volsnap::cli::Cli;
use volsnap::{exit, logging};

fn main() -> ExitCode {
    let cli = Cli::parse_from(arguments());
    logging::init(cli.verbose, cli.quiet);
    match cli.run() {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let line = format!("error: {err:#}\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            logging::to_sinks_only(&line);
            ExitCode::from(exit::code_for(&err))
        }
    }
}

/// Run under a name ending in `fsfreeze-hook` (`fsfreeze-hook`,
/// `volsnap-fsfreeze-hook`: qemu-ga's hook path), the binary is `volsnap
/// hook`: qemu-ga calls `HOOK freeze` and `HOOK thaw` — and `volsnap thaw`
/// is another command (the repair).
fn arguments() -> Vec<OsString> {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let invoked_as = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned());
    if invoked_as.is_some_and(|n| n.ends_with("fsfreeze-hook")) {
        args.insert(1, "hook".into());
    }
    args
}

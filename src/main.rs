use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

use volsnap::cli::{self, Cli};
use volsnap::{exit, logging};

fn main() -> ExitCode {
    end_on_panic();
    let args = arguments();
    let json = wants_json(&args);
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e, json),
    };
    logging::init(cli.verbose, cli.quiet);
    let code = match cli.run() {
        Ok(code) => {
            if json && !cli::json_printed() {
                let _ = cli::print_json(&exit::json_done(code));
            }
            code
        }
        Err(err) => {
            let line = format!("error: {err:#}\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            logging::to_sinks_only(&line);
            let code = exit::code_for(&err);
            if json && !cli::json_printed() {
                let _ = cli::print_json(&exit::json_failure(&err, code));
            }
            code
        }
    };
    ExitCode::from(code)
}

/// Any panic, in any thread, ends the process at once with exit code 101
/// (Rust's own for a panic), after the usual message on stderr.
///
/// The release profile has `panic = "abort"` (bench/SIZE.md: 621 KB of the
/// static binary's budget are unwinding tables and landing pads), so no
/// `Drop` runs on a panic there: not `Frozen`'s thaw, not the hook's
/// cleanup. What thaws is the watchdog, a second process armed before every
/// FIFREEZE, which fires when the agent's pipe closes without a disarm: the
/// same path as a SIGKILL mid-run (tests/cinder_backup.rs, tests/datastores.rs
/// kill the agent at each step and find the mounts thawed and the hook's
/// `thaw` run). Ending here rather than in `abort()` leaves no core dump with
/// the credentials in it, and makes debug builds (which unwind) behave as
/// the release binary does: a thread's panic is never survived by the rest.
fn end_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        // SAFETY: _exit ends the process without running anything more.
        unsafe { nix::libc::_exit(101) }
    }));
}

/// Whether `--json` was asked for, read from the raw arguments so that a
/// command line clap refuses still gets its JSON answer.
fn wants_json(args: &[OsString]) -> bool {
    args.iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--json")
}

/// clap's refusal: its text on stderr as always, and with `--json` the
/// failure object on stdout (exit 2). `--help` and `--version` print their
/// text on stdout and exit 0, JSON or not: they are read by people.
fn usage_error(e: clap::Error, json: bool) -> ExitCode {
    let _ = e.print();
    if !e.use_stderr() {
        return ExitCode::from(exit::SUCCESS);
    }
    if json {
        let rendered = e.render().to_string();
        let first = rendered.lines().next().unwrap_or_default();
        let message = first.strip_prefix("error: ").unwrap_or(first);
        let _ = cli::print_json(
            &serde_json::json!({"ok": false, "exit_code": exit::USAGE, "error": message}),
        );
    }
    ExitCode::from(exit::USAGE)
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

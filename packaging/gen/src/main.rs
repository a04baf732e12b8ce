//! Writes volsnap's man pages and shell completions from the same clap
//! definition that prints `--help`, so the three never disagree. Its own
//! binary, not a volsnap subcommand: the generators would cost the static
//! binary size it does not have (see the Makefile's STATIC_BUDGET).
//!
//! `volsnap-gen OUTDIR` writes:
//! - `OUTDIR/man/volsnap.1` and `volsnap-SUBCOMMAND.1` for each subcommand
//!   a user runs (not the hidden `__watchdog`);
//! - `OUTDIR/completions/volsnap.bash`, `_volsnap` (zsh), `volsnap.fish`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Command, CommandFactory};
use clap_complete::Shell;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: volsnap-gen OUTDIR");
        return ExitCode::from(64);
    };
    match generate(&PathBuf::from(out)) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("volsnap-gen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The command line as a user sees it in `volsnap --help`. clap's
/// completion generators offer hidden subcommands (`__watchdog`) too, and
/// the `help` subcommand would be a page of its own that says nothing, so
/// this is the root rebuilt without them.
fn public() -> Command {
    let full = volsnap::cli::Cli::command();
    let mut cmd = Command::new("volsnap")
        .version(leak(full.get_version().unwrap_or_default()))
        .about(full.get_about().cloned().unwrap_or_default())
        .long_about(full.get_long_about().cloned().unwrap_or_default())
        .after_help(full.get_after_help().cloned().unwrap_or_default())
        .subcommand_required(full.is_subcommand_required_set())
        .arg_required_else_help(full.is_arg_required_else_help_set())
        .disable_help_subcommand(true);
    for arg in full.get_arguments() {
        cmd = cmd.arg(arg.clone());
    }
    for sub in full.get_subcommands().filter(|s| !s.is_hide_set()) {
        cmd = cmd.subcommand(sub.clone());
    }
    cmd.build();
    cmd
}

/// clap wants `'static` names without its `string` feature; this program
/// runs once and exits.
fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

/// Writes every page and completion script; returns their paths.
fn generate(out: &Path) -> io::Result<Vec<PathBuf>> {
    let mut cmd = public();
    let mut written = Vec::new();

    let man = out.join("man");
    fs::create_dir_all(&man)?;
    let version = format!("volsnap {}", cmd.get_version().unwrap_or_default());
    written.push(write_page(&man, "volsnap", &version, cmd.clone())?);
    for sub in cmd.get_subcommands() {
        // build() named it `volsnap-SUB` for display, `volsnap SUB` to run.
        let name = format!("volsnap-{}", sub.get_name());
        written.push(write_page(&man, &name, &version, sub.clone())?);
    }

    let completions = out.join("completions");
    fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        written.push(clap_complete::generate_to(
            shell,
            &mut cmd,
            "volsnap",
            &completions,
        )?);
    }
    Ok(written)
}

fn write_page(dir: &Path, name: &str, version: &str, cmd: Command) -> io::Result<PathBuf> {
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd)
        .title(name.to_uppercase())
        .section("1")
        .manual("volsnap manual")
        .source(version)
        .render(&mut page)?;
    let page = String::from_utf8(page).map_err(io::Error::other)?;
    fs::write(&path, with_exit_status(&page))?;
    Ok(path)
}

/// clap_mangen puts `after_help` (the exit codes) under a heading `EXTRA`
/// as preformatted lines that wrap badly: make it the `EXIT STATUS` section
/// man pages have, one tagged paragraph per code.
fn with_exit_status(page: &str) -> String {
    let Some(start) = page.find(".SH EXTRA\n") else {
        return page.to_string();
    };
    let body = &page[start + ".SH EXTRA\n".len()..];
    let end = body.find("\n.SH ").map_or(body.len(), |i| i + 1);
    let mut section = String::from(".SH \"EXIT STATUS\"\n");
    for line in body[..end].lines() {
        let line = line.trim();
        match line.split_once(char::is_whitespace) {
            Some((code, text)) if code.parse::<u8>().is_ok() => {
                section.push_str(&format!(".TP\n.B {code}\n{}\n", text.trim()));
            }
            _ if line.is_empty() || line.ends_with(':') => {}
            _ => section.push_str(&format!(".PP\n{line}\n")),
        }
    }
    format!("{}{section}{}", &page[..start], &body[end..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command as Process;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The subcommands a user runs: one page each.
    const PAGES: &[&str] = &[
        "volsnap", "backup", "list", "restore", "prune", "verify", "check", "hook", "thaw",
        "archive", "wal",
    ];

    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn generated() -> (TempDir, Vec<PathBuf>) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = TempDir(std::env::temp_dir().join(format!(
            "volsnap-gen-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )));
        let written = generate(&dir.0).unwrap();
        (dir, written)
    }

    fn read(dir: &TempDir, path: &str) -> String {
        fs::read_to_string(dir.0.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn a_page_per_subcommand_and_three_completions_and_nothing_hidden() {
        let (dir, written) = generated();
        let mut names: Vec<String> = written
            .iter()
            .map(|p| p.strip_prefix(&dir.0).unwrap().display().to_string())
            .collect();
        names.sort();
        let mut want: Vec<String> = PAGES
            .iter()
            .map(|p| match *p {
                "volsnap" => "man/volsnap.1".to_string(),
                sub => format!("man/volsnap-{sub}.1"),
            })
            .chain(
                ["_volsnap", "volsnap.bash", "volsnap.fish"]
                    .iter()
                    .map(|c| format!("completions/{c}")),
            )
            .collect();
        want.sort();
        assert_eq!(names, want);
        for path in &written {
            let text = fs::read_to_string(path).unwrap();
            assert!(!text.contains("__watchdog"), "{}", path.display());
        }
    }

    #[test]
    fn the_pages_say_what_help_says() {
        let (dir, _) = generated();
        let main = read(&dir, "man/volsnap.1");
        assert!(
            main.starts_with(".ie \\n(.g .ds Aq \\(aq"),
            "not roff:\n{main}"
        );
        assert!(main.contains(".TH VOLSNAP 1"), "{main}");
        let version = format!("volsnap {}", env!("CARGO_PKG_VERSION"));
        assert!(main.contains(&version), "{main}");
        // The exit codes (after_help) and every subcommand are on the main page.
        assert!(main.contains(".SH \"EXIT STATUS\"\n"), "{main}");
        assert!(!main.contains(".SH EXTRA"), "{main}");
        for code in ["0", "1", "2", "3", "75", "78"] {
            assert!(
                main.contains(&format!(".B {code}\n")),
                "exit code {code}:\n{main}"
            );
        }
        for sub in &PAGES[1..] {
            assert!(
                main.contains(&format!("volsnap\\-{sub}(1)")),
                "{sub}:\n{main}"
            );
        }
        // A subcommand's page has its own options and the global ones.
        let restore = read(&dir, "man/volsnap-restore.1");
        assert!(restore.contains(".TH VOLSNAP-RESTORE 1"), "{restore}");
        for opt in ["\\-\\-latest", "\\-\\-config", "\\-\\-json"] {
            assert!(restore.contains(opt), "{opt}:\n{restore}");
        }
    }

    #[test]
    fn the_public_command_is_volsnap_help_without_the_help_subcommand() {
        let mut full = volsnap::cli::Cli::command();
        let want: String = full
            .render_long_help()
            .to_string()
            .lines()
            .filter(|l| !l.trim_start().starts_with("help "))
            .map(|l| format!("{l}\n"))
            .collect();
        let got = public().render_long_help().to_string();
        assert_eq!(got, want);
        full.build();
        let shown = full
            .get_subcommands_mut()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help");
        for sub in shown {
            let name = sub.get_name().to_string();
            let mut mine = public().find_subcommand(&name).unwrap().clone();
            assert_eq!(
                mine.render_long_help().to_string(),
                sub.render_long_help().to_string(),
                "{name}"
            );
        }
    }

    #[test]
    fn exit_codes_become_an_exit_status_section() {
        let page = ".TH X 1\n.SH EXTRA\nExit codes:\n  0   success\n  \
                    78  the configuration is invalid\n.SH VERSION\nv1\n";
        assert_eq!(
            with_exit_status(page),
            ".TH X 1\n.SH \"EXIT STATUS\"\n.TP\n.B 0\nsuccess\n.TP\n.B 78\n\
             the configuration is invalid\n.SH VERSION\nv1\n"
        );
        assert_eq!(with_exit_status(".TH X 1\n"), ".TH X 1\n");
    }

    #[test]
    fn groff_renders_every_page_without_a_warning() {
        if Process::new("groff").arg("--version").output().is_err() {
            eprintln!("groff is not installed: the pages are not rendered");
            return;
        }
        let (dir, _) = generated();
        for entry in fs::read_dir(dir.0.join("man")).unwrap() {
            let path = entry.unwrap().path();
            let out = Process::new("groff")
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .arg(&path)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && stderr.is_empty(),
                "{}: {stderr}",
                path.display()
            );
        }
    }

    #[test]
    fn bash_completes_the_subcommands() {
        let (dir, _) = generated();
        let script = dir.0.join("completions/volsnap.bash");
        // Load the script as bash-completion would and ask it for `volsnap re`.
        let probe = format!(
            ". {}; COMP_WORDS=(volsnap re); COMP_CWORD=1; COMP_LINE='volsnap re'; \
             COMP_POINT=${{#COMP_LINE}}; _volsnap volsnap re volsnap; echo \"${{COMPREPLY[*]}}\"",
            script.display()
        );
        let out = Process::new("bash")
            .args(["--noprofile", "--norc", "-c", &probe])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.trim(), "restore");
    }
}

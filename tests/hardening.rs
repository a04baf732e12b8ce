//! Issue 18 as an operator (or an attacker with a non-root account) would
//! try it: hand-made bad configs through the real binary, every exit code's
//! `--json` answer, what a hook inherits, and thousands of mutated configs.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{hooks_dir, NONE_HOOK};

/// Runs the binary with a deadline: a config that makes it block (a FIFO)
/// must fail the test, not hang it.
fn volsnap_env(config: &Path, args: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_volsnap"));
    cmd.arg("--config").arg(config).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("OS_") || k == "RUST_LOG" || k == "VOLSNAP_CONFIG" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "volsnap {args:?} with {} did not finish in 10 s",
                config.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (child.wait_with_output().unwrap(), started.elapsed())
}

fn volsnap(config: &Path, args: &[&str]) -> Output {
    volsnap_env(config, args, &[]).0
}

/// stdout must be exactly one JSON object, whatever happened.
fn one_json(out: &Output) -> serde_json::Value {
    let (stdout, stderr) = text(out);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "not one line on stdout: {stdout:?}\nstderr: {stderr}"
    );
    let v: serde_json::Value = serde_json::from_str(lines[0])
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout:?}\nstderr: {stderr}"));
    assert!(v.is_object(), "{v}");
    assert_eq!(
        v["exit_code"].as_i64(),
        out.status.code().map(i64::from),
        "exit_code in {v} differs from the exit status\nstderr: {stderr}"
    );
    assert_eq!(v["ok"], out.status.code() == Some(0), "{v}");
    v
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A scratch place with a trusted hooks dir and a runtime dir.
struct Scratch {
    dir: tempfile::TempDir,
    hooks: PathBuf,
}

impl Scratch {
    fn new(hook: &str) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let hooks = hooks_dir(dir.path(), &[("none", hook), ("redis", hook)]);
        Scratch { dir, hooks }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `{run}` and `{hooks}` in `body` become this scratch's directories.
    fn fill(&self, body: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(body);
        if !text.contains('{') {
            return body.to_vec();
        }
        // Only valid UTF-8 bodies carry placeholders.
        text.replace("{run}", &self.path().join("run").display().to_string())
            .replace("{hooks}", &self.hooks.display().to_string())
            .into_bytes()
    }

    fn write(&self, name: &str, body: &[u8], mode: u32) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, self.fill(body)).unwrap();
        set_mode(&path, mode);
        path
    }
}

const BASE: &str = "datastore = \"none\"\nruntime_dir = \"{run}\"\n[hooks]\ndir = \"{hooks}\"\n";

/// What a row does to the file system besides writing the config.
#[derive(Clone, Copy)]
enum Setup {
    /// The body, mode 0600, in the scratch dir.
    File,
    Mode(u32),
    OwnedByNobody,
    /// In a subdirectory of this mode.
    InDir(u32),
    Symlink,
    Fifo,
    DevZero,
    Directory,
}

struct Case {
    name: &'static str,
    body: &'static [u8],
    setup: Setup,
    code: i32,
    /// Each must be in stderr (and in the JSON `error`); `{path}` is the
    /// config's path.
    says: &'static [&'static str],
    /// None of these may appear anywhere in the output.
    never: &'static [&'static str],
    /// What `check` reports at exit 1.
    problem: &'static str,
}

const fn case(
    name: &'static str,
    body: &'static [u8],
    code: i32,
    says: &'static [&'static str],
) -> Case {
    Case {
        name,
        body,
        setup: Setup::File,
        code,
        says,
        never: &[],
        problem: "",
    }
}

const BAD_AGE_CHECKSUM: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8q";

fn corpus() -> Vec<Case> {
    vec![
        case("valid", BASE.as_bytes(), 0, &[]),
        case("syntax: unclosed string", b"datastore = \"none\n", 78, &["{path}:1:", "string"]),
        case("syntax: no equals sign", b"datastore \"none\"\n", 78, &["{path}:1:11"]),
        case("syntax: duplicate key", b"datastore = \"none\"\ndatastore = \"redis\"\n", 78, &["{path}:2:", "duplicate key"]),
        case("syntax: NUL byte", b"datastore = \"none\"\n\0\n", 78, &["{path}:2:"]),
        case("unknown top-level key", b"datastore = \"none\"\ncolour = \"red\"\n", 78, &["{path}:2:1", "unknown field `colour`"]),
        case("unknown key in a section", b"datastore = \"none\"\n[cinder]\nmax_frezee = \"1s\"\n", 78, &["{path}:3:1", "unknown field `max_frezee`", "max_freeze"]),
        case("unknown section", b"datastore = \"none\"\n[swfit]\ncontainer = \"x\"\n", 78, &["{path}:2:", "unknown field `swfit`"]),
        case("mounts under [cinder]", b"datastore = \"none\"\n[cinder]\nmounts = [\"/data\"]\n", 78, &["{path}:3:1", "unknown field `mounts`"]),
        case("wrong type: a string for a list", b"datastore = \"none\"\nmounts = \"/data\"\n", 78, &["{path}:2:10", "mounts", "invalid type"]),
        case("wrong type: a string for a number", b"datastore = \"none\"\n[swift]\nconcurrency = \"4\"\n", 78, &["{path}:3:15", "swift.concurrency", "invalid type"]),
        Case {
            never: &["98765432"],
            ..case("wrong type: an unquoted password", b"datastore = \"none\"\n[openstack]\npassword = 98765432\n", 78, &["{path}:3:12", "openstack.password", "invalid type: an integer, expected a string"])
        },
        Case {
            never: &["424242"],
            ..case("wrong type: an unquoted hooks.env password", b"datastore = \"none\"\n[hooks.env]\nDB_PASSWORD = 424242\n", 78, &["{path}:3:15", "hooks.env.DB_PASSWORD", "expected a string"])
        },
        case("unknown datastore", b"datastore = \"mongodb\"\n", 78, &["{path}:1:13", "unknown variant `mongodb`", "mysql"]),
        case("no datastore", b"runtime_dir = \"/run/volsnap\"\n", 78, &["datastore is required"]),
        case("empty file", b"", 78, &["datastore is required"]),
        case("bad duration", b"datastore = \"none\"\n[cinder]\nmax_freeze = \"30 parsecs\"\n", 78, &["{path}:3:14", "cinder.max_freeze", "invalid duration"]),
        case("zero duration", b"datastore = \"none\"\n[hooks]\ntimeout = \"0s\"\n", 78, &["{path}:3:1", "hooks.timeout: must be longer than zero"]),
        case("duration too long", b"datastore = \"none\"\n[cinder]\nmax_freeze = \"11m\"\n", 78, &["cinder.max_freeze", "the limit is 600s"]),
        case("bad size", b"datastore = \"none\"\n[swift]\nsegment_size = \"64 parsecs\"\n", 78, &["{path}:3:16", "swift.segment_size"]),
        case("size out of range", b"datastore = \"none\"\n[swift]\nsegment_size = \"10KiB\"\n", 78, &["swift.segment_size: 10.0 KiB is outside 1MiB..5GiB"]),
        case("agent/strategy mismatch", b"backup_agent = \"SwiftAgent\"\nstorage_strategy = \"Cinder\"\ndatastore = \"none\"\nmounts = [\"/data\"]\n", 78, &["{path}:2:1", "does not go with backup_agent SwiftAgent"]),
        case("unknown agent", b"backup_agent = \"NovaAgent\"\ndatastore = \"none\"\n", 78, &["{path}:1:16", "unknown variant `NovaAgent`"]),
        case("Cinder without mounts", b"storage_strategy = \"Cinder\"\ndatastore = \"none\"\n", 78, &["needs at least one mount"]),
        case("duplicate mounts", b"datastore = \"none\"\nmounts = [\"/data\", \"/data/\"]\n", 78, &["{path}:2:1", "mounts: /data is listed twice"]),
        case("the root as a mount", b"storage_strategy = \"Cinder\"\ndatastore = \"none\"\nmounts = [\"/\"]\n", 78, &["\"/\" cannot be frozen"]),
        Case {
            problem: "mount /proc: is a proc filesystem",
            ..case("/proc as a mount to freeze", b"storage_strategy = \"Cinder\"\ndatastore = \"none\"\nmounts = [\"/proc\"]\nruntime_dir = \"{run}\"\n[hooks]\ndir = \"{hooks}\"\n", 1, &[])
        },
        case("relative mount", b"datastore = \"none\"\nmounts = [\"data\"]\n", 78, &["not an absolute path"]),
        case("LD_PRELOAD for the hooks", b"datastore = \"none\"\n[hooks.env]\nLD_PRELOAD = \"/tmp/evil.so\"\n", 78, &["{path}:3:1", "hooks.env.LD_PRELOAD", "load code"]),
        case("BASH_ENV for the hooks", b"datastore = \"none\"\n[hooks.env]\nBASH_ENV = \"/tmp/evil.sh\"\n", 78, &["{path}:3:1", "hooks.env.BASH_ENV"]),
        case("PYTHONPATH for the hooks", b"datastore = \"none\"\n[hooks.env]\nPYTHONPATH = \"/tmp\"\n", 78, &["hooks.env.PYTHONPATH"]),
        case("PERL5OPT for the hooks", b"datastore = \"none\"\n[hooks.env]\nPERL5OPT = \"-Mevil\"\n", 78, &["hooks.env.PERL5OPT"]),
        case("IFS for the hooks", b"datastore = \"none\"\n[hooks.env]\nIFS = \"x\"\n", 78, &["hooks.env.IFS"]),
        case("a bad variable name", b"datastore = \"none\"\n[hooks.env]\n\"A-B\" = \"x\"\n", 78, &["not a valid environment variable name"]),
        case("overriding VOLSNAP_TIMEOUT", b"datastore = \"none\"\n[hooks.env]\nVOLSNAP_TIMEOUT = \"1\"\n", 78, &["set by volsnap itself"]),
        case("age recipient cut short", b"datastore = \"none\"\n[swift]\nage_recipients = [\"age1\"]\n", 78, &["{path}:3:1", "swift.age_recipients: [0]", "is not an age X25519 recipient"]),
        case("age recipient with a bad checksum", format!("datastore = \"none\"\n[swift]\nage_recipients = [\"{BAD_AGE_CHECKSUM}\"]\n").leak().as_bytes(), 78, &["{path}:3:1", "swift.age_recipients: [0]"]),
        case("corrupt ssh-ed25519 recipient", b"datastore = \"none\"\n[swift]\nage_recipients = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIgarbage\"]\n", 78, &["swift.age_recipients: [0]", "ssh-ed25519"]),
        Case {
            never: &["AGE-SECRET-KEY-1QQQ"],
            ..case("a private key as a recipient", b"datastore = \"none\"\n[swift]\nage_recipients = [\"AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ\"]\n", 78, &["swift.age_recipients: [0]", "private key"])
        },
        case("missing age_recipients_file", b"datastore = \"none\"\n[swift]\nage_recipients_file = \"/nonexistent/recipients.txt\"\n", 78, &["{path}:3:1", "swift.age_recipients_file: cannot read /nonexistent/recipients.txt"]),
        case("garbage age_recipients_file", b"datastore = \"none\"\n[swift]\nage_recipients_file = \"/etc/hostname\"\n", 78, &["{path}:3:1", "swift.age_recipients_file: /etc/hostname, line 1"]),
        Case {
            never: &["hunter2"],
            ..case("a password in a URL that is refused", b"datastore = \"none\"\n[openstack]\nauth_url = \"ftp://admin:hunter2@keystone/v3\"\n", 78, &["openstack.auth_url: \"ftp://keystone/v3\" is not an http"])
        },
        case("invalid UTF-8", b"datastore = \"none\"\n# caf\xe9\n", 78, &["{path}:2:6: is not valid UTF-8"]),
        case("a UTF-8 byte order mark is fine", b"\xef\xbb\xbfdatastore = \"none\"\nruntime_dir = \"{run}\"\n[hooks]\ndir = \"{hooks}\"\n", 0, &[]),
        case("CRLF line ends are fine", b"datastore = \"none\"\r\nruntime_dir = \"{run}\"\r\n[hooks]\r\ndir = \"{hooks}\"\r\n", 0, &[]),
        case("CRLF: an error still has its line", b"datastore = \"none\"\r\nrun_dir = \"/x\"\r\n", 78, &["{path}:2:1", "unknown field `run_dir`"]),
        Case {
            setup: Setup::Mode(0o644),
            never: &["pw-in-0644"],
            ..case("a secret readable by others", b"datastore = \"none\"\n[openstack]\npassword = \"pw-in-0644\"\n", 78, &["holds a secret (openstack.password)", "(mode 0644); run: chmod 600 {path}"])
        },
        Case {
            setup: Setup::Mode(0o640),
            ..case("REDISCLI_AUTH readable by the group", b"datastore = \"redis\"\n[hooks.env]\nREDISCLI_AUTH = \"x\"\n", 78, &["holds a secret (hooks.env.REDISCLI_AUTH)", "(mode 0640)"])
        },
        Case {
            setup: Setup::Mode(0o644),
            ..case("readable without a secret is fine", BASE.as_bytes(), 0, &[])
        },
        Case {
            setup: Setup::Mode(0o620),
            ..case("writable by the group", BASE.as_bytes(), 78, &["{path}: is writable by group or others (mode 0620)", "run: chmod go-w {path}"])
        },
        Case {
            setup: Setup::OwnedByNobody,
            ..case("owned by another user", BASE.as_bytes(), 78, &["is owned by uid 65534, not root", "run: chown root: {path}"])
        },
        Case {
            setup: Setup::InDir(0o775),
            ..case("in a directory the group can write", BASE.as_bytes(), 78, &["directory", "is writable by group or others (mode 0775)", "chmod go-w"])
        },
        Case {
            setup: Setup::InDir(0o1777),
            ..case("in a root-owned sticky directory", BASE.as_bytes(), 0, &[])
        },
        Case {
            setup: Setup::Symlink,
            ..case("a symlink to a good file", BASE.as_bytes(), 0, &[])
        },
        Case {
            setup: Setup::Fifo,
            ..case("a FIFO", b"", 78, &["{path}: is a FIFO, not a regular file"])
        },
        Case {
            setup: Setup::DevZero,
            ..case("a symlink to /dev/zero", b"", 78, &["{path}: is a character device, not a regular file"])
        },
        Case {
            setup: Setup::Directory,
            ..case("a directory", b"", 78, &["{path}: is a directory, not a regular file"])
        },
        case("bigger than 1 MiB", "#\n".repeat(600_000).leak().as_bytes(), 78, &["is 1200000 bytes; a configuration file is at most 1048576 bytes"]),
    ]
}

fn place(s: &Scratch, c: &Case, i: usize) -> PathBuf {
    let name = format!("case{i}.toml");
    match c.setup {
        Setup::File => s.write(&name, c.body, 0o600),
        Setup::Mode(mode) => s.write(&name, c.body, mode),
        Setup::OwnedByNobody => {
            let path = s.write(&name, c.body, 0o600);
            nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            path
        }
        Setup::InDir(mode) => {
            let dir = s.path().join(format!("dir{i}"));
            std::fs::create_dir(&dir).unwrap();
            set_mode(&dir, mode);
            let path = dir.join("volsnap.toml");
            std::fs::write(&path, s.fill(c.body)).unwrap();
            set_mode(&path, 0o600);
            path
        }
        Setup::Symlink => {
            let target = s.write(&name, c.body, 0o600);
            let link = s.path().join(format!("link{i}.toml"));
            std::os::unix::fs::symlink(&target, &link).unwrap();
            link
        }
        Setup::Fifo => {
            let path = s.path().join(&name);
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            path
        }
        Setup::DevZero => {
            let link = s.path().join(&name);
            std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
            link
        }
        Setup::Directory => {
            let path = s.path().join(&name);
            std::fs::create_dir(&path).unwrap();
            set_mode(&path, 0o700);
            path
        }
    }
}

#[test]
fn every_bad_config_gets_its_exit_code_and_message() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "run as root: ownership cases need chown"
    );
    let s = Scratch::new(NONE_HOOK);
    let mut failures = Vec::new();
    for (i, c) in corpus().iter().enumerate() {
        let config = place(&s, c, i);
        for args in [
            &["check", "--offline", "--json"][..],
            &["backup", "--dry-run"][..],
        ] {
            // A dry run goes on to OpenStack: only its refusals are compared.
            if args[0] == "backup" && c.code != 78 {
                continue;
            }
            let (out, took) = volsnap_env(&config, args, &[]);
            let (stdout, stderr) = text(&out);
            let mut wrong = Vec::new();
            if out.status.code() != Some(c.code) {
                wrong.push(format!("exit {:?}, not {}", out.status.code(), c.code));
            }
            for want in c.says {
                let want = want.replace("{path}", &config.display().to_string());
                if !stderr.contains(&want) {
                    wrong.push(format!("no {want:?}"));
                }
            }
            for leak in c.never {
                if stdout.contains(leak) || stderr.contains(leak) {
                    wrong.push(format!("{leak:?} shown"));
                }
            }
            if args.contains(&"--json") {
                match serde_json::from_str::<serde_json::Value>(&stdout) {
                    Ok(v) if v["exit_code"] == c.code => {}
                    _ => wrong.push(format!("stdout is not one JSON answer: {stdout:?}")),
                }
            }
            // `check` reports a problem (exit 1) on stdout, one per line.
            if c.code == 1 && !stdout.contains(c.problem) {
                wrong.push(format!("no problem {:?} in {stdout:?}", c.problem));
            }
            if took > Duration::from_secs(1) {
                wrong.push(format!("took {took:?}"));
            }
            if !wrong.is_empty() {
                failures.push(format!(
                    "{} ({args:?}): {}\n  stderr: {stderr}",
                    c.name,
                    wrong.join("; ")
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        corpus().len(),
        failures.join("\n")
    );
}

#[test]
fn json_answers_with_one_object_at_every_exit_code() {
    let hook = "#!/bin/sh\ncase \"$1\" in\nfreeze) [ -e \"$VOLSNAP_RUNTIME_DIR/../fail\" ] && { echo 'no server' >&2; exit 4; }; echo binlog_pos=42 ;;\nesac\nexit 0\n";
    let s = Scratch::new(hook);
    let good = s.write("good.toml", BASE.as_bytes(), 0o600);

    // 0: a command with its own report, and `hook`, which had none.
    let v = one_json(&volsnap(&good, &["check", "--offline", "--json"]));
    assert_eq!(v["problems"], serde_json::json!([]));
    let v = one_json(&volsnap(&good, &["hook", "freeze", "--json"]));
    assert_eq!(
        (v["action"].as_str(), v["values"]["binlog_pos"].as_str()),
        (Some("freeze"), Some("42"))
    );
    let v = one_json(&volsnap(&good, &["--json", "hook", "thaw"]));
    assert_eq!(v["action"], "thaw");

    // 1: a report that lists problems, and an error.
    let missing = s.write(
        "missing.toml",
        BASE.replace(
            "datastore = \"none\"",
            "datastore = \"none\"\nmounts = [\"/nonexistent/data\"]",
        )
        .as_bytes(),
        0o600,
    );
    let v = one_json(&volsnap(&missing, &["check", "--offline", "--json"]));
    assert!(
        v["problems"][0]
            .as_str()
            .unwrap()
            .contains("/nonexistent/data"),
        "{v}"
    );
    std::fs::write(s.path().join("fail"), "").unwrap();
    let v = one_json(&volsnap(&good, &["hook", "freeze", "--json"]));
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("freeze failed (exit status: 4): no server"),
        "{v}"
    );
    std::fs::remove_file(s.path().join("fail")).unwrap();

    // 2: clap's refusals; its text stays on stderr.
    for args in [
        &["--json", "frobnicate"][..],
        &["check", "--json", "--bogus"][..],
        &["hook", "--json"][..],
    ] {
        let out = volsnap(&good, args);
        let v = one_json(&out);
        assert_eq!(v["exit_code"], 2, "{args:?}");
        assert!(text(&out).1.contains("Usage:"), "{args:?}");
    }

    // 75: the holder's pid.
    let lock = volsnap::runtime::RunLock::acquire(&s.path().join("run")).unwrap();
    let v = one_json(&volsnap(&good, &["hook", "freeze", "--json"]));
    assert_eq!(v["holder_pid"], std::process::id(), "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("another volsnap run holds"),
        "{v}"
    );
    drop(lock);

    // 78: where the mistake is.
    let bad = s.write(
        "bad.toml",
        b"datastore = \"none\"\n[cinder]\nmax_freeze = \"0s\"\n",
        0o600,
    );
    for args in [
        &["check", "--json"][..],
        &["--json", "backup"][..],
        &["list", "--json"][..],
        &["hook", "thaw", "--json"][..],
    ] {
        let v = one_json(&volsnap(&bad, args));
        assert_eq!(v["file"], bad.display().to_string(), "{args:?}");
        assert_eq!(
            (v["line"].as_u64(), v["column"].as_u64()),
            (Some(3), Some(1)),
            "{args:?}"
        );
        assert_eq!(v["key"], "cinder.max_freeze", "{args:?}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .ends_with("cinder.max_freeze: must be longer than zero"),
            "{v}"
        );
    }
    // A refusal with no place in the file has null line and column.
    let v = one_json(&volsnap(
        &s.path().join("nonexistent.toml"),
        &["check", "--json"],
    ));
    assert!(
        v["line"].is_null() && v["column"].is_null() && v["key"].is_null(),
        "{v}"
    );
}

#[test]
fn hooks_get_a_clean_environment() {
    let s = Scratch::new("");
    let seen = s.path().join("env.txt");
    std::fs::write(
        s.hooks.join("none"),
        format!("#!/bin/sh\nenv > {}\n", seen.display()),
    )
    .unwrap();
    let config = s.write(
        "volsnap.toml",
        format!("{BASE}[hooks.env]\nMY_SETTING = \"on\"\nTZ = \"Europe/Berlin\"\n").as_bytes(),
        0o600,
    );
    let (out, _) = volsnap_env(
        &config,
        &["hook", "freeze"],
        &[
            ("OS_APPLICATION_CREDENTIAL_SECRET", "ac-secret-9"),
            ("OS_PASSWORD", "os-pw-9"),
            ("INHERITED_BY_ACCIDENT", "1"),
            ("LANG", "de_DE.UTF-8"),
        ],
    );
    assert!(out.status.success(), "{:?}", text(&out));
    let env = std::fs::read_to_string(&seen).unwrap();
    let vars: std::collections::BTreeMap<&str, &str> =
        env.lines().filter_map(|l| l.split_once('=')).collect();
    for leaked in ["ac-secret-9", "os-pw-9", "INHERITED_BY_ACCIDENT"] {
        assert!(!env.contains(leaked), "{leaked} reached the hook:\n{env}");
    }
    assert!(!vars.keys().any(|k| k.starts_with("OS_")), "{env}");
    assert_eq!(
        vars["PATH"],
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    assert_eq!((vars["LANG"], vars["LC_ALL"]), ("C.UTF-8", "C.UTF-8"));
    // [hooks.env] is applied last, so it may set these.
    assert_eq!((vars["TZ"], vars["MY_SETTING"]), ("Europe/Berlin", "on"));
    assert_eq!(vars["VOLSNAP_DATASTORE"], "none");
    // What /bin/sh adds by itself, and nothing else.
    let expected = [
        "PATH",
        "LANG",
        "LC_ALL",
        "TZ",
        "MY_SETTING",
        "PWD",
        "SHLVL",
        "_",
        "OLDPWD",
    ];
    let extra: Vec<&&str> = vars
        .keys()
        .filter(|k| !k.starts_with("VOLSNAP_") && !expected.contains(k))
        .collect();
    assert!(extra.is_empty(), "unexpected variables {extra:?}:\n{env}");
}

#[test]
fn clouds_yaml_and_secure_yaml_are_configuration() {
    let s = Scratch::new(NONE_HOOK);
    let config = s.write(
        "volsnap.toml",
        format!("{BASE}[openstack]\ncloud = \"c\"\n").as_bytes(),
        0o600,
    );
    let clouds = s.path().join("clouds.yaml");
    let secure = s.path().join("secure.yaml");
    std::fs::write(
        &clouds,
        "clouds:\n  c:\n    auth:\n      auth_url: https://keystone:5000/v3\n",
    )
    .unwrap();
    std::fs::write(
        &secure,
        "clouds:\n  c:\n    auth:\n      password: yaml-pw-7\n",
    )
    .unwrap();
    set_mode(&secure, 0o600);
    let env = [
        ("OS_CLIENT_CONFIG_FILE", clouds.to_str().unwrap()),
        ("OS_CLIENT_SECURE_FILE", secure.to_str().unwrap()),
    ];
    let run = |args: &[&str]| volsnap_env(&config, args, &env).0;
    let out = run(&["check", "--offline"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));

    set_mode(&secure, 0o644);
    let out = run(&["check", "--offline"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains(&format!("{}: holds a secret (clouds.c.auth.password) and is readable by group or others (mode 0644)", secure.display())), "{stderr}");
    assert!(!stderr.contains("yaml-pw-7"), "{stderr}");
    set_mode(&secure, 0o600);

    nix::unistd::chown(&secure, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let out = run(&["check", "--offline"]);
    assert_eq!(out.status.code(), Some(78), "{:?}", text(&out));
    assert!(
        text(&out).1.contains("is owned by uid 65534"),
        "{:?}",
        text(&out)
    );
    nix::unistd::chown(&secure, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();

    std::fs::write(&clouds, "clouds:\n  c:\n    auth: {auth_url: x\n").unwrap();
    let out = run(&["check", "--offline", "--json"]);
    let v = one_json(&out);
    assert_eq!(v["exit_code"], 78);
    assert_eq!(v["file"], clouds.display().to_string());
    assert!(v["line"].as_u64().is_some(), "{v}");
    // The backup refuses it the same way, before it locks anything.
    let out = run(&["backup"]);
    assert_eq!(out.status.code(), Some(78), "{:?}", text(&out));
    assert!(!s.path().join("run/lock").exists());

    // A cloud that is not there, or no clouds.yaml at all: configuration too.
    std::fs::write(&clouds, "clouds:\n  other:\n    auth: {}\n").unwrap();
    let out = run(&["backup"]);
    assert_eq!(out.status.code(), Some(78), "{:?}", text(&out));
    assert!(
        text(&out).1.contains("has no cloud \"c\""),
        "{:?}",
        text(&out)
    );
    std::fs::remove_file(&clouds).unwrap();
    let out = run(&["backup"]);
    assert_eq!(out.status.code(), Some(78), "{:?}", text(&out));
    assert!(
        text(&out).1.contains("no clouds.yaml was found"),
        "{:?}",
        text(&out)
    );
    assert!(!s.path().join("run/lock").exists());
}

/// xorshift64*: the same mutations on every run, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, original: &[u8]) -> Vec<u8> {
    let mut bytes = original.to_vec();
    for _ in 0..1 + rng.below(3) {
        let lines: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
        let n = lines.len();
        bytes = match rng.below(6) {
            0 if !bytes.is_empty() => {
                let at = rng.below(bytes.len());
                bytes[at] ^= 1 << rng.below(8);
                bytes
            }
            1 if !bytes.is_empty() => {
                let at = rng.below(bytes.len());
                const NASTY: &[u8] = b"=\"[]{}.#\\\n0a \x00\xff";
                bytes[at] = NASTY[rng.below(NASTY.len())];
                bytes
            }
            2 => {
                let mut lines = lines;
                lines.remove(rng.below(n));
                lines.join(&b'\n')
            }
            3 => {
                let mut lines = lines;
                let at = rng.below(n);
                let copy = lines[at].clone();
                lines.insert(rng.below(n), copy);
                lines.join(&b'\n')
            }
            4 => {
                // Swap the values of two `key = value` lines.
                let mut lines = lines;
                let (a, b) = (rng.below(n), rng.below(n));
                let split = |l: &[u8]| l.iter().position(|c| *c == b'=');
                if let (Some(i), Some(j)) = (split(&lines[a]), split(&lines[b])) {
                    let va = lines[a][i..].to_vec();
                    let vb = lines[b][j..].to_vec();
                    lines[a].truncate(i);
                    lines[a].extend(vb);
                    lines[b].truncate(j);
                    lines[b].extend(va);
                }
                lines.join(&b'\n')
            }
            _ => {
                bytes.truncate(rng.below(bytes.len() + 1));
                bytes
            }
        };
    }
    bytes
}

/// The sample with every `# key = value` and `# [table]` line uncommented,
/// so the mutations reach every key.
fn sample_uncommented() -> String {
    let sample =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/volsnap.toml"))
            .unwrap();
    sample
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if rest.starts_with('[') || rest.contains(" = ") => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn mutated_configs_never_panic_hang_or_exit_oddly() {
    const MINIMAL: &str = "storage_strategy = \"Cinder\"\ndatastore = \"mysql\"\nmounts = [\"/data\", \"/wal\"]\n[cinder]\nmax_freeze = \"30s\"\n[cinder.volumes]\n\"/data\" = \"0b6f5a2e-5b4c-4b8e-9c1a-2f3e4d5c6b7a\"\n[hooks.env]\nMYSQL_PWD = \"pw\"\n[swift]\nsegment_size = \"64MiB\"\n";
    let sample =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/volsnap.toml"))
            .unwrap();
    let uncommented = sample_uncommented();
    let path = Path::new("/etc/volsnap/volsnap.toml");
    let mut rng = Rng(0x5eed_1818_u64);
    let (mut accepted, mut refused, mut slowest) = (0, 0, Duration::ZERO);
    for (name, original) in [
        ("sample", sample.as_str()),
        ("sample uncommented", uncommented.as_str()),
        ("minimal", MINIMAL),
    ] {
        for i in 0..1000 {
            let bytes = mutate(&mut rng, original.as_bytes());
            let started = Instant::now();
            // What `load` does after reading: invalid UTF-8 is its refusal.
            let result = std::panic::catch_unwind(|| {
                std::str::from_utf8(&bytes).map(|text| volsnap::config::parse(path, text).map(drop))
            });
            let took = started.elapsed();
            slowest = slowest.max(took);
            assert!(took < Duration::from_secs(1), "{name} #{i} took {took:?}");
            match result {
                Ok(Ok(Ok(()))) => accepted += 1,
                Ok(Ok(Err(e))) => {
                    refused += 1;
                    assert!(
                        e.to_string().starts_with("/etc/volsnap/volsnap.toml"),
                        "{e}"
                    );
                }
                Ok(Err(_)) => refused += 1,
                Err(_) => panic!(
                    "{name} #{i} panicked on:\n{}",
                    String::from_utf8_lossy(&bytes)
                ),
            }
        }
    }
    assert!(
        accepted > 100 && refused > 1000,
        "accepted {accepted}, refused {refused}: the mutations do not exercise both sides"
    );
    eprintln!("{accepted} accepted, {refused} refused, slowest {slowest:?}");

    // A handful through the binary: what `load` adds (the read, the modes)
    // and one JSON answer, at exit 0, 1 or 78 only.
    let s = Scratch::new(NONE_HOOK);
    for i in 0..24 {
        let body = mutate(
            &mut rng,
            if i % 2 == 0 {
                MINIMAL.as_bytes()
            } else {
                sample.as_bytes()
            },
        );
        let config = s.write(&format!("m{i}.toml"), &body, 0o600);
        let (out, took) = volsnap_env(&config, &["check", "--offline", "--json"], &[]);
        assert!(
            matches!(out.status.code(), Some(0 | 1 | 78)),
            "#{i}: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&body)
        );
        assert!(took < Duration::from_secs(1), "#{i} took {took:?}");
        one_json(&out);
    }
}

#[test]
fn a_password_in_auth_url_is_never_logged_or_reported() {
    let s = Scratch::new(NONE_HOOK);
    // Port 1 refuses at once: the run goes through every retry (each logged
    // at WARN with the URL) and fails with the URL in the error.
    let config = s.write(
        "volsnap.toml",
        format!(
            "{BASE}[openstack]\nauth_url = \"http://admin:url-pw-5@127.0.0.1:1/v3\"\n\
             username = \"u\"\npassword = \"toml-pw-5\"\nproject_name = \"p\"\n\
             user_domain_name = \"Default\"\nproject_domain_name = \"Default\"\n"
        )
        .as_bytes(),
        0o600,
    );
    let (out, _) = volsnap_env(&config, &["-vv", "check", "--json"], &[]);
    let (stdout, stderr) = text(&out);
    let v = one_json(&out);
    assert_eq!(v["exit_code"], 1, "{stderr}");
    assert!(stderr.contains("http://127.0.0.1:1/v3"), "{stderr}");
    assert!(
        stderr.contains("the user and password in the URL are ignored"),
        "{stderr}"
    );
    for secret in ["url-pw-5", "toml-pw-5", "admin:"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret}:\n{stdout}\n{stderr}"
        );
    }
}

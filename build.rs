//! The static binary's relative relocations are packed (DT_RELR).
//!
//! A static-pie binary relocates itself at start: one R_X86_64_RELATIVE
//! entry per pointer in its data, 24 bytes each, ~8,700 of them (vtables,
//! string tables): 209 KB of the 6 MiB budget. Packed as RELR bitmaps they
//! take a few KB (static binary 6,264,624 → 6,059,928 bytes). The relocating
//! code is the binary's own static glibc (2.36+ reads DT_RELR), so the host's
//! libc does not matter. Only for static builds: a dynamic binary linked so
//! would need glibc 2.36 on the machine that runs it (GLIBC_ABI_DT_RELR).
//!
//! And identical functions are folded into one (`--icf=all`, LLD, Rust's
//! default linker since 1.90): generic code monomorphized into byte-identical
//! copies (46 KB: 5,792,728 → 5,748,152 bytes). Rust promises no unique
//! function addresses (rustc merges functions itself); LLD folds no data
//! without `--ignore-data-address-equality`. `--icf=safe` folded nothing here.
//! GNU ld has no `--icf`: only with rustc's own LLD (1.90+, no `-C linker`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let gnu_linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if gnu_linux && features.split(',').any(|f| f == "crt-static") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
        if links_with_rust_lld() {
            println!("cargo:rustc-link-arg-bins=-Wl,--icf=all");
        }
    }
}

/// rustc 1.90 or later on this target links with its own LLD unless the
/// flags name another linker.
fn links_with_rust_lld() -> bool {
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("linker")
        || std::env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some()
        || std::env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
    {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = std::process::Command::new(rustc).arg("--version").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = String::from_utf8_lossy(&out.stdout);
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    minor.is_some_and(|m| m >= 90)
}

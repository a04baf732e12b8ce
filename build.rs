//! The static binary's relative relocations are packed (DT_RELR).
//!
//! A static-pie binary relocates itself at start: one R_X86_64_RELATIVE
//! entry per pointer in its data, 24 bytes each, ~8,700 of them (vtables,
//! string tables): 209 KB of the 6 MiB budget. Packed as RELR bitmaps they
//! take a few KB (static binary 6,264,624 → 6,059,928 bytes). The relocating
//! code is the binary's own static glibc (2.36+ reads DT_RELR), so the host's
//! libc does not matter. Only for static builds: a dynamic binary linked so
//! would need glibc 2.36 on the machine that runs it (GLIBC_ABI_DT_RELR).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let gnu_linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if gnu_linux && features.split(',').any(|f| f == "crt-static") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

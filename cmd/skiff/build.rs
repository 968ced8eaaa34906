//! Links `skiff` and `skiff-agent` with packed relative relocations
//! (`-z pack-relative-relocs`, DT_RELR) where the toolchain and the C
//! library here take them.
//!
//! A position-independent executable carries one 24-byte relocation per
//! pointer in its data (vtables, string slices in tables, panic
//! locations): ~88,000 of them in `skiff` (2.1 MB) and ~26,000 in
//! `skiff-agent` (0.6 MB). The loader reads them all at start and their
//! pages stay resident; packed, they are a few kilobytes. The program's
//! layout and address randomization are as before.
//!
//! The flag needs a linker that knows it (GNU ld 2.38, lld 15) and a C
//! library that loads it (glibc 2.36). Rather than guess from versions,
//! this script links a one-line program with the flag, using the same
//! `rustc` and therefore the same linker, and runs it; only if both work
//! is the flag used, otherwise the binaries are linked as before and
//! Cargo prints why. A cross build is not probed (its program could not
//! run here) and links as before.

use std::path::PathBuf;
use std::process::Command;

const FLAG: &str = "-Wl,-z,pack-relative-relocs";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let host = std::env::var("HOST").unwrap_or_default();
    let target = std::env::var("TARGET").unwrap_or_default();
    if host != target || !target.contains("linux-gnu") {
        return;
    }
    match probe() {
        Ok(()) => {
            for bin in ["skiff", "skiff-agent"] {
                println!("cargo::rustc-link-arg-bin={bin}={FLAG}");
            }
        }
        Err(why) => println!(
            "cargo::warning=linking without packed relative relocations ({why}): \
             the binaries work, each keeps ~0.5-2 MB more resident"
        ),
    }
}

/// Links and runs a program with [`FLAG`].
fn probe() -> Result<(), String> {
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let source = out.join("relr_probe.rs");
    let program = out.join("relr_probe");
    std::fs::write(&source, "fn main() { println!(\"relr\"); }\n").map_err(|e| e.to_string())?;
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let built = Command::new(rustc)
        .args(["--edition=2024", "-C", &format!("link-arg={FLAG}"), "-o"])
        .arg(&program)
        .arg(&source)
        .output()
        .map_err(|e| format!("running rustc: {e}"))?;
    if !built.status.success() {
        let stderr = String::from_utf8_lossy(&built.stderr);
        let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(format!("the linker refused it: {first}"));
    }
    let ran = Command::new(&program)
        .output()
        .map_err(|e| format!("running the probe: {e}"))?;
    if !ran.status.success() || ran.stdout != b"relr\n" {
        return Err("the C library does not load it".into());
    }
    Ok(())
}

//! Links `skiff` and `skiff-agent` with packed relative relocations
//! (`-z pack-relative-relocs`, DT_RELR) where the toolchain and the C
//! library here take them.
//!
//! A position-independent executable carries one 24-byte relocation per
//! pointer in its data (vtables, string slices in tables, panic
//! locations): ~88,000 of them in `skiff` (2.1 MB) and ~26,500 in
//! `skiff-agent` (0.6 MB). The loader reads them all at start, and the
//! pages it read count in the process's resident memory until the kernel
//! reclaims them; packed, they are ~31 KB and ~7 KB. The program's layout,
//! address randomization and read-only relocations are as before.
//!
//! The flag needs a linker that knows it (GNU ld 2.38, lld 15) and a C
//! library that loads it: glibc 2.36, here and wherever the binaries run
//! (older ones refuse them: "version `GLIBC_ABI_DT_RELR' not found").
//! Rather than guess from versions, this script links a one-line program
//! with the flag, by the same `rustc` with the build's own linker and
//! flags, and runs it; only if both work is the flag used, otherwise the
//! binaries are linked as before and Cargo prints why. A cross build is
//! not probed (its program could not run here) and links as before, and
//! `SKIFF_NO_RELR=1` links as before for hosts with an older glibc than
//! this one. The answer is kept until this script, the compiler, the
//! flags or that variable change (a new glibc alone does not re-ask).

use std::path::PathBuf;
use std::process::Command;

const FLAG: &str = "-Wl,-z,pack-relative-relocs";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SKIFF_NO_RELR");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if var("SKIFF_NO_RELR") == "1" {
        return;
    }
    let linux_gnu = var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu";
    if var("HOST") != var("TARGET") || !linux_gnu {
        return;
    }
    match probe() {
        Ok(()) => {
            for bin in ["skiff", "skiff-agent"] {
                println!("cargo:rustc-link-arg-bin={bin}={FLAG}");
            }
        }
        Err(why) => println!(
            "cargo:warning=linking without packed relative relocations ({why}): \
             the binaries work, each keeps ~0.5-2 MB more resident"
        ),
    }
}

/// The line of a failed command's output that says why: the first error
/// the linker or the loader gave, else the last line.
fn reason(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim().trim_start_matches("= note:").trim())
        .filter(|l| !l.is_empty())
        .collect();
    let found = lines
        .iter()
        .find(|l| (l.contains("error:") || l.contains("not found")) && !l.contains("linking with"))
        .or(lines.last());
    found.map_or_else(String::new, |l| l.to_string())
}

/// Links and runs a program with [`FLAG`], as the build links: its
/// `rustc`, its flags (`CARGO_ENCODED_RUSTFLAGS`) and its linker
/// (`RUSTC_LINKER`, from `target.<triple>.linker`).
fn probe() -> Result<(), String> {
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let source = out.join("relr_probe.rs");
    let program = out.join("relr_probe");
    std::fs::write(&source, "fn main() { println!(\"relr\"); }\n").map_err(|e| e.to_string())?;
    let mut rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()));
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    rustc.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    if let Ok(linker) = std::env::var("RUSTC_LINKER") {
        rustc.arg(format!("-Clinker={linker}"));
    }
    let built = rustc
        .args(["--edition=2024", "-C", &format!("link-arg={FLAG}"), "-o"])
        .arg(&program)
        .arg(&source)
        .output()
        .map_err(|e| format!("running rustc: {e}"))?;
    if !built.status.success() {
        return Err(format!("the link failed: {}", reason(&built.stderr)));
    }
    let ran = Command::new(&program)
        .output()
        .map_err(|e| format!("running the probe: {e}"))?;
    if !ran.status.success() || ran.stdout != b"relr\n" {
        return Err(format!(
            "the linked program did not run: {}",
            reason(&ran.stderr)
        ));
    }
    Ok(())
}

//! Builds the sandbox's `pause` program: a freestanding static executable
//! (no libc), so the sandbox image can be `FROM scratch` plus one file.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=pause/pause.c");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("pause");
    let compiler = cc::Build::new().get_compiler();
    let status = Command::new(compiler.path())
        .args([
            "-static",
            "-nostdlib",
            "-nostartfiles",
            "-fno-stack-protector",
            "-O2",
            "-s",
            "-o",
        ])
        .arg(&out)
        .arg("pause/pause.c")
        .status()
        .expect("running the C compiler for pause/pause.c");
    assert!(status.success(), "compiling pause/pause.c failed");
}

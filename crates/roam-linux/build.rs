//! Builds the tc-BPF translator (`bpf/translate.bpf.c`) with clang into
//! `$OUT_DIR/translate.bpf.o`, which `src/tcbpf.rs` embeds.
//!
//! Without clang (or without libbpf's headers) the crate still builds: a warning says
//! so, the `roam_bpf` cfg stays unset, and the loader answers "built without clang".
//! A compile error in the C file itself fails the build: that is a bug, not a missing
//! tool. `CLANG` chooses the compiler (default `clang`).

use std::env;
use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "bpf/translate.bpf.c";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(roam_bpf)");
    println!("cargo::rerun-if-changed={SOURCE}");
    println!("cargo::rerun-if-env-changed=CLANG");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("translate.bpf.o");

    // `-target bpf` has no system include directory of its own for <asm/...>: Debian
    // keeps those under the host's multiarch directory.
    let multiarch = match Command::new(&clang).arg("-print-multiarch").output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        Ok(_) => String::new(),
        Err(e) => {
            println!(
                "cargo::warning=built without clang ({clang}: {e}): the tc-BPF data plane is unavailable; install clang and libbpf-dev"
            );
            return;
        }
    };
    let mut cmd = Command::new(&clang);
    cmd.args([
        "-O2",
        "-g",
        "-target",
        "bpf",
        "-Wall",
        "-Wextra",
        "-Wno-unused-parameter",
    ]);
    if !multiarch.is_empty() {
        cmd.arg(format!("-I/usr/include/{multiarch}"));
    }
    cmd.arg("-c").arg(SOURCE).arg("-o").arg(&out);
    let result = match cmd.output() {
        Ok(r) => r,
        Err(e) => {
            println!(
                "cargo::warning=built without clang ({clang}: {e}): the tc-BPF data plane is unavailable"
            );
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&result.stderr);
    if !result.status.success() {
        if stderr.contains("file not found") {
            // A missing header (libbpf-dev's bpf/bpf_helpers.h, linux-libc-dev): a tool
            // missing, like clang itself.
            let first = stderr
                .lines()
                .find(|l| l.contains("file not found"))
                .unwrap_or("");
            println!(
                "cargo::warning=built without clang's BPF object ({first}): the tc-BPF data plane is unavailable; install libbpf-dev"
            );
            return;
        }
        panic!("{clang} could not compile {SOURCE}:\n{stderr}");
    }
    for line in stderr.lines().filter(|l| l.contains("warning:")) {
        println!("cargo::warning={SOURCE}: {line}");
    }
    println!("cargo::rustc-cfg=roam_bpf");
}

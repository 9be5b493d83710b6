//! Compiles the C eBPF programs under `ebpf/` with clang into `$OUT_DIR`, where the agent embeds
//! them. Stops with a message naming what to install when clang or the headers are missing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The programs to build: source file under `ebpf/` → object name in `$OUT_DIR`.
const PROGRAMS: &[(&str, &str)] = &[("tap.c", "tap.o"), ("tls.c", "tls.o")];

fn main() {
    let ebpf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ebpf");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = std::env::var("PODTAP_CLANG").unwrap_or_else(|_| "clang".into());

    println!("cargo:rerun-if-env-changed=PODTAP_CLANG");
    println!("cargo:rerun-if-changed={}", ebpf.display());

    if Command::new(&clang).arg("--version").output().is_err() {
        fail(&format!(
            "`{clang}` was not found. podtap compiles its eBPF programs with clang: \
             install it with `apt-get install clang libbpf-dev linux-libc-dev` \
             (or run scripts/install-deps.sh), or point PODTAP_CLANG at a clang binary."
        ));
    }
    for header in ["/usr/include/bpf/bpf_helpers.h", "/usr/include/linux/bpf.h"] {
        if !Path::new(header).exists() {
            fail(&format!(
                "{header} is missing: install `libbpf-dev linux-libc-dev` \
                 (apt-get install libbpf-dev linux-libc-dev, or run scripts/install-deps.sh)."
            ));
        }
    }

    for (src, obj) in PROGRAMS {
        let output = Command::new(&clang)
            .args([
                "-O2",
                "-g",
                "-target",
                "bpf",
                "-Wall",
                "-Werror",
                "-D__TARGET_ARCH_x86",
            ])
            .arg("-I/usr/include/x86_64-linux-gnu")
            .arg(format!("-I{}", ebpf.join("include").display()))
            .arg("-c")
            .arg(ebpf.join(src))
            .arg("-o")
            .arg(out.join(obj))
            .output()
            .unwrap_or_else(|e| fail(&format!("running {clang}: {e}")));
        if !output.status.success() {
            fail(&format!(
                "clang failed on ebpf/{src}:\n{}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("\nerror: {msg}\n");
    std::process::exit(1);
}

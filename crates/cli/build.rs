//! Builds the in-sandbox agent as a static binary (crt-static) and embeds
//! it in `spinup`, so one binary carries everything a sandbox needs.
//!
//! crt-static cannot be set workspace-wide (proc-macros must stay dynamic),
//! so the agent gets its own cargo invocation with an explicit --target,
//! which applies the flag to target artifacts only. It lands in
//! `target/agent/`, and a copy goes next to `spinup` as `spinup-agent`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().parent().unwrap().to_path_buf();
    for p in [
        "crates/agent/src",
        "crates/agent/Cargo.toml",
        "crates/protocol/src",
        "crates/protocol/Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    // OUT_DIR is <target>/<profile>/build/spinup-<hash>/out
    let profile_dir = out_dir.ancestors().nth(3).unwrap().to_path_buf();
    let target_root = profile_dir.parent().unwrap().to_path_buf();
    let release = std::env::var("PROFILE").unwrap() == "release";
    let triple = "x86_64-unknown-linux-gnu";
    let agent_target = target_root.join("agent");

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "-p", "spinup-agent", "--bin", "spinup-agent", "--target", triple, "--target-dir"])
        .arg(&agent_target)
        .env(
            format!("CARGO_TARGET_{}_RUSTFLAGS", triple.to_uppercase().replace('-', "_")),
            "-C target-feature=+crt-static",
        )
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("running cargo for the agent");
    assert!(status.success(), "building the static spinup-agent failed");
    let built = agent_target.join(triple).join(if release { "release" } else { "debug" }).join("spinup-agent");
    let bytes = std::fs::read(&built).expect("reading the built agent");
    assert!(!has_interp(&bytes), "{} is dynamically linked; crt-static did not apply", built.display());
    let embedded = out_dir.join("spinup-agent");
    std::fs::write(&embedded, &bytes).unwrap();
    let _ = std::fs::copy(&built, profile_dir.join("spinup-agent"));
    println!("cargo:rustc-env=SPINUP_EMBEDDED_AGENT={}", embedded.display());
}

/// True when an ELF64 file has a PT_INTERP program header (needs ld.so).
fn has_interp(elf: &[u8]) -> bool {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
        return true;
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= elf.len() && u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == 3
    })
}

//! `image build`: compile the bare-metal binaries and lay out the image.
#![forbid(unsafe_code)]

use crate::{elf, firmware};
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The custom target spec, relative to the workspace root.
pub const TARGET_SPEC: &str = "x86_64-vellum.json";
/// Where the image goes, relative to the workspace root.
pub const IMAGE_PATH: &str = "target/vellum.bin";

/// Finds the workspace root: the first ancestor of the current directory that
/// holds the target spec, else the one this tool was compiled in.
pub fn workspace_root() -> PathBuf {
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            if dir.join(TARGET_SPEC).is_file() && dir.join("Cargo.toml").is_file() {
                return dir.to_path_buf();
            }
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The `cargo build` for the bare-metal packages, with flags that keep the
/// image reproducible (no absolute paths, no build ids).
pub fn cargo_command(root: &Path, profile: &str, features: &[String]) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .arg("build")
        .args(["-p", "vellum-boot", "--bin", "vellum-boot"])
        .args(["-p", "vellum-kernel", "--bin", "vellum-kernel"])
        .args(["--target", TARGET_SPEC])
        .args([
            "-Zbuild-std=core,alloc",
            "-Zbuild-std-features=compiler-builtins-mem",
            "-Zjson-target-spec",
        ])
        .args(["--profile", profile]);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    // Keep machine-specific paths out of the binaries (panic locations).
    let mut flags = Vec::new();
    for (var, to) in [("CARGO_HOME", "/cargo"), ("RUSTUP_HOME", "/rustup")] {
        if let Some(home) = std::env::var_os(var).map(PathBuf::from).or_else(|| {
            std::env::var_os("HOME").map(|h| {
                PathBuf::from(h).join(format!(".{}", var.to_lowercase().trim_end_matches("_home")))
            })
        }) {
            flags.push(format!("--remap-path-prefix={}={to}", home.display()));
        }
    }
    flags.push(format!("--remap-path-prefix={}=/vellum", root.display()));
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\u{1f}"));
    // The outer cargo (when run through `cargo run`) must not leak its flags.
    for var in ["RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "CARGO_TARGET_DIR"] {
        cmd.env_remove(var);
    }
    cmd
}

/// Builds everything with the given cargo `features` (e.g.
/// `vellum-kernel/unconstrained-io`, measurement only; normally none) and
/// writes the image to `out`. Returns the laid-out image.
pub fn build(
    root: &Path,
    profile: &str,
    features: &[String],
    out: &Path,
) -> Result<firmware::Image, String> {
    let status = cargo_command(root, profile, features)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build of the bare-metal binaries failed ({status})"
        ));
    }
    let dir_profile = if profile == "dev" { "debug" } else { profile };
    let bin_dir = root.join("target/x86_64-vellum").join(dir_profile);
    layout_files(
        &bin_dir.join("vellum-boot"),
        &bin_dir.join("vellum-kernel"),
        out,
    )
}

/// Lays out an image from two linked ELF files and writes it to `out`.
pub fn layout_files(boot: &Path, kernel: &Path, out: &Path) -> Result<firmware::Image, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let boot = elf::read_boot(&read(boot)?).map_err(|e| format!("boot ELF: {e}"))?;
    let kernel = elf::read_kernel(&read(kernel)?).map_err(|e| format!("kernel ELF: {e}"))?;
    let img = firmware::build(&boot, &kernel).map_err(|e| e.to_string())?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(out, &img.bytes).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    Ok(img)
}

//! `image`: builds the Vellum firmware image and computes what a verifier needs.
#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode};
use vellum_image::{build, firmware, snp, verify};

const USAGE: &str = "\
image - build and inspect the Vellum firmware image

USAGE:
    image build [--profile NAME] [--out PATH] [--features LIST]
        Compile vellum-boot and vellum-kernel for the bare-metal target
        (x86_64-vellum.json, -Z build-std) and lay out the image
        (default target/vellum.bin, release profile). --features passes
        cargo features (measurement builds only, e.g.
        vellum-kernel/unconstrained-io: see bench/trusted-io.sh).
    image layout --boot ELF --kernel ELF --out PATH
        Lay out an image from two already linked ELF files.
    image measure [OPTIONS]
        The SEV-SNP launch digest of an image as QEMU launches it (see
        `image measure --help`).
    image id-block --id-key PEM [OPTIONS]
        The SNP ID block and ID authentication structure for sev-snp-guest
        (see `image id-block --help`).
    image verify --url https://HOST:PORT (--measurement HEX | --image PATH) [OPTIONS]
        Attest a running guest: check the SEV-SNP report its /attestation
        endpoint returns against the TLS certificate, a fresh nonce, the
        expected launch digest and, with --certs DIR, AMD's ARK/ASK/VCEK
        (see `image verify --help`). Exits non-zero if a check fails.
    image info [PATH]
        Check an image the way QEMU and the boot stage read it and print its
        layout (default target/vellum.bin).
    image help
        This text.

The image is a QEMU `-bios` file: a multiple of 64 KiB, at most 8 MiB, mapped
so that it ends at 4 GiB, with the reset vector in its last 16 bytes and the
OVMF-compatible GUIDed table (SEV info block, ASEV metadata, kernel payload)
just below it. See boot/src/layout.rs for the address map.
";

fn value(args: &[String], i: &mut usize, flag: &str) -> Result<String, String> {
    *i += 1;
    args.get(*i)
        .cloned()
        .ok_or_else(|| format!("{flag} needs a value"))
}

fn cmd_build(args: &[String]) -> Result<(), String> {
    let root = build::workspace_root();
    let mut profile = "release".to_string();
    let mut out = root.join(build::IMAGE_PATH);
    let mut features = Vec::new();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--profile" => profile = value(args, &mut i, "--profile")?,
            "--features" => features.extend(
                value(args, &mut i, "--features")?
                    .split(',')
                    .filter(|f| !f.is_empty())
                    .map(String::from),
            ),
            "--out" => out = PathBuf::from(value(args, &mut i, "--out")?),
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("image build: unknown argument `{other}`")),
        }
        i += 1;
    }
    let img = build::build(&root, &profile, &features, &out)?;
    report(&out, &img);
    write_digest(&out, &img)
}

/// Writes the launch digest for the default launch (1 vCPU, EPYC-v4, guest
/// features 0x1) next to the image, as `<image>.measurement` (hex).
fn write_digest(out: &std::path::Path, img: &firmware::Image) -> Result<(), String> {
    let opts = snp::LaunchOptions::default();
    let digest = snp::launch_digest(&img.bytes, &opts).map_err(|e| e.to_string())?;
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let path = out.with_extension("measurement");
    std::fs::write(&path, format!("{hex}\n"))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("  SNP launch digest (1 vCPU, EPYC-v4, features 0x1): {hex}");
    println!("  written to {}", path.display());
    Ok(())
}

fn cmd_layout(args: &[String]) -> Result<(), String> {
    let (mut boot, mut kernel, mut out) = (None, None, None);
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--boot" => boot = Some(PathBuf::from(value(args, &mut i, "--boot")?)),
            "--kernel" => kernel = Some(PathBuf::from(value(args, &mut i, "--kernel")?)),
            "--out" => out = Some(PathBuf::from(value(args, &mut i, "--out")?)),
            other => return Err(format!("image layout: unknown argument `{other}`")),
        }
        i += 1;
    }
    let (Some(boot), Some(kernel), Some(out)) = (boot, kernel, out) else {
        return Err("image layout needs --boot ELF --kernel ELF --out PATH".into());
    };
    let img = build::layout_files(&boot, &kernel, &out)?;
    report(&out, &img);
    write_digest(&out, &img)
}

fn report(out: &std::path::Path, img: &firmware::Image) {
    println!(
        "image: {} ({} bytes = {} KiB, GPA {:#x}..4 GiB)",
        out.display(),
        img.size(),
        img.size() >> 10,
        img.base()
    );
    println!(
        "  kernel payload {:#x}+{:#x}, ASEV metadata {:#x}, table {:#x}, AP reset {:#x}",
        img.payload_gpa, img.payload_len, img.metadata_gpa, img.table_gpa, img.ap_reset
    );
}

fn cmd_info(args: &[String]) -> Result<(), String> {
    let path = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| build::workspace_root().join(build::IMAGE_PATH));
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let s = firmware::verify(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("{}: {} bytes, ends at 4 GiB", path.display(), s.size);
    println!("  SEV info block: AP reset address {:#x}", s.ap_reset);
    for sec in &s.sections {
        println!(
            "  ASEV {:?}: {:#x}..{:#x}",
            sec.kind,
            sec.base,
            u64::from(sec.base) + u64::from(sec.len)
        );
    }
    println!(
        "  kernel payload: GPA {:#x}, {} bytes, entry {:#x}",
        s.payload.0, s.payload.1, s.entry
    );
    for (va, len) in &s.segments {
        println!("    segment {va:#x}..{:#x}", va + len);
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let result = match cmd.as_str() {
        "build" => cmd_build(rest),
        "layout" => cmd_layout(rest),
        "info" => cmd_info(rest),
        "measure" => snp::cli_measure(rest),
        "id-block" => snp::cli_id_block(rest),
        "verify" => verify::cli_verify(rest),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command `{other}`; see `image help`")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("image: error: {e}");
            ExitCode::FAILURE
        }
    }
}

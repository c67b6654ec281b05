//! `image measure` / `image id-block` behaviour that needs no external tools:
//! defaults, error messages for bad inputs, key handling.
#![forbid(unsafe_code)]

mod common;

use common::{Synth, scratch, vellum_sections, words};
use vellum_boot::fwtable::{Section, SectionType};
use vellum_image::snp::{
    LaunchOptions, MeasureError, id_block_command, launch_digest, measure, measure_command,
};

const P256_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgWWDmo+CQAXh3q5pY
gJwfOLB/9QFmZqisI5Vpv2VGU0KhRANCAAQx+DIh4V+YyHBQrh0GVhpKeIYT9fzk
U3xQbs/eFdBt7z9vgxAVyr5g4nrWBKSlXrKNzEOe6YeI+jQap7Cx/TCL
-----END PRIVATE KEY-----
";

fn write_image(dir: &std::path::Path, name: &str, img: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, img).unwrap();
    p.display().to_string()
}

fn measure_err(img: &[u8]) -> String {
    let dir = scratch("err");
    let path = write_image(&dir, "img.bin", img);
    measure_command(&words(&["--image", &path])).unwrap_err()
}

#[test]
fn default_options_are_qemu_epyc_v4_one_vcpu() {
    let o = LaunchOptions::default();
    assert_eq!(o.vcpus, 1);
    assert_eq!(o.vcpu_sig, 0x0080_0f12);
    assert_eq!(o.guest_features, 0x1);
    assert_eq!(o, LaunchOptions::qemu_default());

    let img = Synth::valid(0x2_0000, 7).build();
    let dir = scratch("defaults");
    let path = write_image(&dir, "img.bin", &img);
    let hex = measure_command(&words(&["--image", &path])).unwrap();
    let d = launch_digest(&img, &o).unwrap();
    let want: String = d.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, format!("{want}\n"));
    let explicit = measure_command(&words(&[
        "--image",
        &path,
        "--vcpus",
        "1",
        "--vcpu-type",
        "EPYC-v4",
        "--guest-features=0x1",
    ]))
    .unwrap();
    assert_eq!(explicit, hex);
}

#[test]
fn every_input_changes_the_digest() {
    let img = Synth::valid(0x2_0000, 7).build();
    let base = LaunchOptions::default();
    let d0 = launch_digest(&img, &base).unwrap();
    let variants = [
        LaunchOptions { vcpus: 2, ..base },
        LaunchOptions {
            vcpu_sig: 0xa00f11,
            ..base
        },
        LaunchOptions {
            guest_features: 0x21,
            ..base
        },
    ];
    for v in variants {
        assert_ne!(launch_digest(&img, &v).unwrap(), d0, "{v:?}");
    }
    // A different AP reset address changes only multi-vCPU digests.
    let mut s = Synth::valid(0x2_0000, 7);
    s.reset_addr = Some(0x0000_8000);
    let other = s.build();
    let two = LaunchOptions { vcpus: 2, ..base };
    assert_ne!(
        launch_digest(&other, &two).unwrap(),
        launch_digest(&img, &two).unwrap()
    );
    // Metadata order matters.
    let mut s = Synth::valid(0x2_0000, 7);
    let mut secs = vellum_sections();
    secs.reverse();
    s.sections = Some(secs);
    assert_ne!(launch_digest(&s.build(), &base).unwrap(), d0);
    // One flipped image byte.
    let mut flipped = img.clone();
    flipped[100] ^= 1;
    assert_ne!(launch_digest(&flipped, &base).unwrap(), d0);
}

#[test]
fn json_output_lists_the_inputs() {
    let img = Synth::valid(0x3_0000, 9).build();
    let dir = scratch("json");
    let path = write_image(&dir, "img.bin", &img);
    let out = measure_command(&words(&[
        "--image",
        &path,
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-Milan",
        "--format",
        "json",
    ]))
    .unwrap();
    let m = measure(
        &img,
        &LaunchOptions {
            vcpus: 2,
            vcpu_sig: 0xa00f11,
            guest_features: 1,
        },
    )
    .unwrap();
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    for needle in [
        format!("\"launch_digest\": \"{}\"", hex(&m.digest)),
        format!("\"image_digest\": \"{}\"", hex(&m.image_digest)),
        "\"image_size\": 196608".to_string(),
        "\"image_gpa\": \"0xfffd0000\"".to_string(),
        "\"vcpus\": 2".to_string(),
        "\"vcpu_type\": \"EPYC-Milan\"".to_string(),
        "\"vcpu_sig\": \"0xa00f11\"".to_string(),
        "\"guest_features\": \"0x1\"".to_string(),
        "\"ap_reset_addr\": \"0xfffff040\"".to_string(),
        "{\"type\": \"SNP_SEC_MEM\", \"page_type\": \"ZERO\", \"base\": \"0x3000\", \"len\": \"0x8d000\"}"
            .to_string(),
        "\"type\": \"SNP_SECRETS\", \"page_type\": \"SECRETS\", \"base\": \"0x1000\"".to_string(),
        "\"type\": \"CPUID\", \"page_type\": \"CPUID\", \"base\": \"0x2000\"".to_string(),
    ] {
        assert!(out.contains(&needle), "missing {needle} in {out}");
    }
}

#[test]
fn bad_image_sizes() {
    let mut img = Synth::valid(0x2_0000, 1).build();
    img.extend_from_slice(&[0; 0x1000]);
    assert_eq!(
        launch_digest(&img, &LaunchOptions::default()),
        Err(MeasureError::ImageSize(0x2_1000))
    );
    let e = measure_err(&img);
    assert!(
        e.contains("0x21000 is not a non-zero multiple of 64 KiB"),
        "{e}"
    );
    assert!(e.contains("could not load PC BIOS"), "{e}");
    assert_eq!(
        launch_digest(&[], &LaunchOptions::default()),
        Err(MeasureError::ImageSize(0))
    );
}

#[test]
fn image_without_metadata() {
    let mut s = Synth::valid(0x1_0000, 2);
    s.sections = None;
    let img = s.build();
    let e = measure_err(&img);
    assert!(e.contains("no SEV metadata"), "{e}");
    assert!(e.contains("Failed to locate SEV metadata header"), "{e}");
    // No table at all.
    let mut s = Synth::valid(0x1_0000, 2);
    s.table = false;
    let e = measure_err(&s.build());
    assert!(e.contains("no GUIDed table footer"), "{e}");
}

#[test]
fn image_without_info_block() {
    let mut s = Synth::valid(0x1_0000, 3);
    s.reset_addr = None;
    let e = measure_err(&s.build());
    assert!(e.contains("no SEV info block"), "{e}");
    let mut s = Synth::valid(0x1_0000, 3);
    s.reset_addr = Some(0);
    let e = measure_err(&s.build());
    assert!(e.contains("reset address is zero"), "{e}");
}

#[test]
fn bad_sections_and_vcpu_counts() {
    for (sec, want) in [
        (
            Section {
                base: 0x3100,
                len: 0x1000,
                kind: SectionType::SecMem,
            },
            "4 KiB aligned",
        ),
        (
            Section {
                base: 0x1000,
                len: 0x2000,
                kind: SectionType::Secrets,
            },
            "exactly one page",
        ),
        (
            Section {
                base: 0x1000,
                len: 0,
                kind: SectionType::Cpuid,
            },
            "empty section",
        ),
    ] {
        let mut s = Synth::valid(0x1_0000, 4);
        s.sections = Some(vec![sec]);
        let e = measure_err(&s.build());
        assert!(e.contains(want), "{e}");
    }
    let img = Synth::valid(0x1_0000, 4).build();
    let zero = LaunchOptions {
        vcpus: 0,
        ..LaunchOptions::default()
    };
    assert_eq!(launch_digest(&img, &zero), Err(MeasureError::VcpuCount(0)));
}

#[test]
fn unknown_vcpu_type() {
    let e = measure_command(&words(&["--vcpu-type", "EPYC-Zen9"])).unwrap_err();
    assert!(e.contains("unknown vCPU type 'EPYC-Zen9'"), "{e}");
    assert!(e.contains("--vcpu-sig"), "{e}");
    let e = id_block_command(&words(&[
        "--id-key",
        "/nonexistent.pem",
        "--vcpu-type",
        "host",
    ]))
    .unwrap_err();
    // The key is checked first; with a good key the vCPU type is reported.
    assert!(e.contains("cannot read key file"), "{e}");
}

#[test]
fn unreadable_and_wrong_keys() {
    let dir = scratch("keys");
    let missing = dir.join("missing.pem").display().to_string();
    let e = id_block_command(&words(&[
        "--id-key",
        &missing,
        "--measurement",
        &"00".repeat(48),
    ]))
    .unwrap_err();
    assert!(
        e.contains("cannot read key file") && e.contains("missing.pem"),
        "{e}"
    );

    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, b"\x00\x01 not a key").unwrap();
    let g = garbage.display().to_string();
    let e =
        id_block_command(&words(&["--id-key", &g, "--measurement", &"00".repeat(48)])).unwrap_err();
    assert!(e.contains("not a PEM private key"), "{e}");

    let p256 = dir.join("p256.pem");
    std::fs::write(&p256, P256_PKCS8).unwrap();
    let p = p256.display().to_string();
    let e =
        id_block_command(&words(&["--id-key", &p, "--measurement", &"00".repeat(48)])).unwrap_err();
    assert!(e.contains("not an ECDSA P-384"), "{e}");

    // A good ID key with a bad author key.
    let id = dir.join("id.pem").display().to_string();
    id_block_command(&words(&["--gen-key", &id])).unwrap();
    let e = id_block_command(&words(&[
        "--id-key",
        &id,
        "--author-key",
        &p,
        "--measurement",
        &"00".repeat(48),
    ]))
    .unwrap_err();
    assert!(
        e.contains("not an ECDSA P-384") && e.contains("p256.pem"),
        "{e}"
    );
    let e = id_block_command(&words(&["--id-key", &id, "--vcpu-type", "host"])).unwrap_err();
    assert!(e.contains("unknown vCPU type 'host'"), "{e}");
}

#[test]
fn gen_key_and_policy_rules() {
    let dir = scratch("genkey");
    let id = dir.join("id.pem");
    let ids = id.display().to_string();
    let out = id_block_command(&words(&["--gen-key", &ids])).unwrap();
    assert!(out.contains("wrote a new P-384 key"), "{out}");
    let pem = std::fs::read_to_string(&id).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&id).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key file mode {mode:o}");
    }
    let e = id_block_command(&words(&["--gen-key", &ids])).unwrap_err();
    assert!(e.contains("exists; not overwriting"), "{e}");
    assert_eq!(std::fs::read_to_string(&id).unwrap(), pem);
    let e = id_block_command(&words(&["--gen-key", &ids, "--policy", "0x30000"])).unwrap_err();
    assert!(e.contains("no other options"), "{e}");

    let ld = "11".repeat(48);
    let e = id_block_command(&words(&[
        "--id-key",
        &ids,
        "--measurement",
        &ld,
        "--policy",
        "0x10000",
    ]))
    .unwrap_err();
    assert!(e.contains("bit 17"), "{e}");
    let e = id_block_command(&words(&[
        "--id-key",
        &ids,
        "--measurement",
        &ld,
        "--vcpus",
        "2",
    ]))
    .unwrap_err();
    assert!(e.contains("--measurement excludes"), "{e}");
    let e = id_block_command(&words(&[
        "--id-key",
        &ids,
        "--measurement",
        &ld,
        "--family-id",
        "12",
    ]))
    .unwrap_err();
    assert!(e.contains("32 hex digits"), "{e}");

    let out = id_block_command(&words(&["--id-key", &ids, "--measurement", &ld])).unwrap();
    assert!(
        out.starts_with("id-block=") && out.contains(",id-auth="),
        "{out}"
    );
    assert!(!out.contains("author-key-enabled"), "{out}");
    assert_eq!(out.lines().count(), 1);
}

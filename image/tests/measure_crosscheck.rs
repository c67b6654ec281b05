//! Cross-checks against independent implementations:
//! - our launch digest against virtee's `sev-snp-measure` 0.0.13 (PyPI) for
//!   1/2/4 vCPUs × EPYC, EPYC-v4, EPYC-Rome, EPYC-Milan, EPYC-Genoa, on two
//!   synthetic images (and `target/vellum.bin` when it exists);
//! - our ID block / ID auth against Python `cryptography` (signature checks) and
//!   `snp-create-id-block` (structure, for the same keys and digest).
//!
//! The tools live in a virtual environment this test creates itself
//! (`python3 -m venv` + `pip install sev-snp-measure==0.0.13`) at
//! `<workspace>/target/ssm-venv`, or `$VELLUM_SSM_VENV`; an existing good one is
//! reused. If it cannot be created the tests fail with the reason: they never
//! skip.
#![forbid(unsafe_code)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{Synth, scratch, vellum_sections, words};
use vellum_image::snp::{LaunchOptions, id_block_command, launch_digest, measure, measure_command};

const SSM_VERSION: &str = "0.0.13";
const VCPU_COUNTS: [u32; 3] = [1, 2, 4];
const VCPU_TYPES: [&str; 5] = ["EPYC", "EPYC-v4", "EPYC-Rome", "EPYC-Milan", "EPYC-Genoa"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn venv_dir() -> PathBuf {
    std::env::var_os("VELLUM_SSM_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target").join("ssm-venv"))
}

fn python(venv: &Path) -> PathBuf {
    venv.join("bin").join("python")
}

fn venv_is_good(venv: &Path) -> bool {
    let check = format!(
        "import importlib.metadata as m, cryptography, sevsnpmeasure.cli, sevsnpmeasure.id_block\n\
         assert m.version('sev-snp-measure') == '{SSM_VERSION}'"
    );
    Command::new(python(venv))
        .args(["-c", &check])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what}: {cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn create_venv() -> Result<PathBuf, String> {
    let dir = venv_dir();
    if venv_is_good(&dir) {
        return Ok(dir);
    }
    // Build next to the final place and rename, so concurrent test runs never
    // see a half-installed environment (run it by `python -m`, so the
    // relocation does not matter).
    let parent = dir.parent().ok_or("venv path has no parent")?;
    std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    let tmp = parent.join(format!("ssm-venv.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let cleanup = |e: String| {
        let _ = std::fs::remove_dir_all(&tmp);
        e
    };
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&tmp),
        "creating the sev-snp-measure venv (needs python3 with venv; on Debian: \
         apt-get install python3-venv)",
    )
    .map_err(cleanup)?;
    run(
        Command::new(python(&tmp)).args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
            &format!("sev-snp-measure=={SSM_VERSION}"),
        ]),
        "installing sev-snp-measure from PyPI (needs network access to PyPI)",
    )
    .map_err(cleanup)?;
    if venv_is_good(&dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Ok(dir);
    }
    if dir.exists() {
        let old = parent.join(format!("ssm-venv.old-{}", std::process::id()));
        let _ = std::fs::rename(&dir, &old);
        let _ = std::fs::remove_dir_all(&old);
    }
    if std::fs::rename(&tmp, &dir).is_err() && !venv_is_good(&dir) {
        return Err(format!(
            "cannot move {} to {}",
            tmp.display(),
            dir.display()
        ));
    }
    let _ = std::fs::remove_dir_all(&tmp);
    if venv_is_good(&dir) {
        Ok(dir)
    } else {
        Err(format!(
            "{} was installed but `import sevsnpmeasure` fails",
            dir.display()
        ))
    }
}

/// The venv, created once per test binary.
fn venv() -> PathBuf {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match VENV.get_or_init(create_venv) {
        Ok(p) => p.clone(),
        Err(e) => panic!(
            "sev-snp-measure {SSM_VERSION} is required for the measurement cross-check and \
             could not be set up: {e}"
        ),
    }
}

fn ssm_measure(venv: &Path, args: &[&str]) -> String {
    let out = run(
        Command::new(python(venv))
            .args([
                "-c",
                "import sys; from sevsnpmeasure.cli import main; sys.argv[0] = 'sev-snp-measure'; sys.exit(main())",
            ])
            .args(args),
        "sev-snp-measure",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    out.trim().to_string()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the vCPU matrix on one image, in parallel; returns the printed table.
fn crosscheck_matrix(venv: &Path, image: &Path) -> String {
    let path = image.display().to_string();
    let jobs: Vec<(u32, &str)> = VCPU_COUNTS
        .iter()
        .flat_map(|&n| VCPU_TYPES.iter().map(move |&t| (n, t)))
        .collect();
    let results: Vec<(u32, &str, String, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .chunks(jobs.len().div_ceil(4))
            .map(|chunk| {
                let path = &path;
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|&(n, t)| {
                            let ns = n.to_string();
                            let theirs = ssm_measure(
                                venv,
                                &[
                                    "--mode",
                                    "snp",
                                    "--vcpus",
                                    &ns,
                                    "--vcpu-type",
                                    t,
                                    "--vmm-type",
                                    "QEMU",
                                    "--guest-features",
                                    "0x1",
                                    "--ovmf",
                                    path,
                                    "--output-format",
                                    "hex",
                                ],
                            );
                            let ours = measure_command(&words(&[
                                "--image",
                                path,
                                "--vcpus",
                                &ns,
                                "--vcpu-type",
                                t,
                                "--format",
                                "hex",
                            ]))
                            .unwrap_or_else(|e| panic!("image measure failed: {e}"));
                            (n, t, ours.trim().to_string(), theirs)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("matrix thread"))
            .collect()
    });
    let mut table = format!("cross-check {path}:\n");
    let mut bad = Vec::new();
    for (n, t, ours, theirs) in &results {
        let ok = ours == theirs;
        table.push_str(&format!(
            "  vcpus={n} {t:<11} {} {}\n",
            if ok { "OK  " } else { "DIFF" },
            &ours[..16.min(ours.len())]
        ));
        if !ok {
            bad.push(format!("vcpus={n} {t}: ours {ours} ssm {theirs}"));
        }
    }
    assert_eq!(results.len(), VCPU_COUNTS.len() * VCPU_TYPES.len());
    assert!(bad.is_empty(), "{table}mismatches:\n{}", bad.join("\n"));
    table
}

#[test]
fn digest_matches_sev_snp_measure_on_synthetic_images() {
    let venv = venv();
    let dir = scratch("matrix");
    // A: 256 KiB, AP reset address in the boot ROM (like ours), Vellum's
    // section order. B: 192 KiB, AP reset address in low RAM, sections in
    // reverse order (table order is what gets measured).
    let a = Synth::valid(0x4_0000, 0x5eed_0001).build();
    let mut b = Synth::valid(0x3_0000, 0x5eed_0002);
    b.reset_addr = Some(0x0001_2340);
    let mut secs = vellum_sections();
    secs.reverse();
    b.sections = Some(secs);
    let b = b.build();
    for (name, img) in [("a.bin", &a), ("b.bin", &b)] {
        let p = dir.join(name);
        std::fs::write(&p, img).unwrap();
        println!("{}", crosscheck_matrix(&venv, &p));
    }
}

#[test]
fn vcpu_sig_guest_features_and_image_digest_match() {
    let venv = venv();
    let dir = scratch("sig");
    let img = Synth::valid(0x2_0000, 0x5eed_0003).build();
    let p = dir.join("img.bin");
    std::fs::write(&p, &img).unwrap();
    let path = p.display().to_string();
    for (sig, features, vcpus) in [("0xa00f11", "0x21", "3"), ("0xb00f00", "0x1", "2")] {
        let theirs = ssm_measure(
            &venv,
            &[
                "--mode",
                "snp",
                "--vcpus",
                vcpus,
                "--vcpu-sig",
                sig,
                "--vmm-type",
                "QEMU",
                "--guest-features",
                features,
                "--ovmf",
                &path,
                "--output-format",
                "hex",
            ],
        );
        let ours = measure_command(&words(&[
            "--image",
            &path,
            "--vcpus",
            vcpus,
            "--vcpu-sig",
            sig,
            "--guest-features",
            features,
        ]))
        .unwrap();
        assert_eq!(
            ours.trim(),
            theirs,
            "sig {sig} features {features} vcpus {vcpus}"
        );
    }
    // The digest after the image pages alone (ssm --mode snp:ovmf-hash).
    let theirs = ssm_measure(
        &venv,
        &[
            "--mode",
            "snp:ovmf-hash",
            "--ovmf",
            &path,
            "--output-format",
            "hex",
        ],
    );
    let m = measure(&img, &LaunchOptions::default()).unwrap();
    assert_eq!(hex(&m.image_digest), theirs);
}

/// `./test.sh` runs this again after building the image, with
/// `VELLUM_REQUIRE_IMAGE=1`, so in CI the real image is always cross-checked
/// (sev-snp-measure must accept it and agree with us).
#[test]
fn built_image_matches_if_present() {
    let image = workspace().join("target").join("vellum.bin");
    if !image.exists() {
        assert!(
            std::env::var_os("VELLUM_REQUIRE_IMAGE").is_none(),
            "VELLUM_REQUIRE_IMAGE is set but {} does not exist",
            image.display()
        );
        println!(
            "{} not built; the synthetic-image cross-checks cover the algorithm",
            image.display()
        );
        return;
    }
    let venv = venv();
    println!("{}", crosscheck_matrix(&venv, &image));
}

fn json_field<'a>(json: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\": \"");
    let start = json
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + pat.len();
    let len = json[start..].find('"').expect("closing quote");
    &json[start..start + len]
}

fn check_script() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join("check_id_auth.py")
        .display()
        .to_string()
}

#[test]
fn id_block_verifies_with_python_cryptography_and_matches_snp_create_id_block() {
    let venv = venv();
    let dir = scratch("idblock");
    let img = Synth::valid(0x2_0000, 0x5eed_0004).build();
    let img_path = dir.join("img.bin");
    std::fs::write(&img_path, &img).unwrap();
    let img_s = img_path.display().to_string();

    // ID key from our --gen-key (PKCS#8); author key from Python in SEC1 form.
    let id = dir.join("id.pem").display().to_string();
    let author = dir.join("author.pem").display().to_string();
    id_block_command(&words(&["--gen-key", &id])).unwrap();
    run(
        Command::new(python(&venv)).args([&check_script(), "make-sec1", &author]),
        "make SEC1 key",
    )
    .unwrap();
    assert!(
        std::fs::read_to_string(&author)
            .unwrap()
            .contains("BEGIN EC PRIVATE KEY")
    );

    // Default inputs, measured from the image, with an author key.
    let out = id_block_command(&words(&[
        "--id-key",
        &id,
        "--author-key",
        &author,
        "--image",
        &img_s,
        "--format",
        "json",
    ]))
    .unwrap();
    let block = json_field(&out, "id_block");
    let auth = json_field(&out, "id_auth");
    let qemu = json_field(&out, "qemu");
    assert_eq!(
        qemu,
        format!("id-block={block},id-auth={auth},author-key-enabled=on")
    );
    let ld = launch_digest(&img, &LaunchOptions::default()).unwrap();
    assert_eq!(json_field(&out, "launch_digest"), hex(&ld));

    let ssm = run(
        Command::new(python(&venv))
            .args([
                "-c",
                "import sys; from sevsnpmeasure.id_block import main; sys.argv[0] = 'snp-create-id-block'; sys.exit(main())",
                "--measurement",
                &BASE64.encode(ld),
                "--idkey",
                &id,
                "--authorkey",
                &author,
            ]),
        "snp-create-id-block",
    )
    .unwrap();
    let checked = run(
        Command::new(python(&venv)).args([
            &check_script(),
            "verify",
            block,
            auth,
            "--author",
            "--id-key-pem",
            &id,
            "--author-key-pem",
            &author,
            "--ssm",
            &ssm,
        ]),
        "check_id_auth.py verify (with author key, against snp-create-id-block)",
    )
    .unwrap();
    println!("python check: {checked}");
    assert!(
        checked.contains(&format!("\"ld\": \"{}\"", hex(&ld))),
        "{checked}"
    );
    assert!(
        checked.contains("\"ssm_structure_identical\": true"),
        "{checked}"
    );
    assert!(checked.contains(&format!(
        "\"id_key_digest\": \"{}\"",
        json_field(&out, "id_key_digest")
    )));
    assert!(checked.contains(&format!(
        "\"author_key_digest\": \"{}\"",
        json_field(&out, "author_key_digest")
    )));

    // Custom fields, no author key, given measurement in base64.
    let ld2 = [0x5au8; 48];
    let out = id_block_command(&words(&[
        "--id-key",
        &author, // the SEC1 key as ID key
        "--measurement",
        &BASE64.encode(ld2),
        "--family-id",
        "00112233445566778899aabbccddeeff",
        "--image-id",
        "0xffeeddccbbaa99887766554433221100",
        "--guest-svn",
        "5",
        "--policy",
        "0x130000",
    ]))
    .unwrap();
    let line = out.trim();
    assert!(!line.contains("author-key-enabled"), "{line}");
    let (b, a) = line
        .strip_prefix("id-block=")
        .and_then(|r| r.split_once(",id-auth="))
        .expect("property string");
    let checked = run(
        Command::new(python(&venv)).args([
            &check_script(),
            "verify",
            b,
            a,
            "--id-key-pem",
            &author,
        ]),
        "check_id_auth.py verify (no author key)",
    )
    .unwrap();
    for needle in [
        format!("\"ld\": \"{}\"", hex(&ld2)),
        "\"family_id\": \"00112233445566778899aabbccddeeff\"".into(),
        "\"image_id\": \"ffeeddccbbaa99887766554433221100\"".into(),
        "\"version\": 1".into(),
        "\"guest_svn\": 5".into(),
        format!("\"policy\": {}", 0x130000),
        "\"id_key_algo\": 1".into(),
        "\"auth_key_algo\": 0".into(),
    ] {
        assert!(checked.contains(&needle), "missing {needle} in {checked}");
    }

    // Negative control: the checker rejects a tampered block.
    let mut raw = BASE64.decode(b).unwrap();
    raw[0x58] ^= 1;
    let tampered = BASE64.encode(&raw);
    let r = run(
        Command::new(python(&venv)).args([&check_script(), "verify", &tampered, a]),
        "tampered",
    );
    assert!(
        r.as_ref()
            .is_err_and(|e| e.contains("ID_BLOCK_SIG: signature does not verify")),
        "{r:?}"
    );
}

/// Asks an installed QEMU for a model's family/model/stepping over QMP.
fn qemu_fms(model: &str) -> Result<(u32, u32, u32), String> {
    use std::io::Write as _;
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "q35",
            "-accel",
            "tcg",
            "-S",
            "-display",
            "none",
            "-nodefaults",
            "-qmp",
            "stdio",
            "-cpu",
            model,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn qemu: {e}"))?;
    let mut cmds = String::from("{\"execute\":\"qmp_capabilities\"}\n");
    for prop in ["family", "model", "stepping"] {
        cmds.push_str(&format!(
            "{{\"execute\":\"qom-get\",\"arguments\":{{\"path\":\"/machine/unattached/device[0]\",\"property\":\"{prop}\"}}}}\n"
        ));
    }
    cmds.push_str("{\"execute\":\"quit\"}\n");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(cmds.as_bytes())
        .map_err(|e| format!("qmp write: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("qemu: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let nums: Vec<u32> = text
        .split("\"return\": ")
        .skip(1)
        .filter_map(|r| {
            let digits: String = r.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect();
    match nums[..] {
        [f, m, s] => Ok((f, m, s)),
        _ => Err(format!(
            "unexpected QMP output for {model}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

#[test]
fn vcpu_signatures_match_installed_qemu_models() {
    use vellum_image::snp::cpu::{VCPU_TYPES as ALL, cpu_signature};
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("qemu-system-x86_64 not installed; signatures are checked against ssm only");
        return;
    }
    let help = run(
        Command::new("qemu-system-x86_64").args(["-cpu", "help"]),
        "qemu -cpu help",
    )
    .unwrap();
    let mut checked = 0;
    for t in ALL {
        if !help.split_whitespace().any(|w| w == t.name) {
            println!("{} is not a model of this QEMU", t.name);
            continue;
        }
        let (f, m, s) = qemu_fms(t.name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            cpu_signature(f, m, s),
            t.signature,
            "{}: QEMU family {f} model {m} stepping {s}",
            t.name
        );
        checked += 1;
    }
    assert!(checked >= VCPU_TYPES.len(), "only {checked} models checked");
}

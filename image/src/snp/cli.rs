//! `image measure` and `image id-block`: argument parsing and output.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use vellum_boot::fwtable::SectionType;

use super::cpu::{DEFAULT_VCPU_TYPE, known_names, vcpu_type};
use super::id_block::{
    DEFAULT_POLICY, IdBlock, POLICY_RESERVED_ONE, SignedIdBlock, generate_key, key_digest,
    load_key, sign_id_block,
};
use super::measure::{DEFAULT_GUEST_FEATURES, LaunchOptions, Measurement, measure};
use super::page_info::DIGEST_LEN;

/// Default image path (relative to the working directory, as `image build` writes it).
pub const DEFAULT_IMAGE: &str = "target/vellum.bin";

/// `image measure --help`.
pub const MEASURE_USAGE: &str = "\
Usage: image measure [OPTIONS]

Print the SEV-SNP launch digest (the attestation report's MEASUREMENT) of a
Vellum -bios image as QEMU 10 launches it: image pages (NORMAL), then the ASEV
metadata sections (SEC_MEM=ZERO, SECRETS, CPUID), then one VMSA per vCPU.

Options:
  --image PATH           image to measure [default: target/vellum.bin]
  --vcpus N              number of vCPUs, as -smp [default: 1]
  --vcpu-type NAME       QEMU -cpu model [default: EPYC-v4]
                         (EPYC[-v1..v4], EPYC-IBPB, EPYC-Rome[-v1..v4],
                         EPYC-Milan[-v1,v2], EPYC-Genoa[-v1], EPYC-Turin)
  --vcpu-sig SIG         CPUID(1).EAX signature instead of --vcpu-type (e.g. 0xa00f11)
  --guest-features BITS  VMSA SEV_FEATURES [default: 0x1, QEMU 10 with KVM_SEV_INIT2]
  --format hex|json      output: the digest as hex, or JSON with the inputs [default: hex]
  -h, --help             print this help
";

/// `image id-block --help`.
pub const ID_BLOCK_USAGE: &str = "\
Usage: image id-block --id-key PEM [OPTIONS]
       image id-block --gen-key FILE

Build the SNP ID block (96 bytes) and ID authentication structure (4096 bytes,
ECDSA P-384/SHA-384) for QEMU's sev-snp-guest object. Prints
  id-block=<base64>,id-auth=<base64>[,author-key-enabled=on]
to append to -object sev-snp-guest,...; launch with the same policy=.

Options:
  --id-key PEM           ID key: P-384 private key, PKCS#8 or SEC1 PEM
  --author-key PEM       author key that signs the ID key (adds author-key-enabled=on)
  --gen-key FILE         write a new P-384 key (PKCS#8 PEM, mode 0600) to FILE and exit;
                         an existing FILE is not overwritten
  --measurement DIGEST   expected launch digest, 96 hex digits or base64
                         [default: measured from --image with the launch options below]
  --image PATH           image to measure [default: target/vellum.bin]
  --vcpus N, --vcpu-type NAME, --vcpu-sig SIG, --guest-features BITS
                         launch options for that measurement (see `image measure --help`)
  --family-id HEX        16-byte family ID, 32 hex digits [default: zeros]
  --image-id HEX         16-byte image ID, 32 hex digits [default: zeros]
  --guest-svn N          guest SVN [default: 0]
  --policy BITS          guest policy, must equal sev-snp-guest's policy= [default: 0x30000]
  --format qemu|json     output: the property string, or JSON with the inputs [default: qemu]
  -h, --help             print this help
";

/// Runs `image measure` with the words after the subcommand; prints the result.
pub fn cli_measure(args: &[String]) -> Result<(), String> {
    print_out(&measure_command(args)?)
}

/// Runs `image id-block` with the words after the subcommand; prints the result.
pub fn cli_id_block(args: &[String]) -> Result<(), String> {
    print_out(&id_block_command(args)?)
}

fn print_out(text: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write output: {e}"))
}

/// Parsed words: `--name value` or `--name=value` pairs, and flags.
pub(crate) struct Args {
    pub(crate) pairs: Vec<(String, String)>,
    pub(crate) help: bool,
}

pub(crate) fn parse_words(
    args: &[String],
    takes_value: &[&str],
    cmd: &str,
) -> Result<Args, String> {
    let mut pairs = Vec::new();
    let mut help = false;
    let mut it = args.iter();
    while let Some(word) = it.next() {
        if word == "-h" || word == "--help" {
            help = true;
            continue;
        }
        let (name, inline) = match word.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (word.as_str(), None),
        };
        if !takes_value.contains(&name) {
            return Err(format!(
                "unknown argument '{word}' (see `image {cmd} --help`)"
            ));
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))?,
        };
        if pairs.iter().any(|(n, _)| n == name) {
            return Err(format!("{name} given twice"));
        }
        pairs.push((name.to_string(), value));
    }
    Ok(Args { pairs, help })
}

impl Args {
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `0x`-prefixed hex or decimal.
fn parse_u64(name: &str, s: &str) -> Result<u64, String> {
    let t = s.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(&h.replace('_', ""), 16),
        None => t.replace('_', "").parse::<u64>(),
    };
    r.map_err(|_| format!("{name}: '{s}' is not a number (decimal or 0x-prefixed hex)"))
}

fn parse_u32(name: &str, s: &str) -> Result<u32, String> {
    u32::try_from(parse_u64(name, s)?).map_err(|_| format!("{name}: '{s}' does not fit in 32 bits"))
}

fn parse_hex(name: &str, s: &str, len: usize) -> Result<Vec<u8>, String> {
    let t = s.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    let bad = || format!("{name}: expected {} hex digits, got '{s}'", len * 2);
    if t.len() != len * 2 || !t.is_ascii() {
        return Err(bad());
    }
    (0..len)
        .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|_| bad()))
        .collect()
}

/// Lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Launch options as given on the command line.
pub(crate) struct LaunchArgs {
    pub(crate) image: PathBuf,
    pub(crate) vcpu_type: Option<&'static str>,
    pub(crate) opts: LaunchOptions,
}

pub(crate) const LAUNCH_OPTIONS: &[&str] = &[
    "--image",
    "--vcpus",
    "--vcpu-type",
    "--vcpu-sig",
    "--guest-features",
];

pub(crate) fn launch_args(a: &Args) -> Result<LaunchArgs, String> {
    let image = PathBuf::from(a.get("--image").unwrap_or(DEFAULT_IMAGE));
    let vcpus = match a.get("--vcpus") {
        Some(v) => parse_u32("--vcpus", v)?,
        None => 1,
    };
    let (vcpu_type, vcpu_sig) = match (a.get("--vcpu-type"), a.get("--vcpu-sig")) {
        (Some(_), Some(_)) => return Err("give --vcpu-type or --vcpu-sig, not both".into()),
        (None, Some(sig)) => (None, parse_u32("--vcpu-sig", sig)?),
        (name, None) => {
            let name = name.unwrap_or(DEFAULT_VCPU_TYPE);
            let t = vcpu_type(name).ok_or_else(|| {
                format!(
                    "unknown vCPU type '{name}'; known types: {}; or give --vcpu-sig",
                    known_names()
                )
            })?;
            (Some(t.name), t.signature)
        }
    };
    let guest_features = match a.get("--guest-features") {
        Some(v) => parse_u64("--guest-features", v)?,
        None => DEFAULT_GUEST_FEATURES,
    };
    Ok(LaunchArgs {
        image,
        vcpu_type,
        opts: LaunchOptions {
            vcpus,
            vcpu_sig,
            guest_features,
        },
    })
}

fn read_image(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        let hint = if path == Path::new(DEFAULT_IMAGE) {
            " (build it with `image build`, or pass --image)"
        } else {
            ""
        };
        format!("cannot read image {}: {e}{hint}", path.display())
    })
}

pub(crate) fn measure_image(la: &LaunchArgs) -> Result<Measurement, String> {
    let image = read_image(&la.image)?;
    measure(&image, &la.opts).map_err(|e| format!("{}: {e}", la.image.display()))
}

fn section_name(kind: SectionType) -> (&'static str, &'static str) {
    match kind {
        SectionType::SecMem => ("SNP_SEC_MEM", "ZERO"),
        SectionType::Secrets => ("SNP_SECRETS", "SECRETS"),
        SectionType::Cpuid => ("CPUID", "CPUID"),
    }
}

/// The inputs of a measurement as a JSON object.
fn measurement_json(la: &LaunchArgs, m: &Measurement) -> String {
    let sections = m
        .sections
        .iter()
        .map(|s| {
            let (name, page_type) = section_name(s.kind);
            format!(
                "{{\"type\": \"{name}\", \"page_type\": \"{page_type}\", \"base\": \"{:#x}\", \
                 \"len\": \"{:#x}\"}}",
                s.base, s.len
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{{\"image\": {}, \"image_size\": {}, \"image_gpa\": \"{:#x}\", \
         \"image_digest\": \"{}\", \"vmm_type\": \"QEMU\", \"vcpus\": {}, \"vcpu_type\": {}, \
         \"vcpu_sig\": \"{:#x}\", \"guest_features\": \"{:#x}\", \"ap_reset_addr\": \"{:#x}\", \
         \"metadata_sections\": [{sections}]}}",
        json_str(&la.image.display().to_string()),
        m.image_len,
        m.image_gpa,
        to_hex(&m.image_digest),
        m.options.vcpus,
        la.vcpu_type.map_or("null".to_string(), json_str),
        m.options.vcpu_sig,
        m.options.guest_features,
        m.ap_reset_addr,
    )
}

/// `image measure`: returns what it would print.
pub fn measure_command(args: &[String]) -> Result<String, String> {
    let mut names = LAUNCH_OPTIONS.to_vec();
    names.push("--format");
    let a = parse_words(args, &names, "measure")?;
    if a.help {
        return Ok(MEASURE_USAGE.to_string());
    }
    let format = a.get("--format").unwrap_or("hex");
    if format != "hex" && format != "json" {
        return Err(format!("--format: '{format}' is not hex or json"));
    }
    let la = launch_args(&a)?;
    let m = measure_image(&la)?;
    Ok(if format == "hex" {
        format!("{}\n", to_hex(&m.digest))
    } else {
        format!(
            "{{\"launch_digest\": \"{}\", \"inputs\": {}}}\n",
            to_hex(&m.digest),
            measurement_json(&la, &m)
        )
    })
}

pub(crate) fn parse_measurement(s: &str) -> Result<[u8; DIGEST_LEN], String> {
    let t = s.trim();
    let bytes = if t.len() == DIGEST_LEN * 2 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        parse_hex("--measurement", t, DIGEST_LEN)?
    } else {
        BASE64
            .decode(t)
            .map_err(|_| format!("--measurement: '{s}' is neither 96 hex digits nor base64"))?
    };
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("--measurement: {} bytes, expected 48", b.len()))
}

fn write_new_key(path: &Path) -> Result<String, String> {
    let (key, pem) = generate_key().map_err(|e| e.to_string())?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let shown = path.display();
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!("--gen-key: {shown} exists; not overwriting it")
        } else {
            format!("--gen-key: cannot create {shown}: {e}")
        }
    })?;
    f.write_all(pem.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("--gen-key: cannot write {shown}: {e}"))?;
    Ok(format!(
        "wrote a new P-384 key (PKCS#8 PEM) to {shown}\nkey digest (SHA-384 of the SNP public key \
         structure, report ID_KEY_DIGEST/AUTHOR_KEY_DIGEST): {}\n",
        to_hex(&key_digest(key.verifying_key()))
    ))
}

/// The QEMU property string for a signed ID block.
pub fn qemu_properties(s: &SignedIdBlock) -> String {
    let mut out = format!(
        "id-block={},id-auth={}",
        BASE64.encode(s.id_block),
        BASE64.encode(&s.id_auth)
    );
    if s.author_key_digest.is_some() {
        out.push_str(",author-key-enabled=on");
    }
    out
}

/// `image id-block`: returns what it would print.
pub fn id_block_command(args: &[String]) -> Result<String, String> {
    let mut names = LAUNCH_OPTIONS.to_vec();
    names.extend_from_slice(&[
        "--format",
        "--id-key",
        "--author-key",
        "--gen-key",
        "--measurement",
        "--family-id",
        "--image-id",
        "--guest-svn",
        "--policy",
    ]);
    let a = parse_words(args, &names, "id-block")?;
    if a.help {
        return Ok(ID_BLOCK_USAGE.to_string());
    }
    if let Some(path) = a.get("--gen-key") {
        if a.pairs.len() > 1 {
            return Err("--gen-key takes no other options".into());
        }
        return write_new_key(Path::new(path));
    }
    let format = a.get("--format").unwrap_or("qemu");
    if format != "qemu" && format != "json" {
        return Err(format!("--format: '{format}' is not qemu or json"));
    }
    let id_key_path = a
        .get("--id-key")
        .ok_or("--id-key PEM is required (make one with --gen-key FILE)")?;
    let id_key = load_key(Path::new(id_key_path)).map_err(|e| e.to_string())?;
    let author_key = match a.get("--author-key") {
        Some(p) => Some(load_key(Path::new(p)).map_err(|e| e.to_string())?),
        None => None,
    };
    let mut block = IdBlock::new([0; DIGEST_LEN]);
    if let Some(f) = a.get("--family-id") {
        block
            .family_id
            .copy_from_slice(&parse_hex("--family-id", f, 16)?);
    }
    if let Some(i) = a.get("--image-id") {
        block
            .image_id
            .copy_from_slice(&parse_hex("--image-id", i, 16)?);
    }
    if let Some(v) = a.get("--guest-svn") {
        block.guest_svn = parse_u32("--guest-svn", v)?;
    }
    block.policy = match a.get("--policy") {
        Some(p) => parse_u64("--policy", p)?,
        None => DEFAULT_POLICY,
    };
    if block.policy & POLICY_RESERVED_ONE == 0 {
        return Err(format!(
            "--policy {:#x}: bit 17 is reserved and must be 1 (the firmware rejects the launch)",
            block.policy
        ));
    }
    let measured_from = match a.get("--measurement") {
        Some(m) => {
            if LAUNCH_OPTIONS.iter().any(|n| a.get(n).is_some()) {
                return Err(
                    "--measurement excludes --image/--vcpus/--vcpu-type/--vcpu-sig/--guest-features"
                        .into(),
                );
            }
            block.ld = parse_measurement(m)?;
            None
        }
        None => {
            let la = launch_args(&a)?;
            let m = measure_image(&la)?;
            block.ld = m.digest;
            Some(measurement_json(&la, &m))
        }
    };
    let signed = sign_id_block(&block, &id_key, author_key.as_ref()).map_err(|e| e.to_string())?;
    let props = qemu_properties(&signed);
    if format == "qemu" {
        return Ok(format!("{props}\n"));
    }
    Ok(format!(
        "{{\"qemu\": {}, \"id_block\": \"{}\", \"id_auth\": \"{}\", \"author_key_enabled\": {}, \
         \"id_key_digest\": \"{}\", \"author_key_digest\": {}, \"inputs\": {{\"launch_digest\": \
         \"{}\", \"family_id\": \"{}\", \"image_id\": \"{}\", \"version\": 1, \"guest_svn\": {}, \
         \"policy\": \"{:#x}\", \"id_key\": {}, \"author_key\": {}, \"measured_from\": {}}}}}\n",
        json_str(&props),
        BASE64.encode(signed.id_block),
        BASE64.encode(&signed.id_auth),
        signed.author_key_digest.is_some(),
        to_hex(&signed.id_key_digest),
        signed
            .author_key_digest
            .map_or("null".to_string(), |d| format!("\"{}\"", to_hex(&d))),
        to_hex(&block.ld),
        to_hex(&block.family_id),
        to_hex(&block.image_id),
        block.guest_svn,
        block.policy,
        json_str(id_key_path),
        a.get("--author-key").map_or("null".to_string(), json_str),
        measured_from.unwrap_or_else(|| "null".to_string()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn help_and_argument_errors() {
        assert_eq!(measure_command(&words("--help")).unwrap(), MEASURE_USAGE);
        assert_eq!(id_block_command(&words("-h")).unwrap(), ID_BLOCK_USAGE);
        let e = measure_command(&words("--vcpu-type EPYC-Nope")).unwrap_err();
        assert!(e.contains("unknown vCPU type 'EPYC-Nope'"), "{e}");
        assert!(e.contains("EPYC-Milan"), "{e}");
        let e = measure_command(&words("--vcpus")).unwrap_err();
        assert!(e.contains("--vcpus needs a value"), "{e}");
        let e = measure_command(&words("--bogus 1")).unwrap_err();
        assert!(e.contains("unknown argument"), "{e}");
        let e = measure_command(&words("--vcpu-type EPYC --vcpu-sig 1")).unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let e = measure_command(&words("--format xml")).unwrap_err();
        assert!(e.contains("not hex or json"), "{e}");
        let e = measure_command(&words("--image /nonexistent/x.bin")).unwrap_err();
        assert!(e.contains("cannot read image /nonexistent/x.bin"), "{e}");
        let e = id_block_command(&words("--measurement 00")).unwrap_err();
        assert!(e.contains("--id-key"), "{e}");
    }

    #[test]
    fn number_and_digest_parsing() {
        assert_eq!(parse_u64("x", "0x30000"), Ok(0x30000));
        assert_eq!(parse_u64("x", "17"), Ok(17));
        assert!(parse_u64("x", "0xzz").is_err());
        assert!(parse_u32("x", "0x100000000").is_err());
        let hex = "ab".repeat(48);
        assert_eq!(parse_measurement(&hex), Ok([0xab; 48]));
        assert_eq!(
            parse_measurement(&BASE64.encode([0xab; 48])),
            Ok([0xab; 48])
        );
        assert!(parse_measurement("abcd").is_err());
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}

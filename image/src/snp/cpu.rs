//! vCPU models and their CPUID(1).EAX signatures.
//!
//! QEMU's SEV-ES/SNP reset state puts the model's CPUID Fn0000_0001_EAX
//! (family/model/stepping signature) into RDX of every VMSA, so the signature is
//! a launch-digest input (`docs/snp-reference.md` §1.5, §3.2). The names and
//! family/model/stepping triples are the ones sev-snp-measure 0.0.13 lists, plus
//! QEMU 10's EPYC-Rome-v4; each was checked against QEMU 10.0.2's own models
//! (`qom-get` of family/model/stepping; `measure_crosscheck.rs` repeats that
//! when QEMU is installed). EPYC-Turin is not in QEMU 10.0 but kept for
//! sev-snp-measure parity.
#![forbid(unsafe_code)]

/// Composes a CPUID Fn0000_0001_EAX signature from family, model and stepping
/// (AMD CPUID specification 25481, "Family, Model, Stepping Identifiers"): the
/// base family field saturates at 0xF and the excess goes to the extended family.
pub const fn cpu_signature(family: u32, model: u32, stepping: u32) -> u32 {
    let (base_family, ext_family) = if family > 0xf {
        (0xf, (family - 0xf) & 0xff)
    } else {
        (family, 0)
    };
    (ext_family << 20)
        | (((model >> 4) & 0xf) << 16)
        | (base_family << 8)
        | ((model & 0xf) << 4)
        | (stepping & 0xf)
}

/// A named vCPU model.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct VcpuType {
    /// QEMU's `-cpu` name.
    pub name: &'static str,
    /// CPUID(1).EAX.
    pub signature: u32,
}

const fn model(name: &'static str, family: u32, model: u32, stepping: u32) -> VcpuType {
    VcpuType {
        name,
        signature: cpu_signature(family, model, stepping),
    }
}

/// The models `--vcpu-type` accepts (QEMU `builtin_x86_defs` AMD EPYC family).
pub const VCPU_TYPES: &[VcpuType] = &[
    model("EPYC", 23, 1, 2),
    model("EPYC-v1", 23, 1, 2),
    model("EPYC-v2", 23, 1, 2),
    model("EPYC-IBPB", 23, 1, 2),
    model("EPYC-v3", 23, 1, 2),
    model("EPYC-v4", 23, 1, 2),
    model("EPYC-Rome", 23, 49, 0),
    model("EPYC-Rome-v1", 23, 49, 0),
    model("EPYC-Rome-v2", 23, 49, 0),
    model("EPYC-Rome-v3", 23, 49, 0),
    model("EPYC-Rome-v4", 23, 49, 0),
    model("EPYC-Milan", 25, 1, 1),
    model("EPYC-Milan-v1", 25, 1, 1),
    model("EPYC-Milan-v2", 25, 1, 1),
    model("EPYC-Genoa", 25, 17, 0),
    model("EPYC-Genoa-v1", 25, 17, 0),
    model("EPYC-Turin", 26, 0, 0),
];

/// The default model: what our run scripts pass as `-cpu`.
pub const DEFAULT_VCPU_TYPE: &str = "EPYC-v4";

/// Looks a model up by its QEMU name (case-sensitive, as QEMU's `-cpu` is).
pub fn vcpu_type(name: &str) -> Option<VcpuType> {
    VCPU_TYPES.iter().copied().find(|t| t.name == name)
}

/// The comma-separated list of known names, for messages.
pub fn known_names() -> String {
    VCPU_TYPES
        .iter()
        .map(|t| t.name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_signatures() {
        // Values from docs/snp-reference.md §1.5 and the QEMU model table.
        assert_eq!(vcpu_type("EPYC").unwrap().signature, 0x0080_0f12);
        assert_eq!(vcpu_type("EPYC-v4").unwrap().signature, 0x0080_0f12);
        assert_eq!(vcpu_type("EPYC-Rome").unwrap().signature, 0x0083_0f10);
        assert_eq!(vcpu_type("EPYC-Milan").unwrap().signature, 0x00a0_0f11);
        assert_eq!(vcpu_type("EPYC-Genoa").unwrap().signature, 0x00a1_0f10);
        assert_eq!(vcpu_type("EPYC-Turin").unwrap().signature, 0x00b0_0f00);
        assert_eq!(cpu_signature(6, 0x55, 7), 0x0005_0657);
        assert!(vcpu_type("epyc").is_none());
        assert!(vcpu_type("host").is_none());
        assert!(known_names().contains("EPYC-Genoa"));
    }
}

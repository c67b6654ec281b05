//! The SNP launch digest of a Vellum `-bios` image as QEMU 10 launches it.
//!
//! Order (QEMU 10.0.2 `target/i386/sev.c`; `docs/snp-reference.md` §1.4 "Launch
//! sequence and measurement order" and §3.2):
//! 1. the whole image as NORMAL pages at GPA `4 GiB - size + offset`
//!    (`sev_encrypt_flash`);
//! 2. the ASEV metadata sections in table order (`sev_snp_launch_finish`):
//!    SNP_SEC_MEM as ZERO, SNP_SECRETS as SECRETS, CPUID as CPUID;
//! 3. at SNP_LAUNCH_FINISH, one VMSA per vCPU in vCPU order: the BSP starting at
//!    0xFFFFFFF0, the APs at the SEV info block's reset address.
//!
//! Every page is folded in with a PAGE_INFO (SNP FW ABI 56860 §8.17.2), see
//! [`super::page_info`].
#![forbid(unsafe_code)]

use std::fmt;

use vellum_boot::fwtable::{
    MetadataError, SEV_INFO_BLOCK_GUID, Section, SectionType, Table, TableError, le_u32,
    read_metadata,
};
use vellum_boot::layout::{FIRMWARE_TOP, IMAGE_ALIGN};

use super::cpu::{DEFAULT_VCPU_TYPE, vcpu_type};
use super::page_info::{DIGEST_LEN, LaunchDigest, PAGE_LEN, PageType};
use super::vmsa::{VcpuReset, build_vmsa, reset::BSP_RESET_ADDR};

/// Most vCPUs we accept (QEMU's q35 limit).
pub const MAX_VCPUS: u32 = 4096;
/// SEV_FEATURES QEMU 10 ends up with: `KVM_SEV_INIT2` with `vmsa_features = 0`,
/// KVM adds SNPActive (bit 0).
pub const DEFAULT_GUEST_FEATURES: u64 = 0x1;

/// The launch parameters, beyond the image, that the digest depends on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LaunchOptions {
    /// `-smp`: number of vCPUs (one VMSA each).
    pub vcpus: u32,
    /// CPUID(1).EAX of the `-cpu` model (VMSA RDX).
    pub vcpu_sig: u32,
    /// VMSA SEV_FEATURES.
    pub guest_features: u64,
}

impl LaunchOptions {
    /// What our run scripts launch: `-smp 1 -cpu EPYC-v4`, guest features 0x1.
    pub fn qemu_default() -> Self {
        Self {
            vcpus: 1,
            vcpu_sig: vcpu_type(DEFAULT_VCPU_TYPE).map_or(0x0080_0f12, |t| t.signature),
            guest_features: DEFAULT_GUEST_FEATURES,
        }
    }
}

impl Default for LaunchOptions {
    fn default() -> Self {
        Self::qemu_default()
    }
}

/// Why an image cannot be measured (each one would also stop QEMU or the
/// launch, or make the digest ambiguous).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MeasureError {
    /// The size is zero or not a multiple of 64 KiB.
    ImageSize(u64),
    /// Larger than the 4 GiB below which it is mapped.
    ImageTooLarge(u64),
    /// No usable GUIDed table at the end of the image.
    Table(TableError),
    /// The table has no SEV info block entry (or it is shorter than 4 bytes).
    NoInfoBlock,
    /// The SEV info block's AP reset address is zero.
    ZeroResetAddress,
    /// The ASEV metadata is missing or malformed.
    Metadata(MetadataError),
    /// A metadata section QEMU/KVM would reject or that we cannot measure
    /// unambiguously.
    BadSection {
        /// Position in table order.
        index: usize,
        /// The section.
        section: Section,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// vCPU count outside `1..=MAX_VCPUS`.
    VcpuCount(u32),
}

impl fmt::Display for MeasureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ImageSize(n) => write!(
                f,
                "image size {n:#x} is not a non-zero multiple of 64 KiB (QEMU refuses it: \
                 'could not load PC BIOS')"
            ),
            Self::ImageTooLarge(n) => {
                write!(f, "image size {n:#x} does not fit below 4 GiB")
            }
            Self::Table(TableError::NoFooter) => write!(
                f,
                "image has no GUIDed table footer (GUID 96b582de-1fb2-45f7-baea-a366c55a082d \
                 at end - 48), so no SEV metadata: QEMU's SNP launch fails"
            ),
            Self::Table(e) => write!(f, "image's GUIDed table is malformed: {e:?}"),
            Self::NoInfoBlock => write!(
                f,
                "image has no SEV info block (GUID 00f771de-1a7e-4fcb-890e-68c77e2fb44e) in its \
                 GUIDed table: QEMU stops with 'SEV information block/Firmware GUID Table block \
                 not found'"
            ),
            Self::ZeroResetAddress => write!(
                f,
                "the SEV info block's AP reset address is zero: QEMU stops with \
                 'SEV-ES reset address is zero'"
            ),
            Self::Metadata(MetadataError::Missing) => write!(
                f,
                "image has no SEV metadata (no ASEV offset entry, GUID \
                 dc886566-984a-4798-a75e-5585a7bf67cc): QEMU stops with 'Failed to locate SEV \
                 metadata header'"
            ),
            Self::Metadata(MetadataError::UnknownType(t)) => write!(
                f,
                "ASEV metadata has a section of type {t:#x}; Vellum images only use SEC_MEM (1), \
                 SECRETS (2) and CPUID (3)"
            ),
            Self::Metadata(e) => write!(f, "image's ASEV metadata is malformed: {e:?}"),
            Self::BadSection {
                index,
                section,
                reason,
            } => write!(
                f,
                "ASEV section {index} ({:?} at {:#x}, length {:#x}): {reason}",
                section.kind, section.base, section.len
            ),
            Self::VcpuCount(n) => write!(f, "vCPU count {n} is outside 1..={MAX_VCPUS}"),
        }
    }
}

impl std::error::Error for MeasureError {}

/// A measured image: the digest and the image facts it was computed from.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Measurement {
    /// The launch digest (MEASUREMENT in the attestation report).
    pub digest: [u8; DIGEST_LEN],
    /// The digest after the image pages only (sev-snp-measure's `--snp-ovmf-hash`).
    pub image_digest: [u8; DIGEST_LEN],
    /// GPA the image is mapped at.
    pub image_gpa: u64,
    /// Image size in bytes.
    pub image_len: u64,
    /// The SEV info block's AP reset address.
    pub ap_reset_addr: u32,
    /// The ASEV sections, in table order.
    pub sections: Vec<Section>,
    /// The options used.
    pub options: LaunchOptions,
}

/// The PAGE_TYPE QEMU 10 gives a metadata section (sev.c `snp_page_type`
/// mapping; `docs/snp-reference.md` §1.3).
pub fn section_page_type(kind: SectionType) -> PageType {
    match kind {
        SectionType::SecMem => PageType::Zero,
        SectionType::Secrets => PageType::Secrets,
        SectionType::Cpuid => PageType::Cpuid,
    }
}

fn check_section(index: usize, s: Section) -> Result<u64, MeasureError> {
    let bad = |reason| MeasureError::BadSection {
        index,
        section: s,
        reason,
    };
    let page = PAGE_LEN as u64;
    if s.len == 0 {
        return Err(bad("empty section"));
    }
    if !u64::from(s.base).is_multiple_of(page) || !u64::from(s.len).is_multiple_of(page) {
        return Err(bad("base and length must be 4 KiB aligned"));
    }
    if u64::from(s.base) + u64::from(s.len) > FIRMWARE_TOP {
        return Err(bad("runs past 4 GiB"));
    }
    if matches!(s.kind, SectionType::Secrets | SectionType::Cpuid) && u64::from(s.len) != page {
        return Err(bad(
            "SECRETS and CPUID sections must be exactly one page (sev-snp-measure measures \
             only the first page, KVM every page)",
        ));
    }
    Ok(u64::from(s.len) / page)
}

/// Measures `image` as QEMU 10 launches it under SEV-SNP with `opts`.
pub fn measure(image: &[u8], opts: &LaunchOptions) -> Result<Measurement, MeasureError> {
    if opts.vcpus == 0 || opts.vcpus > MAX_VCPUS {
        return Err(MeasureError::VcpuCount(opts.vcpus));
    }
    let len = image.len() as u64;
    if len == 0 || !len.is_multiple_of(IMAGE_ALIGN) {
        return Err(MeasureError::ImageSize(len));
    }
    if len > FIRMWARE_TOP {
        return Err(MeasureError::ImageTooLarge(len));
    }
    let table = Table::find(image).map_err(MeasureError::Table)?;
    let info = table
        .get(&SEV_INFO_BLOCK_GUID)
        .ok_or(MeasureError::NoInfoBlock)?;
    let ap_reset_addr = le_u32(info, 0).ok_or(MeasureError::NoInfoBlock)?;
    if ap_reset_addr == 0 {
        return Err(MeasureError::ZeroResetAddress);
    }
    let mut sections = Vec::new();
    read_metadata(image, &table, |s| sections.push(s)).map_err(MeasureError::Metadata)?;
    let pages = sections
        .iter()
        .enumerate()
        .map(|(i, s)| check_section(i, *s))
        .collect::<Result<Vec<u64>, _>>()?;

    let image_gpa = FIRMWARE_TOP - len;
    let mut ld = LaunchDigest::new();
    ld.normal_pages(image_gpa, image);
    let image_digest = ld.digest();
    for (s, n) in sections.iter().zip(pages) {
        ld.empty_pages(section_page_type(s.kind), u64::from(s.base), n);
    }
    for cpu in 0..opts.vcpus {
        let reset_addr = if cpu == 0 {
            BSP_RESET_ADDR
        } else {
            ap_reset_addr
        };
        ld.vmsa_page(&build_vmsa(&VcpuReset {
            reset_addr,
            signature: opts.vcpu_sig,
            sev_features: opts.guest_features,
        }));
    }
    Ok(Measurement {
        digest: ld.digest(),
        image_digest,
        image_gpa,
        image_len: len,
        ap_reset_addr,
        sections,
        options: *opts,
    })
}

/// The SNP launch digest of `image` under `opts` (what `image build` records
/// next to the image and what the attestation report's MEASUREMENT must equal).
pub fn launch_digest(image: &[u8], opts: &LaunchOptions) -> Result<[u8; 48], MeasureError> {
    measure(image, opts).map(|m| m.digest)
}

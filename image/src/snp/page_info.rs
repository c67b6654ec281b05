//! The PAGE_INFO structure and the launch-digest chain built from it.
//!
//! AMD SEV-SNP Firmware ABI (56860) §8.17 SNP_LAUNCH_UPDATE, §8.17.2 "PAGE_INFO"
//! (Table 67 "Layout of the PAGE_INFO Structure" in revision 1.51): for each page
//! the firmware hashes, SHA-384, a 0x70-byte PAGE_INFO whose first field is the
//! current launch digest, and the result becomes the new digest. The digest
//! starts as 48 zero bytes. `docs/snp-reference.md` §3.1 "PAGE_INFO and the
//! digest chain" lists the page types and what CONTENTS holds for each.
#![forbid(unsafe_code)]

use sha2::{Digest, Sha384};

/// Size of a SHA-384 digest (launch digest, page contents hash).
pub const DIGEST_LEN: usize = 48;
/// Size of a guest page measured by LAUNCH_UPDATE.
pub const PAGE_LEN: usize = 0x1000;

/// Byte offsets inside PAGE_INFO (56860 §8.17.2).
pub mod offset {
    /// DIGEST_CUR: the launch digest so far.
    pub const DIGEST_CUR: usize = 0x00;
    /// CONTENTS: SHA-384 of the page (NORMAL, VMSA) or zero.
    pub const CONTENTS: usize = 0x30;
    /// u16 LENGTH: the structure's length, 0x70.
    pub const LENGTH: usize = 0x60;
    /// u8 PAGE_TYPE.
    pub const PAGE_TYPE: usize = 0x62;
    /// u8 IMI_PAGE (0: not an Incoming Migration Image page).
    pub const IMI_PAGE: usize = 0x63;
    /// u8 VMPL3_PERMS.
    pub const VMPL3_PERMS: usize = 0x64;
    /// u8 VMPL2_PERMS.
    pub const VMPL2_PERMS: usize = 0x65;
    /// u8 VMPL1_PERMS.
    pub const VMPL1_PERMS: usize = 0x66;
    /// u8 reserved.
    pub const RESERVED: usize = 0x67;
    /// u64 GPA of the page.
    pub const GPA: usize = 0x68;
    /// Total size.
    pub const END: usize = 0x70;
}

/// Size of PAGE_INFO.
pub const PAGE_INFO_LEN: usize = offset::END;

const _: () = {
    assert!(offset::CONTENTS == offset::DIGEST_CUR + DIGEST_LEN);
    assert!(offset::LENGTH == offset::CONTENTS + DIGEST_LEN);
    assert!(offset::PAGE_TYPE == offset::LENGTH + 2);
    assert!(offset::GPA + 8 == offset::END);
    assert!(PAGE_INFO_LEN == 0x70);
};

/// SNP page types (56860 §8.17 SNP_LAUNCH_UPDATE, "PAGE_TYPE" encodings).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum PageType {
    /// Ordinary page whose contents are measured.
    Normal = 1,
    /// A vCPU save area; measured at [`VMSA_GPA`].
    Vmsa = 2,
    /// A page the firmware zeroes; contents field is zero.
    Zero = 3,
    /// A page whose contents are not measured.
    Unmeasured = 4,
    /// The secrets page the firmware fills; contents field is zero.
    Secrets = 5,
    /// The CPUID page the firmware checks; contents field is zero.
    Cpuid = 6,
}

/// GPA recorded for VMSA pages: the firmware uses all-ones, page aligned and
/// truncated to 52 bits (sev-snp-measure `gctx.py`; the `sev` crate agrees).
pub const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;

/// Serialises one PAGE_INFO.
pub fn page_info(
    digest_cur: &[u8; DIGEST_LEN],
    contents: &[u8; DIGEST_LEN],
    page_type: PageType,
    gpa: u64,
) -> [u8; PAGE_INFO_LEN] {
    let mut p = [0u8; PAGE_INFO_LEN];
    p[offset::DIGEST_CUR..offset::CONTENTS].copy_from_slice(digest_cur);
    p[offset::CONTENTS..offset::LENGTH].copy_from_slice(contents);
    p[offset::LENGTH..offset::PAGE_TYPE].copy_from_slice(&(PAGE_INFO_LEN as u16).to_le_bytes());
    p[offset::PAGE_TYPE] = page_type as u8;
    // IMI_PAGE, VMPL3/2/1_PERMS and the reserved byte stay zero: QEMU launches
    // at VMPL0 without an IMI.
    p[offset::GPA..offset::END].copy_from_slice(&gpa.to_le_bytes());
    p
}

/// SHA-384 of `data`.
pub fn sha384(data: &[u8]) -> [u8; DIGEST_LEN] {
    Sha384::digest(data).into()
}

/// The guest context's running launch digest.
#[derive(Clone, Debug)]
pub struct LaunchDigest {
    ld: [u8; DIGEST_LEN],
}

impl Default for LaunchDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl LaunchDigest {
    /// A fresh context: digest = 48 zero bytes.
    pub const fn new() -> Self {
        Self {
            ld: [0; DIGEST_LEN],
        }
    }

    /// The digest so far.
    pub const fn digest(&self) -> [u8; DIGEST_LEN] {
        self.ld
    }

    /// Folds one page into the digest.
    pub fn update(&mut self, page_type: PageType, gpa: u64, contents: &[u8; DIGEST_LEN]) {
        self.ld = sha384(&page_info(&self.ld, contents, page_type, gpa));
    }

    /// Measures `data` (a multiple of 4 KiB) as NORMAL pages starting at `gpa`.
    /// A trailing partial page is ignored; callers check alignment first.
    pub fn normal_pages(&mut self, gpa: u64, data: &[u8]) {
        for (i, page) in data.chunks_exact(PAGE_LEN).enumerate() {
            self.update(PageType::Normal, gpa + (i * PAGE_LEN) as u64, &sha384(page));
        }
    }

    /// Measures `pages` pages of a contents-less type (ZERO, UNMEASURED, SECRETS,
    /// CPUID) starting at `gpa`.
    pub fn empty_pages(&mut self, page_type: PageType, gpa: u64, pages: u64) {
        for i in 0..pages {
            self.update(page_type, gpa + i * PAGE_LEN as u64, &[0; DIGEST_LEN]);
        }
    }

    /// Measures one VMSA page.
    pub fn vmsa_page(&mut self, vmsa: &[u8; PAGE_LEN]) {
        self.update(PageType::Vmsa, VMSA_GPA, &sha384(vmsa));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_info_fields_land_where_the_abi_says() {
        let cur = [0x11; DIGEST_LEN];
        let contents = [0x22; DIGEST_LEN];
        let p = page_info(&cur, &contents, PageType::Secrets, 0x0123_4567_89ab_c000);
        assert_eq!(&p[..0x30], &cur[..]);
        assert_eq!(&p[0x30..0x60], &contents[..]);
        assert_eq!(&p[0x60..0x62], &[0x70, 0x00]);
        assert_eq!(p[0x62], 5);
        assert_eq!(&p[0x63..0x68], &[0; 5]);
        assert_eq!(&p[0x68..], &0x0123_4567_89ab_c000u64.to_le_bytes());
    }

    #[test]
    fn chain_matches_a_hand_computed_step() {
        let mut ld = LaunchDigest::new();
        let page = [0xa5u8; PAGE_LEN];
        ld.normal_pages(0xffff_f000, &page);
        let mut manual = [0u8; PAGE_INFO_LEN];
        manual[0x30..0x60].copy_from_slice(&sha384(&page));
        manual[0x60] = 0x70;
        manual[0x62] = 1;
        manual[0x68..].copy_from_slice(&0xffff_f000u64.to_le_bytes());
        assert_eq!(ld.digest(), sha384(&manual));
    }
}

//! Shared helpers for the SNP measurement tests: synthetic `-bios` images built
//! with the same table/metadata writers `image build` uses.
#![forbid(unsafe_code)]
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use vellum_boot::fwtable::{
    SEV_INFO_BLOCK_GUID, SEV_METADATA_GUID, Section, SectionType, write_metadata, write_table,
};
use vellum_boot::layout::{
    FIRMWARE_TOP, FW_TABLE_START, PAGE_SIZE, SEC_MEM_END, SEC_MEM_START, SNP_CPUID_PAGE,
    SNP_SECRETS_PAGE,
};

/// The AP reset address our boot ROM uses is in the last 4 KiB below 4 GiB.
pub const ROM_AP_RESET: u32 = 0xFFFF_F040;

/// Vellum's three ASEV sections (layout.rs), in the order `image build` writes them.
pub fn vellum_sections() -> Vec<Section> {
    vec![
        Section {
            base: SEC_MEM_START as u32,
            len: (SEC_MEM_END - SEC_MEM_START) as u32,
            kind: SectionType::SecMem,
        },
        Section {
            base: SNP_SECRETS_PAGE as u32,
            len: PAGE_SIZE as u32,
            kind: SectionType::Secrets,
        },
        Section {
            base: SNP_CPUID_PAGE as u32,
            len: PAGE_SIZE as u32,
            kind: SectionType::Cpuid,
        },
    ]
}

/// What goes into a synthetic image.
#[derive(Clone, Debug)]
pub struct Synth {
    /// Image size in bytes.
    pub len: usize,
    /// Seed for the filler bytes.
    pub seed: u64,
    /// The SEV info block's reset address; `None` leaves the entry out.
    pub reset_addr: Option<u32>,
    /// The ASEV sections; `None` leaves the metadata-offset entry out.
    pub sections: Option<Vec<Section>>,
    /// Whether to write the GUIDed table at all.
    pub table: bool,
}

impl Synth {
    /// A valid Vellum-like image of `len` bytes.
    pub fn valid(len: usize, seed: u64) -> Self {
        Self {
            len,
            seed,
            reset_addr: Some(ROM_AP_RESET),
            sections: Some(vellum_sections()),
            table: true,
        }
    }

    /// Builds the image bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut img = vec![0u8; self.len];
        // xorshift64* filler: "random-ish" code/data bytes.
        let mut x = self.seed | 1;
        for chunk in img.chunks_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        if !self.table {
            return img;
        }
        // ASEV block at the start of the table window, as the layout reserves.
        let meta_from_end = (FIRMWARE_TOP - FW_TABLE_START) as usize;
        let meta_at = self.len - meta_from_end;
        let meta_off = (meta_from_end as u32).to_le_bytes();
        let reset = self.reset_addr.unwrap_or(0).to_le_bytes();
        let mut entries: Vec<(_, &[u8])> = Vec::new();
        if let Some(sections) = &self.sections {
            write_metadata(&mut img[meta_at..], sections).expect("metadata fits");
            entries.push((SEV_METADATA_GUID, &meta_off[..]));
        }
        if self.reset_addr.is_some() {
            entries.push((SEV_INFO_BLOCK_GUID, &reset[..]));
        }
        write_table(&mut img, &entries).expect("table fits");
        img
    }
}

/// A fresh scratch directory (under cargo's per-target tmp dir), unique per
/// call so parallel tests never share files.
pub fn scratch(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("vellum-snp")
        .join(format!("{name}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Words for the CLI functions.
pub fn words(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

//! Laying out the firmware image: kernel payload at the bottom, the boot ROM at
//! the top, ASEV metadata and the GUIDed table in the window below the reset
//! vector. See `vellum_boot::layout` for the address map.
#![forbid(unsafe_code)]

use crate::elf::{Boot, Kernel};
use std::fmt;
use vellum_boot::{
    fwtable::{self, Section, SectionType},
    layout, payload,
};

/// Why an image could not be laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutError {
    /// The kernel payload plus the boot ROM exceed the maximum image size.
    KernelTooLarge {
        /// Payload bytes.
        payload: u64,
        /// Bytes available for it.
        room: u64,
    },
    /// Two parts of the image overlap.
    Overlap(String),
    /// The table or metadata could not be written.
    Table(String),
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::KernelTooLarge { payload, room } => write!(
                f,
                "kernel too large: its payload is {payload} bytes but an image of at most {} \
                 bytes leaves {room} bytes next to the {}-byte boot ROM",
                layout::IMAGE_MAX_SIZE,
                layout::BOOT_ROM_SIZE
            ),
            LayoutError::Overlap(s) => write!(f, "layout overlap: {s}"),
            LayoutError::Table(s) => write!(f, "firmware table: {s}"),
        }
    }
}

impl std::error::Error for LayoutError {}

/// The ASEV sections every Vellum image carries, in measurement order.
pub fn metadata_sections() -> [Section; 3] {
    [
        Section {
            base: layout::SEC_MEM_START as u32,
            len: (layout::SEC_MEM_END - layout::SEC_MEM_START) as u32,
            kind: SectionType::SecMem,
        },
        Section {
            base: layout::SNP_SECRETS_PAGE as u32,
            len: layout::PAGE_SIZE as u32,
            kind: SectionType::Secrets,
        },
        Section {
            base: layout::SNP_CPUID_PAGE as u32,
            len: layout::PAGE_SIZE as u32,
            kind: SectionType::Cpuid,
        },
    ]
}

/// A laid-out image and where things went.
#[derive(Debug, Clone)]
pub struct Image {
    /// The bytes of `target/vellum.bin`.
    pub bytes: Vec<u8>,
    /// GPA of the kernel payload.
    pub payload_gpa: u64,
    /// Length of the payload.
    pub payload_len: u64,
    /// GPA of the ASEV metadata block.
    pub metadata_gpa: u64,
    /// GPA where the GUIDed table starts.
    pub table_gpa: u64,
    /// The AP reset address in the SEV info block.
    pub ap_reset: u32,
}

impl Image {
    /// Image size in bytes.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    /// GPA of the first byte.
    pub fn base(&self) -> u64 {
        layout::FIRMWARE_TOP - self.size()
    }
}

/// Lays out boot and kernel into one image.
pub fn build(boot: &Boot, kernel: &Kernel) -> Result<Image, LayoutError> {
    let payload_len = kernel.payload.len() as u64;
    let room = layout::IMAGE_MAX_SIZE - layout::BOOT_ROM_SIZE;
    if payload_len > room {
        return Err(LayoutError::KernelTooLarge {
            payload: payload_len,
            room,
        });
    }
    let size = layout::align_up(payload_len + layout::BOOT_ROM_SIZE, layout::IMAGE_ALIGN)
        .expect("bounded by IMAGE_MAX_SIZE");
    let base = layout::FIRMWARE_TOP - size;
    let mut bytes = vec![0u8; size as usize];

    // Kernel payload at the bottom.
    bytes[..kernel.payload.len()].copy_from_slice(&kernel.payload);
    let payload_end = base + payload_len;
    if payload_end > layout::BOOT_ROM_BASE {
        return Err(LayoutError::Overlap(format!(
            "kernel payload ends at {payload_end:#x}, inside the boot ROM at {:#x}",
            layout::BOOT_ROM_BASE
        )));
    }

    // Boot ROM segments at their physical addresses.
    let mut placed: Vec<(u64, u64)> = Vec::new();
    for s in &boot.segments {
        let end = s.paddr + s.bytes.len() as u64;
        if let Some(&(a, b)) = placed.iter().find(|&&(a, b)| s.paddr < b && a < end) {
            return Err(LayoutError::Overlap(format!(
                "boot segments {a:#x}..{b:#x} and {:#x}..{end:#x}",
                s.paddr
            )));
        }
        placed.push((s.paddr, end));
        let off = (s.paddr - base) as usize;
        bytes[off..off + s.bytes.len()].copy_from_slice(&s.bytes);
    }

    // ASEV metadata at the start of the table window, the table right-aligned.
    let sections = metadata_sections();
    let meta_off = (layout::FW_TABLE_START - base) as usize;
    let meta_len = fwtable::write_metadata(&mut bytes[meta_off..], &sections)
        .map_err(|e| LayoutError::Table(format!("{e:?}")))?;
    let meta_from_end = (layout::FIRMWARE_TOP - layout::FW_TABLE_START) as u32;
    let mut kernel_entry = [0u8; 12];
    kernel_entry[0..4].copy_from_slice(&(base as u32).to_le_bytes());
    kernel_entry[4..8].copy_from_slice(&(payload_len as u32).to_le_bytes());
    kernel_entry[8..12].copy_from_slice(&(size as u32).to_le_bytes());
    let table_off = fwtable::write_table(
        &mut bytes,
        &[
            (fwtable::VELLUM_KERNEL_GUID, &kernel_entry),
            (fwtable::SEV_METADATA_GUID, &meta_from_end.to_le_bytes()),
            (fwtable::SEV_INFO_BLOCK_GUID, &boot.ap_reset.to_le_bytes()),
        ],
    )
    .map_err(|e| LayoutError::Table(format!("{e:?}")))?;
    if table_off < meta_off + meta_len {
        return Err(LayoutError::Overlap(
            "ASEV metadata and the GUIDed table overlap in the window".into(),
        ));
    }

    let img = Image {
        bytes,
        payload_gpa: base,
        payload_len,
        metadata_gpa: layout::FW_TABLE_START,
        table_gpa: base + table_off as u64,
        ap_reset: boot.ap_reset,
    };
    verify(&img.bytes).map_err(LayoutError::Table)?;
    Ok(img)
}

/// What [`verify`] found in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Image size.
    pub size: u64,
    /// SEV info block AP reset address.
    pub ap_reset: u32,
    /// ASEV sections in table order.
    pub sections: Vec<Section>,
    /// Kernel payload GPA and length.
    pub payload: (u64, u64),
    /// Kernel entry point.
    pub entry: u64,
    /// Kernel segments `(vaddr, mem_size)`.
    pub segments: Vec<(u64, u64)>,
}

/// Reads an image back the way QEMU and the boot stage do and checks every
/// rule: size, footer, info block, metadata, payload.
pub fn verify(img: &[u8]) -> Result<Summary, String> {
    let size = img.len() as u64;
    if size == 0 || !size.is_multiple_of(layout::IMAGE_ALIGN) {
        return Err(format!(
            "image size {size} is not a non-zero multiple of 64 KiB"
        ));
    }
    if size > layout::IMAGE_MAX_SIZE {
        return Err(format!(
            "image size {size} exceeds {}",
            layout::IMAGE_MAX_SIZE
        ));
    }
    let table = fwtable::Table::find(img).map_err(|e| format!("GUIDed table: {e:?}"))?;
    let info = table
        .get(&fwtable::SEV_INFO_BLOCK_GUID)
        .ok_or("no SEV info block")?;
    let ap_reset = fwtable::le_u32(info, 0).ok_or("SEV info block too short")?;
    if ap_reset == 0 {
        return Err("SEV info block reset address is zero".into());
    }
    let mut sections = Vec::new();
    fwtable::read_metadata(img, &table, |s| sections.push(s))
        .map_err(|e| format!("ASEV metadata: {e:?}"))?;
    let base = layout::FIRMWARE_TOP - size;
    for (i, s) in sections.iter().enumerate() {
        let (a, b) = (u64::from(s.base), u64::from(s.base) + u64::from(s.len));
        if a % layout::PAGE_SIZE != 0 || b % layout::PAGE_SIZE != 0 || s.len == 0 {
            return Err(format!("ASEV section {i} not page aligned"));
        }
        if b > base {
            return Err(format!("ASEV section {i} overlaps the firmware"));
        }
        for t in &sections[i + 1..] {
            let (c, d) = (u64::from(t.base), u64::from(t.base) + u64::from(t.len));
            if a < d && c < b {
                return Err(format!("ASEV sections overlap at {a:#x}"));
            }
        }
    }
    let k = table
        .get(&fwtable::VELLUM_KERNEL_GUID)
        .ok_or("no Vellum kernel entry")?;
    let (gpa, len, isize) = (
        fwtable::le_u32(k, 0).ok_or("kernel entry too short")?,
        fwtable::le_u32(k, 4).ok_or("kernel entry too short")?,
        fwtable::le_u32(k, 8).ok_or("kernel entry too short")?,
    );
    if u64::from(isize) != size || u64::from(gpa) < base {
        return Err("kernel entry disagrees with the image size".into());
    }
    let off = (u64::from(gpa) - base) as usize;
    let p = img
        .get(off..off + len as usize)
        .ok_or("kernel payload outside the image")?;
    let h = payload::Header::parse(p).map_err(|e| format!("kernel payload: {e:?}"))?;
    Ok(Summary {
        size,
        ap_reset,
        sections,
        payload: (u64::from(gpa), u64::from(len)),
        entry: h.entry,
        segments: h.segments[..h.count]
            .iter()
            .map(|s| (s.vaddr, s.mem_size))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::RomSegment;

    fn fake_boot() -> Boot {
        let mut top = vec![0u8; 0x1000];
        top[0xFF0] = 0xE9; // the reset vector's jump
        Boot {
            segments: vec![
                RomSegment {
                    paddr: layout::BOOT_ROM_BASE,
                    bytes: vec![0x90; 0x3000],
                },
                RomSegment {
                    paddr: 0xFFFF_F000,
                    bytes: top,
                },
            ],
            ap_reset: 0xFFFF_F040,
        }
    }

    fn fake_kernel(code_len: usize) -> Kernel {
        let mut h = payload::Header {
            entry: layout::KERNEL_BASE,
            stack_size: 0x8_0000,
            count: 1,
            segments: [payload::Segment::default(); payload::MAX_SEGMENTS],
        };
        h.segments[0] = payload::Segment {
            vaddr: layout::KERNEL_BASE,
            offset: 0x50,
            file_size: code_len as u64,
            mem_size: code_len as u64,
            flags: 5,
        };
        let mut p = vec![0xCC; 0x50 + code_len];
        h.write(&mut p).unwrap();
        Kernel {
            payload: p,
            header: h,
        }
    }

    #[test]
    fn layout_round_trip() {
        let img = build(&fake_boot(), &fake_kernel(0x1234)).unwrap();
        assert_eq!(img.size() % layout::IMAGE_ALIGN, 0);
        assert_eq!(img.size(), 0x3_0000);
        let s = verify(&img.bytes).unwrap();
        assert_eq!(s.ap_reset, 0xFFFF_F040);
        assert_eq!(s.sections, metadata_sections().to_vec());
        assert_eq!(s.payload, (img.base(), 0x50 + 0x1234));
        assert_eq!(s.entry, layout::KERNEL_BASE);
        // The reset vector byte landed at file_end - 16.
        let n = img.bytes.len();
        assert_eq!(img.bytes[n - 16], 0xE9);
        // QEMU's footer rule: GUID at file_end - 48.
        assert_eq!(img.bytes[n - 48..n - 32], fwtable::FOOTER_GUID.0);
    }

    #[test]
    fn kernel_too_large_is_a_clear_error() {
        let e = build(&fake_boot(), &fake_kernel(9 << 20)).unwrap_err();
        assert!(matches!(e, LayoutError::KernelTooLarge { .. }));
        assert!(e.to_string().contains("kernel too large"), "{e}");
    }

    #[test]
    fn overlapping_boot_segments_are_refused() {
        let mut b = fake_boot();
        b.segments.push(RomSegment {
            paddr: layout::BOOT_ROM_BASE + 0x1000,
            bytes: vec![1; 16],
        });
        let e = build(&b, &fake_kernel(16)).unwrap_err();
        assert!(matches!(e, LayoutError::Overlap(_)), "{e}");
    }

    #[test]
    fn verify_rejects_broken_images() {
        let img = build(&fake_boot(), &fake_kernel(64)).unwrap();
        assert!(verify(&img.bytes[..img.bytes.len() - 1]).is_err());
        let mut b = img.bytes.clone();
        let n = b.len();
        b[n - 40] ^= 1; // footer GUID
        assert!(verify(&b).unwrap_err().contains("GUIDed table"));
        let mut b = img.bytes.clone();
        let meta = (layout::FW_TABLE_START - img.base()) as usize;
        b[meta] = b'X';
        assert!(verify(&b).unwrap_err().contains("ASEV"));
        let mut b = img.bytes.clone();
        b[0] = b'X'; // payload magic
        assert!(verify(&b).unwrap_err().contains("kernel payload"));
    }
}

//! Reading the two bare-metal ELF files: the boot stage (placed by physical
//! load address into the top of the image) and the kernel (turned into the
//! payload format of `vellum_boot::payload`).
#![forbid(unsafe_code)]

use object::{
    Object, ObjectSection, ObjectSymbol,
    elf::{FileHeader64, PT_LOAD},
    read::elf::{ElfFile64, FileHeader, ProgramHeader},
};
use std::fmt;
use vellum_boot::{layout, payload};

/// What went wrong reading an ELF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElfError {
    /// Not a 64-bit little-endian ELF.
    Parse(String),
    /// A symbol the layout needs is missing.
    MissingSymbol(&'static str),
    /// The file disagrees with `vellum_boot::layout`.
    Layout(String),
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElfError::Parse(s) => write!(f, "not a usable ELF file: {s}"),
            ElfError::MissingSymbol(s) => write!(f, "symbol `{s}` not found"),
            ElfError::Layout(s) => write!(f, "layout violation: {s}"),
        }
    }
}

impl std::error::Error for ElfError {}

/// A loadable piece of the boot stage, at its physical (ROM) address.
#[derive(Debug, Clone)]
pub struct RomSegment {
    /// Physical load address.
    pub paddr: u64,
    /// File bytes.
    pub bytes: Vec<u8>,
}

/// The boot stage, checked against the layout.
#[derive(Debug, Clone)]
pub struct Boot {
    /// Segments to copy into the image.
    pub segments: Vec<RomSegment>,
    /// The AP reset address for the SEV info block.
    pub ap_reset: u32,
}

fn parse(data: &[u8]) -> Result<ElfFile64<'_>, ElfError> {
    ElfFile64::parse(data).map_err(|e| ElfError::Parse(e.to_string()))
}

fn symbol(elf: &ElfFile64<'_>, name: &'static str) -> Result<u64, ElfError> {
    elf.symbols()
        .find(|s| s.name() == Ok(name))
        .map(|s| s.address())
        .ok_or(ElfError::MissingSymbol(name))
}

/// Reads the boot ELF and checks it against the layout constants.
pub fn read_boot(data: &[u8]) -> Result<Boot, ElfError> {
    let elf = parse(data)?;
    let endian = elf.endian();
    let mut segments = Vec::new();
    for ph in elf.elf_program_headers() {
        if ph.p_type(endian) != PT_LOAD || ph.p_filesz(endian) == 0 {
            continue;
        }
        let paddr = ph.p_paddr(endian);
        let bytes = ph
            .data(endian, data)
            .map_err(|()| ElfError::Parse("segment data out of file".into()))?
            .to_vec();
        let end = paddr + bytes.len() as u64;
        if paddr < layout::BOOT_ROM_BASE || end > layout::FIRMWARE_TOP {
            return Err(ElfError::Layout(format!(
                "boot segment {paddr:#x}..{end:#x} outside the boot ROM {:#x}..4 GiB",
                layout::BOOT_ROM_BASE
            )));
        }
        // The table window must be empty: the image tool owns it.
        let (ws, we) = (layout::FW_TABLE_START, layout::FW_TABLE_END);
        if paddr < we && ws < end {
            let lo = (ws.max(paddr) - paddr) as usize;
            let hi = (we.min(end) - paddr) as usize;
            if bytes[lo..hi].iter().any(|&b| b != 0) {
                return Err(ElfError::Layout(
                    "boot code overlaps the GUIDed table window".into(),
                ));
            }
        }
        segments.push(RomSegment { paddr, bytes });
    }
    if segments.is_empty() {
        return Err(ElfError::Parse("no loadable segments".into()));
    }
    let reset = symbol(&elf, "reset_vector")?;
    if reset != layout::RESET_VECTOR {
        return Err(ElfError::Layout(format!(
            "reset_vector at {reset:#x}, expected {:#x}",
            layout::RESET_VECTOR
        )));
    }
    let ap_reset = symbol(&elf, "ap_reset")?;
    if !(layout::REAL_MODE_WINDOW..layout::FW_TABLE_START).contains(&ap_reset) || ap_reset == 0 {
        return Err(ElfError::Layout(format!(
            "ap_reset {ap_reset:#x} is not in the real-mode window"
        )));
    }
    for (name, limit) in [
        ("_ram_image_end", layout::BOOT_RAM_END),
        ("_bss_end", layout::BOOT_RAM_END),
    ] {
        let v = symbol(&elf, name)?;
        if v > limit {
            return Err(ElfError::Layout(format!(
                "{name} = {v:#x} exceeds {limit:#x}"
            )));
        }
    }
    let start = symbol(&elf, "_ram_image_start")?;
    if start != layout::BOOT_RAM_BASE {
        return Err(ElfError::Layout(format!(
            "boot RAM image linked at {start:#x}, expected {:#x}",
            layout::BOOT_RAM_BASE
        )));
    }
    Ok(Boot {
        segments,
        ap_reset: ap_reset as u32,
    })
}

/// The kernel as a payload: header plus segment bytes, ready to place.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Serialised payload (header, segment table, bytes).
    pub payload: Vec<u8>,
    /// The parsed header (for reports).
    pub header: payload::Header,
}

/// Reads the kernel ELF, the stack size from its `.bootloader-config` section,
/// and builds the payload.
pub fn read_kernel(data: &[u8]) -> Result<Kernel, ElfError> {
    let elf = parse(data)?;
    let endian = elf.endian();
    let entry = elf.elf_header().e_entry(endian);
    let stack_size = match elf.section_by_name(".bootloader-config") {
        Some(sec) => {
            let raw = sec
                .data()
                .map_err(|e| ElfError::Parse(format!(".bootloader-config: {e}")))?;
            let cfg = bootloader_api::BootloaderConfig::deserialize(raw)
                .map_err(|e| ElfError::Parse(format!(".bootloader-config: {e}")))?;
            cfg.kernel_stack_size
        }
        None => return Err(ElfError::MissingSymbol(".bootloader-config section")),
    };
    let mut header = payload::Header {
        entry,
        stack_size,
        count: 0,
        segments: [payload::Segment::default(); payload::MAX_SEGMENTS],
    };
    let mut parts: Vec<&[u8]> = Vec::new();
    for ph in elf.elf_program_headers() {
        if ph.p_type(endian) != PT_LOAD || ph.p_memsz(endian) == 0 {
            continue;
        }
        if header.count == payload::MAX_SEGMENTS {
            return Err(ElfError::Layout("too many kernel segments".into()));
        }
        if ph.p_vaddr(endian) != ph.p_paddr(endian) {
            return Err(ElfError::Layout(
                "kernel segment with vaddr != paddr (boot identity-maps)".into(),
            ));
        }
        let bytes = ph
            .data(endian, data)
            .map_err(|()| ElfError::Parse("segment data out of file".into()))?;
        header.segments[header.count] = payload::Segment {
            vaddr: ph.p_vaddr(endian),
            offset: 0,
            file_size: bytes.len() as u64,
            mem_size: ph.p_memsz(endian),
            flags: u64::from(ph.p_flags(endian)),
        };
        parts.push(bytes);
        header.count += 1;
    }
    if header.count == 0 {
        return Err(ElfError::Parse("kernel has no loadable segments".into()));
    }
    // The linker script pins ring's stitched AES-GCM code to a page offset
    // (its emulated speed depends on it; see kernel/build.rs). A kernel
    // without the symbol (a test ELF, another crypto back end) is fine.
    if let Some(at) = elf
        .symbols()
        .find(|s| s.name() == Ok(layout::KERNEL_AES_GCM_SYMBOL))
        .map(|s| s.address())
        && at % layout::PAGE_SIZE != layout::KERNEL_AES_GCM_PAGE_OFFSET
    {
        return Err(ElfError::Layout(format!(
            "{} at {at:#x}: page offset {:#x}, the linker script asks for {:#x}",
            layout::KERNEL_AES_GCM_SYMBOL,
            at % layout::PAGE_SIZE,
            layout::KERNEL_AES_GCM_PAGE_OFFSET
        )));
    }
    let mut payload_bytes = vec![0u8; header.table_len()];
    for (i, bytes) in parts.iter().enumerate() {
        let off = payload_bytes.len().next_multiple_of(16);
        payload_bytes.resize(off, 0);
        payload_bytes.extend_from_slice(bytes);
        header.segments[i].offset = off as u64;
    }
    header
        .write(&mut payload_bytes)
        .map_err(|e| ElfError::Layout(format!("payload header: {e:?}")))?;
    // The boot stage's own checks, run here first so a bad kernel is refused at
    // build time with a clear message instead of at boot.
    let header = payload::Header::parse(&payload_bytes).map_err(|e| {
        ElfError::Layout(format!(
            "kernel does not fit the layout ({e:?}): segments must lie in {:#x}..{:#x} \
             with the stack, and the entry in an executable segment",
            layout::KERNEL_BASE,
            layout::KERNEL_LIMIT
        ))
    })?;
    let _: &FileHeader64<object::Endianness> = elf.elf_header();
    Ok(Kernel {
        payload: payload_bytes,
        header,
    })
}

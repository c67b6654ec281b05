//! Vellum's firmware stage, the first code that runs after reset.
//!
//! `entry.s` takes the CPU from the reset vector to 64-bit mode with identity
//! page tables, copies this Rust image into RAM and calls [`boot_main`], which
//! reads the memory map from fw_cfg, loads the kernel payload's segments,
//! builds a `bootloader_api::BootInfo` and jumps to the kernel's entry point.
//! Everything it computes comes from the host-tested modules of the
//! `vellum_boot` library; what lives here is the hardware access.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("vellum-boot is a bare-metal firmware stage; build it with `image build`.");
}

#[cfg(target_os = "none")]
mod ghcb_page;
#[cfg(target_os = "none")]
mod sev;

#[cfg(target_os = "none")]
mod firmware {
    use crate::sev;
    use bootloader_api::{
        BootInfo,
        info::{MemoryRegion, Optional},
    };
    use core::{arch::global_asm, fmt::Write, panic::PanicInfo};
    use vellum_boot::{
        abi::{self, Handoff},
        e820::{self, E820},
        fwcfg, fwtable,
        layout::{self, FIRMWARE_TOP},
        paging, payload,
        regions::{RegionError, Regions},
        snp::{
            cpuid::CpuidPage,
            msr_protocol::{TerminateReason, terminate_request},
            validate::{self, Touch, ValidateError, ValidatedSet, ValidationPlan},
        },
    };

    /// CPUID(1).ECX bits the Rust code is compiled to use: SSE3, PCLMULQDQ,
    /// SSSE3, SSE4.1, SSE4.2, POPCNT, AES, XSAVE, AVX.
    const REQUIRED_ECX: u32 = (1 << 0)
        | (1 << 1)
        | (1 << 9)
        | (1 << 19)
        | (1 << 20)
        | (1 << 23)
        | (1 << 25)
        | (1 << 26)
        | (1 << 28);

    global_asm!(
        include_str!("entry.s"),
        stack_top = const layout::BOOT_STACK_TOP,
        pml4 = const layout::BOOT_PML4,
        pdpt = const layout::BOOT_PDPT,
        pd0 = const layout::BOOT_PD0,
        pd_count = const layout::BOOT_PD_COUNT,
        pt0 = const layout::BOOT_PT0,
        pt_end = const layout::BOOT_PAGE_TABLES_END,
        early_page = const layout::BOOT_EARLY_PAGE,
        idt32 = const layout::BOOT_IDT32,
        idt32_gates = const layout::BOOT_IDT32_GATES,
        early_state = const layout::BOOT_EARLY_STATE,
        cpuid_page = const layout::SNP_CPUID_PAGE,
        pool_first_pte = const layout::POOL_BASE / layout::PAGE_SIZE,
        pool_end_pte = const layout::POOL_END / layout::PAGE_SIZE,
        mmio_first_pde = const layout::MMIO_SHARED_START / layout::LARGE_PAGE_SIZE,
        mmio_end_pde = const layout::MMIO_SHARED_END / layout::LARGE_PAGE_SIZE,
        c_bit_min = const paging::C_BIT_MIN,
        c_bit_max = const paging::C_BIT_MAX,
        term_general = const terminate_request(TerminateReason::GENERAL),
        term_snp_unsupported = const terminate_request(TerminateReason::SNP_UNSUPPORTED),
        term_c_bit = const terminate_request(TerminateReason::C_BIT_MISMATCH),
        term_cpuid = const terminate_request(TerminateReason::CPUID),
        term_cpuid_hv = const terminate_request(TerminateReason::CPUID_HV),
        term_unexpected_vc = const terminate_request(TerminateReason::UNEXPECTED_VC),
        required_ecx = const REQUIRED_ECX,
        options(att_syntax)
    );

    mod io {
        //! Port I/O, picked at run time: the IN/OUT instructions without SEV,
        //! GHCB IOIO exits under SEV-SNP (`crate::sev`). Under SNP before the
        //! GHCB is registered there is no way to do port I/O: terminate.
        use crate::sev::{self, PortMode};
        use core::arch::asm;
        use vellum_boot::snp::{ghcb::IoSize, msr_protocol::TerminateReason};

        /// Writes a byte to an I/O port.
        pub fn outb(port: u16, value: u8) {
            match sev::port_mode() {
                // SAFETY: boot only writes the ports of devices it drives
                // (COM1, fw_cfg, isa-debug-exit); none of them can affect
                // memory safety.
                PortMode::Direct => unsafe {
                    asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
                },
                PortMode::Ghcb => sev::io_out(port, IoSize::Byte, value.into()),
                PortMode::Unavailable => sev::terminate(TerminateReason::GENERAL),
            }
        }

        /// Writes a 16-bit value to an I/O port.
        pub fn outw(port: u16, value: u16) {
            match sev::port_mode() {
                // SAFETY: as for `outb`: only the fw_cfg selector is written.
                PortMode::Direct => unsafe {
                    asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
                },
                PortMode::Ghcb => sev::io_out(port, IoSize::Word, value.into()),
                PortMode::Unavailable => sev::terminate(TerminateReason::GENERAL),
            }
        }

        /// Reads a byte from an I/O port.
        pub fn inb(port: u16) -> u8 {
            match sev::port_mode() {
                PortMode::Direct => {
                    let v: u8;
                    // SAFETY: reading COM1 status or the fw_cfg data port has
                    // no effect on memory.
                    unsafe {
                        asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
                    };
                    v
                }
                PortMode::Ghcb => sev::io_in(port, IoSize::Byte) as u8,
                PortMode::Unavailable => sev::terminate(TerminateReason::GENERAL),
            }
        }

        /// Reads the time-stamp counter.
        pub fn rdtsc() -> u64 {
            let (lo, hi): (u32, u32);
            // SAFETY: RDTSC only reads a counter.
            unsafe {
                asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
            };
            (u64::from(hi) << 32) | u64::from(lo)
        }
    }

    const COM1: u16 = 0x3F8;

    struct Serial;

    impl Serial {
        fn init() {
            io::outb(COM1 + 1, 0x00); // no interrupts
            io::outb(COM1 + 3, 0x80); // DLAB
            io::outb(COM1, 0x01); // 115200 baud
            io::outb(COM1 + 1, 0x00);
            io::outb(COM1 + 3, 0x03); // 8N1
            io::outb(COM1 + 2, 0xC7); // FIFO on, cleared
            io::outb(COM1 + 4, 0x03); // DTR, RTS
        }
    }

    impl Write for Serial {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            for b in s.bytes() {
                if b == b'\n' {
                    io::outb(COM1, b'\r');
                }
                io::outb(COM1, b);
            }
            Ok(())
        }
    }

    /// Stops the machine after a fatal boot error: exit QEMU through
    /// isa-debug-exit when present (status 0x11, QEMU exits 35), else halt.
    /// Under SEV-SNP: print if the GHCB is up, then terminate (reason GENERAL).
    fn fail(args: core::fmt::Arguments<'_>) -> ! {
        fail_with(TerminateReason::GENERAL, args)
    }

    /// [`fail`] with an SNP termination reason.
    fn fail_with(reason: TerminateReason, args: core::fmt::Arguments<'_>) -> ! {
        if sev::port_mode() != sev::PortMode::Unavailable {
            let _ = writeln!(Serial, "vellum-boot: fatal: {args}");
        }
        if sev::is_snp() {
            sev::terminate(reason);
        }
        io::outb(0xF4, 0x11);
        loop {
            // SAFETY: HLT with interrupts disabled parks the CPU; nothing else runs.
            unsafe { core::arch::asm!("hlt", options(nomem, nostack)) };
        }
    }

    #[panic_handler]
    fn panic(info: &PanicInfo<'_>) -> ! {
        fail_with(TerminateReason::PANIC, format_args!("panic: {info}"))
    }

    /// Reads `len` bytes of the fw_cfg item `select` into `buf`.
    fn fw_cfg_read(select: u16, buf: &mut [u8]) {
        io::outw(fwcfg::PORT_SELECTOR, select);
        for b in buf.iter_mut() {
            *b = io::inb(fwcfg::PORT_DATA);
        }
    }

    /// Finds the e820 map through the fw_cfg file directory and reads it into
    /// `buf`, returning the bytes read.
    fn read_e820(buf: &mut [u8]) -> usize {
        let mut sig = [0u8; 4];
        fw_cfg_read(fwcfg::SEL_SIGNATURE, &mut sig);
        if sig != fwcfg::SIGNATURE {
            fail(format_args!("no QEMU fw_cfg device (signature {sig:02x?})"));
        }
        let mut count = [0u8; 4];
        fw_cfg_read(fwcfg::SEL_FILE_DIR, &mut count);
        // The directory read continues where the count ended.
        let mut found = None;
        for _ in 0..fwcfg::dir_count(count) {
            let mut entry = [0u8; fwcfg::DIR_ENTRY_LEN];
            for b in entry.iter_mut() {
                *b = io::inb(fwcfg::PORT_DATA);
            }
            if found.is_none() {
                found = fwcfg::match_entry(&entry, "etc/e820");
            }
        }
        let Some(file) = found else {
            fail(format_args!("fw_cfg has no etc/e820"));
        };
        let size = file.size as usize;
        if size > buf.len() {
            fail(format_args!(
                "etc/e820 is {size} bytes, more than {} entries",
                e820::MAX_ENTRIES
            ));
        }
        fw_cfg_read(file.select, &mut buf[..size]);
        size
    }

    /// A read-only view of `len` bytes of the firmware image at `gpa`.
    fn firmware_bytes(gpa: u64, len: u64) -> &'static [u8] {
        assert!(gpa >= FIRMWARE_TOP - layout::IMAGE_MAX_SIZE && gpa + len <= FIRMWARE_TOP);
        // SAFETY: the range lies inside the firmware image, which is mapped
        // (identity, 2 MiB pages), never written by anyone after launch, and
        // lives for the whole boot.
        unsafe { core::slice::from_raw_parts(gpa as *const u8, len as usize) }
    }

    /// Reads entry `index` of one of the boot page tables.
    fn table_entry(table: paging::Table, index: usize) -> u64 {
        let base = match table {
            paging::Table::Pml4 => layout::BOOT_PML4,
            paging::Table::Pdpt => layout::BOOT_PDPT,
            paging::Table::Pd => layout::BOOT_PD0,
            paging::Table::Pt0 => layout::BOOT_PT0,
        };
        let limit = match table {
            paging::Table::Pd => paging::PD_ENTRIES,
            _ => paging::ENTRIES,
        };
        assert!(index < limit);
        // SAFETY: the boot page tables live in SNP_SEC_MEM (private,
        // pre-validated, identity-mapped), were written by entry.s and are only
        // read here; the index is inside the table (checked); 8-byte aligned.
        unsafe { core::ptr::read_volatile((base as *const u64).add(index)) }
    }

    /// SEV-SNP setup before anything else. Returns the parsed CPUID page.
    ///
    /// 1. Whether this guest may run at all: SEV_STATUS has no feature bit
    ///    Vellum does not implement (else set 0 code 2), and it runs at VMPL0
    ///    (RMPADJUST probe, else `NOT_VMPL0`). This is the earliest safe
    ///    place: `entry.s` has only read SEV_STATUS, asked the hypervisor for
    ///    CPUID through the MSR protocol and built page tables, all inside
    ///    launch-validated memory; RMPADJUST needs long mode's page tables (a
    ///    C-bit mapping of a private, validated page: the early page); and
    ///    nothing has been shared, registered, validated or read from the
    ///    secrets page yet. Both checks need no GHCB (termination is an
    ///    MSR-protocol request), so nothing is asked of the hypervisor first.
    /// 2. The GHCB: protocol version, features, shared, registered.
    /// 3. The C-bit check against the CPUID page.
    fn snp_early(sev_status: u64, c_bit: u64) -> CpuidPage {
        sev::enter_snp();
        sev::check_sev_features(sev_status);
        sev::check_vmpl0();
        let hv_c_bit = sev::setup_ghcb();
        Serial::init();
        let _ = writeln!(
            Serial,
            "vellum-boot: snp: GHCB registered at {:#x}",
            sev::GHCB_GPA
        );
        // A private copy of the PSP-filtered CPUID page, parsed once.
        let mut copy = [0u8; layout::PAGE_SIZE as usize];
        // SAFETY: the CPUID page is an ASEV range (private, launch-validated,
        // identity-mapped with the C-bit); it is read once into `copy`.
        unsafe {
            core::ptr::copy_nonoverlapping(
                layout::SNP_CPUID_PAGE as *const u8,
                copy.as_mut_ptr(),
                copy.len(),
            )
        };
        let page = CpuidPage::parse(&copy).unwrap_or_else(|e| {
            fail_with(TerminateReason::CPUID, format_args!("CPUID page: {e:?}"))
        });
        if !page.snp_supported() {
            fail_with(
                TerminateReason::CPUID,
                format_args!("CPUID page: 0x8000_001F does not report SNP"),
            );
        }
        let trusted = page.c_bit();
        if trusted.map(u64::from) != Some(c_bit) || u64::from(hv_c_bit) != c_bit {
            fail_with(
                TerminateReason::C_BIT_MISMATCH,
                format_args!(
                    "C-bit: CPUID page {trusted:?}, CPUID #VC {c_bit}, SEV info {hv_c_bit}"
                ),
            );
        }
        let _ = writeln!(
            Serial,
            "vellum-boot: snp: active, C-bit {c_bit}, VMPL0 (SEV_STATUS {sev_status:#x})"
        );
        page
    }

    /// SEV-SNP: validate the RAM the plan lists (PSC private, PVALIDATE 2M/4K,
    /// touch), then make the rest of the pool shared.
    fn snp_validate(map: &E820, image_size: u64, page: &CpuidPage) {
        if let Some((s, e)) = paging::ram_in_mmio_window(map) {
            fail_with(
                TerminateReason::VALIDATION_PLAN,
                format_args!("e820 RAM {s:#x}..{e:#x} inside the shared MMIO window"),
            );
        }
        let plan = ValidationPlan::new(map, image_size).unwrap_or_else(|e| {
            fail_with(
                TerminateReason::VALIDATION_PLAN,
                format_args!("validation plan: {e:?}"),
            )
        });
        let mut set = ValidatedSet::with_launch_ranges(image_size).unwrap_or_else(|e| {
            fail_with(
                TerminateReason::VALIDATION_PLAN,
                format_args!("validated set: {e:?}"),
            )
        });
        let ebx = page.lookup(0x8000_001F, 0, 1, 0).map_or(0, |r| r[1]);
        let touch = Touch::from_cpuid_8000_001f_ebx(ebx);
        match validate::validate_plan(&plan, &mut sev::BootValidator, &mut set, touch) {
            Ok(st) => {
                let pages = st.pages_2m * 512 + st.pages_4k;
                let _ = writeln!(
                    Serial,
                    "vellum-boot: snp: validated {pages} pages ({} MiB)",
                    (pages * layout::PAGE_SIZE) >> 20
                );
                let _ = writeln!(
                    Serial,
                    "vellum-boot: snp: {} x 2M, {} x 4K, {} 2M->4K fallbacks, touch {:?}",
                    st.pages_2m, st.pages_4k, st.fallbacks, touch
                );
            }
            Err(e) => {
                let reason = match e {
                    ValidateError::Psc(_) => TerminateReason::PSC,
                    ValidateError::Set(_) => TerminateReason::VALIDATION_PLAN,
                    _ => TerminateReason::PVALIDATE,
                };
                fail_with(reason, format_args!("memory validation: {e:?}"));
            }
        }
        if let Err(e) = sev::share_pool_rest() {
            fail_with(TerminateReason::PSC, format_args!("pool to shared: {e:?}"));
        }
    }

    /// Called by `entry.s` on the boot stack, in 64-bit mode, with SSE/AVX on,
    /// with what the 32-bit code detected: SEV_STATUS (0 without SEV) and the
    /// C-bit position (0 without SNP; already range-checked and compared with
    /// the CPUID page by entry.s).
    #[unsafe(no_mangle)]
    extern "C" fn boot_main(tsc_at_reset: u64, sev_status: u64, c_bit: u64) -> ! {
        let snp = sev_status & sev::SEV_STATUS_SNP != 0;
        let cpuid_page = if snp {
            Some(snp_early(sev_status, c_bit))
        } else {
            Serial::init();
            None
        };
        let _ = writeln!(Serial, "vellum-boot: 64-bit mode");

        // The live page tables must be exactly what paging.rs describes.
        let c = snp.then_some(c_bit as u8);
        if let Some((t, i, got, want)) = paging::first_mismatch(c, table_entry) {
            fail_with(
                TerminateReason::GENERAL,
                format_args!("page table {t:?}[{i}] = {got:#x}, expected {want:#x}"),
            );
        }

        // The kernel payload, through our entry in the GUIDed table.
        let window = firmware_bytes(
            layout::FW_TABLE_START,
            FIRMWARE_TOP - layout::FW_TABLE_START,
        );
        let table = fwtable::Table::find(window)
            .unwrap_or_else(|e| fail(format_args!("firmware table: {e:?}")));
        let entry = table
            .get(&fwtable::VELLUM_KERNEL_GUID)
            .unwrap_or_else(|| fail(format_args!("firmware table has no kernel entry")));
        let (Some(gpa), Some(len), Some(image_size)) = (
            fwtable::le_u32(entry, 0),
            fwtable::le_u32(entry, 4),
            fwtable::le_u32(entry, 8),
        ) else {
            fail(format_args!("kernel entry is {} bytes", entry.len()));
        };
        let (gpa, len, image_size) = (u64::from(gpa), u64::from(len), u64::from(image_size));
        if image_size > layout::IMAGE_MAX_SIZE || gpa < FIRMWARE_TOP - image_size {
            fail(format_args!(
                "kernel payload {gpa:#x}+{len:#x} outside the image"
            ));
        }
        let payload = firmware_bytes(gpa, len);
        let header = payload::Header::parse(payload)
            .unwrap_or_else(|e| fail(format_args!("kernel payload: {e:?}")));

        // The memory map.
        let mut raw = [0u8; e820::MAX_ENTRIES * e820::ENTRY_LEN];
        let n = read_e820(&mut raw);
        let firmware = (FIRMWARE_TOP - image_size, FIRMWARE_TOP);
        let map =
            E820::parse(&raw[..n], firmware).unwrap_or_else(|e| fail(format_args!("e820: {e:?}")));
        if let Some(page) = &cpuid_page {
            snp_validate(&map, image_size, page);
        }

        let Some((stack_start, stack_end)) = header.stack_range() else {
            fail(format_args!("kernel stack does not fit"));
        };
        let reserved = [
            (layout::SNP_SECRETS_PAGE, layout::HANDOFF_END),
            (layout::POOL_BASE, layout::POOL_END),
            (layout::KERNEL_BASE, stack_end),
        ];
        let regions = Regions::build(&map, &reserved, layout::IDENTITY_MAPPED_END).unwrap_or_else(
            |e| match e {
                RegionError::ReservedNotRam { start, end } => fail(format_args!(
                    "memory map: no RAM for {start:#x}..{end:#x} (boot data, shared pool or \
                     kernel and stack): give the guest more memory (QEMU -m)"
                )),
                e => fail(format_args!("memory map: {e:?}")),
            },
        );

        // The shared pool starts zeroed (under SEV-SNP a page-state change has
        // already destroyed its old contents; zero it in any case). This also
        // zeroes the GHCB page between two calls, which is harmless.
        // SAFETY: the pool range is RAM (the region list just checked it) that
        // only boot touches until the hand-off; under SNP it is shared and
        // mapped without the C-bit.
        unsafe {
            core::ptr::write_bytes(layout::POOL_BASE as *mut u8, 0, layout::POOL_SIZE as usize)
        };

        // Load the kernel: every rule the copy relies on was checked by parse().
        for s in &header.segments[..header.count] {
            let src = &payload[s.offset as usize..(s.offset + s.file_size) as usize];
            // SAFETY: the segment lies in [KERNEL_BASE, KERNEL_LIMIT), which the
            // region list just proved is RAM and reserved for the kernel; nothing
            // else in boot uses it, and segments do not overlap (parse checked).
            let dst =
                unsafe { core::slice::from_raw_parts_mut(s.vaddr as *mut u8, s.mem_size as usize) };
            dst[..src.len()].copy_from_slice(src);
            dst[src.len()..].fill(0);
        }

        // BootInfo and its memory-region array in the hand-off area.
        let list = regions.as_slice();
        let regions_ptr = abi::REGIONS_ADDR as *mut MemoryRegion;
        let max = (abi::HANDOFF_ADDR - abi::REGIONS_ADDR) as usize / size_of::<MemoryRegion>();
        assert!(list.len() <= max);
        // SAFETY: the hand-off area is reserved RAM inside SNP_SEC_MEM that only
        // boot writes before the jump; the array fits (checked above) and is
        // properly aligned (page-aligned start).
        let out: &'static mut [MemoryRegion] = unsafe {
            for (i, r) in list.iter().enumerate() {
                regions_ptr.add(i).write(*r);
            }
            core::slice::from_raw_parts_mut(regions_ptr, list.len())
        };
        let mut info = BootInfo::new(out.into());
        info.physical_memory_offset = Optional::Some(0);
        info.kernel_addr = layout::KERNEL_BASE;
        info.kernel_len = header.image_end() - layout::KERNEL_BASE;
        info.kernel_image_offset = 0;
        let boot_info = abi::BOOT_INFO_ADDR as *mut BootInfo;
        // SAFETY: as above: reserved, page-aligned, written only here.
        unsafe { boot_info.write(info) };

        let _ = writeln!(
            Serial,
            "vellum-boot: {} MiB RAM, kernel {:#x}..{:#x}, entry {:#x}",
            map.ram_bytes() >> 20,
            layout::KERNEL_BASE,
            header.image_end(),
            header.entry
        );
        // Last: boot's VMGEXIT count includes that line.
        let handoff = Handoff {
            magic: abi::HANDOFF_MAGIC,
            tsc_at_reset,
            tsc_at_kernel: io::rdtsc(),
            sev_status,
            c_bit: if snp { c_bit } else { 0 },
            ghcb: if snp { sev::GHCB_GPA } else { 0 },
            image_size,
            kernel_stack: [stack_start, stack_end],
            ram_bytes: map.ram_bytes(),
            pool: [layout::POOL_BASE, layout::POOL_END],
            boot_vmgexits: if snp { sev::vmgexits() } else { 0 },
        };
        // SAFETY: the hand-off page is reserved and page-aligned; written only here.
        unsafe { (abi::HANDOFF_ADDR as *mut Handoff).write(handoff) };

        // SAFETY: the entry point was checked to lie in an executable kernel
        // segment that was just loaded; the stack is reserved RAM; the kernel's
        // `_start` follows the System V ABI and never returns. RSP is aligned so
        // that (RSP + 8) is a multiple of 16 at entry, as after a call.
        unsafe {
            core::arch::asm!(
                "mov rsp, {stack}",
                "push 0",
                "xor ebp, ebp",
                "jmp {entry}",
                stack = in(reg) stack_end,
                entry = in(reg) header.entry,
                in("rdi") boot_info,
                options(noreturn)
            )
        }
    }
}

//! The GHCB page and the typed NAE calls made through it.
//!
//! Layout: AMD GHCB spec 56421 §2.5 "GHCB layout" (Table 3), Linux `struct ghcb`
//! / `struct ghcb_save_area` in `arch/x86/include/asm/svm.h`, Oak
//! `oak_sev_guest/src/ghcb.rs` (offsets computed from the struct), reference
//! §4 "GHCB page". The valid bitmap has one bit per 8-byte quadword of the save
//! area: bit index = field offset / 8 (Linux `GHCB_BITMAP_IDX`).
//!
//! NAE exit codes: Linux `arch/x86/include/uapi/asm/svm.h` (`SVM_EXIT_*`,
//! `SVM_VMGEXIT_*`); inputs and outputs per event: GHCB spec §4.1 and KVM
//! `arch/x86/kvm/svm/sev.c` `sev_es_validate_vmgexit` (which valid bits KVM
//! requires) and `sev_es_sync_to_ghcb` (KVM returns RAX, RBX, RCX, RDX with
//! their valid bits set, and sets SW_EXITINFO1/2 with valid bits before it
//! dispatches an event). IOIO exit information: AMD APM vol. 2 (24593) §15.10.2
//! "IN and OUT Behavior" (Figure 15-2). Return status in SW_EXITINFO1\[31:0\]:
//! Linux `sev-common.h` `GHCB_HV_RESP_*`/`GHCB_ERR_*` and `verify_exception_info`
//! in `arch/x86/coco/sev/` (only #GP/#UD are accepted as injected exceptions).
//!
//! # Trust model
//!
//! The GHCB page is shared: the hypervisor may rewrite it at any time. The
//! protocol layer therefore sees it only through copies ([`GhcbMem`]), never
//! through a reference. After a VMGEXIT it reads the valid bitmap once, checks
//! the valid bit of each field it needs, and reads that field exactly once.
//! A missing valid bit or a non-zero status is a typed [`GhcbError`]; the
//! kernel turns every such error into a GHCB terminate request (fail closed).

use super::msr_protocol::{HvFeatures, PROTOCOL_VERSION};
use core::sync::atomic::{AtomicU64, Ordering};

/// Size of the GHCB page.
pub const GHCB_SIZE: usize = 4096;

/// Byte offsets in the GHCB page (GHCB spec Table 3; Linux `struct ghcb_save_area`).
pub mod offset {
    /// `cpl` (u8).
    pub const CPL: usize = 0x0CB;
    /// `xss`.
    pub const XSS: usize = 0x140;
    /// `dr7`.
    pub const DR7: usize = 0x160;
    /// `rax`.
    pub const RAX: usize = 0x1F8;
    /// `rcx`.
    pub const RCX: usize = 0x308;
    /// `rdx`.
    pub const RDX: usize = 0x310;
    /// `rbx`.
    pub const RBX: usize = 0x318;
    /// `sw_exit_code`.
    pub const SW_EXIT_CODE: usize = 0x390;
    /// `sw_exit_info_1`.
    pub const SW_EXIT_INFO_1: usize = 0x398;
    /// `sw_exit_info_2`.
    pub const SW_EXIT_INFO_2: usize = 0x3A0;
    /// `sw_scratch`.
    pub const SW_SCRATCH: usize = 0x3A8;
    /// `xcr0`.
    pub const XCR0: usize = 0x3E8;
    /// `valid_bitmap` (16 bytes).
    pub const VALID_BITMAP: usize = 0x3F0;
    /// `x87_state_gpa`.
    pub const X87_STATE_GPA: usize = 0x400;
    /// `shared_buffer` (2032 bytes).
    pub const SHARED_BUFFER: usize = 0x800;
    /// End of the shared buffer.
    pub const SHARED_BUFFER_END: usize = 0xFF0;
    /// `protocol_version` (u16).
    pub const PROTOCOL_VERSION: usize = 0xFFA;
    /// `ghcb_usage` (u32).
    pub const GHCB_USAGE: usize = 0xFFC;
}

/// Bytes in the shared buffer (0x7F0 = 2032).
pub const SHARED_BUFFER_LEN: usize = offset::SHARED_BUFFER_END - offset::SHARED_BUFFER;
/// Bytes in the valid bitmap.
pub const VALID_BITMAP_LEN: usize = 16;
/// `ghcb_usage` value for the standard layout (Linux `GHCB_DEFAULT_USAGE`).
pub const GHCB_DEFAULT_USAGE: u32 = 0;
/// The quadword holding `protocol_version` and `ghcb_usage` (0xFF8..0x1000).
const VERSION_QWORD: usize = 0xFF8;

/// Save-area fields the protocol layer writes or reads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Field {
    /// RAX.
    Rax,
    /// RBX.
    Rbx,
    /// RCX.
    Rcx,
    /// RDX.
    Rdx,
    /// XCR0.
    Xcr0,
    /// SW_EXITCODE.
    SwExitCode,
    /// SW_EXITINFO1.
    SwExitInfo1,
    /// SW_EXITINFO2.
    SwExitInfo2,
    /// SW_SCRATCH.
    SwScratch,
}

impl Field {
    /// Every field.
    pub const ALL: [Field; 9] = [
        Field::Rax,
        Field::Rbx,
        Field::Rcx,
        Field::Rdx,
        Field::Xcr0,
        Field::SwExitCode,
        Field::SwExitInfo1,
        Field::SwExitInfo2,
        Field::SwScratch,
    ];

    /// Byte offset in the page.
    pub const fn offset(self) -> usize {
        match self {
            Field::Rax => offset::RAX,
            Field::Rbx => offset::RBX,
            Field::Rcx => offset::RCX,
            Field::Rdx => offset::RDX,
            Field::Xcr0 => offset::XCR0,
            Field::SwExitCode => offset::SW_EXIT_CODE,
            Field::SwExitInfo1 => offset::SW_EXIT_INFO_1,
            Field::SwExitInfo2 => offset::SW_EXIT_INFO_2,
            Field::SwScratch => offset::SW_SCRATCH,
        }
    }

    /// Index of the field's bit in the valid bitmap (offset / 8).
    pub const fn valid_bit(self) -> usize {
        self.offset() / 8
    }
}

/// NAE exit codes (SW_EXITCODE; Linux `uapi/asm/svm.h`).
pub mod exit_code {
    /// DR7 read.
    pub const READ_DR7: u64 = 0x27;
    /// DR7 write.
    pub const WRITE_DR7: u64 = 0x37;
    /// RDTSC.
    pub const RDTSC: u64 = 0x6E;
    /// RDPMC.
    pub const RDPMC: u64 = 0x6F;
    /// CPUID.
    pub const CPUID: u64 = 0x72;
    /// INVD.
    pub const INVD: u64 = 0x76;
    /// IN/OUT/INS/OUTS.
    pub const IOIO: u64 = 0x7B;
    /// RDMSR/WRMSR.
    pub const MSR: u64 = 0x7C;
    /// VMMCALL.
    pub const VMMCALL: u64 = 0x81;
    /// RDTSCP.
    pub const RDTSCP: u64 = 0x87;
    /// WBINVD.
    pub const WBINVD: u64 = 0x89;
    /// MONITOR/MONITORX.
    pub const MONITOR: u64 = 0x8A;
    /// MWAIT/MWAITX.
    pub const MWAIT: u64 = 0x8B;
    /// Nested page fault (MMIO on a shared/emulated page, in a #VC).
    pub const NPF: u64 = 0x400;
    /// MMIO read.
    pub const MMIO_READ: u64 = 0x8000_0001;
    /// MMIO write.
    pub const MMIO_WRITE: u64 = 0x8000_0002;
    /// NMI complete.
    pub const NMI_COMPLETE: u64 = 0x8000_0003;
    /// AP HLT loop.
    pub const AP_HLT_LOOP: u64 = 0x8000_0004;
    /// AP jump table.
    pub const AP_JUMP_TABLE: u64 = 0x8000_0005;
    /// SNP page state change.
    pub const PSC: u64 = 0x8000_0010;
    /// SNP guest request.
    pub const GUEST_REQUEST: u64 = 0x8000_0011;
    /// SNP extended guest request.
    pub const EXT_GUEST_REQUEST: u64 = 0x8000_0012;
    /// SNP AP creation.
    pub const AP_CREATION: u64 = 0x8000_0013;
    /// Hypervisor feature support.
    pub const HV_FEATURES: u64 = 0x8000_FFFD;
    /// Termination request.
    pub const TERMINATE: u64 = 0x8000_FFFE;
    /// Unsupported event (hypervisor-set).
    pub const UNSUPPORTED: u64 = 0x8000_FFFF;
}

/// IOIO exit information bits (SW_EXITINFO1 of the IOIO NAE; APM vol. 2
/// §15.10.2; Linux `IOIO_*` in `arch/x86/coco/sev/`).
pub mod ioio {
    /// Bit 0: 1 = IN, 0 = OUT.
    pub const TYPE_IN: u64 = 1 << 0;
    /// Bit 2: string instruction.
    pub const STR: u64 = 1 << 2;
    /// Bit 3: REP prefix.
    pub const REP: u64 = 1 << 3;
    /// Bit 4: 8-bit operand.
    pub const DATA_8: u64 = 1 << 4;
    /// Bit 5: 16-bit operand.
    pub const DATA_16: u64 = 1 << 5;
    /// Bit 6: 32-bit operand.
    pub const DATA_32: u64 = 1 << 6;
    /// Bit 7: 16-bit address size.
    pub const ADDR_16: u64 = 1 << 7;
    /// Bit 8: 32-bit address size.
    pub const ADDR_32: u64 = 1 << 8;
    /// Bit 9: 64-bit address size.
    pub const ADDR_64: u64 = 1 << 9;
    /// Bits `[12:10]`: effective segment (string instructions only).
    pub const SEG_SHIFT: u32 = 10;
    /// Bits `[31:16]`: port.
    pub const PORT_SHIFT: u32 = 16;
}

/// Operand size of a port access.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IoSize {
    /// `in al`/`out al`.
    Byte,
    /// `in ax`/`out ax`.
    Word,
    /// `in eax`/`out eax`.
    Dword,
}

impl IoSize {
    /// The IOIO size bit.
    pub const fn bit(self) -> u64 {
        match self {
            IoSize::Byte => ioio::DATA_8,
            IoSize::Word => ioio::DATA_16,
            IoSize::Dword => ioio::DATA_32,
        }
    }

    /// Mask of the significant value bits.
    pub const fn mask(self) -> u32 {
        match self {
            IoSize::Byte => 0xFF,
            IoSize::Word => 0xFFFF,
            IoSize::Dword => 0xFFFF_FFFF,
        }
    }
}

/// SW_EXITINFO1 for a non-string, non-REP IN or OUT from 64-bit code (the
/// form Linux `vc_ioio_exitinfo` produces for `in`/`out` in long mode).
pub const fn ioio_exit_info(port: u16, size: IoSize, is_in: bool) -> u64 {
    let dir = if is_in { ioio::TYPE_IN } else { 0 };
    ((port as u64) << ioio::PORT_SHIFT) | ioio::ADDR_64 | size.bit() | dir
}

/// SW_EXITINFO1 for the MSR NAE: 0 = RDMSR, 1 = WRMSR.
pub mod msr_access {
    /// RDMSR.
    pub const READ: u64 = 0;
    /// WRMSR.
    pub const WRITE: u64 = 1;
}

/// Return status in SW_EXITINFO1\[31:0\] (Linux `GHCB_HV_RESP_*`).
pub mod status {
    /// Success.
    pub const OK: u32 = 0;
    /// Inject the exception described in SW_EXITINFO2.
    pub const ISSUE_EXCEPTION: u32 = 1;
    /// Malformed input; SW_EXITINFO2 holds a `GHCB_ERR_*` code.
    pub const MALFORMED_INPUT: u32 = 2;
}

/// Event-injection fields of SW_EXITINFO2 when status is 1 (APM vol. 2
/// §15.20 "Event Injection": EVENTINJ format).
pub mod event {
    /// `[7:0]` vector.
    pub const VECTOR_MASK: u64 = 0xFF;
    /// `[10:8]` type.
    pub const TYPE_MASK: u64 = 7 << 8;
    /// Type 3: exception.
    pub const TYPE_EXCEPTION: u64 = 3 << 8;
    /// Bit 11: error code valid.
    pub const ERROR_VALID: u64 = 1 << 11;
    /// Bit 31: valid.
    pub const VALID: u64 = 1 << 31;
    /// #UD.
    pub const UD: u8 = 6;
    /// #GP.
    pub const GP: u8 = 13;
}

/// `GHCB_ERR_*` codes in SW_EXITINFO2 when status is 2 (Linux `sev-common.h`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HvError {
    /// 1: GHCB not registered.
    NotRegistered,
    /// 2: invalid `ghcb_usage`.
    InvalidUsage,
    /// 3: invalid scratch area.
    InvalidScratchArea,
    /// 4: a required input's valid bit was clear.
    MissingInput,
    /// 5: invalid input.
    InvalidInput,
    /// 6: invalid event.
    InvalidEvent,
    /// Any other value.
    Other(u64),
}

impl HvError {
    /// Decodes a `GHCB_ERR_*` value.
    pub const fn from_raw(raw: u64) -> Self {
        match raw {
            1 => HvError::NotRegistered,
            2 => HvError::InvalidUsage,
            3 => HvError::InvalidScratchArea,
            4 => HvError::MissingInput,
            5 => HvError::InvalidInput,
            6 => HvError::InvalidEvent,
            other => HvError::Other(other),
        }
    }
}

/// Why a GHCB call failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GhcbError {
    /// The GHCB GPA given to [`Ghcb::new`] is not page aligned.
    NotPageAligned(u64),
    /// A field the call needs came back without its valid bit.
    MissingValidBit(Field),
    /// Status 1 with a well-formed #GP or #UD (Linux accepts only these two).
    Exception {
        /// Vector (6 or 13).
        vector: u8,
        /// Error code, if the event carries one.
        error_code: Option<u32>,
    },
    /// Status 1 with SW_EXITINFO2 that is not a valid #GP/#UD exception.
    BadException(u64),
    /// Status 2: the hypervisor found the input malformed.
    Hv(HvError),
    /// Any other status value.
    BadStatus(u32),
    /// A data length outside what the call supports.
    BadLength(usize),
}

/// Decodes SW_EXITINFO2 of a status-1 reply (Linux `verify_exception_info`).
pub const fn decode_exception(info2: u64) -> GhcbError {
    let vector = (info2 & event::VECTOR_MASK) as u8;
    if info2 & event::VALID != 0
        && info2 & event::TYPE_MASK == event::TYPE_EXCEPTION
        && (vector == event::GP || vector == event::UD)
    {
        let error_code = if info2 & event::ERROR_VALID != 0 {
            Some((info2 >> 32) as u32)
        } else {
            None
        };
        GhcbError::Exception { vector, error_code }
    } else {
        GhcbError::BadException(info2)
    }
}

/// The shared GHCB page, seen only through copies.
///
/// # Implementation contract
///
/// The kernel implements this over the GHCB page with volatile accesses (no
/// `&`/`&mut` into shared memory, house style §4). Offsets passed in are
/// always inside the page: `read_u64`/`write_u64` take 8-aligned offsets below
/// 4096, `read_bytes`/`write_bytes` take ranges inside the page (the protocol
/// layer only uses them inside the shared buffer).
pub trait GhcbMem {
    /// Reads the quadword at `offset`.
    fn read_u64(&self, offset: usize) -> u64;
    /// Writes the quadword at `offset`.
    fn write_u64(&mut self, offset: usize, value: u64);
    /// Copies `out.len()` bytes starting at `offset` into `out`.
    fn read_bytes(&self, offset: usize, out: &mut [u8]);
    /// Copies `data` into the page starting at `offset`.
    fn write_bytes(&mut self, offset: usize, data: &[u8]);
    /// Zeroes the whole page.
    fn clear(&mut self);
}

/// The VMGEXIT instruction.
///
/// # Implementation contract
///
/// The kernel's implementation writes the GHCB's GPA to MSR 0xC001_0130, issues
/// a full fence (all writes to the page visible), executes VMGEXIT
/// (`rep vmmcall`), and fences again before returning, so that no read of the
/// page is reordered before the exit. `exit_code` is the SW_EXITCODE the
/// protocol layer wrote (from private memory, not read back from the page):
/// implementations may count exits by [`ExitKind`], never act on it. The
/// test's fake implements the NAE semantics by editing the page.
pub trait Hypervisor {
    /// Exits to the hypervisor with the GHCB as prepared for `exit_code`.
    fn vmgexit(&mut self, exit_code: u64);
}

/// What a VMGEXIT was for, as counted on `/metrics`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ExitKind {
    /// A GHCB MSR-protocol exchange (no GHCB page: SEV info, features,
    /// early PSC, registration, CPUID in 32-bit boot, termination).
    MsrProtocol,
    /// IOIO NAE (port I/O).
    Io,
    /// MSR NAE.
    Msr,
    /// CPUID NAE.
    Cpuid,
    /// Page State Change NAE.
    Psc,
    /// SNP (extended) guest request NAE.
    GuestRequest,
    /// RDTSC / RDTSCP NAE (an intercepted RDTSC(P) in the #VC handler).
    Rdtsc,
    /// Anything else (MMIO, HV features, AP jump table, ...).
    Other,
}

impl ExitKind {
    /// Every kind, in [`ExitKind::index`] order.
    pub const ALL: [ExitKind; 8] = [
        ExitKind::MsrProtocol,
        ExitKind::Io,
        ExitKind::Msr,
        ExitKind::Cpuid,
        ExitKind::Psc,
        ExitKind::GuestRequest,
        ExitKind::Rdtsc,
        ExitKind::Other,
    ];

    /// The kind of a GHCB NAE exit with SW_EXITCODE `exit_code`.
    pub const fn of(exit_code: u64) -> Self {
        match exit_code {
            exit_code::IOIO => ExitKind::Io,
            exit_code::MSR => ExitKind::Msr,
            exit_code::CPUID => ExitKind::Cpuid,
            exit_code::PSC => ExitKind::Psc,
            exit_code::GUEST_REQUEST | exit_code::EXT_GUEST_REQUEST => ExitKind::GuestRequest,
            exit_code::RDTSC | exit_code::RDTSCP => ExitKind::Rdtsc,
            _ => ExitKind::Other,
        }
    }

    /// Position in [`ExitKind::ALL`] and [`ExitCounters`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The label value on `/metrics` (`kind="..."`).
    pub const fn name(self) -> &'static str {
        match self {
            ExitKind::MsrProtocol => "msr_protocol",
            ExitKind::Io => "io",
            ExitKind::Msr => "msr",
            ExitKind::Cpuid => "cpuid",
            ExitKind::Psc => "psc",
            ExitKind::GuestRequest => "guest_request",
            ExitKind::Rdtsc => "rdtsc",
            ExitKind::Other => "other",
        }
    }
}

/// VMGEXITs by [`ExitKind`]: relaxed atomics, one set per stage (boot and
/// kernel each have a static one in their VMGEXIT implementation).
#[derive(Debug)]
pub struct ExitCounters([AtomicU64; ExitKind::ALL.len()]);

impl Default for ExitCounters {
    fn default() -> Self {
        Self::new()
    }
}

impl ExitCounters {
    /// All zero.
    pub const fn new() -> Self {
        ExitCounters([const { AtomicU64::new(0) }; ExitKind::ALL.len()])
    }

    /// Counts one exit of `kind`.
    #[inline]
    pub fn count(&self, kind: ExitKind) {
        self.0[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Exits of `kind` so far.
    pub fn get(&self, kind: ExitKind) -> u64 {
        self.0[kind.index()].load(Ordering::Relaxed)
    }

    /// All exits so far.
    pub fn total(&self) -> u64 {
        ExitKind::ALL.iter().map(|&k| self.get(k)).sum()
    }
}

/// Inputs of one NAE call.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Call {
    pub exit_code: u64,
    pub info1: u64,
    pub info2: u64,
    pub rax: Option<u64>,
    pub rbx: Option<u64>,
    pub rcx: Option<u64>,
    pub rdx: Option<u64>,
    pub xcr0: Option<u64>,
    pub scratch: Option<u64>,
}

/// The valid bitmap as read once after a successful exit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reply {
    valid: [u64; 2],
}

impl Reply {
    fn is_valid(&self, f: Field) -> bool {
        let bit = f.valid_bit();
        self.valid[bit / 64] & (1 << (bit % 64)) != 0
    }
}

/// Result of an SNP guest request (SW_EXITINFO2 = VMM error << 32 | firmware
/// error; Linux `SNP_GUEST_VMM_ERR`, reference §4 NAE table).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GuestRequestStatus {
    /// Hypervisor error: 0 none, 1 invalid length (certificate buffer), 2 busy.
    pub vmm_error: u32,
    /// SNP firmware error (SNP FW ABI 56860 status codes).
    pub fw_error: u32,
}

impl GuestRequestStatus {
    /// VMM error 1: invalid certificate-buffer length (extended request).
    pub const VMM_ERR_INVALID_LEN: u32 = 1;
    /// VMM error 2: busy, resend the *same* message.
    pub const VMM_ERR_BUSY: u32 = 2;

    /// Splits SW_EXITINFO2.
    pub const fn from_info2(info2: u64) -> Self {
        GuestRequestStatus {
            vmm_error: (info2 >> 32) as u32,
            fw_error: info2 as u32,
        }
    }

    /// Both errors zero.
    pub const fn is_ok(&self) -> bool {
        self.vmm_error == 0 && self.fw_error == 0
    }

    /// Busy: resend the identical message (never re-encrypt with a new seqno).
    pub const fn is_busy(&self) -> bool {
        self.vmm_error == Self::VMM_ERR_BUSY
    }
}

/// The GHCB protocol over a page `M` and a VMGEXIT `H`.
pub struct Ghcb<M, H> {
    mem: M,
    hv: H,
    gpa: u64,
}

impl<M, H> core::fmt::Debug for Ghcb<M, H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ghcb").field("gpa", &self.gpa).finish()
    }
}

impl<M: GhcbMem, H: Hypervisor> Ghcb<M, H> {
    /// Wraps the page whose guest-physical address is `gpa` (4 KiB aligned; the
    /// page must be shared and registered with MSR request 0x012 first).
    pub fn new(mem: M, hv: H, gpa: u64) -> Result<Self, GhcbError> {
        if !gpa.is_multiple_of(GHCB_SIZE as u64) {
            return Err(GhcbError::NotPageAligned(gpa));
        }
        Ok(Ghcb { mem, hv, gpa })
    }

    /// The GHCB's GPA.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    /// GPA of the shared buffer (what goes into SW_SCRATCH).
    pub fn shared_buffer_gpa(&self) -> u64 {
        self.gpa + offset::SHARED_BUFFER as u64
    }

    /// Gives the page and the VMGEXIT back.
    pub fn into_parts(self) -> (M, H) {
        (self.mem, self.hv)
    }

    /// Writes the call's fields, the valid bitmap and the version quadword,
    /// exits, then reads the valid bitmap once and checks the status.
    pub(crate) fn issue(&mut self, call: &Call) -> Result<Reply, GhcbError> {
        let mut valid = [0u64; 2];
        let mem = &mut self.mem;
        let mut put = |f: Field, v: u64| {
            mem.write_u64(f.offset(), v);
            let bit = f.valid_bit();
            valid[bit / 64] |= 1 << (bit % 64);
        };
        put(Field::SwExitCode, call.exit_code);
        put(Field::SwExitInfo1, call.info1);
        put(Field::SwExitInfo2, call.info2);
        let optional = [
            (Field::Rax, call.rax),
            (Field::Rbx, call.rbx),
            (Field::Rcx, call.rcx),
            (Field::Rdx, call.rdx),
            (Field::Xcr0, call.xcr0),
            (Field::SwScratch, call.scratch),
        ];
        for (f, v) in optional {
            if let Some(v) = v {
                put(f, v);
            }
        }
        self.mem.write_u64(offset::VALID_BITMAP, valid[0]);
        self.mem.write_u64(offset::VALID_BITMAP + 8, valid[1]);
        self.mem.write_u64(
            VERSION_QWORD,
            (u64::from(PROTOCOL_VERSION) << 16) | (u64::from(GHCB_DEFAULT_USAGE) << 32),
        );

        self.hv.vmgexit(call.exit_code);

        let reply = Reply {
            valid: [
                self.mem.read_u64(offset::VALID_BITMAP),
                self.mem.read_u64(offset::VALID_BITMAP + 8),
            ],
        };
        let info1 = self.take(&reply, Field::SwExitInfo1)?;
        match info1 as u32 {
            status::OK => Ok(reply),
            status::ISSUE_EXCEPTION => {
                Err(decode_exception(self.take(&reply, Field::SwExitInfo2)?))
            }
            status::MALFORMED_INPUT => Err(GhcbError::Hv(HvError::from_raw(
                self.take(&reply, Field::SwExitInfo2)?,
            ))),
            other => Err(GhcbError::BadStatus(other)),
        }
    }

    /// Reads `f` once, after checking its valid bit in `reply`.
    pub(crate) fn take(&self, reply: &Reply, f: Field) -> Result<u64, GhcbError> {
        if !reply.is_valid(f) {
            return Err(GhcbError::MissingValidBit(f));
        }
        Ok(self.mem.read_u64(f.offset()))
    }

    pub(crate) fn mem_mut(&mut self) -> &mut M {
        &mut self.mem
    }

    pub(crate) fn mem(&self) -> &M {
        &self.mem
    }

    /// `in` from `port`: the value, masked to `size`.
    pub fn io_in(&mut self, port: u16, size: IoSize) -> Result<u32, GhcbError> {
        self.mem.clear();
        let reply = self.issue(&Call {
            exit_code: exit_code::IOIO,
            info1: ioio_exit_info(port, size, true),
            ..Call::default()
        })?;
        let rax = self.take(&reply, Field::Rax)?;
        Ok(rax as u32 & size.mask())
    }

    /// `out` of `value` (masked to `size`) to `port`.
    pub fn io_out(&mut self, port: u16, size: IoSize, value: u32) -> Result<(), GhcbError> {
        self.mem.clear();
        self.issue(&Call {
            exit_code: exit_code::IOIO,
            info1: ioio_exit_info(port, size, false),
            rax: Some(u64::from(value & size.mask())),
            ..Call::default()
        })?;
        Ok(())
    }

    /// RDMSR through the hypervisor (RAX and RDX must both come back valid).
    pub fn msr_read(&mut self, msr: u32) -> Result<u64, GhcbError> {
        self.mem.clear();
        let reply = self.issue(&Call {
            exit_code: exit_code::MSR,
            info1: msr_access::READ,
            rcx: Some(u64::from(msr)),
            ..Call::default()
        })?;
        let lo = self.take(&reply, Field::Rax)? & 0xFFFF_FFFF;
        let hi = self.take(&reply, Field::Rdx)? & 0xFFFF_FFFF;
        Ok((hi << 32) | lo)
    }

    /// WRMSR through the hypervisor.
    pub fn msr_write(&mut self, msr: u32, value: u64) -> Result<(), GhcbError> {
        self.mem.clear();
        self.issue(&Call {
            exit_code: exit_code::MSR,
            info1: msr_access::WRITE,
            rcx: Some(u64::from(msr)),
            rax: Some(value & 0xFFFF_FFFF),
            rdx: Some(value >> 32),
            ..Call::default()
        })?;
        Ok(())
    }

    /// CPUID through the hypervisor: **untrusted** values. Under SNP the kernel
    /// uses the CPUID page ([`super::cpuid`]); this exists for the few dynamic
    /// fields Linux also takes from the hypervisor (APIC IDs). XCR0 is passed
    /// for leaf 0xD, as KVM requires (`sev_es_validate_vmgexit`).
    pub fn cpuid(&mut self, leaf: u32, subleaf: u32, xcr0: u64) -> Result<[u32; 4], GhcbError> {
        self.mem.clear();
        let reply = self.issue(&Call {
            exit_code: exit_code::CPUID,
            rax: Some(u64::from(leaf)),
            rcx: Some(u64::from(subleaf)),
            xcr0: if leaf == 0xD { Some(xcr0) } else { None },
            ..Call::default()
        })?;
        Ok([
            self.take(&reply, Field::Rax)? as u32,
            self.take(&reply, Field::Rbx)? as u32,
            self.take(&reply, Field::Rcx)? as u32,
            self.take(&reply, Field::Rdx)? as u32,
        ])
    }

    /// MMIO read of `out.len()` bytes (1..=[`SHARED_BUFFER_LEN`]) at `gpa`; the
    /// data comes back in the shared buffer (SW_SCRATCH = its GPA).
    pub fn mmio_read(&mut self, gpa: u64, out: &mut [u8]) -> Result<(), GhcbError> {
        if out.is_empty() || out.len() > SHARED_BUFFER_LEN {
            return Err(GhcbError::BadLength(out.len()));
        }
        self.mem.clear();
        self.issue(&Call {
            exit_code: exit_code::MMIO_READ,
            info1: gpa,
            info2: out.len() as u64,
            scratch: Some(self.shared_buffer_gpa()),
            ..Call::default()
        })?;
        self.mem.read_bytes(offset::SHARED_BUFFER, out);
        Ok(())
    }

    /// MMIO write of `data` (1..=[`SHARED_BUFFER_LEN`] bytes) to `gpa`, passed
    /// in the shared buffer.
    pub fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), GhcbError> {
        if data.is_empty() || data.len() > SHARED_BUFFER_LEN {
            return Err(GhcbError::BadLength(data.len()));
        }
        self.mem.clear();
        self.mem.write_bytes(offset::SHARED_BUFFER, data);
        self.issue(&Call {
            exit_code: exit_code::MMIO_WRITE,
            info1: gpa,
            info2: data.len() as u64,
            scratch: Some(self.shared_buffer_gpa()),
            ..Call::default()
        })?;
        Ok(())
    }

    /// SNP guest request: `req_gpa`/`resp_gpa` are the shared request and
    /// response pages. Returns the (VMM error, firmware error) split of
    /// SW_EXITINFO2; the caller decides (busy → resend the same message; any
    /// other error → the VMPCK is burnt, see [`super::guest_msg`]).
    pub fn guest_request(
        &mut self,
        req_gpa: u64,
        resp_gpa: u64,
    ) -> Result<GuestRequestStatus, GhcbError> {
        self.mem.clear();
        let reply = self.issue(&Call {
            exit_code: exit_code::GUEST_REQUEST,
            info1: req_gpa,
            info2: resp_gpa,
            ..Call::default()
        })?;
        Ok(GuestRequestStatus::from_info2(
            self.take(&reply, Field::SwExitInfo2)?,
        ))
    }

    /// Hypervisor feature support NAE: the bitmap in SW_EXITINFO2.
    pub fn hv_features(&mut self) -> Result<HvFeatures, GhcbError> {
        self.mem.clear();
        let reply = self.issue(&Call {
            exit_code: exit_code::HV_FEATURES,
            ..Call::default()
        })?;
        Ok(HvFeatures(self.take(&reply, Field::SwExitInfo2)?))
    }

    /// RDTSC through the hypervisor (NAE 0x6E, no inputs; the #VC handler's
    /// answer to an intercepted RDTSC): EDX:EAX as returned, each register
    /// masked to 32 bits as the instruction leaves them (GHCB spec §4.1 NAE
    /// table; Linux `vc_handle_rdtsc`, which requires RAX and RDX valid).
    /// Untrusted: the hypervisor chooses the value either way.
    pub fn rdtsc(&mut self) -> Result<u64, GhcbError> {
        self.mem.clear();
        let reply = self.issue(&Call {
            exit_code: exit_code::RDTSC,
            ..Call::default()
        })?;
        let lo = self.take(&reply, Field::Rax)? & 0xFFFF_FFFF;
        let hi = self.take(&reply, Field::Rdx)? & 0xFFFF_FFFF;
        Ok((hi << 32) | lo)
    }

    /// RDTSCP through the hypervisor (NAE 0x87): the TSC (EDX:EAX) and
    /// TSC_AUX (ECX), which must all come back valid.
    pub fn rdtscp(&mut self) -> Result<(u64, u32), GhcbError> {
        self.mem.clear();
        let reply = self.issue(&Call {
            exit_code: exit_code::RDTSCP,
            ..Call::default()
        })?;
        let lo = self.take(&reply, Field::Rax)? & 0xFFFF_FFFF;
        let hi = self.take(&reply, Field::Rdx)? & 0xFFFF_FFFF;
        let aux = self.take(&reply, Field::Rcx)? as u32;
        Ok(((hi << 32) | lo, aux))
    }
}

/// A fake page and a fake hypervisor implementing the NAE semantics, for tests
/// of this module and of [`super::psc`].
#[cfg(test)]
pub(crate) mod fake {
    use std::{cell::RefCell, collections::BTreeMap, rc::Rc};

    use super::*;

    /// The page, shared between [`FakeMem`] and [`FakeHv`].
    pub type Page = Rc<RefCell<[u8; GHCB_SIZE]>>;

    /// [`GhcbMem`] over a byte array, with bounds checks.
    #[derive(Debug)]
    pub struct FakeMem(pub Page);

    impl GhcbMem for FakeMem {
        fn read_u64(&self, off: usize) -> u64 {
            assert!(
                off.is_multiple_of(8) && off + 8 <= GHCB_SIZE,
                "bad offset {off:#x}"
            );
            u64::from_le_bytes(self.0.borrow()[off..off + 8].try_into().unwrap())
        }
        fn write_u64(&mut self, off: usize, v: u64) {
            assert!(
                off.is_multiple_of(8) && off + 8 <= GHCB_SIZE,
                "bad offset {off:#x}"
            );
            self.0.borrow_mut()[off..off + 8].copy_from_slice(&v.to_le_bytes());
        }
        fn read_bytes(&self, off: usize, out: &mut [u8]) {
            out.copy_from_slice(&self.0.borrow()[off..off + out.len()]);
        }
        fn write_bytes(&mut self, off: usize, data: &[u8]) {
            self.0.borrow_mut()[off..off + data.len()].copy_from_slice(data);
        }
        fn clear(&mut self) {
            self.0.borrow_mut().fill(0);
        }
    }

    /// How the fake hypervisor misbehaves.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Lie {
        /// Honest.
        None,
        /// Clear this field's valid bit after handling the event.
        DropValid(Field),
        /// Overwrite SW_EXITINFO1/2 (with valid bits) after handling.
        Status(u64, u64),
        /// Clear the whole valid bitmap after handling.
        ClearBitmap,
    }

    /// How the fake handles a PSC request. Like KVM, it sets `cur_page` of
    /// every entry it finishes to the entry's page count.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum PscMode {
        /// Process every entry.
        Complete,
        /// Process at most this many entries per exit.
        Partial(u16),
        /// Process at most this many 4 KiB pages per exit, stopping inside a
        /// 2 MiB entry with its `cur_page` advanced and `cur_entry` unchanged
        /// (the emulated platform's and KVM's partial progress).
        Pages(u16),
        /// Return without touching the buffer for this many exits, then
        /// process everything.
        Stall(usize),
        /// Return without touching the buffer, for ever.
        NoProgress,
        /// Process two entries, then on the next exit move `cur_entry` back.
        Backwards,
        /// Process 100 pages of the (2 MiB) first entry, then on the next exit
        /// move its `cur_page` back to 50.
        PageBackwards,
        /// Process one entry and change the GFN of the next one.
        RewriteGfn,
        /// Process one entry and change the operation of the one it finished.
        RewriteOp,
        /// Set `cur_page` of the current entry beyond its page count.
        CurPageTooBig,
        /// Say "done" (`cur_entry = end_entry + 1`) and change nothing.
        NoopDone,
        /// Report `cur_entry = end_entry + 2`.
        Overrun,
        /// Process one entry and shrink `end_entry`.
        ShrinkEnd,
        /// Process everything but set the header's reserved field.
        Reserved,
        /// Report an error in SW_EXITINFO2.
        Error(u64),
    }

    /// The fake hypervisor.
    #[derive(Debug)]
    pub struct FakeHv {
        pub page: Page,
        pub gpa: u64,
        pub lie: Lie,
        pub exits: usize,
        /// Value returned by IN.
        pub in_value: u64,
        /// Log of (port, size bits, value) OUTs.
        pub outs: Vec<(u16, u64, u64)>,
        /// Log of IN exit infos.
        pub ins: Vec<u64>,
        pub msrs: BTreeMap<u32, u64>,
        /// Byte-addressed MMIO space.
        pub mmio: BTreeMap<u64, u8>,
        pub psc_mode: PscMode,
        /// Every PSC entry processed, in order.
        pub psc_done: Vec<u64>,
        pub psc_exits: usize,
        pub guest_request_info2: u64,
        pub guest_requests: Vec<(u64, u64)>,
        pub features: u64,
        /// Last XCR0 seen with CPUID 0xD.
        pub cpuid_xcr0: Option<u64>,
        /// TSC returned by RDTSC/RDTSCP (the upper halves of RAX/RDX are
        /// filled with junk the guest must drop).
        pub tsc: u64,
        /// TSC_AUX returned by RDTSCP.
        pub tsc_aux: u32,
        /// SW_EXITCODE passed to every `vmgexit`.
        pub exit_codes: Vec<u64>,
    }

    /// A fresh page plus fake hypervisor and the [`Ghcb`] over them.
    pub fn ghcb() -> Ghcb<FakeMem, FakeHv> {
        ghcb_with(|_| {})
    }

    /// As [`ghcb`], with the hypervisor adjusted by `f`.
    pub fn ghcb_with(f: impl FnOnce(&mut FakeHv)) -> Ghcb<FakeMem, FakeHv> {
        let page: Page = Rc::new(RefCell::new([0xA5; GHCB_SIZE]));
        let gpa = 0x9_F000;
        let mut hv = FakeHv {
            page: page.clone(),
            gpa,
            lie: Lie::None,
            exits: 0,
            in_value: 0,
            outs: vec![],
            ins: vec![],
            msrs: BTreeMap::new(),
            mmio: BTreeMap::new(),
            psc_mode: PscMode::Complete,
            psc_done: vec![],
            psc_exits: 0,
            guest_request_info2: 0,
            guest_requests: vec![],
            features: 1,
            cpuid_xcr0: None,
            tsc: 0,
            tsc_aux: 0,
            exit_codes: vec![],
        };
        f(&mut hv);
        Ghcb::new(FakeMem(page), hv, gpa).unwrap()
    }

    /// The fake's CPUID answer: a pattern derived from the inputs.
    pub fn fake_cpuid(leaf: u32, sub: u32) -> [u32; 4] {
        [leaf ^ 0x1111, sub ^ 0x2222, leaf.wrapping_add(sub), 0x4444]
    }

    impl FakeHv {
        fn rd(&self, off: usize) -> u64 {
            u64::from_le_bytes(self.page.borrow()[off..off + 8].try_into().unwrap())
        }
        fn wr(&self, off: usize, v: u64) {
            self.page.borrow_mut()[off..off + 8].copy_from_slice(&v.to_le_bytes());
        }
        fn get(&self, valid: u128, f: Field) -> Option<u64> {
            (valid & (1 << f.valid_bit()) != 0).then(|| self.rd(f.offset()))
        }
        /// Sets a field and its valid bit (KVM `ghcb_set_*`).
        fn set(&self, f: Field, v: u64) {
            self.wr(f.offset(), v);
            let mut bm = self.bitmap();
            bm |= 1 << f.valid_bit();
            self.set_bitmap(bm);
        }
        fn bitmap(&self) -> u128 {
            u128::from(self.rd(offset::VALID_BITMAP))
                | (u128::from(self.rd(offset::VALID_BITMAP + 8)) << 64)
        }
        fn set_bitmap(&self, bm: u128) {
            self.wr(offset::VALID_BITMAP, bm as u64);
            self.wr(offset::VALID_BITMAP + 8, (bm >> 64) as u64);
        }
        fn malformed(&self, err: u64) {
            self.set(Field::SwExitInfo1, 2);
            self.set(Field::SwExitInfo2, err);
        }

        fn handle(&mut self) {
            // KVM: sync from the GHCB, clear the bitmap, validate, preset success.
            let valid = self.bitmap();
            self.set_bitmap(0);
            let version = self.rd(VERSION_QWORD);
            if (version >> 16) as u16 != 2 || (version >> 32) as u32 != 0 {
                return self.malformed(2);
            }
            let Some(code) = self.get(valid, Field::SwExitCode) else {
                return self.malformed(4);
            };
            let (Some(info1), Some(info2)) = (
                self.get(valid, Field::SwExitInfo1),
                self.get(valid, Field::SwExitInfo2),
            ) else {
                return self.malformed(4);
            };
            self.set(Field::SwExitInfo1, 0);
            self.set(Field::SwExitInfo2, 0);
            match code {
                exit_code::IOIO => {
                    assert_eq!(info1 & (ioio::STR | ioio::REP), 0);
                    let port = (info1 >> 16) as u16;
                    if info1 & ioio::TYPE_IN != 0 {
                        self.ins.push(info1);
                        self.set(Field::Rax, self.in_value);
                    } else {
                        let Some(rax) = self.get(valid, Field::Rax) else {
                            return self.malformed(4);
                        };
                        self.outs.push((port, info1 & 0x70, rax));
                    }
                }
                exit_code::MSR => {
                    let Some(rcx) = self.get(valid, Field::Rcx) else {
                        return self.malformed(4);
                    };
                    let msr = rcx as u32;
                    if info1 == msr_access::WRITE {
                        let (Some(a), Some(d)) =
                            (self.get(valid, Field::Rax), self.get(valid, Field::Rdx))
                        else {
                            return self.malformed(4);
                        };
                        self.msrs.insert(msr, (d << 32) | (a & 0xFFFF_FFFF));
                    } else if let Some(&v) = self.msrs.get(&msr) {
                        self.set(Field::Rax, v & 0xFFFF_FFFF);
                        self.set(Field::Rdx, v >> 32);
                    } else {
                        // Inject #GP(0).
                        self.set(Field::SwExitInfo1, 1);
                        self.set(
                            Field::SwExitInfo2,
                            event::VALID
                                | event::TYPE_EXCEPTION
                                | event::ERROR_VALID
                                | u64::from(event::GP),
                        );
                    }
                }
                exit_code::CPUID => {
                    let (Some(rax), Some(rcx)) =
                        (self.get(valid, Field::Rax), self.get(valid, Field::Rcx))
                    else {
                        return self.malformed(4);
                    };
                    if rax == 0xD {
                        let Some(x) = self.get(valid, Field::Xcr0) else {
                            return self.malformed(4);
                        };
                        self.cpuid_xcr0 = Some(x);
                    }
                    let r = fake_cpuid(rax as u32, rcx as u32);
                    self.set(Field::Rax, r[0].into());
                    self.set(Field::Rbx, r[1].into());
                    self.set(Field::Rcx, r[2].into());
                    self.set(Field::Rdx, r[3].into());
                }
                exit_code::MMIO_READ | exit_code::MMIO_WRITE => {
                    let Some(scratch) = self.get(valid, Field::SwScratch) else {
                        return self.malformed(4);
                    };
                    let base = self.gpa + offset::SHARED_BUFFER as u64;
                    if scratch != base || info2 as usize > SHARED_BUFFER_LEN {
                        return self.malformed(3);
                    }
                    for i in 0..info2 {
                        let at = offset::SHARED_BUFFER + i as usize;
                        if code == exit_code::MMIO_READ {
                            let b = *self.mmio.get(&(info1 + i)).unwrap_or(&0xFF);
                            self.page.borrow_mut()[at] = b;
                        } else {
                            let b = self.page.borrow()[at];
                            self.mmio.insert(info1 + i, b);
                        }
                    }
                }
                exit_code::PSC => {
                    let Some(scratch) = self.get(valid, Field::SwScratch) else {
                        return self.malformed(4);
                    };
                    if scratch != self.gpa + offset::SHARED_BUFFER as u64 {
                        return self.malformed(3);
                    }
                    self.psc();
                }
                exit_code::GUEST_REQUEST => {
                    self.guest_requests.push((info1, info2));
                    self.set(Field::SwExitInfo2, self.guest_request_info2);
                }
                exit_code::HV_FEATURES => self.set(Field::SwExitInfo2, self.features),
                exit_code::RDTSC | exit_code::RDTSCP => {
                    let junk = 0xDEAD_0000_0000_0000;
                    self.set(Field::Rax, junk | (self.tsc & 0xFFFF_FFFF));
                    self.set(Field::Rdx, junk | (self.tsc >> 32));
                    if code == exit_code::RDTSCP {
                        self.set(Field::Rcx, u64::from(self.tsc_aux));
                    }
                }
                _ => self.malformed(6),
            }
        }

        fn psc_entry_at(&self, i: u16) -> u64 {
            self.rd(offset::SHARED_BUFFER + 8 + 8 * usize::from(i))
        }

        fn set_psc_entry(&self, i: u16, v: u64) {
            self.wr(offset::SHARED_BUFFER + 8 + 8 * usize::from(i), v);
        }

        /// Processes up to `max_pages` 4 KiB pages from `cur` on, at most
        /// `max_entries` entries; records finished entries in `psc_done`.
        fn psc_process(&mut self, cur: &mut u16, end: u16, max_entries: u16, max_pages: u32) {
            let (mut entries, mut pages) = (0, 0);
            while *cur <= end && entries < max_entries && pages < max_pages {
                let e = self.psc_entry_at(*cur);
                let npages = if e & (1 << 56) != 0 { 512 } else { 1 };
                let mut page = (e & 0xFFF) as u32;
                while page < npages && pages < max_pages {
                    page += 1;
                    pages += 1;
                }
                self.set_psc_entry(*cur, (e & !0xFFF) | u64::from(page));
                if page < npages {
                    break;
                }
                self.psc_done.push(e & !0xFFF);
                *cur += 1;
                entries += 1;
            }
        }

        fn psc(&mut self) {
            self.psc_exits += 1;
            let hdr = self.rd(offset::SHARED_BUFFER);
            let (mut cur, mut end) = (hdr as u16, (hdr >> 16) as u16);
            let mut rsvd = (hdr >> 32) as u32;
            let first = self.psc_exits == 1;
            match self.psc_mode {
                PscMode::Complete => self.psc_process(&mut cur, end, u16::MAX, u32::MAX),
                PscMode::Partial(n) => self.psc_process(&mut cur, end, n, u32::MAX),
                PscMode::Pages(n) => self.psc_process(&mut cur, end, u16::MAX, n.into()),
                PscMode::Stall(n) => {
                    if self.psc_exits > n {
                        self.psc_process(&mut cur, end, u16::MAX, u32::MAX)
                    }
                }
                PscMode::NoProgress => {}
                PscMode::Backwards => {
                    if first {
                        self.psc_process(&mut cur, end, 2, u32::MAX);
                    } else {
                        cur -= 1;
                    }
                }
                PscMode::PageBackwards => {
                    if first {
                        self.psc_process(&mut cur, end, u16::MAX, 100);
                    } else {
                        let e = self.psc_entry_at(cur);
                        self.set_psc_entry(cur, (e & !0xFFF) | 50);
                    }
                }
                PscMode::RewriteGfn => {
                    self.psc_process(&mut cur, end, 1, u32::MAX);
                    let e = self.psc_entry_at(cur);
                    self.set_psc_entry(cur, e + (1 << 12));
                }
                PscMode::RewriteOp => {
                    self.psc_process(&mut cur, end, 1, u32::MAX);
                    let e = self.psc_entry_at(cur - 1);
                    self.set_psc_entry(cur - 1, e ^ (3 << 52));
                }
                PscMode::CurPageTooBig => {
                    let e = self.psc_entry_at(cur);
                    self.set_psc_entry(cur, (e & !0xFFF) | 513);
                }
                PscMode::NoopDone => cur = end + 1,
                PscMode::Overrun => cur = end + 2,
                PscMode::ShrinkEnd => {
                    self.psc_process(&mut cur, end, 1, u32::MAX);
                    end -= 1;
                }
                PscMode::Reserved => {
                    self.psc_process(&mut cur, end, u16::MAX, u32::MAX);
                    rsvd = 1;
                }
                PscMode::Error(e) => {
                    self.set(Field::SwExitInfo2, e);
                    return;
                }
            }
            let hdr = u64::from(cur) | (u64::from(end) << 16) | (u64::from(rsvd) << 32);
            self.wr(offset::SHARED_BUFFER, hdr);
        }
    }

    impl Hypervisor for FakeHv {
        fn vmgexit(&mut self, exit_code: u64) {
            self.exits += 1;
            self.exit_codes.push(exit_code);
            self.handle();
            match self.lie {
                Lie::None => {}
                Lie::DropValid(f) => {
                    let bm = self.bitmap() & !(1u128 << f.valid_bit());
                    self.set_bitmap(bm);
                }
                Lie::Status(i1, i2) => {
                    self.set(Field::SwExitInfo1, i1);
                    self.set(Field::SwExitInfo2, i2);
                }
                Lie::ClearBitmap => self.set_bitmap(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        fake::{Lie, fake_cpuid, ghcb, ghcb_with},
        *,
    };

    #[test]
    fn layout_offsets_and_valid_bits() {
        // GHCB spec Table 3 / reference §4.
        assert_eq!(offset::CPL, 0x0CB);
        assert_eq!(offset::XSS, 0x140);
        assert_eq!(offset::DR7, 0x160);
        assert_eq!(offset::X87_STATE_GPA, 0x400);
        let table = [
            (Field::Rax, 0x1F8, 63),
            (Field::Rcx, 0x308, 97),
            (Field::Rdx, 0x310, 98),
            (Field::Rbx, 0x318, 99),
            (Field::SwExitCode, 0x390, 114),
            (Field::SwExitInfo1, 0x398, 115),
            (Field::SwExitInfo2, 0x3A0, 116),
            (Field::SwScratch, 0x3A8, 117),
            (Field::Xcr0, 0x3E8, 125),
        ];
        assert_eq!(table.len(), Field::ALL.len());
        for (f, off, bit) in table {
            assert_eq!(f.offset(), off, "{f:?}");
            assert_eq!(f.valid_bit(), bit, "{f:?}");
            assert!(f.offset() < offset::VALID_BITMAP);
        }
        assert_eq!(offset::VALID_BITMAP, 0x3F0);
        assert_eq!(offset::VALID_BITMAP + VALID_BITMAP_LEN, 0x400);
        assert_eq!(offset::SHARED_BUFFER, 0x800);
        assert_eq!(SHARED_BUFFER_LEN, 2032);
        assert_eq!(offset::PROTOCOL_VERSION, 0xFFA);
        assert_eq!(offset::GHCB_USAGE, 0xFFC);
        assert_eq!(offset::GHCB_USAGE + 4, GHCB_SIZE);
        assert_eq!(VERSION_QWORD + 2, offset::PROTOCOL_VERSION);
        // 16-byte bitmap covers every quadword of the 0x400-byte save area.
        assert_eq!(VALID_BITMAP_LEN * 8 * 8, offset::X87_STATE_GPA);
    }

    #[test]
    fn exit_codes() {
        use exit_code::*;
        let t = [
            (READ_DR7, 0x27),
            (WRITE_DR7, 0x37),
            (RDTSC, 0x6E),
            (RDPMC, 0x6F),
            (CPUID, 0x72),
            (INVD, 0x76),
            (IOIO, 0x7B),
            (MSR, 0x7C),
            (VMMCALL, 0x81),
            (RDTSCP, 0x87),
            (WBINVD, 0x89),
            (MONITOR, 0x8A),
            (MWAIT, 0x8B),
            (NPF, 0x400),
            (MMIO_READ, 0x8000_0001),
            (MMIO_WRITE, 0x8000_0002),
            (NMI_COMPLETE, 0x8000_0003),
            (AP_HLT_LOOP, 0x8000_0004),
            (AP_JUMP_TABLE, 0x8000_0005),
            (PSC, 0x8000_0010),
            (GUEST_REQUEST, 0x8000_0011),
            (EXT_GUEST_REQUEST, 0x8000_0012),
            (AP_CREATION, 0x8000_0013),
            (HV_FEATURES, 0x8000_FFFD),
            (TERMINATE, 0x8000_FFFE),
            (UNSUPPORTED, 0x8000_FFFF),
        ];
        for (a, b) in t {
            assert_eq!(a, b);
        }
    }

    #[test]
    fn ioio_encoding() {
        // out %al, $0x3F8 from 64-bit code: port<<16 | A64 | SZ8.
        assert_eq!(ioio_exit_info(0x3F8, IoSize::Byte, false), 0x03F8_0210);
        // in %al from 0x3FD.
        assert_eq!(ioio_exit_info(0x3FD, IoSize::Byte, true), 0x03FD_0211);
        // in %ax / %eax from 0xC000.
        assert_eq!(ioio_exit_info(0xC000, IoSize::Word, true), 0xC000_0221);
        assert_eq!(ioio_exit_info(0xC000, IoSize::Dword, false), 0xC000_0240);
        assert_eq!(ioio::STR, 4);
        assert_eq!(ioio::REP, 8);
        assert_eq!(ioio::ADDR_16, 0x80);
        assert_eq!(ioio::ADDR_32, 0x100);
        assert_eq!(ioio::SEG_SHIFT, 10);
        assert_eq!(IoSize::Word.mask(), 0xFFFF);
    }

    #[test]
    fn status_decoding() {
        // #GP(0) with error code.
        let gp = event::VALID | event::TYPE_EXCEPTION | event::ERROR_VALID | 13;
        assert_eq!(
            decode_exception(gp | (0x10 << 32)),
            GhcbError::Exception {
                vector: 13,
                error_code: Some(0x10)
            }
        );
        let ud = event::VALID | event::TYPE_EXCEPTION | 6;
        assert_eq!(
            decode_exception(ud),
            GhcbError::Exception {
                vector: 6,
                error_code: None
            }
        );
        // Not valid, wrong type (NMI = 2), or a vector other than #GP/#UD.
        assert_eq!(
            decode_exception(gp & !event::VALID),
            GhcbError::BadException(gp & !event::VALID)
        );
        let nmi = event::VALID | (2 << 8) | 2;
        assert_eq!(decode_exception(nmi), GhcbError::BadException(nmi));
        let vc = event::VALID | event::TYPE_EXCEPTION | 29;
        assert_eq!(decode_exception(vc), GhcbError::BadException(vc));
        for (raw, e) in [
            (1, HvError::NotRegistered),
            (2, HvError::InvalidUsage),
            (3, HvError::InvalidScratchArea),
            (4, HvError::MissingInput),
            (5, HvError::InvalidInput),
            (6, HvError::InvalidEvent),
            (7, HvError::Other(7)),
        ] {
            assert_eq!(HvError::from_raw(raw), e);
        }
    }

    #[test]
    fn new_requires_alignment() {
        let g = ghcb();
        let (mem, hv) = g.into_parts();
        assert_eq!(
            Ghcb::new(mem, hv, 0x9_F800).unwrap_err(),
            GhcbError::NotPageAligned(0x9_F800)
        );
    }

    #[test]
    fn io_round_trips() {
        let mut g = ghcb_with(|hv| hv.in_value = 0xDEAD_BE60);
        assert_eq!(g.io_in(0x3FD, IoSize::Byte), Ok(0x60));
        assert_eq!(g.io_in(0x3FD, IoSize::Word), Ok(0xBE60));
        assert_eq!(g.io_in(0x3FD, IoSize::Dword), Ok(0xDEAD_BE60));
        g.io_out(0x3F8, IoSize::Byte, 0x1_41).unwrap();
        g.io_out(0xC010, IoSize::Dword, 0x1234_5678).unwrap();
        let (_, hv) = g.into_parts();
        assert_eq!(hv.ins[0], 0x03FD_0211);
        assert_eq!(hv.outs, [(0x3F8, 0x10, 0x41), (0xC010, 0x40, 0x1234_5678)]);
        assert_eq!(hv.exits, 5);
    }

    #[test]
    fn protocol_version_and_usage_are_written() {
        let mut g = ghcb();
        g.io_out(0x80, IoSize::Byte, 0).unwrap();
        let page = g.mem().0.borrow();
        assert_eq!(u16::from_le_bytes([page[0xFFA], page[0xFFB]]), 2);
        assert_eq!(&page[0xFFC..0x1000], &[0, 0, 0, 0]);
    }

    #[test]
    fn msr_round_trips() {
        let mut g = ghcb();
        g.msr_write(0xC000_0080, 0x1234_5678_9ABC_DEF0).unwrap();
        assert_eq!(g.msr_read(0xC000_0080), Ok(0x1234_5678_9ABC_DEF0));
        // Unknown MSR: the fake injects #GP(0).
        assert_eq!(
            g.msr_read(0x1234),
            Err(GhcbError::Exception {
                vector: 13,
                error_code: Some(0)
            })
        );
    }

    #[test]
    fn cpuid_round_trip_passes_xcr0_for_leaf_d() {
        let mut g = ghcb();
        assert_eq!(g.cpuid(0x8000_001F, 0, 7), Ok(fake_cpuid(0x8000_001F, 0)));
        assert_eq!(g.cpuid(0xD, 1, 7), Ok(fake_cpuid(0xD, 1)));
        let (_, hv) = g.into_parts();
        assert_eq!(hv.cpuid_xcr0, Some(7));
    }

    #[test]
    fn mmio_round_trips() {
        let mut g = ghcb();
        g.mmio_write(0xFEB0_0000, &[1, 2, 3, 4]).unwrap();
        let mut out = [0u8; 4];
        g.mmio_read(0xFEB0_0000, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3, 4]);
        let mut big = [0u8; SHARED_BUFFER_LEN];
        g.mmio_read(0xFEB0_0002, &mut big).unwrap();
        assert_eq!(&big[..3], &[3, 4, 0xFF]);
        assert_eq!(g.mmio_read(0, &mut []), Err(GhcbError::BadLength(0)));
        let mut too_big = [0u8; SHARED_BUFFER_LEN + 1];
        assert_eq!(
            g.mmio_read(0, &mut too_big),
            Err(GhcbError::BadLength(SHARED_BUFFER_LEN + 1))
        );
        assert_eq!(
            g.mmio_write(0, &too_big),
            Err(GhcbError::BadLength(SHARED_BUFFER_LEN + 1))
        );
        assert_eq!(g.mmio_write(0, &[]), Err(GhcbError::BadLength(0)));
    }

    #[test]
    fn guest_request_splits_info2() {
        let mut g = ghcb_with(|hv| hv.guest_request_info2 = (2 << 32) | 0x16);
        let st = g.guest_request(0x10_0000, 0x10_1000).unwrap();
        assert_eq!(
            st,
            GuestRequestStatus {
                vmm_error: 2,
                fw_error: 0x16
            }
        );
        assert!(st.is_busy());
        assert!(!st.is_ok());
        let (_, hv) = g.into_parts();
        assert_eq!(hv.guest_requests, [(0x10_0000, 0x10_1000)]);
        assert!(GuestRequestStatus::from_info2(0).is_ok());
        assert_eq!(GuestRequestStatus::from_info2(1 << 32).vmm_error, 1);
    }

    #[test]
    fn hv_features_nae() {
        let mut g = ghcb_with(|hv| hv.features = 0b1011);
        let f = g.hv_features().unwrap();
        assert!(f.has(HvFeatures::SNP));
        assert!(f.has(HvFeatures::SNP_RESTRICTED_INJECTION_TIMER));
        assert!(!f.has(HvFeatures::SNP_RESTRICTED_INJECTION));
    }

    #[test]
    fn rdtsc_and_rdtscp_round_trip() {
        let mut g = ghcb_with(|hv| {
            hv.tsc = 0x1234_5678_9ABC_DEF0;
            hv.tsc_aux = 7;
        });
        // The fake sets junk in the upper halves of RAX/RDX: dropped.
        assert_eq!(g.rdtsc(), Ok(0x1234_5678_9ABC_DEF0));
        assert_eq!(g.rdtscp(), Ok((0x1234_5678_9ABC_DEF0, 7)));
        let (_, hv) = g.into_parts();
        assert_eq!(hv.exit_codes, [exit_code::RDTSC, exit_code::RDTSCP]);
    }

    #[test]
    fn vmgexit_gets_the_exit_code_and_kinds_are_counted() {
        let mut g = ghcb();
        g.io_out(0x80, IoSize::Byte, 0).unwrap();
        g.hv_features().unwrap();
        let (_, hv) = g.into_parts();
        assert_eq!(hv.exit_codes, [exit_code::IOIO, exit_code::HV_FEATURES]);

        use exit_code::*;
        for (code, kind) in [
            (IOIO, ExitKind::Io),
            (MSR, ExitKind::Msr),
            (CPUID, ExitKind::Cpuid),
            (PSC, ExitKind::Psc),
            (GUEST_REQUEST, ExitKind::GuestRequest),
            (EXT_GUEST_REQUEST, ExitKind::GuestRequest),
            (RDTSC, ExitKind::Rdtsc),
            (RDTSCP, ExitKind::Rdtsc),
            (MMIO_READ, ExitKind::Other),
            (HV_FEATURES, ExitKind::Other),
            (0x1234, ExitKind::Other),
        ] {
            assert_eq!(ExitKind::of(code), kind, "{code:#x}");
        }
        for (i, k) in ExitKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
            assert!(
                k.name()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
        }
        let c = ExitCounters::new();
        c.count(ExitKind::Io);
        c.count(ExitKind::Io);
        c.count(ExitKind::MsrProtocol);
        assert_eq!(c.get(ExitKind::Io), 2);
        assert_eq!(c.get(ExitKind::MsrProtocol), 1);
        assert_eq!(c.get(ExitKind::Psc), 0);
        assert_eq!(c.total(), 3);
    }

    #[test]
    fn missing_valid_bits_are_refused() {
        type Call = fn(&mut Ghcb<fake::FakeMem, fake::FakeHv>) -> Result<(), GhcbError>;
        let cases: [(Field, Call); 10] = [
            (Field::SwExitInfo1, |g| g.io_out(0x80, IoSize::Byte, 0)),
            (Field::Rax, |g| g.io_in(0x80, IoSize::Byte).map(drop)),
            (Field::Rax, |g| g.msr_read(0xC000_0080).map(drop)),
            (Field::Rdx, |g| g.msr_read(0xC000_0080).map(drop)),
            (Field::Rbx, |g| g.cpuid(1, 0, 1).map(drop)),
            (Field::SwExitInfo2, |g| g.guest_request(0, 0x1000).map(drop)),
            (Field::SwExitInfo2, |g| g.hv_features().map(drop)),
            (Field::Rax, |g| g.rdtsc().map(drop)),
            (Field::Rdx, |g| g.rdtsc().map(drop)),
            (Field::Rcx, |g| g.rdtscp().map(drop)),
        ];
        for (field, call) in cases {
            let mut g = ghcb_with(|hv| {
                hv.lie = Lie::DropValid(field);
                hv.msrs.insert(0xC000_0080, 0x1000);
            });
            assert_eq!(
                call(&mut g),
                Err(GhcbError::MissingValidBit(field)),
                "{field:?}"
            );
        }
        // Hypervisor that never answers (bitmap cleared).
        let mut g = ghcb_with(|hv| hv.lie = Lie::ClearBitmap);
        assert_eq!(
            g.hv_features(),
            Err(GhcbError::MissingValidBit(Field::SwExitInfo1))
        );
    }

    #[test]
    fn error_statuses_are_refused() {
        let mut g = ghcb_with(|hv| hv.lie = Lie::Status(2, 4));
        assert_eq!(
            g.io_out(0x80, IoSize::Byte, 0),
            Err(GhcbError::Hv(HvError::MissingInput))
        );
        let mut g = ghcb_with(|hv| hv.lie = Lie::Status(3, 0));
        assert_eq!(g.io_in(0x80, IoSize::Byte), Err(GhcbError::BadStatus(3)));
        // Upper half of SW_EXITINFO1 is not part of the status (Linux masks [31:0]).
        let mut g = ghcb_with(|hv| hv.lie = Lie::Status(1 << 32, 0));
        assert_eq!(g.hv_features().map(|f| f.0), Ok(0));
        // Status 1 with a non-#GP/#UD event.
        let bad = event::VALID | event::TYPE_EXCEPTION | 14;
        let mut g = ghcb_with(|hv| hv.lie = Lie::Status(1, bad));
        assert_eq!(g.msr_write(0x10, 0), Err(GhcbError::BadException(bad)));
    }

    #[test]
    fn fake_refuses_missing_inputs() {
        // The fake follows KVM: no RCX for MSR -> status 2 / MISSING_INPUT.
        let mut g = ghcb();
        g.mem_mut().clear();
        let r = g.issue(&Call {
            exit_code: exit_code::MSR,
            ..Call::default()
        });
        assert_eq!(r.unwrap_err(), GhcbError::Hv(HvError::MissingInput));
        let r = g.issue(&Call {
            exit_code: 0x1234,
            ..Call::default()
        });
        assert_eq!(r.unwrap_err(), GhcbError::Hv(HvError::InvalidEvent));
    }
}

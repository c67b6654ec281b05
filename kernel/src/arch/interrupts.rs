//! GDT, TSS and IDT. Every exception handler runs on an IST stack, shared by
//! kind: #DF alone, NMI and #MC together, #VC alone (SEV-ES/SNP), everything
//! else on a fourth. No device interrupts are used: the data path polls.
//!
//! #VC has its own entry stub ([`vellum_vc_entry`], below): the CPUID it
//! emulates must write RAX..RDX of the interrupted code, which the
//! `x86-interrupt` ABI cannot do.

use crate::sev::vc::{self, VcFrame};
use core::{arch::global_asm, ptr::addr_of};
use spin::Once;
use x86_64::{
    VirtAddr,
    instructions::tables::load_tss,
    registers::segmentation::{CS, DS, ES, SS, Segment},
    structures::{
        gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector},
        idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode},
        tss::TaskStateSegment,
    },
};

/// IST slot for #DF.
pub const IST_DOUBLE_FAULT: u16 = 0;
/// IST slot for NMI and #MC.
pub const IST_NMI_MC: u16 = 1;
/// IST slot for #VC.
pub const IST_VC: u16 = 2;
/// IST slot for all other exceptions.
pub const IST_OTHER: u16 = 3;

const IST_STACK_SIZE: usize = 32 * 1024;

#[repr(C, align(16))]
struct Stack([u8; IST_STACK_SIZE]);

static mut IST_STACKS: [Stack; 4] = [const { Stack([0; IST_STACK_SIZE]) }; 4];

struct Tables {
    gdt: GlobalDescriptorTable,
    code: SegmentSelector,
    data: SegmentSelector,
    tss: SegmentSelector,
}

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<Tables> = Once::new();
static IDT: Once<InterruptDescriptorTable> = Once::new();

fn stack_top(i: usize) -> VirtAddr {
    // SAFETY: only the address of the static is taken (no reference is made);
    // the stacks are used by the CPU alone, through the TSS.
    let base = unsafe { addr_of!(IST_STACKS[i]) } as u64;
    VirtAddr::new(base + IST_STACK_SIZE as u64)
}

/// Loads the GDT, TSS and IDT. Call once, early, with interrupts disabled.
pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        for i in 0..4 {
            tss.interrupt_stack_table[i] = stack_top(i);
        }
        tss
    });
    let t = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss = gdt.append(Descriptor::tss_segment(tss));
        Tables {
            gdt,
            code,
            data,
            tss,
        }
    });
    t.gdt.load();
    // SAFETY: the selectors index the GDT just loaded, which is 'static; the
    // code segment is a 64-bit ring-0 segment, the data segment flat, and the
    // TSS descriptor points at a 'static TSS.
    unsafe {
        CS::set_reg(t.code);
        DS::set_reg(t.data);
        ES::set_reg(t.data);
        SS::set_reg(t.data);
        load_tss(t.tss);
    }
    let idt = IDT.call_once(build_idt);
    idt.load();
}

macro_rules! handler {
    ($name:ident, $what:literal) => {
        extern "x86-interrupt" fn $name(frame: InterruptStackFrame) {
            panic!(
                "exception: {} at {:#x}\n{:#?}",
                $what,
                frame.instruction_pointer.as_u64(),
                frame
            );
        }
    };
    ($name:ident, $what:literal, code) => {
        extern "x86-interrupt" fn $name(frame: InterruptStackFrame, code: u64) {
            panic!(
                "exception: {} (error code {:#x}) at {:#x}\n{:#?}",
                $what,
                code,
                frame.instruction_pointer.as_u64(),
                frame
            );
        }
    };
}

handler!(divide_error, "#DE divide error");
handler!(debug, "#DB debug");
handler!(nmi, "NMI");
handler!(overflow, "#OF overflow");
handler!(bound_range, "#BR bound range");
handler!(invalid_opcode, "#UD invalid opcode");
handler!(device_not_available, "#NM device not available");
handler!(x87_fp, "#MF x87 floating point");
handler!(simd_fp, "#XM SIMD floating point");
handler!(virtualization, "#VE virtualization");
handler!(hv_injection, "#HV hypervisor injection");
handler!(invalid_tss, "#TS invalid TSS", code);
handler!(segment_not_present, "#NP segment not present", code);
handler!(stack_segment, "#SS stack segment", code);
handler!(general_protection, "#GP general protection", code);
handler!(alignment_check, "#AC alignment check", code);
handler!(cp_protection, "#CP control protection", code);
handler!(security, "#SX security", code);

extern "x86-interrupt" fn breakpoint(frame: InterruptStackFrame) {
    log::debug!("breakpoint at {:#x}", frame.instruction_pointer.as_u64());
}

extern "x86-interrupt" fn double_fault(frame: InterruptStackFrame, code: u64) -> ! {
    panic!("exception: #DF double fault (error code {code:#x})\n{frame:#?}");
}

extern "x86-interrupt" fn machine_check(frame: InterruptStackFrame) -> ! {
    panic!("exception: #MC machine check\n{frame:#?}");
}

extern "x86-interrupt" fn page_fault(frame: InterruptStackFrame, code: PageFaultErrorCode) {
    let addr = x86_64::registers::control::Cr2::read_raw();
    panic!(
        "exception: #PF page fault at address {addr:#x} ({code:?}) from {:#x}\n{frame:#?}",
        frame.instruction_pointer.as_u64()
    );
}

fn build_idt() -> InterruptDescriptorTable {
    let mut idt = InterruptDescriptorTable::new();
    // SAFETY: every set_stack_index below names an IST slot that `init`
    // filled with a dedicated, 'static, 16-byte aligned stack; the one
    // set_handler_addr (#VC) is explained where it is called.
    unsafe {
        idt.divide_error
            .set_handler_fn(divide_error)
            .set_stack_index(IST_OTHER);
        idt.debug.set_handler_fn(debug).set_stack_index(IST_OTHER);
        idt.non_maskable_interrupt
            .set_handler_fn(nmi)
            .set_stack_index(IST_NMI_MC);
        idt.breakpoint
            .set_handler_fn(breakpoint)
            .set_stack_index(IST_OTHER);
        idt.overflow
            .set_handler_fn(overflow)
            .set_stack_index(IST_OTHER);
        idt.bound_range_exceeded
            .set_handler_fn(bound_range)
            .set_stack_index(IST_OTHER);
        idt.invalid_opcode
            .set_handler_fn(invalid_opcode)
            .set_stack_index(IST_OTHER);
        idt.device_not_available
            .set_handler_fn(device_not_available)
            .set_stack_index(IST_OTHER);
        idt.double_fault
            .set_handler_fn(double_fault)
            .set_stack_index(IST_DOUBLE_FAULT);
        idt.invalid_tss
            .set_handler_fn(invalid_tss)
            .set_stack_index(IST_OTHER);
        idt.segment_not_present
            .set_handler_fn(segment_not_present)
            .set_stack_index(IST_OTHER);
        idt.stack_segment_fault
            .set_handler_fn(stack_segment)
            .set_stack_index(IST_OTHER);
        idt.general_protection_fault
            .set_handler_fn(general_protection)
            .set_stack_index(IST_OTHER);
        idt.page_fault
            .set_handler_fn(page_fault)
            .set_stack_index(IST_OTHER);
        idt.x87_floating_point
            .set_handler_fn(x87_fp)
            .set_stack_index(IST_OTHER);
        idt.alignment_check
            .set_handler_fn(alignment_check)
            .set_stack_index(IST_OTHER);
        idt.machine_check
            .set_handler_fn(machine_check)
            .set_stack_index(IST_NMI_MC);
        idt.simd_floating_point
            .set_handler_fn(simd_fp)
            .set_stack_index(IST_OTHER);
        idt.virtualization
            .set_handler_fn(virtualization)
            .set_stack_index(IST_OTHER);
        idt.cp_protection_exception
            .set_handler_fn(cp_protection)
            .set_stack_index(IST_OTHER);
        idt.hv_injection_exception
            .set_handler_fn(hv_injection)
            .set_stack_index(IST_OTHER);
        // `set_handler_addr`: `vellum_vc_entry` is an interrupt entry
        // for a vector with an error code: it preserves every register and the
        // extended state, and returns with IRETQ after dropping the error code.
        idt.vmm_communication_exception
            .set_handler_addr(VirtAddr::new(vellum_vc_entry as *const () as u64))
            .set_stack_index(IST_VC);
        idt.security_exception
            .set_handler_fn(security)
            .set_stack_index(IST_OTHER);
    }
    idt
}

// The #VC entry, on the IST_VC stack. The CPU pushed SS, RSP, RFLAGS, CS, RIP
// and the error code (RSP 16-byte aligned, IST stacks are). The stub saves the
// 15 GPRs (so the frame is a `VcFrame`), clears DF, saves the extended state
// (x87/SSE/AVX: the Rust handler is compiled with AVX and would clobber the
// interrupted code's vector registers) with XSAVE64 into a 64-byte aligned
// 4 KiB area below (XCR0 = x87|SSE|AVX needs 832 bytes; AVX-512 would need
// 2696), calls `vc_entry_rust(&mut VcFrame)`, restores, drops the error code
// and returns with IRETQ. XSAVE does not write the header's reserved bytes,
// which XRSTOR checks, so the header is zeroed first.
global_asm!(
    ".global vellum_vc_entry",
    "vellum_vc_entry:",
    "push rax",
    "push rbx",
    "push rcx",
    "push rdx",
    "push rsi",
    "push rdi",
    "push rbp",
    "push r8",
    "push r9",
    "push r10",
    "push r11",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "cld",
    "mov rbx, rsp",
    "sub rsp, 4096",
    "and rsp, -64",
    "xor eax, eax",
    "mov [rsp + 512], rax",
    "mov [rsp + 520], rax",
    "mov [rsp + 528], rax",
    "mov [rsp + 536], rax",
    "mov [rsp + 544], rax",
    "mov [rsp + 552], rax",
    "mov [rsp + 560], rax",
    "mov [rsp + 568], rax",
    "mov eax, -1",
    "mov edx, -1",
    "xsave64 [rsp]",
    "mov rdi, rbx",
    "call {handler}",
    "mov eax, -1",
    "mov edx, -1",
    "xrstor64 [rsp]",
    "mov rsp, rbx",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop r11",
    "pop r10",
    "pop r9",
    "pop r8",
    "pop rbp",
    "pop rdi",
    "pop rsi",
    "pop rdx",
    "pop rcx",
    "pop rbx",
    "pop rax",
    "add rsp, 8",
    "iretq",
    handler = sym vc_entry_rust,
);

unsafe extern "C" {
    /// The #VC entry stub above (never called from Rust; its address goes into
    /// the IDT).
    fn vellum_vc_entry();
}

/// Called by the stub with a pointer to the saved frame.
extern "C" fn vc_entry_rust(frame: *mut VcFrame) {
    // SAFETY: the stub passes the address of the frame it just built on the
    // IST_VC stack (`VcFrame` layout, aligned, exclusively ours until we
    // return); no other reference to it exists.
    let frame = unsafe { &mut *frame };
    vc::handle(frame);
}

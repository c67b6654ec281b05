//! The VMSA (SEV-ES save area) QEMU 10 + KVM hand to the AMD-SP at
//! SNP_LAUNCH_FINISH, one page per vCPU.
//!
//! Layout: AMD APM Vol. 2 (24593), Appendix B, Table B-4 "VMSA Layout, State
//! Save Area for SEV-ES" (segment registers as in Table B-1's VMCB segment
//! format: selector, attrib, limit, base). The SNP firmware ABI (56860) §8.17
//! measures the page as PAGE_TYPE VMSA. Only the fields QEMU's x86 reset state
//! sets are non-zero (`docs/snp-reference.md` §1.5 "Initial vCPU state"):
//!
//! - segments: CS selector 0xF000, attrib 0x9B; ES/SS/DS/FS/GS attrib 0x93;
//!   LDTR 0x82; TR 0x8B; all limits 0xFFFF; GDTR/IDTR limit 0xFFFF;
//! - EFER 0x1000 (SVME, set by KVM), CR4 0x40 (MCE, set by KVM), CR0 0x10,
//!   DR7 0x400, DR6 0xFFFF0FF0, RFLAGS 0x2, G_PAT 0x0007040600070406,
//!   XCR0 0x1, MXCSR 0x1F80, x87 FCW 0x37F;
//! - RDX: the vCPU's CPUID(1).EAX signature; SEV_FEATURES: the guest features;
//! - BSP: CS base 0xFFFF0000 and RIP 0xFFF0 (executes at 0xFFFFFFF0);
//! - APs: CS base `reset_addr & 0xFFFF0000`, RIP `reset_addr & 0xFFFF` (the SEV
//!   info block's address; QEMU `sev_es_set_reset_vector`).
#![forbid(unsafe_code)]

use super::page_info::PAGE_LEN;

/// Size of a VMCB segment register (selector u16, attrib u16, limit u32, base u64).
pub const SEGMENT_LEN: usize = 16;

/// Field offsets inside a VMCB segment register.
pub mod seg {
    /// u16 selector.
    pub const SELECTOR: usize = 0x0;
    /// u16 attributes (packed descriptor bits 8..15 and 20..23).
    pub const ATTRIB: usize = 0x2;
    /// u32 limit.
    pub const LIMIT: usize = 0x4;
    /// u64 base.
    pub const BASE: usize = 0x8;
}

/// Byte offsets of the VMSA fields QEMU's reset state touches (APM Table B-4).
pub mod offset {
    /// ES segment.
    pub const ES: usize = 0x000;
    /// CS segment.
    pub const CS: usize = 0x010;
    /// SS segment.
    pub const SS: usize = 0x020;
    /// DS segment.
    pub const DS: usize = 0x030;
    /// FS segment.
    pub const FS: usize = 0x040;
    /// GS segment.
    pub const GS: usize = 0x050;
    /// GDTR (limit and base only).
    pub const GDTR: usize = 0x060;
    /// LDTR segment.
    pub const LDTR: usize = 0x070;
    /// IDTR (limit and base only).
    pub const IDTR: usize = 0x080;
    /// TR segment.
    pub const TR: usize = 0x090;
    /// u8 VMPL.
    pub const VMPL: usize = 0x0CA;
    /// u8 CPL.
    pub const CPL: usize = 0x0CB;
    /// u64 EFER.
    pub const EFER: usize = 0x0D0;
    /// u64 XSS.
    pub const XSS: usize = 0x140;
    /// u64 CR4.
    pub const CR4: usize = 0x148;
    /// u64 CR3.
    pub const CR3: usize = 0x150;
    /// u64 CR0.
    pub const CR0: usize = 0x158;
    /// u64 DR7.
    pub const DR7: usize = 0x160;
    /// u64 DR6.
    pub const DR6: usize = 0x168;
    /// u64 RFLAGS.
    pub const RFLAGS: usize = 0x170;
    /// u64 RIP.
    pub const RIP: usize = 0x178;
    /// u64 RSP.
    pub const RSP: usize = 0x1D8;
    /// u64 RAX.
    pub const RAX: usize = 0x1F8;
    /// u64 G_PAT (guest PAT MSR).
    pub const G_PAT: usize = 0x268;
    /// u64 RCX.
    pub const RCX: usize = 0x308;
    /// u64 RDX.
    pub const RDX: usize = 0x310;
    /// u64 RBX.
    pub const RBX: usize = 0x318;
    /// u64 SEV_FEATURES.
    pub const SEV_FEATURES: usize = 0x3B0;
    /// u64 XCR0.
    pub const XCR0: usize = 0x3E8;
    /// u32 MXCSR.
    pub const MXCSR: usize = 0x408;
    /// u16 x87 FTW.
    pub const X87_FTW: usize = 0x40C;
    /// u16 x87 FSW.
    pub const X87_FSW: usize = 0x40E;
    /// u16 x87 FCW.
    pub const X87_FCW: usize = 0x410;
    /// Start of the x87 register file (80 bytes), then XMM (256) and YMM (256).
    pub const FPREG_X87: usize = 0x420;
    /// End of the YMM save area; the rest of the page is reserved.
    pub const FPREG_YMM_END: usize = 0x420 + 80 + 256 + 256;
}

const _: () = {
    assert!(offset::TR + SEGMENT_LEN == 0xA0);
    assert!(offset::CS == offset::ES + SEGMENT_LEN);
    assert!(offset::CPL == offset::VMPL + 1);
    assert!(offset::RDX == offset::RCX + 8 && offset::RBX == offset::RDX + 8);
    assert!(offset::X87_FCW == offset::MXCSR + 8);
    assert!(offset::FPREG_YMM_END <= VMSA_LEN);
    assert!(VMSA_LEN == PAGE_LEN);
};

/// A VMSA occupies one page.
pub const VMSA_LEN: usize = 0x1000;

/// QEMU reset values (see the module documentation).
pub mod reset {
    /// CS selector after reset.
    pub const CS_SELECTOR: u16 = 0xF000;
    /// Code segment attributes: present, S, code, readable, accessed.
    pub const CS_ATTRIB: u16 = 0x9B;
    /// Data segment attributes: present, S, data, writable, accessed.
    pub const DATA_ATTRIB: u16 = 0x93;
    /// LDTR attributes: present, system type 2 (LDT).
    pub const LDTR_ATTRIB: u16 = 0x82;
    /// TR attributes: present, system type 0xB (busy 32-bit TSS).
    pub const TR_ATTRIB: u16 = 0x8B;
    /// Every segment limit and the descriptor-table limits.
    pub const LIMIT: u32 = 0xFFFF;
    /// EFER.SVME: KVM sets it in every SEV-ES VMSA.
    pub const EFER: u64 = 0x1000;
    /// CR0.ET.
    pub const CR0: u64 = 0x10;
    /// CR4.MCE: KVM sets it.
    pub const CR4: u64 = 0x40;
    /// DR7 architectural reset value.
    pub const DR7: u64 = 0x400;
    /// DR6 architectural reset value.
    pub const DR6: u64 = 0xFFFF_0FF0;
    /// RFLAGS bit 1 (always one).
    pub const RFLAGS: u64 = 0x2;
    /// PAT MSR reset value (APM Vol. 2 §A.3).
    pub const G_PAT: u64 = 0x0007_0406_0007_0406;
    /// XCR0: x87 only.
    pub const XCR0: u64 = 0x1;
    /// MXCSR reset value.
    pub const MXCSR: u32 = 0x1F80;
    /// x87 control word reset value.
    pub const X87_FCW: u16 = 0x37F;
    /// The BSP's first instruction: 0xFFFFFFF0.
    pub const BSP_RESET_ADDR: u32 = 0xFFFF_FFF0;
}

/// The inputs to one vCPU's VMSA.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct VcpuReset {
    /// Linear address of the first instruction; split into CS base and RIP.
    pub reset_addr: u32,
    /// CPUID(1).EAX, placed in RDX.
    pub signature: u32,
    /// SEV_FEATURES (bit 0 SNPActive).
    pub sev_features: u64,
}

fn put_u16(p: &mut [u8], at: usize, v: u16) {
    p[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(p: &mut [u8], at: usize, v: u32) {
    p[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(p: &mut [u8], at: usize, v: u64) {
    p[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_segment(p: &mut [u8], at: usize, selector: u16, attrib: u16, limit: u32, base: u64) {
    put_u16(p, at + seg::SELECTOR, selector);
    put_u16(p, at + seg::ATTRIB, attrib);
    put_u32(p, at + seg::LIMIT, limit);
    put_u64(p, at + seg::BASE, base);
}

/// Builds the VMSA page KVM measures for a vCPU with QEMU's reset state.
pub fn build_vmsa(v: &VcpuReset) -> [u8; VMSA_LEN] {
    use reset::*;
    let mut p = [0u8; VMSA_LEN];
    let cs_base = u64::from(v.reset_addr & 0xFFFF_0000);
    let rip = u64::from(v.reset_addr & 0xFFFF);
    put_segment(&mut p, offset::ES, 0, DATA_ATTRIB, LIMIT, 0);
    put_segment(&mut p, offset::CS, CS_SELECTOR, CS_ATTRIB, LIMIT, cs_base);
    put_segment(&mut p, offset::SS, 0, DATA_ATTRIB, LIMIT, 0);
    put_segment(&mut p, offset::DS, 0, DATA_ATTRIB, LIMIT, 0);
    put_segment(&mut p, offset::FS, 0, DATA_ATTRIB, LIMIT, 0);
    put_segment(&mut p, offset::GS, 0, DATA_ATTRIB, LIMIT, 0);
    put_segment(&mut p, offset::GDTR, 0, 0, LIMIT, 0);
    put_segment(&mut p, offset::LDTR, 0, LDTR_ATTRIB, LIMIT, 0);
    put_segment(&mut p, offset::IDTR, 0, 0, LIMIT, 0);
    put_segment(&mut p, offset::TR, 0, TR_ATTRIB, LIMIT, 0);
    put_u64(&mut p, offset::EFER, EFER);
    put_u64(&mut p, offset::CR4, CR4);
    put_u64(&mut p, offset::CR0, CR0);
    put_u64(&mut p, offset::DR7, DR7);
    put_u64(&mut p, offset::DR6, DR6);
    put_u64(&mut p, offset::RFLAGS, RFLAGS);
    put_u64(&mut p, offset::RIP, rip);
    put_u64(&mut p, offset::G_PAT, G_PAT);
    put_u64(&mut p, offset::RDX, u64::from(v.signature));
    put_u64(&mut p, offset::SEV_FEATURES, v.sev_features);
    put_u64(&mut p, offset::XCR0, XCR0);
    put_u32(&mut p, offset::MXCSR, MXCSR);
    put_u16(&mut p, offset::X87_FCW, X87_FCW);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u64_at(p: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(p[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn bsp_fields_from_the_reference() {
        let p = build_vmsa(&VcpuReset {
            reset_addr: reset::BSP_RESET_ADDR,
            signature: 0x800f12,
            sev_features: 1,
        });
        // CS: selector 0xF000, attrib 0x9B, limit 0xFFFF, base 0xFFFF0000.
        assert_eq!(
            &p[0x10..0x20],
            &[
                0x00, 0xf0, 0x9b, 0x00, 0xff, 0xff, 0, 0, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0
            ]
        );
        assert_eq!(u64_at(&p, 0xD0), 0x1000);
        assert_eq!(u64_at(&p, 0x178), 0xFFF0);
        assert_eq!(u64_at(&p, 0x310), 0x800f12);
        assert_eq!(u64_at(&p, 0x3B0), 1);
        assert_eq!(u64_at(&p, 0x158), 0x10);
        assert_eq!(u64_at(&p, 0x148), 0x40);
        assert_eq!(u64_at(&p, 0x268), 0x0007_0406_0007_0406);
        assert_eq!(&p[0x408..0x40C], &0x1F80u32.to_le_bytes());
        assert_eq!(&p[0x410..0x412], &0x37Fu16.to_le_bytes());
        assert!(p[offset::FPREG_X87..].iter().all(|&b| b == 0));
    }

    #[test]
    fn ap_splits_the_reset_address() {
        let p = build_vmsa(&VcpuReset {
            reset_addr: 0x0000_9abc,
            signature: 0xa00f11,
            sev_features: 0x21,
        });
        assert_eq!(u64_at(&p, offset::CS + seg::BASE), 0);
        assert_eq!(u64_at(&p, offset::RIP), 0x9abc);
        let p = build_vmsa(&VcpuReset {
            reset_addr: 0x1234_5678,
            signature: 0xa00f11,
            sev_features: 0x21,
        });
        assert_eq!(u64_at(&p, offset::CS + seg::BASE), 0x1234_0000);
        assert_eq!(u64_at(&p, offset::RIP), 0x5678);
        assert_eq!(u64_at(&p, offset::SEV_FEATURES), 0x21);
    }
}

//! The shared-page pool: one contiguous, page-aligned range of guest memory at
//! a fixed place in the layout (`vellum_boot::layout::POOL_BASE`), the only
//! memory the host may ever read or write.
//!
//! [`split`] cuts it once, at boot, into one typed part per owner, at the page
//! numbers `vellum_boot::layout::pool_pages` assigns:
//!
//! | pages | owner | part |
//! |---|---|---|
//! | 0 | the GHCB (boot registered it; `sev::ghcb` reaches it) | not handed out here |
//! | 1, 2 | SNP guest request and response (`attest`) | [`GuestMsgPages`] |
//! | 3 .. end | the virtio-net driver's rings and buffers | [`SharedRegion`] |
//!
//! No other code forms a pool address. Code outside this module cannot get a
//! reference into the pool: a [`SharedRegion`] implements
//! `vellum_net::shared::SharedMem`, which moves data only by copies made with
//! volatile accesses. Boot makes the range shared before the kernel runs:
//! under SEV-SNP it is never validated, is converted to shared with a
//! page-state change, and is mapped without the C-bit; without SEV nothing
//! needs doing.

use core::{
    intrinsics::volatile_copy_nonoverlapping_memory,
    ptr::{read_volatile, write_volatile},
    sync::atomic::{Ordering, fence},
};
use vellum_boot::{
    layout::{self, PAGE_SIZE, pool_pages},
    snp::guest_msg::MSG_PAGE_SIZE,
};
use vellum_kernel::memory::Range;
use vellum_net::shared::SharedMem;

/// The parts of the pool the kernel hands out (the GHCB page stays with
/// `sev`, which boot told where it is).
#[derive(Debug)]
pub struct PoolParts {
    /// The SNP guest-request and response pages.
    pub guest_msg: GuestMsgPages,
    /// The NIC's region: virtio rings and packet buffers.
    pub nic: SharedRegion,
}

/// Splits the pool into its owners' parts and zeroes them (not the GHCB page,
/// which boot registered and which every GHCB call rewrites anyway).
///
/// # Safety
/// `range` must be the pool `[POOL_BASE, POOL_END)`: identity-mapped RAM that
/// nothing else uses for the rest of the kernel's life (the memory plan
/// carves it out of the heap), already made shared by the platform; and this
/// must be called once.
pub unsafe fn split(range: Range) -> PoolParts {
    assert!(
        range.start == layout::POOL_BASE && range.end == layout::POOL_END,
        "the shared pool is {:#x}..{:#x}, not where the layout puts it",
        range.start,
        range.end
    );
    let page = |p: u64| layout::pool_page(p);
    // SAFETY: three disjoint page ranges (the layout's pool pages) inside
    // `range`, which the caller hands over whole; each is made once, here.
    let (request, response, nic) = unsafe {
        (
            SharedRegion::new(page(pool_pages::GUEST_REQUEST), PAGE_SIZE),
            SharedRegion::new(page(pool_pages::GUEST_RESPONSE), PAGE_SIZE),
            SharedRegion::new(
                page(pool_pages::NIC),
                layout::POOL_END - page(pool_pages::NIC),
            ),
        )
    };
    PoolParts {
        guest_msg: GuestMsgPages { request, response },
        nic,
    }
}

/// One owned, contiguous piece of the pool, seen only through copies.
/// Offsets are relative to the region's start.
#[derive(Debug)]
pub struct SharedRegion {
    base: *mut u8,
    size: usize,
}

impl SharedRegion {
    /// Takes `size` bytes at `gpa` and zeroes them.
    ///
    /// # Safety
    /// The range must be identity-mapped shared RAM inside the pool, owned by
    /// the caller for good and not overlapping any other region.
    unsafe fn new(gpa: u64, size: u64) -> SharedRegion {
        let r = SharedRegion {
            base: gpa as *mut u8,
            size: size as usize,
        };
        // SAFETY: the caller hands us the whole range; zeroing after the
        // conversion is required anyway (a page-state change destroys contents).
        unsafe { core::ptr::write_bytes(r.base, 0, r.size) };
        r
    }

    fn ptr(&self, offset: usize, len: usize) -> *mut u8 {
        assert!(
            offset <= self.size && len <= self.size - offset,
            "pool access {offset:#x}+{len:#x} out of range (driver bug)"
        );
        self.base.wrapping_add(offset)
    }

    fn aligned<T>(&self, offset: usize) -> *mut T {
        let p = self.ptr(offset, size_of::<T>());
        assert!(
            p.cast::<T>().is_aligned(),
            "unaligned pool access at {offset:#x}"
        );
        p.cast()
    }

    /// Guest-physical address of the region's start.
    pub fn gpa(&self) -> u64 {
        self.base as u64
    }
}

/// The SNP guest-request and response pages: a sealed message is written to
/// the request page with one copy, the response read out with one copy.
#[derive(Debug)]
pub struct GuestMsgPages {
    request: SharedRegion,
    response: SharedRegion,
}

impl GuestMsgPages {
    /// Copies a sealed request into the request page.
    pub fn write_request(&mut self, msg: &[u8; MSG_PAGE_SIZE]) {
        self.request.write_bytes(0, msg);
    }

    /// Copies the response page into private memory (all that is parsed).
    pub fn read_response(&self, out: &mut [u8; MSG_PAGE_SIZE]) {
        self.response.read_bytes(0, out);
    }

    /// The pages' GPAs for the guest-request NAE: (request, response).
    pub fn gpas(&self) -> (u64, u64) {
        (self.request.gpa(), self.response.gpa())
    }
}

// A region's pointer is a plain address of memory owned by the kernel for its
// whole life; the data path is single-threaded.
// SAFETY: no thread-affine state; access is serialised by `&mut` on writes.
unsafe impl Send for SharedRegion {}

impl SharedMem for SharedRegion {
    fn size(&self) -> usize {
        self.size
    }

    fn device_addr(&self, offset: usize) -> u64 {
        self.ptr(offset, 0) as u64
    }

    fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        let src = self.ptr(offset, dst.len());
        // SAFETY: `src..src+len` is inside the pool (checked); `dst` is private
        // memory we hold exclusively; the volatile copy reads every source byte
        // exactly once and is never elided or repeated, so a concurrent host
        // write can only change which bytes we get, not our control flow.
        unsafe { volatile_copy_nonoverlapping_memory(dst.as_mut_ptr(), src, dst.len()) };
    }

    fn write_bytes(&mut self, offset: usize, src: &[u8]) {
        let dst = self.ptr(offset, src.len());
        // A loop of 8-byte volatile stores where `dst` is 8-byte aligned (every
        // TX buffer and guest-message page is): `volatile_copy_*` becomes
        // `rep movs`, which TCG runs one element per translated-block pass,
        // and TX writes every frame through here (HTTP lost ~7 % to it).
        let (words, tail) = if dst.cast::<u64>().is_aligned() {
            let n = src.len() / 8;
            (n, &src[n * 8..])
        } else {
            (0, src)
        };
        for (i, w) in src[..words * 8].chunks_exact(8).enumerate() {
            let v = u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            // SAFETY: `dst + 8i .. + 8` is inside the checked range and
            // 8-byte aligned (checked above); one volatile store.
            unsafe { write_volatile(dst.cast::<u64>().add(i), v) };
        }
        let rest = dst.wrapping_add(words * 8);
        // SAFETY: the remaining bytes are inside the checked range; `tail` is
        // private; volatile so the stores are not elided.
        unsafe { volatile_copy_nonoverlapping_memory(rest, tail.as_ptr(), tail.len()) };
    }

    fn read_u16(&self, offset: usize) -> u16 {
        // SAFETY: in range and aligned (checked); one volatile load.
        unsafe { read_volatile(self.aligned::<u16>(offset)) }
    }

    fn read_u32(&self, offset: usize) -> u32 {
        // SAFETY: in range and aligned (checked); one volatile load.
        unsafe { read_volatile(self.aligned::<u32>(offset)) }
    }

    fn write_u16(&mut self, offset: usize, value: u16) {
        // SAFETY: in range and aligned (checked); one volatile store.
        unsafe { write_volatile(self.aligned::<u16>(offset), value) }
    }

    fn write_u32(&mut self, offset: usize, value: u32) {
        // SAFETY: in range and aligned (checked); one volatile store.
        unsafe { write_volatile(self.aligned::<u32>(offset), value) }
    }

    fn write_u64(&mut self, offset: usize, value: u64) {
        // SAFETY: in range and aligned (checked); one volatile store.
        unsafe { write_volatile(self.aligned::<u64>(offset), value) }
    }

    fn fence(&self) {
        fence(Ordering::SeqCst);
    }

    #[cfg(feature = "unconstrained-io")]
    fn lend<R>(&self, offset: usize, len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        let p = self.ptr(offset, len);
        // SAFETY (memory safety only; this is the measurement build that gives
        // up the constraint): in range (checked); plain bytes, any value is
        // valid; the slice lives only for the closure call. The host may change
        // the bytes meanwhile, which is exactly what the constrained build's
        // copy-out prevents.
        let buf = unsafe { core::slice::from_raw_parts(p, len) };
        f(buf)
    }

    #[cfg(feature = "unconstrained-io")]
    fn alias(&self) -> Self {
        SharedRegion {
            base: self.base,
            size: self.size,
        }
    }
}

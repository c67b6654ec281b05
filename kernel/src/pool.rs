//! The shared-page pool: one contiguous, page-aligned range of guest memory at
//! a fixed place in the layout (`vellum_boot::layout::POOL_BASE`), the only
//! memory the host may ever read or write: page 0 the GHCB, pages 1-2 the SNP
//! guest request and response, then the virtio rings and packet buffers.
//!
//! Code outside this module cannot get a reference into the pool: [`Pool`]
//! implements `vellum_net::shared::SharedMem`, which moves data by copies made
//! with volatile accesses, and lends a `&mut [u8]` only for filling a TX buffer
//! the driver owns. Boot makes the range shared before the kernel runs: under
//! SEV-SNP it is never validated, is converted to shared with a page-state
//! change, and is mapped without the C-bit; without SEV nothing needs doing.

use core::{
    intrinsics::volatile_copy_nonoverlapping_memory,
    ptr::{read_volatile, write_volatile},
    sync::atomic::{Ordering, fence},
};
use vellum_kernel::memory::Range;
use vellum_net::shared::SharedMem;

/// The pool (the kernel creates exactly one).
#[derive(Debug)]
pub struct Pool {
    base: *mut u8,
    size: usize,
}

impl Pool {
    /// Takes ownership of `range` as the shared pool and zeroes it.
    ///
    /// # Safety
    /// `range` must be identity-mapped RAM that nothing else uses for the rest
    /// of the kernel's life (the memory plan carves it out of the heap), already
    /// made shared by the platform, and this must be called once per range.
    pub unsafe fn new(range: Range) -> Pool {
        let pool = Pool {
            base: range.start as *mut u8,
            size: range.len() as usize,
        };
        // SAFETY: the caller hands us the whole range; zeroing it after the
        // conversion is required anyway (a page-state change destroys contents).
        unsafe { core::ptr::write_bytes(pool.base, 0, pool.size) };
        pool
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
}

// The pool pointer is a plain address of memory owned by the kernel for its
// whole life; the data path is single-threaded.
// SAFETY: no thread-affine state; access is serialised by `&mut` on writes.
unsafe impl Send for Pool {}

impl SharedMem for Pool {
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
        // SAFETY: inside the pool (checked); `src` is private; volatile so the
        // stores are not elided.
        unsafe { volatile_copy_nonoverlapping_memory(dst, src.as_ptr(), src.len()) };
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

    fn fill<R>(&mut self, offset: usize, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        let p = self.ptr(offset, len);
        // SAFETY: in range (checked). The driver only lends buffers it owns and
        // has not posted, so by protocol the device does not touch them; a host
        // that writes them anyway only changes the frame it is about to receive
        // (the closure writes the frame and does not base decisions on reading
        // it back). The slice lives only for the closure call.
        let buf = unsafe { core::slice::from_raw_parts_mut(p, len) };
        f(buf)
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
        Pool {
            base: self.base,
            size: self.size,
        }
    }
}

//! The kernel heap: `linked_list_allocator` over one physical range.

use core::sync::atomic::{AtomicU64, Ordering};

use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// The heap's range, for [`wipe`].
static START: AtomicU64 = AtomicU64::new(0);
static SIZE: AtomicU64 = AtomicU64::new(0);

/// Gives the allocator `[start, start + size)`.
///
/// # Safety
/// The range must be identity-mapped, writable RAM used by nothing else for
/// the rest of the kernel's life, and `init` must be called at most once.
pub unsafe fn init(start: u64, size: u64) {
    START.store(start, Ordering::Relaxed);
    SIZE.store(size, Ordering::Relaxed);
    // SAFETY: the caller guarantees the range is unused, mapped RAM and that
    // this is the only call.
    unsafe { HEAP.lock().init(start as *mut u8, size as usize) };
}

/// (used, free) bytes.
pub fn stats() -> (usize, usize) {
    let h = HEAP.lock();
    (h.used(), h.free())
}

/// Zeroes the whole heap: TLS private key, session keys, plaintext, request
/// data. For the panic path only, as its last act before the guest stops:
/// nothing may run afterwards that uses heap memory.
///
/// # Safety
/// The caller must never return to code that may touch a heap object again
/// (every object, the allocator's own free list included, is destroyed), and
/// nothing else may run concurrently (single CPU, no interrupts in Vellum).
pub unsafe fn wipe() {
    let (start, size) = (START.load(Ordering::Relaxed), SIZE.load(Ordering::Relaxed));
    let words = (size / 8) as usize;
    let base = start as *mut u64;
    for i in 0..words {
        // SAFETY: `[start, start + size)` is the heap range given to `init`
        // (mapped, writable RAM owned by the kernel; nothing when `init` never
        // ran: size 0). The caller guarantees no heap object is used again,
        // so overwriting them cannot be observed; volatile so the stores are
        // not elided as dead.
        unsafe { base.add(i).write_volatile(0) };
    }
}

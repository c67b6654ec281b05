//! The kernel heap: `linked_list_allocator` over one physical range.

use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Gives the allocator `[start, start + size)`.
///
/// # Safety
/// The range must be identity-mapped, writable RAM used by nothing else for
/// the rest of the kernel's life, and `init` must be called at most once.
pub unsafe fn init(start: u64, size: u64) {
    // SAFETY: the caller guarantees the range is unused, mapped RAM and that
    // this is the only call.
    unsafe { HEAP.lock().init(start as *mut u8, size as usize) };
}

/// (used, free) bytes.
pub fn stats() -> (usize, usize) {
    let h = HEAP.lock();
    (h.used(), h.free())
}

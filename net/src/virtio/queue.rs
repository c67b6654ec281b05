//! One legacy split virtqueue in the shared pool (virtio 1.2 §2.7).
//!
//! Legacy layout (§2.7.2), for queue size `Q`, in one physically contiguous,
//! 4096-aligned area whose address >> 12 goes into `QUEUE_PFN`:
//!
//! ```text
//! +0                     descriptor table: Q × { addr u64, len u32, flags u16, next u16 }
//! +16Q                   avail ring: flags u16, idx u16, ring[Q] u16, used_event u16
//! align4096(16Q+6+2Q)    used ring: flags u16, idx u16, ring[Q] { id u32, len u32 }, avail_event u16
//! ```
//!
//! The driver owns the descriptor table and the avail ring: it writes them and
//! never reads them back. The device owns the used ring: every field of it is
//! read once into a local and validated against private bookkeeping (who owns
//! each buffer, how many bytes were posted) before anything acts on it.

use alloc::vec;
use alloc::vec::Vec;

use super::{PAGE_SIZE, Violation, align_up};
use crate::shared::SharedMem;

/// Descriptor size (§2.7.5).
const DESC_SIZE: usize = 16;
/// `VIRTQ_DESC_F_NEXT`: the chain continues in `next` (§2.7.5).
const DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`: device-writable buffer (§2.7.5).
const DESC_F_WRITE: u16 = 2;
/// `VIRTQ_AVAIL_F_NO_INTERRUPT`: the driver does not want used-buffer
/// notifications (§2.7.7). Poll mode.
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// `VIRTQ_USED_F_NO_NOTIFY`: the device does not need available-buffer
/// notifications right now (§2.7.10).
const USED_F_NO_NOTIFY: u16 = 1;
/// Largest queue size (§2.7: "Queue Size ... maximum 32768").
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Byte offsets of the three parts of a legacy split ring, relative to its
/// (page-aligned) start, and its total size rounded up to a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// Number of entries (a power of two ≤ 32768).
    pub size: u16,
    /// Descriptor table offset (always 0).
    pub desc: usize,
    /// Avail ring offset (`16 * size`).
    pub avail: usize,
    /// Used ring offset (page aligned, §2.7.2).
    pub used: usize,
    /// Total bytes, a multiple of 4096.
    pub bytes: usize,
}

impl RingLayout {
    /// The legacy layout for `size` entries; `None` unless `size` is a power
    /// of two in `1..=32768`.
    pub const fn new(size: u16) -> Option<RingLayout> {
        if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return None;
        }
        let q = size as usize;
        let avail = DESC_SIZE * q;
        let avail_end = avail + 6 + 2 * q;
        // Cannot overflow: q ≤ 32768 keeps everything below 1 MiB.
        let Some(used) = align_up(avail_end, PAGE_SIZE) else {
            return None;
        };
        let Some(bytes) = align_up(used + 6 + 8 * q, PAGE_SIZE) else {
            return None;
        };
        Some(RingLayout {
            size,
            desc: 0,
            avail,
            used,
            bytes,
        })
    }
}

/// What the caller gets for each used-ring entry it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Used {
    /// A valid completion: `slot` is ours again and the device wrote (RX) or
    /// consumed `len` bytes.
    Done {
        /// Buffer slot.
        slot: u16,
        /// Validated length: `min_len ≤ len ≤ posted`.
        len: u32,
    },
    /// The id was valid and outstanding but the length was not: the slot is
    /// ours again (recycle it) but its contents must not be used.
    Reclaimed {
        /// Buffer slot.
        slot: u16,
        /// Why.
        violation: Violation,
    },
    /// Nothing to do but count it: bogus id, duplicate, or index jump.
    Refused(Violation),
}

/// Driver-side state of one split virtqueue. All of it is private memory.
#[derive(Debug)]
pub(crate) struct Queue {
    /// Queue index (0 RX, 1 TX).
    index: u16,
    /// Pool offset of the ring.
    base: usize,
    layout: RingLayout,
    /// Two descriptors per buffer (header, then data) when the device lacks
    /// `VIRTIO_F_ANY_LAYOUT`; one otherwise.
    chained: bool,
    /// Minimum valid used length (the header for RX, 0 for TX).
    min_len: u32,
    /// Next avail index we will publish (our private shadow of `avail.idx`).
    avail_idx: u16,
    /// Next used index we expect to consume.
    last_used: u16,
    /// Buffers the device owns.
    outstanding: u16,
    /// Per slot: the device owns it.
    device_owns: Vec<bool>,
    /// Per slot: total bytes posted (upper bound of a valid `used.len`).
    posted_len: Vec<u32>,
    /// The last implausible `used.idx` already counted, so that a device that
    /// leaves a bogus index in place is counted once, not once per poll.
    last_bogus_idx: Option<u16>,
}

impl Queue {
    /// A queue with `slots` buffers over the ring at pool offset `base`
    /// (page aligned, `layout.bytes` long, owned by this queue). Writes the
    /// whole ring to zero, then sets `avail.flags = NO_INTERRUPT`.
    /// `slots` must fit: `slots * (1 + chained) ≤ layout.size` (checked by the
    /// caller; the constructor clamps as a second line of defence).
    pub(crate) fn new<M: SharedMem>(
        mem: &mut M,
        index: u16,
        base: usize,
        layout: RingLayout,
        slots: u16,
        chained: bool,
        min_len: u32,
    ) -> Queue {
        let max_slots = if chained {
            layout.size / 2
        } else {
            layout.size
        };
        let slots = slots.min(max_slots);
        const ZERO: [u8; 256] = [0; 256];
        let mut off = 0;
        while off < layout.bytes {
            let n = ZERO.len().min(layout.bytes - off);
            mem.write_bytes(base + off, &ZERO[..n]);
            off += n;
        }
        mem.write_u16(base + layout.avail, AVAIL_F_NO_INTERRUPT);
        mem.fence();
        Queue {
            index,
            base,
            layout,
            chained,
            min_len,
            avail_idx: 0,
            last_used: 0,
            outstanding: 0,
            device_owns: vec![false; usize::from(slots)],
            posted_len: vec![0; usize::from(slots)],
            last_bogus_idx: None,
        }
    }

    /// Number of buffer slots.
    pub(crate) fn slots(&self) -> u16 {
        // `device_owns.len()` came from a u16.
        self.device_owns.len() as u16
    }

    /// Buffers currently owned by the device.
    #[cfg(test)]
    pub(crate) fn outstanding(&self) -> u16 {
        self.outstanding
    }

    /// Whether the device owns `slot`.
    #[cfg(test)]
    pub(crate) fn device_owns(&self, slot: u16) -> bool {
        self.device_owns
            .get(usize::from(slot))
            .copied()
            .unwrap_or(false)
    }

    /// Head descriptor index of `slot`.
    fn head(&self, slot: u16) -> u16 {
        if self.chained { slot * 2 } else { slot }
    }

    /// Writes one descriptor (all four fields: the table is never read back,
    /// so whatever the device scribbled there is overwritten on each post).
    fn write_desc<M: SharedMem>(
        &self,
        mem: &mut M,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let off = self.base + self.layout.desc + DESC_SIZE * usize::from(i);
        mem.write_u64(off, addr);
        mem.write_u32(off + 8, len);
        mem.write_u16(off + 12, flags);
        mem.write_u16(off + 14, next);
    }

    /// Gives `slot` to the device: a buffer at device address `addr` whose
    /// first `hdr_len` bytes are the virtio-net header and which is `len`
    /// bytes long in total (`len ≥ hdr_len`), device-writable for RX. Writes
    /// the descriptor(s) and the avail ring entry; the entry becomes visible
    /// at the next [`Queue::publish`]. Returns `false` (and does nothing) if
    /// the slot is out of range or already the device's.
    pub(crate) fn post<M: SharedMem>(
        &mut self,
        mem: &mut M,
        slot: u16,
        addr: u64,
        hdr_len: u32,
        len: u32,
        device_writable: bool,
    ) -> bool {
        match self.device_owns.get(usize::from(slot)) {
            Some(false) => {}
            _ => return false,
        }
        let write = if device_writable { DESC_F_WRITE } else { 0 };
        let head = self.head(slot);
        if self.chained {
            // Legacy without ANY_LAYOUT: the header alone in the first
            // descriptor, the frame in the next (§5.1.6.6 legacy framing).
            let data_len = len.saturating_sub(hdr_len);
            self.write_desc(mem, head, addr, hdr_len, write | DESC_F_NEXT, head + 1);
            self.write_desc(mem, head + 1, addr + u64::from(hdr_len), data_len, write, 0);
        } else {
            self.write_desc(mem, head, addr, len, write, 0);
        }
        let pos = usize::from(self.avail_idx & (self.layout.size - 1));
        mem.write_u16(self.base + self.layout.avail + 4 + 2 * pos, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let s = usize::from(slot);
        self.device_owns[s] = true;
        self.posted_len[s] = len;
        self.outstanding += 1;
        true
    }

    /// Makes every posted entry visible: fence (descriptors and ring entries
    /// before the index), then `avail.idx`.
    pub(crate) fn publish<M: SharedMem>(&mut self, mem: &mut M) {
        mem.fence();
        mem.write_u16(self.base + self.layout.avail + 2, self.avail_idx);
    }

    /// After [`Queue::publish`]: whether the device wants a notification.
    /// Reads `used.flags` once (after a fence, so the device either saw our
    /// new `avail.idx` or will see our notify, §2.7.10). A hostile device can
    /// only make us notify more (costing exits) or not at all (stalling its
    /// own queue).
    pub(crate) fn wants_notify<M: SharedMem>(&self, mem: &M) -> bool {
        mem.fence();
        let flags = mem.read_u16(self.base + self.layout.used);
        flags & USED_F_NO_NOTIFY == 0
    }

    /// Consumes up to `max` new used-ring entries, calling `f` for each with
    /// a validated outcome. Returns how many entries were consumed.
    ///
    /// `used.idx` is read once. If it advanced by more than the number of
    /// outstanding buffers (wrapping u16 arithmetic; a backwards move looks
    /// like a huge advance), nothing is consumed and one violation is reported
    /// (once per distinct bogus value). Resynchronisation:
    /// - our index stays where it was, so a device that puts the true index
    ///   back (a host that scribbled on `used.idx`) is followed again with no
    ///   loss;
    /// - if a later read shows the device *continuing* from the bogus value
    ///   (`0 < idx - bogus ≤ outstanding`: it wrote entries we refused, then
    ///   went on honestly), we adopt the bogus value as our index and consume
    ///   the new entries; entries before it are never read (buffers completed
    ///   there stay counted as the device's, a leak the device chose).
    ///
    /// Each consumed entry's `id` and `len` are read once each and checked:
    /// id < queue size, id is the head of one of our slots, the slot is
    /// device-owned (so duplicates are refused), `min_len ≤ len ≤ posted`.
    /// The loop is bounded by `min(max, outstanding)` and never indexes with
    /// device data before checking it.
    pub(crate) fn harvest<M: SharedMem>(
        &mut self,
        mem: &M,
        max: usize,
        mut f: impl FnMut(Used),
    ) -> usize {
        self.harvest_while(mem, max, |u| {
            f(u);
            true
        })
    }

    /// [`harvest`](Self::harvest), stopping early after an entry for which
    /// `f` returns `false` (the caller has no room for another one).
    pub(crate) fn harvest_while<M: SharedMem>(
        &mut self,
        mem: &M,
        max: usize,
        mut f: impl FnMut(Used) -> bool,
    ) -> usize {
        if max == 0 {
            return 0;
        }
        let used = self.base + self.layout.used;
        mem.fence();
        let used_idx = mem.read_u16(used + 2);
        let mut pending = used_idx.wrapping_sub(self.last_used);
        if pending > self.outstanding && !super::UNCONSTRAINED_IO {
            let continued = self
                .last_bogus_idx
                .map(|bogus| (bogus, used_idx.wrapping_sub(bogus)));
            match continued {
                Some((bogus, n)) if n > 0 && n <= self.outstanding => {
                    self.last_used = bogus;
                    pending = n;
                }
                _ => {
                    if self.last_bogus_idx != Some(used_idx) {
                        self.last_bogus_idx = Some(used_idx);
                        let _ = f(Used::Refused(Violation::UsedIdxJump {
                            queue: self.index,
                            last_used: self.last_used,
                            used_idx,
                            outstanding: self.outstanding,
                        }));
                    }
                    return 0;
                }
            }
        }
        self.last_bogus_idx = None;
        if pending == 0 {
            return 0;
        }
        // Entries are read only after the index (§2.7.8 ordering).
        mem.fence();
        let n = usize::from(pending).min(max);
        for i in 0..n {
            let pos = usize::from(self.last_used & (self.layout.size - 1));
            let elem = used + 4 + 8 * pos;
            let id = mem.read_u32(elem);
            let len = mem.read_u32(elem + 4);
            self.last_used = self.last_used.wrapping_add(1);
            if !f(self.check(id, len)) {
                return i + 1;
            }
        }
        n
    }

    /// `unconstrained-io` measurement build: the used element is trusted (no
    /// id, ownership or length checks), like a driver that trusts its device.
    #[cfg(feature = "unconstrained-io")]
    fn check(&mut self, id: u32, len: u32) -> Used {
        let slot = if self.chained { id / 2 } else { id } as u16;
        self.device_owns[usize::from(slot)] = false;
        self.outstanding = self.outstanding.wrapping_sub(1);
        Used::Done { slot, len }
    }

    /// Validates one used element (already in locals) and, if it names an
    /// outstanding slot, takes the slot back from the device.
    #[cfg(not(feature = "unconstrained-io"))]
    fn check(&mut self, id: u32, len: u32) -> Used {
        let queue = self.index;
        if id >= u32::from(self.layout.size) {
            return Used::Refused(Violation::IdOutOfRange { queue, id });
        }
        let slot = if self.chained {
            if !id.is_multiple_of(2) {
                return Used::Refused(Violation::IdOutOfRange { queue, id });
            }
            id / 2
        } else {
            id
        };
        // id < size ≤ 32768, so the cast is lossless.
        let slot = slot as u16;
        let s = usize::from(slot);
        match self.device_owns.get(s) {
            None => return Used::Refused(Violation::IdOutOfRange { queue, id }),
            Some(false) => return Used::Refused(Violation::IdNotOutstanding { queue, id }),
            Some(true) => {}
        }
        self.device_owns[s] = false;
        self.outstanding -= 1;
        if len > self.posted_len[s] {
            return Used::Reclaimed {
                slot,
                violation: Violation::LengthTooLong { queue, id, len },
            };
        }
        if len < self.min_len {
            return Used::Reclaimed {
                slot,
                violation: Violation::LengthTooShort { queue, id, len },
            };
        }
        Used::Done { slot, len }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::fake::FakeMem;

    fn queue(mem: &mut FakeMem, size: u16, slots: u16, chained: bool) -> Queue {
        Queue::new(mem, 1, 0, RingLayout::new(size).unwrap(), slots, chained, 0)
    }

    fn complete(mem: &mut FakeMem, size: u16, used_idx: &mut u16, id: u32, len: u32) {
        let l = RingLayout::new(size).unwrap();
        let pos = usize::from(*used_idx & (size - 1));
        mem.device_write_u32(l.used + 4 + 8 * pos, id);
        mem.device_write_u32(l.used + 8 + 8 * pos, len);
        *used_idx = used_idx.wrapping_add(1);
        mem.device_write_u16(l.used + 2, *used_idx);
    }

    fn drain(q: &mut Queue, mem: &FakeMem) -> Vec<Used> {
        let mut out = Vec::new();
        q.harvest(mem, usize::MAX, |u| out.push(u));
        out
    }

    #[test]
    fn layout_matches_legacy_formula() {
        for shift in 0..=15 {
            let q = 1usize << shift;
            let l = RingLayout::new(q as u16).unwrap();
            let first = (16 * q + 6 + 2 * q).div_ceil(4096) * 4096;
            assert_eq!(l.used, first);
            assert_eq!(l.bytes, first + (6 + 8 * q).div_ceil(4096) * 4096);
        }
    }

    #[test]
    fn post_writes_desc_and_avail_and_harvest_validates() {
        let mut mem = FakeMem::new(64 * 1024);
        let mut q = queue(&mut mem, 8, 8, false);
        let l = q.layout;
        assert_eq!(mem.peek_u16(l.avail), AVAIL_F_NO_INTERRUPT);
        assert!(q.post(&mut mem, 3, 0x1000, 10, 100, false));
        assert!(
            !q.post(&mut mem, 3, 0x1000, 10, 100, false),
            "double post refused"
        );
        assert!(
            !q.post(&mut mem, 8, 0x1000, 10, 100, false),
            "slot out of range refused"
        );
        q.publish(&mut mem);
        assert_eq!(mem.peek_u64(3 * 16), 0x1000);
        assert_eq!(mem.peek_u32(3 * 16 + 8), 100);
        assert_eq!(mem.peek_u16(l.avail + 2), 1);
        assert_eq!(mem.peek_u16(l.avail + 4), 3);

        let mut idx = 0;
        complete(&mut mem, 8, &mut idx, 3, 101);
        assert_eq!(
            drain(&mut q, &mem),
            [Used::Reclaimed {
                slot: 3,
                violation: Violation::LengthTooLong {
                    queue: 1,
                    id: 3,
                    len: 101
                }
            }]
        );
        assert_eq!(q.outstanding(), 0);
        assert!(q.post(&mut mem, 3, 0x1000, 10, 100, false));
        q.publish(&mut mem);
        complete(&mut mem, 8, &mut idx, 3, 100);
        assert_eq!(drain(&mut q, &mem), [Used::Done { slot: 3, len: 100 }]);
    }

    #[test]
    fn chained_mode_uses_two_descriptors_and_even_heads() {
        let mut mem = FakeMem::new(64 * 1024);
        let mut q = queue(&mut mem, 8, 8, true);
        assert_eq!(q.slots(), 4, "clamped to half the ring");
        assert!(q.post(&mut mem, 2, 0x2000, 10, 60, true));
        q.publish(&mut mem);
        assert_eq!(mem.peek_u64(4 * 16), 0x2000);
        assert_eq!(mem.peek_u32(4 * 16 + 8), 10);
        assert_eq!(mem.peek_u16(4 * 16 + 12), DESC_F_WRITE | DESC_F_NEXT);
        assert_eq!(mem.peek_u16(4 * 16 + 14), 5);
        assert_eq!(mem.peek_u64(5 * 16), 0x200a);
        assert_eq!(mem.peek_u32(5 * 16 + 8), 50);
        assert_eq!(mem.peek_u16(5 * 16 + 12), DESC_F_WRITE);
        let mut idx = 0;
        complete(&mut mem, 8, &mut idx, 5, 10);
        assert_eq!(
            drain(&mut q, &mem),
            [Used::Refused(Violation::IdOutOfRange { queue: 1, id: 5 })]
        );
        assert_eq!(q.outstanding(), 1);
        complete(&mut mem, 8, &mut idx, 4, 60);
        assert_eq!(drain(&mut q, &mem), [Used::Done { slot: 2, len: 60 }]);
    }

    #[test]
    fn index_jump_consumes_nothing_and_recovers() {
        let mut mem = FakeMem::new(64 * 1024);
        let mut q = queue(&mut mem, 8, 8, false);
        let l = q.layout;
        for s in 0..4 {
            q.post(&mut mem, s, 0x1000, 0, 10, true);
        }
        q.publish(&mut mem);
        let mut idx = 0;
        complete(&mut mem, 8, &mut idx, 0, 5);
        // Bogus index, left in place for several polls: counted once.
        mem.device_write_u16(l.used + 2, 1000);
        let mut events = Vec::new();
        for _ in 0..5 {
            q.harvest(&mem, usize::MAX, |u| events.push(u));
        }
        assert_eq!(events.len(), 1);
        assert!(matches!(
            events[0],
            Used::Refused(Violation::UsedIdxJump { used_idx: 1000, .. })
        ));
        // Backwards (wraps to a huge advance): refused as well.
        mem.device_write_u16(l.used + 2, 0xffff);
        assert_eq!(drain(&mut q, &mem).len(), 1);
        // The true index is back: the completion is consumed, nothing lost.
        mem.device_write_u16(l.used + 2, idx);
        assert_eq!(drain(&mut q, &mem), [Used::Done { slot: 0, len: 5 }]);
        assert_eq!(q.outstanding(), 3);
    }

    #[test]
    fn device_continuing_from_a_bogus_index_is_followed() {
        let mut mem = FakeMem::new(64 * 1024);
        let mut q = queue(&mut mem, 8, 8, false);
        for s in 0..4 {
            q.post(&mut mem, s, 0x1000, 0, 10, true);
        }
        q.publish(&mut mem);
        // The device writes 6 garbage entries (> 4 outstanding) at once...
        let mut idx = 0;
        for _ in 0..6 {
            complete(&mut mem, 8, &mut idx, 7, 1);
        }
        let ev = drain(&mut q, &mem);
        assert!(matches!(
            ev[..],
            [Used::Refused(Violation::UsedIdxJump { used_idx: 6, .. })]
        ));
        // ...then goes on honestly from there.
        complete(&mut mem, 8, &mut idx, 2, 9);
        assert_eq!(drain(&mut q, &mem), [Used::Done { slot: 2, len: 9 }]);
        complete(&mut mem, 8, &mut idx, 1, 9);
        assert_eq!(drain(&mut q, &mem), [Used::Done { slot: 1, len: 9 }]);
        assert_eq!(q.outstanding(), 2);
    }

    #[test]
    fn max_bounds_the_batch() {
        let mut mem = FakeMem::new(64 * 1024);
        let mut q = queue(&mut mem, 8, 8, false);
        for s in 0..4 {
            q.post(&mut mem, s, 0x1000, 0, 10, true);
        }
        q.publish(&mut mem);
        let mut idx = 0;
        for s in 0..4 {
            complete(&mut mem, 8, &mut idx, s, 1);
        }
        let mut n = 0;
        assert_eq!(q.harvest(&mem, 3, |_| n += 1), 3);
        assert_eq!(q.harvest(&mem, 3, |_| n += 1), 1);
        assert_eq!(n, 4);
        assert_eq!(q.harvest(&mem, 3, |_| n += 1), 0);
    }
}

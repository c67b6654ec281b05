//! The virtio-net driver: legacy initialisation over `IoPorts`, RX copy-out with
//! batched re-posting, in-place TX with one notify per batch.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use log::warn;

use super::queue::{Queue, Used};
use super::{
    BUF_SIZE, InitError, MAX_FRAME, MAX_LARGE_FRAME, MAX_MERGE, NET_HDR_F_NEEDS_CSUM,
    NET_HDR_GSO_NONE, NET_HDR_GSO_TCPV4, NET_HDR_LEN, NET_HDR_MRG_LEN, PAGE_SIZE, PoolLayout,
    RX_QUEUE, TSO_BUF_SIZE, TSO_BUF_SLOTS, TX_QUEUE, Violation, features, phy, regs, status,
};
use crate::metrics::METRICS;
use crate::shared::{IoPorts, SharedMem};

/// What the kernel asks of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// RX buffers kept posted. Clamped to what the RX ring can hold (its size,
    /// or half of it without `VIRTIO_F_ANY_LAYOUT`).
    pub rx_buffers: u16,
    /// TX buffers. Clamped like `rx_buffers`.
    pub tx_buffers: u16,
    /// Private (guest-only) frame buffers that received frames are copied
    /// into, allocated once; also the most frames harvested per RX batch.
    /// At least 1.
    pub rx_private_frames: u16,
    /// Negotiate `VIRTIO_NET_F_CSUM` if offered, and leave TCP/UDP TX
    /// checksums to the device.
    pub tx_checksum_offload: bool,
    /// Negotiate `VIRTIO_NET_F_GUEST_CSUM` if offered: accept received
    /// frames whose header says `NEEDS_CSUM` (a partial checksum, as a tap
    /// backend delivers the host's own segments) or `DATA_VALID`, and do not
    /// verify TCP/UDP checksums on receive (see [`super::phy`] for why that
    /// costs no security: the host can forge any frame with a valid checksum;
    /// integrity against it comes from TLS).
    pub rx_checksum_offload: bool,
    /// TCP segmentation offload: if the device offers `VIRTIO_NET_F_HOST_TSO4`
    /// (and TX checksum offload is on), this many [`TSO_BUF_SIZE`] TX buffers
    /// replace [`TSO_BUF_SLOTS`] small TX buffers each (the pool use stays
    /// the same), and the stack hands the device TCP segments of up to 64 KiB
    /// to cut into MSS-sized frames: one frame to build, post and complete
    /// instead of up to 44. 0: no TSO.
    pub tso_buffers: u16,
    /// Large receive: if the device offers `VIRTIO_NET_F_MRG_RXBUF` and
    /// `VIRTIO_NET_F_GUEST_TSO4` (and RX checksum offload is on), the host
    /// may deliver TCP segments of up to 64 KiB spread over several receive
    /// buffers; they are gathered into this many private large frames
    /// (68 KiB each). 0: no large receive.
    pub rx_large_frames: u16,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rx_buffers: 256,
            tx_buffers: 256,
            rx_private_frames: 32,
            tx_checksum_offload: true,
            rx_checksum_offload: true,
            tso_buffers: 0,
            rx_large_frames: 0,
        }
    }
}

/// Per-driver counters (the global `METRICS` are bumped as well; these exist
/// so that a driver's own history can be inspected, e.g. by tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Frames copied out and queued for the stack.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames posted to the device.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Completions refused by validation.
    pub ring_violations: u64,
    /// TX attempts that found no free buffer.
    pub tx_ring_full: u64,
    /// RX queue notifications (register writes).
    pub rx_notifies: u64,
    /// TX queue notifications (register writes).
    pub tx_notifies: u64,
}

/// Offset of the checksum field in a TCP header (what `csum_offset` is for a
/// TCP segment; TSO is only asked for those).
const IP_TCP_CSUM_OFFSET: u16 = 16;

/// Counts violations and logs the first of each kind.
#[derive(Debug, Default)]
struct Guard {
    count: u64,
    logged: u8,
}

impl Guard {
    fn report(&mut self, v: Violation) {
        self.count += 1;
        METRICS.ring_violations.inc();
        let bit = 1u8 << v.kind();
        if self.logged & bit == 0 {
            self.logged |= bit;
            warn!(
                "virtio-net: refused device completion: {v:?} (further ones of this kind only counted)"
            );
        }
    }
}

/// Frames already copied out of the pool, waiting for the stack, in arrival
/// order. Two fixed rings of private slots, allocated once: small slots
/// (`BUF_SIZE`) for frames in one receive buffer, and large slots (room for
/// [`MAX_MERGE`] buffers) for frames merged from several
/// (`VIRTIO_NET_F_MRG_RXBUF`, large receive). Each slot holds the frame only:
/// the header is read from the pool once into a local, checked there, and
/// not kept.
#[derive(Debug)]
pub(crate) struct RxFrames {
    small: Slots,
    large: Slots,
    /// Committed frames, oldest first: (large?, slot, length).
    order: VecDeque<(bool, usize, usize)>,
    /// The merged frame being gathered: large slot, bytes so far, buffers
    /// still to come, its first buffer's `num_buffers`.
    pending: Option<Pending>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    slot: usize,
    filled: usize,
    remaining: u16,
    num_buffers: u16,
}

/// A FIFO of equal slots (frames leave in the order they came).
#[derive(Debug)]
struct Slots {
    data: Vec<u8>,
    size: usize,
    n: usize,
    head: usize,
    count: usize,
}

impl Slots {
    fn new(n: usize, size: usize) -> Slots {
        Slots {
            data: vec![0; n * size],
            size,
            n,
            head: 0,
            count: 0,
        }
    }

    fn has_free(&self) -> bool {
        self.count < self.n
    }

    /// Takes the next free slot (the caller checked [`has_free`]).
    fn take(&mut self) -> usize {
        let i = (self.head + self.count) % self.n;
        self.count += 1;
        i
    }

    /// Gives back the oldest slot.
    fn release(&mut self) {
        if self.count > 0 {
            self.head = (self.head + 1) % self.n;
            self.count -= 1;
        }
    }

    /// Gives back the newest slot (a frame abandoned while gathered).
    fn release_newest(&mut self) {
        self.count = self.count.saturating_sub(1);
    }

    fn bytes(&mut self, slot: usize, at: usize, len: usize) -> &mut [u8] {
        let base = slot * self.size + at;
        &mut self.data[base..base + len]
    }
}

impl RxFrames {
    /// `small` one-buffer frames and `large` merged ones (0: no large
    /// receive).
    fn new(small: usize, large: usize) -> RxFrames {
        RxFrames {
            small: Slots::new(small, BUF_SIZE),
            large: Slots::new(large, usize::from(MAX_MERGE) * BUF_SIZE),
            order: VecDeque::with_capacity(small + large),
            pending: None,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn len(&self) -> usize {
        self.order.len()
    }

    /// Room for one more completion whatever it turns out to be: a merged
    /// frame being gathered takes its continuation buffers; otherwise a
    /// small slot, and a large one too where large receive is on.
    fn can_take(&self) -> bool {
        self.pending.is_some()
            || (self.small.has_free() && (self.large.n == 0 || self.large.has_free()))
    }

    /// A small slot's first `len ≤ BUF_SIZE` bytes for a one-buffer frame;
    /// queued by [`commit_small`](Self::commit_small).
    fn small_slot(&mut self, len: usize) -> (usize, &mut [u8]) {
        let slot = self.small.take();
        (slot, self.small.bytes(slot, 0, len))
    }

    fn commit_small(&mut self, slot: usize, len: usize) {
        self.order.push_back((false, slot, len));
    }

    /// Whether merged (large) frames can be taken at all.
    fn large_enabled(&self) -> bool {
        self.large.n > 0
    }

    /// Starts gathering a frame of `num_buffers` buffers.
    fn start_large(&mut self, num_buffers: u16) {
        let slot = self.large.take();
        self.pending = Some(Pending {
            slot,
            filled: 0,
            remaining: num_buffers,
            num_buffers,
        });
    }

    /// Where the next `len ≤ BUF_SIZE` bytes of the gathered frame go.
    fn large_next(&mut self, len: usize) -> Option<&mut [u8]> {
        let p = self.pending.as_mut()?;
        if p.remaining == 0 || p.filled + len > self.large.size {
            return None;
        }
        let at = p.filled;
        p.filled += len;
        p.remaining -= 1;
        Some(self.large.bytes(p.slot, at, len))
    }

    /// The gathered frame is complete: (num_buffers, bytes), if it is.
    fn large_done(&self) -> Option<(u16, usize)> {
        self.pending
            .filter(|p| p.remaining == 0)
            .map(|p| (p.num_buffers, p.filled))
    }

    /// Queues the gathered frame.
    fn commit_large(&mut self) {
        if let Some(p) = self.pending.take() {
            self.order.push_back((true, p.slot, p.filled));
        }
    }

    /// Drops the frame being gathered: (num_buffers, bytes so far).
    fn abandon_large(&mut self) -> Option<(u16, usize)> {
        let p = self.pending.take()?;
        self.large.release_newest();
        Some((p.num_buffers, p.filled))
    }

    /// The oldest frame.
    pub(crate) fn front(&self) -> &[u8] {
        match self.order.front() {
            Some(&(large, slot, len)) => {
                let s = if large { &self.large } else { &self.small };
                &s.data[slot * s.size..slot * s.size + len]
            }
            None => &[],
        }
    }

    /// Drops the oldest frame.
    pub(crate) fn pop(&mut self) {
        if let Some((large, _, _)) = self.order.pop_front() {
            if large {
                self.large.release();
            } else {
                self.small.release();
            }
        }
    }
}

/// RX queue state.
#[derive(Debug)]
struct RxPath {
    queue: Queue,
    /// Pool offset of slot 0.
    bufs: usize,
    /// Slots taken back in the current batch, re-posted at its end.
    repost: Vec<u16>,
    /// Header bytes before each frame (10, or 12 with `MRG_RXBUF`).
    hdr_len: usize,
    /// `GUEST_TSO4` negotiated: TCPv4 GSO frames are expected.
    gso: bool,
    guard: Guard,
    packets: u64,
    bytes: u64,
    notifies: u64,
}

/// TX queue state; the smoltcp TX token borrows it (with the pool).
#[derive(Debug)]
pub(crate) struct TxPath {
    queue: Queue,
    /// Pool offset of slot 0.
    bufs: usize,
    /// Pool offset of TSO buffer 0 (slot `free.small`).
    tso_bufs: usize,
    /// The slots we own.
    free: FreeSlots,
    /// TSO in use (`VIRTIO_NET_F_HOST_TSO4` negotiated, TSO buffers laid out).
    pub(crate) tso: bool,
    /// Header bytes before each frame (10, or 12 with `MRG_RXBUF`).
    pub(crate) hdr_len: usize,
    /// `VIRTIO_NET_F_CSUM` negotiated: fill `NEEDS_CSUM` headers.
    pub(crate) offload: bool,
    /// `VIRTIO_NET_F_GUEST_CSUM` negotiated: received frames may carry
    /// `NEEDS_CSUM`, and the stack does not verify TCP/UDP checksums.
    pub(crate) rx_offload: bool,
    /// Something was posted since the last notify decision.
    dirty: bool,
    /// Private memory where every frame is built (header room first), then
    /// copied into its shared buffer, or dropped when none is free. Grows
    /// once to the largest frame.
    scratch: Vec<u8>,
    guard: Guard,
    packets: u64,
    bytes: u64,
    ring_full: u64,
    notifies: u64,
}

/// The TX slots the driver owns: small ones (ids below `small`) and TSO ones.
#[derive(Debug)]
struct FreeSlots {
    small: u16,
    free: Vec<u16>,
    tso: Vec<u16>,
}

impl FreeSlots {
    /// Returns `slot` to its list.
    fn give_back(&mut self, slot: u16) {
        if slot < self.small {
            self.free.push(slot);
        } else {
            self.tso.push(slot);
        }
    }
}

impl TxPath {
    /// Takes back every TX buffer the device validly completed.
    pub(crate) fn reclaim<M: SharedMem>(&mut self, mem: &M) {
        let (free, guard) = (&mut self.free, &mut self.guard);
        self.queue.harvest(mem, usize::MAX, |u| match u {
            Used::Done { slot, .. } => free.give_back(slot),
            Used::Reclaimed { slot, violation } => {
                guard.report(violation);
                free.give_back(slot);
            }
            Used::Refused(violation) => guard.report(violation),
        });
    }

    /// Whether a frame of any size the stack may build can be sent: a small
    /// buffer is free and, with TSO, a TSO buffer too (reclaiming first if
    /// not). smoltcp asks for the right to send before it knows the size, so
    /// saying yes without a TSO buffer would drop its next large segment.
    pub(crate) fn has_free<M: SharedMem>(&mut self, mem: &M) -> bool {
        let tso = self.tso;
        let ready = move |f: &FreeSlots| !f.free.is_empty() && (!tso || !f.tso.is_empty());
        if !ready(&self.free) {
            self.reclaim(mem);
        }
        ready(&self.free)
    }

    /// Counts a transmit attempt that found the ring full.
    pub(crate) fn count_full(&mut self) {
        self.ring_full += 1;
        METRICS.tx_ring_full.inc();
    }

    /// Builds one `len`-byte frame with `f` in private memory, writes its
    /// virtio-net header in front of it, copies both into a free shared TX
    /// buffer with one write and posts it (published at once, notified at the
    /// next [`VirtioNet::flush`]). `segment` is the TSO segment size smoltcp
    /// asked for (a TCP segment larger than the MTU, for a TSO buffer; the
    /// header tells the device to cut it). The checksum and segmentation
    /// fields are computed from the private frame: nothing is read back from
    /// the pool, and no reference into it is ever made. Without a suitable free
    /// buffer (or for an oversized frame, a stack bug) the frame is built and
    /// dropped.
    pub(crate) fn send<M: SharedMem, R>(
        &mut self,
        mem: &mut M,
        len: usize,
        segment: Option<u16>,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> R {
        // Segmentation only where it was negotiated (smoltcp asks for it only
        // when the device capabilities offered it).
        let segment = segment.filter(|_| self.tso);
        let hdr_len = self.hdr_len;
        let large = len > BUF_SIZE - hdr_len;
        if large && (segment.is_none() || len > TSO_BUF_SIZE - hdr_len) {
            warn!("virtio-net: stack asked for a {len}-byte frame, dropped");
            return self.drop_frame(len, f);
        }
        if !self.has_free(mem) {
            self.count_full();
            return self.drop_frame(len, f);
        }
        let taken = if large {
            self.free.tso.pop()
        } else {
            self.free.free.pop()
        };
        let Some(slot) = taken else {
            return self.drop_frame(len, f);
        };
        let off = if large {
            self.tso_bufs + usize::from(slot - self.free.small) * TSO_BUF_SIZE
        } else {
            self.bufs + usize::from(slot) * BUF_SIZE
        };
        // The scratch buffer only ever holds frames built for the wire
        // (smoltcp writes every byte of a frame it emits), so it holds no
        // secret: it is not cleared between frames.
        let total = hdr_len + len;
        if self.scratch.len() < total {
            self.scratch.resize(total, 0);
        }
        let (hdr_buf, frame) = self.scratch[..total].split_at_mut(hdr_len);
        let r = f(frame);
        let csum = if self.offload {
            phy::prepare_tx_checksum(frame).map(|(start, offset)| {
                // TCP data offset (header length in 32-bit words);
                // `prepare_tx_checksum` checked the frame's bounds.
                let tcp_hdr = frame
                    .get(usize::from(start) + 12)
                    .map_or(20, |b| u16::from(b >> 4) * 4);
                (start, offset, start + tcp_hdr)
            })
        } else {
            None
        };
        // The 12-byte form's `num_buffers` stays 0 on transmit.
        let mut hdr = [0u8; NET_HDR_MRG_LEN];
        hdr[1] = NET_HDR_GSO_NONE;
        if let Some((start, offset, headers)) = csum {
            hdr[0] = NET_HDR_F_NEEDS_CSUM;
            hdr[6..8].copy_from_slice(&start.to_le_bytes());
            hdr[8..10].copy_from_slice(&offset.to_le_bytes());
            if let (Some(mss), IP_TCP_CSUM_OFFSET) = (segment, offset) {
                hdr[1] = NET_HDR_GSO_TCPV4;
                hdr[2..4].copy_from_slice(&headers.to_le_bytes());
                hdr[4..6].copy_from_slice(&mss.to_le_bytes());
            }
        }
        if segment.is_some() && hdr[1] != NET_HDR_GSO_TCPV4 {
            // Not a TCP/IPv4 segment the device can cut: it would be an
            // oversized frame on the wire. Cannot happen with smoltcp (it
            // only asks for TSO on TCP); give the buffer back.
            warn!("virtio-net: {len}-byte frame is not TSO-able, dropped");
            self.free.give_back(slot);
            return r;
        }
        hdr_buf.copy_from_slice(&hdr[..hdr_len]);
        // The one write of this frame into the pool: header and frame.
        mem.write_bytes(off, &self.scratch[..total]);
        let addr = mem.device_addr(off);
        // `total ≤ TSO_BUF_SIZE` fits in u32.
        if self
            .queue
            .post(mem, slot, addr, hdr_len as u32, total as u32, false)
        {
            self.queue.publish(mem);
            self.dirty = true;
            self.packets += 1;
            self.bytes += len as u64;
            METRICS.tx_packets.inc();
            METRICS.tx_bytes.add(len as u64);
            METRICS.tx_copy_bytes.add(len as u64);
            if hdr[1] == NET_HDR_GSO_TCPV4 {
                METRICS.tx_tso_frames.inc();
            }
        } else {
            // Unreachable (free slots are never device-owned); keep the slot.
            self.free.give_back(slot);
        }
        r
    }

    fn drop_frame<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        if self.scratch.len() < len {
            self.scratch.resize(len, 0);
        }
        f(&mut self.scratch[..len])
    }
}

/// The legacy virtio-net driver. Owns the pool handle and the register block.
///
/// Order of use: [`VirtioNet::new`] (negotiates, lays out, pre-posts RX,
/// `DRIVER_OK`), then in every poll loop iteration the smoltcp `Interface`
/// calls `receive`/`transmit` (see [`super::phy`]) and the kernel calls
/// [`VirtioNet::flush`] once afterwards: the only register access of a TX
/// batch is that notify. RX re-posts a batch whenever it harvests and
/// notifies the RX queue only if the device asks for it (it clears
/// `VIRTQ_USED_F_NO_NOTIFY` when it has run out of buffers).
#[derive(Debug)]
pub struct VirtioNet<M: SharedMem, P: IoPorts> {
    pub(crate) mem: M,
    io: P,
    mac: [u8; 6],
    features: u32,
    layout: PoolLayout,
    rx: RxPath,
    pub(crate) tx: TxPath,
    pub(crate) frames: RxFrames,
    /// `unconstrained-io`: completed RX buffers not yet parsed (slot, frame
    /// length), parsed in place by the stack.
    #[cfg(feature = "unconstrained-io")]
    pub(crate) ready: alloc::collections::VecDeque<(u16, u32)>,
}

impl<M: SharedMem, P: IoPorts> VirtioNet<M, P> {
    /// Initialises the device (virtio 1.2 §3.1.1 with the legacy differences
    /// of §3.1.2: no `FEATURES_OK`) and lays out rings and buffers in the pool
    /// range `[start, end)`:
    ///
    /// reset → `ACKNOWLEDGE` → `DRIVER` → read features → write our subset
    /// (`MAC` required; `CSUM` if `config.tx_checksum_offload`; `ANY_LAYOUT`
    /// and `STATUS` if offered) → read the MAC → size both queues (power of
    /// two ≤ 32768, else refused) → check the range fits [`PoolLayout`] →
    /// zero and program both rings → pre-post the RX buffers → `DRIVER_OK` →
    /// one RX notify.
    ///
    /// On failure after the reset, `FAILED` is set in the status register.
    pub fn new(
        mut mem: M,
        mut io: P,
        start: usize,
        end: usize,
        config: Config,
    ) -> Result<Self, InitError> {
        if config.rx_buffers == 0 || config.tx_buffers == 0 || config.rx_private_frames == 0 {
            return Err(InitError::NoBuffers);
        }
        if start >= end || end > mem.size() {
            return Err(InitError::BadRange);
        }
        io.write8(regs::DEVICE_STATUS, 0);
        if io.read8(regs::DEVICE_STATUS) != 0 {
            return Err(InitError::ResetFailed);
        }
        io.write8(regs::DEVICE_STATUS, status::ACKNOWLEDGE);
        io.write8(regs::DEVICE_STATUS, status::ACKNOWLEDGE | status::DRIVER);
        match Self::setup(&mut mem, &mut io, start, end, config) {
            Ok((mac, features, layout, rx, tx)) => {
                io.write8(
                    regs::DEVICE_STATUS,
                    status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
                );
                // The first notify comes after DRIVER_OK (§3.1.1 / §2.7.13).
                io.write16(regs::QUEUE_NOTIFY, RX_QUEUE);
                let large = if rx.gso {
                    usize::from(config.rx_large_frames)
                } else {
                    0
                };
                let mut dev = VirtioNet {
                    mem,
                    io,
                    mac,
                    features,
                    layout,
                    rx,
                    tx,
                    frames: RxFrames::new(usize::from(config.rx_private_frames), large),
                    #[cfg(feature = "unconstrained-io")]
                    ready: alloc::collections::VecDeque::with_capacity(usize::from(
                        config.rx_private_frames,
                    )),
                };
                if super::UNCONSTRAINED_IO {
                    warn!(
                        "virtio-net: UNCONSTRAINED I/O (measurement build): RX frames are parsed in the shared pool and device fields are not validated; NOT SECURE"
                    );
                }
                dev.rx.notifies += 1;
                Ok(dev)
            }
            Err(e) => {
                io.write8(
                    regs::DEVICE_STATUS,
                    status::ACKNOWLEDGE | status::DRIVER | status::FAILED,
                );
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn setup(
        mem: &mut M,
        io: &mut P,
        start: usize,
        end: usize,
        config: Config,
    ) -> Result<([u8; 6], u32, PoolLayout, RxPath, TxPath), InitError> {
        let offered = io.read32(regs::DEVICE_FEATURES);
        if offered & features::NET_F_MAC == 0 {
            return Err(InitError::MissingFeature(features::NET_F_MAC));
        }
        let mut wanted = features::NET_F_MAC | features::F_ANY_LAYOUT | features::NET_F_STATUS;
        if config.tx_checksum_offload {
            wanted |= features::NET_F_CSUM;
        }
        if config.rx_checksum_offload {
            wanted |= features::NET_F_GUEST_CSUM;
        }
        if config.tso_buffers > 0 && config.tx_checksum_offload {
            wanted |= features::NET_F_HOST_TSO4;
        }
        // Large receive gathers frames into private memory; the measurement
        // build that parses in the pool cannot, so it goes without.
        if config.rx_large_frames > 0 && config.rx_checksum_offload && !super::UNCONSTRAINED_IO {
            wanted |= features::NET_F_MRG_RXBUF | features::NET_F_GUEST_TSO4;
        }
        let mut negotiated = offered & wanted;
        // TSO needs TX checksum offload, GUEST_TSO4 RX checksum offload
        // (virtio 1.2 §5.1.3.1); large frames need merged buffers here (no
        // 64 KiB receive buffers in the pool), and merged buffers a free
        // descriptor layout (the header shares the first buffer).
        if negotiated & features::NET_F_CSUM == 0 {
            negotiated &= !features::NET_F_HOST_TSO4;
        }
        if negotiated & features::F_ANY_LAYOUT == 0 {
            negotiated &= !features::NET_F_MRG_RXBUF;
        }
        if negotiated & features::NET_F_GUEST_CSUM == 0
            || negotiated & features::NET_F_MRG_RXBUF == 0
        {
            negotiated &= !features::NET_F_GUEST_TSO4;
        }
        let merge = negotiated & features::NET_F_MRG_RXBUF != 0;
        let hdr_len = if merge { NET_HDR_MRG_LEN } else { NET_HDR_LEN };
        io.write32(regs::GUEST_FEATURES, negotiated);

        let mut mac = [0u8; 6];
        for (i, b) in mac.iter_mut().enumerate() {
            *b = io.read8(regs::NET_MAC + i as u16);
        }
        // Multicast bit (includes broadcast): smoltcp panics on such an
        // address, and it is not a station address anyway.
        if mac[0] & 1 != 0 {
            return Err(InitError::BadMac(mac));
        }

        let mut sizes = [0u16; 2];
        for (q, size) in [RX_QUEUE, TX_QUEUE].into_iter().zip(sizes.iter_mut()) {
            io.write16(regs::QUEUE_SELECT, q);
            *size = io.read16(regs::QUEUE_SIZE);
            if super::RingLayout::new(*size).is_none() {
                return Err(InitError::BadQueueSize {
                    queue: q,
                    size: *size,
                });
            }
        }
        let chained = negotiated & features::F_ANY_LAYOUT == 0;
        let cap = |size: u16| if chained { size / 2 } else { size }.max(1);
        let rx_n = config.rx_buffers.min(cap(sizes[0]));
        // With TSO, each TSO buffer takes the room of TSO_BUF_SLOTS small
        // ones (an even number stays, so the TSO buffers start page aligned
        // and the pool use does not grow). At least 16 small buffers remain
        // (ACKs, HTTP), else no TSO.
        let tso_room = config.tso_buffers.saturating_mul(TSO_BUF_SLOTS);
        let tso_n = if negotiated & features::NET_F_HOST_TSO4 != 0
            && config.tx_buffers >= tso_room.saturating_add(16)
        {
            config.tso_buffers
        } else {
            0
        };
        let small_n = if tso_n > 0 {
            (config.tx_buffers - tso_room) & !1
        } else {
            config.tx_buffers
        };
        let tx_n = small_n.min(cap(sizes[1]).saturating_sub(tso_n)).max(1);
        let layout = PoolLayout::new(start, sizes[0], sizes[1], rx_n, tx_n, tso_n)
            .ok_or(InitError::BadRange)?;
        if layout.end > end {
            return Err(InitError::PoolTooSmall {
                needed: layout.bytes(),
                available: end.saturating_sub(layout.rx_ring),
            });
        }

        // Rings: page aligned and contiguous in device address space (the
        // device only gets a PFN); buffers: every page page aligned, so no
        // 2 KiB slot straddles two device pages.
        let mut pfns = [0u32; 2];
        let rings = [
            (layout.rx_ring, layout.rx_ring_layout),
            (layout.tx_ring, layout.tx_ring_layout),
        ];
        for ((ring, rl), pfn) in rings.into_iter().zip(pfns.iter_mut()) {
            let base = mem.device_addr(ring);
            if base % PAGE_SIZE as u64 != 0 {
                return Err(InitError::RingNotContiguous);
            }
            for page in (0..rl.bytes).step_by(PAGE_SIZE) {
                if mem.device_addr(ring + page) != base + page as u64 {
                    return Err(InitError::RingNotContiguous);
                }
            }
            *pfn = u32::try_from(base >> 12).map_err(|_| InitError::AddressTooHigh)?;
        }
        for page in (layout.rx_bufs..layout.end).step_by(PAGE_SIZE) {
            if mem.device_addr(page) % PAGE_SIZE as u64 != 0 {
                return Err(InitError::RingNotContiguous);
            }
        }

        // With merged buffers only a frame's first buffer has a header; the
        // driver checks that one's length itself.
        let mut rxq = Queue::new(
            mem,
            RX_QUEUE,
            layout.rx_ring,
            layout.rx_ring_layout,
            rx_n,
            chained,
            if merge { 1 } else { hdr_len as u32 },
        );
        let txq = Queue::new(
            mem,
            TX_QUEUE,
            layout.tx_ring,
            layout.tx_ring_layout,
            tx_n + tso_n,
            chained,
            0,
        );
        for slot in 0..rxq.slots() {
            let off = layout.rx_bufs + usize::from(slot) * BUF_SIZE;
            let addr = mem.device_addr(off);
            rxq.post(mem, slot, addr, hdr_len as u32, BUF_SIZE as u32, true);
        }
        rxq.publish(mem);
        for (q, pfn) in [RX_QUEUE, TX_QUEUE].into_iter().zip(pfns) {
            io.write16(regs::QUEUE_SELECT, q);
            io.write32(regs::QUEUE_PFN, pfn);
        }
        let rx = RxPath {
            repost: Vec::with_capacity(usize::from(rxq.slots())),
            hdr_len,
            gso: negotiated & features::NET_F_GUEST_TSO4 != 0,
            queue: rxq,
            bufs: layout.rx_bufs,
            guard: Guard::default(),
            packets: 0,
            bytes: 0,
            notifies: 0,
        };
        let tx = TxPath {
            free: FreeSlots {
                small: tx_n,
                free: (0..tx_n).rev().collect(),
                tso: (tx_n..tx_n + tso_n).rev().collect(),
            },
            tso_bufs: layout.tso_bufs,
            tso: tso_n > 0,
            hdr_len,
            queue: txq,
            bufs: layout.tx_bufs,
            offload: negotiated & features::NET_F_CSUM != 0,
            rx_offload: negotiated & features::NET_F_GUEST_CSUM != 0,
            dirty: false,
            scratch: vec![0; MAX_FRAME],
            guard: Guard::default(),
            packets: 0,
            bytes: 0,
            ring_full: 0,
            notifies: 0,
        };
        Ok((mac, negotiated, layout, rx, tx))
    }

    /// The device's MAC address (validated unicast).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The negotiated feature bits.
    pub fn features(&self) -> u32 {
        self.features
    }

    /// Whether TX checksum offload (`VIRTIO_NET_F_CSUM`) was negotiated.
    pub fn tx_checksum_offload(&self) -> bool {
        self.tx.offload
    }

    /// Whether RX checksum offload (`VIRTIO_NET_F_GUEST_CSUM`) was
    /// negotiated: TCP/UDP checksums of received frames are not verified.
    pub fn rx_checksum_offload(&self) -> bool {
        self.tx.rx_offload
    }

    /// Whether large receive is in use (`VIRTIO_NET_F_MRG_RXBUF` and
    /// `VIRTIO_NET_F_GUEST_TSO4` negotiated, private large frames allocated).
    pub fn large_receive(&self) -> bool {
        self.frames.large_enabled()
    }

    /// Whether TCP segmentation offload is in use (`VIRTIO_NET_F_HOST_TSO4`
    /// negotiated and TSO buffers laid out).
    pub fn tso(&self) -> bool {
        self.tx.tso
    }

    /// Where rings and buffers are in the pool.
    pub fn layout(&self) -> &PoolLayout {
        &self.layout
    }

    /// The pool handle.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// The register block.
    pub fn io(&self) -> &P {
        &self.io
    }

    /// Link state from the configuration `status` field (one register read;
    /// `true` if `VIRTIO_NET_F_STATUS` was not negotiated). Host-controlled,
    /// so informational only.
    pub fn link_up(&mut self) -> bool {
        if self.features & features::NET_F_STATUS == 0 {
            return true;
        }
        self.io.read16(regs::NET_STATUS) & 1 != 0
    }

    /// This driver's counters.
    pub fn stats(&self) -> DriverStats {
        DriverStats {
            rx_packets: self.rx.packets,
            rx_bytes: self.rx.bytes,
            tx_packets: self.tx.packets,
            tx_bytes: self.tx.bytes,
            ring_violations: self.rx.guard.count + self.tx.guard.count,
            tx_ring_full: self.tx.ring_full,
            rx_notifies: self.rx.notifies,
            tx_notifies: self.tx.notifies,
        }
    }

    /// Frames copied out and not yet taken by the stack.
    pub fn rx_queued(&self) -> usize {
        self.frames.len()
    }

    /// Free TX buffers (without reclaiming).
    pub fn tx_free(&self) -> usize {
        self.tx.free.free.len()
    }

    /// Harvests the RX used ring into private frames (at most as many as
    /// there are free private buffers), then re-posts the batch's buffers and
    /// notifies the RX queue if the device wants it. Called by `receive`
    /// when no copied frame is waiting; the kernel may call it too.
    ///
    /// Each completion: id/len validated by the queue. A frame's first buffer:
    /// its header (10 bytes, 12 with `MRG_RXBUF`) is read once into a local
    /// and checked (`NEEDS_CSUM` only with `GUEST_CSUM`, GSO only TCPv4 with
    /// `GUEST_TSO4`, `num_buffers` in 1..=[`MAX_MERGE`]); then the bytes after
    /// it are copied into a private frame, and a merged frame's further
    /// buffers are appended whole (at most [`MAX_LARGE_FRAME`] in all). A
    /// buffer whose completion was refused for its length or header is
    /// re-posted without its contents being read.
    pub fn poll_rx(&mut self) -> usize {
        #[cfg(feature = "unconstrained-io")]
        return self.poll_rx_in_place();
        #[cfg(not(feature = "unconstrained-io"))]
        self.poll_rx_copy()
    }

    /// `unconstrained-io`: takes completed RX buffers as they are (no header
    /// or length checks, no copy) into `ready`; the stack parses them in the
    /// pool. Buffers parsed since the last call are re-posted first.
    #[cfg(feature = "unconstrained-io")]
    fn poll_rx_in_place(&mut self) -> usize {
        let room = self.ready.capacity() - self.ready.len();
        let ready = &mut self.ready;
        let mut delivered = 0;
        self.rx.queue.harvest(&self.mem, room, |u| {
            if let Used::Done { slot, len } = u {
                ready.push_back((slot, len.saturating_sub(NET_HDR_LEN as u32)));
                delivered += 1;
            }
        });
        self.repost_rx();
        delivered
    }

    /// `unconstrained-io`: the next frame to parse in place: its pool offset
    /// and length. Its buffer is re-posted at the next harvest (after the
    /// stack is done with it).
    #[cfg(feature = "unconstrained-io")]
    pub(crate) fn next_in_place(&mut self) -> Option<(usize, usize)> {
        if self.ready.is_empty() {
            self.poll_rx_in_place();
        }
        let (slot, len) = self.ready.pop_front()?;
        self.rx.repost.push(slot);
        let len = len as usize;
        self.rx.packets += 1;
        self.rx.bytes += len as u64;
        METRICS.rx_packets.inc();
        METRICS.rx_bytes.add(len as u64);
        Some((
            self.rx.bufs + usize::from(slot) * BUF_SIZE + NET_HDR_LEN,
            len,
        ))
    }

    #[cfg(not(feature = "unconstrained-io"))]
    fn poll_rx_copy(&mut self) -> usize {
        let mem = &self.mem;
        let frames = &mut self.frames;
        let rx = &mut self.rx;
        let (bufs, hdr_len) = (rx.bufs, rx.hdr_len);
        // `MRG_RXBUF` (12-byte header): a frame may span buffers.
        let merge = hdr_len == NET_HDR_MRG_LEN;
        let repost = &mut rx.repost;
        let guard = &mut rx.guard;
        let (packets, bytes) = (&mut rx.packets, &mut rx.bytes);
        // Without GUEST_CSUM a partial checksum is a protocol violation; a
        // GSO frame only with GUEST_TSO4 (then a TCPv4 one).
        let bad_flags = if self.tx.rx_offload {
            0
        } else {
            NET_HDR_F_NEEDS_CSUM
        };
        let gso_ok = |t: u8| t == NET_HDR_GSO_NONE || (rx.gso && t == NET_HDR_GSO_TCPV4);
        let mut delivered = 0;
        let mut copied = 0u64;
        if !frames.can_take() {
            return 0;
        }
        // One completion at a time while there is room for whatever it turns
        // out to be (`can_take`); a merged frame's later buffers go on into
        // its large slot, across batches if the device published them late.
        rx.queue.harvest_while(mem, usize::MAX, |u| {
            match u {
                Used::Done { slot, len } => {
                    let off = bufs + usize::from(slot) * BUF_SIZE;
                    // len ≤ BUF_SIZE (what was posted): validated by the queue.
                    let len = len as usize;
                    if frames.pending.is_some() {
                        // A continuation buffer: frame bytes only. (It always
                        // fits: num_buffers ≤ MAX_MERGE buffers of ≤ BUF_SIZE;
                        // should it not, the frame is dropped, not stuck.)
                        if let Some(buf) = frames.large_next(len) {
                            mem.read_bytes(off, buf);
                            copied += len as u64;
                        } else if let Some((num_buffers, bytes)) = frames.abandon_large() {
                            guard.report(Violation::RxMerge { num_buffers, bytes });
                        }
                        if let Some((num_buffers, total)) = frames.large_done() {
                            if total > MAX_LARGE_FRAME {
                                frames.abandon_large();
                                guard.report(Violation::RxMerge {
                                    num_buffers,
                                    bytes: total,
                                });
                            } else {
                                frames.commit_large();
                                delivered += 1;
                                METRICS.rx_merged_frames.inc();
                            }
                        }
                    } else if len < hdr_len {
                        guard.report(Violation::LengthTooShort {
                            queue: RX_QUEUE,
                            id: u32::from(slot),
                            len: len as u32,
                        });
                    } else {
                        // The header, read once into private memory, then
                        // the frame bytes after it: one read per byte.
                        let mut hdr = [0u8; NET_HDR_MRG_LEN];
                        mem.read_bytes(off, &mut hdr[..hdr_len]);
                        let (flags, gso_type) = (hdr[0], hdr[1]);
                        let num_buffers = if merge {
                            u16::from_le_bytes([hdr[10], hdr[11]])
                        } else {
                            1
                        };
                        let frame_len = len - hdr_len;
                        if flags & bad_flags != 0 || !gso_ok(gso_type) {
                            guard.report(Violation::RxHeader { flags, gso_type });
                        } else if num_buffers == 0
                            || num_buffers > MAX_MERGE
                            || (num_buffers > 1 && !frames.large_enabled())
                        {
                            guard.report(Violation::RxMerge {
                                num_buffers,
                                bytes: frame_len,
                            });
                        } else if num_buffers == 1 {
                            if frame_len > 0 {
                                let (s, buf) = frames.small_slot(frame_len);
                                mem.read_bytes(off + hdr_len, buf);
                                frames.commit_small(s, frame_len);
                                delivered += 1;
                                copied += frame_len as u64;
                            }
                        } else {
                            frames.start_large(num_buffers);
                            // Its first buffer: the bytes after the header.
                            if let Some(buf) = frames.large_next(frame_len) {
                                mem.read_bytes(off + hdr_len, buf);
                                copied += frame_len as u64;
                            }
                        }
                    }
                    repost.push(slot);
                }
                Used::Reclaimed { slot, violation } => {
                    guard.report(violation);
                    repost.push(slot);
                    if let Some((num_buffers, bytes)) = frames.abandon_large() {
                        guard.report(Violation::RxMerge { num_buffers, bytes });
                    }
                }
                Used::Refused(violation) => {
                    guard.report(violation);
                    if let Some((num_buffers, bytes)) = frames.abandon_large() {
                        guard.report(Violation::RxMerge { num_buffers, bytes });
                    }
                }
            }
            frames.can_take()
        });
        if delivered > 0 || copied > 0 {
            *packets += delivered as u64;
            *bytes += copied;
            METRICS.rx_packets.add(delivered as u64);
            METRICS.rx_bytes.add(copied);
            METRICS.rx_copy_bytes.add(copied);
        }
        self.repost_rx();
        delivered
    }

    /// Re-posts the RX buffers taken back since the last call, and notifies
    /// the RX queue if the device wants it.
    fn repost_rx(&mut self) {
        if !self.rx.repost.is_empty() {
            for i in 0..self.rx.repost.len() {
                let slot = self.rx.repost[i];
                let off = self.rx.bufs + usize::from(slot) * BUF_SIZE;
                let addr = self.mem.device_addr(off);
                self.rx.queue.post(
                    &mut self.mem,
                    slot,
                    addr,
                    self.rx.hdr_len as u32,
                    BUF_SIZE as u32,
                    true,
                );
            }
            self.rx.repost.clear();
            self.rx.queue.publish(&mut self.mem);
            if self.rx.queue.wants_notify(&self.mem) {
                self.io.write16(regs::QUEUE_NOTIFY, RX_QUEUE);
                self.rx.notifies += 1;
            }
        }
    }

    /// End of a poll loop iteration: reclaims completed TX buffers and, if
    /// frames were posted since the last call and the device has not set
    /// `VIRTQ_USED_F_NO_NOTIFY`, does the single TX notify for the batch.
    /// Returns whether it notified.
    pub fn flush(&mut self) -> bool {
        self.tx.reclaim(&self.mem);
        if !self.tx.dirty {
            return false;
        }
        self.tx.dirty = false;
        if self.tx.queue.wants_notify(&self.mem) {
            self.io.write16(regs::QUEUE_NOTIFY, TX_QUEUE);
            self.tx.notifies += 1;
            return true;
        }
        false
    }

    /// Sends one frame built by `f` (the same path as the smoltcp TX token).
    /// `None` (counted in `tx_ring_full`) if no TX buffer is free.
    pub fn send<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        if !self.tx.has_free(&self.mem) {
            self.tx.count_full();
            return None;
        }
        Some(self.tx.send(&mut self.mem, len, None, f))
    }

    /// Takes the oldest received frame (harvesting first if none is queued)
    /// and hands it to `f`.
    pub fn recv<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        if self.frames.is_empty() {
            self.poll_rx();
        }
        if self.frames.is_empty() {
            return None;
        }
        let r = f(self.frames.front());
        self.frames.pop();
        Some(r)
    }

    #[cfg(test)]
    pub(crate) fn rx_device_owns(&self, slot: u16) -> bool {
        self.rx.queue.device_owns(slot)
    }

    #[cfg(test)]
    pub(crate) fn rx_outstanding(&self) -> u16 {
        self.rx.queue.outstanding()
    }

    #[cfg(test)]
    pub(crate) fn tx_outstanding(&self) -> u16 {
        self.tx.queue.outstanding()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use alloc::vec;
    use alloc::vec::Vec;

    use super::*;
    use crate::virtio::fake::{BASE_ADDR, FakeDev, FakeMem};
    use crate::virtio::features::{F_ANY_LAYOUT, NET_F_CSUM, NET_F_MAC, NET_F_STATUS};

    /// MRG_RXBUF (15), GUEST_CSUM (1), HOST_TSO4 (11), EVENT_IDX (29) are
    /// offered too and must not be taken (GUEST_CSUM only when the config
    /// asks for it; the tests' `cfg` does not).
    pub(crate) const OFFERED: u32 = NET_F_MAC
        | NET_F_CSUM
        | F_ANY_LAYOUT
        | NET_F_STATUS
        | (1 << 15)
        | (1 << 1)
        | (1 << 11)
        | (1 << 29);
    const POOL: usize = 2 << 20;

    pub(crate) struct Rig {
        pub(crate) drv: VirtioNet<FakeMem, FakeDev>,
        pub(crate) dev: FakeDev,
        pub(crate) mem: FakeMem,
        pub(crate) start: usize,
        pub(crate) end: usize,
    }

    pub(crate) fn cfg(rx: u16, tx: u16, private: u16, csum: bool) -> Config {
        Config {
            rx_buffers: rx,
            tx_buffers: tx,
            rx_private_frames: private,
            tx_checksum_offload: csum,
            rx_checksum_offload: false,
            tso_buffers: 0,
            rx_large_frames: 0,
        }
    }

    /// A driver on a fake device, its range exactly as large as needed
    /// (starting unaligned, 100 bytes into page 3).
    pub(crate) fn rig(offered: u32, sizes: [u16; 2], config: Config, mac: [u8; 6]) -> Rig {
        let mem = FakeMem::new(POOL);
        let dev = FakeDev::new(mem.clone(), offered, sizes);
        dev.st.borrow_mut().mac = mac;
        let start = 3 * PAGE_SIZE + 100;
        let layout = PoolLayout::new(
            start,
            sizes[0],
            sizes[1],
            config.rx_buffers,
            config.tx_buffers,
            0,
        )
        .unwrap();
        // With TSO the small TX buffers make room for the TSO ones; the page
        // alignment before them may need one more page.
        let end = layout.end + PAGE_SIZE * usize::from(config.tso_buffers > 0);
        let drv = VirtioNet::new(mem.clone(), dev.clone(), start, end, config).unwrap();
        for q in 0..2 {
            let (base, l) = dev.ring(q);
            mem.exempt(base + l.used, 4);
        }
        Rig {
            drv,
            dev,
            mem,
            start,
            end,
        }
    }

    fn std_rig() -> Rig {
        rig(
            OFFERED,
            [16, 16],
            cfg(8, 8, 4, true),
            [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        )
    }

    /// A recognisable non-IP frame.
    pub(crate) fn frame(n: u32, len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len.max(18)];
        f[..6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x88, 0xb5]);
        f[14..18].copy_from_slice(&n.to_be_bytes());
        for (i, b) in f[18..].iter_mut().enumerate() {
            *b = (n as usize).wrapping_mul(31).wrapping_add(i) as u8;
        }
        f
    }

    /// The invariants every test ends with: nothing read twice, no driver
    /// write outside its range, no protocol error seen by the device.
    pub(crate) fn check_invariants(r: &Rig) {
        assert_eq!(
            r.mem.over_reads(),
            0,
            "a device-written byte was read twice"
        );
        let (lo, hi) = r.mem.written().unwrap();
        assert!(
            lo >= r.start && hi <= r.end,
            "wrote {lo:#x}..{hi:#x} outside {:#x}..{:#x}",
            r.start,
            r.end
        );
        assert!(r.dev.errors().is_empty(), "{:?}", r.dev.errors());
    }

    /// Honest traffic in both directions, `rounds` frames each way.
    pub(crate) fn prove_working(r: &mut Rig, first: u32, rounds: u32) {
        for n in first..first + rounds {
            let f = frame(n, 60 + (n as usize * 37) % 1400);
            assert!(r.dev.inject_rx(&f), "device has no RX buffer at frame {n}");
            assert_eq!(
                r.drv.recv(|b| b.to_vec()).as_deref(),
                Some(&f[..]),
                "frame {n}"
            );
            let out = frame(n | 0x8000_0000, 1514);
            r.drv
                .send(out.len(), |b| b.copy_from_slice(&out))
                .expect("TX buffer");
            r.drv.flush();
            let (hdr, sent) = r.dev.take_tx().expect("frame on the wire");
            assert_eq!(hdr, [0; NET_HDR_LEN]);
            assert_eq!(sent, out);
        }
        assert!(r.drv.recv(|_| ()).is_none());
        check_invariants(r);
    }

    #[test]
    fn init_negotiates_and_programs_rings() {
        let r = std_rig();
        let st = r.dev.st.borrow();
        assert_eq!(st.status_log, [0, 1, 3, 7]);
        assert_eq!(
            st.guest_features,
            NET_F_MAC | NET_F_CSUM | F_ANY_LAYOUT | NET_F_STATUS
        );
        assert_eq!(r.drv.features(), st.guest_features);
        assert!(r.drv.tx_checksum_offload());
        assert_eq!(r.drv.mac(), st.mac);
        // The first notify is RX, after DRIVER_OK.
        let first_notify = st
            .log
            .iter()
            .position(|e| e.1 == regs::QUEUE_NOTIFY)
            .unwrap();
        let driver_ok = st
            .log
            .iter()
            .position(|e| *e == (true, regs::DEVICE_STATUS, 7))
            .unwrap();
        assert!(first_notify > driver_ok);
        assert_eq!(st.log[first_notify], (true, regs::QUEUE_NOTIFY, 0));
        let l = *r.drv.layout();
        assert_eq!(l.rx_ring, 4 * PAGE_SIZE);
        assert_eq!(
            u64::from(st.queues[0].pfn) << 12,
            BASE_ADDR + l.rx_ring as u64
        );
        assert_eq!(
            u64::from(st.queues[1].pfn) << 12,
            BASE_ADDR + l.tx_ring as u64
        );
        drop(st);
        for (q, base) in [(0, l.rx_ring), (1, l.tx_ring)] {
            assert_eq!(
                r.mem.peek_u16(base + l.rx_ring_layout.avail),
                1,
                "q{q} NO_INTERRUPT"
            );
        }
        assert_eq!(
            r.mem.peek_u16(l.rx_ring + l.rx_ring_layout.avail + 2),
            8,
            "8 RX buffers posted"
        );
        assert_eq!(r.drv.rx_outstanding(), 8);
        for slot in 0..8 {
            let d = l.rx_ring + 16 * slot;
            assert_eq!(
                r.mem.peek_u64(d),
                BASE_ADDR + (l.rx_bufs + slot * BUF_SIZE) as u64
            );
            assert_eq!(r.mem.peek_u32(d + 8), BUF_SIZE as u32);
            assert_eq!(r.mem.peek_u16(d + 12), 2, "device-writable");
        }
        assert_eq!(r.drv.tx_free(), 8);
        let mut drv = r.drv;
        assert!(drv.link_up());
        check_invariants(&Rig {
            drv,
            dev: r.dev,
            mem: r.mem,
            start: r.start,
            end: r.end,
        });
    }

    #[test]
    fn init_without_csum_or_any_layout() {
        let mut r = rig(
            NET_F_MAC | NET_F_CSUM,
            [16, 16],
            cfg(16, 16, 4, false),
            [2, 0, 0, 0, 0, 9],
        );
        assert_eq!(r.dev.st.borrow().guest_features, NET_F_MAC);
        assert!(!r.drv.tx_checksum_offload());
        assert_eq!(
            r.drv.layout().rx_buf_count,
            8,
            "two descriptors per buffer: half the ring"
        );
        assert_eq!(r.drv.layout().tx_buf_count, 8);
        assert_eq!(r.drv.rx_outstanding(), 8);
        prove_working(&mut r, 0, 200);
    }

    #[test]
    fn init_refusals() {
        let try_init =
            |offered: u32, sizes: [u16; 2], mac: [u8; 6], start: usize, end: usize, c: Config| {
                let mem = FakeMem::new(POOL);
                let dev = FakeDev::new(mem.clone(), offered, sizes);
                dev.st.borrow_mut().mac = mac;
                let res = VirtioNet::new(mem, dev.clone(), start, end, c).map(|_| ());
                (res, dev)
            };
        let good_mac = [2, 0, 0, 0, 0, 1];
        let c = cfg(8, 8, 4, true);
        for (size, q) in [
            ([0, 16], 0),
            ([3, 16], 0),
            ([16, 40000], 1),
            ([16, 65535], 1),
            ([100, 16], 0),
        ] {
            let (res, dev) = try_init(OFFERED, size, good_mac, 0, POOL, c);
            let bad = size[usize::from(q)];
            assert_eq!(
                res,
                Err(InitError::BadQueueSize {
                    queue: q,
                    size: bad
                })
            );
            assert_eq!(
                *dev.st.borrow().status_log.last().unwrap(),
                0x83,
                "FAILED set"
            );
        }
        let (res, _) = try_init(OFFERED & !NET_F_MAC, [16, 16], good_mac, 0, POOL, c);
        assert_eq!(res, Err(InitError::MissingFeature(NET_F_MAC)));
        let (res, _) = try_init(OFFERED, [16, 16], [0xff; 6], 0, POOL, c);
        assert_eq!(res, Err(InitError::BadMac([0xff; 6])));
        let (res, _) = try_init(OFFERED, [16, 16], [1, 0, 0x5e, 0, 0, 1], 0, POOL, c);
        assert!(matches!(res, Err(InitError::BadMac(_))));
        let need = crate::virtio::pool_bytes(16, 8, 8).unwrap();
        let (res, dev) = try_init(OFFERED, [16, 16], good_mac, 0, need - 1, c);
        assert_eq!(
            res,
            Err(InitError::PoolTooSmall {
                needed: need,
                available: need - 1
            })
        );
        assert!(
            dev.st.borrow().queues.iter().all(|q| q.pfn == 0),
            "no ring programmed"
        );
        let (res, _) = try_init(OFFERED, [16, 16], good_mac, 0, need, c);
        assert_eq!(res, Ok(()));
        // 32768-entry rings are accepted but need their memory.
        let (res, _) = try_init(OFFERED, [32768, 16], good_mac, 0, 512 * 1024, c);
        assert!(matches!(res, Err(InitError::PoolTooSmall { .. })));
        let (res, _) = try_init(OFFERED, [16, 16], good_mac, 10, 5, c);
        assert_eq!(res, Err(InitError::BadRange));
        let (res, _) = try_init(OFFERED, [16, 16], good_mac, 0, POOL + 1, c);
        assert_eq!(res, Err(InitError::BadRange));
        let (res, _) = try_init(OFFERED, [16, 16], good_mac, 0, POOL, cfg(0, 8, 4, true));
        assert_eq!(res, Err(InitError::NoBuffers));
        let mem = FakeMem::new(POOL);
        let dev = FakeDev::new(mem.clone(), OFFERED, [16, 16]);
        dev.st.borrow_mut().reset_sticks = true;
        assert_eq!(
            VirtioNet::new(mem, dev, 0, POOL, c).err(),
            Some(InitError::ResetFailed)
        );
    }

    #[test]
    fn happy_path_recycles_buffers_many_times() {
        let mut r = std_rig();
        // 400 frames each way through 8-buffer rings of 16: > 10× the ring.
        prove_working(&mut r, 0, 400);
        // Bursts: fill every RX buffer, then drain (4 private frames per batch).
        for round in 0..20u32 {
            let mut sent = Vec::new();
            for k in 0..8 {
                let f = frame(round * 100 + k, 64 + k as usize);
                assert!(r.dev.inject_rx(&f));
                sent.push(f);
            }
            assert!(!r.dev.inject_rx(&frame(0, 64)), "only 8 RX buffers");
            for f in &sent {
                assert_eq!(r.drv.recv(|b| b.to_vec()).as_deref(), Some(&f[..]));
            }
        }
        let s = r.drv.stats();
        assert_eq!(s.rx_packets, 400 + 160);
        assert_eq!(s.tx_packets, 400);
        assert_eq!(s.tx_bytes, 400 * 1514);
        assert_eq!(s.ring_violations, 0);
        assert!(METRICS.rx_packets.get() >= 560 && METRICS.rx_copy_bytes.get() >= s.rx_bytes);
        check_invariants(&r);
    }

    #[test]
    fn tx_batch_costs_one_notify_and_honours_no_notify() {
        let mut r = std_rig();
        r.dev.st.borrow_mut().complete_tx = false;
        r.dev.clear_log();
        for n in 0..5 {
            let f = frame(n, 100);
            r.drv.send(f.len(), |b| b.copy_from_slice(&f)).unwrap();
        }
        assert!(
            r.dev.log().is_empty(),
            "no register access while building a batch"
        );
        assert!(r.drv.flush());
        assert_eq!(r.dev.log(), [(true, regs::QUEUE_NOTIFY, 1)]);
        assert_eq!(r.dev.st.borrow().tx_out.len(), 5);
        assert!(!r.drv.flush(), "nothing new: no notify");
        // The device says it is busy polling: no notify at all.
        r.dev.clear_log();
        r.dev.set_used_flags(1, 1);
        let f = frame(9, 100);
        r.drv.send(f.len(), |b| b.copy_from_slice(&f)).unwrap();
        assert!(!r.drv.flush());
        assert!(r.dev.log().is_empty());
        r.dev.process_tx();
        r.dev.complete_pending_tx();
        r.dev.set_used_flags(1, 0);
        assert_eq!(r.drv.stats().tx_notifies, 1);
        check_invariants(&r);
    }

    #[test]
    fn rx_notifies_only_when_the_device_asks() {
        let mut r = std_rig();
        let before = r.drv.stats().rx_notifies;
        r.dev.set_used_flags(0, 1); // device: "I have buffers, don't kick"
        for n in 0..40 {
            assert!(r.dev.inject_rx(&frame(n, 80)));
            assert!(r.drv.recv(|_| ()).is_some());
        }
        assert_eq!(r.drv.stats().rx_notifies, before);
        // It ran out and clears the flag: the next re-post batch kicks once.
        for n in 0..8 {
            assert!(r.dev.inject_rx(&frame(n, 80)));
        }
        r.dev.set_used_flags(0, 0);
        r.dev.clear_log();
        assert_eq!(r.drv.poll_rx(), 4);
        assert_eq!(r.dev.log(), [(true, regs::QUEUE_NOTIFY, 0)]);
        check_invariants(&r);
    }

    #[test]
    fn tx_exhausted_when_the_device_does_not_complete() {
        let mut r = std_rig();
        r.dev.st.borrow_mut().complete_tx = false;
        for n in 0..8 {
            let f = frame(n, 200);
            assert!(r.drv.send(f.len(), |b| b.copy_from_slice(&f)).is_some());
        }
        r.drv.flush();
        let full_before = METRICS.tx_ring_full.get();
        assert!(r.drv.send(60, |_| ()).is_none());
        assert!(r.drv.send(60, |_| ()).is_none());
        assert_eq!(r.drv.stats().tx_ring_full, 2);
        assert!(METRICS.tx_ring_full.get() >= full_before + 2);
        assert_eq!(r.drv.tx_outstanding(), 8);
        r.dev.complete_pending_tx();
        r.dev.st.borrow_mut().complete_tx = true;
        r.dev.st.borrow_mut().tx_out.clear();
        prove_working(&mut r, 0, 50);
    }

    // ---- A lying device: RX ----

    #[test]
    fn rx_bogus_ids_are_skipped() {
        let mut r = std_rig();
        let v0 = METRICS.ring_violations.get();
        // Out of range of the queue, and in range but not one of our 8 slots.
        for id in [16, 1000, u32::MAX, 9, 15] {
            r.dev.push_used(0, id, 70);
        }
        // Refused entries take no private frame: one poll refuses all five
        // (a batch is bounded by the outstanding buffers).
        assert!(r.drv.recv(|_| ()).is_none());
        assert_eq!(r.drv.stats().ring_violations, 5);
        assert!(r.drv.recv(|_| ()).is_none());
        assert_eq!(r.drv.stats().ring_violations, 5);
        assert!(METRICS.ring_violations.get() >= v0 + 5);
        assert_eq!(r.drv.rx_outstanding(), 8, "no buffer taken back");
        prove_working(&mut r, 0, 40);
    }

    #[test]
    fn rx_duplicate_completion_is_refused() {
        let mut r = std_rig();
        let f = frame(1, 90);
        let head = r.dev.inject_rx_with(&[0; NET_HDR_LEN], &f, None).unwrap();
        r.dev.push_used(0, u32::from(head), 90); // the same buffer again
        assert_eq!(r.drv.recv(|b| b.to_vec()).as_deref(), Some(&f[..]));
        assert!(r.drv.recv(|_| ()).is_none());
        assert_eq!(r.drv.stats().ring_violations, 1);
        assert_eq!(r.drv.rx_outstanding(), 8, "re-posted once");
        // And again later, when it is long completed and re-posted: refused
        // only if it is not outstanding; here it is outstanding again, so the
        // device may complete it (with whatever bytes are there).
        prove_working(&mut r, 10, 40);
    }

    #[test]
    fn rx_bad_lengths_recycle_without_reading() {
        let mut r = std_rig();
        let f = frame(2, 100);
        for len in [4096u32, 2049, u32::MAX, 0, 9] {
            let head = r
                .dev
                .inject_rx_with(&[0; NET_HDR_LEN], &f, Some(len))
                .unwrap();
            assert!(r.drv.recv(|_| ()).is_none(), "len {len}");
            assert!(r.drv.rx_device_owns(head), "re-posted");
            let slot_off = r.drv.layout().rx_bufs + usize::from(head) * BUF_SIZE;
            assert_eq!(
                r.mem.reads_at(slot_off),
                0,
                "buffer of a refused completion never read"
            );
        }
        assert_eq!(r.drv.stats().ring_violations, 5);
        // Header only: not a violation, nothing delivered.
        r.dev.inject_rx_with(&[0; NET_HDR_LEN], &[], None).unwrap();
        assert!(r.drv.recv(|_| ()).is_none());
        assert_eq!(r.drv.stats().ring_violations, 5);
        prove_working(&mut r, 0, 40);
    }

    #[test]
    fn rx_header_garbage() {
        let mut r = std_rig();
        let f = frame(3, 100);
        for hdr in [
            [1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            [0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            [0xff; 10],
        ] {
            r.dev.inject_rx_with(&hdr, &f, None).unwrap();
            assert!(r.drv.recv(|_| ()).is_none());
        }
        assert_eq!(r.drv.stats().ring_violations, 3);
        // DATA_VALID (which a tap backend may set) and junk in the other
        // fields are ignored: checksums are verified by the stack anyway.
        r.dev
            .inject_rx_with(&[2, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4], &f, None)
            .unwrap();
        assert_eq!(r.drv.recv(|b| b.to_vec()).as_deref(), Some(&f[..]));
        prove_working(&mut r, 0, 40);
    }

    /// A rig with large receive: `MRG_RXBUF`, `GUEST_TSO4`, `GUEST_CSUM`.
    fn large_rx_rig(large: u16) -> Rig {
        let mut c = cfg(64, 16, 8, true);
        c.rx_checksum_offload = true;
        c.rx_large_frames = large;
        rig(
            OFFERED
                | features::NET_F_GUEST_CSUM
                | features::NET_F_MRG_RXBUF
                | features::NET_F_GUEST_TSO4,
            [64, 16],
            c,
            [2, 0, 0, 0, 0, 1],
        )
    }

    /// Frames of every size, merged or not, then a TX frame with its 12-byte
    /// header: the driver still works.
    fn prove_working_merged(r: &mut Rig, first: u32, rounds: u32) {
        for n in first..first + rounds {
            let len = [60, 1514, 2037, 2038, 4000, 30_000, 65_549][n as usize % 7];
            let f = frame(n, len);
            let gso = if len > 1514 { NET_HDR_GSO_TCPV4 } else { 0 };
            assert!(
                r.dev.inject_rx_merged(1, gso, &f, None).is_some(),
                "frame {n}"
            );
            assert_eq!(
                r.drv.recv(|b| b.to_vec()).as_deref(),
                Some(&f[..]),
                "frame {n} ({len} bytes)"
            );
            let out = frame(n | 0x8000_0000, 1514);
            r.drv
                .send(out.len(), |b| b.copy_from_slice(&out))
                .expect("TX buffer");
            r.drv.flush();
            let (hdr, got) = r.dev.take_tx().expect("sent");
            assert_eq!((hdr, got), ([0; NET_HDR_LEN], out));
        }
        assert!(r.dev.errors().is_empty(), "{:?}", r.dev.errors());
        check_invariants(r);
    }

    #[test]
    fn large_receive_gathers_merged_buffers() {
        let mut r = large_rx_rig(2);
        let want = features::NET_F_MRG_RXBUF | features::NET_F_GUEST_TSO4;
        assert_eq!(r.drv.features() & want, want);
        prove_working_merged(&mut r, 0, 30);
        assert_eq!(r.drv.stats().ring_violations, 0);
        // Several large frames in one batch, more than the private large
        // frames: taken in order over several polls, none lost.
        let sizes = [30_000, 200, 20_000, 9_000, 100, 12_000];
        for (i, len) in sizes.iter().enumerate() {
            let f = frame(100 + i as u32, *len);
            assert!(r.dev.inject_rx_merged(0, 0, &f, None).is_some());
        }
        for (i, len) in sizes.iter().enumerate() {
            let f = frame(100 + i as u32, *len);
            assert_eq!(r.drv.recv(|b| b.to_vec()).as_deref(), Some(&f[..]), "#{i}");
        }
        assert!(r.drv.recv(|_| ()).is_none());
        // Counted as copies out of the pool, header bytes excluded.
        let s = r.drv.stats();
        assert_eq!(s.ring_violations, 0);
        assert!(s.rx_bytes > 65_000);
        check_invariants(&r);
    }

    #[test]
    fn large_receive_refuses_lying_merge_headers() {
        let mut r = large_rx_rig(2);
        let f = frame(1, 5000); // three buffers
        // num_buffers 0, and more than any frame may span.
        for lie in [0u16, MAX_MERGE + 1, u16::MAX] {
            assert!(r.dev.inject_rx_merged(0, 0, &f, Some(lie)).is_some());
            // Its continuation buffers then look like frames with garbage
            // headers: refused or taken as (garbage) frames, never a panic.
            while r.drv.recv(|_| ()).is_some() {}
        }
        let after_lies = r.drv.stats().ring_violations;
        assert!(after_lies >= 3, "{after_lies}");
        // Says 2 buffers for a 3-buffer frame: the third becomes a "frame"
        // of its own (bytes the host chose anyway); nothing out of bounds.
        assert!(r.dev.inject_rx_merged(0, 0, &f, Some(2)).is_some());
        while r.drv.recv(|_| ()).is_some() {}
        // A refused completion in the middle of a merged frame abandons it.
        let g = frame(2, 5000);
        assert!(r.dev.inject_rx_merged(0, 0, &g, Some(4)).is_some());
        r.dev.push_used(0, 9999, 10);
        while r.drv.recv(|_| ()).is_some() {}
        assert!(r.drv.stats().ring_violations > after_lies);
        // A GSO type other than TCPv4 is refused.
        let v = r.drv.stats().ring_violations;
        assert!(r.dev.inject_rx_merged(0, 4, &frame(3, 100), None).is_some());
        assert!(r.drv.recv(|_| ()).is_none());
        assert_eq!(r.drv.stats().ring_violations, v + 1);
        prove_working_merged(&mut r, 0, 21);
    }

    #[test]
    fn large_receive_needs_any_layout_and_guest_csum() {
        // No ANY_LAYOUT: no merged buffers, so no GUEST_TSO4 either.
        let mut c = cfg(16, 8, 4, true);
        c.rx_checksum_offload = true;
        c.rx_large_frames = 2;
        let all = OFFERED | features::NET_F_MRG_RXBUF | features::NET_F_GUEST_TSO4;
        let r = rig(
            all & !features::F_ANY_LAYOUT,
            [32, 16],
            c,
            [2, 0, 0, 0, 0, 1],
        );
        assert_eq!(
            r.drv.features() & (features::NET_F_MRG_RXBUF | features::NET_F_GUEST_TSO4),
            0
        );
        // No RX checksum offload: not asked for at all.
        c.rx_checksum_offload = false;
        let r = rig(all, [32, 16], c, [2, 0, 0, 0, 0, 1]);
        assert_eq!(
            r.drv.features() & (features::NET_F_MRG_RXBUF | features::NET_F_GUEST_TSO4),
            0
        );
        // A GSO frame when GUEST_TSO4 was not negotiated: refused.
        c.rx_checksum_offload = true;
        c.rx_large_frames = 0;
        let mut r = rig(all, [32, 16], c, [2, 0, 0, 0, 0, 1]);
        assert_eq!(r.drv.features() & features::NET_F_GUEST_TSO4, 0);
        r.dev
            .inject_rx_with(&[1, 1, 0, 0, 0, 0, 0, 0, 0, 0], &frame(1, 100), None)
            .unwrap();
        assert!(r.drv.recv(|_| ()).is_none());
        assert_eq!(r.drv.stats().ring_violations, 1);
    }

    #[test]
    fn guest_csum_accepts_partial_checksums_only_when_negotiated() {
        let mut c = cfg(8, 8, 4, true);
        c.rx_checksum_offload = true;
        let mut r = rig(OFFERED, [16, 16], c, [2, 0, 0, 0, 0, 1]);
        assert!(r.drv.rx_checksum_offload());
        assert_ne!(r.drv.features() & features::NET_F_GUEST_CSUM, 0);
        let f = frame(3, 100);
        // NEEDS_CSUM (a tap backend's own segments) and DATA_VALID: taken.
        for flags in [1u8, 2, 3] {
            r.dev
                .inject_rx_with(&[flags, 0, 0, 0, 0, 0, 34, 0, 16, 0], &f, None)
                .unwrap();
            assert_eq!(r.drv.recv(|b| b.to_vec()).as_deref(), Some(&f[..]));
        }
        // GSO is still not negotiated.
        r.dev
            .inject_rx_with(&[1, 1, 0, 0, 0, 0, 0, 0, 0, 0], &f, None)
            .unwrap();
        assert!(r.drv.recv(|_| ()).is_none());
        assert_eq!(r.drv.stats().ring_violations, 1);
        // Not offered: not negotiated, and NEEDS_CSUM is refused.
        let mut r = rig(
            OFFERED & !features::NET_F_GUEST_CSUM,
            [16, 16],
            c,
            [2, 0, 0, 0, 0, 1],
        );
        assert!(!r.drv.rx_checksum_offload());
        r.dev
            .inject_rx_with(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0], &f, None)
            .unwrap();
        assert!(r.drv.recv(|_| ()).is_none());
        assert_eq!(r.drv.stats().ring_violations, 1);
        prove_working(&mut r, 0, 40);
    }

    #[test]
    fn rx_used_idx_jump_then_restore() {
        let mut r = std_rig();
        prove_working(&mut r, 0, 5);
        let true_idx = r.dev.st.borrow().queues[0].used_idx;
        r.dev.set_used_idx(0, true_idx.wrapping_add(1000));
        for _ in 0..10 {
            assert!(r.drv.recv(|_| ()).is_none());
        }
        assert_eq!(
            r.drv.stats().ring_violations,
            1,
            "counted once while it stays"
        );
        r.dev.set_used_idx(0, true_idx.wrapping_sub(3));
        assert!(r.drv.recv(|_| ()).is_none());
        assert_eq!(r.drv.stats().ring_violations, 2);
        // The device's next honest completion rewrites the true index.
        prove_working(&mut r, 100, 40);
    }

    #[test]
    fn rx_garbage_flood_then_honest_device_resyncs() {
        let mut r = std_rig();
        for _ in 0..20 {
            r.dev.push_used(0, 3, 70);
        }
        assert!(r.drv.recv(|_| ()).is_none());
        assert_eq!(r.drv.stats().ring_violations, 1);
        prove_working(&mut r, 0, 40);
    }

    #[test]
    fn rx_fields_changed_after_first_read_are_not_reread() {
        let mut r = std_rig();
        // id: honest 0..7 head, becomes another outstanding head after the read.
        let elem = r.dev.next_used_elem(0);
        let f = frame(4, 300);
        r.mem.flip_after_read(elem, &5u32.to_le_bytes());
        r.mem.flip_after_read(elem + 4, &60000u32.to_le_bytes());
        let head = r.dev.inject_rx_with(&[0; NET_HDR_LEN], &f, None).unwrap();
        assert_ne!(head, 5);
        // Header and frame bytes change after they are read, too.
        let slot_off = r.drv.layout().rx_bufs + usize::from(head) * BUF_SIZE;
        r.mem
            .flip_after_read(slot_off, &[1, 4, 0, 0, 0, 0, 0, 0, 0, 0]);
        r.mem.flip_after_read(slot_off + NET_HDR_LEN, &[0xee; 64]);
        assert_eq!(r.drv.recv(|b| b.to_vec()).as_deref(), Some(&f[..]));
        assert!(r.drv.rx_device_owns(5), "slot 5 untouched");
        assert_eq!(r.drv.stats().ring_violations, 0);
        assert_eq!(r.mem.reads_at(elem), 1);
        assert_eq!(r.mem.reads_at(elem + 4), 1);
        // used.idx: read once per poll; a flip after the read is seen as a
        // new (bogus) value at the next poll only.
        let (base, l) = r.dev.ring(0);
        let idx_off = base + l.used + 2;
        let idx = r.dev.st.borrow().queues[0].used_idx;
        r.mem
            .flip_after_read(idx_off, &idx.wrapping_add(1001).to_le_bytes());
        let g = frame(5, 70);
        assert!(r.dev.inject_rx(&g));
        assert_eq!(r.drv.recv(|b| b.to_vec()).as_deref(), Some(&g[..]));
        assert_eq!(r.drv.stats().ring_violations, 0);
        assert!(r.drv.recv(|_| ()).is_none());
        assert_eq!(r.drv.stats().ring_violations, 1);
        prove_working(&mut r, 0, 40);
    }

    // ---- A lying device: TX ----

    #[test]
    fn tx_lies_never_free_a_buffer_twice() {
        let mut r = std_rig();
        r.dev.st.borrow_mut().complete_tx = false;
        for n in 0..3 {
            let f = frame(n, 100);
            r.drv.send(f.len(), |b| b.copy_from_slice(&f)).unwrap();
        }
        r.drv.flush();
        let heads: Vec<u16> = r.dev.st.borrow().tx_pending.iter().copied().collect();
        // Ids never posted, out of range, a length longer than posted, and
        // a duplicate of an honest completion.
        // (One per poll: more entries than outstanding buffers at once would
        // be an index jump, see below.)
        for (id, len) in [
            (7, 0),
            (16, 0),
            (u32::from(heads[0]), 5000),
            (u32::from(heads[1]), 0),
        ] {
            r.dev.push_used(1, id, len);
            r.drv.flush();
        }
        r.dev.push_used(1, u32::from(heads[1]), 0);
        r.drv.flush();
        r.dev.st.borrow_mut().tx_pending.retain(|h| *h == heads[2]);
        assert_eq!(r.drv.stats().ring_violations, 4);
        assert_eq!(r.drv.tx_free(), 7);
        // Exactly 7 more sends fit: nothing was freed twice (the device
        // would also see a head posted twice).
        let mut ok = 0;
        for n in 0..12 {
            let f = frame(n, 100);
            if r.drv.send(f.len(), |b| b.copy_from_slice(&f)).is_some() {
                ok += 1;
            }
        }
        assert_eq!(ok, 7);
        r.drv.flush();
        check_invariants(&r);
        // Index jump on TX, then honest again.
        let idx = r.dev.st.borrow().queues[1].used_idx;
        r.dev.set_used_idx(1, idx.wrapping_add(1000));
        r.drv.flush();
        assert_eq!(r.drv.stats().ring_violations, 5);
        r.dev.set_used_idx(1, idx);
        r.dev.complete_pending_tx();
        r.dev.st.borrow_mut().complete_tx = true;
        r.dev.st.borrow_mut().tx_out.clear();
        prove_working(&mut r, 0, 40);
    }

    #[test]
    fn tx_header_and_descriptor() {
        let mut r = std_rig();
        r.dev.st.borrow_mut().complete_tx = false;
        let f = frame(77, 333);
        r.drv.send(f.len(), |b| b.copy_from_slice(&f)).unwrap();
        let l = *r.drv.layout();
        let head = r.mem.peek_u16(l.tx_ring + l.tx_ring_layout.avail + 4);
        let d = l.tx_ring + 16 * usize::from(head);
        let buf = l.tx_bufs + usize::from(head) * BUF_SIZE;
        assert_eq!(r.mem.peek_u64(d), BASE_ADDR + buf as u64);
        assert_eq!(r.mem.peek_u32(d + 8), (NET_HDR_LEN + 333) as u32);
        assert_eq!(
            r.mem.peek_u16(d + 12),
            0,
            "device-readable, single descriptor"
        );
        assert_eq!(
            r.mem.peek(buf, NET_HDR_LEN),
            [0; NET_HDR_LEN],
            "non-IP: no NEEDS_CSUM"
        );
        assert_eq!(r.mem.peek(buf + NET_HDR_LEN, 333), f);
        assert_eq!(
            r.mem.peek_u16(l.tx_ring + l.tx_ring_layout.avail + 2),
            1,
            "published"
        );
        check_invariants(&r);
    }

    #[test]
    fn every_lie_in_a_row_then_still_working() {
        // Many lies interleaved with traffic, in a chained (no ANY_LAYOUT) setup.
        let mut r = rig(
            NET_F_MAC,
            [32, 16],
            cfg(16, 8, 3, false),
            [2, 0, 0, 0, 0, 2],
        );
        for round in 0..30u32 {
            match round % 6 {
                0 => r.dev.push_used(0, 1 + 2 * (round % 8), 100), // odd: not a head
                1 => r.dev.push_used(0, 1000 + round, 100),
                2 => {
                    let idx = r.dev.st.borrow().queues[0].used_idx;
                    r.dev.set_used_idx(0, idx.wrapping_add(1000));
                    r.drv.poll_rx();
                    r.dev.set_used_idx(0, idx);
                }
                3 => {
                    r.dev
                        .inject_rx_with(&[0; NET_HDR_LEN], &frame(round, 80), Some(0))
                        .unwrap();
                }
                4 => {
                    r.dev
                        .inject_rx_with(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0], &frame(round, 80), None)
                        .unwrap();
                }
                _ => r.dev.push_used(1, 3, 0),
            }
            r.drv.poll_rx();
            r.drv.flush();
            prove_working(&mut r, round * 100, 12);
        }
        assert!(r.drv.stats().ring_violations >= 30);
    }

    /// Large receive under a random mix of honest merged frames and lies
    /// (wrong `num_buffers`, short or overlong lengths, bogus and duplicate
    /// ids, refused entries in the middle of a frame), many rounds: never a
    /// panic, nothing read twice or written outside the range, every frame
    /// handed up within bounds, and honest traffic afterwards still works.
    #[test]
    fn large_receive_survives_random_lies() {
        let mut r = large_rx_rig(2);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut rounds = 0;
        let mut frames_up = 0;
        for round in 0..600u32 {
            rounds += 1;
            let len = 14 + rand(20_000) as usize;
            let f = frame(round, len);
            match rand(6) {
                0 | 1 => {
                    let _ = r.dev.inject_rx_merged(0, NET_HDR_GSO_TCPV4, &f, None);
                }
                2 => {
                    let lie = rand(u64::from(MAX_MERGE) + 4) as u16;
                    let _ = r.dev.inject_rx_merged(1, 0, &f, Some(lie));
                }
                // Ids that are not ours (a completion of one of ours without
                // new data would make the tracker see stale bytes re-read).
                3 => r
                    .dev
                    .push_used(0, 64 + rand(1000) as u32, rand(5000) as u32),
                4 => {
                    // A merged frame with a bogus entry pushed after it.
                    let _ = r.dev.inject_rx_merged(0, 0, &f, Some(rand(6) as u16 + 1));
                    r.dev.push_used(0, 200 + rand(50) as u32, 64);
                }
                _ => {
                    let _ = r.dev.inject_rx_merged(0, 7, &f, None);
                }
            }
            while let Some(n) = r.drv.recv(|b| b.len()) {
                assert!(n <= MAX_LARGE_FRAME);
                frames_up += 1;
            }
            // Buffers the device was told about but never completed stay
            // with it; give them back so the ring does not run dry.
            if r.drv.rx_outstanding() < 40 {
                break;
            }
        }
        assert!(r.drv.stats().ring_violations > 50);
        assert!(
            rounds > 300 && frames_up > 100,
            "{rounds} rounds, {frames_up} frames"
        );
        // A lie may have left a merged frame waiting for buffers that never
        // come: honest frames complete it (as garbage) within MAX_MERGE
        // buffers, then everything is back to normal.
        let mut resynced = false;
        for n in 0..u32::from(MAX_MERGE) + 2 {
            let f = frame(90_000 + n, 100);
            assert!(r.dev.inject_rx_merged(0, 0, &f, None).is_some());
            let mut got = Vec::new();
            while let Some(b) = r.drv.recv(|b| b.to_vec()) {
                got.push(b);
            }
            if got.last() == Some(&f) {
                resynced = true;
                break;
            }
        }
        assert!(resynced, "the driver never got back in step");
        prove_working_merged(&mut r, 0, 14);
    }
}

//! Legacy virtio-net over the shared pool, poll mode, hostile device.
//!
//! The device (the host's virtio-net emulation) and the host that can write
//! every shared page are untrusted. This driver therefore:
//!
//! - keeps all bookkeeping (descriptor ownership, posted lengths, ring indices)
//!   in private memory and only *writes* the descriptor table and avail ring;
//! - reads every device-written value (`used.flags`, `used.idx`, `used.ring[i]`,
//!   the RX `virtio_net_hdr`) exactly once into a local and validates it before
//!   use ([`queue`] does the ring part, [`net`] the header part);
//! - copies each received frame out of the pool before anything parses it.
//!
//! Offloads, each only where the device offers it (QEMU does on a tap backend,
//! not on user networking): TX checksum (`CSUM`), RX checksum (`GUEST_CSUM`),
//! TCP segmentation (`HOST_TSO4`: 64 KiB segments from dedicated TSO buffers)
//! and large receive (`MRG_RXBUF` + `GUEST_TSO4`: a frame of up to 64 KiB
//! spread over several receive buffers, `num_buffers` validated, gathered
//! into private memory).
//!
//! Layout facts come from the virtio 1.2 specification (OASIS): split
//! virtqueues in §2.7, with the legacy contiguous layout in §2.7.2 ("Legacy
//! Interfaces: A Note on Virtqueue Layout"); the legacy PCI register block in
//! "Legacy Interfaces: A Note on PCI Device Layout" (§4.1.4.8 in virtio 1.1)
//! and the legacy initialisation in §3.1.2; the network device in §5.1
//! (header in §5.1.6, legacy framing in §5.1.6.6 "Legacy Interface: Framing
//! Requirements").
//!
//! Modules:
//! - [`queue`]: one legacy split virtqueue (layout math, posting, validated
//!   harvesting of the used ring).
//! - [`net`]: the driver, [`VirtioNet`]: initialisation, RX copy-out, TX post,
//!   batch notify.
//! - [`phy`]: smoltcp `phy::Device` for [`VirtioNet`] and the TX checksum
//!   offload helper.
//!
//! How the kernel uses it, in order:
//! 1. size the pool range with [`pool_bytes`] (or [`PoolLayout::new`]);
//! 2. [`VirtioNet::new`] with the `SharedMem`, the `IoPorts` of the device's
//!    BAR 0, the `[start, end)` pool range and a [`Config`];
//! 3. build the smoltcp `Interface` with [`VirtioNet::mac`];
//! 4. every poll loop iteration: `iface.poll(now, &mut dev, &mut sockets)`,
//!    then [`VirtioNet::flush`] (the one TX notify for the batch, if any).

// The measurement build leaves the validation and copy-out paths unused.
#![cfg_attr(feature = "unconstrained-io", allow(dead_code))]

pub mod net;
pub mod phy;
pub mod queue;

/// `true` in the `unconstrained-io` measurement build (no RX copy-out, no
/// validation of device fields). The kernel prints a warning at boot.
pub const UNCONSTRAINED_IO: bool = cfg!(feature = "unconstrained-io");

pub use net::{Config, DriverStats, VirtioNet};
pub use phy::{VirtioRxToken, VirtioTxToken};
pub use queue::RingLayout;

/// Legacy virtio-pci I/O BAR register offsets ("Legacy Interfaces: A Note on
/// PCI Device Layout", §4.1.4.8 in virtio 1.1; without MSI-X the
/// device-specific configuration follows at 0x14).
pub mod regs {
    /// Device features, bits 0..31 (u32, read-only).
    pub const DEVICE_FEATURES: u16 = 0x00;
    /// Guest (driver) features, bits 0..31 (u32).
    pub const GUEST_FEATURES: u16 = 0x04;
    /// Queue address: guest-physical address of the selected ring >> 12 (u32).
    pub const QUEUE_PFN: u16 = 0x08;
    /// Size of the selected queue (u16, read-only in legacy).
    pub const QUEUE_SIZE: u16 = 0x0C;
    /// Queue select (u16).
    pub const QUEUE_SELECT: u16 = 0x0E;
    /// Queue notify: write the queue index (u16).
    pub const QUEUE_NOTIFY: u16 = 0x10;
    /// Device status (u8).
    pub const DEVICE_STATUS: u16 = 0x12;
    /// ISR status (u8, read clears). Unused: poll mode.
    pub const ISR_STATUS: u16 = 0x13;
    /// Start of the virtio-net configuration without MSI-X: `mac[6]`.
    pub const NET_MAC: u16 = 0x14;
    /// virtio-net `status` (u16), valid only with `VIRTIO_NET_F_STATUS`.
    pub const NET_STATUS: u16 = 0x1A;
}

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest knows how to drive it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u8 = 4;
    /// Something went wrong in the guest; the driver gave up.
    pub const FAILED: u8 = 0x80;
}

/// Feature bits this driver knows (virtio 1.2 §5.1.3, §6).
pub mod features {
    /// Device handles packets with partial checksum (TX checksum offload).
    pub const NET_F_CSUM: u32 = 1 << 0;
    /// Driver handles packets with partial checksum (RX: the device may
    /// deliver `NEEDS_CSUM` frames, and sets `DATA_VALID` on checked ones).
    pub const NET_F_GUEST_CSUM: u32 = 1 << 1;
    /// Device has a MAC address in its configuration.
    pub const NET_F_MAC: u32 = 1 << 5;
    /// Driver accepts TCPv4 segments larger than the MTU (large receive;
    /// needs `NET_F_GUEST_CSUM`).
    pub const NET_F_GUEST_TSO4: u32 = 1 << 7;
    /// Driver merges receive buffers: one frame may span several, the first
    /// one's header says how many (`num_buffers`); the header is 12 bytes.
    pub const NET_F_MRG_RXBUF: u32 = 1 << 15;
    /// Device accepts TCPv4 segmentation offload (TSO) frames (needs
    /// `NET_F_CSUM`).
    pub const NET_F_HOST_TSO4: u32 = 1 << 11;
    /// Configuration `status` field is valid.
    pub const NET_F_STATUS: u32 = 1 << 16;
    /// Legacy: the device accepts any descriptor layout for header and data
    /// (without it, the header must be alone in its own descriptor, §5.1.6.6).
    pub const F_ANY_LAYOUT: u32 = 1 << 27;
}

/// The legacy `struct virtio_net_hdr` without `num_buffers` (no
/// `VIRTIO_NET_F_MRG_RXBUF`): 10 bytes, guest-endian (little endian on x86),
/// before every frame in both directions (virtio 1.2 §5.1.6).
pub const NET_HDR_LEN: usize = 10;
/// `virtio_net_hdr.flags`: the device must complete the checksum.
pub const NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `virtio_net_hdr.gso_type`: not a GSO frame.
pub const NET_HDR_GSO_NONE: u8 = 0;
/// `virtio_net_hdr.gso_type`: a TCPv4 frame the device segments into
/// `gso_size`-byte segments (TSO).
pub const NET_HDR_GSO_TCPV4: u8 = 1;
/// The legacy header with `VIRTIO_NET_F_MRG_RXBUF`: `num_buffers` (u16)
/// follows, 12 bytes in both directions.
pub const NET_HDR_MRG_LEN: usize = 12;
/// Largest frame accepted from merged receive buffers: an IPv4 datagram's
/// 65,535 bytes behind a 14-byte Ethernet header.
pub const MAX_LARGE_FRAME: usize = 65_535 + 14;
/// Most receive buffers one frame may span: enough for header and
/// [`MAX_LARGE_FRAME`] in `BUF_SIZE` buffers.
pub const MAX_MERGE: u16 = MAX_LARGE_FRAME.div_ceil(BUF_SIZE) as u16 + 1;
/// A TSO transmit buffer: header + one frame of up to 64 KiB (an IPv4
/// datagram's 65,535 bytes bound it anyway). Page aligned and contiguous.
pub const TSO_BUF_SIZE: usize = 64 * 1024;
/// Small TX slots one TSO buffer takes the room of.
pub const TSO_BUF_SLOTS: u16 = (TSO_BUF_SIZE / BUF_SIZE) as u16;

/// Largest Ethernet frame the stack sends (MTU 1500 + 14-byte header, no FCS).
pub const MAX_FRAME: usize = 1514;
/// One packet buffer slot in the pool: header + frame, rounded to 2 KiB so
/// that a slot never crosses a 4 KiB page (slots start page aligned).
pub const BUF_SIZE: usize = 2048;
/// Legacy ring alignment and the queue PFN unit.
pub const PAGE_SIZE: usize = 4096;
/// Legacy queue index of the receive queue.
pub const RX_QUEUE: u16 = 0;
/// Legacy queue index of the transmit queue.
pub const TX_QUEUE: u16 = 1;

/// Why [`VirtioNet::new`] refused the device or the memory it was given.
/// The device is left with `FAILED` set when the device was touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// The status register did not read back 0 after reset.
    ResetFailed,
    /// The device lacks a feature we require (the bit mask).
    MissingFeature(u32),
    /// The device's MAC address is multicast or broadcast (smoltcp would
    /// panic on it).
    BadMac([u8; 6]),
    /// Queue size zero, not a power of two, or above 32768 (§2.7).
    BadQueueSize {
        /// Queue index.
        queue: u16,
        /// What the device reported.
        size: u16,
    },
    /// The `[start, end)` range is empty, reversed or outside the pool.
    BadRange,
    /// The range is too small for the rings and buffers.
    PoolTooSmall {
        /// Bytes needed from the (page-aligned) start.
        needed: usize,
        /// Bytes available from the page-aligned start.
        available: usize,
    },
    /// A ring's device address is not page aligned or the ring is not
    /// contiguous in device address space.
    RingNotContiguous,
    /// A ring's address does not fit the 32-bit legacy PFN register.
    AddressTooHigh,
    /// Zero RX or TX buffers requested.
    NoBuffers,
}

/// One refused device completion. Counted in `METRICS.ring_violations`,
/// logged once per kind per driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// `used.idx` advanced by more than the number of outstanding buffers
    /// (or went backwards).
    UsedIdxJump {
        /// Queue index.
        queue: u16,
        /// Our last consumed index.
        last_used: u16,
        /// What the device wrote.
        used_idx: u16,
        /// Buffers outstanding when it was read.
        outstanding: u16,
    },
    /// `used.ring[i].id` is not below the queue size, or is not the head of
    /// one of our buffers.
    IdOutOfRange {
        /// Queue index.
        queue: u16,
        /// The id.
        id: u32,
    },
    /// `used.ring[i].id` names a buffer the device does not own (never posted,
    /// or already completed: a duplicate).
    IdNotOutstanding {
        /// Queue index.
        queue: u16,
        /// The id.
        id: u32,
    },
    /// `used.ring[i].len` is larger than what was posted for that buffer.
    LengthTooLong {
        /// Queue index.
        queue: u16,
        /// The id.
        id: u32,
        /// The length.
        len: u32,
    },
    /// `used.ring[i].len` is shorter than the virtio-net header (RX).
    LengthTooShort {
        /// Queue index.
        queue: u16,
        /// The id.
        id: u32,
        /// The length.
        len: u32,
    },
    /// The RX `virtio_net_hdr` asks for something we did not negotiate
    /// (`NEEDS_CSUM` without `GUEST_CSUM`, or a GSO type).
    RxHeader {
        /// `flags`.
        flags: u8,
        /// `gso_type`.
        gso_type: u8,
    },
    /// A merged receive frame (`VIRTIO_NET_F_MRG_RXBUF`) whose
    /// `num_buffers` is 0 or above [`MAX_MERGE`], or whose buffers add up to
    /// more than [`MAX_LARGE_FRAME`], or that a refused completion cut short.
    RxMerge {
        /// `num_buffers` of its first buffer.
        num_buffers: u16,
        /// Frame bytes gathered when it was refused.
        bytes: usize,
    },
}

impl Violation {
    /// A small number per kind, for the log-once mask.
    pub const fn kind(&self) -> u8 {
        match self {
            Violation::UsedIdxJump { .. } => 0,
            Violation::IdOutOfRange { .. } => 1,
            Violation::IdNotOutstanding { .. } => 2,
            Violation::LengthTooLong { .. } => 3,
            Violation::LengthTooShort { .. } => 4,
            Violation::RxHeader { .. } => 5,
            Violation::RxMerge { .. } => 6,
        }
    }
}

/// Where the driver puts everything inside its pool range: both rings (page
/// aligned), then the RX buffer slots, then the TX buffer slots. Offsets are
/// pool offsets. Pure arithmetic: [`PoolLayout::new`] is what the driver uses,
/// so the kernel can size the pool with the same function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLayout {
    /// Pool offset of the RX ring (page aligned).
    pub rx_ring: usize,
    /// RX ring geometry.
    pub rx_ring_layout: RingLayout,
    /// Pool offset of the TX ring (page aligned).
    pub tx_ring: usize,
    /// TX ring geometry.
    pub tx_ring_layout: RingLayout,
    /// Pool offset of RX buffer slot 0; slot `i` is at `rx_bufs + i * BUF_SIZE`.
    pub rx_bufs: usize,
    /// Number of RX buffers.
    pub rx_buf_count: u16,
    /// Pool offset of TX buffer slot 0.
    pub tx_bufs: usize,
    /// Number of TX buffers.
    pub tx_buf_count: u16,
    /// Pool offset of TSO buffer 0 (page aligned); buffer `i` is at
    /// `tso_bufs + i * TSO_BUF_SIZE`.
    pub tso_bufs: usize,
    /// Number of TSO buffers (0 without TSO).
    pub tso_buf_count: u16,
    /// One past the last byte used.
    pub end: usize,
}

impl PoolLayout {
    /// The layout starting at `start` (rounded up to a page) for the given
    /// queue sizes and buffer counts (`tso_buffers` of [`TSO_BUF_SIZE`] after
    /// the small TX buffers, page aligned). `None` if a queue size is invalid
    /// (zero, not a power of two, above 32768) or the arithmetic overflows.
    pub const fn new(
        start: usize,
        rx_queue_size: u16,
        tx_queue_size: u16,
        rx_buffers: u16,
        tx_buffers: u16,
        tso_buffers: u16,
    ) -> Option<PoolLayout> {
        let Some(rx_ring_layout) = RingLayout::new(rx_queue_size) else {
            return None;
        };
        let Some(tx_ring_layout) = RingLayout::new(tx_queue_size) else {
            return None;
        };
        let Some(rx_ring) = align_up(start, PAGE_SIZE) else {
            return None;
        };
        let Some(tx_ring) = rx_ring.checked_add(rx_ring_layout.bytes) else {
            return None;
        };
        let Some(rx_bufs) = tx_ring.checked_add(tx_ring_layout.bytes) else {
            return None;
        };
        let Some(tx_bufs) = rx_bufs.checked_add(rx_buffers as usize * BUF_SIZE) else {
            return None;
        };
        let Some(tx_end) = tx_bufs.checked_add(tx_buffers as usize * BUF_SIZE) else {
            return None;
        };
        let (tso_bufs, end) = if tso_buffers == 0 {
            (tx_end, tx_end)
        } else {
            let Some(tso_bufs) = align_up(tx_end, PAGE_SIZE) else {
                return None;
            };
            let Some(end) = tso_bufs.checked_add(tso_buffers as usize * TSO_BUF_SIZE) else {
                return None;
            };
            (tso_bufs, end)
        };
        Some(PoolLayout {
            rx_ring,
            rx_ring_layout,
            tx_ring,
            tx_ring_layout,
            rx_bufs,
            rx_buf_count: rx_buffers,
            tx_bufs,
            tx_buf_count: tx_buffers,
            tso_bufs,
            tso_buf_count: tso_buffers,
            end,
        })
    }

    /// Bytes used from the page-aligned start.
    pub const fn bytes(&self) -> usize {
        self.end - self.rx_ring
    }
}

/// Bytes of pool the driver needs, from a page-aligned `start`, when both
/// queues have `queue_size` entries and it keeps `rx_buffers` RX and
/// `tx_buffers` TX buffers (each at most the queue size; half of it if the
/// device lacks `VIRTIO_F_ANY_LAYOUT`, since each buffer then takes two
/// descriptors). Add `PAGE_SIZE - 1` if `start` may be unaligned.
///
/// For queue size 256 and 256 + 256 buffers: 2 × 12 KiB of rings + 512 × 2 KiB
/// of buffers = 1,073,152 bytes (262 pages).
pub const fn pool_bytes(queue_size: u16, rx_buffers: u16, tx_buffers: u16) -> Option<usize> {
    match PoolLayout::new(0, queue_size, queue_size, rx_buffers, tx_buffers, 0) {
        Some(layout) => Some(layout.bytes()),
        None => None,
    }
}

/// `value` rounded up to a multiple of `align` (a power of two).
pub(crate) const fn align_up(value: usize, align: usize) -> Option<usize> {
    match value.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    #[test]
    fn pool_bytes_for_256() {
        assert_eq!(RingLayout::new(256).unwrap().bytes, 3 * PAGE_SIZE);
        assert_eq!(pool_bytes(256, 256, 256), Some(1_073_152));
        assert_eq!(pool_bytes(256, 256, 256).unwrap() % PAGE_SIZE, 0);
        // Without ANY_LAYOUT at most 128 + 128 buffers fit in the rings.
        assert_eq!(pool_bytes(256, 128, 128), Some(24_576 + 256 * 2048));
    }

    #[test]
    fn bad_queue_sizes_refused() {
        for size in [0u16, 3, 100, 255, 65535, 40000] {
            assert!(RingLayout::new(size).is_none(), "{size}");
            assert!(pool_bytes(size, 1, 1).is_none());
        }
        assert!(RingLayout::new(32768).is_some());
        assert!(RingLayout::new(1).is_some());
    }

    #[test]
    fn layout_is_page_aligned_and_disjoint() {
        let l = PoolLayout::new(4097, 1024, 256, 100, 50, 0).unwrap();
        assert_eq!(l.rx_ring, 8192);
        assert_eq!(l.tx_ring % PAGE_SIZE, 0);
        assert_eq!(l.rx_bufs % PAGE_SIZE, 0);
        assert!(l.tx_ring >= l.rx_ring + l.rx_ring_layout.bytes);
        assert!(l.rx_bufs >= l.tx_ring + l.tx_ring_layout.bytes);
        assert_eq!(l.tx_bufs, l.rx_bufs + 100 * BUF_SIZE);
        assert_eq!(l.end, l.tx_bufs + 50 * BUF_SIZE);
        assert!(PoolLayout::new(usize::MAX - 10, 256, 256, 1, 1, 0).is_none());
        // TSO buffers: page aligned after the small ones, 64 KiB each.
        let t = PoolLayout::new(0, 256, 256, 10, 3, 2).unwrap();
        assert_eq!(t.tso_bufs % PAGE_SIZE, 0);
        assert!(t.tso_bufs >= t.tx_bufs + 3 * BUF_SIZE);
        assert_eq!(t.end, t.tso_bufs + 2 * TSO_BUF_SIZE);
    }
}

/// Test doubles: a `Vec`-backed pool that can lie and a fake legacy
/// virtio-net device behind `IoPorts`, sharing state through `Rc<RefCell>`.
#[cfg(test)]
pub(crate) mod fake {
    use alloc::collections::VecDeque;
    use alloc::rc::Rc;
    use alloc::string::String;
    use alloc::vec::Vec;
    use core::cell::RefCell;
    use std::collections::HashSet;
    use std::format;

    use super::{NET_HDR_F_NEEDS_CSUM, NET_HDR_LEN, RingLayout, regs, status};
    use crate::shared::{IoPorts, SharedMem};

    /// Device (guest-physical) address of pool offset 0.
    pub(crate) const BASE_ADDR: u64 = 0x4000_0000;

    /// The pool's bytes plus what the tests want to know about the driver's
    /// accesses.
    #[derive(Debug)]
    pub(crate) struct MemState {
        pub(crate) bytes: Vec<u8>,
        /// Per byte: driver reads since the device last wrote it.
        reads: Vec<u32>,
        /// Byte ranges the driver may poll repeatedly (`used.idx`, `used.flags`).
        exempt: Vec<(usize, usize)>,
        /// Bytes the driver read more than once without a device write between.
        pub(crate) over_reads: usize,
        /// After the driver's first read at this offset, the host rewrites it.
        flips: Vec<(usize, Vec<u8>)>,
        /// Lowest and highest (exclusive) offsets the driver wrote or filled.
        pub(crate) written: Option<(usize, usize)>,
        /// Driver reads per offset (start of each access), cumulative.
        pub(crate) read_log: Vec<usize>,
        /// Driver writes (offset, length), cumulative.
        pub(crate) write_log: Vec<(usize, usize)>,
    }

    /// `Vec`-backed `SharedMem` that can lie; clones share the bytes.
    #[derive(Debug, Clone)]
    pub(crate) struct FakeMem(pub(crate) Rc<RefCell<MemState>>);

    impl FakeMem {
        pub(crate) fn new(size: usize) -> FakeMem {
            FakeMem(Rc::new(RefCell::new(MemState {
                bytes: alloc::vec![0; size],
                reads: alloc::vec![0; size],
                exempt: Vec::new(),
                over_reads: 0,
                flips: Vec::new(),
                written: None,
                read_log: Vec::new(),
                write_log: Vec::new(),
            })))
        }

        /// The device (or host) writes: resets the read counters.
        pub(crate) fn device_write_bytes(&self, off: usize, src: &[u8]) {
            let mut st = self.0.borrow_mut();
            st.bytes[off..off + src.len()].copy_from_slice(src);
            st.reads[off..off + src.len()].fill(0);
        }
        pub(crate) fn device_write_u16(&self, off: usize, v: u16) {
            self.device_write_bytes(off, &v.to_le_bytes());
        }
        pub(crate) fn device_write_u32(&self, off: usize, v: u32) {
            self.device_write_bytes(off, &v.to_le_bytes());
        }
        pub(crate) fn peek(&self, off: usize, len: usize) -> Vec<u8> {
            self.0.borrow().bytes[off..off + len].to_vec()
        }
        pub(crate) fn peek_u16(&self, off: usize) -> u16 {
            let b = self.peek(off, 2);
            u16::from_le_bytes([b[0], b[1]])
        }
        pub(crate) fn peek_u32(&self, off: usize) -> u32 {
            let b = self.peek(off, 4);
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
        pub(crate) fn peek_u64(&self, off: usize) -> u64 {
            let b = self.peek(off, 8);
            u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
        }
        /// The host changes `off` right after the driver's next read there.
        pub(crate) fn flip_after_read(&self, off: usize, bytes: &[u8]) {
            self.0.borrow_mut().flips.push((off, bytes.to_vec()));
        }
        pub(crate) fn exempt(&self, off: usize, len: usize) {
            self.0.borrow_mut().exempt.push((off, off + len));
        }
        pub(crate) fn over_reads(&self) -> usize {
            self.0.borrow().over_reads
        }
        pub(crate) fn written(&self) -> Option<(usize, usize)> {
            self.0.borrow().written
        }
        pub(crate) fn reads_at(&self, off: usize) -> usize {
            self.0
                .borrow()
                .read_log
                .iter()
                .filter(|&&o| o == off)
                .count()
        }

        fn record_read(&self, off: usize, len: usize) {
            let mut st = self.0.borrow_mut();
            st.read_log.push(off);
            for b in off..off + len {
                st.reads[b] += 1;
                let exempt = st.exempt.iter().any(|&(lo, hi)| (lo..hi).contains(&b));
                if st.reads[b] > 1 && !exempt {
                    st.over_reads += 1;
                }
            }
            if let Some(i) = st.flips.iter().position(|(o, _)| *o == off) {
                let (o, v) = st.flips.remove(i);
                st.bytes[o..o + v.len()].copy_from_slice(&v);
            }
        }
        fn record_write(&self, off: usize, len: usize) {
            let mut st = self.0.borrow_mut();
            assert!(off + len <= st.bytes.len(), "driver wrote outside the pool");
            let (lo, hi) = st.written.unwrap_or((off, off + len));
            st.written = Some((lo.min(off), hi.max(off + len)));
            st.write_log.push((off, len));
        }
    }

    impl SharedMem for FakeMem {
        fn size(&self) -> usize {
            self.0.borrow().bytes.len()
        }
        fn device_addr(&self, offset: usize) -> u64 {
            BASE_ADDR + offset as u64
        }
        fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
            dst.copy_from_slice(&self.0.borrow().bytes[offset..offset + dst.len()]);
            self.record_read(offset, dst.len());
        }
        fn write_bytes(&mut self, offset: usize, src: &[u8]) {
            self.record_write(offset, src.len());
            self.0.borrow_mut().bytes[offset..offset + src.len()].copy_from_slice(src);
        }
        fn read_u16(&self, offset: usize) -> u16 {
            assert_eq!(offset % 2, 0);
            let v = self.peek_u16(offset);
            self.record_read(offset, 2);
            v
        }
        fn read_u32(&self, offset: usize) -> u32 {
            assert_eq!(offset % 4, 0);
            let v = self.peek_u32(offset);
            self.record_read(offset, 4);
            v
        }
        fn write_u16(&mut self, offset: usize, value: u16) {
            assert_eq!(offset % 2, 0);
            self.write_bytes(offset, &value.to_le_bytes());
        }
        fn write_u32(&mut self, offset: usize, value: u32) {
            assert_eq!(offset % 4, 0);
            self.write_bytes(offset, &value.to_le_bytes());
        }
        fn write_u64(&mut self, offset: usize, value: u64) {
            assert_eq!(offset % 8, 0);
            self.write_bytes(offset, &value.to_le_bytes());
        }
        fn fence(&self) {}
        #[cfg(feature = "unconstrained-io")]
        fn lend<R>(&self, offset: usize, len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
            // A snapshot: the fake's bytes sit in a RefCell that the reply's
            // write borrows mutably while the frame is still being parsed.
            let bytes = self.peek(offset, len);
            f(&bytes)
        }
        #[cfg(feature = "unconstrained-io")]
        fn alias(&self) -> Self {
            self.clone()
        }
    }

    /// Device-side state of one queue.
    #[derive(Debug, Default, Clone, Copy)]
    pub(crate) struct FakeQueue {
        pub(crate) size: u16,
        pub(crate) pfn: u32,
        pub(crate) last_avail: u16,
        pub(crate) used_idx: u16,
    }

    /// A legacy virtio-net device model.
    #[derive(Debug)]
    pub(crate) struct DevState {
        pub(crate) offered: u32,
        pub(crate) guest_features: u32,
        pub(crate) status: u8,
        pub(crate) status_log: Vec<u8>,
        pub(crate) sel: u16,
        pub(crate) queues: [FakeQueue; 2],
        pub(crate) mac: [u8; 6],
        /// Register accesses: (write?, offset, value).
        pub(crate) log: Vec<(bool, u16, u32)>,
        /// Frames the driver sent: header, frame.
        pub(crate) tx_out: VecDeque<([u8; NET_HDR_LEN], Vec<u8>)>,
        /// Complete TX buffers as soon as they are sent.
        pub(crate) complete_tx: bool,
        /// TX heads sent but not completed (when `complete_tx` is off).
        pub(crate) tx_pending: VecDeque<u16>,
        /// Perform `NEEDS_CSUM` like a real device.
        pub(crate) apply_csum: bool,
        /// Heads taken from the avail ring and not completed, per queue.
        pub(crate) held: [HashSet<u16>; 2],
        /// Protocol errors the device noticed in the driver's behaviour.
        pub(crate) errors: Vec<String>,
        /// The status register ignores resets.
        pub(crate) reset_sticks: bool,
    }

    /// The fake device behind `IoPorts`; clones share state.
    #[derive(Debug, Clone)]
    pub(crate) struct FakeDev {
        pub(crate) st: Rc<RefCell<DevState>>,
        pub(crate) mem: FakeMem,
    }

    impl FakeDev {
        pub(crate) fn new(mem: FakeMem, offered: u32, sizes: [u16; 2]) -> FakeDev {
            let mut queues = [FakeQueue::default(); 2];
            queues[0].size = sizes[0];
            queues[1].size = sizes[1];
            FakeDev {
                st: Rc::new(RefCell::new(DevState {
                    offered,
                    guest_features: 0,
                    status: 0,
                    status_log: Vec::new(),
                    sel: 0,
                    queues,
                    mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
                    log: Vec::new(),
                    tx_out: VecDeque::new(),
                    complete_tx: true,
                    tx_pending: VecDeque::new(),
                    apply_csum: true,
                    held: [HashSet::new(), HashSet::new()],
                    errors: Vec::new(),
                    reset_sticks: false,
                })),
                mem,
            }
        }

        /// Pool offset and geometry of queue `q` as programmed by the driver.
        pub(crate) fn ring(&self, q: usize) -> (usize, RingLayout) {
            let st = self.st.borrow();
            let fq = st.queues[q];
            let addr = u64::from(fq.pfn) << 12;
            assert!(addr >= BASE_ADDR, "queue {q} not programmed");
            (
                (addr - BASE_ADDR) as usize,
                RingLayout::new(fq.size).unwrap(),
            )
        }

        fn error(&self, e: String) {
            self.st.borrow_mut().errors.push(e);
        }

        /// Takes the next available head of queue `q`.
        fn pop_avail(&self, q: usize) -> Option<u16> {
            let (base, l) = self.ring(q);
            let avail_idx = self.mem.peek_u16(base + l.avail + 2);
            let mut st = self.st.borrow_mut();
            let fq = &mut st.queues[q];
            if fq.last_avail == avail_idx {
                return None;
            }
            if avail_idx.wrapping_sub(fq.last_avail) > fq.size {
                drop(st);
                self.error(format!("q{q}: avail.idx ran ahead of the ring"));
                return None;
            }
            let pos = usize::from(fq.last_avail & (fq.size - 1));
            fq.last_avail = fq.last_avail.wrapping_add(1);
            let size = fq.size;
            drop(st);
            let head = self.mem.peek_u16(base + l.avail + 4 + 2 * pos);
            if head >= size {
                self.error(format!("q{q}: avail head {head} out of range"));
                return None;
            }
            if !self.st.borrow_mut().held[q].insert(head) {
                self.error(format!("q{q}: head {head} posted twice"));
            }
            Some(head)
        }

        /// The (offset, len, flags) segments of the chain at `head`.
        fn chain(&self, q: usize, head: u16) -> Vec<(usize, usize, u16)> {
            let (base, l) = self.ring(q);
            let mut out = Vec::new();
            let mut i = head;
            for _ in 0..l.size {
                let d = base + 16 * usize::from(i);
                let addr = self.mem.peek_u64(d);
                let len = self.mem.peek_u32(d + 8) as usize;
                let flags = self.mem.peek_u16(d + 12);
                let next = self.mem.peek_u16(d + 14);
                let size = self.mem.size() as u64;
                if addr < BASE_ADDR || addr - BASE_ADDR + len as u64 > size {
                    self.error(format!("q{q}: descriptor {i} points outside the pool"));
                    return Vec::new();
                }
                out.push(((addr - BASE_ADDR) as usize, len, flags));
                if flags & 1 == 0 {
                    break;
                }
                i = next;
            }
            out
        }

        /// Honest completion.
        pub(crate) fn push_used(&self, q: usize, id: u32, len: u32) {
            let (base, l) = self.ring(q);
            let mut st = self.st.borrow_mut();
            st.held[q].remove(&(id as u16));
            let fq = &mut st.queues[q];
            let pos = usize::from(fq.used_idx & (fq.size - 1));
            fq.used_idx = fq.used_idx.wrapping_add(1);
            let idx = fq.used_idx;
            drop(st);
            self.mem.device_write_u32(base + l.used + 4 + 8 * pos, id);
            self.mem.device_write_u32(base + l.used + 8 + 8 * pos, len);
            self.mem.device_write_u16(base + l.used + 2, idx);
        }

        /// Writes `used.idx` without changing the device's own counter.
        pub(crate) fn set_used_idx(&self, q: usize, v: u16) {
            let (base, l) = self.ring(q);
            self.mem.device_write_u16(base + l.used + 2, v);
        }

        /// Pool offset of the used element the device writes next.
        pub(crate) fn next_used_elem(&self, q: usize) -> usize {
            let (base, l) = self.ring(q);
            let fq = self.st.borrow().queues[q];
            base + l.used + 4 + 8 * usize::from(fq.used_idx & (fq.size - 1))
        }

        pub(crate) fn set_used_flags(&self, q: usize, flags: u16) {
            let (base, l) = self.ring(q);
            self.mem.device_write_u16(base + l.used, flags);
        }

        /// Delivers a frame into the next RX buffer. `false` if none is posted.
        pub(crate) fn inject_rx(&self, frame: &[u8]) -> bool {
            self.inject_rx_with(&[0; NET_HDR_LEN], frame, None)
                .is_some()
        }

        /// Delivers `hdr` + `frame`; `len` overrides the used length. Returns
        /// the head used.
        pub(crate) fn inject_rx_with(
            &self,
            hdr: &[u8; NET_HDR_LEN],
            frame: &[u8],
            len: Option<u32>,
        ) -> Option<u16> {
            let head = self.pop_avail(0)?;
            let mut data = hdr.to_vec();
            data.extend_from_slice(frame);
            let mut done = 0;
            for (off, seg_len, flags) in self.chain(0, head) {
                if flags & 2 == 0 {
                    self.error(format!("rx head {head}: read-only descriptor"));
                }
                let n = seg_len.min(data.len() - done);
                self.mem.device_write_bytes(off, &data[done..done + n]);
                done += n;
            }
            if done < data.len() {
                self.error(format!("rx head {head}: buffer too small"));
            }
            self.push_used(0, u32::from(head), len.unwrap_or(data.len() as u32));
            Some(head)
        }

        /// The header length the driver negotiated (12 with `MRG_RXBUF`).
        pub(crate) fn hdr_len(&self) -> usize {
            if self.st.borrow().guest_features & super::features::NET_F_MRG_RXBUF != 0 {
                super::NET_HDR_MRG_LEN
            } else {
                NET_HDR_LEN
            }
        }

        /// Delivers one frame over as many receive buffers as it needs
        /// (`MRG_RXBUF`): the first gets the 12-byte header with
        /// `num_buffers` (or `num_buffers` as given, to lie), the rest frame
        /// bytes only; all used entries are published together, as QEMU
        /// does. `None` if the ring has too few buffers (nothing taken).
        pub(crate) fn inject_rx_merged(
            &self,
            flags: u8,
            gso_type: u8,
            frame: &[u8],
            num_buffers: Option<u16>,
        ) -> Option<usize> {
            let mut data = vec![0u8; super::NET_HDR_MRG_LEN];
            data[0] = flags;
            data[1] = gso_type;
            data.extend_from_slice(frame);
            let need = data.len().div_ceil(super::BUF_SIZE);
            let (base, l) = self.ring(0);
            let avail_idx = self.mem.peek_u16(base + l.avail + 2);
            let taken = self.st.borrow().queues[0].last_avail;
            if usize::from(avail_idx.wrapping_sub(taken)) < need {
                return None;
            }
            let n = num_buffers.unwrap_or(need as u16);
            data[10..12].copy_from_slice(&n.to_le_bytes());
            let mut done = 0;
            let mut entries = Vec::new();
            for _ in 0..need {
                let head = self.pop_avail(0)?;
                let mut wrote = 0;
                for (off, seg_len, _) in self.chain(0, head) {
                    let k = seg_len.min(data.len() - done);
                    self.mem.device_write_bytes(off, &data[done..done + k]);
                    done += k;
                    wrote += k;
                }
                entries.push((head, wrote as u32));
            }
            let (base, l) = self.ring(0);
            let mut idx = 0;
            for (head, len) in entries {
                let mut st = self.st.borrow_mut();
                st.held[0].remove(&head);
                let fq = &mut st.queues[0];
                let pos = usize::from(fq.used_idx & (fq.size - 1));
                fq.used_idx = fq.used_idx.wrapping_add(1);
                idx = fq.used_idx;
                drop(st);
                self.mem
                    .device_write_u32(base + l.used + 4 + 8 * pos, u32::from(head));
                self.mem.device_write_u32(base + l.used + 8 + 8 * pos, len);
            }
            self.mem.device_write_u16(base + l.used + 2, idx);
            Some(need)
        }

        /// Consumes the TX avail ring (what a notify of queue 1 triggers).
        pub(crate) fn process_tx(&self) {
            let hdr_len = self.hdr_len();
            while let Some(head) = self.pop_avail(1) {
                let mut data = Vec::new();
                for (off, len, flags) in self.chain(1, head) {
                    if flags & 2 != 0 {
                        self.error(format!("tx head {head}: device-writable descriptor"));
                    }
                    data.extend_from_slice(&self.mem.peek(off, len));
                }
                if data.len() < hdr_len {
                    self.error(format!("tx head {head}: no header"));
                    continue;
                }
                let mut hdr = [0u8; NET_HDR_LEN];
                hdr.copy_from_slice(&data[..NET_HDR_LEN]);
                if data[NET_HDR_LEN..hdr_len].iter().any(|b| *b != 0) {
                    self.error(format!("tx head {head}: num_buffers not 0"));
                }
                let mut frame = data[hdr_len..].to_vec();
                if hdr[0] & NET_HDR_F_NEEDS_CSUM != 0 && self.st.borrow().apply_csum {
                    let start = usize::from(u16::from_le_bytes([hdr[6], hdr[7]]));
                    let at = start + usize::from(u16::from_le_bytes([hdr[8], hdr[9]]));
                    let mut sum = 0u32;
                    for (i, b) in frame[start..].iter().enumerate() {
                        sum += if i % 2 == 0 {
                            u32::from(*b) << 8
                        } else {
                            u32::from(*b)
                        };
                    }
                    while sum > 0xffff {
                        sum = (sum & 0xffff) + (sum >> 16);
                    }
                    let c = !(sum as u16);
                    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
                }
                let complete = {
                    let mut st = self.st.borrow_mut();
                    st.tx_out.push_back((hdr, frame));
                    if !st.complete_tx {
                        st.tx_pending.push_back(head);
                    }
                    st.complete_tx
                };
                if complete {
                    self.push_used(1, u32::from(head), 0);
                }
            }
        }

        /// Completes every TX buffer held back so far.
        pub(crate) fn complete_pending_tx(&self) {
            loop {
                let Some(head) = self.st.borrow_mut().tx_pending.pop_front() else {
                    break;
                };
                self.push_used(1, u32::from(head), 0);
            }
        }

        pub(crate) fn take_tx(&self) -> Option<([u8; NET_HDR_LEN], Vec<u8>)> {
            self.st.borrow_mut().tx_out.pop_front()
        }

        pub(crate) fn errors(&self) -> Vec<String> {
            self.st.borrow().errors.clone()
        }

        pub(crate) fn clear_log(&self) {
            self.st.borrow_mut().log.clear();
        }

        pub(crate) fn log(&self) -> Vec<(bool, u16, u32)> {
            self.st.borrow().log.clone()
        }

        fn reset(&self) {
            let mut st = self.st.borrow_mut();
            st.guest_features = 0;
            for q in &mut st.queues {
                q.pfn = 0;
                q.last_avail = 0;
                q.used_idx = 0;
            }
            st.held = [HashSet::new(), HashSet::new()];
            st.tx_pending.clear();
        }
    }

    impl IoPorts for FakeDev {
        fn read8(&mut self, offset: u16) -> u8 {
            let mut st = self.st.borrow_mut();
            let v = match offset {
                regs::DEVICE_STATUS => {
                    if st.reset_sticks {
                        st.status | status::ACKNOWLEDGE
                    } else {
                        st.status
                    }
                }
                regs::ISR_STATUS => 0,
                o if (regs::NET_MAC..regs::NET_MAC + 6).contains(&o) => {
                    st.mac[usize::from(o - regs::NET_MAC)]
                }
                _ => 0xff,
            };
            st.log.push((false, offset, u32::from(v)));
            v
        }
        fn read16(&mut self, offset: u16) -> u16 {
            let mut st = self.st.borrow_mut();
            let v = match offset {
                regs::QUEUE_SIZE => st.queues.get(usize::from(st.sel)).map_or(0, |q| q.size),
                regs::NET_STATUS => 1,
                _ => 0xffff,
            };
            st.log.push((false, offset, u32::from(v)));
            v
        }
        fn read32(&mut self, offset: u16) -> u32 {
            let mut st = self.st.borrow_mut();
            let v = match offset {
                regs::DEVICE_FEATURES => st.offered,
                regs::QUEUE_PFN => st.queues.get(usize::from(st.sel)).map_or(0, |q| q.pfn),
                _ => u32::MAX,
            };
            st.log.push((false, offset, v));
            v
        }
        fn write8(&mut self, offset: u16, value: u8) {
            self.st
                .borrow_mut()
                .log
                .push((true, offset, u32::from(value)));
            if offset == regs::DEVICE_STATUS {
                if value == 0 {
                    self.reset();
                }
                let mut st = self.st.borrow_mut();
                st.status = value;
                st.status_log.push(value);
            }
        }
        fn write16(&mut self, offset: u16, value: u16) {
            self.st
                .borrow_mut()
                .log
                .push((true, offset, u32::from(value)));
            match offset {
                regs::QUEUE_SELECT => self.st.borrow_mut().sel = value,
                regs::QUEUE_NOTIFY => {
                    if self.st.borrow().status & status::DRIVER_OK == 0 {
                        self.error(format!("notify {value} before DRIVER_OK"));
                    }
                    if value == 1 {
                        self.process_tx();
                    }
                }
                _ => {}
            }
        }
        fn write32(&mut self, offset: u16, value: u32) {
            self.st.borrow_mut().log.push((true, offset, value));
            let mut st = self.st.borrow_mut();
            match offset {
                regs::GUEST_FEATURES => {
                    if value & !st.offered != 0 {
                        st.errors
                            .push(format!("guest features {value:#x} not offered"));
                    }
                    st.guest_features = value;
                }
                regs::QUEUE_PFN => {
                    let sel = usize::from(st.sel);
                    if let Some(q) = st.queues.get_mut(sel) {
                        q.pfn = value;
                    }
                }
                _ => {}
            }
        }
    }
}

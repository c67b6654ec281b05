//! smoltcp 0.14 `phy::Device` for [`VirtioNet`].
//!
//! - `receive`: returns the oldest frame already copied into private memory
//!   (harvesting the RX ring first if none is waiting). The [`VirtioRxToken`]
//!   borrows that private buffer; nothing the stack parses lives in the pool.
//! - `transmit`: `None` (smoltcp's "exhausted") when no shared TX buffer is
//!   free after reclaiming completions, counted in `tx_ring_full`. The
//!   [`VirtioTxToken`] lets smoltcp build the frame in private memory; the
//!   driver adds the header, copies both into a free shared buffer with one
//!   write, posts and publishes it.
//!   The device is notified once per poll loop iteration by
//!   [`VirtioNet::flush`], not per frame.
//! - The TX token handed out with an RX token (for immediate replies) takes a
//!   buffer at `consume` time; if none is free, the reply is built in private
//!   scratch memory and dropped (counted in `tx_ring_full`), like a lossy NIC.

use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::net::{RxFrames, TxPath, VirtioNet};
use super::{MAX_FRAME, NET_HDR_LEN, TSO_BUF_SIZE};
use crate::shared::{IoPorts, SharedMem};

/// A received frame, already in private memory.
#[derive(Debug)]
pub struct VirtioRxToken<'a> {
    frames: &'a mut RxFrames,
}

impl phy::RxToken for VirtioRxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let r = f(self.frames.front());
        self.frames.pop();
        r
    }
}

/// The right to send one frame (built privately, then copied to a shared TX
/// buffer).
#[derive(Debug)]
pub struct VirtioTxToken<'a, M: SharedMem> {
    tx: &'a mut TxPath,
    mem: &'a mut M,
    /// TSO segment size smoltcp asked for (via `set_meta`).
    segment: Option<u16>,
}

impl<M: SharedMem> phy::TxToken for VirtioTxToken<'_, M> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        self.tx.send(self.mem, len, self.segment, f)
    }

    fn set_meta(&mut self, meta: phy::PacketMeta) {
        self.segment = meta.segmentation_offload_size.map(|s| s.get());
    }
}

/// `unconstrained-io` measurement build: a received frame parsed where the
/// device wrote it, in the shared pool.
#[cfg(feature = "unconstrained-io")]
#[derive(Debug)]
pub struct InPlaceRxToken<M: SharedMem> {
    mem: M,
    offset: usize,
    len: usize,
}

#[cfg(feature = "unconstrained-io")]
impl<M: SharedMem> phy::RxToken for InPlaceRxToken<M> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        self.mem.lend(self.offset, self.len, f)
    }
}

impl<M: SharedMem, P: IoPorts> phy::Device for VirtioNet<M, P> {
    #[cfg(not(feature = "unconstrained-io"))]
    type RxToken<'a>
        = VirtioRxToken<'a>
    where
        Self: 'a;
    #[cfg(feature = "unconstrained-io")]
    type RxToken<'a>
        = InPlaceRxToken<M>
    where
        Self: 'a;
    type TxToken<'a>
        = VirtioTxToken<'a, M>
    where
        Self: 'a;

    #[cfg(feature = "unconstrained-io")]
    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let (offset, len) = self.next_in_place()?;
        Some((
            InPlaceRxToken {
                mem: self.mem.alias(),
                offset,
                len,
            },
            VirtioTxToken {
                tx: &mut self.tx,
                mem: &mut self.mem,
                segment: None,
            },
        ))
    }

    #[cfg(not(feature = "unconstrained-io"))]
    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if self.frames.is_empty() {
            self.poll_rx();
        }
        if self.frames.is_empty() {
            return None;
        }
        Some((
            VirtioRxToken {
                frames: &mut self.frames,
            },
            VirtioTxToken {
                tx: &mut self.tx,
                mem: &mut self.mem,
                segment: None,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        if !self.tx.has_free(&self.mem) {
            self.tx.count_full();
            return None;
        }
        Some(VirtioTxToken {
            tx: &mut self.tx,
            mem: &mut self.mem,
            segment: None,
        })
    }

    /// MTU 1514 (Ethernet frame without FCS), medium Ethernet. TCP and UDP
    /// checksums:
    /// - with `VIRTIO_NET_F_CSUM`, left to the device on transmit (the driver
    ///   fills the pseudo-header sum and the `NEEDS_CSUM` header);
    /// - with `VIRTIO_NET_F_GUEST_CSUM`, not verified on receive. That costs
    ///   no security: a checksum detects accidental corruption, and the only
    ///   party that can change a frame between the peer and us here is the
    ///   host, which can forge any frame with a valid checksum anyway (it
    ///   controls the link); integrity and authenticity against it are TLS's
    ///   job. The device delivers the host's own segments with a partial
    ///   checksum (`NEEDS_CSUM`) that could not be verified anyway. Under
    ///   TCG the verification was a large share of the receive cost.
    ///
    /// IPv4 header checksums stay with smoltcp (both ways; 20 bytes).
    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        let l4 = match (self.tx.offload, self.tx.rx_offload) {
            (false, false) => Checksum::Both,
            (true, false) => Checksum::Rx,
            (false, true) => Checksum::Tx,
            (true, true) => Checksum::None,
        };
        caps.checksum.tcp = l4;
        caps.checksum.udp = l4;
        // TSO: smoltcp builds TCP segments up to a TSO buffer (Ethernet
        // header included) and says the segment size in the packet meta; TX
        // checksums are the device's then (TSO implies `self.tx.offload`).
        if self.tx.tso {
            caps.segmentation.tcpv4 = core::num::NonZeroUsize::new(TSO_BUF_SIZE - self.tx.hdr_len);
        }
        caps
    }
}

const ETH_HDR: usize = 14;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const IP_TCP: u8 = 6;
const IP_UDP: u8 = 17;

/// TX checksum offload for one frame that smoltcp built without TCP/UDP
/// checksums (it leaves the field 0). For Ethernet II + unfragmented IPv4 +
/// TCP/UDP: writes the pseudo-header sum (not complemented) into the L4
/// checksum field and returns `(csum_start, csum_offset)` for a
/// `NEEDS_CSUM` header: the device sums from `csum_start` to the end of the
/// frame and stores the complement at `csum_start + csum_offset` (virtio 1.2
/// §5.1.6.2). If the frame has bytes after the IP datagram (padding, which
/// the device would include), the checksum is computed here instead and
/// `None` is returned, as for every frame that needs no offload.
///
/// The frame is private (built by smoltcp before it is copied to the pool);
/// every access is bounds checked anyway, so a malformed frame from a stack
/// bug gets no offload rather than a panic.
pub(crate) fn prepare_tx_checksum(frame: &mut [u8]) -> Option<(u16, u16)> {
    if frame.get(12..14)? != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(ETH_HDR..ETH_HDR + 20)?;
    if ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
    let proto = ip[9];
    let mut sum = 0u32;
    for w in ip[12..20].chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    let field = match proto {
        IP_TCP => 16,
        IP_UDP => 6,
        _ => return None,
    };
    if ihl < 20 || fragment != 0 || total < ihl + field + 2 || ETH_HDR + total > frame.len() {
        return None;
    }
    let l4_len = total - ihl;
    sum += u32::from(proto) + l4_len as u32;
    let start = ETH_HDR + ihl;
    let at = start + field;
    if ETH_HDR + total == frame.len() {
        frame
            .get_mut(at..at + 2)?
            .copy_from_slice(&fold(sum).to_be_bytes());
        // start ≤ 14 + 60 and field ≤ 16.
        return Some((start as u16, field as u16));
    }
    // Trailing padding: do it in software over the datagram only.
    frame.get_mut(at..at + 2)?.copy_from_slice(&[0, 0]);
    let l4 = frame.get(start..ETH_HDR + total)?;
    let mut chunks = l4.chunks_exact(2);
    for w in &mut chunks {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    let mut csum = !fold(sum);
    if proto == IP_UDP && csum == 0 {
        csum = 0xffff;
    }
    frame
        .get_mut(at..at + 2)?
        .copy_from_slice(&csum.to_be_bytes());
    None
}

/// Folds a 32-bit one's complement sum to 16 bits.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

const _: () = assert!(NET_HDR_LEN + MAX_FRAME <= super::BUF_SIZE);

#[cfg(test)]
mod tests {
    use alloc::vec;
    use alloc::vec::Vec;

    use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
    use smoltcp::phy::Device;
    use smoltcp::socket::tcp;
    use smoltcp::wire::{
        EthernetAddress, HardwareAddress, IpAddress, IpCidr, TcpPacket, UdpPacket,
    };

    use super::*;
    use crate::virtio::features::{F_ANY_LAYOUT, NET_F_CSUM, NET_F_HOST_TSO4, NET_F_MAC};
    use crate::virtio::net::tests::{OFFERED, Rig, cfg, check_invariants, frame, rig};
    use crate::virtio::{BUF_SIZE, NET_HDR_F_NEEDS_CSUM, NET_HDR_GSO_TCPV4};

    /// What a device does for `NEEDS_CSUM`.
    fn device_csum(frame: &mut [u8], start: usize, offset: usize) {
        let mut sum = 0u32;
        for (i, b) in frame[start..].iter().enumerate() {
            sum += if i % 2 == 0 {
                u32::from(*b) << 8
            } else {
                u32::from(*b)
            };
        }
        let c = !fold(sum);
        frame[start + offset..start + offset + 2].copy_from_slice(&c.to_be_bytes());
    }

    const SRC: [u8; 4] = [10, 0, 0, 1];
    const DST: [u8; 4] = [10, 0, 0, 2];

    /// Ethernet + IPv4 + `l4` (with `proto`), plus `pad` trailing bytes.
    fn ip_frame(proto: u8, l4: &[u8], pad: usize) -> Vec<u8> {
        let total = 20 + l4.len();
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            1,
            0x40,
            0,
            64,
            proto,
            0,
            0,
        ]);
        f.extend_from_slice(&SRC);
        f.extend_from_slice(&DST);
        f.extend_from_slice(l4);
        f.extend(core::iter::repeat_n(0xa5, pad));
        f
    }

    fn reference(proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut l4 = l4.to_vec();
        let (s, d) = (IpAddress::v4(10, 0, 0, 1), IpAddress::v4(10, 0, 0, 2));
        if proto == IP_TCP {
            TcpPacket::new_unchecked(&mut l4[..]).fill_checksum(&s, &d);
        } else {
            UdpPacket::new_unchecked(&mut l4[..]).fill_checksum(&s, &d);
        }
        l4
    }

    fn l4(proto: u8, payload_len: usize) -> Vec<u8> {
        let hdr = if proto == IP_TCP { 20 } else { 8 };
        let mut v: Vec<u8> = (0..hdr + payload_len).map(|i| (i * 7 + 3) as u8).collect();
        if proto == IP_TCP {
            v[12] = 0x50; // data offset 5
            v[16..18].fill(0);
        } else {
            let len = v.len() as u16;
            v[4..6].copy_from_slice(&len.to_be_bytes());
            v[6..8].fill(0);
        }
        v
    }

    #[test]
    fn checksum_offload_matches_smoltcp() {
        for proto in [IP_TCP, IP_UDP] {
            for payload in [0usize, 1, 2, 3, 100, 1001, 1460] {
                let seg = l4(proto, payload);
                let want = reference(proto, &seg);
                let mut f = ip_frame(proto, &seg, 0);
                let (start, offset) = prepare_tx_checksum(&mut f).expect("offloadable");
                assert_eq!(start, 34);
                assert_eq!(offset, if proto == IP_TCP { 16 } else { 6 });
                device_csum(&mut f, usize::from(start), usize::from(offset));
                assert_eq!(&f[34..], &want[..], "proto {proto} payload {payload}");
                // With trailing padding: computed in software, no offload.
                let mut p = ip_frame(proto, &seg, 5);
                assert_eq!(prepare_tx_checksum(&mut p), None);
                assert_eq!(
                    &p[34..p.len() - 5],
                    &want[..],
                    "padded, proto {proto} payload {payload}"
                );
            }
        }
    }

    #[test]
    fn checksum_offload_leaves_other_frames_alone() {
        let seg = l4(IP_TCP, 10);
        let mut frag = ip_frame(IP_TCP, &seg, 0);
        frag[20] = 0x20; // more fragments
        let copy = frag.clone();
        assert_eq!(prepare_tx_checksum(&mut frag), None);
        assert_eq!(frag, copy);
        let mut icmp = ip_frame(1, &seg, 0);
        assert_eq!(prepare_tx_checksum(&mut icmp), None);
        let mut arp = frame(1, 60);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(prepare_tx_checksum(&mut arp), None);
        // Lies about lengths / header sizes, and random bytes: no panic.
        let mut seed = 0x1234_5678u32;
        for n in 0..20_000usize {
            let mut f: Vec<u8> = (0..n % 120)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 24) as u8
                })
                .collect();
            if f.len() > 24 && n % 2 == 0 {
                f[12] = 0x08;
                f[13] = 0;
                f[14] = 0x40 | (f[14] & 0x0f);
                f[23] = if n % 4 == 0 { 6 } else { 17 };
                f[20] = 0;
                f[21] = 0;
            }
            let _ = prepare_tx_checksum(&mut f);
        }
    }

    #[test]
    fn capabilities_follow_negotiation() {
        let r = rig(OFFERED, [16, 16], cfg(8, 8, 4, true), [2, 0, 0, 0, 0, 1]);
        let c = r.drv.capabilities();
        assert_eq!(c.medium, Medium::Ethernet);
        assert_eq!(c.max_transmission_unit, 1514);
        assert!(matches!(c.checksum.tcp, Checksum::Rx));
        assert!(matches!(c.checksum.udp, Checksum::Rx));
        assert!(matches!(c.checksum.ipv4, Checksum::Both));
        let r = rig(OFFERED, [16, 16], cfg(8, 8, 4, false), [2, 0, 0, 0, 0, 1]);
        let c = r.drv.capabilities();
        assert!(matches!(c.checksum.tcp, Checksum::Both));
        assert!(matches!(c.checksum.udp, Checksum::Both));
        // GUEST_CSUM: receive checksums are not verified.
        let mut both = cfg(8, 8, 4, true);
        both.rx_checksum_offload = true;
        let c = rig(OFFERED, [16, 16], both, [2, 0, 0, 0, 0, 1])
            .drv
            .capabilities();
        assert!(matches!(c.checksum.tcp, Checksum::None));
        assert!(matches!(c.checksum.udp, Checksum::None));
        assert!(matches!(c.checksum.ipv4, Checksum::Both));
        let mut rx_only = cfg(8, 8, 4, false);
        rx_only.rx_checksum_offload = true;
        let c = rig(OFFERED, [16, 16], rx_only, [2, 0, 0, 0, 0, 1])
            .drv
            .capabilities();
        assert!(matches!(c.checksum.tcp, Checksum::Tx));
    }

    #[test]
    fn transmit_exhausted_and_reply_token_drops_when_full() {
        use smoltcp::phy::{RxToken, TxToken};
        let mut r = rig(OFFERED, [16, 16], cfg(8, 4, 4, true), [2, 0, 0, 0, 0, 1]);
        r.dev.st.borrow_mut().complete_tx = false;
        let now = Instant::from_millis(0);
        for n in 0..4 {
            let t = r.drv.transmit(now).expect("free TX buffer");
            let f = frame(n, 100);
            t.consume(f.len(), |b| b.copy_from_slice(&f));
        }
        assert!(r.drv.transmit(now).is_none(), "Exhausted");
        assert_eq!(r.drv.stats().tx_ring_full, 1);
        // An RX token still comes with a TX token; its reply is dropped.
        let f = frame(9, 80);
        assert!(r.dev.inject_rx(&f));
        let (rx, tx) = r.drv.receive(now).expect("frame");
        assert_eq!(rx.consume(|b| b.to_vec()), f);
        tx.consume(60, |b| b.fill(1));
        assert_eq!(r.drv.stats().tx_ring_full, 2);
        assert_eq!(r.drv.stats().tx_packets, 4);
        r.drv.flush();
        r.dev.complete_pending_tx();
        assert!(r.drv.transmit(now).is_some());
        check_invariants(&r);
    }

    fn iface(r: &mut Rig, ip: [u8; 4]) -> Interface {
        let mac = EthernetAddress(r.drv.mac());
        let mut i = Interface::new(
            IfaceConfig::new(HardwareAddress::Ethernet(mac)),
            &mut r.drv,
            Instant::ZERO,
        );
        i.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(ip[0], ip[1], ip[2], ip[3]), 24))
                .unwrap();
        });
        i
    }

    fn tcp_socket() -> tcp::Socket<'static> {
        tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 16 * 1024]),
            tcp::SocketBuffer::new(vec![0; 16 * 1024]),
        )
    }

    /// Two drivers on two fake devices, cross-connected, two smoltcp
    /// interfaces: a TCP echo of 512 KB (hundreds of frames each way, far
    /// more than 10× either ring). A negotiates checksum offload (its
    /// device completes the checksums, B's stack verifies them); B does not.
    #[test]
    fn smoltcp_tcp_echo_across_two_drivers() {
        let mut a = rig(
            NET_F_MAC | NET_F_CSUM | F_ANY_LAYOUT,
            [16, 16],
            cfg(16, 16, 8, true),
            [2, 0, 0, 0, 0, 0xa],
        );
        let mut b = rig(
            NET_F_MAC,
            [32, 32],
            cfg(16, 16, 8, true),
            [2, 0, 0, 0, 0, 0xb],
        );
        assert!(a.drv.tx_checksum_offload() && !b.drv.tx_checksum_offload());
        let mut ia = iface(&mut a, SRC);
        let mut ib = iface(&mut b, DST);
        let mut sa = SocketSet::new(vec![]);
        let mut sb = SocketSet::new(vec![]);
        let ha = sa.add(tcp_socket());
        let hb = sb.add(tcp_socket());
        sb.get_mut::<tcp::Socket<'_>>(hb).listen(7).unwrap();
        sa.get_mut::<tcp::Socket<'_>>(ha)
            .connect(ia.context(), (IpAddress::v4(10, 0, 0, 2), 7), 49152)
            .unwrap();

        const TOTAL: usize = 512 * 1024;
        let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
        let (mut sent, mut echoed) = (0usize, Vec::new());
        let mut offloaded = 0;
        for step in 0..20_000i64 {
            let now = Instant::from_millis(step);
            {
                let s = sa.get_mut::<tcp::Socket<'_>>(ha);
                if s.can_send() && sent < TOTAL {
                    sent += s.send_slice(&data[sent..]).unwrap();
                }
                while s.can_recv() {
                    s.recv(|buf| {
                        echoed.extend_from_slice(buf);
                        (buf.len(), ())
                    })
                    .unwrap();
                }
            }
            {
                let s = sb.get_mut::<tcp::Socket<'_>>(hb);
                let mut tmp = [0u8; 4096];
                if s.can_recv() && s.can_send() {
                    let room = s.send_capacity() - s.send_queue();
                    let n = s.recv_slice(&mut tmp[..room.min(4096)]).unwrap();
                    assert_eq!(s.send_slice(&tmp[..n]).unwrap(), n);
                }
            }
            let _ = ia.poll(now, &mut a.drv, &mut sa);
            a.drv.flush();
            let _ = ib.poll(now, &mut b.drv, &mut sb);
            b.drv.flush();
            while let Some((hdr, f)) = a.dev.take_tx() {
                if hdr[0] & 1 != 0 {
                    offloaded += 1;
                }
                let _ = b.dev.inject_rx(&f);
            }
            while let Some((hdr, f)) = b.dev.take_tx() {
                assert_eq!(hdr, [0; NET_HDR_LEN]);
                let _ = a.dev.inject_rx(&f);
            }
            if echoed.len() == TOTAL {
                break;
            }
        }
        assert_eq!(echoed.len(), TOTAL, "echo incomplete");
        assert!(echoed == data);
        assert!(offloaded > 100, "A's TCP segments went out with NEEDS_CSUM");
        for r in [&a, &b] {
            let s = r.drv.stats();
            assert_eq!(s.ring_violations, 0);
            assert!(s.rx_packets > 10 * 32 && s.tx_packets > 10 * 32, "{s:?}");
            check_invariants(r);
        }
    }

    /// What a host does with a TSO frame (virtio 1.2 §5.1.6.2): cuts the TCP
    /// payload into `gso_size` pieces behind copies of the headers, with IP
    /// length, id and checksum and the TCP sequence number, flags and
    /// checksum fixed per segment. Written from the spec for the test, with
    /// checksums computed from scratch.
    fn segment_like_a_host(hdr: &[u8; NET_HDR_LEN], frame: &[u8]) -> Vec<Vec<u8>> {
        use smoltcp::wire::{Ipv4Packet, TcpSeqNumber};
        let hdr_len = usize::from(u16::from_le_bytes([hdr[2], hdr[3]]));
        let mss = usize::from(u16::from_le_bytes([hdr[4], hdr[5]]));
        assert!(mss > 0 && hdr_len >= 14 + 20 + 20 && hdr_len < frame.len());
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        assert_eq!(14 + usize::from(ip.total_len()), frame.len());
        let ihl = usize::from(ip.header_len());
        let tcp = TcpPacket::new_checked(&frame[14 + ihl..]).unwrap();
        assert_eq!(hdr_len, 14 + ihl + usize::from(tcp.header_len()));
        // The checksum the device completed covers the whole frame with the
        // pseudo-header of its full length: our half of the contract.
        assert!(tcp.verify_checksum(&src.into(), &dst.into()));
        let seq = tcp.seq_number();
        let (fin, psh) = (tcp.fin(), tcp.psh());
        let payload = &frame[hdr_len..];
        let mut out = Vec::new();
        let pieces = payload.chunks(mss).count();
        for (i, piece) in payload.chunks(mss).enumerate() {
            let mut f = frame[..hdr_len].to_vec();
            f.extend_from_slice(piece);
            let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
            ip.set_total_len((hdr_len - 14 + piece.len()) as u16);
            ip.set_ident(ip.ident().wrapping_add(i as u16));
            ip.fill_checksum();
            let mut t = TcpPacket::new_unchecked(&mut f[14 + ihl..]);
            t.set_seq_number(seq + i * mss);
            let last = i + 1 == pieces;
            t.set_fin(fin && last);
            t.set_psh(psh && last);
            t.set_checksum(0);
            t.fill_checksum(&src.into(), &dst.into());
            let _: TcpSeqNumber = t.seq_number();
            out.push(f);
        }
        out
    }

    /// Echoes 2 MiB from A (client) through B (echo server), both with
    /// 256 KiB socket buffers, byte-exact. `a_to_b` and `b_to_a` carry each
    /// frame a device sent (header, frame) to the other side, the way the
    /// test's host would.
    fn echo_2mib(
        a: &mut Rig,
        b: &mut Rig,
        mut a_to_b: impl FnMut(&mut Rig, [u8; NET_HDR_LEN], Vec<u8>),
        mut b_to_a: impl FnMut(&mut Rig, [u8; NET_HDR_LEN], Vec<u8>),
    ) {
        let mut ia = iface(a, SRC);
        let mut ib = iface(b, DST);
        let mut sa = SocketSet::new(vec![]);
        let mut sb = SocketSet::new(vec![]);
        let big = || {
            tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 256 * 1024]),
                tcp::SocketBuffer::new(vec![0; 256 * 1024]),
            )
        };
        let ha = sa.add(big());
        let hb = sb.add(big());
        sb.get_mut::<tcp::Socket<'_>>(hb).listen(7).unwrap();
        sa.get_mut::<tcp::Socket<'_>>(ha)
            .connect(ia.context(), (IpAddress::v4(10, 0, 0, 2), 7), 49152)
            .unwrap();
        const TOTAL: usize = 2 * 1024 * 1024;
        let data: Vec<u8> = (0..TOTAL).map(|i| (i * 13 % 251) as u8).collect();
        let (mut sent, mut echoed) = (0usize, Vec::new());
        let mut tmp = vec![0u8; 64 * 1024];
        for step in 0..20_000i64 {
            let now = Instant::from_millis(step);
            let s = sa.get_mut::<tcp::Socket<'_>>(ha);
            if s.can_send() && sent < TOTAL {
                sent += s.send_slice(&data[sent..]).unwrap();
            }
            while s.can_recv() {
                s.recv(|buf| {
                    echoed.extend_from_slice(buf);
                    (buf.len(), ())
                })
                .unwrap();
            }
            let s = sb.get_mut::<tcp::Socket<'_>>(hb);
            if s.can_recv() && s.can_send() {
                let room = s.send_capacity() - s.send_queue();
                let n = s.recv_slice(&mut tmp[..room.min(64 * 1024)]).unwrap();
                assert_eq!(s.send_slice(&tmp[..n]).unwrap(), n);
            }
            let _ = ia.poll(now, &mut a.drv, &mut sa);
            a.drv.flush();
            let _ = ib.poll(now, &mut b.drv, &mut sb);
            b.drv.flush();
            while let Some((hdr, f)) = a.dev.take_tx() {
                a_to_b(b, hdr, f);
            }
            while let Some((hdr, f)) = b.dev.take_tx() {
                b_to_a(a, hdr, f);
            }
            if echoed.len() == TOTAL {
                break;
            }
        }
        assert_eq!(echoed.len(), TOTAL, "echo incomplete");
        assert!(echoed == data);
        for r in [&*a, &*b] {
            assert_eq!(r.drv.stats().ring_violations, 0);
            check_invariants(r);
        }
    }

    /// TSO end to end: A negotiates `HOST_TSO4` and sends large TCP segments
    /// from TSO buffers; the test cuts them as a host would (checking the
    /// header and the checksum contract) and B's stack, verifying every
    /// checksum, echoes 2 MiB back byte-exact.
    #[test]
    fn tso_segments_cut_by_the_host_arrive_intact() {
        let mut tso = cfg(256, 96, 64, true);
        tso.tso_buffers = 2;
        let mut a = rig(
            NET_F_MAC | NET_F_CSUM | F_ANY_LAYOUT | NET_F_HOST_TSO4,
            [256, 128],
            tso,
            [2, 0, 0, 0, 0, 0xa],
        );
        assert!(a.drv.tso());
        let l = *a.drv.layout();
        assert_eq!((l.tx_buf_count, l.tso_buf_count), (32, 2));
        assert!(a.drv.capabilities().segmentation.tcpv4.is_some());
        // B offers no TSO: nothing changes for it.
        // B's RX ring holds a whole window of cut segments (a host's does).
        let mut b = rig(
            NET_F_MAC | F_ANY_LAYOUT | NET_F_HOST_TSO4,
            [256, 64],
            {
                let mut c = cfg(256, 32, 64, false);
                c.tso_buffers = 2;
                c
            },
            [2, 0, 0, 0, 0, 0xb],
        );
        assert!(!b.drv.tso(), "TSO needs TX checksum offload");
        let counted = crate::metrics::METRICS.tx_tso_frames.get();
        let (mut tso_frames, mut largest) = (0, 0);
        echo_2mib(
            &mut a,
            &mut b,
            |b, hdr, f| {
                if hdr[1] == NET_HDR_GSO_TCPV4 {
                    tso_frames += 1;
                    largest = largest.max(f.len());
                    assert_eq!(hdr[0], NET_HDR_F_NEEDS_CSUM);
                    for seg in segment_like_a_host(&hdr, &f) {
                        assert!(seg.len() <= MAX_FRAME);
                        assert!(b.dev.inject_rx(&seg), "B's RX ring overflowed");
                    }
                } else {
                    assert!(f.len() <= MAX_FRAME, "a large frame without GSO");
                    assert!(b.dev.inject_rx(&f), "B's RX ring overflowed");
                }
            },
            |a, _, f| assert!(a.dev.inject_rx(&f), "A's RX ring overflowed"),
        );
        assert!(tso_frames > 20, "A sent {tso_frames} TSO frames");
        assert!(largest > 16 * 1024, "largest TSO frame {largest} bytes");
        // TX with checksum offload and TSO never reads the pool back (the
        // checksum and segmentation fields come from the private frame), and
        // each frame, header included, reaches its buffer in one write.
        let st = a.mem.0.borrow();
        let tx_area = l.tx_bufs..l.end;
        let tx_reads = st.read_log.iter().filter(|o| tx_area.contains(o)).count();
        assert_eq!(tx_reads, 0, "the driver read its TX buffers back");
        let tx_writes: Vec<_> = st
            .write_log
            .iter()
            .filter(|(o, _)| tx_area.contains(o))
            .collect();
        for &&(o, len) in &tx_writes {
            let small =
                o < l.tso_bufs && (o - l.tx_bufs).is_multiple_of(BUF_SIZE) && len <= BUF_SIZE;
            let large = o >= l.tso_bufs && (o - l.tso_bufs).is_multiple_of(TSO_BUF_SIZE);
            assert!(
                small || large,
                "a TX write at {o:#x}+{len} is not one whole buffer"
            );
        }
        assert_eq!(
            tx_writes.len() as u64,
            a.drv.stats().tx_packets,
            "one write per frame sent"
        );
        // Counted on /metrics (other tests may add to the global counter).
        assert!(crate::metrics::METRICS.tx_tso_frames.get() - counted >= tso_frames as u64);
    }

    /// TSO meets large receive: A's TSO frames reach B whole, as merged
    /// receive buffers (what a host does between two such guests), and B's
    /// stack takes 64 KiB segments; 2 MiB echoed byte-exact.
    #[test]
    fn tso_frames_received_whole_by_large_receive() {
        use crate::virtio::features::{NET_F_GUEST_CSUM, NET_F_GUEST_TSO4, NET_F_MRG_RXBUF};
        // A does both (12-byte headers then, TSO frames up to 64 KiB - 12).
        let mut tso = cfg(256, 96, 64, true);
        tso.tso_buffers = 2;
        tso.rx_checksum_offload = true;
        tso.rx_large_frames = 2;
        let mut a = rig(
            NET_F_MAC
                | NET_F_CSUM
                | F_ANY_LAYOUT
                | NET_F_HOST_TSO4
                | NET_F_GUEST_CSUM
                | NET_F_MRG_RXBUF
                | NET_F_GUEST_TSO4,
            [256, 128],
            tso,
            [2, 0, 0, 0, 0, 0xa],
        );
        assert!(a.drv.large_receive());
        let mut lro = cfg(256, 64, 64, true);
        lro.rx_checksum_offload = true;
        lro.rx_large_frames = 4;
        let mut b = rig(
            NET_F_MAC
                | NET_F_CSUM
                | F_ANY_LAYOUT
                | NET_F_GUEST_CSUM
                | NET_F_MRG_RXBUF
                | NET_F_GUEST_TSO4,
            [256, 64],
            lro,
            [2, 0, 0, 0, 0, 0xb],
        );
        assert!(a.drv.tso());
        assert_ne!(b.drv.features() & NET_F_GUEST_TSO4, 0);
        let mut whole = 0;
        let merged = |r: &mut Rig, hdr: [u8; NET_HDR_LEN], f: Vec<u8>| {
            let side = if r.drv.mac()[5] == 0xa { "A" } else { "B" };
            assert!(
                r.dev.inject_rx_merged(hdr[0], hdr[1], &f, None).is_some(),
                "{side}'s RX ring overflowed"
            );
        };
        echo_2mib(
            &mut a,
            &mut b,
            |b, hdr, f| {
                whole += usize::from(hdr[1] == NET_HDR_GSO_TCPV4);
                merged(b, hdr, f);
            },
            merged,
        );
        assert!(whole > 20, "{whole} TSO frames received whole");
        let largest = a.drv.capabilities().segmentation.tcpv4.map(|n| n.get());
        assert_eq!(largest, Some(TSO_BUF_SIZE - super::super::NET_HDR_MRG_LEN));
    }
}

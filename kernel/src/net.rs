//! Wiring the network: find the virtio-net PCI function, give its driver the
//! shared pool, start the services and poll them forever (no interrupts).

use crate::{
    arch::{cpu, port::ports},
    clock, heap, pci,
    pool::SharedRegion,
};
use alloc::boxed::Box;
use smoltcp::{time::Instant, wire::EthernetAddress};
use vellum_boot::{layout, snp::ghcb::ExitKind};
use vellum_net::{
    metrics::METRICS,
    services::{self, Services},
    shared::IoPorts,
    virtio::{self, VirtioNet},
};

/// Red Hat / virtio PCI vendor id.
const VIRTIO_VENDOR: u16 = 0x1AF4;
/// Transitional virtio-net device id (legacy I/O BAR 0).
const VIRTIO_NET_LEGACY: u16 = 0x1000;
/// Where the kernel places the device's I/O BAR (no firmware assigns BARs).
const VIRTIO_IO_BASE: u16 = 0xC000;

/// The legacy virtio I/O BAR; every access leaves the guest (an I/O exit; a
/// GHCB IOIO exit under SEV-SNP) and is counted.
#[derive(Debug)]
struct VirtioPorts {
    base: u16,
}

impl IoPorts for VirtioPorts {
    fn read8(&mut self, offset: u16) -> u8 {
        METRICS.register_exits.inc();
        ports().inb(self.base + offset)
    }
    fn read16(&mut self, offset: u16) -> u16 {
        METRICS.register_exits.inc();
        ports().inw(self.base + offset)
    }
    fn read32(&mut self, offset: u16) -> u32 {
        METRICS.register_exits.inc();
        ports().inl(self.base + offset)
    }
    fn write8(&mut self, offset: u16, value: u8) {
        METRICS.register_exits.inc();
        ports().outb(self.base + offset, value)
    }
    fn write16(&mut self, offset: u16, value: u16) {
        METRICS.register_exits.inc();
        ports().outw(self.base + offset, value)
    }
    fn write32(&mut self, offset: u16, value: u32) {
        METRICS.register_exits.inc();
        ports().outl(self.base + offset, value)
    }
}

fn now() -> Instant {
    Instant::from_micros(clock::micros() as i64)
}

/// Brings up the NIC and serves forever. Returns only if there is no NIC.
pub fn run(pool: SharedRegion, snp: bool) -> Result<(), &'static str> {
    let Some(f) = pci::find(VIRTIO_VENDOR, VIRTIO_NET_LEGACY) else {
        return Err("no virtio-net (legacy/transitional) PCI device");
    };
    let Some(bar_size) = f.assign_io_bar(0, VIRTIO_IO_BASE) else {
        return Err("virtio-net BAR 0 is not an I/O BAR");
    };
    log::info!(
        "virtio-net at 00:{:02x}.{}: I/O BAR {:#x}+{:#x}",
        f.dev,
        f.func,
        VIRTIO_IO_BASE,
        bar_size
    );
    let config = virtio::Config {
        // 256 + 224 slots of 2 KiB and two 12 KiB rings fill the NIC's
        // region of the pool (1,019,904 of 1,048,576 bytes). 128 TX slots ran
        // out under echo load (a full 256 KiB window is ~180 frames).
        rx_buffers: 256,
        tx_buffers: 224,
        // Where the device offers TSO (a tap backend does; QEMU's user
        // networking does not), 4 × 64 KiB TSO buffers take the room of 128
        // small TX buffers: a 256 KiB echo window leaves as 4 frames.
        tso_buffers: 4,
        // Large receive where the device offers it (tap): segments of up to
        // 64 KiB gathered from the 2 KiB receive buffers into 4 private
        // frames (272 KiB of heap).
        rx_large_frames: if cfg!(feature = "no-large-receive") {
            0
        } else {
            4
        },
        ..virtio::Config::default()
    };
    let end = vellum_net::shared::SharedMem::size(&pool);
    // Where the NIC's region starts in the pool (for the log).
    let pool_offset = (pool.gpa() - layout::POOL_BASE) as usize;
    let mut nic = match VirtioNet::new(
        pool,
        VirtioPorts {
            base: VIRTIO_IO_BASE,
        },
        0,
        end,
        config,
    ) {
        Ok(n) => n,
        Err(e) => panic!("virtio-net init: {e:?}"),
    };
    let l = nic.layout();
    log::info!(
        "virtio-net: mac {}, {} RX + {} TX + {} TSO buffers in pool {:#x}..{:#x}, csum offload tx {} rx {}, tso {}, large receive {}",
        EthernetAddress(nic.mac()),
        l.rx_buf_count,
        l.tx_buf_count,
        l.tso_buf_count,
        pool_offset,
        pool_offset + l.end,
        nic.tx_checksum_offload(),
        nic.rx_checksum_offload(),
        nic.tso(),
        nic.large_receive()
    );
    if virtio::UNCONSTRAINED_IO {
        warn_unconstrained();
    }
    let cfg = services::Config {
        random_seed: seed(),
        ..services::Config::default()
    };
    let mac = EthernetAddress(nic.mac());
    let mut svc = match Services::new(cfg, &mut nic, mac, now()) {
        Ok(s) => s,
        Err(e) => panic!("network services: {e:?}"),
    };
    svc.set_cycle_clock(cpu::rdtsc);
    svc.set_metrics_extra(Box::new(|w: &mut vellum_net::http::MetricsWriter<'_>| {
        let (used, free) = heap::stats();
        w.gauge("heap_used_bytes", "Kernel heap in use.", used as u64);
        w.gauge("heap_free_bytes", "Kernel heap free.", free as u64);
        w.gauge(
            "shared_pool_bytes",
            "Size of the one memory range shared with the host.",
            layout::POOL_SIZE,
        );
        w.gauge(
            "uptime_seconds",
            "Seconds since reset.",
            clock::micros() / 1_000_000,
        );
        w.gauge(
            "uptime_microseconds",
            "Microseconds since reset, by the kernel clock (to check it against another).",
            clock::micros(),
        );
        if let Some(c) = clock::calibration() {
            w.gauge(
                "tsc_calibration_error_ppm",
                "Bound on the TSC calibration's error at boot, parts per million \
                 (1000000 when the PIT never counted).",
                c.error_ppm.unwrap_or(1_000_000),
            );
        }
        let p = &services::POLL_CYCLES;
        w.counter("polls", "Service polls measured.", p.polls.get());
        for (name, help, c) in [
            (
                "poll_ingress_cycles",
                "TSC cycles receiving (driver copy-out, smoltcp ingress).",
                &p.ingress,
            ),
            (
                "poll_serve_cycles",
                "TSC cycles serving connections.",
                &p.serve,
            ),
            (
                "poll_egress_cycles",
                "TSC cycles transmitting (smoltcp egress, frames built in the pool).",
                &p.egress,
            ),
        ] {
            w.counter(name, help, c.get());
        }
        // SEV-SNP exits, counted by the kernel (0 without SNP). On the data
        // path: none per received frame (RX buffers are reposted without a
        // notify unless the device ran out of them), at most one per
        // transmitted batch (the TX notify in `nic.flush()`); both are also in
        // `register_exits`. An intercepted RDTSC would add a #VC and an
        // `rdtsc` exit per clock read (one per poll): watch `snp_vc`.
        let exits = crate::sev::exits();
        let kinds = ExitKind::ALL.map(|k| (k.name(), exits.get(k)));
        w.counter_family(
            "snp_vmgexits",
            "VMGEXITs the kernel made under SEV-SNP, by kind (msr_protocol, io, msr, cpuid, \
             psc, guest_request, rdtsc, other).",
            "kind",
            &kinds,
        );
        w.counter(
            "snp_boot_vmgexits",
            "VMGEXITs the boot stage made under SEV-SNP (memory validation, GHCB set-up, \
             console).",
            crate::sev::boot_vmgexits(),
        );
        w.counter(
            "snp_vc",
            "#VC exceptions the kernel handled (CPUID, intercepted RDTSC/RDTSCP).",
            crate::sev::vc::count(),
        );
    }));
    // TLS (HTTPS :443, TLS echo :7443) and the attestation endpoint.
    let tls = crate::tls::start(&mut svc, snp);
    if let Err(e) = tls {
        log::error!("tls: {e}; HTTPS and TLS echo are off");
    }
    let addr = svc.address();
    log::info!(
        "services: http :80, echo :7{} (buffers {} KiB)",
        if tls.is_ok() {
            ", https :443, tls echo :7443"
        } else {
            ""
        },
        svc.config().buffer_bytes() >> 10
    );
    // Tell the link we are here (a peer that asked for us while we booted
    // learns our MAC now, not at its next ARP retry) and resolve the gateway.
    svc.announce(&mut nic, now());
    nic.flush();
    log::info!("boot to ready: {} us since reset", clock::micros());
    match addr {
        Some(a) => crate::println!("vellum ready at {a}"),
        None => crate::println!("vellum ready (no address yet: waiting for DHCP)"),
    }
    loop {
        let r = svc.poll(&mut nic, now());
        nic.flush();
        if !r.activity {
            core::hint::spin_loop();
        }
    }
}

/// The `unconstrained-io` measurement build says what it is, loudly, on the
/// console (it is never a default; `bench/trusted-io.sh` builds it).
fn warn_unconstrained() {
    for _ in 0..3 {
        crate::println!(
            "!!! vellum: UNCONSTRAINED I/O BUILD - FOR MEASUREMENT ONLY, NOT SECURE: RX frames are parsed inside host-shared memory and device-written ring fields are trusted without validation !!!"
        );
    }
}

/// A per-boot seed for smoltcp (TCP initial sequence numbers, DHCP xid): RDRAND
/// when the CPU has it, else the TSC.
fn seed() -> u64 {
    cpu::rdrand64().unwrap_or_else(cpu::rdtsc)
}

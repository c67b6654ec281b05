//! End-to-end tests: a client interface and the services, joined by an
//! in-memory Ethernet wire, with time driven by hand.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::vec::Vec;

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address, Ipv4Cidr};

use super::*;
use crate::http::INDEX_HTML;
use crate::http::tests::{Resp, Rng, parse_responses};

/// Two queues of Ethernet frames, one per direction.
#[derive(Default)]
struct Wire {
    queues: [VecDeque<Vec<u8>>; 2],
}

/// One end of the wire: receives from `queues[side]`, sends to the other.
struct End {
    wire: Rc<RefCell<Wire>>,
    side: usize,
}

struct Rx(Vec<u8>);
struct Tx {
    wire: Rc<RefCell<Wire>>,
    to: usize,
}

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.wire.borrow_mut().queues[self.to].push_back(frame);
        r
    }
}

impl Device for End {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx;

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }

    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx)> {
        let frame = self.wire.borrow_mut().queues[self.side].pop_front()?;
        Some((
            Rx(frame),
            Tx {
                wire: self.wire.clone(),
                to: 1 - self.side,
            },
        ))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx> {
        Some(Tx {
            wire: self.wire.clone(),
            to: 1 - self.side,
        })
    }
}

const SERVER_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 1]);
const CLIENT_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 2]);
const SERVER_IP: Ipv4Address = Ipv4Address::new(10, 0, 2, 15);

/// The services, a client stack, and the clock.
struct Net {
    server: Services,
    server_dev: End,
    client: Interface,
    client_dev: End,
    client_sockets: SocketSet<'static>,
    now: Instant,
    next_port: u16,
}

fn test_config() -> Config {
    Config {
        dhcp: false,
        random_seed: 0x1234,
        ..Config::DEFAULT
    }
}

impl Net {
    fn new(config: Config) -> Net {
        let wire = Rc::new(RefCell::new(Wire::default()));
        let mut server_dev = End {
            wire: wire.clone(),
            side: 0,
        };
        let mut client_dev = End { wire, side: 1 };
        let now = Instant::from_millis(0);
        let server = Services::new(config, &mut server_dev, SERVER_MAC, now).expect("services");
        let mut cfg = IfaceConfig::new(HardwareAddress::Ethernet(CLIENT_MAC));
        cfg.random_seed = 99;
        let mut client = Interface::new(cfg, &mut client_dev, now);
        client.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(10, 0, 2, 100), 24))
                .unwrap();
        });
        Net {
            server,
            server_dev,
            client,
            client_dev,
            client_sockets: SocketSet::new(Vec::new()),
            now,
            next_port: 40000,
        }
    }

    /// One round: server polls, client polls, time advances by `dt`.
    fn step_by(&mut self, dt: Duration) {
        self.server.poll(&mut self.server_dev, self.now);
        self.client
            .poll(self.now, &mut self.client_dev, &mut self.client_sockets);
        for _ in 0..64 {
            let r =
                self.client
                    .poll_egress(self.now, &mut self.client_dev, &mut self.client_sockets);
            if r == smoltcp::iface::PollResult::None {
                break;
            }
        }
        self.now += dt;
    }

    fn step(&mut self) {
        self.step_by(Duration::from_millis(1));
    }

    /// Steps until `done` or `max` steps (then panics).
    fn run_until(&mut self, max: usize, mut done: impl FnMut(&mut Net) -> bool) {
        for _ in 0..max {
            if done(self) {
                return;
            }
            self.step();
        }
        panic!("condition not reached in {max} steps");
    }

    fn connect(&mut self, port: u16, buf: usize) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buf]),
            tcp::SocketBuffer::new(vec![0; buf]),
        );
        s.set_nagle_enabled(false);
        self.next_port += 1;
        s.connect(
            self.client.context(),
            (IpAddress::Ipv4(SERVER_IP), port),
            self.next_port,
        )
        .unwrap();
        self.client_sockets.add(s)
    }

    fn sock(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.client_sockets.get_mut::<tcp::Socket<'static>>(h)
    }

    fn send_all(&mut self, h: SocketHandle, mut data: &[u8]) {
        self.run_until(10_000, |n| {
            let s = n.sock(h);
            if s.can_send() {
                let k = s.send_slice(data).unwrap();
                data = &data[k..];
            }
            data.is_empty()
        });
    }

    /// Reads everything available into `into`.
    fn drain(&mut self, h: SocketHandle, into: &mut Vec<u8>) {
        let s = self.sock(h);
        while s.can_recv() {
            s.recv(|b| {
                into.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
    }

    /// Reads until `count` complete responses arrived.
    fn read_responses(&mut self, h: SocketHandle, count: usize) -> Vec<Resp> {
        let mut buf = Vec::new();
        self.run_until(20_000, |n| {
            n.drain(h, &mut buf);
            complete_responses(&buf) >= count
        });
        parse_responses(&buf, &[])
    }

    fn get(&mut self, h: SocketHandle, path: &str) -> Resp {
        let req = format!("GET {path} HTTP/1.1\r\nHost: vellum\r\n\r\n");
        self.send_all(h, req.as_bytes());
        self.read_responses(h, 1).remove(0)
    }
}

/// How many complete responses `buf` holds.
fn complete_responses(mut buf: &[u8]) -> usize {
    let mut n = 0;
    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = std::str::from_utf8(&buf[..end]).unwrap();
        let len: usize = head
            .split("\r\n")
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        if buf.len() < end + 4 + len {
            break;
        }
        buf = &buf[end + 4 + len..];
        n += 1;
    }
    n
}

#[test]
fn static_address_and_config_checks() {
    let net = Net::new(test_config());
    assert_eq!(net.server.address(), Some(SERVER_IP));
    assert_eq!(net.server.address_source(), AddressSource::Static);

    let wire = Rc::new(RefCell::new(Wire::default()));
    let mut dev = End { wire, side: 0 };
    let now = Instant::from_millis(0);
    let bad_mac = EthernetAddress([0xff; 6]);
    assert_eq!(
        Services::new(test_config(), &mut dev, bad_mac, now).map(|_| ()),
        Err(Error::BadMac)
    );
    let mut cfg = test_config();
    cfg.http_pool.sockets = 0;
    assert_eq!(
        Services::new(cfg, &mut dev, SERVER_MAC, now).map(|_| ()),
        Err(Error::BadConfig)
    );
}

#[test]
fn dhcp_lease_replaces_and_falls_back() {
    let mut net = Net::new(Config {
        dhcp: true,
        ..test_config()
    });
    // DHCP discovers go out on the wire without disturbing anything.
    for _ in 0..50 {
        net.step();
    }
    let lease = Ipv4Cidr::new(Ipv4Address::new(192, 168, 7, 9), 24);
    net.server
        .apply_lease(Some((lease, Some(Ipv4Address::new(192, 168, 7, 1)))));
    assert_eq!(net.server.address(), Some(Ipv4Address::new(192, 168, 7, 9)));
    assert_eq!(net.server.address_source(), AddressSource::Dhcp);
    net.server.apply_lease(None);
    assert_eq!(net.server.address(), Some(SERVER_IP));
    assert_eq!(net.server.address_source(), AddressSource::Static);
}

#[test]
fn get_index_exact_body() {
    let mut net = Net::new(test_config());
    let h = net.connect(80, 4096);
    let r = net.get(h, "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, INDEX_HTML);
    assert_eq!(r.header("Connection"), Some("keep-alive"));
    let r = net.get(h, "/health");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]));
    let r = net.get(h, "/metrics");
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.contains("# TYPE vellum_tcp_accepted_total counter"));
    assert!(text.contains("vellum_http_connections 1\n"), "{text}");
}

#[test]
fn two_hundred_requests_on_one_connection() {
    let mut net = Net::new(test_config());
    let h = net.connect(80, 4096);
    for i in 0..200 {
        let path = if i % 2 == 0 { "/" } else { "/health" };
        let r = net.get(h, path);
        assert_eq!(r.status, 200, "request {i}");
    }
    assert!(net.sock(h).is_active());
}

#[test]
fn sixty_four_concurrent_connections() {
    let mut net = Net::new(test_config());
    let handles: Vec<_> = (0..64).map(|_| net.connect(80, 2048)).collect();
    net.run_until(1000, |n| handles.iter().all(|&h| n.sock(h).may_send()));
    // All 64 are established at the same time before any request.
    net.run_until(10, |n| n.server.gauges().http_connections == 64);
    net.step();
    // What /metrics shows is counted during the poll's pass over the pools.
    assert_eq!(net.server.counted, net.server.gauges());
    for &h in &handles {
        net.sock(h)
            .send_slice(b"GET / HTTP/1.1\r\nHost: v\r\nConnection: close\r\n\r\n")
            .unwrap();
    }
    let mut bufs = vec![Vec::new(); 64];
    net.run_until(5000, |n| {
        for (i, &h) in handles.iter().enumerate() {
            n.drain(h, &mut bufs[i]);
        }
        bufs.iter().all(|b| complete_responses(b) == 1)
    });
    for b in &bufs {
        let r = &parse_responses(b, &[])[0];
        assert_eq!((r.status, r.body.as_slice()), (200, INDEX_HTML));
        assert_eq!(r.header("Connection"), Some("close"));
    }
    // The server closes; once the clients close too, every socket listens again.
    net.run_until(1000, |n| handles.iter().all(|&h| !n.sock(h).may_recv()));
    for &h in &handles {
        net.sock(h).close();
    }
    net.run_until(1000, |n| n.server.gauges().http_listeners == 72);
    assert_eq!(net.server.gauges().http_connections, 0);
    net.step();
    assert_eq!(net.server.counted, net.server.gauges());
}

#[test]
fn pool_exhaustion_closes_the_longest_idle_connection() {
    let mut cfg = test_config();
    cfg.http_pool.sockets = 4;
    let mut net = Net::new(cfg);
    let idle: Vec<_> = (0..4).map(|_| net.connect(80, 2048)).collect();
    for &h in &idle {
        net.run_until(1000, |n| n.sock(h).may_send());
        net.step_by(Duration::from_millis(100));
    }
    // Pool full; the oldest idle connection makes room for a new one.
    let h = net.connect(80, 2048);
    net.run_until(3000, |n| n.sock(h).may_send());
    assert_eq!(net.get(h, "/health").status, 200);
    net.run_until(1000, |n| !n.sock(idle[0]).may_recv());
}

#[test]
fn echo_four_mebibytes_byte_exact() {
    let mut net = Net::new(test_config());
    let h = net.connect(7, 64 * 1024);
    let mut rng = Rng(7);
    let data: Vec<u8> = (0..4 << 20).map(|_| rng.next() as u8).collect();
    let mut sent = 0;
    let mut got = Vec::with_capacity(data.len());
    let before = crate::metrics::METRICS.echo_bytes.get();
    net.run_until(200_000, |n| {
        let s = n.sock(h);
        if sent < data.len() && s.can_send() {
            sent += s.send_slice(&data[sent..]).unwrap();
        }
        n.drain(h, &mut got);
        got.len() >= data.len()
    });
    assert_eq!(got.len(), data.len());
    assert!(got == data, "echo differs");
    println!("4 MiB echoed in {} simulated ms", net.now.total_millis());
    assert!(crate::metrics::METRICS.echo_bytes.get() - before >= data.len() as u64);
    // Half-close: the server finishes and closes too.
    net.sock(h).close();
    net.run_until(1000, |n| !n.sock(h).is_open() || !n.sock(h).may_recv());
}

#[test]
fn bad_clients_do_not_disturb_good_ones() {
    let mut net = Net::new(test_config());
    let good = net.connect(80, 4096);
    let garbage = net.connect(80, 4096);
    let slow = net.connect(80, 4096);
    let huge = net.connect(80, 4096);
    net.run_until(1000, |n| {
        [good, garbage, slow, huge]
            .iter()
            .all(|&h| n.sock(h).may_send())
    });

    net.send_all(garbage, b"\x00\x01garbage\r\n\r\n");
    net.send_all(slow, b"GET / HTTP/1.1\r\nHo");
    net.send_all(huge, &vec![b'A'; 20_000]);
    for _ in 0..20 {
        assert_eq!(net.get(good, "/").status, 200);
    }
    let r = net.read_responses(garbage, 1);
    assert_eq!(r[0].status, 400);
    assert_eq!(r[0].header("Connection"), Some("close"));
    net.run_until(1000, |n| !n.sock(garbage).may_recv());
    let r = net.read_responses(huge, 1);
    assert_eq!(r[0].status, 414);
    // The slow one is still waiting, and still open.
    assert!(net.sock(slow).may_recv());
    assert_eq!(net.get(good, "/health").status, 200);
}

#[test]
fn idle_and_request_timeouts_close() {
    let mut net = Net::new(test_config());
    let idle = net.connect(80, 4096);
    let partial = net.connect(80, 4096);
    net.run_until(1000, |n| {
        n.sock(idle).may_send() && n.sock(partial).may_send()
    });
    net.send_all(partial, b"GET / HTTP/1.1\r\n");
    // 9 s: both still open.
    for _ in 0..9 {
        net.step_by(Duration::from_secs(1));
    }
    assert!(net.sock(partial).may_recv() && net.sock(idle).may_recv());
    // Past 10 s the partial request is closed, without a response.
    for _ in 0..2 {
        net.step_by(Duration::from_secs(1));
    }
    net.run_until(100, |n| !n.sock(partial).may_recv());
    let mut buf = Vec::new();
    net.drain(partial, &mut buf);
    assert!(buf.is_empty());
    assert!(net.sock(idle).may_recv());
    // Past 30 s the idle one is closed.
    for _ in 0..20 {
        net.step_by(Duration::from_secs(1));
    }
    net.run_until(100, |n| !n.sock(idle).may_recv());
}

#[test]
fn poll_reports_timers() {
    let mut net = Net::new(test_config());
    let h = net.connect(80, 4096);
    net.run_until(1000, |n| n.sock(h).may_send());
    net.step();
    let r = net.server.poll(&mut net.server_dev, net.now);
    // The idle timer (30 s) or an earlier smoltcp timer bounds the wait.
    let wait = r.next_poll.expect("a timer is pending");
    assert!(wait <= Duration::from_secs(30), "{wait}");
}

#[test]
fn memory_budget() {
    let cfg = Config::DEFAULT;
    assert_eq!(cfg.http_pool.buffer_bytes(), 72 * 16 * 1024);
    assert_eq!(cfg.echo_pool.buffer_bytes(), 8 * 512 * 1024);
    assert_eq!(cfg.buffer_bytes(), 5312 * 1024);
    let socket = core::mem::size_of::<tcp::Socket<'static>>();
    let session = core::mem::size_of::<HttpSession>();
    println!("tcp::Socket {socket} B, HttpSession {session} B");
    assert!(socket < 1024 && session < 512);
}

/// A stand-in for TLS: XOR "encryption" wrapped around any session, built the
/// way a TLS record layer would be (decrypt into the inner session's `feed`,
/// encrypt its `output` into our own buffer).
struct XorSession<S: ?Sized> {
    key: u8,
    out: Vec<u8>,
    inner: Box<S>,
}

impl Session for XorSession<DynSession> {
    type Env = dyn crate::http::Handler;

    fn recv_window(&self) -> usize {
        self.inner.recv_window()
    }
    fn feed(&mut self, data: &[u8], now: Instant) -> usize {
        let plain: Vec<u8> = data[..data.len().min(self.recv_window())]
            .iter()
            .map(|b| b ^ self.key)
            .collect();
        self.inner.feed(&plain, now)
    }
    fn finish_input(&mut self) {
        self.inner.finish_input();
    }
    fn advance(&mut self, now: Instant, env: &Self::Env) {
        self.inner.advance(now, env);
        let o = self.inner.output();
        self.out.extend(o.iter().map(|b| b ^ self.key));
        let n = o.len();
        self.inner.consume_output(n, now);
    }
    fn output(&self) -> &[u8] {
        &self.out
    }
    fn consume_output(&mut self, n: usize, _now: Instant) {
        self.out.drain(..n);
    }
    fn wants_close(&self) -> bool {
        self.inner.wants_close()
    }
    fn deadline(&self) -> Option<Instant> {
        self.inner.deadline()
    }
}

#[test]
fn added_services_run_wrapped_sessions() {
    let mut net = Net::new(test_config());
    let pool = PoolConfig {
        sockets: 2,
        rx_buffer: 4096,
        tx_buffer: 4096,
    };
    let http = |now: Instant| -> Box<DynSession> {
        Box::new(XorSession {
            key: 0x5a,
            out: Vec::new(),
            inner: Box::new(HttpSession::new(HttpConfig::DEFAULT, now)) as Box<DynSession>,
        })
    };
    net.server.add_service(7443, pool, Box::new(http)).unwrap();
    let echo = |_: Instant| -> Box<DynSession> { Box::new(EchoSession::new(1024)) };
    net.server.add_service(7007, pool, Box::new(echo)).unwrap();
    assert_eq!(
        net.server.add_service(80, pool, Box::new(echo)),
        Err(Error::PortInUse)
    );

    let h = net.connect(7443, 4096);
    let req: Vec<u8> = b"GET / HTTP/1.1\r\nHost: v\r\n\r\n"
        .iter()
        .map(|b| b ^ 0x5a)
        .collect();
    net.send_all(h, &req);
    let mut got = Vec::new();
    net.run_until(2000, |n| {
        let mut raw = Vec::new();
        n.drain(h, &mut raw);
        got.extend(raw.iter().map(|b| b ^ 0x5a));
        complete_responses(&got) == 1
    });
    let r = &parse_responses(&got, &[])[0];
    assert_eq!((r.status, r.body.as_slice()), (200, INDEX_HTML));

    let h = net.connect(7007, 4096);
    let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    let mut sent = 0;
    let mut back = Vec::new();
    net.run_until(5000, |n| {
        let s = n.sock(h);
        if sent < data.len() && s.can_send() {
            sent += s.send_slice(&data[sent..]).unwrap();
        }
        n.drain(h, &mut back);
        back.len() == data.len()
    });
    assert_eq!(back, data);
}

#[test]
fn pipelined_requests_over_tcp() {
    let mut net = Net::new(test_config());
    let h = net.connect(80, 16 * 1024);
    let mut req = Vec::new();
    for i in 0..50 {
        let path = ["/", "/health", "/missing"][i % 3];
        req.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: v\r\n\r\n").as_bytes());
    }
    net.send_all(h, &req);
    let rs = net.read_responses(h, 50);
    assert_eq!(rs.len(), 50);
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(r.status, [200, 200, 404][i % 3], "response {i}");
    }
}

#[test]
fn random_bytes_from_many_clients() {
    let mut net = Net::new(test_config());
    let mut rng = Rng(0xdead_beef);
    let good = net.connect(80, 4096);
    let bad: Vec<_> = (0..16).map(|_| net.connect(80, 4096)).collect();
    net.run_until(1000, |n| {
        bad.iter().chain([&good]).all(|&h| n.sock(h).may_send())
    });
    for round in 0..5 {
        for &h in &bad {
            let s = net.sock(h);
            if s.can_send() {
                let len = 1 + rng.below(3000);
                let junk: Vec<u8> = (0..len)
                    .map(|_| {
                        // Mostly plausible bytes, some binary.
                        let x = rng.next();
                        if x.is_multiple_of(4) {
                            x as u8
                        } else {
                            b"GET / HTTP/1.1\r\n:aA \x00"[(x % 21) as usize]
                        }
                    })
                    .collect();
                let _ = s.send_slice(&junk);
            }
        }
        assert_eq!(net.get(good, "/health").status, 200, "round {round}");
    }
    // Every bad connection ends up answered-and-closed or still pending; none
    // disturbs the server, which still accepts new clients.
    let fresh = net.connect(80, 4096);
    assert_eq!(net.get(fresh, "/").status, 200);
}

#[test]
fn announce_sends_gratuitous_arp_and_resolves_the_gateway() {
    use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol};
    let mut net = Net::new(test_config());
    let now = net.now;
    assert_eq!(net.server.announce(&mut net.server_dev, now), 2);
    let frames: Vec<Vec<u8>> = net.server_dev.wire.borrow_mut().queues[1]
        .drain(..)
        .collect();
    assert_eq!(frames.len(), 2);
    let mut targets = Vec::new();
    for f in &frames {
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!(eth.dst_addr(), EthernetAddress::BROADCAST);
        assert_eq!(eth.src_addr(), SERVER_MAC);
        assert_eq!(eth.ethertype(), EthernetProtocol::Arp);
        match ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap() {
            ArpRepr::EthernetIpv4 {
                operation,
                source_hardware_addr,
                source_protocol_addr,
                target_protocol_addr,
                ..
            } => {
                assert_eq!(operation, ArpOperation::Request);
                assert_eq!(source_hardware_addr, SERVER_MAC);
                assert_eq!(source_protocol_addr, SERVER_IP);
                targets.push(target_protocol_addr);
            }
            _ => unreachable!(),
        }
    }
    assert_eq!(targets, [SERVER_IP, Ipv4Address::new(10, 0, 2, 2)]);
    // Still serving normally afterwards.
    let h = net.connect(80, 4096);
    assert_eq!(net.get(h, "/").status, 200);
}

/// A TCP peer scripted segment by segment, speaking raw frames to the
/// services. It behaves as QEMU's slirp (a BSD-derived stack) did in a packet
/// capture of a stalled guest echo: no window scaling, a constant 65,535-byte
/// window, and, until its FIN is acknowledged, every segment it sends carries
/// the FIN again (sequence number of the FIN, FIN flag set).
struct ScriptedPeer {
    wire: Rc<RefCell<Wire>>,
    port: u16,
    /// Our next sequence number (the FIN's, once sent).
    snd_nxt: u32,
    fin_sent: bool,
    fin_acked: bool,
    /// The server's next sequence number we expect.
    rcv_nxt: u32,
    /// Bytes the server sent, in order.
    got: Vec<u8>,
}

/// One TCP segment from the server, as the peer saw it.
struct Seen {
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    fin: bool,
    payload: Vec<u8>,
}

const PEER_IP: Ipv4Address = Ipv4Address::new(10, 0, 2, 100);

impl ScriptedPeer {
    fn send(&self, seq: u32, ack: Option<u32>, control: smoltcp::wire::TcpControl, payload: &[u8]) {
        use smoltcp::phy::ChecksumCapabilities;
        use smoltcp::wire::{
            EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet, Ipv4Repr,
            TcpPacket, TcpRepr, TcpSeqNumber,
        };
        let tcp = TcpRepr {
            src_port: self.port,
            dst_port: 7,
            control,
            seq_number: TcpSeqNumber(seq as i32),
            ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
            window_len: 65535,
            window_scale: None,
            max_seg_size: (control == smoltcp::wire::TcpControl::Syn).then_some(1460),
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let ip = Ipv4Repr {
            src_addr: PEER_IP,
            dst_addr: SERVER_IP,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let eth = EthernetRepr {
            src_addr: CLIENT_MAC,
            dst_addr: SERVER_MAC,
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut frame = vec![0; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
        let mut f = EthernetFrame::new_unchecked(&mut frame[..]);
        eth.emit(&mut f);
        let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
        let caps = ChecksumCapabilities::default();
        ip.emit(&mut p, &caps);
        let mut t = TcpPacket::new_unchecked(p.payload_mut());
        tcp.emit(&mut t, &PEER_IP.into(), &SERVER_IP.into(), &caps);
        self.wire.borrow_mut().queues[0].push_back(frame);
    }

    /// Sends an ACK for everything received, slirp style.
    fn ack(&self) {
        use smoltcp::wire::TcpControl;
        if self.fin_sent && !self.fin_acked {
            self.send(self.snd_nxt, Some(self.rcv_nxt), TcpControl::Fin, &[]);
        } else {
            let seq = self.snd_nxt.wrapping_add(u32::from(self.fin_sent));
            self.send(seq, Some(self.rcv_nxt), TcpControl::None, &[]);
        }
    }

    /// Takes the server's frames: answers ARP, returns its TCP segments and
    /// keeps in-order payload.
    fn take(&mut self) -> Vec<Seen> {
        use smoltcp::wire::{
            ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, EthernetRepr,
            IpProtocol, Ipv4Packet, TcpPacket,
        };
        let frames: Vec<Vec<u8>> = self.wire.borrow_mut().queues[1].drain(..).collect();
        let mut seen = Vec::new();
        for frame in frames {
            let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
            if eth.ethertype() == EthernetProtocol::Arp {
                let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
                if let ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Request,
                    source_hardware_addr,
                    source_protocol_addr,
                    target_protocol_addr,
                    ..
                } = arp
                    && target_protocol_addr == PEER_IP
                {
                    let reply = ArpRepr::EthernetIpv4 {
                        operation: ArpOperation::Reply,
                        source_hardware_addr: CLIENT_MAC,
                        source_protocol_addr: PEER_IP,
                        target_hardware_addr: source_hardware_addr,
                        target_protocol_addr: source_protocol_addr,
                    };
                    let e = EthernetRepr {
                        src_addr: CLIENT_MAC,
                        dst_addr: source_hardware_addr,
                        ethertype: EthernetProtocol::Arp,
                    };
                    let mut out = vec![0; e.buffer_len() + reply.buffer_len()];
                    let mut f = EthernetFrame::new_unchecked(&mut out[..]);
                    e.emit(&mut f);
                    reply.emit(&mut ArpPacket::new_unchecked(f.payload_mut()));
                    self.wire.borrow_mut().queues[0].push_back(out);
                }
                continue;
            }
            let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
            if ip.next_header() != IpProtocol::Tcp {
                continue;
            }
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            if tcp.dst_port() != self.port {
                continue;
            }
            let s = Seen {
                seq: tcp.seq_number().0 as u32,
                ack: tcp.ack().then(|| tcp.ack_number().0 as u32),
                syn: tcp.syn(),
                fin: tcp.fin(),
                payload: tcp.payload().to_vec(),
            };
            if let Some(a) = s.ack
                && self.fin_sent
                && a == self.snd_nxt.wrapping_add(1)
            {
                self.fin_acked = true;
            }
            // In-order bytes only (retransmissions may overlap what we have).
            let skip = self.rcv_nxt.wrapping_sub(s.seq) as usize;
            if !s.syn && skip < s.payload.len() {
                self.got.extend_from_slice(&s.payload[skip..]);
                self.rcv_nxt = self.rcv_nxt.wrapping_add((s.payload.len() - skip) as u32);
            }
            seen.push(s);
        }
        seen
    }
}

/// Regression (found with a packet capture of a guest echo test that stalled
/// for 20 s and lost the tail): the peer's FIN arrives while a full window of
/// echo data is in flight, and the ACKs for that data come as FIN
/// retransmissions, which TCP treats as old segments and drops. smoltcp 0.12
/// also stopped the retransmit timer on the FIN, so nothing was ever sent
/// again until the TCP timeout reset the connection. The data must still all
/// come back, by retransmission, well before that timeout.
#[test]
fn echo_completes_when_acks_arrive_as_fin_retransmissions() {
    use smoltcp::wire::TcpControl;
    let mut net = Net::new(test_config());
    let mut peer = ScriptedPeer {
        wire: net.server_dev.wire.clone(),
        port: 41_000,
        snd_nxt: 1_000,
        fin_sent: false,
        fin_acked: false,
        rcv_nxt: 0,
        got: Vec::new(),
    };
    let poll = |net: &mut Net| {
        net.server.poll(&mut net.server_dev, net.now);
        net.now += Duration::from_millis(1);
    };
    // Handshake.
    peer.send(peer.snd_nxt, None, TcpControl::Syn, &[]);
    peer.snd_nxt += 1;
    let mut server_isn = None;
    for _ in 0..10 {
        poll(&mut net);
        if let Some(s) = peer.take().into_iter().find(|s| s.syn) {
            server_isn = Some(s.seq);
            break;
        }
    }
    let isn = server_isn.expect("SYN-ACK");
    peer.rcv_nxt = isn.wrapping_add(1);
    let acked_first = peer.rcv_nxt;
    peer.send(peer.snd_nxt, Some(acked_first), TcpControl::None, &[]);
    // Data: 160 KiB, acknowledging none of the echo, so the server fills our
    // 64 KiB window and queues the rest.
    let mut rng = Rng(42);
    let data: Vec<u8> = (0..160 * 1024).map(|_| rng.next() as u8).collect();
    let (start, mut una) = (peer.snd_nxt, peer.snd_nxt);
    for _ in 0..1_000 {
        while (peer.snd_nxt.wrapping_sub(start) as usize) < data.len()
            && peer.snd_nxt.wrapping_sub(una) < 60_000
        {
            let off = peer.snd_nxt.wrapping_sub(start) as usize;
            let chunk = &data[off..data.len().min(off + 1460)];
            peer.send(peer.snd_nxt, Some(acked_first), TcpControl::None, chunk);
            peer.snd_nxt = peer.snd_nxt.wrapping_add(chunk.len() as u32);
        }
        poll(&mut net);
        for s in peer.take() {
            if let Some(a) = s.ack {
                una = a;
            }
        }
        if una == peer.snd_nxt && peer.snd_nxt.wrapping_sub(start) as usize == data.len() {
            break;
        }
    }
    assert_eq!(
        una.wrapping_sub(start) as usize,
        data.len(),
        "server took all data"
    );
    let in_flight = peer.got.len();
    assert!(
        (60_000..=65_535).contains(&in_flight),
        "the server should have a full window in flight, has {in_flight}"
    );
    // FIN (acknowledging none of the echo), then the ACKs for the window in
    // flight, each dressed as a FIN retransmission, all before the server
    // polls again.
    peer.send(peer.snd_nxt, Some(acked_first), TcpControl::Fin, &[]);
    peer.fin_sent = true;
    let mut ack = acked_first;
    while ack != peer.rcv_nxt {
        ack = ack.wrapping_add((peer.rcv_nxt.wrapping_sub(ack)).min(1460));
        peer.send(peer.snd_nxt, Some(ack), TcpControl::Fin, &[]);
    }
    // From here on the peer only answers what the server sends, as slirp
    // does. 15 s of simulated time; the TCP timeout is 20 s.
    let mut server_fin = false;
    for _ in 0..15_000 {
        poll(&mut net);
        let seen = peer.take();
        if seen.iter().any(|s| s.fin) && !server_fin {
            server_fin = true;
            peer.rcv_nxt = peer.rcv_nxt.wrapping_add(1);
        }
        if seen.iter().any(|s| !s.payload.is_empty() || s.fin) {
            peer.ack();
        }
        if peer.got.len() >= data.len() && server_fin {
            break;
        }
    }
    assert!(peer.fin_acked, "the server acknowledged the FIN");
    assert_eq!(
        peer.got.len(),
        data.len(),
        "echo stalled after {} ms",
        net.now.total_millis()
    );
    assert!(peer.got == data, "echoed bytes differ");
    assert!(server_fin, "the server closed after echoing everything");
}

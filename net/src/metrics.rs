//! Counters exported on `/metrics` (Prometheus text format).
//!
//! One global set of relaxed atomics: the data path is single-threaded, the
//! atomics only make the statics safe to share with the kernel's port-I/O layer.

use core::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

/// Every counter Vellum exports. Names are the Prometheus metric names.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Frames received from the device and handed to the stack.
    pub rx_packets: Counter,
    /// Bytes of those frames.
    pub rx_bytes: Counter,
    /// Frames handed to the device.
    pub tx_packets: Counter,
    /// Bytes of those frames.
    pub tx_bytes: Counter,
    /// Payload bytes copied out of the shared pool into private memory (RX).
    pub rx_copy_bytes: Counter,
    /// Payload bytes written into the shared pool (TX).
    pub tx_copy_bytes: Counter,
    /// Device completions refused by validation (bad id, length, duplicate, index jump).
    pub ring_violations: Counter,
    /// Register accesses that left the guest (port I/O; GHCB exits under SNP).
    pub register_exits: Counter,
    /// TX attempts that found the ring full (the stack got `Exhausted`).
    pub tx_ring_full: Counter,
    /// Of `tx_packets`: TCP segments handed to the device to cut (TSO).
    pub tx_tso_frames: Counter,
    /// Of `rx_packets`: frames gathered from several receive buffers (large
    /// receive).
    pub rx_merged_frames: Counter,
    /// HTTP requests answered.
    pub http_requests: Counter,
    /// HTTP requests answered with a 4xx status.
    pub http_client_errors: Counter,
    /// TCP connections accepted (all services).
    pub tcp_accepted: Counter,
    /// Bytes echoed on port 7.
    pub echo_bytes: Counter,
}

/// The global counters.
pub static METRICS: Metrics = Metrics {
    rx_packets: Counter::new(),
    rx_bytes: Counter::new(),
    tx_packets: Counter::new(),
    tx_bytes: Counter::new(),
    rx_copy_bytes: Counter::new(),
    tx_copy_bytes: Counter::new(),
    ring_violations: Counter::new(),
    register_exits: Counter::new(),
    tx_ring_full: Counter::new(),
    tx_tso_frames: Counter::new(),
    rx_merged_frames: Counter::new(),
    http_requests: Counter::new(),
    http_client_errors: Counter::new(),
    tcp_accepted: Counter::new(),
    echo_bytes: Counter::new(),
};

//! Legacy virtio-net over the shared pool.

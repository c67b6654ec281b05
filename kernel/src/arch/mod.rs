//! Hardware access: the only modules of the kernel with `unsafe` code.

pub mod cpu;
pub mod interrupts;
pub mod port;

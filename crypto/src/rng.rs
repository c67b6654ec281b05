//! Pluggable randomness.
//!
//! The kernel owns the entropy source (RDRAND/RDSEED inside the SEV-SNP guest);
//! this crate only consumes it through [`EntropySource`]. Host tests plug in the
//! operating system's RNG.

use alloc::sync::Arc;
use core::fmt;

use rustls::crypto::{GetRandomFailed, SecureRandom};

/// The entropy source could not deliver random bytes (e.g. RDRAND kept failing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RngError;

impl fmt::Display for RngError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("entropy source failed")
    }
}

/// A cryptographically secure random source, provided by the kernel.
///
/// This is the `RngCore::try_fill_bytes` shape without the `rand_core` version
/// coupling. Implementations must be CSPRNG quality (RDSEED/RDRAND-seeded, or
/// the OS RNG on a host) and must return `Err` rather than weak bytes.
/// Closures `Fn(&mut [u8]) -> Result<(), RngError> + Send + Sync` implement it.
pub trait EntropySource: Send + Sync {
    /// Fill all of `dest` with random bytes.
    fn fill(&self, dest: &mut [u8]) -> Result<(), RngError>;
}

impl<F> EntropySource for F
where
    F: Fn(&mut [u8]) -> Result<(), RngError> + Send + Sync,
{
    fn fill(&self, dest: &mut [u8]) -> Result<(), RngError> {
        self(dest)
    }
}

/// A shared handle to the kernel's entropy source.
pub type SharedEntropy = Arc<dyn EntropySource>;

/// rustls' [`SecureRandom`] backed by an [`EntropySource`].
pub(crate) struct ProviderRandom(pub(crate) SharedEntropy);

impl fmt::Debug for ProviderRandom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProviderRandom")
    }
}

impl SecureRandom for ProviderRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        self.0.fill(buf).map_err(|_| GetRandomFailed)
    }
}

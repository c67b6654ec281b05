//! QEMU fw_cfg, the legacy I/O-port interface: the pure parts.
//!
//! Selector port 0x510 (16-bit write), data port 0x511 (8-bit read); selector
//! 0x0000 reads the signature "QEMU", 0x0019 the file directory: a big-endian
//! u32 count, then 64-byte entries `u32 size (BE), u16 select (BE), u16 rsvd,
//! char name[56]` (QEMU `docs/specs/fw_cfg.rst`). The host fills all of it, so
//! sizes are checked against what the reader is willing to read.

/// Selector port.
pub const PORT_SELECTOR: u16 = 0x510;
/// Data port.
pub const PORT_DATA: u16 = 0x511;
/// Selector of the signature.
pub const SEL_SIGNATURE: u16 = 0x0000;
/// Selector of the file directory.
pub const SEL_FILE_DIR: u16 = 0x0019;
/// The signature's bytes.
pub const SIGNATURE: [u8; 4] = *b"QEMU";
/// Bytes per directory entry.
pub const DIR_ENTRY_LEN: usize = 64;
/// Bytes of the name field.
pub const NAME_LEN: usize = 56;
/// Most directory entries we read.
pub const MAX_FILES: u32 = 256;

/// A file found in the directory.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct File {
    /// Selector to read it.
    pub select: u16,
    /// Size in bytes.
    pub size: u32,
}

/// Decodes one directory entry, returning the file if its name is `name`.
pub fn match_entry(entry: &[u8; DIR_ENTRY_LEN], name: &str) -> Option<File> {
    let field = &entry[8..8 + NAME_LEN];
    let n = field.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
    if &field[..n] != name.as_bytes() {
        return None;
    }
    Some(File {
        size: u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]),
        select: u16::from_be_bytes([entry[4], entry[5]]),
    })
}

/// Decodes the directory's entry count, bounded by [`MAX_FILES`].
pub fn dir_count(raw: [u8; 4]) -> u32 {
    u32::from_be_bytes(raw).min(MAX_FILES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_matching() {
        let mut e = [0u8; DIR_ENTRY_LEN];
        e[0..4].copy_from_slice(&60u32.to_be_bytes());
        e[4..6].copy_from_slice(&0x0021u16.to_be_bytes());
        e[8..16].copy_from_slice(b"etc/e820");
        assert_eq!(
            match_entry(&e, "etc/e820"),
            Some(File {
                select: 0x21,
                size: 60
            })
        );
        assert_eq!(match_entry(&e, "etc/e82"), None);
        assert_eq!(match_entry(&e, "etc/e8200"), None);
        // A name with no terminating NUL is compared over the whole field.
        let mut full = [b'a'; DIR_ENTRY_LEN];
        full[..8].fill(0);
        assert_eq!(match_entry(&full, "etc/e820"), None);
        assert_eq!(dir_count([0xff, 0xff, 0xff, 0xff]), MAX_FILES);
    }
}

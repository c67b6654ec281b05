//! The kernel payload inside the image: a small header listing the kernel's
//! loadable segments, followed by their bytes.
//!
//! `image/` turns the kernel ELF into this form on the host (where parsing ELF is
//! cheap and testable), so `boot/` only has to check bounds and copy. The table
//! entry [`crate::fwtable::VELLUM_KERNEL_GUID`] gives the payload's GPA and length.
//!
//! ```text
//! 0x00 magic "VLMKRNL1"     0x08 u32 version (1)   0x0c u32 segment count
//! 0x10 u64 entry point      0x18 u64 stack size    0x20 segments[count]
//! segment: u64 vaddr, u64 offset (from payload start), u64 file size,
//!          u64 memory size, u64 flags (bit 0 X, bit 1 W, bit 2 R)   = 40 bytes
//! ```

use crate::layout;

/// Payload magic.
pub const MAGIC: [u8; 8] = *b"VLMKRNL1";
/// Format version.
pub const VERSION: u32 = 1;
/// Header bytes before the segment array.
pub const HEADER_LEN: usize = 0x20;
/// Bytes per segment descriptor.
pub const SEGMENT_LEN: usize = 40;
/// Most segments a payload may have.
pub const MAX_SEGMENTS: usize = 16;

/// One loadable segment.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Segment {
    /// Load (and link) address; identity-mapped, so also the physical address.
    pub vaddr: u64,
    /// Offset of the file bytes from the payload start.
    pub offset: u64,
    /// Bytes copied from the payload.
    pub file_size: u64,
    /// Bytes occupied in memory (the rest is zeroed).
    pub mem_size: u64,
    /// ELF-style permission flags.
    pub flags: u64,
}

/// A parsed, checked payload header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Header {
    /// Kernel entry point (`_start`).
    pub entry: u64,
    /// Kernel stack size requested by the kernel's `BootloaderConfig`.
    pub stack_size: u64,
    /// Number of valid entries in `segments`.
    pub count: usize,
    /// The segments, sorted by address.
    pub segments: [Segment; MAX_SEGMENTS],
}

/// Why a payload was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PayloadError {
    /// Shorter than its header or segment table.
    Truncated,
    /// Wrong magic.
    BadMagic,
    /// Unknown version.
    BadVersion,
    /// Zero or more than [`MAX_SEGMENTS`] segments.
    BadCount,
    /// A segment's bytes lie outside the payload, or file size > memory size.
    BadSegment,
    /// A segment lies outside `[KERNEL_BASE, KERNEL_LIMIT)` or overlaps another.
    BadPlacement,
    /// The entry point is not inside an executable segment.
    BadEntry,
    /// The stack does not fit below `KERNEL_LIMIT`.
    BadStack,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

impl Header {
    /// Serialises a header and segment table (what `image/` writes).
    pub fn write(&self, out: &mut [u8]) -> Result<usize, PayloadError> {
        let len = HEADER_LEN + self.count * SEGMENT_LEN;
        if self.count == 0 || self.count > MAX_SEGMENTS {
            return Err(PayloadError::BadCount);
        }
        if out.len() < len {
            return Err(PayloadError::Truncated);
        }
        out[0..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&(self.count as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.entry.to_le_bytes());
        out[24..32].copy_from_slice(&self.stack_size.to_le_bytes());
        for (i, s) in self.segments[..self.count].iter().enumerate() {
            let o = HEADER_LEN + i * SEGMENT_LEN;
            for (j, v) in [s.vaddr, s.offset, s.file_size, s.mem_size, s.flags]
                .iter()
                .enumerate()
            {
                out[o + j * 8..o + j * 8 + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        Ok(len)
    }

    /// Bytes the header plus segment table occupy.
    pub fn table_len(&self) -> usize {
        HEADER_LEN + self.count * SEGMENT_LEN
    }

    /// Parses and checks a payload. `payload` is the whole payload (header and
    /// segment bytes). Every rule that `boot` relies on when copying is checked
    /// here, so the copy itself cannot go out of bounds.
    pub fn parse(payload: &[u8]) -> Result<Self, PayloadError> {
        if payload.len() < HEADER_LEN {
            return Err(PayloadError::Truncated);
        }
        if payload[0..8] != MAGIC {
            return Err(PayloadError::BadMagic);
        }
        if u32::from_le_bytes([payload[8], payload[9], payload[10], payload[11]]) != VERSION {
            return Err(PayloadError::BadVersion);
        }
        let count = u32::from_le_bytes([payload[12], payload[13], payload[14], payload[15]]);
        let count = usize::try_from(count).map_err(|_| PayloadError::BadCount)?;
        if count == 0 || count > MAX_SEGMENTS {
            return Err(PayloadError::BadCount);
        }
        let table_end = HEADER_LEN + count * SEGMENT_LEN;
        if payload.len() < table_end {
            return Err(PayloadError::Truncated);
        }
        let mut h = Header {
            entry: u64_at(payload, 16),
            stack_size: u64_at(payload, 24),
            count,
            segments: [Segment::default(); MAX_SEGMENTS],
        };
        for i in 0..count {
            let o = HEADER_LEN + i * SEGMENT_LEN;
            let s = Segment {
                vaddr: u64_at(payload, o),
                offset: u64_at(payload, o + 8),
                file_size: u64_at(payload, o + 16),
                mem_size: u64_at(payload, o + 24),
                flags: u64_at(payload, o + 32),
            };
            let file_end = s
                .offset
                .checked_add(s.file_size)
                .ok_or(PayloadError::BadSegment)?;
            if s.file_size > s.mem_size
                || file_end > payload.len() as u64
                || (s.file_size > 0 && s.offset < table_end as u64)
            {
                return Err(PayloadError::BadSegment);
            }
            let mem_end = s
                .vaddr
                .checked_add(s.mem_size)
                .ok_or(PayloadError::BadPlacement)?;
            if s.vaddr < layout::KERNEL_BASE || mem_end > layout::KERNEL_LIMIT {
                return Err(PayloadError::BadPlacement);
            }
            h.segments[i] = s;
        }
        h.segments[..count].sort_unstable_by_key(|s| s.vaddr);
        for w in h.segments[..count].windows(2) {
            if w[0].vaddr + w[0].mem_size > w[1].vaddr {
                return Err(PayloadError::BadPlacement);
            }
        }
        let exec = h.segments[..count]
            .iter()
            .any(|s| s.flags & 1 != 0 && h.entry >= s.vaddr && h.entry < s.vaddr + s.mem_size);
        if !exec {
            return Err(PayloadError::BadEntry);
        }
        h.stack_range().ok_or(PayloadError::BadStack)?;
        Ok(h)
    }

    /// End of the highest segment, page aligned.
    pub fn image_end(&self) -> u64 {
        let end = self.segments[..self.count]
            .iter()
            .map(|s| s.vaddr + s.mem_size)
            .max()
            .unwrap_or(layout::KERNEL_BASE);
        layout::align_up(end, layout::PAGE_SIZE).unwrap_or(u64::MAX)
    }

    /// The kernel stack: right above the image, `stack_size` rounded up to pages.
    pub fn stack_range(&self) -> Option<(u64, u64)> {
        let start = self.image_end();
        let size = layout::align_up(self.stack_size.max(layout::PAGE_SIZE), layout::PAGE_SIZE)?;
        let end = start.checked_add(size)?;
        (end <= layout::KERNEL_LIMIT).then_some((start, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Header, Vec<u8>) {
        let mut segs = [Segment::default(); MAX_SEGMENTS];
        segs[0] = Segment {
            vaddr: 0x20_0000,
            offset: 0x1000,
            file_size: 0x100,
            mem_size: 0x100,
            flags: 0b101,
        };
        segs[1] = Segment {
            vaddr: 0x20_1000,
            offset: 0x1100,
            file_size: 0x10,
            mem_size: 0x2000,
            flags: 0b110,
        };
        let h = Header {
            entry: 0x20_0010,
            stack_size: 0x14000,
            count: 2,
            segments: segs,
        };
        let mut buf = vec![0u8; 0x1110];
        h.write(&mut buf).unwrap();
        (h, buf)
    }

    #[test]
    fn round_trip() {
        let (h, buf) = sample();
        let p = Header::parse(&buf).unwrap();
        assert_eq!(p, h);
        assert_eq!(p.image_end(), 0x20_3000);
        assert_eq!(p.stack_range(), Some((0x20_3000, 0x21_7000)));
    }

    #[test]
    fn rejects_lies() {
        let (_, buf) = sample();
        let seg0 = HEADER_LEN;
        let cases: Vec<(usize, u64, PayloadError)> = vec![
            (seg0 + 16, 0x10_0000, PayloadError::BadSegment), // file size past the end
            (seg0 + 8, u64::MAX, PayloadError::BadSegment),   // offset overflow
            (seg0 + 8, 0x0, PayloadError::BadSegment),        // bytes overlap the header
            (seg0, 0x1000, PayloadError::BadPlacement),       // below KERNEL_BASE
            (seg0, u64::MAX - 4, PayloadError::BadPlacement), // vaddr overflow
            (seg0, 0x20_1800, PayloadError::BadPlacement),    // overlaps segment 1
            (16, 0x20_1000, PayloadError::BadEntry),          // entry in a non-exec segment
            (24, 0x1_0000_0000, PayloadError::BadStack),      // huge stack
        ];
        for (at, v, want) in cases {
            let mut b = buf.clone();
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
            assert_eq!(Header::parse(&b), Err(want), "field at {at:#x} = {v:#x}");
        }
        let mut b = buf.clone();
        b[12] = 0;
        assert_eq!(Header::parse(&b), Err(PayloadError::BadCount));
        b[12] = 200;
        assert_eq!(Header::parse(&b), Err(PayloadError::BadCount));
        assert_eq!(Header::parse(&buf[..10]), Err(PayloadError::Truncated));
        assert_eq!(Header::parse(&buf[..0x30]), Err(PayloadError::Truncated));
        let mut b = buf.clone();
        b[0] = b'X';
        assert_eq!(Header::parse(&b), Err(PayloadError::BadMagic));
    }
}

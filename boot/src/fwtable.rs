//! The OVMF-compatible GUIDed table at the end of the firmware image, and the
//! SEV (`ASEV`) metadata block it points to.
//!
//! Facts (QEMU 10.0.2 `hw/i386/pc_sysfw_ovmf.c`, `target/i386/sev.c`; see
//! `docs/snp-reference.md` §1.2 "The GUIDed table" and §1.3 "SEV metadata"):
//! - the footer GUID sits at `file_end - 48`, the table's total length (u16,
//!   counting itself and the footer GUID) at `file_end - 50`;
//! - entries are walked backwards from just below the length; each is
//!   `data | u16 len | GUID`, where `len` counts data + 18;
//! - GUIDs are stored in little-endian GUID byte order.
//!
//! The writer and the parser here are used by `image/` to build the table and by
//! `boot/` to find the kernel payload; the tests check they agree with each other
//! and with the walking rules QEMU applies.

/// A GUID in the on-disk (little-endian) byte order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Builds a GUID from its textual fields `d1-d2-d3-d4[0..2]-d4[2..8]`.
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Self {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }
}

/// `96b582de-1fb2-45f7-baea-a366c55a082d`: the table footer.
pub const FOOTER_GUID: Guid = Guid::from_fields(
    0x96b5_82de,
    0x1fb2,
    0x45f7,
    [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
);
/// `00f771de-1a7e-4fcb-890e-68c77e2fb44e`: SEV info block (u32 AP reset address).
pub const SEV_INFO_BLOCK_GUID: Guid = Guid::from_fields(
    0x00f7_71de,
    0x1a7e,
    0x4fcb,
    [0x89, 0x0e, 0x68, 0xc7, 0x7e, 0x2f, 0xb4, 0x4e],
);
/// `dc886566-984a-4798-a75e-5585a7bf67cc`: SEV metadata offset (u32, from file end).
pub const SEV_METADATA_GUID: Guid = Guid::from_fields(
    0xdc88_6566,
    0x984a,
    0x4798,
    [0xa7, 0x5e, 0x55, 0x85, 0xa7, 0xbf, 0x67, 0xcc],
);
/// `53bf0359-2799-4d96-b3f6-93cf44e2866a`: Vellum's own entry, the GPA (u32) and
/// length (u32) of the kernel payload. QEMU ignores GUIDs it does not know.
pub const VELLUM_KERNEL_GUID: Guid = Guid::from_fields(
    0x53bf_0359,
    0x2799,
    0x4d96,
    [0xb3, 0xf6, 0x93, 0xcf, 0x44, 0xe2, 0x86, 0x6a],
);

/// Bytes of an entry trailer (u16 length + GUID).
pub const ENTRY_TRAILER: usize = 18;
/// Distance from the end of the file to the end of the table.
pub const TABLE_END_FROM_FILE_END: usize = 32;

/// Errors from building or reading the table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TableError {
    /// The image is too small to hold a footer.
    TooSmall,
    /// No footer GUID at `file_end - 48`.
    NoFooter,
    /// The total length is smaller than 18 or runs off the start of the image.
    BadLength,
    /// The entries do not fit in the space given.
    NoSpace,
    /// An entry's data is larger than a table entry can describe.
    EntryTooLarge,
}

/// Writes a GUIDed table so that it ends `TABLE_END_FROM_FILE_END` bytes before
/// the end of `image`, with `entries` in order (the first entry is the farthest
/// from the footer). Returns the offset in `image` where the table starts.
pub fn write_table(image: &mut [u8], entries: &[(Guid, &[u8])]) -> Result<usize, TableError> {
    let end = image
        .len()
        .checked_sub(TABLE_END_FROM_FILE_END)
        .ok_or(TableError::TooSmall)?;
    let mut total = ENTRY_TRAILER; // footer: u16 total length + footer GUID
    for (_, data) in entries {
        let len = data.len() + ENTRY_TRAILER;
        if len > usize::from(u16::MAX) {
            return Err(TableError::EntryTooLarge);
        }
        total += len;
    }
    if total > usize::from(u16::MAX) || total > end {
        return Err(TableError::NoSpace);
    }
    let start = end - total;
    let mut pos = start;
    for (guid, data) in entries {
        image[pos..pos + data.len()].copy_from_slice(data);
        pos += data.len();
        let len = (data.len() + ENTRY_TRAILER) as u16;
        image[pos..pos + 2].copy_from_slice(&len.to_le_bytes());
        image[pos + 2..pos + ENTRY_TRAILER].copy_from_slice(&guid.0);
        pos += ENTRY_TRAILER;
    }
    image[pos..pos + 2].copy_from_slice(&(total as u16).to_le_bytes());
    image[pos + 2..pos + ENTRY_TRAILER].copy_from_slice(&FOOTER_GUID.0);
    debug_assert_eq!(pos + ENTRY_TRAILER, end);
    Ok(start)
}

/// The GUIDed table of an image, read the way QEMU reads it.
#[derive(Clone, Copy, Debug)]
pub struct Table<'a> {
    /// The entries, without the footer (u16 length + GUID), in file order.
    body: &'a [u8],
}

impl<'a> Table<'a> {
    /// Finds the table in a whole image (`image` ends at the end of the file).
    pub fn find(image: &'a [u8]) -> Result<Self, TableError> {
        let end = image
            .len()
            .checked_sub(TABLE_END_FROM_FILE_END)
            .ok_or(TableError::TooSmall)?;
        let footer_at = end.checked_sub(16).ok_or(TableError::TooSmall)?;
        if image[footer_at..end] != FOOTER_GUID.0 {
            return Err(TableError::NoFooter);
        }
        let len_at = footer_at.checked_sub(2).ok_or(TableError::TooSmall)?;
        let total = usize::from(u16::from_le_bytes([image[len_at], image[len_at + 1]]));
        if total < ENTRY_TRAILER {
            return Err(TableError::BadLength);
        }
        let start = end.checked_sub(total).ok_or(TableError::BadLength)?;
        Ok(Table {
            body: &image[start..len_at],
        })
    }

    /// Looks up an entry's data by GUID, walking backwards as QEMU does. A
    /// malformed entry (length < 18 or past the start) ends the walk.
    pub fn get(&self, guid: &Guid) -> Option<&'a [u8]> {
        self.iter().find(|(g, _)| g == guid).map(|(_, d)| d)
    }

    /// Iterates the entries from the footer backwards.
    pub fn iter(&self) -> TableIter<'a> {
        TableIter { rest: self.body }
    }
}

/// Iterator over a table's entries, last (closest to the footer) first.
#[derive(Clone, Debug)]
pub struct TableIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for TableIter<'a> {
    type Item = (Guid, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let n = self.rest.len();
        if n < ENTRY_TRAILER {
            return None;
        }
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&self.rest[n - 16..]);
        let len = usize::from(u16::from_le_bytes([self.rest[n - 18], self.rest[n - 17]]));
        if len < ENTRY_TRAILER || len > n {
            self.rest = &[];
            return None;
        }
        let data = &self.rest[n - len..n - ENTRY_TRAILER];
        self.rest = &self.rest[..n - len];
        Some((Guid(guid), data))
    }
}

/// Reads a little-endian u32 from the start of `data`.
pub fn le_u32(data: &[u8], at: usize) -> Option<u32> {
    let b = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// ASEV metadata section types (edk2 `OvmfSevMetadata.asm`; QEMU `sev.c:1253`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum SectionType {
    /// SNP_SEC_MEM: pre-validated by the VMM, measured as ZERO pages.
    SecMem = 1,
    /// SNP_SECRETS: the PSP fills the VMPCKs; measured as SECRETS.
    Secrets = 2,
    /// CPUID: QEMU fills it, the PSP filters it; measured as CPUID.
    Cpuid = 3,
}

impl SectionType {
    /// Decodes a raw section type.
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::SecMem),
            2 => Some(Self::Secrets),
            3 => Some(Self::Cpuid),
            _ => None,
        }
    }
}

/// One ASEV metadata descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Section {
    /// Guest physical base address (page aligned).
    pub base: u32,
    /// Length in bytes (page aligned).
    pub len: u32,
    /// What the launch puts there.
    pub kind: SectionType,
}

/// The ASEV signature.
pub const ASEV_SIGNATURE: [u8; 4] = *b"ASEV";
/// Header bytes: signature, len, version, num_desc.
pub const ASEV_HEADER_LEN: usize = 16;
/// Bytes per descriptor.
pub const ASEV_DESC_LEN: usize = 12;

/// Serialised length of a metadata block with `n` sections.
pub const fn metadata_len(n: usize) -> usize {
    ASEV_HEADER_LEN + n * ASEV_DESC_LEN
}

/// Writes an ASEV metadata block (version 1) into `out`, returning its length.
pub fn write_metadata(out: &mut [u8], sections: &[Section]) -> Result<usize, TableError> {
    let len = metadata_len(sections.len());
    if out.len() < len {
        return Err(TableError::NoSpace);
    }
    out[0..4].copy_from_slice(&ASEV_SIGNATURE);
    out[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    out[8..12].copy_from_slice(&1u32.to_le_bytes());
    out[12..16].copy_from_slice(&(sections.len() as u32).to_le_bytes());
    for (i, s) in sections.iter().enumerate() {
        let o = ASEV_HEADER_LEN + i * ASEV_DESC_LEN;
        out[o..o + 4].copy_from_slice(&s.base.to_le_bytes());
        out[o + 4..o + 8].copy_from_slice(&s.len.to_le_bytes());
        out[o + 8..o + 12].copy_from_slice(&(s.kind as u32).to_le_bytes());
    }
    Ok(len)
}

/// Errors reading an ASEV block.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MetadataError {
    /// No metadata-offset entry in the table.
    Missing,
    /// The offset points outside the image.
    BadOffset,
    /// Not "ASEV".
    BadSignature,
    /// Length below 16 or beyond the image.
    BadLength,
    /// Version other than 1 (sev-snp-measure requires 1).
    BadVersion(u32),
    /// A descriptor count that disagrees with the length.
    BadCount,
    /// A section type we do not emit.
    UnknownType(u32),
}

/// Reads the ASEV block of a whole image through the table's metadata-offset
/// entry, with QEMU's checks plus the version check sev-snp-measure makes.
/// Calls `f` for each section in table order.
pub fn read_metadata(
    image: &[u8],
    table: &Table<'_>,
    mut f: impl FnMut(Section),
) -> Result<usize, MetadataError> {
    let data = table
        .get(&SEV_METADATA_GUID)
        .ok_or(MetadataError::Missing)?;
    let off = le_u32(data, 0).ok_or(MetadataError::Missing)? as usize;
    let at = image
        .len()
        .checked_sub(off)
        .ok_or(MetadataError::BadOffset)?;
    let hdr = image
        .get(at..at + ASEV_HEADER_LEN)
        .ok_or(MetadataError::BadOffset)?;
    if hdr[0..4] != ASEV_SIGNATURE {
        return Err(MetadataError::BadSignature);
    }
    let len = le_u32(hdr, 4).ok_or(MetadataError::BadLength)? as usize;
    if len < ASEV_HEADER_LEN || len > off {
        return Err(MetadataError::BadLength);
    }
    let version = le_u32(hdr, 8).ok_or(MetadataError::BadLength)?;
    if version != 1 {
        return Err(MetadataError::BadVersion(version));
    }
    let n = le_u32(hdr, 12).ok_or(MetadataError::BadLength)? as usize;
    if metadata_len(n) != len {
        return Err(MetadataError::BadCount);
    }
    for i in 0..n {
        let d = &image[at + ASEV_HEADER_LEN + i * ASEV_DESC_LEN..][..ASEV_DESC_LEN];
        let raw = le_u32(d, 8).ok_or(MetadataError::BadLength)?;
        let kind = SectionType::from_raw(raw).ok_or(MetadataError::UnknownType(raw))?;
        f(Section {
            base: le_u32(d, 0).ok_or(MetadataError::BadLength)?,
            len: le_u32(d, 4).ok_or(MetadataError::BadLength)?,
            kind,
        });
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_byte_order_matches_uuid_bytes_le() {
        // Python: uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d").bytes_le
        assert_eq!(
            FOOTER_GUID.0,
            [
                0xde, 0x82, 0xb5, 0x96, 0xb2, 0x1f, 0xf7, 0x45, 0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a,
                0x08, 0x2d
            ]
        );
    }

    #[test]
    fn table_round_trip_and_qemu_offsets() {
        let mut img = vec![0u8; 0x1_0000];
        let info = 0xffff_f000u32.to_le_bytes();
        let meta = 0x400u32.to_le_bytes();
        let start = write_table(
            &mut img,
            &[
                (SEV_METADATA_GUID, &meta[..]),
                (SEV_INFO_BLOCK_GUID, &info[..]),
            ],
        )
        .unwrap();
        let n = img.len();
        // Footer GUID at file_end - 48, total length at file_end - 50.
        assert_eq!(img[n - 48..n - 32], FOOTER_GUID.0);
        let total = u16::from_le_bytes([img[n - 50], img[n - 49]]) as usize;
        assert_eq!(total, 18 + (4 + 18) * 2);
        assert_eq!(start, n - 32 - total);
        let t = Table::find(&img).unwrap();
        assert_eq!(t.get(&SEV_INFO_BLOCK_GUID), Some(&info[..]));
        assert_eq!(t.get(&SEV_METADATA_GUID), Some(&meta[..]));
        assert_eq!(t.get(&VELLUM_KERNEL_GUID), None);
        // Walk order: closest to the footer first.
        let order: Vec<Guid> = t.iter().map(|(g, _)| g).collect();
        assert_eq!(order, vec![SEV_INFO_BLOCK_GUID, SEV_METADATA_GUID]);
    }

    #[test]
    fn hostile_tables_do_not_panic() {
        // No footer.
        assert_eq!(Table::find(&[0u8; 64]).unwrap_err(), TableError::NoFooter);
        assert_eq!(Table::find(&[0u8; 10]).unwrap_err(), TableError::TooSmall);
        // Footer with a length that runs off the start, and one that is too small.
        for total in [0xffffu16, 3] {
            let mut img = vec![0u8; 128];
            let n = img.len();
            img[n - 48..n - 32].copy_from_slice(&FOOTER_GUID.0);
            img[n - 50..n - 48].copy_from_slice(&total.to_le_bytes());
            assert_eq!(Table::find(&img).unwrap_err(), TableError::BadLength);
        }
        // Entry lengths that lie: below 18, and larger than what is left.
        for bad in [5u16, 0x7fff] {
            let mut img = vec![0u8; 256];
            write_table(&mut img, &[(SEV_INFO_BLOCK_GUID, &[1, 2, 3, 4])]).unwrap();
            let n = img.len();
            // The entry's length field sits just below its GUID, below the footer.
            let entry_end = n - 32 - 18;
            img[entry_end - 18..entry_end - 16].copy_from_slice(&bad.to_le_bytes());
            let t = Table::find(&img).unwrap();
            assert_eq!(t.get(&SEV_INFO_BLOCK_GUID), None);
        }
    }

    #[test]
    fn metadata_round_trip_and_rejections() {
        let secs = [
            Section {
                base: 0x3000,
                len: 0x8d000,
                kind: SectionType::SecMem,
            },
            Section {
                base: 0x1000,
                len: 0x1000,
                kind: SectionType::Secrets,
            },
        ];
        let mut img = vec![0u8; 0x1_0000];
        let meta_at = 0x1_0000 - 0x200;
        let len = write_metadata(&mut img[meta_at..], &secs).unwrap();
        assert_eq!(len, 16 + 24);
        let off = (img.len() - meta_at) as u32;
        write_table(&mut img, &[(SEV_METADATA_GUID, &off.to_le_bytes())]).unwrap();
        let t = Table::find(&img).unwrap();
        let mut got = Vec::new();
        assert_eq!(read_metadata(&img, &t, |s| got.push(s)), Ok(2));
        assert_eq!(got, secs);

        // Corrupt the version, the signature and a type, one at a time.
        let mut v = img.clone();
        v[meta_at + 8] = 2;
        let t = Table::find(&v).unwrap();
        assert_eq!(
            read_metadata(&v, &t, |_| ()),
            Err(MetadataError::BadVersion(2))
        );
        let mut v = img.clone();
        v[meta_at] = b'X';
        let t = Table::find(&v).unwrap();
        assert_eq!(
            read_metadata(&v, &t, |_| ()),
            Err(MetadataError::BadSignature)
        );
        let mut v = img.clone();
        v[meta_at + 16 + 8] = 9;
        let t = Table::find(&v).unwrap();
        assert_eq!(
            read_metadata(&v, &t, |_| ()),
            Err(MetadataError::UnknownType(9))
        );
    }
}

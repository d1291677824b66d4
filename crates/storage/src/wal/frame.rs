//! The log's on-disk format: segment headers and frames.
//!
//! A segment file is a 64-byte header followed by frames, each starting at an offset that
//! is a multiple of 8, then zeros (segments are zero-filled ahead of the writer so that an
//! fdatasync never has to journal a size change). One frame holds one commit batch:
//!
//! ```text
//! offset size  field
//!  0     4     magic           FRAME_MAGIC (never zero: a zero word is the end of the log)
//!  4     4     head_crc        CRC-32C of bytes 8 .. 56 + entries_len
//!  8     4     total_len       header + entries + redo, without padding
//! 12     4     redo_crc        CRC-32C of the redo section
//! 16     8     lsn             batch sequence number, +1 per frame, across segments
//! 24     8     prior_ts        clusterTime key of the newest entry before this frame
//! 32     8     last_ts         clusterTime key of the newest entry up to this frame
//! 40     4     n_entries
//! 44     4     entries_len
//! 48     4     term            Raft term of the leader that logged the frame (0 unreplicated)
//! 52     2     leader          member id of that leader
//! 54     1     kind            FrameKind: a batch, or one of Raft's own entries
//! 55     1     reserved (0)
//! 56     ...   entries: n_entries × (ts u64, len u32, BSON oplog entry)
//!        ...   redo: the batch's table changes (`crate::redo`)
//! ```
//!
//! All integers are little-endian. The two CRCs let history readers check the entries
//! without reading the redo section, while recovery checks both.

/// The first bytes of every segment file.
pub const SEG_MAGIC: &[u8; 8] = b"EDDYLOG\0";
/// The segment format this code writes and reads.
pub const SEG_VERSION: u32 = 1;
/// Bytes before the first frame of a segment.
pub const SEG_HEADER_BYTES: u64 = 64;
/// Marks the start of a frame.
pub const FRAME_MAGIC: u32 = 0xE4D1_F8A3;
/// Bytes of a frame header.
pub const FRAME_HEADER_BYTES: usize = 56;
/// Frames start at multiples of this.
pub const FRAME_ALIGN: u64 = 8;

/// A frame's header, as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub head_crc: u32,
    pub total_len: u32,
    pub redo_crc: u32,
    pub lsn: u64,
    pub prior_ts: u64,
    pub last_ts: u64,
    pub n_entries: u32,
    pub entries_len: u32,
    pub stamp: Stamp,
}

/// What a frame is, in the replicated log's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum FrameKind {
    /// A commit batch: oplog entries and table changes.
    #[default]
    Batch = 0,
    /// A new leader's empty entry.
    Blank = 1,
    /// A replica set membership change: the redo section holds the configuration.
    Membership = 2,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<FrameKind> {
        match b {
            0 => Some(FrameKind::Batch),
            1 => Some(FrameKind::Blank),
            2 => Some(FrameKind::Membership),
            _ => None,
        }
    }
}

/// Who logged a frame: the Raft term and leader (both 0 on a single node that does not
/// replicate), and what kind of entry it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    pub term: u32,
    pub leader: u16,
    pub kind: FrameKind,
}

impl FrameHeader {
    /// Bytes of the redo section.
    pub fn redo_len(&self) -> usize {
        (self.total_len as usize).saturating_sub(FRAME_HEADER_BYTES + self.entries_len as usize)
    }

    /// The header's bytes, as written (with `head_crc` as it is).
    pub fn encode(&self) -> [u8; FRAME_HEADER_BYTES] {
        let mut b = [0u8; FRAME_HEADER_BYTES];
        b[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.head_crc.to_le_bytes());
        b[8..12].copy_from_slice(&self.total_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.redo_crc.to_le_bytes());
        b[16..24].copy_from_slice(&self.lsn.to_le_bytes());
        b[24..32].copy_from_slice(&self.prior_ts.to_le_bytes());
        b[32..40].copy_from_slice(&self.last_ts.to_le_bytes());
        b[40..44].copy_from_slice(&self.n_entries.to_le_bytes());
        b[44..48].copy_from_slice(&self.entries_len.to_le_bytes());
        b[48..52].copy_from_slice(&self.stamp.term.to_le_bytes());
        b[52..54].copy_from_slice(&self.stamp.leader.to_le_bytes());
        b[54] = self.stamp.kind as u8;
        b
    }

    /// Offset of the next frame after one starting at `offset`.
    pub fn next_offset(&self, offset: u64) -> u64 {
        align(offset + u64::from(self.total_len))
    }
}

/// Rounds up to the frame alignment.
pub fn align(n: u64) -> u64 {
    n.div_ceil(FRAME_ALIGN) * FRAME_ALIGN
}

/// What the first bytes at a frame position hold.
pub enum Parsed {
    /// A header whose fields are self-consistent (the CRCs are still to be checked).
    Header(FrameHeader),
    /// Zeros: the end of the written log.
    End,
    /// Something that is not a frame.
    Bad(&'static str),
}

/// Reads a header from its 56 bytes.
pub fn parse_header(b: &[u8; FRAME_HEADER_BYTES]) -> Parsed {
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let magic = u32_at(0);
    if magic == 0 {
        return if b.iter().all(|&x| x == 0) {
            Parsed::End
        } else {
            Parsed::Bad("bad frame magic")
        };
    }
    if magic != FRAME_MAGIC {
        return Parsed::Bad("bad frame magic");
    }
    let h = FrameHeader {
        head_crc: u32_at(4),
        total_len: u32_at(8),
        redo_crc: u32_at(12),
        lsn: u64_at(16),
        prior_ts: u64_at(24),
        last_ts: u64_at(32),
        n_entries: u32_at(40),
        entries_len: u32_at(44),
        stamp: Stamp {
            term: u32_at(48),
            leader: u16::from_le_bytes([b[52], b[53]]),
            kind: match FrameKind::from_u8(b[54]) {
                Some(k) => k,
                None => return Parsed::Bad("unknown frame kind"),
            },
        },
    };
    if b[55] != 0 {
        return Parsed::Bad("reserved frame byte set");
    }
    if (h.total_len as usize) < FRAME_HEADER_BYTES + h.entries_len as usize {
        return Parsed::Bad("frame length shorter than its entries");
    }
    if h.last_ts < h.prior_ts {
        return Parsed::Bad("frame time range inverted");
    }
    Parsed::Header(h)
}

/// Whether the header and entries match the header CRC.
pub fn head_ok(header: &[u8; FRAME_HEADER_BYTES], entries: &[u8]) -> bool {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[8..]), entries);
    crc == u32::from_le_bytes(header[4..8].try_into().unwrap())
}

/// Whether the redo section matches its CRC.
pub fn redo_ok(h: &FrameHeader, redo: &[u8]) -> bool {
    crc32c::crc32c(redo) == h.redo_crc
}

/// Builds frames in one reusable buffer: header space, then entries as they are logged,
/// then the redo section.
#[derive(Default)]
pub struct FrameBuf {
    buf: Vec<u8>,
    n_entries: u32,
    /// Where each entry's BSON lies in `buf`, with its time.
    spans: Vec<(u64, usize, usize)>,
}

impl FrameBuf {
    /// Starts a new frame.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.buf.resize(FRAME_HEADER_BYTES, 0);
        self.n_entries = 0;
        self.spans.clear();
    }

    /// Appends an oplog entry.
    pub fn push_entry(&mut self, ts: u64, bson: &[u8]) {
        if self.buf.is_empty() {
            self.clear();
        }
        self.buf.extend_from_slice(&ts.to_le_bytes());
        self.buf
            .extend_from_slice(&(bson.len() as u32).to_le_bytes());
        let start = self.buf.len();
        self.buf.extend_from_slice(bson);
        self.spans.push((ts, start, bson.len()));
        self.n_entries += 1;
    }

    /// Whether no entry was added since [`FrameBuf::clear`].
    pub fn has_entries(&self) -> bool {
        self.n_entries > 0
    }

    /// The entries added so far: `(ts key, BSON)`.
    pub fn entries(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.spans
            .iter()
            .map(|&(ts, s, n)| (ts, &self.buf[s..s + n]))
    }

    /// Finishes the frame with its redo section and header fields; returns its bytes,
    /// padded to the frame alignment, and its header.
    pub fn finish(
        &mut self,
        lsn: u64,
        prior_ts: u64,
        last_ts: u64,
        redo: &[u8],
    ) -> (&[u8], FrameHeader) {
        if self.buf.is_empty() {
            self.clear();
        }
        let entries_len = self.buf.len() - FRAME_HEADER_BYTES;
        self.buf.extend_from_slice(redo);
        let total_len = self.buf.len();
        let padded = align(total_len as u64) as usize;
        self.buf.resize(padded, 0);
        let mut h = FrameHeader {
            head_crc: 0,
            total_len: total_len as u32,
            redo_crc: crc32c::crc32c(redo),
            lsn,
            prior_ts,
            last_ts,
            n_entries: self.n_entries,
            entries_len: entries_len as u32,
            stamp: Stamp::default(),
        };
        self.buf[..FRAME_HEADER_BYTES].copy_from_slice(&h.encode());
        h.head_crc = seal(&mut self.buf);
        (&self.buf, h)
    }
}

/// Writes the header CRC of a whole frame (header fields and entries in place); returns it.
fn seal(frame: &mut [u8]) -> u32 {
    let entries_len = u32::from_le_bytes(frame[44..48].try_into().unwrap()) as usize;
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&frame[8..FRAME_HEADER_BYTES]),
        &frame[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + entries_len],
    );
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    crc
}

/// Gives a whole frame (as [`FrameBuf::finish`] returned it) its place in the replicated
/// log: its lsn and stamp, with the header CRC made again. Returns the new header.
///
/// # Errors
/// When the bytes are not a well-formed frame.
pub fn restamp(frame: &mut [u8], lsn: u64, stamp: Stamp) -> Result<FrameHeader, &'static str> {
    if frame.len() < FRAME_HEADER_BYTES {
        return Err("frame cut short");
    }
    frame[16..24].copy_from_slice(&lsn.to_le_bytes());
    frame[48..52].copy_from_slice(&stamp.term.to_le_bytes());
    frame[52..54].copy_from_slice(&stamp.leader.to_le_bytes());
    frame[54] = stamp.kind as u8;
    frame[55] = 0;
    let hb: &[u8; FRAME_HEADER_BYTES] = frame[..FRAME_HEADER_BYTES].try_into().unwrap();
    let Parsed::Header(h) = parse_header(hb) else {
        return Err("not a frame");
    };
    if frame.len() < h.total_len as usize {
        return Err("frame cut short");
    }
    let head_crc = seal(frame);
    Ok(FrameHeader { head_crc, ..h })
}

/// A frame with no entries and `redo` as its redo section, for Raft's own entries.
pub fn plain_frame(lsn: u64, ts: u64, stamp: Stamp, redo: &[u8]) -> Vec<u8> {
    let mut f = FrameBuf::default();
    f.clear();
    let mut bytes = f.finish(lsn, ts, ts, redo).0.to_vec();
    restamp(&mut bytes, lsn, stamp).expect("a frame just built");
    bytes
}

/// Splits an entries section into `(ts key, BSON)` items.
pub fn entries(section: &[u8]) -> EntryIter<'_> {
    EntryIter { rest: section }
}

/// Iterator over an entries section; yields `Err` once if the section is malformed.
pub struct EntryIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for EntryIter<'a> {
    type Item = Result<(u64, &'a [u8]), &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        if self.rest.len() < 12 {
            self.rest = &[];
            return Some(Err("truncated entry header"));
        }
        let ts = u64::from_le_bytes(self.rest[0..8].try_into().unwrap());
        let n = u32::from_le_bytes(self.rest[8..12].try_into().unwrap()) as usize;
        if self.rest.len() < 12 + n {
            self.rest = &[];
            return Some(Err("truncated entry"));
        }
        let b = &self.rest[12..12 + n];
        self.rest = &self.rest[12 + n..];
        Some(Ok((ts, b)))
    }
}

/// A segment header for segment number `seq`.
pub fn segment_header(seq: u64) -> [u8; SEG_HEADER_BYTES as usize] {
    let mut h = [0u8; SEG_HEADER_BYTES as usize];
    h[0..8].copy_from_slice(SEG_MAGIC);
    h[8..12].copy_from_slice(&SEG_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a segment header; returns its sequence number.
///
/// # Errors
/// A description of what is wrong.
pub fn check_segment_header(h: &[u8]) -> Result<u64, String> {
    if h.len() < SEG_HEADER_BYTES as usize {
        return Err("segment header is cut short".into());
    }
    if &h[0..8] != SEG_MAGIC {
        return Err("not an eddy log segment (bad magic)".into());
    }
    let crc = u32::from_le_bytes(h[60..64].try_into().unwrap());
    if crc32c::crc32c(&h[..60]) != crc {
        return Err("segment header checksum mismatch".into());
    }
    let v = u32::from_le_bytes(h[8..12].try_into().unwrap());
    if v != SEG_VERSION {
        return Err(format!(
            "segment format version {v}, this eddy reads {SEG_VERSION}"
        ));
    }
    Ok(u64::from_le_bytes(h[16..24].try_into().unwrap()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_crc() {
        let mut f = FrameBuf::default();
        f.clear();
        f.push_entry(7, b"abc");
        f.push_entry(9, b"defgh");
        let bytes = f.finish(3, 5, 9, b"REDO").0.to_vec();
        assert_eq!(bytes.len() % 8, 0);
        let hb: [u8; FRAME_HEADER_BYTES] = bytes[..FRAME_HEADER_BYTES].try_into().unwrap();
        let Parsed::Header(h) = parse_header(&hb) else {
            panic!("header")
        };
        assert_eq!((h.lsn, h.prior_ts, h.last_ts, h.n_entries), (3, 5, 9, 2));
        let ents = &bytes[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + h.entries_len as usize];
        assert!(head_ok(&hb, ents));
        let redo = &bytes[FRAME_HEADER_BYTES + h.entries_len as usize..h.total_len as usize];
        assert_eq!(redo, b"REDO");
        assert!(redo_ok(&h, redo));
        let got: Vec<_> = entries(ents).map(|r| r.unwrap()).collect();
        assert_eq!(got, vec![(7, &b"abc"[..]), (9, &b"defgh"[..])]);
        // Any flipped bit is caught by one of the two checksums.
        for i in 4..h.total_len as usize {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            let hb: [u8; FRAME_HEADER_BYTES] = b[..FRAME_HEADER_BYTES].try_into().unwrap();
            let ok = match parse_header(&hb) {
                Parsed::Header(h2) => {
                    let el = h2.entries_len as usize;
                    let tl = h2.total_len as usize;
                    tl <= b.len()
                        && head_ok(&hb, &b[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + el])
                        && redo_ok(&h2, &b[FRAME_HEADER_BYTES + el..tl])
                }
                _ => false,
            };
            assert!(!ok, "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn restamped_frames_keep_their_contents_and_checks() {
        let mut f = FrameBuf::default();
        f.clear();
        f.push_entry(7, b"abc");
        let mut bytes = f.finish(0, 5, 7, b"REDO").0.to_vec();
        let stamp = Stamp {
            term: 9,
            leader: 3,
            kind: FrameKind::Batch,
        };
        let h = restamp(&mut bytes, 42, stamp).unwrap();
        assert_eq!((h.lsn, h.stamp, h.prior_ts, h.last_ts), (42, stamp, 5, 7));
        let hb: [u8; FRAME_HEADER_BYTES] = bytes[..FRAME_HEADER_BYTES].try_into().unwrap();
        let Parsed::Header(parsed) = parse_header(&hb) else {
            panic!("header")
        };
        assert_eq!(parsed, h);
        let ents = &bytes[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + h.entries_len as usize];
        assert!(head_ok(&hb, ents));
        // Raft's own entries: empty frames of their kind.
        let blank = Stamp {
            kind: FrameKind::Blank,
            ..stamp
        };
        let b = plain_frame(43, 7, blank, &[]);
        let hb: [u8; FRAME_HEADER_BYTES] = b[..FRAME_HEADER_BYTES].try_into().unwrap();
        let Parsed::Header(h) = parse_header(&hb) else {
            panic!("header")
        };
        assert_eq!((h.lsn, h.stamp, h.n_entries), (43, blank, 0));
        // An unknown kind is not a frame.
        let mut bad = b.clone();
        bad[54] = 9;
        let hb: [u8; FRAME_HEADER_BYTES] = bad[..FRAME_HEADER_BYTES].try_into().unwrap();
        assert!(matches!(parse_header(&hb), Parsed::Bad(_)));
    }

    #[test]
    fn zeros_end_the_log() {
        assert!(matches!(
            parse_header(&[0u8; FRAME_HEADER_BYTES]),
            Parsed::End
        ));
        let mut b = [0u8; FRAME_HEADER_BYTES];
        b[20] = 1;
        assert!(matches!(parse_header(&b), Parsed::Bad(_)));
    }

    #[test]
    fn segment_header_checks() {
        let h = segment_header(42);
        assert_eq!(check_segment_header(&h).unwrap(), 42);
        let mut bad = h;
        bad[17] ^= 1;
        assert!(check_segment_header(&bad).is_err());
    }
}

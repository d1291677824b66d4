//! Images of the tables, for a replica set member's initial sync (Raft's snapshots).
//!
//! A member that joins with nothing, or that fell behind the log its primary still keeps,
//! cannot catch up from the log: it is sent an image of the tables as of one log frame,
//! and continues from the log after that frame.
//!
//! - **Taking one** reads one redb read transaction: the last redb commit, which on a
//!   member only ever holds majority-committed frames, up to a frame the pipeline knows
//!   ([`ImagePos`]). Nothing stops meanwhile; the image streams to a file.
//! - **The format**: a magic, the position, then every table's records as
//!   `[table u8][key len u32][value len u32][key][value]`, then a `0` byte, the record
//!   count (u64) and a CRC-32C of everything before it. Integers are big-endian. The
//!   node-local META records (the checkpoint's position) are left out; the position is
//!   the image's own.
//! - **Installing one** replaces every table in one durable redb transaction; the log is
//!   emptied first unless it already holds the image's last frame (then it is kept: the
//!   frames after it are the next to apply). Change streams on the member that were
//!   reading before the image lose their history (`ChangeStreamHistoryLost`), as the log
//!   before the image is gone.

use std::io::{Read, Write};

use redb::{ReadTransaction, ReadableTable, TableDefinition};

use crate::redo::{Op, TableId};
use crate::{
    CATALOG, IDS, INDEXES, META, META_APPLIED, META_NEXT_ID, META_REPL_APPLIED, PREIMAGES, RECORDS,
    SESSIONS, TXN_PREIMAGES,
};

const MAGIC: &[u8; 8] = b"EDDYIMG1";

/// The log frame an image holds the tables as of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImagePos {
    /// The frame's lsn (its Raft index + 1), term and leader.
    pub lsn: u64,
    pub term: u32,
    pub leader: u16,
    /// The newest clusterTime key the tables hold.
    pub ts: u64,
    /// The next storage id: above every id the tables use.
    pub next_id: u64,
}

const POS_BYTES: usize = 8 + 4 + 2 + 8 + 8;

impl ImagePos {
    fn encode(&self) -> [u8; POS_BYTES] {
        let mut b = [0u8; POS_BYTES];
        b[..8].copy_from_slice(&self.lsn.to_be_bytes());
        b[8..12].copy_from_slice(&self.term.to_be_bytes());
        b[12..14].copy_from_slice(&self.leader.to_be_bytes());
        b[14..22].copy_from_slice(&self.ts.to_be_bytes());
        b[22..].copy_from_slice(&self.next_id.to_be_bytes());
        b
    }

    fn decode(b: &[u8; POS_BYTES]) -> ImagePos {
        ImagePos {
            lsn: u64::from_be_bytes(b[..8].try_into().unwrap()),
            term: u32::from_be_bytes(b[8..12].try_into().unwrap()),
            leader: u16::from_be_bytes(b[12..14].try_into().unwrap()),
            ts: u64::from_be_bytes(b[14..22].try_into().unwrap()),
            next_id: u64::from_be_bytes(b[22..].try_into().unwrap()),
        }
    }
}

/// A writer that keeps the CRC of what passes through it.
struct Crc<W> {
    inner: W,
    crc: u32,
}

impl<W: Write> Crc<W> {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, b);
        self.inner.write_all(b)
    }
}

/// What writing an image found.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub pos: ImagePos,
    pub records: u64,
    pub bytes: u64,
    /// The value of the META record the caller asked for, as the image holds it.
    pub wanted_meta: Option<Vec<u8>>,
}

/// Writes an image of `txn` (whose tables hold the frame at `pos`) to `w`.
pub(crate) fn write(
    txn: &ReadTransaction,
    pos: ImagePos,
    w: &mut dyn Write,
    want_meta: &str,
) -> std::result::Result<ImageInfo, String> {
    let e = |e: &dyn std::fmt::Display| format!("image: {e}");
    let mut out = Crc { inner: w, crc: 0 };
    out.put(MAGIC).map_err(|x| e(&x))?;
    out.put(&pos.encode()).map_err(|x| e(&x))?;
    let mut records = 0u64;
    let mut bytes = (MAGIC.len() + POS_BYTES) as u64;
    let mut wanted_meta = None;
    let mut rec = |out: &mut Crc<&mut dyn Write>, t: TableId, k: &[u8], v: &[u8]| {
        let mut h = [0u8; 9];
        h[0] = t as u8;
        h[1..5].copy_from_slice(&(k.len() as u32).to_be_bytes());
        h[5..].copy_from_slice(&(v.len() as u32).to_be_bytes());
        out.put(&h)?;
        out.put(k)?;
        out.put(v)?;
        records += 1;
        bytes += (9 + k.len() + v.len()) as u64;
        std::io::Result::Ok(())
    };
    macro_rules! dump {
        ($def:expr, $id:expr, $key:expr) => {{
            let table = txn.open_table($def).map_err(|x| e(&x))?;
            for item in table.iter().map_err(|x| e(&x))? {
                let (k, v) = item.map_err(|x| e(&x))?;
                let key = $key(k.value());
                rec(&mut out, $id, key.as_ref(), v.value()).map_err(|x| e(&x))?;
            }
        }};
    }
    dump!(CATALOG, TableId::Catalog, |k: &str| k.as_bytes().to_vec());
    dump!(RECORDS, TableId::Records, |k: &[u8]| k.to_vec());
    dump!(IDS, TableId::Ids, |k: &[u8]| k.to_vec());
    dump!(INDEXES, TableId::Indexes, |k: &[u8]| k.to_vec());
    dump!(SESSIONS, TableId::Sessions, |k: &[u8]| k.to_vec());
    dump!(PREIMAGES, TableId::Preimages, |k: u64| k.to_be_bytes());
    dump!(TXN_PREIMAGES, TableId::TxnPreimages, |k: (u64, u32)| {
        crate::pipeline::pair_bytes(k)
    });
    {
        let table = txn.open_table(META).map_err(|x| e(&x))?;
        for item in table.iter().map_err(|x| e(&x))? {
            let (k, v) = item.map_err(|x| e(&x))?;
            let key = k.value();
            if key == META_APPLIED || key == META_REPL_APPLIED || key == META_NEXT_ID {
                continue;
            }
            if key == want_meta {
                wanted_meta = Some(v.value().to_vec());
            }
            rec(&mut out, TableId::Meta, key.as_bytes(), v.value()).map_err(|x| e(&x))?;
        }
    }
    out.put(&[0]).map_err(|x| e(&x))?;
    out.put(&records.to_be_bytes()).map_err(|x| e(&x))?;
    let crc = out.crc;
    out.inner.write_all(&crc.to_be_bytes()).map_err(|x| e(&x))?;
    out.inner.flush().map_err(|x| e(&x))?;
    Ok(ImageInfo {
        pos,
        records,
        bytes: bytes + 1 + 8 + 4,
        wanted_meta,
    })
}

/// The position at the start of an image.
///
/// # Errors
/// When it is not an image.
pub fn read_pos(r: &mut dyn Read) -> std::result::Result<ImagePos, String> {
    let mut head = [0u8; MAGIC.len() + POS_BYTES];
    r.read_exact(&mut head)
        .map_err(|e| format!("image cut short: {e}"))?;
    if &head[..MAGIC.len()] != MAGIC {
        return Err("not a table image".into());
    }
    Ok(ImagePos::decode(head[MAGIC.len()..].try_into().unwrap()))
}

/// Reads an image: its position, then each record in turn to `each` (a `TableId`, key
/// and value). The CRC is checked at the end: read a whole image once with a no-op
/// `each` before acting on it.
///
/// # Errors
/// When the image is damaged or cut short, or `each` fails.
pub fn read(
    r: &mut dyn Read,
    mut each: impl FnMut(&ImagePos, Op<'_>) -> std::result::Result<(), String>,
) -> std::result::Result<(ImagePos, u64), String> {
    let mut crc = 0u32;
    let mut take = |r: &mut dyn Read, buf: &mut [u8]| -> std::result::Result<(), String> {
        r.read_exact(buf)
            .map_err(|e| format!("image cut short: {e}"))?;
        crc = crc32c::crc32c_append(crc, buf);
        Ok(())
    };
    let mut magic = [0u8; 8];
    take(r, &mut magic)?;
    if &magic != MAGIC {
        return Err("not a table image".into());
    }
    let mut pb = [0u8; POS_BYTES];
    take(r, &mut pb)?;
    let pos = ImagePos::decode(&pb);
    let mut records = 0u64;
    let mut key = Vec::new();
    let mut value = Vec::new();
    loop {
        let mut t = [0u8; 1];
        take(r, &mut t)?;
        if t[0] == 0 {
            break;
        }
        let table = TableId::from_u8(t[0]).ok_or("image: unknown table")?;
        let mut lens = [0u8; 8];
        take(r, &mut lens)?;
        let kl = u32::from_be_bytes(lens[..4].try_into().unwrap()) as usize;
        let vl = u32::from_be_bytes(lens[4..].try_into().unwrap()) as usize;
        key.resize(kl, 0);
        value.resize(vl, 0);
        take(r, &mut key)?;
        take(r, &mut value)?;
        each(&pos, Op::Put(table, &key, &value))?;
        records += 1;
    }
    let mut n = [0u8; 8];
    take(r, &mut n)?;
    let expect = crc;
    let mut c = [0u8; 4];
    r.read_exact(&mut c)
        .map_err(|e| format!("image cut short: {e}"))?;
    if u32::from_be_bytes(c) != expect {
        return Err("image fails its checksum".into());
    }
    if u64::from_be_bytes(n) != records {
        return Err(format!(
            "image holds {records} records, its trailer says {}",
            u64::from_be_bytes(n)
        ));
    }
    Ok((pos, records))
}

/// Every table an image replaces.
pub(crate) fn clear_tables(txn: &redb::WriteTransaction) -> std::result::Result<(), String> {
    fn clear<K: redb::Key + 'static>(
        txn: &redb::WriteTransaction,
        def: TableDefinition<K, &'static [u8]>,
    ) -> std::result::Result<(), String> {
        txn.delete_table(def).map_err(|e| e.to_string())?;
        txn.open_table(def).map(drop).map_err(|e| e.to_string())
    }
    clear(txn, CATALOG)?;
    clear(txn, RECORDS)?;
    clear(txn, IDS)?;
    clear(txn, INDEXES)?;
    clear(txn, SESSIONS)?;
    clear(txn, PREIMAGES)?;
    clear(txn, TXN_PREIMAGES)?;
    // META keeps its node-local records until the installer writes the image's.
    let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
    let keys: Vec<String> = meta
        .iter()
        .map_err(|e| e.to_string())?
        .filter_map(|i| i.ok().map(|(k, _)| k.value().to_string()))
        .filter(|k| k != crate::META_FORMAT)
        .collect();
    for k in keys {
        meta.remove(k.as_str()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

//! OP_COMPRESSED payloads: snappy (raw format), zlib and zstd.

use std::io::{Read, Write};

use crate::{Compressor, WireError, WireErrorKind};

/// zlib level 6, the zlib (and MongoDB) default.
const ZLIB_LEVEL: u32 = 6;
/// zstd level 3, the zstd default.
const ZSTD_LEVEL: i32 = 3;

/// Compresses `data`. `None` if the compressor failed (only for absurd sizes); the caller then
/// sends the message uncompressed, which is always allowed.
pub(crate) fn compress(compressor: Compressor, data: &[u8]) -> Option<Vec<u8>> {
    match compressor {
        Compressor::Noop => Some(data.to_vec()),
        Compressor::Snappy => snap::raw::Encoder::new().compress_vec(data).ok(),
        Compressor::Zlib => {
            let mut encoder = flate2::write::ZlibEncoder::new(
                Vec::with_capacity(data.len() / 2),
                flate2::Compression::new(ZLIB_LEVEL),
            );
            encoder.write_all(data).ok()?;
            encoder.finish().ok()
        }
        Compressor::Zstd => zstd::bulk::compress(data, ZSTD_LEVEL).ok(),
    }
}

/// Decompresses `payload`, which must expand to exactly `size` bytes, appending them to `out`.
///
/// The streaming decoders read at most `size + 1` bytes, so a payload that expands past its
/// declared size is caught without inflating it all.
pub(crate) fn decompress_into(
    compressor: Compressor,
    payload: &[u8],
    size: usize,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    let start = out.len();
    let name = compressor.name();
    let failed = |e: &dyn std::fmt::Display| {
        WireError::new(
            WireErrorKind::Compression,
            format!("{name} decompression failed: {e}"),
        )
    };
    let limit = u64::try_from(size).unwrap_or(u64::MAX).saturating_add(1);
    match compressor {
        Compressor::Noop => out.extend_from_slice(payload),
        Compressor::Snappy => {
            // The raw format starts with the uncompressed length: check it before allocating.
            let declared = snap::raw::decompress_len(payload).map_err(|e| failed(&e))?;
            if declared != size {
                return Err(size_mismatch(name, size, declared));
            }
            out.resize(start + size, 0);
            let written = snap::raw::Decoder::new()
                .decompress(payload, &mut out[start..])
                .map_err(|e| failed(&e))?;
            out.truncate(start + written);
        }
        Compressor::Zlib => {
            let mut decoder = flate2::bufread::ZlibDecoder::new(payload);
            (&mut decoder)
                .take(limit)
                .read_to_end(out)
                .map_err(|e| failed(&e))?;
            // Bytes after the end of the zlib stream are garbage.
            let consumed_all = usize::try_from(decoder.total_in()).ok() == Some(payload.len());
            if out.len() - start == size && !consumed_all {
                return Err(failed(&"trailing bytes after the zlib stream"));
            }
        }
        Compressor::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::with_buffer(payload).map_err(|e| failed(&e))?;
            decoder
                .take(limit)
                .read_to_end(out)
                .map_err(|e| failed(&e))?;
        }
    }
    let actual = out.len() - start;
    if actual != size {
        return Err(size_mismatch(name, size, actual));
    }
    Ok(())
}

fn size_mismatch(name: &str, declared: usize, actual: usize) -> WireError {
    WireError::new(
        WireErrorKind::Compression,
        format!(
            "{name} payload decompressed to {actual} bytes, but uncompressedSize is {declared}"
        ),
    )
}

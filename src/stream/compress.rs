//! Compression on the way in, decompression on the way out.
//!
//! zstd frames carry their content checksum, so `zstd -d` alone detects a
//! damaged object; gzip carries its CRC-32 anyway.

use std::io::{self, BufReader, Read, Write};

use crate::config::Compression;

/// The name the metadata records and `compression = "…"` spells.
pub fn compression_name(compression: Compression) -> &'static str {
    match compression {
        Compression::Zstd => "zstd",
        Compression::Gzip => "gzip",
        Compression::None => "none",
    }
}

pub(crate) fn parse_compression(name: &str) -> Option<Compression> {
    match name {
        "zstd" => Some(Compression::Zstd),
        "gzip" => Some(Compression::Gzip),
        "none" => Some(Compression::None),
        _ => None,
    }
}

pub(crate) enum Compressor<W: Write> {
    None(W),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Gzip(flate2::write::GzEncoder<W>),
}

impl<W: Write> Compressor<W> {
    /// `level` has been validated by the config (zstd 1..=19, gzip 1..=9).
    pub(crate) fn new(inner: W, compression: Compression, level: i32) -> io::Result<Self> {
        Ok(match compression {
            Compression::None => Compressor::None(inner),
            Compression::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(inner, level)?;
                encoder.include_checksum(true)?;
                Compressor::Zstd(encoder)
            }
            Compression::Gzip => Compressor::Gzip(flate2::write::GzEncoder::new(
                inner,
                flate2::Compression::new(level.clamp(0, 9) as u32),
            )),
        })
    }

    /// Writes the end of the compressed stream and gives the inner writer back.
    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            Compressor::None(w) => Ok(w),
            Compressor::Zstd(e) => e.finish(),
            Compressor::Gzip(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::None(w) => w.write(buf),
            Compressor::Zstd(e) => e.write(buf),
            Compressor::Gzip(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::None(w) => w.flush(),
            Compressor::Zstd(e) => e.flush(),
            Compressor::Gzip(e) => e.flush(),
        }
    }
}

pub(crate) enum Decompressor<R: Read> {
    None(R),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<R>>),
    // Several members are read as one stream, as `gzip -d` does; anything
    // after the last member that is not gzip is an error, not ignored.
    Gzip(flate2::read::MultiGzDecoder<R>),
}

impl<R: Read> Decompressor<R> {
    pub(crate) fn new(inner: R, compression: Compression) -> io::Result<Self> {
        Ok(match compression {
            Compression::None => Decompressor::None(inner),
            Compression::Zstd => Decompressor::Zstd(zstd::stream::read::Decoder::new(inner)?),
            Compression::Gzip => Decompressor::Gzip(flate2::read::MultiGzDecoder::new(inner)),
        })
    }
}

impl<R: Read> Read for Decompressor<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decompressor::None(r) => r.read(buf),
            Decompressor::Zstd(d) => d.read(buf),
            Decompressor::Gzip(d) => d.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in [Compression::Zstd, Compression::Gzip, Compression::None] {
            assert_eq!(parse_compression(compression_name(c)), Some(c));
        }
        assert_eq!(parse_compression("xz"), None);
    }

    #[test]
    fn each_compression_round_trips() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for (c, level) in [
            (Compression::Zstd, 3),
            (Compression::Gzip, 6),
            (Compression::None, 0),
        ] {
            let mut enc = Compressor::new(Vec::new(), c, level).unwrap();
            enc.write_all(&data).unwrap();
            let stored = enc.finish().unwrap();
            let mut back = Vec::new();
            Decompressor::new(&stored[..], c)
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "{c:?}");
        }
    }
}

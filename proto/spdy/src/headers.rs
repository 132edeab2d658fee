//! Header blocks: name/value pairs, zlib-compressed with SPDY/3's dictionary in one stream per
//! direction that lasts as long as the connection (so each side keeps one compressor and one
//! decompressor, and blocks must be handled in the order they were sent).

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::dictionary::DICTIONARY;
use crate::{Error, Result};

/// A decompressed header block larger than this is refused (kubectl's are a few dozen bytes).
const MAX_BLOCK: usize = 1024 * 1024;

/// A stream's headers, names in lower case as SPDY/3 requires.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Adds a header (the name is lower-cased).
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Headers {
        self.0.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// The first value of `name`, whatever its case.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    fn encode(&self) -> BytesMut {
        let mut out = BytesMut::new();
        out.put_u32(self.0.len() as u32);
        for (name, value) in &self.0 {
            out.put_u32(name.len() as u32);
            out.put_slice(name.as_bytes());
            out.put_u32(value.len() as u32);
            out.put_slice(value.as_bytes());
        }
        out
    }

    fn decode(mut block: Bytes) -> Result<Headers> {
        let bad = |what: &str| Error::Protocol(format!("malformed header block: {what}"));
        let take = |block: &mut Bytes, what: &str| -> Result<String> {
            if block.remaining() < 4 {
                return Err(bad(what));
            }
            let len = block.get_u32() as usize;
            if block.remaining() < len {
                return Err(bad(what));
            }
            String::from_utf8(block.split_to(len).to_vec()).map_err(|_| bad("a name or value is not UTF-8"))
        };
        if block.remaining() < 4 {
            return Err(bad("no pair count"));
        }
        let count = block.get_u32() as usize;
        let mut pairs = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            let name = take(&mut block, "a name is cut short")?;
            let value = take(&mut block, "a value is cut short")?;
            // Several values of one name travel joined by NUL.
            for v in value.split('\0') {
                pairs.push((name.to_ascii_lowercase(), v.to_string()));
            }
        }
        Ok(Headers(pairs))
    }
}

/// The sending side's header compressor.
pub(crate) struct Deflater(Compress);

impl Deflater {
    pub(crate) fn new() -> Result<Deflater> {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(DICTIONARY).map_err(|e| Error::Protocol(format!("priming the header compressor: {e}")))?;
        Ok(Deflater(z))
    }

    pub(crate) fn compress(&mut self, headers: &Headers) -> Result<Bytes> {
        let input = headers.encode();
        let mut out = Vec::with_capacity(input.len() + 64);
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(256);
            }
            let before = self.0.total_in();
            self.0
                .compress_vec(&input[pos..], &mut out, FlushCompress::Sync)
                .map_err(|e| Error::Protocol(format!("compressing a header block: {e}")))?;
            pos += (self.0.total_in() - before) as usize;
            // A sync flush is complete once all input is taken and the output was not filled.
            if pos == input.len() && out.len() < out.capacity() {
                return Ok(out.into());
            }
        }
    }
}

/// The receiving side's header decompressor.
pub(crate) struct Inflater(Decompress);

impl Inflater {
    pub(crate) fn new() -> Inflater {
        Inflater(Decompress::new(true))
    }

    pub(crate) fn decompress(&mut self, block: &[u8]) -> Result<Headers> {
        let mut out: Vec<u8> = Vec::with_capacity(block.len() * 4 + 64);
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                if out.capacity() >= MAX_BLOCK {
                    return Err(Error::Protocol(format!("a header block over {MAX_BLOCK} bytes")));
                }
                out.reserve(out.capacity());
            }
            let (before_in, before_out) = (self.0.total_in(), self.0.total_out());
            let status = match self.0.decompress_vec(&block[pos..], &mut out, FlushDecompress::Sync) {
                Ok(status) => status,
                // The first block names the dictionary the stream was primed with.
                Err(e) if e.needs_dictionary().is_some() => {
                    pos += (self.0.total_in() - before_in) as usize;
                    self.0
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| Error::Protocol(format!("priming the header decompressor: {e}")))?;
                    continue;
                }
                Err(e) => return Err(Error::Protocol(format!("decompressing a header block: {e}"))),
            };
            pos += (self.0.total_in() - before_in) as usize;
            let progressed = self.0.total_in() != before_in || self.0.total_out() != before_out;
            if status == Status::StreamEnd {
                return Err(Error::Protocol("the header stream ended".into()));
            }
            if pos == block.len() && out.len() < out.capacity() {
                return Headers::decode(out.into());
            }
            if !progressed && out.len() < out.capacity() {
                return Err(Error::Protocol("a header block that does not decompress".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_through_one_long_zlib_stream() {
        let mut deflater = Deflater::new().unwrap();
        let mut inflater = Inflater::new();
        let first = Headers::new().with("streamType", "error").with("port", "8080").with("requestID", "0");
        let second = Headers::new().with("streamtype", "data").with("port", "8080").with("requestid", "0");
        for headers in [&first, &second, &Headers::new()] {
            let block = deflater.compress(headers).unwrap();
            assert_eq!(&inflater.decompress(&block).unwrap(), headers);
        }
        assert_eq!(first.get("StreamType"), Some("error"));
        assert_eq!(first.get("requestid"), Some("0"));
    }

    #[test]
    fn the_stream_is_primed_with_the_dictionary() {
        let block = Deflater::new().unwrap().compress(&Headers::new().with("a", "b")).unwrap();
        // zlib header with FDICT set, then the dictionary's Adler-32 (RFC 1950).
        assert_eq!(block[1] & 0x20, 0x20);
        let adler = u32::from_be_bytes([block[2], block[3], block[4], block[5]]);
        let (mut a, mut b) = (1u32, 0u32);
        for byte in DICTIONARY {
            a = (a + u32::from(*byte)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!(adler, (b << 16) | a);
    }

    #[test]
    fn values_joined_by_nul_are_several_values() {
        let mut raw = BytesMut::new();
        raw.put_u32(1);
        raw.put_u32(1);
        raw.put_slice(b"x");
        raw.put_u32(3);
        raw.put_slice(b"a\0b");
        let headers = Headers::decode(raw.freeze()).unwrap();
        assert_eq!(headers.iter().collect::<Vec<_>>(), [("x", "a"), ("x", "b")]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Inflater::new().decompress(b"not zlib at all").is_err());
        assert!(Headers::decode(Bytes::from_static(&[0, 0, 0, 1, 0, 0, 0, 9, b'x'])).is_err());
    }
}

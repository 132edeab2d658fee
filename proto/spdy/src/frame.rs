//! SPDY/3 frames on the wire: an 8-byte header, then the frame's fields. Header blocks are
//! compressed by [`crate::headers`]; this file only cuts and joins bytes.

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};

use crate::{Error, Result};

pub(crate) const VERSION: u16 = 3;
/// The last frame the sender sends on a stream (data, SYN_STREAM, SYN_REPLY, HEADERS).
pub(crate) const FLAG_FIN: u8 = 0x01;
/// Frame lengths are 24 bits.
pub(crate) const MAX_LENGTH: usize = 0x00ff_ffff;
pub(crate) const HEADER_LEN: usize = 8;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

const STREAM_ID_MASK: u32 = 0x7fff_ffff;

/// RST_STREAM status codes (SPDY/3 section 2.6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ResetStatus {
    ProtocolError = 1,
    InvalidStream = 2,
    RefusedStream = 3,
    Cancel = 5,
    InternalError = 6,
    StreamInUse = 8,
}

/// One frame, its header block (if any) still compressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    Data {
        stream: u32,
        fin: bool,
        data: Bytes,
    },
    SynStream {
        stream: u32,
        fin: bool,
        block: Bytes,
    },
    SynReply {
        stream: u32,
        fin: bool,
        block: Bytes,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Settings,
    Ping {
        id: u32,
    },
    GoAway {
        last_stream: u32,
    },
    Headers {
        stream: u32,
        fin: bool,
        block: Bytes,
    },
    WindowUpdate {
        stream: u32,
        delta: u32,
    },
    /// A control frame type SPDY/3 does not define: ignored, as the spec says.
    Unknown,
}

impl Frame {
    /// Cuts one frame off the front of `buf`, or `None` if it has not all arrived yet.
    pub(crate) fn parse(buf: &mut BytesMut) -> Result<Option<Frame>> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let length = (u32::from_be_bytes([0, buf[5], buf[6], buf[7]])) as usize;
        if buf.len() < HEADER_LEN + length {
            buf.reserve(HEADER_LEN + length - buf.len());
            return Ok(None);
        }
        let mut frame = buf.split_to(HEADER_LEN + length).freeze();
        let first = frame.get_u32();
        let flags = frame.get_u8();
        frame.advance(3);
        let fin = flags & FLAG_FIN != 0;
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data { stream: first, fin, data: frame }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(Error::Protocol(format!("SPDY version {version} (only 3 is spoken)")));
        }
        let kind = (first & 0xffff) as u16;
        let need = |n: usize, frame: &Bytes, what: &str| {
            if frame.len() < n {
                Err(Error::Protocol(format!("{what} frame of {} bytes is too short", frame.len())))
            } else {
                Ok(())
            }
        };
        Ok(Some(match kind {
            SYN_STREAM => {
                need(10, &frame, "SYN_STREAM")?;
                let stream = frame.get_u32() & STREAM_ID_MASK;
                // Associated stream, priority and slot mean nothing to a byte-stream tunnel.
                frame.advance(6);
                Frame::SynStream { stream, fin, block: frame }
            }
            SYN_REPLY => {
                need(4, &frame, "SYN_REPLY")?;
                let stream = frame.get_u32() & STREAM_ID_MASK;
                Frame::SynReply { stream, fin, block: frame }
            }
            RST_STREAM => {
                need(8, &frame, "RST_STREAM")?;
                Frame::RstStream { stream: frame.get_u32() & STREAM_ID_MASK, status: frame.get_u32() }
            }
            SETTINGS => Frame::Settings,
            PING => {
                need(4, &frame, "PING")?;
                Frame::Ping { id: frame.get_u32() }
            }
            GOAWAY => {
                need(4, &frame, "GOAWAY")?;
                Frame::GoAway { last_stream: frame.get_u32() & STREAM_ID_MASK }
            }
            HEADERS => {
                need(4, &frame, "HEADERS")?;
                let stream = frame.get_u32() & STREAM_ID_MASK;
                Frame::Headers { stream, fin, block: frame }
            }
            WINDOW_UPDATE => {
                need(8, &frame, "WINDOW_UPDATE")?;
                Frame::WindowUpdate {
                    stream: frame.get_u32() & STREAM_ID_MASK,
                    delta: frame.get_u32() & STREAM_ID_MASK,
                }
            }
            _ => Frame::Unknown,
        }))
    }

    /// Appends the frame's bytes to `out`.
    pub(crate) fn write(&self, out: &mut BytesMut) -> Result<()> {
        let fin_flag = |fin: bool| if fin { FLAG_FIN } else { 0 };
        match self {
            Frame::Data { stream, fin, data } => {
                check_length(data.len())?;
                out.put_u32(stream & STREAM_ID_MASK);
                put_flags_length(out, fin_flag(*fin), data.len());
                out.put_slice(data);
            }
            Frame::SynStream { stream, fin, block } => {
                control(out, SYN_STREAM, fin_flag(*fin), 10 + block.len())?;
                out.put_u32(stream & STREAM_ID_MASK);
                out.put_u32(0);
                out.put_u16(0);
                out.put_slice(block);
            }
            Frame::SynReply { stream, fin, block } => {
                control(out, SYN_REPLY, fin_flag(*fin), 4 + block.len())?;
                out.put_u32(stream & STREAM_ID_MASK);
                out.put_slice(block);
            }
            Frame::Headers { stream, fin, block } => {
                control(out, HEADERS, fin_flag(*fin), 4 + block.len())?;
                out.put_u32(stream & STREAM_ID_MASK);
                out.put_slice(block);
            }
            Frame::RstStream { stream, status } => {
                control(out, RST_STREAM, 0, 8)?;
                out.put_u32(stream & STREAM_ID_MASK);
                out.put_u32(*status);
            }
            Frame::Settings => {
                control(out, SETTINGS, 0, 4)?;
                out.put_u32(0);
            }
            Frame::Ping { id } => {
                control(out, PING, 0, 4)?;
                out.put_u32(*id);
            }
            Frame::GoAway { last_stream } => {
                control(out, GOAWAY, 0, 8)?;
                out.put_u32(last_stream & STREAM_ID_MASK);
                out.put_u32(0);
            }
            Frame::WindowUpdate { stream, delta } => {
                control(out, WINDOW_UPDATE, 0, 8)?;
                out.put_u32(stream & STREAM_ID_MASK);
                out.put_u32(delta & STREAM_ID_MASK);
            }
            Frame::Unknown => {}
        }
        Ok(())
    }
}

fn check_length(length: usize) -> Result<()> {
    if length > MAX_LENGTH {
        return Err(Error::Protocol(format!("a frame of {length} bytes is over SPDY's 24-bit length")));
    }
    Ok(())
}

fn put_flags_length(out: &mut BytesMut, flags: u8, length: usize) {
    out.put_u8(flags);
    out.put_slice(&(length as u32).to_be_bytes()[1..]);
}

fn control(out: &mut BytesMut, kind: u16, flags: u8, length: usize) -> Result<()> {
    check_length(length)?;
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    put_flags_length(out, flags, length);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame) {
        let mut buf = BytesMut::new();
        frame.write(&mut buf).unwrap();
        // Arriving a byte at a time, it is only whole at the end.
        let whole = buf.clone();
        let mut partial = BytesMut::new();
        for (i, b) in whole.iter().enumerate() {
            partial.put_u8(*b);
            let parsed = Frame::parse(&mut partial).unwrap();
            if i + 1 < whole.len() {
                assert_eq!(parsed, None);
            } else {
                assert_eq!(parsed, Some(frame.clone()));
            }
        }
        assert!(partial.is_empty());
    }

    #[test]
    fn frames_round_trip() {
        round_trip(Frame::Data { stream: 5, fin: true, data: Bytes::from_static(b"hello") });
        round_trip(Frame::Data { stream: 7, fin: false, data: Bytes::new() });
        round_trip(Frame::SynStream { stream: 1, fin: false, block: Bytes::from_static(b"\x78\x9c") });
        round_trip(Frame::SynReply { stream: 2, fin: true, block: Bytes::from_static(b"x") });
        round_trip(Frame::Headers { stream: 3, fin: false, block: Bytes::new() });
        round_trip(Frame::RstStream { stream: 9, status: ResetStatus::Cancel as u32 });
        round_trip(Frame::Ping { id: 42 });
        round_trip(Frame::GoAway { last_stream: 11 });
        round_trip(Frame::WindowUpdate { stream: 1, delta: 65536 });
    }

    #[test]
    fn a_data_frame_has_the_layout_of_the_spec() {
        let mut buf = BytesMut::new();
        Frame::Data { stream: 3, fin: true, data: Bytes::from_static(b"ab") }.write(&mut buf).unwrap();
        assert_eq!(&buf[..], &[0, 0, 0, 3, 1, 0, 0, 2, b'a', b'b']);
        let mut buf = BytesMut::new();
        Frame::Ping { id: 1 }.write(&mut buf).unwrap();
        assert_eq!(&buf[..], &[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
    }

    #[test]
    fn other_versions_and_short_frames_are_refused() {
        let mut buf = BytesMut::from(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert!(Frame::parse(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0x80, 3, 0, 3, 0, 0, 0, 2, 0, 1][..]);
        assert!(Frame::parse(&mut buf).is_err());
    }

    #[test]
    fn unknown_control_frames_are_skipped() {
        let mut buf = BytesMut::from(&[0x80, 3, 0, 99, 0, 0, 0, 1, 7, 0, 0, 0, 1, 0, 0, 0, 0][..]);
        assert_eq!(Frame::parse(&mut buf).unwrap(), Some(Frame::Unknown));
        assert_eq!(Frame::parse(&mut buf).unwrap(), Some(Frame::Data { stream: 1, fin: false, data: Bytes::new() }));
    }
}

//! Frames: 1 byte type, 3 bytes big-endian payload length, then the payload (docs/protocol.md §2).
//!
//! [`FrameHeader::parse`] and [`split_frame`] say "need more bytes" with `None`, distinct from a
//! malformed frame. [`write_frame`] appends a whole frame to an output buffer, so a reply (and
//! everything queued before it) leaves in one write. A connection's buffers, and reading and
//! writing frames over a stream, are [`crate::framed`].

use bytes::{Buf, Bytes, BytesMut};

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 4;

/// The largest payload a 24-bit length can describe.
pub const MAX_PAYLOAD: usize = 0xFF_FFFF;

/// Frame types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    Error = 0,
    PrepareConf = 1,
    HttpReqCall = 2,
    ExtraInfo = 3,
    HttpRespCall = 4,
}

impl FrameType {
    pub fn from_u8(n: u8) -> Option<FrameType> {
        match n {
            0 => Some(FrameType::Error),
            1 => Some(FrameType::PrepareConf),
            2 => Some(FrameType::HttpReqCall),
            3 => Some(FrameType::ExtraInfo),
            4 => Some(FrameType::HttpRespCall),
            _ => None,
        }
    }
}

/// A decoded frame header. The type is kept raw: an unknown type still has a known length, so the
/// payload can be skipped and the connection kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub ty: u8,
    pub len: usize,
}

impl FrameHeader {
    /// Parses the header at the start of `buf`; `None` while fewer than 4 bytes are there.
    pub fn parse(buf: &[u8]) -> Option<FrameHeader> {
        let h: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(FrameHeader {
            ty: h[0],
            len: usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3]),
        })
    }

    pub fn frame_type(&self) -> Option<FrameType> {
        FrameType::from_u8(self.ty)
    }

    /// The header's bytes.
    pub fn encode(ty: u8, len: usize) -> [u8; HEADER_LEN] {
        debug_assert!(len <= MAX_PAYLOAD);
        [ty, (len >> 16) as u8, (len >> 8) as u8, len as u8]
    }
}

/// A whole frame taken off a read buffer. The payload shares the buffer's storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub ty: u8,
    pub payload: Bytes,
}

impl Frame {
    /// Appends the frame as it goes on the wire, header and payload.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&FrameHeader::encode(self.ty, self.payload.len()));
        out.extend_from_slice(&self.payload);
    }
}

/// Takes one whole frame off the front of `buf`; `None` (and `buf` untouched) while it is
/// incomplete.
pub fn split_frame(buf: &mut BytesMut) -> Option<Frame> {
    let header = FrameHeader::parse(buf)?;
    if buf.len() < HEADER_LEN + header.len {
        return None;
    }
    buf.advance(HEADER_LEN);
    let payload = buf.split_to(header.len).freeze();
    Some(Frame {
        ty: header.ty,
        payload,
    })
}

/// Why a payload could not be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameWriteError {
    #[error("payload of {0} bytes exceeds the frame limit of {MAX_PAYLOAD} bytes")]
    TooLarge(usize),
    #[error("empty payload (the gateway cannot decode a nil payload)")]
    Empty,
}

/// Appends a frame of type `ty` to `out`, its payload written by `encode`. On error `out` is left
/// as it was, so the caller can write an error frame instead.
pub fn write_frame(
    out: &mut Vec<u8>,
    ty: u8,
    encode: impl FnOnce(&mut Vec<u8>),
) -> Result<(), FrameWriteError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    encode(out);
    let len = out.len() - start - HEADER_LEN;
    if len == 0 || len > MAX_PAYLOAD {
        out.truncate(start);
        return Err(if len == 0 {
            FrameWriteError::Empty
        } else {
            FrameWriteError::TooLarge(len)
        });
    }
    out[start..start + HEADER_LEN].copy_from_slice(&FrameHeader::encode(ty, len));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_is_big_endian() {
        assert_eq!(FrameHeader::encode(2, 0x010203), [2, 1, 2, 3]);
        assert_eq!(
            FrameHeader::parse(&[4, 0xFF, 0xFF, 0xFF]),
            Some(FrameHeader {
                ty: 4,
                len: MAX_PAYLOAD
            })
        );
        assert_eq!(FrameHeader::parse(&[1, 0, 0]), None);
    }

    #[test]
    fn split_waits_for_whole_frames() {
        let mut buf = BytesMut::from(&[1u8, 0, 0, 3, b'a', b'b'][..]);
        assert_eq!(split_frame(&mut buf), None);
        assert_eq!(buf.len(), 6, "an incomplete frame is left in place");
        buf.extend_from_slice(&[b'c', 9, 0]);
        let f = split_frame(&mut buf).unwrap();
        assert_eq!((f.ty, &f.payload[..]), (1, &b"abc"[..]));
        assert_eq!(&buf[..], &[9, 0], "the next frame's bytes stay buffered");
        assert_eq!(split_frame(&mut buf), None);
    }

    #[test]
    fn unknown_types_keep_their_length() {
        let mut buf = BytesMut::from(&[77u8, 0, 0, 1, 0][..]);
        let f = split_frame(&mut buf).unwrap();
        assert_eq!(f.ty, 77);
        assert_eq!(FrameType::from_u8(f.ty), None);
    }

    #[test]
    fn write_frame_patches_the_length_and_refuses_empty_or_oversized_payloads() {
        let mut out = vec![0xAA];
        write_frame(&mut out, 2, |b| b.extend_from_slice(b"xyz")).unwrap();
        assert_eq!(out, [0xAA, 2, 0, 0, 3, b'x', b'y', b'z']);

        assert_eq!(
            write_frame(&mut out, 2, |_| {}),
            Err(FrameWriteError::Empty)
        );
        assert_eq!(
            write_frame(&mut out, 2, |b| b.resize(b.len() + MAX_PAYLOAD + 1, 0)),
            Err(FrameWriteError::TooLarge(MAX_PAYLOAD + 1))
        );
        assert_eq!(out.len(), 8, "a refused frame leaves the buffer as it was");
    }
}

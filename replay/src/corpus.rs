//! The corpus container: a transcript of whole exchanges, frames exactly as on the wire.
//!
//! ```text
//! header : b"EPRCORP1" (8 bytes), protocol (1 byte: 0 = capnp, 1 = flatbuffers)
//! record : direction (1 byte: b'G' gateway → runner, b'R' runner → gateway),
//!          then one frame as on the wire (type u8, payload length u24 big-endian, payload)
//! ```
//!
//! Records group into exchanges, in this order and nothing else:
//!
//! * prepare: `G` type 1, then `R` type 1 (or 0, an error);
//! * call: `G` type 2 or 4, then any number of (`R` type 3, `G` type 3) extra_info pairs, then
//!   `R` of the call's type (or 0).
//!
//! The runner-side frames are what the corpus *expects*: the replayer sends the `G` frames
//! (remapping conf tokens), answers the runner's extra_info requests from the recorded pairs, and
//! checks each reply against the recorded `R` frame. Generated and recorded corpora share this
//! format, so either can be replayed or inspected the same way.

use std::fmt;
use std::io::{self, Read, Write};

use bytes::Bytes;

use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::frame::{Frame, FrameHeader, FrameType, HEADER_LEN};

pub const MAGIC: &[u8; 8] = b"EPRCORP1";
const GATEWAY: u8 = b'G';
const RUNNER: u8 = b'R';

/// A `prepare_conf` request and the runner's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrepareExchange {
    pub request: Frame,
    pub reply: Frame,
}

/// A call (`http_req_call` or `http_resp_call`), its extra_info pairs, and the final reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallExchange {
    pub request: Frame,
    /// (runner's extra_info request, gateway's answer), in the order they happened.
    pub extra: Vec<(Frame, Frame)>,
    pub reply: Frame,
}

/// A whole corpus in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corpus {
    pub protocol: Protocol,
    pub prepares: Vec<PrepareExchange>,
    pub calls: Vec<CallExchange>,
}

/// A corpus that cannot be read, with where it went wrong.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("not a corpus file: it does not start with {MAGIC:?}")]
    Magic,
    #[error("unknown protocol byte {0} in the corpus header (0 = capnp, 1 = flatbuffers)")]
    Protocol(u8),
    #[error("record {record} at byte {offset}: {what}")]
    Record {
        record: usize,
        offset: usize,
        what: String,
    },
}

fn protocol_byte(p: Protocol) -> u8 {
    match p {
        Protocol::Capnp => 0,
        Protocol::FlatBuffers => 1,
    }
}

/// Writes a corpus record by record; exchanges are written whole.
pub struct CorpusWriter<W: Write> {
    out: W,
}

impl<W: Write> CorpusWriter<W> {
    pub fn new(mut out: W, protocol: Protocol) -> io::Result<CorpusWriter<W>> {
        out.write_all(MAGIC)?;
        out.write_all(&[protocol_byte(protocol)])?;
        Ok(CorpusWriter { out })
    }

    fn record(&mut self, direction: u8, frame: &Frame) -> io::Result<()> {
        self.out.write_all(&[direction])?;
        self.out
            .write_all(&FrameHeader::encode(frame.ty, frame.payload.len()))?;
        self.out.write_all(&frame.payload)
    }

    pub fn write_prepare(&mut self, x: &PrepareExchange) -> io::Result<()> {
        self.record(GATEWAY, &x.request)?;
        self.record(RUNNER, &x.reply)
    }

    pub fn write_call(&mut self, x: &CallExchange) -> io::Result<()> {
        self.record(GATEWAY, &x.request)?;
        for (ask, answer) in &x.extra {
            self.record(RUNNER, ask)?;
            self.record(GATEWAY, answer)?;
        }
        self.record(RUNNER, &x.reply)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl Corpus {
    /// The whole corpus as file bytes: prepares first, then calls.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = CorpusWriter::new(Vec::new(), self.protocol).expect("writing to a Vec");
        for p in &self.prepares {
            w.write_prepare(p).expect("writing to a Vec");
        }
        for c in &self.calls {
            w.write_call(c).expect("writing to a Vec");
        }
        w.into_inner()
    }

    pub fn read_from(mut r: impl Read) -> Result<Corpus, CorpusError> {
        let mut buf = Vec::new();
        r.read_to_end(&mut buf)?;
        Corpus::parse(&buf)
    }

    /// Reads corpus file bytes, checking that the records form whole exchanges.
    pub fn parse(buf: &[u8]) -> Result<Corpus, CorpusError> {
        if buf.len() < MAGIC.len() + 1 || &buf[..MAGIC.len()] != MAGIC {
            return Err(CorpusError::Magic);
        }
        let protocol = match buf[MAGIC.len()] {
            0 => Protocol::Capnp,
            1 => Protocol::FlatBuffers,
            n => return Err(CorpusError::Protocol(n)),
        };
        let mut records = Records {
            buf: Bytes::copy_from_slice(buf),
            pos: MAGIC.len() + 1,
            index: 0,
        };
        let mut corpus = Corpus {
            protocol,
            prepares: Vec::new(),
            calls: Vec::new(),
        };
        while let Some(request) = records.next(GATEWAY, "a gateway request")? {
            match FrameType::from_u8(request.ty) {
                Some(FrameType::PrepareConf) => {
                    let reply = records.expect(RUNNER, "the reply to a prepare_conf")?;
                    records.reply_type(&reply, FrameType::PrepareConf)?;
                    corpus.prepares.push(PrepareExchange { request, reply });
                }
                Some(t @ (FrameType::HttpReqCall | FrameType::HttpRespCall)) => {
                    let mut extra = Vec::new();
                    loop {
                        let f = records.expect(RUNNER, "the runner's reply to a call")?;
                        if f.ty == FrameType::ExtraInfo as u8 {
                            let answer = records.expect(GATEWAY, "an extra_info answer")?;
                            if answer.ty != FrameType::ExtraInfo as u8 {
                                return Err(records.error(format!(
                                    "expected an extra_info answer (type 3), got type {}",
                                    answer.ty
                                )));
                            }
                            extra.push((f, answer));
                        } else {
                            records.reply_type(&f, t)?;
                            corpus.calls.push(CallExchange {
                                request,
                                extra,
                                reply: f,
                            });
                            break;
                        }
                    }
                }
                _ => {
                    return Err(records.error(format!(
                        "a gateway request must be of type 1, 2 or 4, not {}",
                        request.ty
                    )))
                }
            }
        }
        Ok(corpus)
    }
}

/// A cursor over the records of a corpus file.
struct Records {
    buf: Bytes,
    pos: usize,
    index: usize,
}

impl Records {
    fn error(&self, what: String) -> CorpusError {
        CorpusError::Record {
            record: self.index,
            offset: self.pos,
            what,
        }
    }

    /// The next record, which must come from `direction`; `None` at the end of the file.
    fn next(&mut self, direction: u8, what: &str) -> Result<Option<Frame>, CorpusError> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        self.index += 1;
        let dir = self.buf[self.pos];
        if dir != GATEWAY && dir != RUNNER {
            return Err(self.error(format!("direction byte {dir:#04x} is neither 'G' nor 'R'")));
        }
        if dir != direction {
            return Err(self.error(format!(
                "expected {what} (a '{}' record), got a '{}' record",
                direction as char, dir as char
            )));
        }
        let rest = &self.buf[self.pos + 1..];
        let header = FrameHeader::parse(rest)
            .ok_or_else(|| self.error("the file ends inside a frame header".into()))?;
        if rest.len() < HEADER_LEN + header.len {
            return Err(self.error(format!(
                "the frame says {} payload bytes but only {} remain",
                header.len,
                rest.len() - HEADER_LEN
            )));
        }
        let start = self.pos + 1 + HEADER_LEN;
        let payload = self.buf.slice(start..start + header.len);
        self.pos = start + header.len;
        Ok(Some(Frame {
            ty: header.ty,
            payload,
        }))
    }

    fn expect(&mut self, direction: u8, what: &str) -> Result<Frame, CorpusError> {
        self.next(direction, what)?
            .ok_or_else(|| self.error(format!("the file ends where {what} was expected")))
    }

    /// A final reply must be of the request's type or an error frame.
    fn reply_type(&self, reply: &Frame, request: FrameType) -> Result<(), CorpusError> {
        if reply.ty == request as u8 || reply.ty == FrameType::Error as u8 {
            Ok(())
        } else {
            Err(self.error(format!(
                "a reply to a frame of type {} must be of type {} or 0, not {}",
                request as u8, request as u8, reply.ty
            )))
        }
    }
}

impl fmt::Display for Corpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let extra: usize = self.calls.iter().map(|c| c.extra.len()).sum();
        write!(
            f,
            "{} corpus: {} prepares, {} calls, {} extra_info exchanges",
            self.protocol,
            self.prepares.len(),
            self.calls.len(),
            extra
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ty: u8, payload: &'static [u8]) -> Frame {
        Frame {
            ty,
            payload: Bytes::from_static(payload),
        }
    }

    fn sample() -> Corpus {
        Corpus {
            protocol: Protocol::FlatBuffers,
            prepares: vec![PrepareExchange {
                request: frame(1, b"p"),
                reply: frame(1, b"t"),
            }],
            calls: vec![CallExchange {
                request: frame(2, b"call"),
                extra: vec![(frame(3, b"ask"), frame(3, b"answer"))],
                reply: frame(2, b"reply"),
            }],
        }
    }

    #[test]
    fn round_trips() {
        let c = sample();
        assert_eq!(Corpus::parse(&c.to_bytes()).unwrap(), c);
    }

    #[test]
    fn bad_files_say_where() {
        assert!(matches!(Corpus::parse(b"nope"), Err(CorpusError::Magic)));
        let mut bytes = sample().to_bytes();
        bytes[8] = 7;
        assert!(matches!(
            Corpus::parse(&bytes),
            Err(CorpusError::Protocol(7))
        ));

        let bytes = sample().to_bytes();
        let err = Corpus::parse(&bytes[..bytes.len() - 2]).unwrap_err();
        assert!(err.to_string().contains("record 6"), "{err}");
        assert!(err.to_string().contains("only 3 remain"), "{err}");

        // A call whose reply is missing.
        let mut w = CorpusWriter::new(Vec::new(), Protocol::Capnp).unwrap();
        w.record(GATEWAY, &frame(2, b"call")).unwrap();
        let err = Corpus::parse(&w.into_inner()).unwrap_err();
        assert!(err.to_string().contains("ends where"), "{err}");

        // A reply of the wrong type.
        let mut w = CorpusWriter::new(Vec::new(), Protocol::Capnp).unwrap();
        w.record(GATEWAY, &frame(2, b"call")).unwrap();
        w.record(RUNNER, &frame(1, b"x")).unwrap();
        let err = Corpus::parse(&w.into_inner()).unwrap_err();
        assert!(err.to_string().contains("must be of type 2 or 0"), "{err}");
    }
}

//! The blocking adapter: a [`FrameBuffer`] and a [`FrameQueue`] over a std stream, for clients
//! that run one thread per connection (the replayer's load threads).

use std::io::{self, Read, Write};

use super::gateway::{step, AnswerTable, Step};
use super::{FrameBuffer, FrameQueue, FramedError};
use crate::codec::GatewayCodec;
use crate::frame::{Frame, MAX_PAYLOAD};

/// Bytes read per system call. Reads go through this chunk (a std reader needs initialized
/// memory), then into the frame buffer.
const CHUNK: usize = 64 * 1024;

/// A blocking stream read and written in whole frames. Timeouts are the stream's own
/// (`set_read_timeout`, `set_write_timeout`).
#[derive(Debug)]
pub struct BlockingFramed<S> {
    stream: S,
    read: FrameBuffer,
    chunk: Box<[u8]>,
    write: FrameQueue,
}

impl<S> BlockingFramed<S> {
    pub fn new(stream: S) -> BlockingFramed<S> {
        BlockingFramed {
            stream,
            read: FrameBuffer::new(MAX_PAYLOAD),
            chunk: vec![0; CHUNK].into_boxed_slice(),
            write: FrameQueue::new(),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    pub fn into_inner(self) -> S {
        self.stream
    }

    /// Frames to send; [`BlockingFramed::flush`] sends them.
    pub fn queue(&mut self) -> &mut FrameQueue {
        &mut self.write
    }
}

impl<S: Read + Write> BlockingFramed<S> {
    /// The next whole frame; `None` when the peer closed the connection between frames.
    pub fn read_frame(&mut self) -> Result<Option<Frame>, FramedError> {
        loop {
            if let Some(frame) = self.read.next_frame()? {
                return Ok(Some(frame));
            }
            if self.read.read_blocking(&mut self.stream, &mut self.chunk)? == 0 {
                return if self.read.is_empty() {
                    Ok(None)
                } else {
                    Err(FramedError::Truncated)
                };
            }
        }
    }

    /// The next whole frame; the peer closing the connection is [`FramedError::Closed`].
    pub fn expect_frame(&mut self) -> Result<Frame, FramedError> {
        self.read_frame()?.ok_or(FramedError::Closed)
    }

    /// Sends everything queued.
    pub fn flush(&mut self) -> Result<(), FramedError> {
        while !self.write.is_empty() {
            match self.stream.write(self.write.unsent()) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => self.write.advance(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self.stream.flush()?)
    }

    /// Sends a frame as it was read.
    pub fn send_frame(&mut self, frame: &Frame) -> Result<(), FramedError> {
        self.write.push_frame(frame);
        self.flush()
    }

    /// Sends bytes as they are (whole frames encoded earlier).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), FramedError> {
        self.write.push_raw(bytes);
        self.flush()
    }

    /// A gateway awaiting a call's reply: reads frames, answering each `extra_info` request from
    /// `table`, and returns the first frame that is not one (the reply, or an error frame).
    pub fn await_reply<T>(
        &mut self,
        codec: &mut dyn GatewayCodec,
        table: &mut T,
    ) -> Result<Frame, T::Error>
    where
        T: AnswerTable + ?Sized,
        T::Error: From<FramedError>,
    {
        loop {
            let frame = self.expect_frame()?;
            match step(frame, codec, table, &mut self.write)? {
                Step::Reply(frame) => return Ok(frame),
                Step::Answered { delay } => {
                    if !delay.is_zero() {
                        std::thread::sleep(delay);
                    }
                    self.flush()?;
                }
            }
        }
    }
}

//! Framed connections: whole frames in, queued frames out, over any byte stream.
//!
//! Every party to the protocol frames the same way, so it is written once, here:
//!
//! * [`FrameBuffer`] accumulates the bytes read and yields whole frames, refusing (from the
//!   header alone) a frame over the connection's size limit; [`FrameQueue`] holds frames to send
//!   and remembers how much of them has gone, so an interrupted send resumes where it stopped.
//!   Neither does I/O or knows a codec.
//! * [`Framed`] (tokio) and [`BlockingFramed`] (std) put a stream behind them. The runner's
//!   connections, the fake gateway ([`crate::testing`]) and the replayer's recording proxy use
//!   the first; the replayer's load threads use the second, deliberately: a blocking client is
//!   the cheapest one to measure with.
//! * [`AnswerTable`], with [`Framed::await_reply`] and [`BlockingFramed::await_reply`], is a
//!   gateway's side of a call: read frames, answering the runner's `extra_info` requests from a
//!   table, until the call's final reply.
//!
//! Reads and writes are cancel safe: a read or flush dropped half way (a timeout, a `select!`)
//! loses nothing, and the next one carries on from where it stopped.

mod blocking;
mod budget;
mod gateway;
mod stream;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Poll;

use bytes::BytesMut;

use crate::frame::{split_frame, write_frame, Frame, FrameHeader, FrameWriteError, HEADER_LEN};
use crate::pool::Pool;

pub use blocking::BlockingFramed;
pub use budget::{ByteBudget, FREE_ALLOWANCE};
pub use gateway::{step, Answer, AnswerTable, Step};
pub use stream::Framed;

/// Read-buffer growth per read while a frame is incomplete: large frames are read in steps, so a
/// header that promises 16 MiB costs nothing until the bytes arrive.
const READ_CHUNK: usize = 64 * 1024;

/// The least spare room a read is given.
const READ_MIN: usize = 4096;

/// Read buffers a thread keeps for connections that wait for their next call
/// ([`FrameBuffer::park`]), at most; each holds no more than [`FREE_ALLOWANCE`].
const PARKED_BUFFERS: usize = 128;

/// The most storage a parked write queue may hand to the pool.
const PARKED_QUEUE_BYTES: usize = 16 * 1024;

thread_local! {
    static READ_BUFFERS: Pool<BytesMut> = const { Pool::new(PARKED_BUFFERS) };
    static WRITE_QUEUES: Pool<Vec<u8>> = const { Pool::new(PARKED_BUFFERS) };
}

/// Polls `future` once: its output if it finished then, `Pending` if it has to wait (it stays
/// pinned where it is, to be awaited on). For steps that nearly always finish at once and cost
/// something more (a timer, a clock read) only when they wait.
pub(crate) async fn poll_once<F: Future + ?Sized>(mut future: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await
}

/// Why a framed connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum FramedError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection where a frame was awaited.
    #[error("connection closed")]
    Closed,
    #[error("connection closed inside a frame")]
    Truncated,
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("frame stalled after {have} of {want} bytes")]
    Stalled { have: usize, want: usize },
    #[error("write stalled with {0} bytes unsent")]
    WriteStalled(usize),
    /// A frame not whole within the frame deadline, however steadily it was arriving.
    #[error("frame not whole within the frame deadline: {have} of {want} bytes")]
    Overdue { have: usize, want: usize },
    /// The process's budget for buffered frames could not cover this frame's next bytes.
    #[error("frame buffers hold the whole --max-buffered-bytes budget ({limit} bytes)")]
    OverBudget { limit: usize },
    /// A message that cannot be framed (over 16 MiB) was to be sent.
    #[error(transparent)]
    Unframeable(#[from] FrameWriteError),
}

impl From<FramedError> for io::Error {
    fn from(e: FramedError) -> io::Error {
        use io::ErrorKind::{InvalidData, TimedOut, UnexpectedEof};
        match e {
            FramedError::Io(e) => e,
            e @ (FramedError::Closed | FramedError::Truncated) => io::Error::new(UnexpectedEof, e),
            e @ (FramedError::TooLarge(_) | FramedError::Unframeable(_)) => {
                io::Error::new(InvalidData, e)
            }
            e @ (FramedError::Stalled { .. }
            | FramedError::WriteStalled(_)
            | FramedError::Overdue { .. }) => io::Error::new(TimedOut, e),
            e @ FramedError::OverBudget { .. } => io::Error::new(io::ErrorKind::OutOfMemory, e),
        }
    }
}

/// The bytes read from a connection and not yet taken as frames.
#[derive(Debug)]
pub struct FrameBuffer {
    buf: BytesMut,
    max_frame: usize,
    /// Where storage past [`FREE_ALLOWANCE`] is taken from, if anywhere.
    budget: Option<ByteBudget>,
    /// Taken from the budget. Storage only grows until the buffer is trimmed (frames split off
    /// keep theirs alive while the call uses them), so neither does this.
    charged: usize,
}

impl FrameBuffer {
    /// A buffer that refuses frames whose payload is over `max_frame` bytes.
    pub fn new(max_frame: usize) -> FrameBuffer {
        FrameBuffer {
            buf: BytesMut::new(),
            max_frame,
            budget: None,
            charged: 0,
        }
    }

    /// A buffer whose storage past [`FREE_ALLOWANCE`] is taken from `budget`: a read that would
    /// need more than is left fails with [`FramedError::OverBudget`], and trimming keeps at
    /// most the allowance.
    pub fn with_budget(max_frame: usize, budget: ByteBudget) -> FrameBuffer {
        FrameBuffer {
            buf: BytesMut::new(),
            max_frame,
            budget: Some(budget),
            charged: 0,
        }
    }

    /// Bytes this buffer has taken from its budget.
    pub fn charged(&self) -> usize {
        self.charged
    }

    /// Takes from the budget so that storage of `storage` bytes is covered.
    fn cover(&mut self, storage: usize) -> Result<(), FramedError> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        let need = storage.saturating_sub(FREE_ALLOWANCE);
        if need > self.charged {
            if !budget.try_take(need - self.charged) {
                return Err(FramedError::OverBudget {
                    limit: budget.limit(),
                });
            }
            self.charged = need;
        }
        Ok(())
    }

    /// Gives back everything taken (the storage it covered is gone).
    fn uncover(&mut self) {
        // Most calls fit the free allowance and took nothing: the shared counter is left alone.
        if let (Some(budget), 1..) = (&self.budget, self.charged) {
            budget.give_back(std::mem::take(&mut self.charged));
        }
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Bytes buffered: the start of the next frame, or several frames.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Storage held, for tests of the growth policy.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Takes the next whole frame off the buffer (its payload shares the buffer's storage);
    /// `None` while it is incomplete. A header promising more than the limit is an error as soon
    /// as it is read: the connection cannot skip the frame without reading it.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FramedError> {
        if let Some(header) = FrameHeader::parse(&self.buf) {
            if header.len > self.max_frame {
                return Err(FramedError::TooLarge(header.len));
            }
        }
        Ok(split_frame(&mut self.buf))
    }

    /// True when a whole frame is buffered (or a header over the limit, which the next
    /// [`FrameBuffer::next_frame`] refuses): taking it needs no read.
    pub fn has_frame(&self) -> bool {
        FrameHeader::parse(&self.buf)
            .is_some_and(|h| h.len > self.max_frame || self.buf.len() >= HEADER_LEN + h.len)
    }

    /// How far the frame under way has come: the bytes buffered, and the payload length its
    /// header promises ([`HEADER_LEN`] while the header itself is incomplete).
    pub fn progress(&self) -> (usize, usize) {
        let want = FrameHeader::parse(&self.buf).map_or(HEADER_LEN, |h| h.len);
        (self.buf.len(), want)
    }

    /// Makes room for the next read. Until a header says more, a small read: an idle pooled
    /// connection (there may be thousands) then holds 4 KiB, not a whole chunk, and most calls
    /// fit in it anyway. The buffer grows only when the spare room is nearly used up, and by no
    /// more than what has arrived (at most a chunk): memory follows the bytes received, never the
    /// length a header promises, and a large frame still takes few reads.
    ///
    /// With a budget, the storage the reserve may come to (a reallocation at most doubles it)
    /// is covered before it happens.
    fn room(&mut self) -> Result<&mut BytesMut, FramedError> {
        if self.buf.capacity() == 0 {
            // Parked, or new: storage a waiting connection gave back serves this read.
            if let Some(storage) = Pool::take_from(&READ_BUFFERS) {
                self.buf = storage;
            }
        }
        if self.buf.capacity() - self.buf.len() < READ_MIN {
            let wanted = FrameHeader::parse(&self.buf).map_or(READ_MIN, |h| {
                (HEADER_LEN + h.len).saturating_sub(self.buf.len())
            });
            let step = wanted.clamp(READ_MIN, READ_CHUNK);
            let add = step.min(self.buf.len().max(READ_MIN));
            self.cover((2 * self.buf.capacity()).max(self.buf.len() + add))?;
            self.buf.reserve(add);
        }
        Ok(&mut self.buf)
    }

    /// Reads once from `r`, as much as has arrived; `Ok(0)` at the end of the stream. Cancel
    /// safe: a read that does not complete takes nothing.
    pub async fn read_from<R>(&mut self, r: &mut R) -> Result<usize, FramedError>
    where
        R: tokio::io::AsyncRead + Unpin + ?Sized,
    {
        Ok(tokio::io::AsyncReadExt::read_buf(r, self.room()?).await?)
    }

    /// Reads once from a blocking `r` through `chunk`; `Ok(0)` at the end of the stream.
    pub fn read_blocking<R>(&mut self, r: &mut R, chunk: &mut [u8]) -> io::Result<usize>
    where
        R: io::Read + ?Sized,
    {
        let n = loop {
            match r.read(chunk) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => break result?,
            }
        };
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Gives back storage past `retain` bytes (past [`FREE_ALLOWANCE`] with a budget), so one
    /// large frame does not pin its size for the connection's life. Bytes of a next frame
    /// already read move to fresh storage when they fit in what is kept.
    pub fn trim(&mut self, retain: usize) {
        let retain = match self.budget {
            Some(_) => retain.min(FREE_ALLOWANCE),
            None => retain,
        };
        if self.buf.len() > retain {
            // A large next frame is under way: its storage, and what covers it, stay.
            return;
        }
        if self.buf.capacity() > retain {
            self.buf = match self.buf.is_empty() {
                true => BytesMut::new(),
                false => BytesMut::from(&self.buf[..]),
            };
        }
        // Frames split off are gone by now: what is taken matches the storage again (within
        // the allowance, nothing).
        self.uncover();
        let _ = self.cover(self.buf.capacity());
    }

    /// Gives the buffer's storage to this thread's pool when it holds no bytes (the next read
    /// takes storage from there again), so that a connection waiting for its next call holds
    /// no read buffer. Storage over [`FREE_ALLOWANCE`] is dropped instead. Call it only when no
    /// frame split off the buffer is alive any more, or the storage cannot be reused in place.
    pub fn park(&mut self) {
        if !self.buf.is_empty() || self.buf.capacity() == 0 {
            return;
        }
        let storage = std::mem::take(&mut self.buf);
        self.uncover();
        if storage.capacity() <= FREE_ALLOWANCE {
            Pool::give_to(&READ_BUFFERS, storage);
        }
    }
}

impl Drop for FrameBuffer {
    fn drop(&mut self) {
        self.uncover();
    }
}

/// Frames waiting to be sent, and how much of them has gone.
#[derive(Debug, Default)]
pub struct FrameQueue {
    buf: Vec<u8>,
    sent: usize,
}

impl FrameQueue {
    pub fn new() -> FrameQueue {
        FrameQueue::default()
    }

    /// Queues a frame of type `ty` whose payload `encode` writes. On error nothing is queued.
    pub fn push_with(
        &mut self,
        ty: u8,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), FrameWriteError> {
        write_frame(self.storage(), ty, encode)
    }

    /// Queues a frame as it was read.
    pub fn push_frame(&mut self, frame: &Frame) {
        frame.write_to(self.storage());
    }

    /// Queues bytes as they are: whole frames encoded earlier, or anything at all (tests).
    pub fn push_raw(&mut self, bytes: &[u8]) {
        self.storage().extend_from_slice(bytes);
    }

    /// The queue's storage, taken from the thread's pool when it was parked (or is new).
    fn storage(&mut self) -> &mut Vec<u8> {
        if self.buf.capacity() == 0 {
            if let Some(storage) = Pool::take_from(&WRITE_QUEUES) {
                self.buf = storage;
            }
        }
        &mut self.buf
    }

    /// Gives the storage to this thread's pool when everything queued has been sent, so that
    /// a connection waiting for its next call holds no write buffer (the next push takes
    /// storage from there again). Storage over 16 KiB is dropped instead.
    pub fn park(&mut self) {
        if !self.is_empty() || self.buf.capacity() == 0 {
            return;
        }
        let storage = std::mem::take(&mut self.buf);
        if storage.capacity() <= PARKED_QUEUE_BYTES {
            Pool::give_to(&WRITE_QUEUES, storage);
        }
    }

    /// The bytes not sent yet.
    pub fn unsent(&self) -> &[u8] {
        &self.buf[self.sent..]
    }

    /// True when everything queued has been sent.
    pub fn is_empty(&self) -> bool {
        self.sent == self.buf.len()
    }

    /// Storage held, for tests of the trimming.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Records that the next `n` unsent bytes went out.
    pub fn advance(&mut self, n: usize) {
        self.sent += n;
        assert!(self.sent <= self.buf.len(), "advanced past the queue");
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
        }
    }

    /// Drops everything unsent (a connection given up).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.sent = 0;
    }

    /// Gives back storage past `retain` bytes when everything has been sent.
    pub fn trim(&mut self, retain: usize) {
        if self.is_empty() && self.buf.capacity() > retain {
            self.buf = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::MAX_PAYLOAD;

    #[test]
    fn a_header_over_the_limit_is_refused_before_its_payload_arrives() {
        let mut b = FrameBuffer::new(8);
        b.buf.extend_from_slice(&FrameHeader::encode(2, 8));
        assert_eq!(b.next_frame().unwrap(), None);
        b.buf.extend_from_slice(&[0; 8]);
        assert_eq!(b.next_frame().unwrap().unwrap().payload.len(), 8);
        b.buf.extend_from_slice(&FrameHeader::encode(2, 9));
        assert!(matches!(b.next_frame(), Err(FramedError::TooLarge(9))));
    }

    #[test]
    fn a_whole_frame_is_seen_before_it_is_taken() {
        let mut b = FrameBuffer::new(8);
        assert!(!b.has_frame());
        b.buf.extend_from_slice(&[1, 0, 0, 2, b'h']);
        assert!(!b.has_frame(), "one payload byte short");
        b.buf.extend_from_slice(&[b'i', 1, 0]);
        assert!(b.has_frame());
        b.next_frame().unwrap().unwrap();
        assert!(!b.has_frame(), "half a header");
        b.buf.extend_from_slice(&[0, 9]);
        assert!(b.has_frame(), "over the limit: next_frame answers at once");
    }

    #[test]
    fn a_promised_length_is_not_reserved_up_front() {
        let mut b = FrameBuffer::new(MAX_PAYLOAD);
        b.buf.extend_from_slice(&[2, 0xFF, 0xFF, 0xFF, 1, 2, 3]);
        assert_eq!(b.next_frame().unwrap(), None);
        assert_eq!(b.progress(), (7, MAX_PAYLOAD));
        b.room().unwrap();
        assert!(
            b.capacity() <= 2 * READ_MIN,
            "{} bytes reserved for a 16 MiB promise",
            b.capacity()
        );
    }

    #[test]
    fn storage_past_the_allowance_is_taken_from_the_budget_and_given_back() {
        let budget = ByteBudget::new(4 * READ_CHUNK);
        let mut a = FrameBuffer::with_budget(MAX_PAYLOAD, budget.clone());
        a.buf.extend_from_slice(&FrameHeader::encode(2, 1 << 20));
        let mut grown = Ok(());
        while grown.is_ok() {
            grown = a.room().map(|buf| {
                let spare = buf.capacity() - buf.len();
                buf.resize(buf.len() + spare, 0);
            });
        }
        assert!(matches!(grown, Err(FramedError::OverBudget { .. })));
        assert!(a.charged() <= budget.limit() && budget.used() == a.charged());
        assert!(
            a.capacity() <= budget.limit() + FREE_ALLOWANCE,
            "{} bytes held",
            a.capacity()
        );
        let mut b = FrameBuffer::with_budget(MAX_PAYLOAD, budget.clone());
        b.buf.reserve(FREE_ALLOWANCE);
        assert!(
            b.cover(budget.limit()).is_err(),
            "the other buffer holds it"
        );
        a.buf.clear();
        a.trim(1 << 20);
        assert_eq!(budget.used(), 0, "trimmed to the allowance: all given back");
        assert!(b.cover(2 * READ_CHUNK).is_ok());
        drop(b);
        assert_eq!(budget.used(), 0, "a dropped buffer gives back too");
    }

    #[test]
    fn a_blocking_read_appends_what_arrived() {
        let mut b = FrameBuffer::new(MAX_PAYLOAD);
        let mut chunk = [0u8; 3];
        let mut src: &[u8] = &[1, 0, 0, 2, b'h', b'i'];
        assert_eq!(b.read_blocking(&mut src, &mut chunk).unwrap(), 3);
        assert_eq!(b.next_frame().unwrap(), None);
        assert_eq!(b.read_blocking(&mut src, &mut chunk).unwrap(), 3);
        let f = b.next_frame().unwrap().unwrap();
        assert_eq!((f.ty, &f.payload[..]), (1, &b"hi"[..]));
        assert_eq!(b.read_blocking(&mut src, &mut chunk).unwrap(), 0);
    }

    #[test]
    fn a_queue_remembers_what_was_sent() {
        let mut q = FrameQueue::new();
        q.push_with(3, |o| o.extend_from_slice(b"abc")).unwrap();
        q.push_frame(&Frame {
            ty: 2,
            payload: bytes::Bytes::from_static(b"z"),
        });
        assert_eq!(q.unsent(), [3, 0, 0, 3, b'a', b'b', b'c', 2, 0, 0, 1, b'z']);
        q.advance(5);
        assert_eq!(q.unsent(), [b'b', b'c', 2, 0, 0, 1, b'z']);
        assert!(!q.is_empty());
        q.push_raw(&[9]);
        q.advance(8);
        assert!(q.is_empty());
        assert_eq!(q.unsent(), [] as [u8; 0]);
        assert_eq!(
            q.push_with(1, |_| {}),
            Err(FrameWriteError::Empty),
            "nothing queued for a refused frame"
        );
        assert!(q.is_empty());
    }

    /// Issue 15: storage a waiting connection parks serves the next read or push of the
    /// thread, without an allocation; storage with bytes in it is not parked.
    #[test]
    fn parked_storage_is_taken_back_by_the_next_read_or_push() {
        let mut b = FrameBuffer::new(MAX_PAYLOAD);
        let storage = b.room().unwrap().as_ptr();
        b.buf.extend_from_slice(&[1]);
        b.park();
        assert!(b.capacity() > 0, "a byte buffered: kept");
        b.buf.clear();
        b.park();
        assert_eq!(b.capacity(), 0);
        let mut other = FrameBuffer::new(MAX_PAYLOAD);
        assert_eq!(
            other.room().unwrap().as_ptr(),
            storage,
            "the parked storage"
        );
        let mut q = FrameQueue::new();
        q.push_raw(&[1, 2]);
        let storage = q.unsent().as_ptr();
        q.park();
        assert!(q.capacity() > 0, "unsent bytes: kept");
        q.advance(2);
        q.park();
        assert_eq!(q.capacity(), 0);
        let mut other = FrameQueue::new();
        other.push_raw(&[3]);
        assert_eq!(other.unsent().as_ptr(), storage, "the parked storage");
    }

    #[test]
    fn large_buffers_are_given_back_once_empty() {
        let mut b = FrameBuffer::new(MAX_PAYLOAD);
        b.buf.reserve(1 << 20);
        b.trim(1024);
        assert!(b.capacity() <= 1024);
        let mut q = FrameQueue::new();
        q.push_raw(&vec![0; 1 << 20]);
        q.trim(1024);
        assert!(q.capacity() > 1024, "unsent bytes are kept");
        q.advance(1 << 20);
        q.trim(1024);
        assert!(q.capacity() <= 1024);
    }
}

//! The tokio adapter: a [`FrameBuffer`] and a [`FrameQueue`] over an async stream.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, Instant};

use super::gateway::{step, AnswerTable, Step};
use super::{poll_once, ByteBudget, FrameBuffer, FrameQueue, FramedError};
use crate::codec::GatewayCodec;
use crate::frame::{Frame, MAX_PAYLOAD};

/// A stream read and written in whole frames.
///
/// With a stall timeout, a frame that has started arriving must keep arriving, and queued bytes
/// must keep leaving, each step within it (slowloris; a peer that stops reading). With a frame
/// timeout, a frame must also be whole within it from its first byte, however steadily it
/// trickles. Waiting for the first byte of a frame has no timeout: the caller bounds that wait
/// (an idle timeout, a call deadline), with [`Framed::fill`] when it must tell that wait apart.
#[derive(Debug)]
pub struct Framed<S> {
    stream: S,
    read: FrameBuffer,
    write: FrameQueue,
    stall_timeout: Option<Duration>,
    frame_timeout: Option<Duration>,
    /// When the frame under way began to arrive (or was found partly buffered behind another);
    /// noted at its first read that has to wait, so a frame read whole at once costs no clock
    /// read.
    frame_started: Option<Instant>,
    /// Writes that sent bytes, for tests of the batching and for diagnostics.
    writes: u64,
    /// Fills in a row that found bytes without waiting ([`Framed::fill_or_park`]).
    unwaited_fills: u32,
}

impl<S> Framed<S> {
    /// No frame-size limit but the protocol's, no stall timeout.
    pub fn new(stream: S) -> Framed<S> {
        Framed::with_limits(stream, MAX_PAYLOAD, None)
    }

    pub fn with_limits(stream: S, max_frame: usize, stall_timeout: Option<Duration>) -> Framed<S> {
        Framed {
            stream,
            read: FrameBuffer::new(max_frame),
            write: FrameQueue::new(),
            stall_timeout,
            frame_timeout: None,
            frame_started: None,
            writes: 0,
            unwaited_fills: 0,
        }
    }

    /// Every frame must be whole within `limit` of its first byte ([`FramedError::Overdue`]).
    pub fn with_frame_timeout(mut self, limit: Duration) -> Framed<S> {
        self.frame_timeout = Some(limit);
        self
    }

    /// The read buffer's storage past its free allowance is taken from `budget`
    /// ([`FrameBuffer::with_budget`]).
    pub fn with_budget(mut self, budget: ByteBudget) -> Framed<S> {
        self.read = FrameBuffer::with_budget(self.read.max_frame(), budget);
        self
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    pub fn into_inner(self) -> S {
        self.stream
    }

    pub fn max_frame(&self) -> usize {
        self.read.max_frame()
    }

    pub fn stall_timeout(&self) -> Option<Duration> {
        self.stall_timeout
    }

    /// What has been read and not yet taken as frames.
    pub fn read_buffer(&self) -> &FrameBuffer {
        &self.read
    }

    /// How many writes have sent bytes so far: replies batched into one write count once.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Bytes queued and not sent yet.
    pub fn queued(&self) -> usize {
        self.write.unsent().len()
    }

    /// Frames to send; [`Framed::flush`] sends them.
    pub fn queue(&mut self) -> &mut FrameQueue {
        &mut self.write
    }

    /// Gives back buffer storage past `retain` bytes (bytes of a next frame already read stay).
    pub fn trim(&mut self, retain: usize) {
        self.read.trim(retain);
        self.write.trim(retain);
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    /// Reads once into the buffer, as much as has arrived, without a timeout; `Ok(0)` at the end
    /// of the stream. Cancel safe.
    pub async fn fill(&mut self) -> Result<usize, FramedError> {
        self.read.read_from(&mut self.stream).await
    }

    /// The next whole frame; `None` when the peer closed the connection between frames. Cancel
    /// safe: bytes read stay buffered for the next call.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, FramedError> {
        loop {
            if let Some(frame) = self.read.next_frame()? {
                // A next frame partly read already has begun to arrive: its deadline counts
                // from now. A whole one needs no read (pipelined calls), so no clock either.
                self.frame_started =
                    (!self.read.is_empty() && !self.read.has_frame()).then(Instant::now);
                return Ok(Some(frame));
            }
            let n = if self.read.is_empty() {
                // Between frames: the caller bounds the wait.
                self.frame_started = None;
                self.fill().await?
            } else {
                let (started, stall, frame) = (
                    &mut self.frame_started,
                    self.stall_timeout,
                    self.frame_timeout,
                );
                let mut overdue = false;
                let limit = || {
                    let (limit, deadline) = frame_wait(started, stall, frame)?;
                    overdue = deadline;
                    Some(limit)
                };
                match within(self.read.read_from(&mut self.stream), limit).await {
                    Ok(n) => n?,
                    Err(()) => {
                        let (have, want) = self.read.progress();
                        return Err(match overdue {
                            true => FramedError::Overdue { have, want },
                            false => FramedError::Stalled { have, want },
                        });
                    }
                }
            };
            if n == 0 {
                return if self.read.is_empty() {
                    Ok(None)
                } else {
                    Err(FramedError::Truncated)
                };
            }
        }
    }

    /// The next whole frame; the peer closing the connection is [`FramedError::Closed`].
    pub async fn expect_frame(&mut self) -> Result<Frame, FramedError> {
        self.read_frame().await?.ok_or(FramedError::Closed)
    }

    /// Sends everything queued. Cancel safe: what went out is remembered, and the next flush
    /// sends the rest.
    pub async fn flush(&mut self) -> Result<(), FramedError> {
        while !self.write.is_empty() {
            let write = self.stream.write(self.write.unsent());
            let n = match self.stall_timeout {
                Some(limit) => match within(write, || Some(limit)).await {
                    Ok(n) => n?,
                    Err(_) => return Err(FramedError::WriteStalled(self.write.unsent().len())),
                },
                None => write.await?,
            };
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero).into());
            }
            self.write.advance(n);
            self.writes += 1;
        }
        Ok(self.stream.flush().await?)
    }

    /// Sends a frame as it was read (a proxy forwarding it).
    pub async fn send_frame(&mut self, frame: &Frame) -> Result<(), FramedError> {
        self.write.push_frame(frame);
        self.flush().await
    }

    /// Sends bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), FramedError> {
        self.write.push_raw(bytes);
        self.flush().await
    }

    /// A gateway awaiting a call's reply: reads frames, answering each `extra_info` request from
    /// `table`, and returns the first frame that is not one (the reply, or an error frame).
    pub async fn await_reply<T>(
        &mut self,
        codec: &mut dyn GatewayCodec,
        table: &mut T,
    ) -> Result<Frame, T::Error>
    where
        T: AnswerTable + ?Sized,
        T::Error: From<FramedError>,
    {
        loop {
            let frame = self.expect_frame().await?;
            match step(frame, codec, table, &mut self.write)? {
                Step::Reply(frame) => return Ok(frame),
                Step::Answered { delay } => {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    self.flush().await?;
                }
            }
        }
    }
}

/// How many fills in a row may find their bytes already there before the task yields
/// ([`Framed::fill_or_park`]).
const FILLS_BEFORE_YIELD: u32 = 2;

impl Framed<tokio::net::UnixStream> {
    /// [`Framed::fill`] for a connection that waits for its next frame: a read that would
    /// block lends the read buffer's storage to the thread's pool ([`FrameBuffer::park`]) and
    /// waits for the socket to be readable without it, so an idle connection holds no read
    /// buffer. The storage must be free: no frame split off it alive. Cancel safe.
    ///
    /// A gateway quick enough to send its next call before the runner reads again would keep
    /// its connection served in a loop that never yields (a read that finds bytes does not
    /// return to the scheduler), and the worker's other connections would wait for
    /// milliseconds (BENCHMARKS.md, the two-CPU p99). So after `FILLS_BEFORE_YIELD` fills
    /// in a row that did not wait, the task yields once: the worker polls its sockets and
    /// serves what became ready meanwhile. A yield costs about 3.4k instructions (the worker
    /// parks and wakes the task again); every second fill keeps the tail as short as yielding
    /// at every one did, at half the cost.
    pub async fn fill_or_park(&mut self) -> Result<usize, FramedError> {
        if self.unwaited_fills >= FILLS_BEFORE_YIELD {
            self.unwaited_fills = 0;
            tokio::task::yield_now().await;
        }
        let mut waited = false;
        loop {
            if self.read.capacity() == 0 {
                // Parked: the last fill found the socket empty, so this one counts as waited.
                waited = true;
                std::future::poll_fn(|cx| self.stream.poll_read_ready(cx)).await?;
            }
            match self.stream.try_read_buf(self.read.room()?) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.read.park();
                    waited = true;
                }
                n => {
                    self.unwaited_fills = if waited { 0 } else { self.unwaited_fills + 1 };
                    return Ok(n?);
                }
            }
        }
    }
}

/// How long a read of the frame under way may wait, and whether running out of that is the
/// frame deadline (rather than a stall); `None` with neither limit set. The frame's clock starts
/// here if it has not: at its first read that has to wait.
fn frame_wait(
    started: &mut Option<Instant>,
    stall: Option<Duration>,
    frame: Option<Duration>,
) -> Option<(Duration, bool)> {
    let left = frame.map(|limit| {
        let started = *started.get_or_insert_with(Instant::now);
        (started + limit).saturating_duration_since(Instant::now())
    });
    match (stall, left) {
        (Some(stall), Some(left)) if left < stall => Some((left, true)),
        (Some(stall), _) => Some((stall, false)),
        (None, Some(left)) => Some((left, true)),
        (None, None) => None,
    }
}

/// `step` with a timeout, armed only if the step does not complete at once: a read of bytes
/// already arrived, or a write with room in the socket buffer (nearly every step), then costs no
/// clock read and no timer. `limit` is asked only then (`None`: no timeout). The time before the
/// first poll is nil, so the limit measures what it always did: how long the step waits.
async fn within<F: Future>(
    step: F,
    limit: impl FnOnce() -> Option<Duration>,
) -> Result<F::Output, ()> {
    let mut step = pin!(step);
    if let Poll::Ready(done) = poll_once(step.as_mut()).await {
        return Ok(done);
    }
    match limit() {
        Some(limit) => timeout(limit, step).await.map_err(|_| ()),
        None => Ok(step.await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameHeader, HEADER_LEN};
    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixStream;

    const RETAINED: usize = 256 * 1024;

    fn pair(stall: Option<Duration>) -> (Framed<UnixStream>, UnixStream) {
        let (a, b) = UnixStream::pair().expect("a socket pair");
        (Framed::with_limits(a, MAX_PAYLOAD, stall), b)
    }

    #[tokio::test]
    async fn a_promised_length_is_not_reserved_up_front_and_a_stall_closes() {
        let (mut framed, mut peer) = pair(Some(Duration::from_millis(50)));
        peer.write_all(&[2, 0xFF, 0xFF, 0xFF, 1, 2, 3])
            .await
            .unwrap();
        match framed.read_frame().await {
            Err(FramedError::Stalled { want, .. }) => assert_eq!(want, MAX_PAYLOAD),
            other => panic!("expected a stall, got {other:?}"),
        }
        assert!(
            framed.read_buffer().capacity() <= 2 * super::super::READ_MIN,
            "{} bytes reserved for a 16 MiB promise",
            framed.read_buffer().capacity()
        );
    }

    /// The stall timer is armed only when a read has to wait, and the frame deadline with it:
    /// a frame trickled a byte at a time, each well within the stall timeout, still ends at the
    /// frame deadline, counted from its first byte.
    #[tokio::test(start_paused = true)]
    async fn a_trickled_frame_is_overdue_at_the_frame_deadline() {
        let (framed, mut peer) = pair(Some(Duration::from_millis(600)));
        let mut framed = framed.with_frame_timeout(Duration::from_secs(1));
        let trickle = tokio::spawn(async move {
            for b in [1, 0, 0, 100] {
                peer.write_all(&[b]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            loop {
                peer.write_all(&[0]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let start = Instant::now();
        match framed.read_frame().await {
            Err(FramedError::Overdue { want, .. }) => assert_eq!(want, 100),
            other => panic!("expected the frame deadline, got {other:?}"),
        }
        assert!(
            start.elapsed() <= Duration::from_millis(1200),
            "closed at {:?}, not at the deadline",
            start.elapsed()
        );
        trickle.abort();
    }

    #[tokio::test]
    async fn a_large_frame_does_not_pin_its_buffer() {
        let (mut framed, mut peer) = pair(None);
        let len = 4 * RETAINED;
        let mut frame = FrameHeader::encode(1, len).to_vec();
        frame.resize(HEADER_LEN + len, 7);
        let writer = tokio::spawn(async move {
            peer.write_all(&frame).await.unwrap();
            peer
        });
        let got = framed.read_frame().await.unwrap().expect("a frame");
        assert_eq!(got.payload.len(), len);
        drop(got);
        framed.queue().push_raw(&vec![0; 2 * RETAINED]);
        let mut peer = writer.await.unwrap();
        let reader = tokio::spawn(async move {
            let mut sink = vec![0; 2 * RETAINED];
            tokio::io::AsyncReadExt::read_exact(&mut peer, &mut sink)
                .await
                .unwrap();
        });
        framed.flush().await.unwrap();
        reader.await.unwrap();
        framed.trim(RETAINED);
        assert!(framed.read_buffer().capacity() <= RETAINED);
        assert!(framed.queue().capacity() <= RETAINED);
    }

    #[tokio::test]
    async fn a_flush_dropped_half_way_resumes_where_it_stopped() {
        let (mut framed, mut peer) = pair(None);
        // More than the socket buffers hold, so the first flush cannot finish.
        let frame = Frame {
            ty: 3,
            payload: vec![5u8; 4 << 20].into(),
        };
        framed.queue().push_frame(&frame);
        let first = tokio::time::timeout(Duration::from_millis(10), framed.flush()).await;
        assert!(first.is_err(), "the flush finished with nobody reading");
        assert!(!framed.queue().is_empty());
        let reader = tokio::spawn(async move {
            let mut other = Framed::new(&mut peer);
            other.expect_frame().await.unwrap()
        });
        framed.flush().await.unwrap();
        assert_eq!(
            reader.await.unwrap(),
            frame,
            "the frame arrives whole, once"
        );
    }

    /// Fills that find their bytes already there read at once, but only so many in a row:
    /// then the task yields once, so one quick gateway cannot keep the worker from its other
    /// connections (see `fill_or_park`).
    #[tokio::test]
    async fn fills_that_never_wait_yield_every_so_often() {
        let (mut framed, mut peer) = pair(None);
        async fn polled_once(framed: &mut Framed<UnixStream>) -> Poll<usize> {
            let once = poll_once(pin!(framed.fill_or_park())).await;
            once.map(|n| n.unwrap())
        }
        peer.write_all(&[1, 0, 0, 1, 0]).await.unwrap();
        assert_eq!(
            framed.fill_or_park().await.unwrap(),
            5,
            "the first fill waits"
        );
        for i in 1..=FILLS_BEFORE_YIELD {
            peer.write_all(&[1, 0, 0, 1, i as u8]).await.unwrap();
            assert_eq!(
                polled_once(&mut framed).await,
                Poll::Ready(5),
                "fill {i} in a row did not read what was there"
            );
        }
        peer.write_all(&[1, 0, 0, 1, 9]).await.unwrap();
        assert!(
            polled_once(&mut framed).await.is_pending(),
            "fill {} in a row read without yielding",
            FILLS_BEFORE_YIELD + 1
        );
        assert_eq!(framed.fill_or_park().await.unwrap(), 5);
        let mut seen = Vec::new();
        while let Some(frame) = framed.read.next_frame().unwrap() {
            seen.push(frame.payload[0]);
        }
        let mut want: Vec<u8> = (0..=FILLS_BEFORE_YIELD as u8).collect();
        want.push(9);
        assert_eq!(seen, want, "every byte read once, in order");
    }

    #[tokio::test]
    async fn end_of_stream_between_frames_is_none_and_inside_one_is_truncated() {
        let (mut framed, mut peer) = pair(None);
        peer.write_all(&[1, 0, 0, 1, 9, 1, 0]).await.unwrap();
        drop(peer);
        assert_eq!(framed.read_frame().await.unwrap().unwrap().payload[..], [9]);
        assert!(matches!(
            framed.read_frame().await,
            Err(FramedError::Truncated)
        ));
        let (mut framed, peer) = pair(None);
        drop(peer);
        assert!(framed.read_frame().await.unwrap().is_none());
        assert!(matches!(
            framed.expect_frame().await,
            Err(FramedError::Closed)
        ));
    }
}

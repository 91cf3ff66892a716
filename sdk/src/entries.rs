//! `Entries`: a request's headers or query arguments, kept as locations in the frame and read
//! when a plugin asks.
//!
//! Decoding a call used to turn every header and argument into a [`Text`] (a reference count
//! and a UTF-8 check per string) for chains that read none of them, and then to locate every
//! entry up front. Now a decoder records only where the *list* lies ([`Entries::start_lazy`]:
//! the frame, a codec-defined [`ListAt`] and the codec's [`Locator`]); the first read of the list
//! runs the locator, which finds where each name and value lies, checking every offset as it
//! follows it. A name is compared as bytes (no text made), and a value becomes `&str` when it is
//! read, UTF-8 checked then. An empty chain never touches a header.
//!
//! A list whose structure turns out malformed on that first read (an element out of bounds)
//! reads as empty, and [`Entries::malformed`] says why: the runner then answers the call
//! BAD_REQUEST instead of the chain's verdict, so a check that saw an empty list never lets the
//! request through (docs/protocol.md §4). A malformed list nobody reads costs nothing and fails
//! nothing.
//!
//! Invalid UTF-8 (a Latin-1 header, a percent-decoded `%FF`) is never an error: the first read
//! of such a string makes the lossy [`Pair`] list of all entries once (U+FFFD for each bad
//! sequence, as the eager decoder did) and that read, and later ones, see the replacement
//! characters.

use std::fmt;
use std::sync::{Mutex, OnceLock, PoisonError};

use bytes::Bytes;

use crate::model::Pair;
use crate::text::Text;

/// Where one entry's name and value lie in [`Entries::buf`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    name_at: u32,
    name_len: u32,
    /// [`NO_VALUE`] for an absent value (a bare query flag).
    value_at: u32,
    value_len: u32,
}

const NO_VALUE: u32 = u32::MAX;

/// A location given to [`Entries::push_located`] that does not lie in the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutsideFrame;

/// Where a list lies in a frame, in the terms of the codec that decoded it (for instance the
/// offset of its first element, its element count, and an element layout). Only the codec's
/// [`Locator`] reads it. Codecs use this; plugins never need it.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListAt {
    pub start: u32,
    pub len: u32,
    pub layout: u32,
}

/// A codec's function that, given the frame and a list's [`ListAt`], records every entry of the
/// list into `out` in order, checking each location as it follows it; `Err` names what was
/// malformed. A plain `fn`, so the SDK knows nothing of the codecs.
#[doc(hidden)]
pub type Locator = fn(frame: &[u8], list: ListAt, out: &mut Spans<'_>) -> Result<(), &'static str>;

/// Where a [`Locator`] records the entries it finds.
#[doc(hidden)]
pub struct Spans<'a> {
    frame: &'a [u8],
    spans: &'a mut Vec<Span>,
}

impl Spans<'_> {
    /// Records one entry whose name and value are slices of the frame given to the locator.
    pub fn push(&mut self, name: &[u8], value: Option<&[u8]>) -> Result<(), OutsideFrame> {
        let span = span_of(self.frame, name, value)?;
        self.spans.push(span);
        Ok(())
    }

    /// Forgets what was recorded (a locator that starts over another way).
    pub fn clear(&mut self) {
        self.spans.clear();
    }
}

/// The [`Span`] of a name and value that are slices of `frame`.
fn span_of(frame: &[u8], name: &[u8], value: Option<&[u8]>) -> Result<Span, OutsideFrame> {
    let (name_at, name_len) = locate(frame, name)?;
    let (value_at, value_len) = match value {
        Some(v) => locate(frame, v)?,
        None => (NO_VALUE, 0),
    };
    Ok(Span {
        name_at,
        name_len,
        value_at,
        value_len,
    })
}

/// The offset and length of `part` in `frame`. Computed from addresses, so an empty slice from
/// anywhere is accepted as the empty string.
fn locate(frame: &[u8], part: &[u8]) -> Result<(u32, u32), OutsideFrame> {
    if part.is_empty() {
        return Ok((0, 0));
    }
    let base = frame.as_ptr() as usize;
    let at = (part.as_ptr() as usize).wrapping_sub(base);
    let end = at.checked_add(part.len()).ok_or(OutsideFrame)?;
    if end > frame.len() || end > NO_VALUE as usize {
        return Err(OutsideFrame);
    }
    Ok((at as u32, part.len() as u32))
}

/// The located entries of a list, and whether locating them failed.
#[derive(Clone, Default)]
struct Located {
    spans: Vec<Span>,
    malformed: Option<&'static str>,
}

/// Name/value entries of a request (headers, query arguments), in the order the gateway sent
/// them, repeats kept. An absent value (`?debug`) differs from an empty one.
#[derive(Default)]
pub struct Entries {
    /// The bytes the spans point into: a call's payload, or for entries built in code (tests,
    /// gateways) a buffer of their own.
    buf: Bytes,
    /// The list still to locate, and the codec's locator ([`Entries::start_lazy`]).
    lazy: Option<(ListAt, Locator)>,
    /// The entries, located on first need (at once for lists built in code).
    located: OnceLock<Located>,
    /// The spans' storage between calls: [`Entries::clear`] puts it here and the next location
    /// takes it, so a steady stream of calls that read headers does not allocate. A mutex
    /// because locating happens behind `&self`; taken once per list per call, never contended.
    spare: Mutex<Vec<Span>>,
    /// The entries as pairs, made on first need (a lossy string, [`Entries::as_pairs`]).
    pairs: OnceLock<Vec<Pair>>,
}

impl Entries {
    pub const fn new() -> Entries {
        Entries {
            buf: Bytes::new(),
            lazy: None,
            located: OnceLock::new(),
            spare: Mutex::new(Vec::new()),
            pairs: OnceLock::new(),
        }
    }

    /// The number of entries (locating the list if nothing read it yet).
    pub fn len(&self) -> usize {
        self.spans().len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans().is_empty()
    }

    /// Why the list could not be read, when a read found its structure malformed (it then reads
    /// as empty); `None` for a list that is well formed or that nobody has read yet.
    pub fn malformed(&self) -> Option<&'static str> {
        self.located.get().and_then(|l| l.malformed)
    }

    /// Forgets every entry (and the frame), keeping the storage for the next call.
    pub fn clear(&mut self) {
        self.buf = Bytes::new();
        self.lazy = None;
        self.pairs.take();
        if let Some(Located { mut spans, .. }) = self.located.take() {
            spans.clear();
            let spare = self.spare_mut();
            if spans.capacity() > spare.capacity() {
                *spare = spans;
            }
        }
    }

    fn spare_mut(&mut self) -> &mut Vec<Span> {
        self.spare.get_mut().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes of storage held for entries (for the bound on what an idle connection keeps).
    pub fn capacity_bytes(&self) -> usize {
        let spare = self
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .capacity();
        let located = self.located.get().map_or(0, |l| l.spans.capacity());
        (spare + located) * std::mem::size_of::<Span>()
            + self
                .pairs
                .get()
                .map_or(0, |p| p.capacity() * std::mem::size_of::<Pair>())
    }

    /// Gives back storage past `entries` entries, so one huge call does not pin its size.
    pub fn shrink_to(&mut self, entries: usize) {
        let spare = self.spare_mut();
        if spare.capacity() > entries {
            spare.shrink_to(entries);
        }
        if let Some(l) = self.located.get_mut() {
            if l.spans.capacity() > entries {
                l.spans.shrink_to(entries);
            }
        }
    }

    /// Starts refilling from a call's payload: later [`Entries::push_located`] calls give
    /// locations inside `frame`. Codecs that locate entries up front call this; plugins never
    /// need it.
    #[doc(hidden)]
    pub fn start(&mut self, frame: &Bytes, entries: usize) {
        self.clear();
        if entries > 0 {
            self.buf = frame.clone();
        }
        let mut spans = std::mem::take(self.spare_mut());
        spans.reserve(entries);
        self.located = OnceLock::from(Located {
            spans,
            malformed: None,
        });
    }

    /// Refills with the list at `list` in `frame`, located by `locate` when it is first read.
    /// Codecs call this; plugins never need it.
    #[doc(hidden)]
    pub fn start_lazy(&mut self, frame: &Bytes, list: ListAt, locate: Locator) {
        self.clear();
        if list.len > 0 {
            self.buf = frame.clone();
            self.lazy = Some((list, locate));
        }
    }

    /// Records one entry whose name and value are slices of the frame given to
    /// [`Entries::start`]. Codecs call this; plugins never need it.
    #[doc(hidden)]
    pub fn push_located(&mut self, name: &[u8], value: Option<&[u8]>) -> Result<(), OutsideFrame> {
        let span = span_of(&self.buf, name, value)?;
        self.spans_mut().push(span);
        Ok(())
    }

    /// The located entries, locating them now if nothing did yet.
    fn located(&self) -> &Located {
        self.located.get_or_init(|| self.locate_now())
    }

    fn spans(&self) -> &[Span] {
        &self.located().spans
    }

    fn spans_mut(&mut self) -> &mut Vec<Span> {
        self.located();
        &mut self.located.get_mut().expect("located just above").spans
    }

    /// Runs the codec's locator over the list, in the spare storage. A malformed list reads as
    /// empty, with the reason kept for [`Entries::malformed`].
    fn locate_now(&self) -> Located {
        let mut spans =
            std::mem::take(&mut *self.spare.lock().unwrap_or_else(PoisonError::into_inner));
        spans.clear();
        let mut malformed = None;
        if let Some((list, locate)) = self.lazy {
            spans.reserve(list.len as usize);
            let mut out = Spans {
                frame: &self.buf,
                spans: &mut spans,
            };
            if let Err(why) = locate(&self.buf, list, &mut out) {
                spans.clear();
                malformed = Some(why);
            }
        }
        Located { spans, malformed }
    }

    /// Appends an entry (for requests built in code; copies the buffer, so keep it to tests
    /// and gateways, and build long lists with `collect`).
    pub fn push(&mut self, pair: Pair) {
        let mut buf = self.buf.to_vec();
        self.append(&mut buf, &pair);
        self.buf = Bytes::from(buf);
        self.lazy = None;
        self.pairs.take();
    }

    /// Copies `pair` to the end of `buf`, which becomes this list's buffer afterwards.
    fn append(&mut self, buf: &mut Vec<u8>, pair: &Pair) {
        let name_at = buf.len() as u32;
        buf.extend_from_slice(pair.name.as_bytes());
        let (value_at, value_len) = match &pair.value {
            Some(v) => {
                let at = buf.len() as u32;
                buf.extend_from_slice(v.as_bytes());
                (at, v.len() as u32)
            }
            None => (NO_VALUE, 0),
        };
        self.spans_mut().push(Span {
            name_at,
            name_len: pair.name.len() as u32,
            value_at,
            value_len,
        });
    }

    /// Keeps the entries `keep` accepts (for requests built in code: rebuilds the list).
    pub fn retain(&mut self, mut keep: impl FnMut(&Pair) -> bool) {
        let kept: Entries = self
            .as_pairs()
            .iter()
            .filter(|p| keep(p))
            .cloned()
            .collect();
        *self = kept;
    }

    pub fn get(&self, index: usize) -> Option<Entry<'_>> {
        let span = *self.spans().get(index)?;
        Some(Entry {
            all: self,
            index,
            span,
        })
    }

    pub fn iter(&self) -> Iter<'_> {
        let spans = self.spans();
        Iter {
            all: self,
            spans,
            range: 0..spans.len(),
        }
    }

    /// The entries as [`Pair`]s sharing the frame, made on the first call (one allocation per
    /// call that needs them); invalid UTF-8 is replaced.
    pub fn as_pairs(&self) -> &[Pair] {
        self.pairs
            .get_or_init(|| self.iter().map(|e| e.to_pair()).collect())
    }
}

/// One entry of [`Entries`].
#[derive(Clone, Copy)]
pub struct Entry<'a> {
    all: &'a Entries,
    index: usize,
    span: Span,
}

impl<'a> Entry<'a> {
    pub fn name_bytes(&self) -> &'a [u8] {
        let at = self.span.name_at as usize;
        &self.all.buf[at..at + self.span.name_len as usize]
    }

    /// The value's bytes; `None` when the entry has no value.
    pub fn value_bytes(&self) -> Option<&'a [u8]> {
        if self.span.value_at == NO_VALUE {
            return None;
        }
        let at = self.span.value_at as usize;
        Some(&self.all.buf[at..at + self.span.value_len as usize])
    }

    /// Whether the name is `name`, ASCII case ignored (header names), without making text.
    pub fn name_eq_ignore_case(&self, name: &str) -> bool {
        self.name_bytes().eq_ignore_ascii_case(name.as_bytes())
    }

    /// Whether the name is exactly `name` (argument names), without making text.
    pub fn name_is(&self, name: &str) -> bool {
        self.name_bytes() == name.as_bytes()
    }

    /// The name as text (invalid UTF-8 replaced).
    pub fn name(&self) -> &'a str {
        match std::str::from_utf8(self.name_bytes()) {
            Ok(s) => s,
            Err(_) => &self.all.as_pairs()[self.index].name,
        }
    }

    /// The value as text (invalid UTF-8 replaced); `None` when the entry has no value.
    pub fn value(&self) -> Option<&'a str> {
        let bytes = self.value_bytes()?;
        Some(match std::str::from_utf8(bytes) {
            Ok(s) => s,
            Err(_) => self.all.as_pairs()[self.index].value.as_deref()?,
        })
    }

    /// The value as a [`Text`] sharing the frame (a reference count, no copy when valid UTF-8).
    pub fn value_text(&self) -> Option<Text> {
        self.value_bytes()
            .map(|v| Text::slice_lossy(&self.all.buf, v))
    }

    /// The entry as an owned [`Pair`] sharing the frame.
    pub fn to_pair(&self) -> Pair {
        Pair {
            name: Text::slice_lossy(&self.all.buf, self.name_bytes()),
            value: self.value_text(),
        }
    }
}

/// The entries of [`Entries`], in order.
#[derive(Clone)]
pub struct Iter<'a> {
    all: &'a Entries,
    spans: &'a [Span],
    range: std::ops::Range<usize>,
}

impl<'a> Iter<'a> {
    fn entry(&self, index: usize) -> Entry<'a> {
        Entry {
            all: self.all,
            index,
            span: self.spans[index],
        }
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = Entry<'a>;

    fn next(&mut self) -> Option<Entry<'a>> {
        self.range.next().map(|i| self.entry(i))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.range.size_hint()
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.range.next_back().map(|i| self.entry(i))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Entries {
    type Item = Entry<'a>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl Clone for Entries {
    fn clone(&self) -> Entries {
        let located = OnceLock::new();
        if let Some(l) = self.located.get() {
            let _ = located.set(l.clone());
        }
        Entries {
            buf: self.buf.clone(),
            lazy: self.lazy,
            located,
            spare: Mutex::new(Vec::new()),
            pairs: OnceLock::new(),
        }
    }
}

/// Equal when a plugin reads the same text from both: invalid UTF-8 compares as its
/// replacement, so a decoded request equals its re-encoding.
impl PartialEq for Entries {
    fn eq(&self, other: &Entries) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .zip(other)
                .all(|(a, b)| a.name() == b.name() && a.value() == b.value())
    }
}

impl Eq for Entries {}

impl PartialEq<[Pair]> for Entries {
    fn eq(&self, other: &[Pair]) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .zip(other)
                .all(|(a, b)| a.name() == b.name.as_str() && a.value() == b.value.as_deref())
    }
}

impl PartialEq<Vec<Pair>> for Entries {
    fn eq(&self, other: &Vec<Pair>) -> bool {
        *self == other[..]
    }
}

impl fmt::Debug for Entries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|e| (e.name(), e.value())))
            .finish()
    }
}

impl FromIterator<Pair> for Entries {
    fn from_iter<I: IntoIterator<Item = Pair>>(pairs: I) -> Entries {
        let mut out = Entries::new();
        let mut buf = Vec::new();
        for p in pairs {
            out.append(&mut buf, &p);
        }
        out.buf = Bytes::from(buf);
        out
    }
}

impl From<Vec<Pair>> for Entries {
    fn from(pairs: Vec<Pair>) -> Entries {
        pairs.into_iter().collect()
    }
}

impl<const N: usize> From<[Pair; N]> for Entries {
    fn from(pairs: [Pair; N]) -> Entries {
        pairs.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(at, len)` of a string in a test frame.
    type At = (usize, usize);

    fn located(frame: &'static [u8], spans: &[(usize, usize, Option<At>)]) -> Entries {
        let frame = Bytes::from_static(frame);
        let mut e = Entries::new();
        e.start(&frame, spans.len());
        for &(at, len, value) in spans {
            let value = value.map(|(vat, vlen)| &frame[vat..vat + vlen]);
            e.push_located(&frame[at..at + len], value).unwrap();
        }
        e
    }

    #[test]
    fn entries_read_their_frame_without_copying() {
        let e = located(
            b"hostexample.orgflag",
            &[(0, 4, Some((4, 11))), (15, 4, None)],
        );
        assert_eq!(e.len(), 2);
        let host = e.get(0).unwrap();
        assert!(host.name_eq_ignore_case("HOST"));
        assert_eq!(host.value(), Some("example.org"));
        assert_eq!(e.get(1).unwrap().value(), None);
        assert_eq!(
            e,
            vec![Pair::new("host", "example.org"), Pair::absent("flag")]
        );
        assert!(e.pairs.get().is_none(), "no pair list made for valid text");
    }

    #[test]
    fn invalid_utf8_reads_as_replacement_characters() {
        let e = located(
            b"xl\xe4tin\xffok",
            &[(0, 1, Some((1, 6))), (7, 2, Some((7, 2)))],
        );
        assert_eq!(e.get(1).unwrap().value(), Some("ok"));
        assert_eq!(e.get(0).unwrap().value(), Some("l\u{fffd}tin\u{fffd}"));
        assert_eq!(
            e.as_pairs()[0].value.as_deref(),
            Some("l\u{fffd}tin\u{fffd}")
        );
    }

    #[test]
    fn a_location_outside_the_frame_is_refused() {
        let frame = Bytes::from_static(b"abc");
        let other = b"elsewhere".to_vec();
        let mut e = Entries::new();
        e.start(&frame, 1);
        assert_eq!(e.push_located(&other[1..3], None), Err(OutsideFrame));
        assert_eq!(e.push_located(&frame[..], Some(b"")), Ok(()));
        assert_eq!(e.get(0).unwrap().value(), Some(""));
    }

    /// A test codec's list: `len` entries of two bytes from `start`, a one-byte name then a
    /// one-byte value.
    fn two_byte_entries(
        frame: &[u8],
        list: ListAt,
        out: &mut Spans<'_>,
    ) -> Result<(), &'static str> {
        for i in 0..list.len as usize {
            let at = list.start as usize + 2 * i;
            let entry = frame.get(at..at + 2).ok_or("entry out of bounds")?;
            out.push(&entry[..1], Some(&entry[1..]))
                .map_err(|_| "entry outside the frame")?;
        }
        Ok(())
    }

    fn lazy(frame: &Bytes, start: u32, len: u32) -> Entries {
        let mut e = Entries::new();
        e.start_lazy(
            frame,
            ListAt {
                start,
                len,
                layout: 0,
            },
            two_byte_entries,
        );
        e
    }

    #[test]
    fn a_lazy_list_is_located_on_first_read_only() {
        let frame = Bytes::from_static(b"..a1b2");
        let e = lazy(&frame, 2, 2);
        assert!(e.located.get().is_none(), "decoding located nothing");
        assert!(e.malformed().is_none());
        assert_eq!(e.get(1).unwrap().value(), Some("2"));
        assert!(e.located.get().is_some());
        assert_eq!(e, vec![Pair::new("a", "1"), Pair::new("b", "2")]);
        assert_eq!(e.len(), 2);
        assert_eq!(e.clone(), e);
    }

    #[test]
    fn a_malformed_lazy_list_reads_as_empty_and_says_why() {
        let frame = Bytes::from_static(b"..a1b");
        let e = lazy(&frame, 2, 2);
        assert_eq!(e.malformed(), None, "nobody read it yet");
        assert!(e.iter().next().is_none());
        assert_eq!(e.len(), 0);
        assert!(e.as_pairs().is_empty());
        assert_eq!(e.malformed(), Some("entry out of bounds"));
        let mut e = e;
        e.clear();
        assert_eq!(e.malformed(), None, "cleared with the list");
    }

    #[test]
    fn locating_reuses_the_last_calls_storage() {
        let frame = Bytes::from_static(b"a1b2c3d4");
        let mut e = lazy(&frame, 0, 4);
        let first = e.spans().as_ptr();
        for _ in 0..3 {
            e.clear();
            e.start_lazy(
                &frame,
                ListAt {
                    start: 0,
                    len: 4,
                    layout: 0,
                },
                two_byte_entries,
            );
            assert_eq!(e.len(), 4);
            assert_eq!(e.spans().as_ptr(), first, "the spans' storage was reused");
        }
        e.clear();
        e.shrink_to(1);
        assert!(e.capacity_bytes() <= std::mem::size_of::<Span>());
    }

    #[test]
    fn entries_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Entries>();
    }

    #[test]
    fn built_entries_compare_like_pairs() {
        let mut e = Entries::from(vec![Pair::new("a", "1")]);
        e.push(Pair::absent("b"));
        assert_eq!(e, vec![Pair::new("a", "1"), Pair::absent("b")]);
        assert_eq!(e.clone(), e);
        assert_eq!(format!("{e:?}"), r#"[("a", Some("1")), ("b", None)]"#);
        e.clear();
        assert!(e.is_empty());
    }
}

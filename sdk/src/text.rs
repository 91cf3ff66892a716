//! `Text`: an immutable, cheaply cloned UTF-8 string.
//!
//! Decoded requests hand out `Text` slices of the frame's payload (a reference count, no copy),
//! and plugins answer with `Text` built from `&'static str` (no allocation), a `String` (moved,
//! no copy) or a clone of a `Text` held in their conf (a reference count). UTF-8 is checked once,
//! when a `Text` is made, so reading one as `&str` costs nothing (plugins compare header names
//! and values all the time).

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use bytestring::ByteString;

/// An immutable UTF-8 string backed by [`Bytes`].
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Text(ByteString);

impl Text {
    /// The empty text.
    pub const fn new() -> Text {
        Text(ByteString::new())
    }

    /// A text over a static string, without allocating.
    pub const fn from_static(s: &'static str) -> Text {
        Text(ByteString::from_static(s))
    }

    /// Wraps bytes that are valid UTF-8; `None` otherwise.
    pub fn from_utf8(bytes: Bytes) -> Option<Text> {
        ByteString::try_from(bytes).ok().map(Text)
    }

    /// A text over the part of `buf` that `part` points into, sharing `buf`'s storage; `None`
    /// when that part is not UTF-8.
    ///
    /// `part` must lie within `buf` (decoders use this for strings they read out of a payload).
    pub fn slice_utf8(buf: &Bytes, part: &[u8]) -> Option<Text> {
        if part.is_empty() {
            return Some(Text::new());
        }
        Text::from_utf8(buf.slice_ref(part))
    }

    /// [`Text::slice_utf8`], replacing invalid UTF-8 with U+FFFD instead of failing.
    ///
    /// Gateways send what clients sent: a percent-decoded path (`/%FF`) or a header with
    /// Latin-1 bytes is not UTF-8, and refusing the call would turn the client's request into a
    /// 503. Plugins see the replacement character; only such rare texts are copied.
    pub fn slice_lossy(buf: &Bytes, part: &[u8]) -> Text {
        Text::slice_utf8(buf, part)
            .unwrap_or_else(|| Text::from(String::from_utf8_lossy(part).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part of this text that `part` points into, sharing storage.
    ///
    /// # Panics
    /// When `part` does not lie within this text.
    pub fn slice_ref(&self, part: &str) -> Text {
        if part.is_empty() {
            return Text::new();
        }
        Text(self.0.slice_ref(part))
    }

    /// The underlying bytes, shared.
    pub fn as_bytes(&self) -> &Bytes {
        self.0.as_bytes()
    }

    pub fn into_bytes(self) -> Bytes {
        self.0.into_bytes()
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Text {
        Text::from_static(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(ByteString::from(s))
    }
}

impl From<&String> for Text {
    fn from(s: &String) -> Text {
        Text(ByteString::from(s.as_str()))
    }
}

impl From<Box<str>> for Text {
    fn from(s: Box<str>) -> Text {
        Text::from(String::from(s))
    }
}

impl From<&Text> for Text {
    fn from(t: &Text) -> Text {
        t.clone()
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        String::deserialize(d).map(Text::from)
    }
}

impl serde::Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_share_the_payload() {
        let payload = Bytes::from_static(b"xxhello-world");
        let s = std::str::from_utf8(&payload[2..7]).unwrap();
        let t = Text::slice_lossy(&payload, s.as_bytes());
        assert_eq!(t, "hello");
        assert_eq!(t.as_bytes().as_ptr(), payload[2..].as_ptr());
    }

    #[test]
    fn lossy_slices_replace_invalid_bytes() {
        let buf = Bytes::from_static(b"/a\xffb");
        assert_eq!(Text::slice_lossy(&buf, &buf[..]), "/a\u{fffd}b");
        assert_eq!(Text::slice_lossy(&buf, &buf[..2]), "/a");
    }

    #[test]
    fn rejects_invalid_utf8() {
        assert!(Text::from_utf8(Bytes::from_static(b"\xff")).is_none());
        assert_eq!(Text::from_utf8(Bytes::from_static(b"ok")).unwrap(), "ok");
    }
}

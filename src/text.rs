//! `Text`: an immutable, cheaply cloned UTF-8 string.
//!
//! Decoded requests hand out `Text` slices of the frame's payload (a reference count, no copy),
//! and plugins answer with `Text` built from `&'static str` (no allocation), a `String` (moved,
//! no copy) or a clone of a `Text` held in their conf (a reference count).

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

/// An immutable UTF-8 string backed by [`Bytes`].
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Text(Bytes);

impl Text {
    /// The empty text.
    pub const fn new() -> Text {
        Text(Bytes::new())
    }

    /// A text over a static string, without allocating.
    pub const fn from_static(s: &'static str) -> Text {
        Text(Bytes::from_static(s.as_bytes()))
    }

    /// Wraps bytes that are valid UTF-8; `None` otherwise.
    pub fn from_utf8(bytes: Bytes) -> Option<Text> {
        std::str::from_utf8(&bytes).ok()?;
        Some(Text(bytes))
    }

    /// A text over the part of `buf` that `s` points into, sharing `buf`'s storage.
    ///
    /// `s` must lie within `buf` (decoders use this for strings they read out of a payload).
    pub(crate) fn slice_of(buf: &Bytes, s: &str) -> Text {
        Text(buf.slice_ref(s.as_bytes()))
    }

    pub fn as_str(&self) -> &str {
        // Every constructor checks or inherits UTF-8 validity.
        std::str::from_utf8(&self.0).expect("Text is always UTF-8")
    }

    /// The underlying bytes, shared.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
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
        Text(Bytes::from(s))
    }
}

impl From<&String> for Text {
    fn from(s: &String) -> Text {
        Text(Bytes::copy_from_slice(s.as_bytes()))
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
        let t = Text::slice_of(&payload, s);
        assert_eq!(t, "hello");
        assert_eq!(t.as_bytes().as_ptr(), payload[2..].as_ptr());
    }

    #[test]
    fn rejects_invalid_utf8() {
        assert!(Text::from_utf8(Bytes::from_static(b"\xff")).is_none());
        assert_eq!(Text::from_utf8(Bytes::from_static(b"ok")).unwrap(), "ok");
    }
}

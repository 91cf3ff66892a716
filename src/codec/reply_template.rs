//! A reply copied from a template with its id patched in: the continue reply, which most calls
//! get. Building it with a codec's message builder costs hundreds of instructions per call
//! (and, in capnp-rust, an allocation for the segment table); a copy of a few dozen bytes
//! and a 4-byte store cost a handful.
//!
//! The template is made by the codec's own builder, twice, with ids 1 and 2: the one byte in
//! which the two encodings differ is the low byte of the little-endian id (both wire formats
//! store scalars little-endian). Nothing here assumes a schema's layout, and the constructor
//! checks the two encodings differ in exactly the id's place. Id 0 is left to the builder: a
//! FlatBuffers builder leaves a field at its default out of the table, so that encoding has
//! another layout.

/// A serialized reply and where its 4-byte little-endian id lies.
pub struct ReplyTemplate {
    bytes: Vec<u8>,
    id_at: usize,
}

impl ReplyTemplate {
    /// The template of the reply `build` writes for an id.
    ///
    /// # Panics
    /// When the encodings of ids 1 and 2 differ anywhere but in one little-endian `u32`: a
    /// builder that lays out the message differently per id cannot be templated (a bug in the
    /// caller, found by its unit test at the first encode).
    pub fn new(build: impl Fn(u32) -> Vec<u8>) -> ReplyTemplate {
        let (one, two) = (build(1), build(2));
        assert_eq!(one.len(), two.len(), "the reply's size depends on its id");
        let id_at = one
            .iter()
            .zip(&two)
            .position(|(a, b)| a != b)
            .expect("the id is in the reply");
        let differing = one.iter().zip(&two).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 1, "the replies differ beyond the id");
        assert_eq!(one.get(id_at..id_at + 4), Some(&1u32.to_le_bytes()[..]));
        ReplyTemplate { bytes: one, id_at }
    }

    /// Appends the reply with `id` to `out`.
    pub fn write(&self, id: u32, out: &mut Vec<u8>) {
        let at = out.len() + self.id_at;
        out.extend_from_slice(&self.bytes);
        out[at..at + 4].copy_from_slice(&id.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy encoding: a header byte, the id, a trailer.
    fn toy(id: u32) -> Vec<u8> {
        let mut v = vec![0xAA];
        v.extend_from_slice(&id.to_le_bytes());
        v.push(0xBB);
        v
    }

    #[test]
    fn the_id_is_patched_where_the_builder_puts_it() {
        let t = ReplyTemplate::new(toy);
        for id in [1, 2, 0x0102_0304, u32::MAX] {
            let mut out = vec![9, 9];
            t.write(id, &mut out);
            assert_eq!(out[2..], toy(id)[..]);
            assert_eq!(out[..2], [9, 9], "appends");
        }
    }

    #[test]
    #[should_panic(expected = "differ beyond the id")]
    fn a_layout_that_changes_with_the_id_is_refused() {
        ReplyTemplate::new(|id| {
            let mut v = toy(id);
            v.push(id as u8);
            v
        });
    }
}

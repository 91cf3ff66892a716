//! Code generated from `schema/ext_plugin.capnp` (see `build.rs` and `scripts/regen-capnp.sh`),
//! checked in as `src/proto/ext_plugin_capnp.rs` and quarantined here so that rustfmt and the
//! lints aimed at hand-written code do not apply to it.

#[allow(
    clippy::all,
    clippy::pedantic,
    dead_code,
    unused_qualifications,
    missing_docs
)]
#[rustfmt::skip]
pub mod ext_plugin_capnp;

//! Building blocks shared by the built-in plugins: code that several plugins need and that is
//! written once here.
//!
//! * [`expr`]: APISIX `vars` expressions (lua-resty-expr subset).

pub mod expr;
#[cfg(test)]
#[allow(dead_code)] // shared by the plugins' tests; not every helper is used by each
pub(crate) mod testkit;

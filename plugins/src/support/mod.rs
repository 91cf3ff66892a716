//! Building blocks shared by the built-in plugins: code that several plugins need and that is
//! written once here.
//!
//! * [`expr`]: APISIX `vars` expressions (lua-resty-expr subset).
//! * [`clock`]: monotonic time that tests drive by hand.
//! * [`keyed`]: a bounded, sharded, swept map from a request key to its limiter cell.
//! * [`window`]: a sliding-window counter (LeapArray).
//! * [`key`]: the `key_type` / `key` extractor.
//! * [`reject`]: rejection answers and the conf fields all limiters share.
//! * [`lease`]: request ↔ response correlation with expiring leases.
//! * [`vars`]: variables in either phase, for the engines above.
//! * [`specific_items`]: per-key thresholds and key patterns for the limiters.
//! * [`warm_up`]: Sentinel's warm-up curve for the limiters.

pub mod clock;
pub mod expr;
pub mod key;
pub mod keyed;
pub mod lease;
pub mod reject;
pub mod specific_items;
pub mod vars;
pub mod warm_up;
pub mod window;

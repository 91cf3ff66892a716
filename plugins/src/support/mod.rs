//! Building blocks shared by the built-in plugins: code that several plugins need and that is
//! written once here.
//!
//! * [`expr`]: APISIX `vars` expressions (lua-resty-expr subset).
//! * [`template`]: strings with APISIX variables (`$var`, `${var ?? default}`).
//! * [`amount`]: a limiter's number, fixed or taken from the request.
//! * [`few`]: a list of usually one item, without a heap allocation for that one.
//! * [`clock`]: monotonic time that tests drive by hand.
//! * [`keyed`]: a bounded, sharded, swept map from a request key to its limiter cell.
//! * [`window`]: a sliding-window counter (LeapArray).
//! * [`key`]: the `key_type` / `key` extractor.
//! * [`reject`]: rejection answers and the conf fields all limiters share.
//! * [`lease`]: request ↔ response correlation with expiring leases.
//! * [`vars`]: variables in either phase, for the engines above.
//! * [`now`]: deciding without a future, for plugins' synchronous hooks.
//! * [`digits`]: a number's digits on the stack, for per-request header values.
//! * [`specific_items`]: per-key thresholds and key patterns for the limiters.
//! * [`patterns`]: every regex a conf brings, compiled once under size and count bounds.
//! * [`warm_up`]: Sentinel's warm-up curve for the limiters.
//! * [`warn_once`]: prepare-time warnings logged once per cause, not per prepare.

pub mod amount;
pub mod clock;
pub mod digits;
pub mod expr;
pub mod few;
pub mod key;
pub mod keyed;
pub mod lease;
pub mod now;
pub mod patterns;
pub mod reject;
pub mod specific_items;
pub mod template;
pub mod vars;
pub mod warm_up;
pub mod warn_once;
pub mod window;

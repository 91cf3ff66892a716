//! The OpenSergo wire messages, generated at build time from `plugins/proto/` (written for this
//! project from the published field tables; names and numbers are the interface).
//!
//! The module tree mirrors the proto packages, as the generated code's paths require.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod io {
    pub mod opensergo {
        pub mod proto {
            pub mod transport {
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/io.opensergo.proto.transport.v1.rs"));
                }
            }
            pub mod common {
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/io.opensergo.proto.common.v1.rs"));
                }
            }
            pub mod fault_tolerance {
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/io.opensergo.proto.fault_tolerance.v1.rs"));
                }
            }
            pub mod router {
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/io.opensergo.proto.router.v1.rs"));
                }
            }
        }
    }
}

pub mod envoy {
    pub mod config {
        pub mod route {
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.config.route.v3.rs"));
            }
        }
        pub mod core {
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
            }
        }
    }
    pub mod r#type {
        pub mod matcher {
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.r#type.matcher.v3.rs"));
            }
        }
    }
}

pub use io::opensergo::proto::common::v1 as common;
pub use io::opensergo::proto::fault_tolerance::v1 as fault_tolerance;
pub use io::opensergo::proto::router::v1 as router;
pub use io::opensergo::proto::transport::v1 as transport;
pub use envoy::config::route::v3 as route;

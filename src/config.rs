//! Runner settings, with the defaults a gateway expects.

use std::path::PathBuf;
use std::time::Duration;

use crate::codec::ProtocolSetting;
use crate::frame::MAX_PAYLOAD;
use crate::metrics::{MetricsAddress, DEFAULT_MAX_ROUTES};
use crate::peers::AllowPeers;
use ext_plugin_sdk::host::Retention;
use ext_plugin_sdk::Clock;

/// Where the runner listens when neither `APISIX_LISTEN_ADDRESS` nor `--listen` says.
pub const DEFAULT_LISTEN_ADDRESS: &str = "unix:/tmp/ext-plugin-runner.sock";

/// APISIX's default `APISIX_CONF_EXPIRE_TIME`, in seconds.
pub const DEFAULT_CONF_EXPIRE_SECS: u64 = 3600;

/// The largest `APISIX_CONF_EXPIRE_TIME` accepted: ten years. Anything longer means "never" to an
/// operator, and the chain's keep time (1.2 x this) must stay a representable duration.
pub const MAX_CONF_EXPIRE_SECS: u64 = 10 * 365 * 24 * 3600;

#[derive(Clone, Debug)]
pub struct Config {
    /// The Unix socket path.
    pub listen: PathBuf,
    /// The gateway's conf expiry (`APISIX_CONF_EXPIRE_TIME`). Chains are kept 1.2 × this long
    /// after their last use.
    pub conf_expire: Duration,
    pub protocol: ProtocolSetting,
    /// Prepared chains kept at most; the least recently used go first.
    pub conf_cache_capacity: usize,
    /// Bytes the cached chains may account for at most (each: its key, its confs' JSON and a
    /// fixed overhead); past it the least recently used go first, whatever their count.
    pub conf_cache_bytes: usize,
    /// The largest conf a `prepare_conf` may carry (plugin names and JSON confs, summed); a
    /// larger one is refused before any plugin sees it.
    pub max_conf_bytes: usize,
    /// A `prepare_conf` not prepared within this long is refused; its build, which cannot be
    /// stopped, may finish later and is cached then.
    pub prepare_timeout: Duration,
    /// Chains built at once, counting builds past their deadline that have not finished: the
    /// bound on threads a hung prepare can hold.
    pub max_prepares_in_flight: usize,
    /// Bytes of `extra_info` answers one call may read; past it the call is answered
    /// SERVICE_UNAVAILABLE.
    pub extra_info_budget: usize,
    /// Bytes buffered for incoming frames, summed over every connection; a connection whose
    /// frame needs more than is left is answered SERVICE_UNAVAILABLE and closed.
    pub max_buffered_bytes: usize,
    /// Plugin state (a route's limiter counts, say) kept after the chains that held it left
    /// the conf cache, so the route prepared again carries on where it was: how many such
    /// values, and for how long after their last chain went.
    pub state_retention: Retention,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Who may connect, by the peer's credentials ([`crate::peers`]).
    pub allow_peers: AllowPeers,
    /// Connections one peer uid may hold at once; a further one is closed unanswered.
    pub max_connections_per_uid: usize,
    /// A call (plugins and extra_info round trips) that takes longer is answered with
    /// SERVICE_UNAVAILABLE. Below the gateway's 60 s read timeout.
    pub call_timeout: Duration,
    /// On SIGTERM, how long calls in flight may take to finish (the gateway kills after 1 s).
    pub drain_timeout: Duration,
    /// The largest frame payload accepted; a larger one is refused and the connection closed.
    /// Also bounds a connection's read buffer: a frame is read in steps of at most 64 KiB, so
    /// a header promising a large payload costs memory only as the bytes arrive.
    pub max_frame: usize,
    /// A connection with no call in flight and no bytes arriving for this long is closed.
    /// APISIX keeps idle pooled connections for up to 180 s, so the default sits well above
    /// that: the runner never closes a connection the gateway still means to reuse.
    pub idle_timeout: Duration,
    /// A frame that has started arriving (or a reply being written) that makes no progress for
    /// this long closes the connection: a gateway writes a frame in one go, so a stall is a
    /// dead or hostile peer (slowloris), not a slow one.
    pub stall_timeout: Duration,
    /// A frame that has started arriving must be whole within this long, however steadily its
    /// bytes trickle in (a stall timeout alone lets a byte per interval hold a buffer forever).
    pub frame_timeout: Duration,
    /// The clock plugins read time from ([`ext_plugin_sdk::PrepareEnv::clock`]): the system's
    /// monotonic clock. Tests of time-dependent plugins set [`Clock::manual`] and advance it
    /// (see [`crate::testing`]).
    pub clock: Clock,
    /// Where to serve Prometheus metrics (`GET /metrics`, `GET /healthz`); `None`: metrics are
    /// off and cost nothing.
    pub metrics_listen: Option<MetricsAddress>,
    /// Routes that get their own series in `route` labels; later ones count as `_other`.
    pub metrics_max_routes: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: parse_listen_address(DEFAULT_LISTEN_ADDRESS).expect("valid default"),
            conf_expire: Duration::from_secs(DEFAULT_CONF_EXPIRE_SECS),
            protocol: ProtocolSetting::Auto,
            conf_cache_capacity: 65_536,
            conf_cache_bytes: 256 << 20,
            max_conf_bytes: 1 << 20,
            prepare_timeout: Duration::from_secs(2),
            max_prepares_in_flight: 32,
            extra_info_budget: 64 << 20,
            max_buffered_bytes: 192 << 20,
            state_retention: Retention {
                capacity: 65_536,
                idle: Duration::from_secs(DEFAULT_CONF_EXPIRE_SECS),
            },
            max_connections: 4096,
            allow_peers: AllowPeers::default(),
            max_connections_per_uid: 2048,
            call_timeout: Duration::from_secs(55),
            drain_timeout: Duration::from_millis(800),
            max_frame: MAX_PAYLOAD,
            idle_timeout: Duration::from_secs(600),
            stall_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(20),
            clock: Clock::system(),
            metrics_listen: None,
            metrics_max_routes: DEFAULT_MAX_ROUTES,
        }
    }
}

impl Config {
    /// How long a chain is kept after its last use: 1.2 x `conf_expire`, saturating (a
    /// `Config` built in code is not range-checked like the command line is).
    pub fn conf_ttl(&self) -> Duration {
        self.conf_expire
            .checked_mul(6)
            .map_or(Duration::MAX, |d| d / 5)
    }
}

/// Reads `unix:/abs/path.sock`. Anything else is refused: the gateway only speaks Unix sockets.
pub fn parse_listen_address(address: &str) -> Result<PathBuf, String> {
    let path = address.strip_prefix("unix:").ok_or_else(|| {
        format!(
            "listen address `{address}` must start with `unix:` (e.g. {DEFAULT_LISTEN_ADDRESS})"
        )
    })?;
    if path.is_empty() {
        return Err(format!("listen address `{address}` has no path"));
    }
    let path = PathBuf::from(path);
    // The gateway and the runner need not share a working directory: a relative path would
    // name another file for each of them.
    if !path.is_absolute() {
        return Err(format!(
            "listen address `{address}` must name an absolute path (e.g. {DEFAULT_LISTEN_ADDRESS})"
        ));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_listen_paths_are_refused() {
        let err = parse_listen_address("unix:run/a.sock").unwrap_err();
        assert!(err.contains("absolute"), "{err}");
        assert!(parse_listen_address("unix:./a.sock").is_err());
    }

    #[test]
    fn listen_addresses_need_the_unix_prefix() {
        assert_eq!(
            parse_listen_address("unix:/tmp/a.sock").unwrap(),
            PathBuf::from("/tmp/a.sock")
        );
        assert!(parse_listen_address("/tmp/a.sock")
            .unwrap_err()
            .contains("must start with `unix:`"));
        assert!(parse_listen_address("unix:").is_err());
    }

    #[test]
    fn chains_outlive_the_gateway_expiry() {
        let c = Config {
            conf_expire: Duration::from_secs(3600),
            ..Config::default()
        };
        assert_eq!(c.conf_ttl(), Duration::from_secs(4320));
    }

    #[test]
    fn a_huge_expiry_saturates_instead_of_panicking() {
        let c = Config {
            conf_expire: Duration::from_secs(u64::MAX),
            ..Config::default()
        };
        assert_eq!(c.conf_ttl(), Duration::MAX);
    }
}

//! `ip-restriction` (docs/plugins/ip-restriction.md): allow or deny clients by address.
//!
//! Conf: `{"whitelist": ["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"], "message": "Your IP
//! address is not allowed", "response_code": 403}`, or `"blacklist"` instead of `"whitelist"`
//! (exactly one; `allowlist`/`denylist` are accepted as aliases). Entries are addresses or CIDR
//! prefixes, IPv4 or IPv6. An IPv4-mapped IPv6 client (`::ffff:10.1.2.3`) matches IPv4 entries.
//!
//! Rejection: `Stop(response_code, {"message": message}\n)`. A request without a client address
//! is rejected by a whitelist and passed by a blacklist.
//!
//! Every entry becomes a range of 128-bit addresses (IPv4 mapped into `::ffff:0:0/96`); the
//! ranges are merged and sorted at prepare time, so a lookup is one binary search.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use ext_plugin_sdk::*;

pub struct IpRestriction {
    ranges: Vec<(u128, u128)>,
    allow: bool,
    reject: Stop,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpRestrictionConf {
    #[serde(default, alias = "allowlist")]
    whitelist: Option<Vec<String>>,
    #[serde(default, alias = "denylist")]
    blacklist: Option<Vec<String>>,
    #[serde(default = "default_message")]
    message: String,
    #[serde(default = "default_code")]
    response_code: u16,
}

fn default_message() -> String {
    "Your IP address is not allowed".into()
}

fn default_code() -> u16 {
    403
}

/// The 128-bit form of an address: IPv4 as IPv4-mapped IPv6.
fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn parse_entry(entry: &str) -> Result<(u128, u128), ConfError> {
    let net: IpNet = match entry.parse() {
        Ok(net) => net,
        Err(_) => match entry.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                return Err(ConfError::new(format!(
                    "`{entry}` is neither an IP address nor a CIDR prefix"
                )))
            }
        },
    };
    let (first, last) = (to_u128(net.network()), to_u128(net.broadcast()));
    Ok((first, last))
}

/// Sorted, non-overlapping ranges covering every entry.
fn build_ranges(entries: &[String]) -> Result<Vec<(u128, u128)>, ConfError> {
    let mut ranges = entries
        .iter()
        .map(|e| parse_entry(e.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    ranges.sort_unstable();
    let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    Ok(merged)
}

fn contains(ranges: &[(u128, u128)], ip: IpAddr) -> bool {
    let ip = match ip {
        // A v4-mapped v6 client is the v4 client.
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    let x = to_u128(ip);
    // The last range starting at or before x is the only one that can hold it.
    let i = ranges.partition_point(|&(lo, _)| lo <= x);
    i > 0 && ranges[i - 1].1 >= x
}

impl Plugin for IpRestriction {
    const NAME: &'static str = "ip-restriction";
    type Conf = IpRestrictionConf;

    fn prepare(conf: IpRestrictionConf, _env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        let (entries, allow) = match (conf.whitelist, conf.blacklist) {
            (Some(w), None) => (w, true),
            (None, Some(b)) => (b, false),
            (Some(_), Some(_)) => {
                return Err(ConfError::new(
                    "set either `whitelist` or `blacklist`, not both",
                ))
            }
            (None, None) => return Err(ConfError::new("set `whitelist` or `blacklist`")),
        };
        if entries.is_empty() {
            return Err(ConfError::new("the address list must not be empty"));
        }
        if !(403..=404).contains(&conf.response_code) {
            return Err(ConfError::new(format!(
                "`response_code` must be 403 or 404, got {}",
                conf.response_code
            )));
        }
        if conf.message.is_empty() || conf.message.len() > 1024 {
            return Err(ConfError::new("`message` must be 1 to 1024 bytes"));
        }
        Ok(IpRestriction {
            ranges: build_ranges(&entries)?,
            allow,
            reject: Stop::json_message(conf.response_code, "message", &conf.message),
        })
    }

    fn request_filter_sync(&self, call: &mut RequestCall<'_>) -> Option<Result<Flow, PluginError>> {
        let listed = call.src_ip().is_some_and(|ip| contains(&self.ranges, ip));
        Some(if listed == self.allow {
            Ok(Flow::Continue)
        } else {
            Ok(Flow::Stop(self.reject.clone()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn ranges(entries: &[&str]) -> Vec<(u128, u128)> {
        build_ranges(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn matches_v4_v6_and_mapped_addresses() {
        let r = ranges(&["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"]);
        assert!(contains(&r, ip("10.255.0.1")));
        assert!(!contains(&r, ip("11.0.0.1")));
        assert!(contains(&r, ip("127.0.0.1")));
        assert!(!contains(&r, ip("127.0.0.2")));
        assert!(contains(&r, ip("2001:db8:ffff::1")));
        assert!(!contains(&r, ip("2001:db9::1")));
        assert!(contains(&r, ip("::ffff:10.1.2.3")), "v4-mapped v6 matches v4 CIDRs");
        assert!(!contains(&r, ip("::a01:203")), "v4-compatible (not mapped) does not");
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        let r = ranges(&["10.0.0.0/24", "10.0.1.0/24", "10.0.0.128/25", "192.168.0.0/16"]);
        assert_eq!(r.len(), 2);
        assert!(contains(&r, ip("10.0.1.255")));
        assert!(!contains(&r, ip("10.0.2.0")));
    }

    #[test]
    fn host_bits_in_a_prefix_cover_the_whole_network() {
        // APISIX (lua-resty-ipmatcher) treats 10.1.2.3/8 as 10.0.0.0/8.
        let r = ranges(&["10.1.2.3/8"]);
        assert!(contains(&r, ip("10.200.0.1")));
    }

    #[test]
    fn bad_entries_name_themselves() {
        let e = build_ranges(&["10.0.0.0/33".to_string()]).unwrap_err();
        assert!(e.message().contains("10.0.0.0/33"), "{e}");
        assert!(build_ranges(&["nope".to_string()]).is_err());
    }

    #[test]
    fn v6_literal_is_not_mistaken_for_v4() {
        let r = ranges(&["::1"]);
        assert!(contains(&r, ip("::1")));
        assert!(!contains(&r, IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
    }
}

//! `request-id` (docs/plugins/request-id.md): give every request an id the upstream and the client see.
//!
//! Conf: `{"header_name": "X-Request-Id", "include_in_response": true, "algorithm": "uuid",
//! "range_id": {"length": 16, "char_set": "abc...XYZ0123456789"}}`; `algorithm` is `uuid` (v4),
//! `uuidv7` (time-ordered), `nanoid` (21 URL-safe characters), `ksuid` (27 base62 characters,
//! time-ordered by the second) or `range_id` (`length` characters drawn from `char_set`).
//!
//! * Request phase: an id the client sent is kept; otherwise a new one is set as a request header.
//!   With `include_in_response`, the id is also set on the client's response. The gateway *sets*
//!   that header, replacing one the upstream sent.
//! * Response phase (when the chain is also attached as `ext-plugin-post-resp`): as APISIX's Lua
//!   plugin does, an id the upstream put on its response wins. If the upstream sent none, the
//!   request's id is added (read back with one `extra_info` variable lookup).

use serde::Deserialize;

use ext_plugin_sdk::*;

pub struct RequestId {
    header: Text,
    /// `http_<header>` with `-` as `_`: the variable that reads the request's id back.
    header_var: String,
    include_in_response: bool,
    algorithm: Algorithm,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestIdConf {
    #[serde(default = "default_header")]
    header_name: String,
    #[serde(default = "default_true")]
    include_in_response: bool,
    #[serde(default)]
    algorithm: AlgorithmName,
    #[serde(default)]
    range_id: RangeIdConf,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum AlgorithmName {
    #[default]
    Uuid,
    Uuidv7,
    Nanoid,
    Ksuid,
    #[serde(rename = "range_id")]
    RangeId,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeIdConf {
    #[serde(default = "default_length")]
    length: usize,
    #[serde(default = "default_char_set")]
    char_set: String,
}

impl Default for RangeIdConf {
    fn default() -> Self {
        RangeIdConf {
            length: default_length(),
            char_set: default_char_set(),
        }
    }
}

fn default_header() -> String {
    "X-Request-Id".into()
}
fn default_true() -> bool {
    true
}
fn default_length() -> usize {
    16
}
fn default_char_set() -> String {
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789".into()
}

const NANOID_ALPHABET: &[u8] = b"_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const NANOID_LEN: usize = 21;

enum Algorithm {
    Uuid,
    Uuidv7,
    Ksuid,
    /// `len` characters drawn uniformly from `chars` (nanoid is this with its own alphabet).
    Random { chars: Vec<u8>, len: usize },
}

/// The longest id: `range_id.length`'s bound (uuids are 36 characters, ksuids 27).
const MAX_ID_LEN: usize = 256;

impl Algorithm {
    /// A new id, written into `buf` (ids are formatted on the stack, then copied into the
    /// call's reused buffer: no allocation per request).
    fn generate_into<'b>(&self, buf: &'b mut [u8; MAX_ID_LEN]) -> &'b str {
        use rand::Rng;
        let len = match self {
            // From the thread's CSPRNG: `Uuid::new_v4` asks the OS for every id, a system call
            // per request. The encoder's text needs no second UTF-8 check.
            Algorithm::Uuid => {
                return uuid::Builder::from_random_bytes(random_16())
                    .into_uuid()
                    .hyphenated()
                    .encode_lower(buf)
            }
            Algorithm::Uuidv7 => return uuid::Uuid::now_v7().hyphenated().encode_lower(buf),
            Algorithm::Ksuid => {
                buf[..27].copy_from_slice(&ksuid());
                27
            }
            Algorithm::Random { chars, len } => {
                let mut rng = rand::rng();
                for b in &mut buf[..*len] {
                    *b = chars[rng.random_range(0..chars.len())];
                }
                *len
            }
        };
        // Every alphabet is ASCII (checked at prepare for `range_id`).
        std::str::from_utf8(&buf[..len]).expect("ids are ASCII")
    }

    #[cfg(test)]
    fn generate(&self) -> String {
        self.generate_into(&mut [0; MAX_ID_LEN]).to_owned()
    }
}

/// 16 bytes from the thread's CSPRNG in one fill (`random::<[u8; 16]>()` draws a 32-bit word
/// per byte).
fn random_16() -> [u8; 16] {
    use rand::RngCore;
    let mut bytes = [0; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// KSUID's epoch (2014-05-13T16:53:20Z) in Unix seconds.
const KSUID_EPOCH: u64 = 1_400_000_000;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A KSUID: 4 bytes of seconds since its epoch and 16 random bytes, as 27 base62 characters.
fn ksuid() -> [u8; 27] {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .saturating_sub(KSUID_EPOCH);
    let mut bytes = [0u8; 20];
    bytes[..4].copy_from_slice(&u32::try_from(secs).unwrap_or(u32::MAX).to_be_bytes());
    bytes[4..].copy_from_slice(&random_16());
    base62_27(bytes)
}

/// The 160-bit big-endian number `bytes` in base62, left-padded with `0` to 27 digits.
fn base62_27(mut bytes: [u8; 20]) -> [u8; 27] {
    let mut digits = [b'0'; 27];
    for d in digits.iter_mut().rev() {
        // Long division of the whole number by 62; the remainder is the next digit.
        let mut rem = 0u32;
        for b in bytes.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 62) as u8;
            rem = cur % 62;
        }
        *d = BASE62[rem as usize];
    }
    digits
}

/// A header name: an HTTP token.
fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Plugin for RequestId {
    const NAME: &'static str = "request-id";
    type Conf = RequestIdConf;

    fn prepare(conf: RequestIdConf, _env: &mut PrepareEnv<'_>) -> Result<Self, ConfError> {
        if !valid_header_name(&conf.header_name) {
            return Err(ConfError::new(format!(
                "`header_name` {:?} is not a valid header name",
                conf.header_name
            )));
        }
        let algorithm = match conf.algorithm {
            AlgorithmName::Uuid => Algorithm::Uuid,
            AlgorithmName::Uuidv7 => Algorithm::Uuidv7,
            AlgorithmName::Ksuid => Algorithm::Ksuid,
            AlgorithmName::Nanoid => Algorithm::Random {
                chars: NANOID_ALPHABET.to_vec(),
                len: NANOID_LEN,
            },
            AlgorithmName::RangeId => {
                let RangeIdConf { length, char_set } = conf.range_id;
                if !(6..=256).contains(&length) {
                    return Err(ConfError::new(format!(
                        "`range_id.length` must be 6 to 256, got {length}"
                    )));
                }
                if char_set.len() < 6 || !char_set.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(ConfError::new(
                        "`range_id.char_set` must be at least 6 visible ASCII characters",
                    ));
                }
                Algorithm::Random {
                    chars: char_set.into_bytes(),
                    len: length,
                }
            }
        };
        let header_var = format!("http_{}", conf.header_name.to_ascii_lowercase().replace('-', "_"));
        Ok(RequestId {
            header: conf.header_name.into(),
            header_var,
            include_in_response: conf.include_in_response,
            algorithm,
        })
    }

    fn request_filter_sync(&self, call: &mut RequestCall<'_>) -> Option<Result<Flow, PluginError>> {
        let id: Text = match call.header_text(&self.header) {
            Some(incoming) if !incoming.is_empty() => incoming,
            _ => {
                let mut buf = [0; MAX_ID_LEN];
                let id = call.copy_text(self.algorithm.generate_into(&mut buf));
                call.set_header(self.header.clone(), id.clone());
                id
            }
        };
        if self.include_in_response {
            call.set_response_header(self.header.clone(), id);
        }
        Some(Ok(Flow::Continue))
    }

    async fn response_filter(&self, call: &mut ResponseCall<'_>) -> Result<(), PluginError> {
        if !self.include_in_response || call.header(&self.header).is_some() {
            return Ok(());
        }
        if let Some(id) = call.var(&self.header_var).await? {
            call.set_header(self.header.clone(), id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_configured_shape() {
        let uuid = Algorithm::Uuid.generate();
        assert_eq!(uuid::Uuid::parse_str(&uuid).unwrap().get_version_num(), 4);
        let v7 = Algorithm::Uuidv7.generate();
        assert_eq!(uuid::Uuid::parse_str(&v7).unwrap().get_version_num(), 7);
        let range = Algorithm::Random {
            chars: b"abcdef".to_vec(),
            len: 30,
        }
        .generate();
        assert_eq!(range.len(), 30);
        assert!(range.bytes().all(|b| b"abcdef".contains(&b)));
        assert_ne!(Algorithm::Uuid.generate(), uuid, "ids differ");
    }

    #[test]
    fn ksuids_are_27_base62_characters_ordered_by_time() {
        let base62 = |bytes| String::from_utf8(base62_27(bytes).to_vec()).unwrap();
        assert_eq!(base62([0; 20]), "0".repeat(27));
        assert_eq!(base62([0xff; 20]), "aWgEPTl1tmebfsQzFP4bxwgy80V", "the largest KSUID");
        let mut one = [0; 20];
        one[19] = 62;
        assert_eq!(base62(one), format!("{}10", "0".repeat(25)));
        let id = Algorithm::Ksuid.generate();
        assert_eq!(id.len(), 27);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
        assert!(id.as_str() > "0ujtsYcgvSTl8PAuAdqWYSMnLOv", "after 2020: {id}");
    }

    #[test]
    fn header_names_are_tokens() {
        assert!(valid_header_name("X-Request-Id"));
        assert!(!valid_header_name("X Request"));
        assert!(!valid_header_name(""));
    }
}

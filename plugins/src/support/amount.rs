//! A limiter's number that may come from the request, as APISIX allows for limit-count's `count`
//! and `time_window` and limit-conn's `conn` and `burst`: a JSON integer, or a string template
//! such as `"${http_count ?? 2}"` filled in per request.
//!
//! A template must give a whole number (positive, or also 0 where the field allows it) no larger
//! than 2⁵³ − 1, APISIX's bounds; anything else is an error for that request, which the limiters
//! answer with a 500 (a client must not be able to switch its own limit off).

use serde::Deserialize;

use super::template::Template;
use super::vars::Vars;
use ext_plugin_sdk::{ConfError, PluginError};

/// The largest integer APISIX accepts from a variable (a double's exact range).
pub const MAX_SAFE: u64 = (1 << 53) - 1;

/// The conf's form: a number or a template string.
#[derive(Debug, Clone)]
pub enum AmountConf {
    Number(u64),
    Template(String),
}

impl<'de> Deserialize<'de> for AmountConf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<AmountConf, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = AmountConf;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a whole number, or a string such as \"${http_count ?? 2}\"")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<AmountConf, E> {
                Ok(AmountConf::Number(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<AmountConf, E> {
                u64::try_from(n)
                    .map(AmountConf::Number)
                    .map_err(|_| E::custom(format!("{n} is negative")))
            }
            fn visit_f64<E: serde::de::Error>(self, x: f64) -> Result<AmountConf, E> {
                if x >= 0.0 && x.fract() == 0.0 && x <= MAX_SAFE as f64 {
                    Ok(AmountConf::Number(x as u64))
                } else {
                    Err(E::custom(format!("{x} is not a whole number of 0 or more")))
                }
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<AmountConf, E> {
                Ok(AmountConf::Template(s.to_owned()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone)]
pub enum Amount {
    Fixed(u64),
    Var(Template),
}

impl Amount {
    /// Checks a number at prepare time; `min` is 0 or 1.
    pub fn new(field: &str, conf: AmountConf, min: u64) -> Result<Amount, ConfError> {
        match conf {
            AmountConf::Number(n) if n < min || n > MAX_SAFE => Err(ConfError::new(format!(
                "`{field}` must be {min} to 2^53 - 1, got {n}"
            ))),
            AmountConf::Number(n) => Ok(Amount::Fixed(n)),
            AmountConf::Template(s) => {
                let t = Template::parse(&s);
                match t.constant() {
                    // A string without variables is a number written as text.
                    Some(text) => match parse(text, min) {
                        Ok(n) => Ok(Amount::Fixed(n)),
                        Err(why) => Err(ConfError::new(format!("`{field}` {s:?}: {why}"))),
                    },
                    None => Ok(Amount::Var(t)),
                }
            }
        }
    }

    pub fn fixed(&self) -> Option<u64> {
        match self {
            Amount::Fixed(n) => Some(*n),
            Amount::Var(_) => None,
        }
    }

    /// The number for this request: `Ok(Err(why))` when the request's value is unusable.
    pub async fn resolve(
        &self,
        call: &mut impl Vars,
        min: u64,
    ) -> Result<Result<u64, String>, PluginError> {
        match self {
            Amount::Fixed(n) => Ok(Ok(*n)),
            Amount::Var(t) => Ok(parse(&t.render(call).await?.text, min)),
        }
    }
}

/// A whole number from `min` to [`MAX_SAFE`], as APISIX reads a resolved value.
fn parse(text: &str, min: u64) -> Result<u64, String> {
    let x: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !x.is_finite() || x < min as f64 {
        return Err(format!("{text:?} is below {min}"));
    }
    if x.fract() != 0.0 {
        return Err(format!("{text:?} is not a whole number"));
    }
    if x > MAX_SAFE as f64 {
        return Err(format!("{text:?} exceeds 2^53 - 1"));
    }
    Ok(x as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_whole_numbers_in_apisix_bounds() {
        assert_eq!(parse("3", 1), Ok(3));
        assert_eq!(parse(" 2 ", 1), Ok(2));
        assert_eq!(parse("0", 0), Ok(0));
        assert_eq!(parse("1e3", 1), Ok(1000), "Lua's tonumber reads exponents");
        for bad in ["0", "-1", "1.5", "9999999999999999", "x", "", "inf", "NaN"] {
            assert!(parse(bad, 1).is_err(), "{bad}");
        }
        assert_eq!(parse("9007199254740991", 1), Ok(MAX_SAFE));
    }

    #[test]
    fn confs_are_numbers_or_templates() {
        let amount = |json: &str| {
            let conf: AmountConf = serde_json::from_str(json).unwrap();
            Amount::new("count", conf, 1)
        };
        assert_eq!(amount("5").unwrap().fixed(), Some(5));
        assert_eq!(amount("\"7\"").unwrap().fixed(), Some(7));
        assert!(matches!(
            amount("\"${http_count ?? 2}\"").unwrap(),
            Amount::Var(_)
        ));
        assert!(amount("0").unwrap_err().message().contains("1 to 2^53 - 1"));
        assert!(amount("9007199254740992").is_err());
        assert!(amount("\"abc\"").unwrap_err().message().contains("count"));
    }
}

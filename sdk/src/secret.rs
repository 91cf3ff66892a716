//! Secret references in confs: `$ENV://NAME` and `$ENV://NAME/field`, resolved at prepare time.
//!
//! APISIX lets any conf string name a secret instead of holding it; the environment form is the
//! one a runner can honour on its own:
//!
//! * `$ENV://NAME`: the value of environment variable `NAME`;
//! * `$ENV://NAME/field`: `NAME` holds a JSON object, and the secret is its string `field`.
//!
//! The prefix matches in any case (`$env://` too), as in APISIX. Anything else is a literal.
//! A reference that cannot be resolved fails `prepare_conf` with a message naming the conf field
//! and the variable, never the value; `$secret://` references (secret managers such as Vault)
//! are refused rather than used as literal secrets.

use crate::ConfError;

const ENV_PREFIX: &str = "$ENV://";
const MANAGER_PREFIX: &str = "$secret://";

/// Resolves a conf value that may be a secret reference; `field` names it in errors (e.g.
/// "consumer `jack`: `key`"). The result must not be empty. Call it in
/// [`Plugin::prepare`](crate::Plugin::prepare), once: the environment is read when the chain is
/// prepared, not per request, and a changed variable is seen at the next `prepare_conf`.
pub fn resolve_secret(field: &str, value: &str) -> Result<String, ConfError> {
    resolve_secret_with(field, value, |name| std::env::var(name).ok())
}

/// [`resolve_secret`] with the environment given as a lookup function (for tests).
pub fn resolve_secret_with(
    field: &str,
    value: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfError> {
    if has_prefix(value, MANAGER_PREFIX) {
        return Err(ConfError::new(format!(
            "{field}: `$secret://` references need a secret manager, which this runner does not \
             have; use `$ENV://NAME` or `$ENV://NAME/field`"
        )));
    }
    if !has_prefix(value, ENV_PREFIX) {
        return non_empty(field, value.to_owned());
    }
    let reference = &value[ENV_PREFIX.len()..];
    let (name, json_field) = match reference.split_once('/') {
        Some((name, f)) => (name, Some(f)),
        None => (reference, None),
    };
    if name.is_empty() {
        return Err(ConfError::new(format!(
            "{field}: `$ENV://` names no environment variable"
        )));
    }
    let Some(raw) = env(name) else {
        return Err(ConfError::new(format!(
            "{field}: environment variable `{name}` is not set (or not UTF-8)"
        )));
    };
    let Some(json_field) = json_field else {
        return non_empty(field, raw);
    };
    // The variable's text is never part of a message: it holds secrets.
    let object: serde_json::Value = serde_json::from_str(&raw).map_err(|_| {
        ConfError::new(format!(
            "{field}: environment variable `{name}` is not a JSON object, so it has no field \
             `{json_field}`"
        ))
    })?;
    match object.get(json_field) {
        Some(serde_json::Value::String(s)) => non_empty(field, s.clone()),
        Some(_) => Err(ConfError::new(format!(
            "{field}: field `{json_field}` of environment variable `{name}` is not a string"
        ))),
        None => Err(ConfError::new(format!(
            "{field}: environment variable `{name}` has no field `{json_field}`"
        ))),
    }
}

/// True when `value` names a secret (`$ENV://` or `$secret://`, any case).
pub fn is_secret_ref(value: &str) -> bool {
    has_prefix(value, ENV_PREFIX) || has_prefix(value, MANAGER_PREFIX)
}

fn has_prefix(value: &str, prefix: &str) -> bool {
    value
        .get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

fn non_empty(field: &str, v: String) -> Result<String, ConfError> {
    if v.is_empty() {
        return Err(ConfError::new(format!("{field} must not be empty")));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PLAIN" => Some("s3cret".into()),
            "JSON" => Some(r#"{"key": "k-1", "n": 5, "empty": ""}"#.into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn resolve(value: &str) -> Result<String, String> {
        resolve_secret_with("`key`", value, env).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn references_resolve_from_the_environment() {
        assert_eq!(resolve("$ENV://PLAIN").unwrap(), "s3cret");
        assert_eq!(resolve("$env://PLAIN").unwrap(), "s3cret");
        assert_eq!(resolve("$ENV://JSON/key").unwrap(), "k-1");
        assert_eq!(resolve("literal").unwrap(), "literal");
        assert!(is_secret_ref("$Env://X") && is_secret_ref("$SECRET://vault/1/a"));
        assert!(!is_secret_ref("$remote_addr"));
    }

    #[test]
    fn failures_name_the_field_and_variable_but_never_the_value() {
        for (value, says) in [
            ("$ENV://UNSET", "`UNSET` is not set"),
            ("$ENV://PLAIN/key", "not a JSON object"),
            ("$ENV://JSON/missing", "has no field `missing`"),
            ("$ENV://JSON/n", "is not a string"),
            ("$ENV://JSON/empty", "must not be empty"),
            ("$ENV://EMPTY", "must not be empty"),
            ("$ENV://", "names no environment variable"),
            ("$secret://vault/1/jack/key", "secret manager"),
            ("", "must not be empty"),
        ] {
            let e = resolve(value).unwrap_err();
            assert!(e.starts_with("`key`"), "{value}: {e}");
            assert!(e.contains(says), "{value}: {e}");
            assert!(
                !e.contains("s3cret") && !e.contains("k-1"),
                "{value} leaks: {e}"
            );
        }
    }
}

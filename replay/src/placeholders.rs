//! `${NAME}` in a scenario file, replaced by the environment variable `NAME` before parsing.
//!
//! A scenario whose conf names something that exists only at run time (the unix socket of a
//! `redis-server` a bench script started in a temporary directory) says `"${REDIS_HOST}"`, and
//! the script sets the variable. An unset variable is an error naming it, never an empty string:
//! a conf with a blank host would fail later with a message about the conf, not the variable.
//! Only `${` starts a placeholder; a lone `$` is kept as it is.

/// `text` with every `${NAME}` replaced by `lookup(NAME)`.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| {
            format!(
                "`${{` without a closing `}}`: `{}`",
                snippet(&rest[start..])
            )
        })?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{name}}}` is not a variable name"));
        }
        let value = lookup(name)
            .ok_or_else(|| format!("`${{{name}}}`: the environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// [`expand`] from the process environment.
pub fn expand_env(text: &str) -> Result<String, String> {
    expand(text, |name| std::env::var(name).ok())
}

/// The first few characters of `s`, for an error message.
fn snippet(s: &str) -> &str {
    let end = s.char_indices().nth(24).map_or(s.len(), |(i, _)| i);
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::expand;

    fn vars(name: &str) -> Option<String> {
        (name == "REDIS_HOST").then(|| "unix:/tmp/x/r.sock".to_owned())
    }

    #[test]
    fn replaces_every_placeholder_and_keeps_the_rest() {
        let got = expand(
            r#"{"a": "${REDIS_HOST}", "b": "$5", "c": "${REDIS_HOST}"}"#,
            vars,
        );
        assert_eq!(
            got.unwrap(),
            r#"{"a": "unix:/tmp/x/r.sock", "b": "$5", "c": "unix:/tmp/x/r.sock"}"#
        );
        assert_eq!(expand("no placeholders", vars).unwrap(), "no placeholders");
    }

    #[test]
    fn an_unset_variable_or_a_bad_placeholder_is_an_error_naming_it() {
        let err = expand(r#"{"a": "${REDIS_PORT}"}"#, vars).unwrap_err();
        assert!(err.contains("REDIS_PORT is not set"), "{err}");
        let err = expand(r#""a": "${REDIS_HOST""#, vars).unwrap_err();
        assert!(err.contains("without a closing"), "{err}");
        let err = expand(r#"{"a": "${REDIS_HOST"}"#, vars).unwrap_err();
        assert!(err.contains("not a variable name"), "{err}");
        let err = expand(r#"{"a": "${a b}"}"#, vars).unwrap_err();
        assert!(err.contains("not a variable name"), "{err}");
    }
}

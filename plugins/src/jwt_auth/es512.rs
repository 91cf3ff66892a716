//! ES512 (ECDSA over P-521 with SHA-512) for `jwt-auth`, which `jsonwebtoken` does not offer.
//!
//! Only what verification needs: the consumer's PEM public key, the token's signature (`R || S`,
//! 66 bytes each, base64url), and the registered claims checked as the shared [`Validation`]
//! says (`exp` and `nbf` when enabled and present, with its leeway), so the policy of the other
//! algorithms applies unchanged.

use base64::Engine as _;
use jsonwebtoken::Validation;
use p521::ecdsa::signature::Verifier as _;
use p521::ecdsa::{Signature, VerifyingKey};
use p521::pkcs8::DecodePublicKey as _;
use serde_json::{Map, Value};

use ext_plugin_sdk::ConfError;

/// The algorithm's name in a token header and a consumer conf.
pub const NAME: &str = "ES512";

/// A consumer's P-521 public key, from PEM (`-----BEGIN PUBLIC KEY-----`).
pub fn key(pem: &str, who: &str) -> Result<VerifyingKey, ConfError> {
    let public = p521::PublicKey::from_public_key_pem(pem).map_err(|e| {
        ConfError::new(format!("{who}: `public_key` is not an ES512 (P-521) PEM public key: {e}"))
    })?;
    VerifyingKey::from_affine(*public.as_affine())
        .map_err(|e| ConfError::new(format!("{who}: `public_key`: {e}")))
}

fn b64(part: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).ok()
}

/// The header and payload of a token whose header names ES512, unverified (to find whose key
/// verifies it); `None` for any other token.
pub fn unverified_claims(token: &str) -> Option<Map<String, Value>> {
    let mut parts = token.split('.');
    let (header, payload) = (parts.next()?, parts.next()?);
    let header: Map<String, Value> = serde_json::from_slice(&b64(header)?).ok()?;
    if header.get("alg").and_then(Value::as_str) != Some(NAME) {
        return None;
    }
    serde_json::from_slice(&b64(payload)?).ok()
}

/// Whether `token` is an ES512 token signed by `key` whose `exp`/`nbf` pass `validation`.
pub fn verify(token: &str, key: &VerifyingKey, validation: &Validation) -> bool {
    let mut parts = token.rsplitn(2, '.');
    let (Some(sig), Some(signed)) = (parts.next(), parts.next()) else {
        return false;
    };
    let Some(claims) = unverified_claims(token) else {
        return false;
    };
    let Some(sig) = b64(sig).and_then(|s| Signature::from_slice(&s).ok()) else {
        return false;
    };
    if key.verify(signed.as_bytes(), &sig).is_err() {
        return false;
    }
    claims_pass(&claims, validation, jsonwebtoken::get_current_timestamp())
}

/// `exp` and `nbf` as `jsonwebtoken` checks them: when enabled and present, numeric, within the
/// leeway.
fn claims_pass(claims: &Map<String, Value>, v: &Validation, now: u64) -> bool {
    let time = |name: &str| claims.get(name).map(|t| t.as_f64().map(|t| t as u64));
    if v.validate_exp {
        match time("exp") {
            Some(None) => return false,
            Some(Some(exp)) if exp < now.saturating_sub(v.leeway) => return false,
            _ => {}
        }
    }
    if v.validate_nbf {
        match time("nbf") {
            Some(None) => return false,
            Some(Some(nbf)) if nbf > now + v.leeway => return false,
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_follow_the_validation() {
        let mut v = Validation::new(jsonwebtoken::Algorithm::ES384);
        v.validate_nbf = true;
        v.leeway = 10;
        let c = |j: &str| serde_json::from_str::<Map<String, Value>>(j).unwrap();
        assert!(claims_pass(&c(r#"{"exp": 995}"#), &v, 1000), "within the leeway");
        assert!(!claims_pass(&c(r#"{"exp": 989}"#), &v, 1000));
        assert!(!claims_pass(&c(r#"{"nbf": 1011}"#), &v, 1000));
        assert!(!claims_pass(&c(r#"{"exp": "soon"}"#), &v, 1000));
        assert!(claims_pass(&c(r#"{}"#), &v, 1000), "absent claims are not required");
        v.validate_exp = false;
        assert!(claims_pass(&c(r#"{"exp": 1}"#), &v, 1000));
    }
}

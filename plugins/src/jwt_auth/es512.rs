//! ES512 (ECDSA over P-521 with SHA-512) for `jwt-auth`, which `jsonwebtoken` does not offer.
//!
//! Only what verification needs: the consumer's PEM public key and the token's signature
//! (`R || S`, 66 bytes each, base64url). The time claims are checked afterwards by jwt-auth's
//! `Claims`, as for every other algorithm.

use base64::Engine as _;
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

/// Whether `token` is an ES512 token signed by `key` (its claims are not checked here).
pub fn verify(token: &str, key: &VerifyingKey) -> bool {
    let mut parts = token.rsplitn(2, '.');
    let (Some(sig), Some(signed)) = (parts.next(), parts.next()) else {
        return false;
    };
    if unverified_claims(token).is_none() {
        return false;
    }
    let Some(sig) = b64(sig).and_then(|s| Signature::from_slice(&s).ok()) else {
        return false;
    };
    key.verify(signed.as_bytes(), &sig).is_ok()
}

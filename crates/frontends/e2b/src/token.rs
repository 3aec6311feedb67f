//! Credentials: the control plane's API keys, and each sandbox's envd and
//! traffic access tokens. A token is an HMAC of the sandbox id under the
//! daemon's key, so nothing per sandbox is stored and a restart keeps them.

use axum::extract::Request;
use base64::Engine;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8], purpose: &str, id: &str) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(purpose.as_bytes());
    m.update(b":");
    m.update(id.as_bytes());
    m
}

/// The envd access token of sandbox `id` (`X-Access-Token`).
pub fn envd(key: &[u8], id: &str) -> String {
    hex::encode(mac(key, "envd", id).finalize().into_bytes())
}

/// The traffic access token of sandbox `id` (`E2B-Traffic-Access-Token`),
/// needed for its ports unless it allows public traffic.
pub fn traffic(key: &[u8], id: &str) -> String {
    hex::encode(mac(key, "traffic", id).finalize().into_bytes())
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn verify(key: &[u8], purpose: &str, id: &str, given: &str) -> bool {
    let Ok(given) = hex::decode(given.trim()) else { return false };
    mac(key, purpose, id).verify_slice(&given).is_ok()
}

pub fn traffic_ok(key: &[u8], id: &str, h: &HeaderMap) -> bool {
    h.get("e2b-traffic-access-token").and_then(|v| v.to_str().ok()).is_some_and(|t| verify(key, "traffic", id, t))
}

/// The `X-API-KEY` given, if any (the daemon's authenticator checks it).
pub fn api_key(h: &HeaderMap) -> Option<&str> {
    h.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim).filter(|k| !k.is_empty())
}

/// An envd request carries the sandbox's token, or is a `/files` URL
/// signed with it (`download_url` / `upload_url`) and not yet expired.
pub fn envd_authorized(key: &[u8], id: &str, req: &Request) -> bool {
    if let Some(t) = req.headers().get("x-access-token").and_then(|v| v.to_str().ok()) {
        return verify(key, "envd", id, t);
    }
    req.uri().path() == "/files" && signed(key, id, req.method() == http::Method::GET, req.uri().query().unwrap_or(""))
}

/// E2B's signature: `v1_` + unpadded base64 of
/// `sha256("<path>:<read|write>:<user>:<token>[:<expiration>]")`.
fn signed(key: &[u8], id: &str, read: bool, query: &str) -> bool {
    let q: std::collections::HashMap<String, String> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let Some(sig) = q.get("signature") else { return false };
    let path = q.get("path").map(String::as_str).unwrap_or("");
    let user = q.get("username").map(String::as_str).unwrap_or("");
    let op = if read { "read" } else { "write" };
    let mut raw = format!("{path}:{op}:{user}:{}", envd(key, id));
    if let Some(exp) = q.get("signature_expiration") {
        let Ok(at) = exp.parse::<i64>() else { return false };
        if at < now_s() {
            return false;
        }
        raw.push(':');
        raw.push_str(exp);
    }
    let want =
        format!("v1_{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(raw.as_bytes())));
    same(want.as_bytes(), sig.as_bytes())
}

fn now_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_per_sandbox_and_per_purpose() {
        let k = b"key";
        assert_eq!(envd(k, "a"), envd(k, "a"));
        assert_ne!(envd(k, "a"), envd(k, "b"));
        assert_ne!(envd(k, "a"), traffic(k, "a"));
        assert_ne!(envd(k, "a"), envd(b"other", "a"));
        assert!(verify(k, "envd", "a", &envd(k, "a")));
        assert!(!verify(k, "envd", "b", &envd(k, "a")));
        assert!(!verify(k, "envd", "a", "not hex"));
    }

    #[test]
    fn the_api_key_is_the_header_or_nothing() {
        let mut h = HeaderMap::new();
        assert_eq!(api_key(&h), None);
        h.insert("x-api-key", "".parse().unwrap());
        assert_eq!(api_key(&h), None);
        h.insert("x-api-key", " spk_k ".parse().unwrap());
        assert_eq!(api_key(&h), Some("spk_k"));
    }

    #[test]
    fn signatures_match_the_sdk_and_expire() {
        let k = b"key";
        let sign = |path: &str, op: &str, exp: Option<i64>| {
            let mut raw = format!("{path}:{op}::{}", envd(k, "sb"));
            if let Some(e) = exp {
                raw.push_str(&format!(":{e}"));
            }
            format!("v1_{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(raw.as_bytes())))
        };
        let q = |path: &str, sig: &str, exp: Option<i64>| {
            let mut s = form_urlencoded::Serializer::new(String::new());
            s.append_pair("path", path).append_pair("signature", sig);
            if let Some(e) = exp {
                s.append_pair("signature_expiration", &e.to_string());
            }
            s.finish()
        };
        assert!(signed(k, "sb", true, &q("/a", &sign("/a", "read", None), None)));
        assert!(!signed(k, "sb", false, &q("/a", &sign("/a", "read", None), None)), "a read URL cannot write");
        assert!(!signed(k, "sb", true, &q("/b", &sign("/a", "read", None), None)), "signed for another path");
        assert!(!signed(k, "other", true, &q("/a", &sign("/a", "read", None), None)), "another sandbox");
        let later = now_s() + 60;
        assert!(signed(k, "sb", true, &q("/a", &sign("/a", "read", Some(later)), Some(later))));
        let past = now_s() - 1;
        assert!(!signed(k, "sb", true, &q("/a", &sign("/a", "read", Some(past)), Some(past))), "expired");
    }
}

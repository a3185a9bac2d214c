//! Stream tokens: the `/ws` endpoint only serves streams that this server (or a sibling sharing
//! its secret) set up in TwiML moments before.
//!
//! A token is `v1.<expiry unix secs>.<nonce>.<mac>` where the MAC is HMAC-SHA256 over the call
//! sid, the expiry, the nonce and every other `<Parameter>` of the stream. So the parameters that
//! travel with the stream (direction, numbers, persona, dial-out parameters) are authenticated
//! too, which lets any instance behind a load balancer accept a stream another one set up,
//! without shared state. A replay guard makes each token single-use per instance.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;
const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Name of the `<Parameter>` carrying the token.
pub const TOKEN_PARAMETER: &str = "token";

/// Why a stream was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("no stream token in customParameters")]
    Missing,
    #[error("stream token is malformed")]
    Malformed,
    #[error("stream token signature does not match (wrong call, altered parameters or foreign token)")]
    BadSignature,
    #[error("stream token expired")]
    Expired,
    #[error("stream token was already used")]
    Replayed,
}

/// Mints and checks tokens with one secret.
pub struct StreamTokens {
    key: Vec<u8>,
    ttl: Duration,
    used: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for StreamTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTokens").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl StreamTokens {
    /// `secret` should be shared by every instance that may receive the stream (by default it is
    /// derived from the Twilio auth token, which they share anyway).
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        let mut mac = HmacSha256::new_from_slice(b"switchboard stream token v1").expect("HMAC takes any key length");
        mac.update(secret);
        Self { key: mac.finalize().into_bytes().to_vec(), ttl, used: Mutex::new(HashMap::new()) }
    }

    /// A token for `call_sid` covering `parameters` (every stream parameter except the token).
    pub fn mint(&self, call_sid: &str, parameters: &[(String, String)], now: SystemTime) -> String {
        let expiry = unix_secs(now) + self.ttl.as_secs();
        let nonce: [u8; 12] = rand::random();
        let nonce = B64URL.encode(nonce);
        let mac = self.mac(call_sid, expiry, &nonce, parameters.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        format!("v1.{expiry}.{nonce}.{mac}")
    }

    /// Checks the token found in a stream's `customParameters` and marks it used.
    pub fn verify(&self, call_sid: &str, custom: &BTreeMap<String, String>, now: SystemTime) -> Result<(), TokenError> {
        let token = custom.get(TOKEN_PARAMETER).ok_or(TokenError::Missing)?;
        let mut parts = token.split('.');
        let (Some("v1"), Some(expiry), Some(nonce), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let expiry: u64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
        let given = B64URL.decode(mac).map_err(|_| TokenError::Malformed)?;
        let others =
            custom.iter().filter(|(k, _)| k.as_str() != TOKEN_PARAMETER).map(|(k, v)| (k.as_str(), v.as_str()));
        self.mac_state(call_sid, expiry, nonce, others).verify_slice(&given).map_err(|_| TokenError::BadSignature)?;
        let now = unix_secs(now);
        if now > expiry {
            return Err(TokenError::Expired);
        }
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        used.retain(|_, exp| *exp >= now);
        if used.insert(nonce.to_string(), expiry).is_some() {
            return Err(TokenError::Replayed);
        }
        Ok(())
    }

    fn mac<'a>(
        &self,
        call_sid: &str,
        expiry: u64,
        nonce: &str,
        params: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> String {
        B64URL.encode(self.mac_state(call_sid, expiry, nonce, params).finalize().into_bytes())
    }

    fn mac_state<'a>(
        &self,
        call_sid: &str,
        expiry: u64,
        nonce: &str,
        params: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        // Length-prefix every field so no two different inputs serialise the same.
        let mut field = |bytes: &[u8]| {
            mac.update(&(bytes.len() as u64).to_be_bytes());
            mac.update(bytes);
        };
        field(call_sid.as_bytes());
        field(expiry.to_string().as_bytes());
        field(nonce.as_bytes());
        let mut sorted: Vec<(&str, &str)> = params.collect();
        sorted.sort();
        for (k, v) in sorted {
            field(k.as_bytes());
            field(v.as_bytes());
        }
        mac
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Vec<(String, String)> {
        vec![("direction".into(), "inbound".into()), ("from".into(), "+15550001111".into())]
    }

    fn custom_with(token: &str) -> BTreeMap<String, String> {
        let mut m: BTreeMap<String, String> = params().into_iter().collect();
        m.insert(TOKEN_PARAMETER.into(), token.into());
        m
    }

    #[test]
    fn accepts_fresh_token_once() {
        let t = StreamTokens::new(b"secret", Duration::from_secs(60));
        let now = SystemTime::now();
        let token = t.mint("CA1", &params(), now);
        assert_eq!(t.verify("CA1", &custom_with(&token), now), Ok(()));
        assert_eq!(t.verify("CA1", &custom_with(&token), now), Err(TokenError::Replayed));
    }

    #[test]
    fn rejects_other_call_altered_params_expiry_foreign_and_garbage() {
        let t = StreamTokens::new(b"secret", Duration::from_secs(60));
        let now = SystemTime::now();
        let token = t.mint("CA1", &params(), now);
        assert_eq!(t.verify("CA2", &custom_with(&token), now), Err(TokenError::BadSignature));
        let mut altered = custom_with(&token);
        altered.insert("from".into(), "+15559999999".into());
        assert_eq!(t.verify("CA1", &altered, now), Err(TokenError::BadSignature));
        let mut added = custom_with(&token);
        added.insert("persona".into(), "admin".into());
        assert_eq!(t.verify("CA1", &added, now), Err(TokenError::BadSignature));
        let later = now + Duration::from_secs(120);
        assert_eq!(t.verify("CA1", &custom_with(&token), later), Err(TokenError::Expired));
        let other = StreamTokens::new(b"other", Duration::from_secs(60));
        assert_eq!(other.verify("CA1", &custom_with(&token), now), Err(TokenError::BadSignature));
        assert_eq!(t.verify("CA1", &params().into_iter().collect(), now), Err(TokenError::Missing));
        for junk in ["", "v1", "v1.x.y.z", "v2.1.2.3", "v1.1.n.!!", "v1.1.2.3.4"] {
            assert!(t.verify("CA1", &custom_with(junk), now).is_err(), "{junk:?}");
        }
    }
}

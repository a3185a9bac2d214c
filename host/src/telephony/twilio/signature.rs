//! `X-Twilio-Signature`: base64(HMAC-SHA1(auth token, URL + each POST parameter's name and value,
//! sorted by name)). Validation follows Twilio's helper libraries, including their tolerance for
//! the URL being signed with or without the scheme's default port.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// Header Twilio puts its signature in.
pub const SIGNATURE_HEADER: &str = "x-twilio-signature";

/// Computes the signature Twilio would send for `url` and form `params`.
pub fn compute(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    base64::engine::general_purpose::STANDARD.encode(mac_for(auth_token, url, params).finalize().into_bytes())
}

/// True when `signature` is Twilio's signature for this request. The comparison is constant-time.
pub fn is_valid(auth_token: &str, url: &str, params: &[(String, String)], signature: &str) -> bool {
    let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    url_variants(url).iter().any(|u| mac_for(auth_token, u, params).verify_slice(&expected).is_ok())
}

fn mac_for(auth_token: &str, url: &str, params: &[(String, String)]) -> HmacSha1 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha1::new_from_slice(auth_token.as_bytes()).expect("HMAC takes any key length");
    mac.update(url.as_bytes());
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    // Twilio sorts by name; repeated names are ordered by value.
    sorted.sort();
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac
}

/// The URL as given, plus the same URL with its default port added or removed: proxies and load
/// balancers often differ from Twilio on whether `:443` is part of the URL.
fn url_variants(url: &str) -> Vec<String> {
    let mut variants = vec![url.to_string()];
    if let Ok(parsed) = url::Url::parse(url) {
        // `Url` drops an explicit default port while parsing, so `port()` is only set for a
        // non-default port, where there is nothing to vary.
        if let (None, Some(port)) = (parsed.port(), parsed.port_or_known_default()) {
            let with_port = format!(
                "{}://{}{}:{}{}",
                parsed.scheme(),
                userinfo(&parsed),
                parsed.host_str().unwrap_or_default(),
                port,
                &parsed[url::Position::BeforePath..]
            );
            variants.push(with_port);
        }
        let normalised = parsed.to_string();
        if !variants.contains(&normalised) {
            variants.push(normalised);
        }
    }
    variants
}

fn userinfo(u: &url::Url) -> String {
    match (u.username(), u.password()) {
        ("", None) => String::new(),
        (user, None) => format!("{user}@"),
        (user, Some(pass)) => format!("{user}:{pass}@"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// The example from Twilio's security documentation and helper-library test suites.
    fn twilio_example() -> (String, Vec<(String, String)>) {
        (
            "https://mycompany.com/myapp.php?foo=1&bar=2".to_string(),
            params(&[
                ("CallSid", "CA1234567890ABCDE"),
                ("Caller", "+14158675309"),
                ("Digits", "1234"),
                ("From", "+14158675309"),
                ("To", "+18005551212"),
            ]),
        )
    }

    #[test]
    fn matches_twilios_published_example() {
        let (url, p) = twilio_example();
        assert_eq!(compute("12345", &url, &p), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        assert!(is_valid("12345", &url, &p, "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
    }

    #[test]
    fn rejects_wrong_token_altered_param_wrong_url_and_garbage() {
        let (url, mut p) = twilio_example();
        let sig = compute("12345", &url, &p);
        assert!(!is_valid("54321", &url, &p, &sig));
        assert!(!is_valid("12345", "https://mycompany.com/myapp.php?foo=1&bar=3", &p, &sig));
        assert!(!is_valid("12345", &url, &p, "not base64!"));
        assert!(!is_valid("12345", &url, &p, ""));
        p[3].1 = "+10000000000".into();
        assert!(!is_valid("12345", &url, &p, &sig));
    }

    #[test]
    fn parameter_order_does_not_matter() {
        let (url, p) = twilio_example();
        let mut reversed = p.clone();
        reversed.reverse();
        assert_eq!(compute("12345", &url, &p), compute("12345", &url, &reversed));
    }

    #[test]
    fn tolerates_default_port_difference() {
        let p = params(&[("A", "1")]);
        let sig = compute("tok", "https://example.com:443/incoming", &p);
        assert!(is_valid("tok", "https://example.com/incoming", &p, &sig));
        let sig = compute("tok", "https://example.com/incoming", &p);
        assert!(is_valid("tok", "https://example.com/incoming", &p, &sig));
        assert!(!is_valid("tok", "https://example.com:8443/incoming", &p, &sig));
    }
}

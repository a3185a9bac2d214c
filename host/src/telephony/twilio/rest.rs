//! The slice of Twilio's REST API (2010-04-01) a voice host needs: fetch, create and update calls
//! (hang up, redirect to new TwiML). Basic auth (account sid : auth token), form-encoded bodies, JSON answers.
//! The base URL is configurable so tests run against a fake on loopback.

use std::time::Duration;

use serde::Deserialize;

/// Twilio's default REST endpoint.
pub const DEFAULT_BASE_URL: &str = "https://api.twilio.com";

/// A failed REST call, with Twilio's own error code and message where it gave one.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("Twilio REST {status}: error {code:?}: {message}")]
    Api { status: u16, code: Option<u32>, message: String, more_info: Option<String> },
    #[error("Twilio REST request failed: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("Twilio REST answer could not be read: {0}")]
    Decode(String),
}

impl RestError {
    /// Twilio's numeric error code (e.g. 21211 for an invalid `To` number), if any.
    pub fn twilio_code(&self) -> Option<u32> {
        match self {
            RestError::Api { code, .. } => *code,
            _ => None,
        }
    }
}

/// The fields of a Call resource Switchboard uses.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct CallResource {
    pub sid: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub direction: String,
}

/// Parameters for creating an outbound call.
#[derive(Debug, Clone)]
pub struct NewCall<'a> {
    pub to: &'a str,
    pub from: &'a str,
    /// Where Twilio fetches TwiML once the call is answered.
    pub twiml_url: &'a str,
    pub status_callback: Option<&'a str>,
}

#[derive(Deserialize)]
struct ApiErrorBody {
    code: Option<u32>,
    message: Option<String>,
    more_info: Option<String>,
}

/// A Twilio REST client bound to one account.
#[derive(Clone)]
pub struct TwilioRest {
    http: reqwest::Client,
    base_url: String,
    account_sid: String,
    auth_token: String,
}

impl std::fmt::Debug for TwilioRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioRest").field("base_url", &self.base_url).field("account_sid", &self.account_sid).finish()
    }
}

impl TwilioRest {
    pub fn new(base_url: &str, account_sid: &str, auth_token: &str) -> Result<Self, RestError> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            account_sid: account_sid.to_string(),
            auth_token: auth_token.to_string(),
        })
    }

    pub fn account_sid(&self) -> &str {
        &self.account_sid
    }

    fn calls_url(&self) -> String {
        format!("{}/2010-04-01/Accounts/{}/Calls.json", self.base_url, self.account_sid)
    }

    fn call_url(&self, call_sid: &str, suffix: &str) -> String {
        format!("{}/2010-04-01/Accounts/{}/Calls/{}{}", self.base_url, self.account_sid, call_sid, suffix)
    }

    /// `GET …/Calls/{sid}.json`.
    pub async fn fetch_call(&self, call_sid: &str) -> Result<CallResource, RestError> {
        let req = self.http.get(self.call_url(call_sid, ".json"));
        self.send_json(req).await
    }

    /// `POST …/Calls.json` with To, From, Url and Method=POST.
    pub async fn create_call(&self, call: &NewCall<'_>) -> Result<CallResource, RestError> {
        let mut form = vec![("To", call.to), ("From", call.from), ("Url", call.twiml_url), ("Method", "POST")];
        if let Some(cb) = call.status_callback {
            form.push(("StatusCallback", cb));
        }
        let req = self.http.post(self.calls_url()).form(&form);
        self.send_json(req).await
    }

    /// Ends a call (`Status=completed`). A call that already ended (404, code 20404) counts as done.
    pub async fn end_call(&self, call_sid: &str) -> Result<(), RestError> {
        let req = self.http.post(self.call_url(call_sid, ".json")).form(&[("Status", "completed")]);
        match self.send_json::<CallResource>(req).await {
            Ok(_) => Ok(()),
            Err(RestError::Api { status: 404, code: Some(20404), .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Replaces the call's TwiML (used to transfer with `<Dial>`).
    pub async fn update_twiml(&self, call_sid: &str, twiml: &str) -> Result<CallResource, RestError> {
        let req = self.http.post(self.call_url(call_sid, ".json")).form(&[("Twiml", twiml)]);
        self.send_json(req).await
    }

    async fn send_json<T: for<'de> Deserialize<'de>>(&self, req: reqwest::RequestBuilder) -> Result<T, RestError> {
        let resp = req.basic_auth(&self.account_sid, Some(&self.auth_token)).send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            let parsed: Option<ApiErrorBody> = serde_json::from_slice(&body).ok();
            let (code, message, more_info) = match parsed {
                Some(e) => (e.code, e.message.unwrap_or_default(), e.more_info),
                None => (None, String::from_utf8_lossy(&body).chars().take(200).collect(), None),
            };
            return Err(RestError::Api { status: status.as_u16(), code, message, more_info });
        }
        serde_json::from_slice(&body).map_err(|e| RestError::Decode(e.to_string()))
    }
}

//! Write a Switchboard persona in a few dozen lines.
//!
//! ```ignore
//! use switchboard_persona::{export_persona, Action, CallInfo, Greeting, Persona, Setup};
//!
//! struct Echo;
//!
//! impl Persona for Echo {
//!     fn start(_call: &CallInfo) -> (Self, Setup) {
//!         (Echo, Setup::new("Repeat what the caller says.").greeting(Greeting::Say("Hi!".into())))
//!     }
//!     fn user_turn(&mut self, transcript: &str) -> Action {
//!         Action::Say(format!("You said {transcript}"))
//!     }
//! }
//!
//! export_persona!(Echo);
//! ```
//!
//! The host makes a fresh instance of the plugin for every call, so `Self` is the call's state.
//! Build with `plugins/build.sh` (see `plugins/README.md`).

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "persona",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_hooks",
        default_bindings_module: "switchboard_persona::bindings",
    });
}

use bindings::switchboard::persona::{host, kv as kv_api};
pub use bindings::switchboard::persona::types::{
    Action, CallInfo, CallSummary, Direction, Greeting, LlmSettings, Setup, Tool, ToolResult, TranscriptLine,
    TurnTaking,
};

/// What a persona does on a call. Every hook but `start` has a default: let the host and the
/// LLM carry on.
pub trait Persona: Sized + 'static {
    /// The call's stream started: build this call's state and say how the call runs.
    fn start(call: &CallInfo) -> (Self, Setup);

    /// The caller finished a turn; `Action::None` lets the LLM answer.
    fn user_turn(&mut self, _transcript: &str) -> Action {
        Action::None
    }

    /// The caller went quiet; `attempt` counts from 1. `Action::None` waits again.
    fn idle(&mut self, _attempt: u32) -> Action {
        Action::None
    }

    /// The LLM called tool `name` with JSON `arguments` (see [`args`]).
    fn tool_call(&mut self, name: &str, _arguments: &str) -> Result<ToolResult, String> {
        Err(format!("no tool named {name:?}"))
    }

    /// The caller pressed keys; `Action::None` gives them to the LLM as the caller's words.
    fn dtmf(&mut self, _digits: &str) -> Action {
        Action::None
    }

    /// The call ended.
    fn call_end(&mut self, _summary: &CallSummary) {}
}

/// Exports a [`Persona`] implementation as the component's hooks.
#[macro_export]
macro_rules! export_persona {
    ($persona:ty) => {
        struct __SwitchboardHooks;

        ::std::thread_local! {
            static __SWITCHBOARD_STATE: ::core::cell::RefCell<::core::option::Option<$persona>> =
                const { ::core::cell::RefCell::new(::core::option::Option::None) };
        }

        fn __switchboard_with<R>(default: R, f: impl FnOnce(&mut $persona) -> R) -> R {
            __SWITCHBOARD_STATE.with(|s| match s.borrow_mut().as_mut() {
                ::core::option::Option::Some(p) => f(p),
                ::core::option::Option::None => default,
            })
        }

        impl $crate::bindings::exports::switchboard::persona::hooks::Guest for __SwitchboardHooks {
            fn on_call_start(call: $crate::CallInfo) -> $crate::Setup {
                $crate::__install_panic_hook();
                let (state, setup) = <$persona as $crate::Persona>::start(&call);
                __SWITCHBOARD_STATE.with(|s| *s.borrow_mut() = ::core::option::Option::Some(state));
                setup
            }
            fn on_user_turn(transcript: ::std::string::String) -> $crate::Action {
                __switchboard_with($crate::Action::None, |p| $crate::Persona::user_turn(p, &transcript))
            }
            fn on_idle(attempt: u32) -> $crate::Action {
                __switchboard_with($crate::Action::None, |p| $crate::Persona::idle(p, attempt))
            }
            fn on_tool_call(
                name: ::std::string::String,
                arguments: ::std::string::String,
            ) -> ::core::result::Result<$crate::ToolResult, ::std::string::String> {
                __switchboard_with(::core::result::Result::Err("the call has not started".into()), |p| {
                    $crate::Persona::tool_call(p, &name, &arguments)
                })
            }
            fn on_dtmf(digits: ::std::string::String) -> $crate::Action {
                __switchboard_with($crate::Action::None, |p| $crate::Persona::dtmf(p, &digits))
            }
            fn on_call_end(summary: $crate::CallSummary) {
                __switchboard_with((), |p| $crate::Persona::call_end(p, &summary))
            }
        }

        $crate::bindings::__export_hooks!(__SwitchboardHooks with_types_in $crate::bindings);
    };
}

/// Sends panic messages to the host's log before the instance traps.
#[doc(hidden)]
pub fn __install_panic_hook() {
    std::panic::set_hook(Box::new(|info| log::error(&info.to_string())));
}

impl Setup {
    /// A setup with this system prompt and the host's defaults for everything else: no
    /// greeting, recording on, no tools.
    pub fn new(system_prompt: impl Into<String>) -> Self {
        Setup {
            system_prompt: system_prompt.into(),
            greeting: Greeting::None,
            voice: None,
            llm: LlmSettings { model: None, temperature: None, max_tokens: None },
            turn_taking: TurnTaking::default(),
            idle_timeout_ms: None,
            record_call: true,
            tools: Vec::new(),
        }
    }

    pub fn greeting(mut self, greeting: Greeting) -> Self {
        self.greeting = greeting;
        self
    }

    pub fn voice(mut self, voice: impl Into<String>) -> Self {
        self.voice = Some(voice.into());
        self
    }

    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.llm.model = Some(model.into());
        self
    }

    pub fn idle_timeout_ms(mut self, ms: u32) -> Self {
        self.idle_timeout_ms = Some(ms);
        self
    }

    pub fn record(mut self, on: bool) -> Self {
        self.record_call = on;
        self
    }

    /// Offers a tool; `schema` is the JSON Schema of its arguments.
    pub fn tool(mut self, name: &str, description: &str, schema: serde_json::Value) -> Self {
        self.tools.push(Tool {
            name: name.into(),
            description: description.into(),
            parameters_schema: schema.to_string(),
        });
        self
    }
}

impl Default for TurnTaking {
    /// Every value left to the host.
    fn default() -> Self {
        TurnTaking {
            vad_confidence: None,
            vad_start_ms: None,
            vad_stop_ms: None,
            vad_min_volume: None,
            turn_stop_ms: None,
            pre_speech_ms: None,
            max_turn_ms: None,
            user_turn_stop_timeout_ms: None,
            denoise: None,
        }
    }
}

impl ToolResult {
    /// A result for the LLM, with nothing else to do.
    pub fn json(content: serde_json::Value) -> Self {
        ToolResult { content: content.to_string(), then: Action::None }
    }

    /// Also do `action` once the result is recorded.
    pub fn then(mut self, action: Action) -> Self {
        self.then = action;
        self
    }
}

impl CallInfo {
    /// A `/dialout` custom parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.parameters.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Parses a tool call's JSON arguments.
pub fn args(arguments: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(arguments).map_err(|e| format!("arguments are not JSON: {e}"))
}

/// The host's structured log.
pub mod log {
    use super::host::{self, LogLevel};

    pub fn debug(message: &str) {
        host::log(LogLevel::Debug, message);
    }
    pub fn info(message: &str) {
        host::log(LogLevel::Info, message);
    }
    pub fn warn(message: &str) {
        host::log(LogLevel::Warn, message);
    }
    pub fn error(message: &str) {
        host::log(LogLevel::Error, message);
    }
}

/// Time since this call's instance was created (monotonic).
pub fn elapsed() -> std::time::Duration {
    std::time::Duration::from_nanos(host::monotonic_now())
}

/// A secret from this persona's entry in `routes.toml`.
pub fn secret(name: &str) -> Option<String> {
    host::secret(name)
}

/// The key-value store shared by all calls of this persona (in the host's memory).
pub mod kv {
    pub use super::kv_api::KvError;

    pub fn get(key: &str) -> Option<String> {
        super::kv_api::get(key)
    }
    pub fn set(key: &str, value: &str) -> Result<(), KvError> {
        super::kv_api::set(key, value)
    }
    pub fn delete(key: &str) {
        super::kv_api::delete(key)
    }
}

/// Outbound HTTP to the hosts this persona is allowed to reach.
pub mod http {
    pub use crate::bindings::switchboard::persona::http::{HttpError, Method, Request, Response};

    /// `GET url`.
    pub fn get(url: &str) -> Result<Response, HttpError> {
        send(Request { method: Method::Get, url: url.into(), headers: Vec::new(), body: Vec::new() })
    }

    /// `POST url` with a JSON body.
    pub fn post_json(url: &str, body: &serde_json::Value) -> Result<Response, HttpError> {
        send(Request {
            method: Method::Post,
            url: url.into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        })
    }

    pub fn send(request: Request) -> Result<Response, HttpError> {
        crate::bindings::switchboard::persona::http::send(&request)
    }

    impl HttpError {
        /// A short sentence for logs and for the LLM.
        pub fn message(&self) -> String {
            match self {
                HttpError::NotAllowed(h) => format!("host not allowed: {h}"),
                HttpError::InvalidRequest(m) => format!("invalid request: {m}"),
                HttpError::Timeout => "timed out".into(),
                HttpError::TooManyRequests => "too many requests in this hook".into(),
                HttpError::ResponseTooLarge => "response too large".into(),
                HttpError::Transport(m) => format!("transport error: {m}"),
            }
        }
    }

    impl Response {
        /// The body parsed as JSON.
        pub fn json(&self) -> Result<serde_json::Value, String> {
            serde_json::from_slice(&self.body).map_err(|e| format!("response is not JSON: {e}"))
        }
    }
}

//! A component built against a persona world the host does not implement: it must be rejected
//! at load, never instantiated.

wit_bindgen::generate!({ world: "persona", path: "wit" });

struct Old;

impl exports::switchboard::persona::hooks::Guest for Old {
    fn on_call_start(to: String) -> String {
        format!("Hello, you called {to}.")
    }
}

export!(Old);

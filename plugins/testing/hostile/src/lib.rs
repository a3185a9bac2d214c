//! A persona that misbehaves on purpose, for the host's containment tests. Its `mode` secret
//! (routes.toml) picks the misbehaviour, its `hook` secret where: `start` or `turn` (default).
//! Outside the misbehaving hook it is a plain persona that greets with a fixed sentence.

use switchboard_persona::{export_persona, http, secret, Action, CallInfo, Greeting, Persona, Setup};

struct Hostile {
    mode: String,
}

/// Spins until the host's epoch deadline stops it.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Allocates and touches memory until an allocation fails (which aborts).
fn bomb() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; 1 << 20];
        chunk[(1 << 20) - 1] = 1;
        hoard.push(std::hint::black_box(chunk));
    }
}

/// What the sandbox lets this plugin see, as one sentence for the test to read.
fn probe() -> String {
    let fs = std::fs::read_dir("/").map(|_| "visible").unwrap_or("refused");
    let env = std::env::vars().count();
    let file = std::fs::read("/etc/hostname").map(|_| "readable").unwrap_or("refused");
    format!("Sandbox: root directory {fs}, host file {file}, {env} environment variables.")
}

impl Hostile {
    fn misbehave(&self) -> Action {
        match self.mode.as_str() {
            "loop" => spin(),
            "bomb" => bomb(),
            "panic" => panic!("hostile plugin panicked on purpose"),
            "http" => {
                let url = secret("url").unwrap_or_else(|| "http://example.com/".into());
                match http::get(&url) {
                    Ok(r) => Action::Say(format!("HTTP answered {}.", r.status)),
                    Err(e) => Action::Say(format!("HTTP refused: {}.", e.message())),
                }
            }
            "probe" => Action::Say(probe()),
            _ => Action::None,
        }
    }
}

impl Persona for Hostile {
    fn start(_call: &CallInfo) -> (Self, Setup) {
        let me = Hostile { mode: secret("mode").unwrap_or_default() };
        if secret("hook").as_deref() == Some("start") {
            me.misbehave();
        }
        let setup = Setup::new("You are a test persona.")
            .greeting(Greeting::Say("Hostile persona here.".into()))
            .idle_timeout_ms(60_000);
        (me, setup)
    }

    fn user_turn(&mut self, _transcript: &str) -> Action {
        if secret("hook").as_deref() == Some("start") {
            return Action::None;
        }
        self.misbehave()
    }
}

export_persona!(Hostile);

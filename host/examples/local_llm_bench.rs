//! Measures the local LLM on this machine: load time, memory, first-token latency cold and after
//! warm-up, and generation speed with one and two concurrent requests (docs/local-llm.md).
//!
//!   cargo run --release -p switchboard --example local_llm_bench [-- THREADS]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use switchboard::services::llm::local::{LocalLlm, LocalLlmConfig};
use switchboard::services::llm::{ChatMessage, ChatModel, ChatRequest, LlmEvent, ToolSpec};

const PERSONA: &str = "You are Harper, the friendly receptionist of Northwind Dental, answering the phone. \
Speak in short, natural sentences suitable for text-to-speech: no lists, no markdown, no emojis. \
Keep every answer under two sentences. Opening hours are Monday to Friday, 8am to 5pm. \
Appointments can be booked, moved or cancelled by phone. If the caller has a billing question, \
transfer them to billing; in an emergency, transfer them to emergencies. When the caller says \
goodbye, say goodbye and hang up.";

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn tools() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "hang_up".into(),
            description: "End the phone call.".into(),
            parameters: json!({ "type": "object", "properties": {} }),
        },
        ToolSpec {
            name: "transfer_call".into(),
            description: "Transfer the caller to a department.".into(),
            parameters: json!({ "type": "object", "properties": { "department": { "type": "string", "enum": ["billing", "emergencies"] } }, "required": ["department"] }),
        },
    ]
}

struct Run {
    first_token: Duration,
    tokens: u32,
    /// From the first token to Done.
    generating: Duration,
}

async fn run(llm: &LocalLlm, user: &str, max_tokens: u32) -> Run {
    let request = ChatRequest {
        messages: vec![ChatMessage::system(PERSONA), ChatMessage::user(user)],
        tools: tools(),
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        ..Default::default()
    };
    let started = Instant::now();
    let mut stream = llm.stream_chat(request);
    let mut first = None;
    let mut tokens = 0;
    while let Some(event) = stream.next().await {
        match event.expect("reply failed") {
            LlmEvent::TextDelta(_) | LlmEvent::ToolCalls(_) => {
                first.get_or_insert_with(|| started.elapsed());
            }
            LlmEvent::Done { usage, .. } => tokens = usage.map_or(0, |u| u.completion_tokens),
        }
    }
    let first_token = first.unwrap_or_else(|| started.elapsed());
    Run { first_token, tokens, generating: started.elapsed() - first_token }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let threads: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let config = LocalLlmConfig { threads, max_reply_tokens: 256, ..LocalLlmConfig::from_env().expect("config") };
    let before = rss_mb();
    let started = Instant::now();
    let llm = LocalLlm::open(config).unwrap_or_else(|e| panic!("{e}"));
    let load = started.elapsed();
    println!("threads {threads}: load {load:?}, RSS +{:.0} MB after load", rss_mb() - before);

    let cold = run(&llm, "Hi, are you open on Saturday?", 1).await;
    println!("cold first token (system prompt + tools + one user line): {:?}", cold.first_token);
    let warm_up = llm.warm_up(PERSONA, &tools()).await.expect("warm-up");
    println!("warm-up: {} tokens in {:?} ({} reused)", warm_up.tokens, warm_up.elapsed, warm_up.reused);
    let warm = run(&llm, "Hello, can I book a cleaning for next week?", 1).await;
    println!("warm first token: {:?}", warm.first_token);

    let one = run(&llm, "Tell me, in detail, everything a patient should know before a first visit.", 128).await;
    println!(
        "1 request: first token {:?}, {} tokens at {:.1} tokens/s, RSS {:.0} MB",
        one.first_token,
        one.tokens,
        f64::from(one.tokens) / one.generating.as_secs_f64(),
        rss_mb()
    );

    let started = Instant::now();
    let (a, b) = tokio::join!(
        run(&llm, "Tell me, in detail, everything a patient should know before a first visit.", 128),
        run(&llm, "Explain, in detail, how to take care of your teeth after a filling.", 128),
    );
    let wall = started.elapsed();
    println!(
        "2 concurrent requests: first tokens {:?} and {:?}; {} + {} tokens in {wall:?} = {:.1} tokens/s together",
        a.first_token,
        b.first_token,
        a.tokens,
        b.tokens,
        f64::from(a.tokens + b.tokens) / wall.as_secs_f64()
    );
}

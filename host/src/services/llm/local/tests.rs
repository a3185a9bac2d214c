//! Tests on the real model (`bash models/fetch-llm.sh` first; they fail without it): streaming,
//! a tool call from Qwen's own `<tool_call>` format, barge-in, trimming, warm-up.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use serde_json::json;

use super::{LocalLlm, LocalLlmConfig, LocalLlmError};
use crate::services::llm::{ChatMessage, ChatModel, ChatRequest, FinishReason, LlmEvent, ToolCall, ToolSpec, Usage};

fn repo_config() -> LocalLlmConfig {
    LocalLlmConfig::in_models_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../models"))
}

fn open(config: LocalLlmConfig) -> LocalLlm {
    LocalLlm::open(config).unwrap_or_else(|e| panic!("the local LLM tests need the model: {e}"))
}

/// One model for the tests that take turns on it (see [`one_at_a_time`]).
fn shared() -> &'static LocalLlm {
    static LLM: OnceLock<LocalLlm> = OnceLock::new();
    LLM.get_or_init(|| open(LocalLlmConfig { max_reply_tokens: 200, ..repo_config() }))
}

/// The tests share one worker: each holds this so its timing does not depend on the others.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PERSONA: &str = "You are Harper, the friendly receptionist of Northwind Dental, answering the phone. \
Speak in short, natural sentences suitable for text-to-speech: no lists, no markdown, no emojis. \
Keep every answer under two sentences. Opening hours are Monday to Friday, 8am to 5pm.";

fn greedy(messages: Vec<ChatMessage>, max_tokens: u32) -> ChatRequest {
    ChatRequest { messages, temperature: Some(0.0), max_tokens: Some(max_tokens), ..Default::default() }
}

#[derive(Debug, Default)]
struct Reply {
    deltas: Vec<String>,
    calls: Vec<ToolCall>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

impl Reply {
    fn text(&self) -> String {
        self.deltas.concat()
    }
}

async fn collect(llm: &LocalLlm, request: ChatRequest) -> Reply {
    let mut stream = llm.stream_chat(request);
    let mut reply = Reply::default();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(60), stream.next()).await.expect("reply stalled") {
        match event.expect("reply failed") {
            LlmEvent::TextDelta(t) => reply.deltas.push(t),
            LlmEvent::ToolCalls(calls) => reply.calls.extend(calls),
            LlmEvent::Done { finish_reason, usage } => {
                reply.finish = Some(finish_reason);
                reply.usage = usage;
            }
        }
    }
    assert!(reply.finish.is_some(), "no Done event: {reply:?}");
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_streams_text_token_by_token() {
    let _turn = TURN.lock().await;
    let llm = shared();
    let reply = collect(
        llm,
        greedy(vec![ChatMessage::system(PERSONA), ChatMessage::user("Hi, what are your opening hours?")], 40),
    )
    .await;
    let text = reply.text();
    assert!(reply.deltas.len() >= 5, "text should arrive in many pieces: {:?}", reply.deltas);
    assert!(text.contains('8') || text.to_lowercase().contains("eight"), "{text:?}");
    assert!(!text.contains("<|im_"), "control tokens leaked: {text:?}");
    assert!(reply.calls.is_empty());
    assert!(matches!(reply.finish, Some(FinishReason::Stop | FinishReason::Length)), "{reply:?}");
    let usage = reply.usage.expect("usage");
    assert!(usage.prompt_tokens > 50 && usage.completion_tokens > 0 && usage.completion_tokens <= 40, "{usage:?}");
}

fn phone_tools() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "hang_up".into(),
            description: "End the phone call. Use it when the caller says goodbye or asks to end the call.".into(),
            parameters: json!({ "type": "object", "properties": {}, "required": [] }),
        },
        ToolSpec {
            name: "transfer_call".into(),
            description: "Transfer the caller to a department.".into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "department": { "type": "string", "enum": ["billing", "appointments", "emergencies"] }
                },
                "required": ["department"]
            }),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_from_the_model_becomes_a_tool_call_and_its_markup_is_not_spoken() {
    let _turn = TURN.lock().await;
    let llm = shared();
    let request = ChatRequest {
        tools: phone_tools(),
        ..greedy(
            vec![
                ChatMessage::system(format!("{PERSONA} Use the tools to transfer or end calls.")),
                ChatMessage::user("I have a question about my invoice. Please transfer me to billing."),
            ],
            60,
        )
    };
    let reply = collect(llm, request).await;
    let text = reply.text();
    assert!(!text.contains("tool_call") && !text.contains("\"name\""), "markup spoken: {text:?}");
    assert_eq!(reply.calls.len(), 1, "{reply:?}");
    assert_eq!(reply.calls[0].name, "transfer_call");
    let arguments: serde_json::Value = serde_json::from_str(&reply.calls[0].arguments).expect("arguments are JSON");
    assert_eq!(arguments["department"], "billing", "{arguments}");
    assert_eq!(reply.finish, Some(FinishReason::ToolCalls));

    // The call and its result go back through the template; the model then speaks.
    let call = reply.calls[0].clone();
    let mut messages = vec![
        ChatMessage::system(format!("{PERSONA} Use the tools to transfer or end calls.")),
        ChatMessage::user("I have a question about my invoice. Please transfer me to billing."),
        ChatMessage::assistant_tool_calls(vec![call.clone()]),
        ChatMessage::tool_result(call.id, "Transferring now. Tell the caller they are being put through to billing."),
    ];
    let after = collect(llm, ChatRequest { tools: phone_tools(), ..greedy(messages.clone(), 40) }).await;
    assert!(after.calls.is_empty() && !after.text().trim().is_empty(), "{after:?}");
    assert!(after.text().to_lowercase().contains("billing"), "{:?}", after.text());

    // A goodbye ends the call.
    messages.push(ChatMessage::assistant(after.text()));
    messages.push(ChatMessage::user("Actually never mind, I'm done. Goodbye, please hang up."));
    let bye = collect(llm, ChatRequest { tools: phone_tools(), ..greedy(messages, 40) }).await;
    assert_eq!(bye.calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), vec!["hang_up"], "{bye:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_tool_choice_primes_the_call() {
    let _turn = TURN.lock().await;
    let request = ChatRequest {
        tools: phone_tools(),
        tool_choice: Some(crate::services::llm::ToolChoice::Function("hang_up".into())),
        ..greedy(vec![ChatMessage::system(PERSONA), ChatMessage::user("Thanks, that's all.")], 20)
    };
    let reply = collect(shared(), request).await;
    assert_eq!(reply.calls.len(), 1, "{reply:?}");
    assert_eq!((reply.calls[0].name.as_str(), reply.calls[0].arguments.as_str()), ("hang_up", "{}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_stops_generation_and_frees_the_worker() {
    let _turn = TURN.lock().await;
    let llm = shared();
    let long = greedy(
        vec![ChatMessage::user("Count from one to two hundred in words, separated by commas. Do not stop early.")],
        200,
    );
    let mut stream = llm.stream_chat(long);
    let mut got = 0;
    while got < 5 {
        match stream.next().await.expect("stream ended early").expect("reply failed") {
            LlmEvent::TextDelta(_) => got += 1,
            other => panic!("expected text first, got {other:?}"),
        }
    }
    drop(stream); // barge-in
    let dropped = Instant::now();
    // Had the first reply gone on, this one would wait ~195 tokens (several seconds) for the worker.
    let mut next = llm.stream_chat(greedy(vec![ChatMessage::user("Say OK.")], 1));
    let first = tokio::time::timeout(Duration::from_secs(10), next.next()).await.expect("worker still busy");
    let waited = dropped.elapsed();
    assert!(matches!(first, Some(Ok(_))), "{first:?}");
    assert!(waited < Duration::from_millis(1500), "the worker took {waited:?} to get free");
    while next.next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_longer_than_the_context_is_trimmed_keeping_the_system_prompt() {
    let _turn = TURN.lock().await;
    // A small context of its own so the trimmed prompt stays quick to evaluate.
    let llm = open(LocalLlmConfig { context_tokens: 640, max_reply_tokens: 24, ..repo_config() });
    let mut messages = vec![ChatMessage::system(
        "You are Harper, a receptionist. Your name is Harper. Always answer in one short sentence.",
    )];
    for i in 0..40 {
        messages.push(ChatMessage::user(format!(
            "Question {i}: could you tell me again which days of the week the office is open, and whether parking is free?"
        )));
        messages.push(ChatMessage::assistant(format!(
            "Answer {i}: we are open Monday to Friday and parking in the lot behind the building is free for patients."
        )));
    }
    messages.push(ChatMessage::user("What is your name?"));
    let reply = collect(&llm, greedy(messages, 24)).await;
    let usage = reply.usage.expect("usage");
    assert!(usage.prompt_tokens <= 640 - 24, "{usage:?}");
    assert!(usage.prompt_tokens > 300, "trimmed more than needed: {usage:?}");
    assert!(reply.text().contains("Harper"), "the system prompt was lost: {:?}", reply.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_evaluates_the_system_prompt_once_so_the_first_token_comes_sooner() {
    let _turn = TURN.lock().await;
    let llm = shared();
    let tools = phone_tools();
    let first_token = |system: String| {
        let request = ChatRequest {
            tools: tools.clone(),
            ..greedy(vec![ChatMessage::system(system), ChatMessage::user("Hello, are you open on Saturday?")], 1)
        };
        async move {
            let started = Instant::now();
            let mut stream = llm.stream_chat(request);
            stream.next().await.expect("an event").expect("no error");
            let elapsed = started.elapsed();
            while stream.next().await.is_some() {}
            elapsed
        }
    };
    // Unique openings, so nothing of the prompt is in the cache from earlier tests.
    let stamp = format!("{:?}", Instant::now());
    let cold = first_token(format!("Call reference {stamp}-cold. {PERSONA}")).await;
    let warm_prompt = format!("Call reference {stamp}-warm. {PERSONA}");
    let warm = llm.warm_up(&warm_prompt, &tools).await.expect("warm-up");
    assert!(warm.tokens > 200 && warm.reused < warm.tokens, "{warm:?}");
    let again = llm.warm_up(&warm_prompt, &tools).await.expect("second warm-up");
    assert_eq!(again.reused, again.tokens - 1, "a repeated warm-up re-evaluates only its last token: {again:?}");
    let warmed = first_token(warm_prompt).await;
    eprintln!(
        "first token: cold {cold:?}, after warm-up {warmed:?} (warm-up of {} tokens took {:?})",
        warm.tokens, warm.elapsed
    );
    assert!(warmed * 2 < cold, "cold {cold:?}, warm {warmed:?}");
}

#[test]
fn a_missing_model_names_the_file_and_the_fix() {
    let config = LocalLlmConfig::in_models_dir("/nonexistent/models");
    let err = LocalLlm::open(config).unwrap_err();
    assert!(matches!(err, LocalLlmError::MissingModel { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("/nonexistent/models/local/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"), "{message}");
    assert!(message.contains("bash models/fetch-llm.sh"), "{message}");
}

#[test]
fn an_impossible_configuration_is_refused() {
    let err = LocalLlm::open(LocalLlmConfig { queue_capacity: 0, ..repo_config() }).unwrap_err();
    assert!(matches!(err, LocalLlmError::Config(_)), "{err:?}");
    let err =
        LocalLlm::open(LocalLlmConfig { context_tokens: 512, max_reply_tokens: 512, ..repo_config() }).unwrap_err();
    assert!(err.to_string().contains("larger than max_reply_tokens"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_queue_are_refused_as_rate_limited() {
    let _turn = TURN.lock().await;
    let llm = open(LocalLlmConfig { queue_capacity: 1, ..repo_config() });
    let long = || greedy(vec![ChatMessage::user("Count from one to two hundred in words.")], 200);
    let mut running = llm.stream_chat(long());
    assert!(matches!(running.next().await, Some(Ok(LlmEvent::TextDelta(_)))));
    // Polled once: queued behind the running reply, nothing to read yet.
    let mut queued = llm.stream_chat(long());
    assert!(queued.next().now_or_never().is_none());
    let refused = llm.stream_chat(long()).next().await;
    match refused {
        Some(Err(e @ crate::services::llm::LlmError::RateLimited { .. })) => {
            assert!(e.to_string().contains("1 requests already waiting"), "{e}")
        }
        other => panic!("expected a rate limit, got {other:?}"),
    }
}

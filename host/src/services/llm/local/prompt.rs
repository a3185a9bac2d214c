//! The prompt: the conversation rendered with the GGUF's own Jinja chat template, in the shape
//! Hugging Face templates expect (`messages` with `tool_calls` and `tool` results, `tools` as
//! OpenAI function specs), and trimmed to the context by dropping the oldest turns.
//!
//! llama.cpp's built-in `llama_chat_apply_template` only knows role/content pairs, so tools, tool
//! calls and tool results would be lost; the template itself says where they go (for Qwen2.5:
//! the tool list in the system turn, calls as `<tool_call>` JSON, results as `<tool_response>` in
//! a user turn).

use minijinja::{Environment, Value};
use serde_json::json;

use crate::services::llm::{ChatMessage, ToolSpec};

const TEMPLATE_NAME: &str = "chat";

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source` (the GGUF's `tokenizer.chat_template`). `bos` and `eos` are the texts of
    /// the model's special tokens, which some templates print.
    pub fn new(source: String, bos: String, eos: String) -> Result<Self, String> {
        let mut env = Environment::new();
        // Hugging Face templates call raise_exception("…") on conversations they refuse.
        env.add_function("raise_exception", |message: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| format!("the chat template does not compile: {e:#}"))?;
        Ok(Self { env, bos, eos })
    }

    /// The prompt text, ending with the assistant's opening when `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: &[ToolSpec],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let template = self.env.get_template(TEMPLATE_NAME).map_err(|e| e.to_string())?;
        let tools: Vec<serde_json::Value> = tools.iter().map(tool_json).collect();
        let ctx = minijinja::context! {
            messages => Value::from_serialize(messages_json(messages)),
            tools => if tools.is_empty() { Value::from(()) } else { Value::from_serialize(&tools) },
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos,
            eos_token => &self.eos,
        };
        template.render(ctx).map_err(|e| format!("rendering the chat template: {e:#}"))
    }
}

fn tool_json(tool: &ToolSpec) -> serde_json::Value {
    json!({
        "type": "function",
        "function": { "name": tool.name, "description": tool.description, "parameters": tool.parameters },
    })
}

/// The conversation as the templates read it. Tool call arguments go in as objects (templates
/// print them with `tojson`); text that is not JSON stays a string.
fn messages_json(messages: &[ChatMessage]) -> Vec<serde_json::Value> {
    messages
        .iter()
        .map(|m| match m {
            ChatMessage::System(text) => json!({ "role": "system", "content": text }),
            ChatMessage::User(text) => json!({ "role": "user", "content": text }),
            ChatMessage::Assistant { content, tool_calls } => {
                let mut message = json!({ "role": "assistant", "content": content.clone().unwrap_or_default() });
                if !tool_calls.is_empty() {
                    let calls: Vec<_> = tool_calls
                        .iter()
                        .map(|c| {
                            let arguments = serde_json::from_str::<serde_json::Value>(&c.arguments)
                                .unwrap_or_else(|_| serde_json::Value::String(c.arguments.clone()));
                            json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": arguments } })
                        })
                        .collect();
                    message["tool_calls"] = serde_json::Value::Array(calls);
                }
                message
            }
            ChatMessage::Tool { tool_call_id, content } => {
                json!({ "role": "tool", "tool_call_id": tool_call_id, "content": content })
            }
        })
        .collect()
}

/// Drops the oldest turns until `fits` accepts the conversation. Leading system messages and the
/// last message are always kept; an assistant turn's tool results go with it (a result without
/// its call would confuse the model). Returns how many messages were dropped, or `None` when even
/// the smallest conversation does not fit.
pub fn trim_to_fit<E>(
    messages: &mut Vec<ChatMessage>,
    mut fits: impl FnMut(&[ChatMessage]) -> Result<bool, E>,
) -> Result<Option<usize>, E> {
    let mut dropped = 0;
    loop {
        if fits(messages)? {
            return Ok(Some(dropped));
        }
        let first = messages.iter().position(|m| !matches!(m, ChatMessage::System(_))).unwrap_or(messages.len());
        // Never drop the last message: it is what the model answers.
        if first + 1 >= messages.len() {
            return Ok(None);
        }
        messages.remove(first);
        dropped += 1;
        while first + 1 < messages.len() && matches!(messages[first], ChatMessage::Tool { .. }) {
            messages.remove(first);
            dropped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::llm::ToolCall;

    /// A Qwen2.5-style template trimmed to what the tests look at (the real one comes from the GGUF
    /// in the model tests).
    const QWEN_LIKE: &str = r#"{%- if tools %}<|im_start|>system
{{ messages[0]['content'] }}

# Tools
<tools>{%- for tool in tools %}
{{ tool | tojson }}{%- endfor %}
</tools><|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == "system" and tools %}
{%- elif (message.role == "user") or (message.role == "system") or (message.role == "assistant" and not message.tool_calls) %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% elif message.role == "assistant" %}<|im_start|>assistant{% for tool_call in message.tool_calls %}{% set tool_call = tool_call.function %}
<tool_call>
{"name": "{{ tool_call.name }}", "arguments": {{ tool_call.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% elif message.role == "tool" %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"#;

    fn template() -> ChatTemplate {
        ChatTemplate::new(QWEN_LIKE.into(), String::new(), "<|im_end|>".into()).unwrap()
    }

    #[test]
    fn tools_calls_and_results_are_rendered_where_the_template_puts_them() {
        let tools = vec![ToolSpec {
            name: "hang_up".into(),
            description: "End the call".into(),
            parameters: json!({"type": "object", "properties": {}}),
        }];
        let messages = vec![
            ChatMessage::system("Be brief."),
            ChatMessage::user("Bye"),
            ChatMessage::assistant_tool_calls(vec![ToolCall {
                id: "c1".into(),
                name: "hang_up".into(),
                arguments: r#"{"reason":"done"}"#.into(),
            }]),
            ChatMessage::tool_result("c1", "ok"),
        ];
        let text = template().render(&messages, &tools, true).unwrap();
        assert!(text.starts_with("<|im_start|>system\nBe brief.\n\n# Tools\n<tools>\n{"), "{text}");
        assert!(text.contains(r#""name":"hang_up""#), "{text}");
        assert!(
            text.contains("<tool_call>\n{\"name\": \"hang_up\", \"arguments\": {\"reason\":\"done\"}}\n</tool_call>"),
            "{text}"
        );
        assert!(text.contains("<|im_start|>user\n<tool_response>\nok\n</tool_response><|im_end|>"), "{text}");
        assert!(text.ends_with("<|im_start|>assistant\n"), "{text}");
    }

    #[test]
    fn a_template_that_does_not_compile_is_reported() {
        let err = ChatTemplate::new("{% for %}".into(), String::new(), String::new()).unwrap_err();
        assert!(err.contains("does not compile"), "{err}");
    }

    #[test]
    fn trimming_keeps_the_system_prompt_and_the_last_turn_and_drops_results_with_their_call() {
        let mut messages = vec![
            ChatMessage::system("S"),
            ChatMessage::user("u1"),
            ChatMessage::assistant_tool_calls(vec![ToolCall {
                id: "1".into(),
                name: "f".into(),
                arguments: "{}".into(),
            }]),
            ChatMessage::tool_result("1", "r1"),
            ChatMessage::assistant("a1"),
            ChatMessage::user("u2"),
        ];
        // Fits once at most three messages remain.
        let dropped = trim_to_fit(&mut messages, |m| Ok::<_, ()>(m.len() <= 3)).unwrap();
        assert_eq!(dropped, Some(3));
        assert_eq!(messages, vec![ChatMessage::system("S"), ChatMessage::assistant("a1"), ChatMessage::user("u2")]);
        let never = trim_to_fit(&mut messages, |_| Ok::<_, ()>(false)).unwrap();
        assert_eq!(never, None);
        assert_eq!(messages, vec![ChatMessage::system("S"), ChatMessage::user("u2")]);
    }
}

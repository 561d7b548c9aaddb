//! Chat templates: one Jinja template per model is the single source of truth for how a
//! conversation becomes text (datasets, evaluation, serving, GGUF metadata, the Ollama TEMPLATE).
//! Two built-ins — ChatML with Hermes-style tool calls and Llama 3 — plus a model's own template.
//! Rendering returns the text and the byte spans of assistant turns (reasoning, tool calls,
//! answer, end-of-turn token), derived by rendering prefixes, from which loss masks follow.

use std::ops::Range;

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value as JinjaValue};
use serde::Serialize;
use serde_json::Value;

use crate::traces::{Message, Role};

const CHATML_HERMES: &str = include_str!("chatml_hermes.jinja");
const CHATML_COMPACT: &str = include_str!("chatml_compact.jinja");
const LLAMA3: &str = include_str!("llama3.jinja");

/// Which family a template belongs to; decides the defaults for special tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateKind {
    ChatmlHermes,
    /// ChatML with Hermes tool calls whose tools are listed one signature a line instead of as
    /// JSON schemas: the `tiny` preset's template, where the schemas were most of every prompt.
    ChatmlCompact,
    Llama3,
    /// The model's own template.
    Custom,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ChatTemplate {
    pub kind: TemplateKind,
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
    /// Strings that end an assistant turn: the stop tokens everywhere.
    pub end_of_turn: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("chat template error: {0}")]
    Render(String),
    #[error("the chat template is not prefix-stable at message {index}: rendering the conversation up to it does not start with the rendering before it, so assistant spans cannot be derived")]
    NotPrefixStable { index: usize },
}

impl From<JinjaError> for TemplateError {
    fn from(error: JinjaError) -> Self {
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(inner) = source {
            text.push_str(&format!(": {inner}"));
            source = inner.source();
        }
        TemplateError::Render(text)
    }
}

/// A rendered conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub text: String,
    /// Byte ranges of assistant output (content, tool calls and the end-of-turn token).
    pub assistant_spans: Vec<Range<usize>>,
    /// Byte offsets where the rendering may be cut after a message (truncation at turn
    /// boundaries). A message whose rendering continues into the next one's (one of several
    /// tool results a template writes as one turn) gives none.
    pub message_ends: Vec<usize>,
    /// Byte ranges of each tool call's name inside the assistant spans: the tokens where the
    /// model chooses its tool.
    pub tool_name_spans: Vec<Range<usize>>,
}

#[derive(Serialize)]
struct WireCall {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction,
}

#[derive(Serialize)]
struct WireFunction {
    name: String,
    arguments: Value,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    tool_calls: Vec<WireCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

fn wire_messages(messages: &[Message]) -> Vec<WireMessage<'_>> {
    messages
        .iter()
        .map(|m| WireMessage {
            role: m.role.as_str(),
            content: m.content.as_deref(),
            tool_calls: m
                .tool_calls
                .iter()
                .map(|c| WireCall {
                    id: c.id.clone(),
                    kind: "function",
                    function: WireFunction { name: c.name.clone(), arguments: c.arguments_value() },
                })
                .collect(),
            tool_call_id: m.tool_call_id.as_deref(),
            name: m.name.as_deref(),
        })
        .collect()
}

/// JSON the way Python's `json.dumps` writes it (", " and ": " separators, non-ASCII kept),
/// which is what Hugging Face chat templates produce with `tojson`.
pub fn python_json(value: &Value) -> String {
    let mut out = String::new();
    write_python_json(value, &mut out);
    out
}

fn write_python_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            out.push('{');
            for (index, (key, item)) in map.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push_str(": ");
                write_python_json(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                write_python_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn tojson_filter(value: JinjaValue) -> Result<JinjaValue, JinjaError> {
    let json = serde_json::to_value(&value).map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(JinjaValue::from_safe_string(python_json(&json)))
}

fn raise_exception(message: String) -> Result<JinjaValue, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    /// Names of the built-in templates, as `builtin` takes them (the kinds' serde names).
    pub const BUILTIN_NAMES: [&'static str; 3] = ["chatml_hermes", "chatml_compact", "llama3"];

    /// A built-in template by name (`chatml_hermes`, `chatml_compact`, `llama3`).
    pub fn builtin(name: &str) -> Option<ChatTemplate> {
        match name {
            "chatml_hermes" => Some(ChatTemplate::chatml_hermes()),
            "chatml_compact" => Some(ChatTemplate::chatml_compact()),
            "llama3" => Some(ChatTemplate::llama3()),
            _ => None,
        }
    }

    pub fn chatml_hermes() -> ChatTemplate {
        ChatTemplate {
            kind: TemplateKind::ChatmlHermes,
            source: CHATML_HERMES.to_string(),
            bos_token: String::new(),
            eos_token: "<|im_end|>".into(),
            end_of_turn: vec!["<|im_end|>".into()],
        }
    }

    /// The `tiny` preset's template: `chatml_hermes` with each tool as one line,
    /// `Name(required: type, optional?: type) - description` (parameters in the schema's order),
    /// in place of its JSON schema: quickstart's system prompt and tools take 298 tokens instead
    /// of about 710.
    pub fn chatml_compact() -> ChatTemplate {
        ChatTemplate {
            kind: TemplateKind::ChatmlCompact,
            source: CHATML_COMPACT.to_string(),
            ..ChatTemplate::chatml_hermes()
        }
    }

    pub fn llama3() -> ChatTemplate {
        ChatTemplate {
            kind: TemplateKind::Llama3,
            source: LLAMA3.to_string(),
            bos_token: "<|begin_of_text|>".into(),
            eos_token: "<|eot_id|>".into(),
            end_of_turn: vec!["<|eot_id|>".into(), "<|eom_id|>".into()],
        }
    }

    /// Pick the template for a model: its own when it handles tool calls, else the built-in of
    /// its family (ChatML or Llama 3), else its own as it is.
    pub fn for_model(own: Option<&str>, bos_token: &str, eos_token: &str) -> ChatTemplate {
        match own {
            // A model exported with a built-in (a tiny model's GGUF) gets that built-in back.
            Some(CHATML_COMPACT) => ChatTemplate::chatml_compact(),
            Some(source) if source.contains("tool_calls") && source.contains("tools") => {
                let mut end_of_turn = vec![eos_token.to_string()];
                for marker in ["<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>"] {
                    if source.contains(marker) && !end_of_turn.iter().any(|m| m == marker) {
                        end_of_turn.push(marker.to_string());
                    }
                }
                end_of_turn.retain(|m| !m.is_empty());
                ChatTemplate {
                    kind: TemplateKind::Custom,
                    source: source.to_string(),
                    bos_token: bos_token.to_string(),
                    eos_token: eos_token.to_string(),
                    end_of_turn,
                }
            }
            Some(source) if source.contains("<|start_header_id|>") => ChatTemplate::llama3(),
            Some(source) if source.contains("<|im_start|>") => ChatTemplate::chatml_hermes(),
            Some(source) => ChatTemplate {
                kind: TemplateKind::Custom,
                source: source.to_string(),
                bos_token: bos_token.to_string(),
                eos_token: eos_token.to_string(),
                end_of_turn: vec![eos_token.to_string()].into_iter().filter(|m| !m.is_empty()).collect(),
            },
            None => ChatTemplate::chatml_hermes(),
        }
    }

    /// Special tokens the template writes, which a tokenizer must keep whole.
    pub fn special_tokens(&self) -> Vec<String> {
        match self.kind {
            TemplateKind::ChatmlHermes | TemplateKind::ChatmlCompact => [
                "<|endoftext|>",
                "<|im_start|>",
                "<|im_end|>",
                "<tool_call>",
                "</tool_call>",
                "<tool_response>",
                "</tool_response>",
            ]
            .map(str::to_string)
            .to_vec(),
            TemplateKind::Llama3 => [
                "<|begin_of_text|>",
                "<|end_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
                "<|eom_id|>",
                "<|python_tag|>",
            ]
            .map(str::to_string)
            .to_vec(),
            TemplateKind::Custom => {
                let mut tokens = vec![self.bos_token.clone(), self.eos_token.clone()];
                tokens.extend(self.end_of_turn.iter().cloned());
                tokens.retain(|t| !t.is_empty());
                tokens.dedup();
                tokens
            }
        }
    }

    fn environment(&self) -> Result<Environment<'static>, TemplateError> {
        let mut environment = Environment::new();
        environment.set_trim_blocks(true);
        environment.set_lstrip_blocks(true);
        environment.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        environment.add_filter("tojson", tojson_filter);
        environment.add_function("raise_exception", raise_exception);
        environment.add_template_owned("chat", self.source.clone())?;
        Ok(environment)
    }

    /// Render messages (and tools) to text.
    pub fn render(
        &self,
        messages: &[Message],
        tools: &[Value],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let environment = self.environment()?;
        self.render_with(&environment, messages, tools, add_generation_prompt)
    }

    fn render_with(
        &self,
        environment: &Environment<'_>,
        messages: &[Message],
        tools: &[Value],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let template = environment.get_template("chat")?;
        let context = self.context(messages, tools, add_generation_prompt);
        Ok(template.render(JinjaValue::from_serialize(&context))?)
    }

    /// The variables the template renders with, as Hugging Face's `apply_chat_template` passes
    /// them (messages in the OpenAI wire shape, `tools` absent when empty).
    pub fn context(&self, messages: &[Message], tools: &[Value], add_generation_prompt: bool) -> Value {
        let tools = if tools.is_empty() { None } else { Some(tools) };
        serde_json::json!({
            "messages": wire_messages(messages),
            "tools": tools,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        })
    }

    /// Render a whole conversation and find the assistant spans: for each assistant message,
    /// the text it adds after the generation prompt, up to and including its end-of-turn token.
    pub fn render_with_spans(&self, messages: &[Message], tools: &[Value]) -> Result<Rendered, TemplateError> {
        let environment = self.environment()?;
        let text = self.render_with(&environment, messages, tools, false)?;
        let mut assistant_spans = Vec::new();
        let mut tool_name_spans = Vec::new();
        let mut message_ends = Vec::with_capacity(messages.len());
        for index in 0..messages.len() {
            let upto = self.render_with(&environment, &messages[..=index], tools, false)?;
            let stable = text.starts_with(&upto);
            if stable {
                message_ends.push(upto.len());
            }
            if messages[index].role != Role::Assistant {
                // Results of parallel calls render as one turn: the turn closes after the last
                // one only, so the conversation cannot be cut between them. Nothing is trained
                // there, and the assistant message after them is checked below.
                let continues = messages.get(index + 1).is_some_and(|next| next.role == messages[index].role);
                if !stable && !continues {
                    return Err(TemplateError::NotPrefixStable { index });
                }
                continue;
            }
            let prompt = self.render_with(&environment, &messages[..index], tools, true)?;
            if !stable || !upto.starts_with(&prompt) {
                return Err(TemplateError::NotPrefixStable { index });
            }
            let added = &upto[prompt.len()..];
            let end = self
                .end_of_turn
                .iter()
                .filter_map(|marker| added.rfind(marker.as_str()).map(|at| at + marker.len()))
                .max()
                .unwrap_or(added.trim_end().len());
            assistant_spans.push(prompt.len()..prompt.len() + end);
            if !messages[index].tool_calls.is_empty() {
                let names = self.call_name_spans(&environment, &messages[..=index], tools, prompt.len())?;
                let is_a_name = |span: &Range<usize>| {
                    let written = text.get(span.clone());
                    span.end <= prompt.len() + end
                        && messages[index].tool_calls.iter().any(|c| Some(c.name.as_str()) == written)
                };
                tool_name_spans.extend(names.into_iter().filter(is_a_name));
            }
        }
        Ok(Rendered { text, assistant_spans, message_ends, tool_name_spans })
    }

    /// Where the last message's call names sit in the rendering of `messages`: rendered again
    /// with each name replaced by a marker, the markers' places shifted back by the length
    /// differences before them. Names the template does not write verbatim are skipped.
    fn call_name_spans(
        &self,
        environment: &Environment<'_>,
        messages: &[Message],
        tools: &[Value],
        from: usize,
    ) -> Result<Vec<Range<usize>>, TemplateError> {
        let mut marked = messages.to_vec();
        let Some(last) = marked.last_mut() else { return Ok(Vec::new()) };
        let markers: Vec<String> = (0..last.tool_calls.len()).map(|k| format!("UNDERSTUDYCALLNAME{k}X")).collect();
        for (call, marker) in last.tool_calls.iter_mut().zip(&markers) {
            call.name = marker.clone();
        }
        let text = self.render_with(environment, &marked, tools, false)?;
        let mut spans = Vec::new();
        let (mut cursor, mut shift) = (from.min(text.len()), 0isize);
        for (call, marker) in messages[messages.len() - 1].tool_calls.iter().zip(&markers) {
            let Some(at) = text[cursor..].find(marker.as_str()).map(|at| cursor + at) else { continue };
            let start = (at as isize + shift) as usize;
            spans.push(start..start + call.name.len());
            shift += call.name.len() as isize - marker.len() as isize;
            cursor = at + marker.len();
        }
        Ok(spans)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traces::ToolCall;

    fn conversation() -> Vec<Message> {
        vec![
            Message::text(Role::System, "You are a coding agent."),
            Message::text(Role::User, "Where is auth?"),
            Message {
                role: Role::Assistant,
                content: Some("Searching.".into()),
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "Grep".into(),
                    arguments: r#"{"pattern":"auth"}"#.into(),
                }],
                tool_call_id: None,
                name: None,
            },
            Message {
                role: Role::Tool,
                content: Some("src/auth.py:1:def auth()".into()),
                tool_calls: vec![],
                tool_call_id: Some("call_1".into()),
                name: None,
            },
            Message::text(Role::Assistant, "In src/auth.py."),
        ]
    }

    /// Claude Code and OpenAI clients call tools in parallel: one assistant message with two
    /// calls, answered by two tool messages that ChatML writes as one user turn.
    #[test]
    fn parallel_tool_results_render_as_one_turn_and_are_never_cut_between() {
        let mut messages = conversation();
        messages[2].tool_calls.push(ToolCall {
            id: "call_2".into(),
            name: "Read".into(),
            arguments: r#"{"file_path":"src/auth.py"}"#.into(),
        });
        messages.insert(
            4,
            Message {
                role: Role::Tool,
                content: Some("1 def auth()".into()),
                tool_calls: vec![],
                tool_call_id: Some("call_2".into()),
                name: None,
            },
        );
        for template in [ChatTemplate::chatml_hermes(), ChatTemplate::llama3()] {
            let rendered = template.render_with_spans(&messages, &[]).unwrap();
            assert_eq!(rendered.assistant_spans.len(), 2);
            let last = &rendered.text[rendered.assistant_spans[1].clone()];
            assert!(last.starts_with("In src/auth.py."), "{last}");
            let names: Vec<&str> = rendered.tool_name_spans.iter().map(|s| &rendered.text[s.clone()]).collect();
            assert_eq!(names, vec!["Grep", "Read"]);
            // Every cut point is a rendering of a prefix of the conversation.
            let prefixes: Vec<usize> = (1..=messages.len())
                .map(|n| template.render(&messages[..n], &[], false).unwrap().len())
                .filter(|&len| rendered.text.len() >= len)
                .collect();
            assert!(rendered.message_ends.iter().all(|end| prefixes.contains(end)));
            assert_eq!(*rendered.message_ends.last().unwrap(), rendered.text.len());
        }
        let chatml = ChatTemplate::chatml_hermes().render_with_spans(&messages, &[]).unwrap();
        assert!(chatml.text.contains(
            "<|im_start|>user\n<tool_response>\nsrc/auth.py:1:def auth()\n</tool_response>\n<tool_response>\n1 def auth()\n</tool_response><|im_end|>"
        ));
        // No cut between the two results: one fewer boundary than messages.
        assert_eq!(chatml.message_ends.len(), messages.len() - 1);
    }

    #[test]
    fn chatml_spans_cover_exactly_the_assistant_turns() {
        let template = ChatTemplate::chatml_hermes();
        let rendered = template.render_with_spans(&conversation(), &[]).unwrap();
        let spans: Vec<&str> = rendered.assistant_spans.iter().map(|s| &rendered.text[s.clone()]).collect();
        assert_eq!(
            spans,
            vec![
                "Searching.\n<tool_call>\n{\"name\": \"Grep\", \"arguments\": {\"pattern\": \"auth\"}}\n</tool_call><|im_end|>",
                "In src/auth.py.<|im_end|>"
            ]
        );
        assert!(rendered
            .text
            .contains("<|im_start|>user\n<tool_response>\nsrc/auth.py:1:def auth()\n</tool_response><|im_end|>"));
        assert_eq!(*rendered.message_ends.last().unwrap(), rendered.text.len());
    }

    #[test]
    fn tool_name_spans_cover_each_calls_name_and_nothing_else() {
        let mut messages = conversation();
        // The first call's arguments name the second call's tool, and so does the text.
        messages[2].content = Some("I'll Read after I Grep.".into());
        messages[2].tool_calls = vec![
            ToolCall { id: "call_1".into(), name: "Grep".into(), arguments: r#"{"pattern":"Read"}"#.into() },
            ToolCall { id: "call_2".into(), name: "Read".into(), arguments: r#"{"file_path":"a.py"}"#.into() },
        ];
        for template in [ChatTemplate::chatml_hermes(), ChatTemplate::llama3()] {
            let rendered = template.render_with_spans(&messages, &[]).unwrap();
            let names: Vec<&str> = rendered.tool_name_spans.iter().map(|s| &rendered.text[s.clone()]).collect();
            assert_eq!(names, vec!["Grep", "Read"], "{}", rendered.text);
            let first = &rendered.assistant_spans[0];
            assert!(rendered.tool_name_spans.iter().all(|s| first.start <= s.start && s.end <= first.end));
            // Past the text and the first call's arguments: the second span is the call's name.
            let text_end = rendered.text.find("I Grep.").unwrap() + "I Grep.".len();
            assert!(rendered.tool_name_spans[0].start > text_end);
            let arguments = rendered.text[text_end..].find(r#""Read""#).unwrap() + text_end + 1;
            assert!(rendered.tool_name_spans[1].start > arguments, "{}", rendered.text);
        }
    }

    #[test]
    fn llama3_spans_end_with_eot() {
        let template = ChatTemplate::llama3();
        let rendered = template.render_with_spans(&conversation(), &[]).unwrap();
        assert!(rendered.text.starts_with("<|begin_of_text|><|start_header_id|>system"));
        for span in &rendered.assistant_spans {
            assert!(rendered.text[span.clone()].ends_with("<|eot_id|>"));
            assert!(!rendered.text[span.clone()].contains("<|start_header_id|>"));
        }
        assert!(rendered.text.contains("{\"name\": \"Grep\", \"parameters\": {\"pattern\": \"auth\"}}"));
    }

    #[test]
    fn a_template_without_tool_support_falls_back_to_its_family() {
        let smollm = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";
        assert_eq!(ChatTemplate::for_model(Some(smollm), "", "<|im_end|>").kind, TemplateKind::ChatmlHermes);
        assert_eq!(ChatTemplate::for_model(None, "", "").kind, TemplateKind::ChatmlHermes);
        // A tiny model's GGUF carries the compact template; loading it gives the built-in back,
        // so its Modelfile gets the compact Go template.
        assert_eq!(ChatTemplate::for_model(Some(CHATML_COMPACT), "", "<|im_end|>"), ChatTemplate::chatml_compact());
        for name in ChatTemplate::BUILTIN_NAMES {
            let kind = ChatTemplate::builtin(name).unwrap().kind;
            assert_eq!(serde_json::to_value(kind).unwrap(), name, "a built-in's name is its kind's");
        }
        assert!(ChatTemplate::builtin("custom").is_none());
    }

    #[test]
    fn python_json_matches_json_dumps() {
        let value = serde_json::json!({"a": [1, "é"], "b": {"c": null}});
        assert_eq!(python_json(&value), r#"{"a": [1, "é"], "b": {"c": null}}"#);
    }
}

/// A reply split into its text and the tool calls it makes.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedReply {
    pub content: Option<String>,
    pub tool_calls: Vec<(String, Value)>,
    /// Tool-call blocks that were not valid JSON with a name.
    pub malformed: usize,
}

impl ChatTemplate {
    /// Parse model output (without the end-of-turn token) into content and tool calls, in this
    /// template's format, with the same parser the server streams through (`reply`). A
    /// tool-call block that does not parse stays in the content and is counted as malformed.
    pub fn parse_reply(&self, text: &str) -> ParsedReply {
        let mut parser = super::reply::ReplyParser::new(self, true);
        let mut events = parser.push(text);
        events.extend(parser.finish());
        let malformed = parser.malformed();
        let (content, calls) = super::reply::collect(events);
        let tool_calls = calls
            .into_iter()
            .map(|call| (call.name, serde_json::from_str(&call.arguments).unwrap_or(Value::Object(Default::default()))))
            .collect();
        ParsedReply { content, tool_calls, malformed }
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn hermes_tool_calls_are_parsed() {
        let template = ChatTemplate::chatml_hermes();
        let reply = template.parse_reply("Searching.\n<tool_call>\n{\"name\": \"Grep\", \"arguments\": {\"pattern\": \"x\"}}\n</tool_call>\n<tool_call>\nnot json\n</tool_call>");
        assert_eq!(
            reply.content.as_deref(),
            Some("Searching.\n<tool_call>\nnot json\n</tool_call>"),
            "a block that does not parse stays visible"
        );
        assert_eq!(reply.tool_calls, vec![("Grep".to_string(), serde_json::json!({"pattern": "x"}))]);
        assert_eq!(reply.malformed, 1);
        let llama = ChatTemplate::llama3().parse_reply("{\"name\": \"Read\", \"parameters\": {\"file_path\": \"a\"}}");
        assert_eq!(llama.tool_calls[0].0, "Read");
        assert_eq!(llama.content, None);
    }
}

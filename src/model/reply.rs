//! The reply parser shared by streamed and whole responses: model text arrives in pieces and
//! leaves as content pieces and complete tool calls, in the template's tool-call format
//! (`<tool_call>{...}</tool_call>` blocks, or Llama 3's `{"name": ..., "parameters": ...}`
//! lines). Feeding the whole text at once or token by token gives the same events, so a
//! streamed response always reassembles to the non-streamed one. Content is trimmed as a whole
//! (leading whitespace and whitespace before a tool call or the end are held back).

use serde_json::Value;

use super::chat_template::{ChatTemplate, TemplateKind};

/// One complete tool call: the name and the arguments as a compact JSON object string.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallOut {
    pub name: String,
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReplyEvent {
    Content(String),
    ToolCall(ToolCallOut),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    /// `<tool_call>` … `</tool_call>`.
    Tagged,
    /// A line that is a JSON object with "name" and "parameters".
    JsonLine,
}

pub struct ReplyParser {
    format: Format,
    /// Tool calls are recognised at all (false with `tool_choice: none`).
    tools: bool,
    /// Text not yet decided on (a possible tag start, a tool call being written).
    pending: String,
    /// Whitespace held back from content until something other than a tool call follows.
    held_whitespace: String,
    /// Content has been emitted (leading whitespace is dropped before the first content).
    started: bool,
    in_call: bool,
    at_line_start: bool,
    /// Tool-call blocks that did not parse (kept as content).
    malformed: usize,
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// A JSON object with a non-empty "name" and its arguments (`arguments` or `parameters`,
/// an object or a JSON string of one), as a tool call.
fn tool_call(json: &str) -> Option<ToolCallOut> {
    let Value::Object(object) = serde_json::from_str::<Value>(json.trim()).ok()? else { return None };
    let name = object.get("name")?.as_str().filter(|n| !n.is_empty())?.to_string();
    let arguments = match object.get("arguments").or_else(|| object.get("parameters")) {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(Value::String(text)) => serde_json::from_str::<Value>(text).ok().filter(Value::is_object)?,
        Some(value @ Value::Object(_)) => value.clone(),
        Some(_) => return None,
    };
    Some(ToolCallOut { name, arguments: serde_json::to_string(&arguments).ok()? })
}

impl ReplyParser {
    pub fn new(template: &ChatTemplate, tools: bool) -> ReplyParser {
        let format = match template.kind {
            TemplateKind::Llama3 => Format::JsonLine,
            TemplateKind::Custom if template.source.contains("<|start_header_id|>") => Format::JsonLine,
            _ => Format::Tagged,
        };
        ReplyParser {
            format,
            tools,
            pending: String::new(),
            held_whitespace: String::new(),
            started: false,
            in_call: false,
            at_line_start: true,
            malformed: 0,
        }
    }

    fn content(&mut self, text: &str, out: &mut Vec<ReplyEvent>) {
        if text.is_empty() {
            return;
        }
        let body = text.trim_end();
        let trailing = &text[body.len()..];
        if body.is_empty() {
            if self.started {
                self.held_whitespace.push_str(trailing);
            }
            return;
        }
        let mut piece = std::mem::take(&mut self.held_whitespace);
        piece.push_str(if self.started { body } else { body.trim_start() });
        self.started = true;
        self.held_whitespace.push_str(trailing);
        match out.last_mut() {
            Some(ReplyEvent::Content(previous)) => previous.push_str(&piece),
            _ => out.push(ReplyEvent::Content(piece)),
        }
    }

    fn call(&mut self, block: &str, raw: &str, out: &mut Vec<ReplyEvent>) {
        match tool_call(block) {
            Some(call) => {
                self.held_whitespace.clear();
                out.push(ReplyEvent::ToolCall(call));
            }
            // Not a call after all: what the model wrote stays visible as content.
            None => {
                self.malformed += 1;
                self.content(raw, out);
            }
        }
    }

    /// Feed the next piece of model text; returns what is now decided.
    pub fn push(&mut self, text: &str) -> Vec<ReplyEvent> {
        let mut out = Vec::new();
        self.pending.push_str(text);
        if !self.tools {
            let all = std::mem::take(&mut self.pending);
            self.content(&all, &mut out);
            return out;
        }
        match self.format {
            Format::Tagged => self.push_tagged(&mut out),
            Format::JsonLine => self.push_lines(&mut out, false),
        }
        out
    }

    fn push_tagged(&mut self, out: &mut Vec<ReplyEvent>) {
        loop {
            if self.in_call {
                let Some(end) = self.pending.find(CLOSE) else { return };
                let block = self.pending[..end].to_string();
                let raw = format!("{OPEN}{}{CLOSE}", block);
                self.pending.drain(..end + CLOSE.len());
                self.in_call = false;
                self.call(&block, &raw, out);
                continue;
            }
            match self.pending.find(OPEN) {
                Some(start) => {
                    let before = self.pending[..start].to_string();
                    self.content(&before, out);
                    self.pending.drain(..start + OPEN.len());
                    self.in_call = true;
                }
                None => {
                    // Keep back a suffix that could be the start of the tag.
                    let keep = (1..OPEN.len()).rev().find(|&n| self.pending.ends_with(&OPEN[..n])).unwrap_or(0);
                    let cut = self.pending.len() - keep;
                    let decided = self.pending[..cut].to_string();
                    self.pending.drain(..cut);
                    self.content(&decided, out);
                    return;
                }
            }
        }
    }

    fn push_lines(&mut self, out: &mut Vec<ReplyEvent>, finishing: bool) {
        loop {
            if self.at_line_start && !self.pending.is_empty() {
                let candidate = self.pending.trim_start_matches([' ', '\t']);
                if candidate.starts_with('{') || (candidate.is_empty() && !finishing) {
                    // A possible call: decide at the end of the line.
                    let Some(end) = self.pending.find('\n') else {
                        if finishing {
                            let line = std::mem::take(&mut self.pending);
                            self.call(&line, &line, out);
                        }
                        return;
                    };
                    let line = self.pending[..end].to_string();
                    self.pending.drain(..=end);
                    if tool_call(&line).is_some() {
                        self.call(&line, &line, out);
                    } else {
                        self.content(&format!("{line}\n"), out);
                    }
                    continue;
                }
            }
            match self.pending.find('\n') {
                Some(end) => {
                    let line: String = self.pending.drain(..=end).collect();
                    self.content(&line, out);
                    self.at_line_start = true;
                }
                None => {
                    let rest = std::mem::take(&mut self.pending);
                    self.at_line_start = rest.is_empty() && self.at_line_start;
                    self.content(&rest, out);
                    return;
                }
            }
        }
    }

    /// The end of the reply: whatever is pending is decided (an unfinished tool call is content).
    pub fn finish(&mut self) -> Vec<ReplyEvent> {
        let mut out = Vec::new();
        if self.in_call {
            let raw = format!("{OPEN}{}", std::mem::take(&mut self.pending));
            self.in_call = false;
            self.call(raw.trim_start_matches(OPEN), &raw, &mut out);
        } else if self.format == Format::JsonLine && self.tools {
            self.push_lines(&mut out, true);
        } else {
            let rest = std::mem::take(&mut self.pending);
            self.content(&rest, &mut out);
        }
        out
    }
}

impl ReplyParser {
    /// Tool-call blocks seen so far that did not parse.
    pub fn malformed(&self) -> usize {
        self.malformed
    }
}

/// Parse a whole reply.
pub fn parse(template: &ChatTemplate, tools: bool, text: &str) -> (Option<String>, Vec<ToolCallOut>) {
    let mut parser = ReplyParser::new(template, tools);
    let mut events = parser.push(text);
    events.extend(parser.finish());
    collect(events)
}

/// Content (None when empty) and tool calls of a list of events.
pub fn collect(events: Vec<ReplyEvent>) -> (Option<String>, Vec<ToolCallOut>) {
    let mut content = String::new();
    let mut calls = Vec::new();
    for event in events {
        match event {
            ReplyEvent::Content(text) => content.push_str(&text),
            ReplyEvent::ToolCall(call) => calls.push(call),
        }
    }
    ((!content.is_empty()).then_some(content), calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streamed(template: &ChatTemplate, text: &str, step: usize) -> (Option<String>, Vec<ToolCallOut>) {
        let mut parser = ReplyParser::new(template, true);
        let mut events = Vec::new();
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(step) {
            events.extend(parser.push(&piece.iter().collect::<String>()));
        }
        events.extend(parser.finish());
        collect(events)
    }

    #[test]
    fn streamed_pieces_reassemble_to_the_whole_parse() {
        let hermes = ChatTemplate::chatml_hermes();
        let texts = [
            "Let me search.\n<tool_call>\n{\"name\": \"Grep\", \"arguments\": {\"pattern\": \"def login\"}}\n</tool_call>",
            "<tool_call>\n{\"name\": \"Read\", \"arguments\": {\"file_path\": \"a.py\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"Bash\", \"arguments\": \"{\\\"command\\\": \\\"ls\\\"}\"}\n</tool_call>",
            "  The answer is in src/auth.py, line 3.  \n",
            "Broken: <tool_call>\nnot json\n</tool_call> end",
            "Unfinished <tool_call>\n{\"name\": \"Re",
            "a < b <tool and <tool_cal",
        ];
        for text in texts {
            let whole = parse(&hermes, true, text);
            for step in [1, 2, 3, 7, 1000] {
                assert_eq!(streamed(&hermes, text, step), whole, "step {step} of {text:?}");
            }
        }
        let (content, calls) = parse(&hermes, true, texts[0]);
        assert_eq!(content.as_deref(), Some("Let me search."));
        assert_eq!(calls, vec![ToolCallOut { name: "Grep".into(), arguments: "{\"pattern\":\"def login\"}".into() }]);
        let (content, calls) = parse(&hermes, true, texts[1]);
        assert_eq!((content, calls.len()), (None, 2));
        assert_eq!(calls[1].arguments, "{\"command\":\"ls\"}");
        assert_eq!(parse(&hermes, true, texts[2]).0.as_deref(), Some("The answer is in src/auth.py, line 3."));
        assert_eq!(
            parse(&hermes, true, texts[3]).0.as_deref(),
            Some("Broken: <tool_call>\nnot json\n</tool_call> end")
        );
        assert_eq!(parse(&hermes, true, texts[5]).0.as_deref(), Some("a < b <tool and <tool_cal"));
        // Without tools, a tool-call block is just text.
        assert_eq!(parse(&hermes, false, texts[0]).1.len(), 0);
    }

    #[test]
    fn llama3_json_lines_are_tool_calls() {
        let llama = ChatTemplate::llama3();
        let text = "I'll look.\n{\"name\": \"Glob\", \"parameters\": {\"pattern\": \"**/*.py\"}}";
        let whole = parse(&llama, true, text);
        assert_eq!(whole.0.as_deref(), Some("I'll look."));
        assert_eq!(whole.1, vec![ToolCallOut { name: "Glob".into(), arguments: "{\"pattern\":\"**/*.py\"}".into() }]);
        for step in [1, 4, 9] {
            assert_eq!(streamed(&llama, text, step), whole);
        }
        assert_eq!(parse(&llama, true, "{not a call}\nok").0.as_deref(), Some("{not a call}\nok"));
    }
}

//! Schema-constrained decoding: a JSON-schema grammar compiled to a byte-level matcher, and a
//! token picker that only lets the sampler choose tokens whose bytes keep the reply inside the
//! grammar. Used for OpenAI's promises that a `required` or named `tool_choice` returns a call
//! whose arguments match the tool's schema, and that `response_format: json_schema` returns JSON
//! matching the schema. The matcher covers the schema keywords tool definitions use (`type`,
//! `properties`, `required`, `additionalProperties`, `items`, `enum`, `const`, `anyOf`/`oneOf`);
//! anything else is read as "any JSON value". Whitespace is limited to one byte in a row, so a
//! constrained reply cannot ramble in blanks.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tokenizers::Tokenizer;

use super::chat_template::{ChatTemplate, TemplateKind};

/// The index of the `Any` node every grammar starts with.
const ANY: usize = 0;

/// One compiled schema node; children are indices into `Grammar::nodes`.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Any,
    Object {
        /// JSON-escaped key (without quotes) → the value's node.
        properties: Vec<(Vec<u8>, usize)>,
        /// Indices into `properties` that must appear before `}`.
        required: Vec<usize>,
        /// Keys outside `properties` are allowed (values: any JSON).
        open: bool,
    },
    Array {
        items: usize,
    },
    /// A string; with `choices`, exactly one of them (JSON-escaped, without quotes).
    String {
        choices: Option<Vec<Vec<u8>>>,
    },
    Integer,
    Number,
    Boolean,
    Null,
    /// Exactly this JSON text.
    Const(Vec<u8>),
    /// The first member whose first byte fits is taken.
    Union(Vec<usize>),
}

/// A grammar: an optional choice of literal openings (one per tool, each followed by its
/// schema), or one schema; then a fixed closing text; then only an end-of-turn token.
#[derive(Debug, Clone)]
pub struct Grammar {
    nodes: Vec<Node>,
    /// (literal, value node): the reply starts with one literal, then that node's value.
    openings: Vec<(Vec<u8>, usize)>,
    closing: Vec<u8>,
    /// A lazy grammar: decoding is free until the reply's text ends with this, then in the
    /// grammar until it is complete, then free again (each tool call of an `auto` reply).
    trigger: Option<Vec<u8>>,
}

/// How a tool call is written by the template family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStyle {
    /// `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`
    Hermes,
    /// `{"name": ..., "parameters": {...}}`
    Llama3,
}

impl CallStyle {
    /// The style a chat template writes its tool calls in.
    pub fn of(template: &ChatTemplate) -> CallStyle {
        let llama = template.kind == TemplateKind::Llama3
            || (template.kind == TemplateKind::Custom && template.source.contains("<|start_header_id|>"));
        if llama {
            CallStyle::Llama3
        } else {
            CallStyle::Hermes
        }
    }

    fn arguments_key(self) -> &'static str {
        match self {
            CallStyle::Hermes => "arguments",
            CallStyle::Llama3 => "parameters",
        }
    }

    /// What opens a tool call in a free reply, when the style marks calls with a tag.
    fn trigger(self) -> Option<&'static str> {
        match self {
            CallStyle::Hermes => Some("<tool_call>"),
            CallStyle::Llama3 => None,
        }
    }

    fn closing(self) -> &'static str {
        match self {
            CallStyle::Hermes => "}\n</tool_call>",
            CallStyle::Llama3 => "}",
        }
    }

    /// Text forced before the constrained part: with `named`, up to the arguments key;
    /// otherwise up to the name key. It ends after `":`, a pre-tokenizer boundary, so the
    /// model continues with the tokens it was trained on.
    pub fn forced_prefix(self, named: Option<&str>) -> String {
        let open = if self == CallStyle::Hermes { "<tool_call>\n" } else { "" };
        match named {
            Some(name) => format!("{open}{{\"name\": {}, \"{}\":", json_string(name), self.arguments_key()),
            None => format!("{open}{{\"name\":"),
        }
    }
}

fn json_string(text: &str) -> String {
    Value::from(text).to_string()
}

impl Grammar {
    /// The rest of a forced tool call (after `CallStyle::forced_prefix`): for `named`, that
    /// tool's arguments; else one of `tools` (name, parameters schema) by name, then its
    /// arguments; then the call's closing text.
    pub fn tool_call(tools: &[(String, Value)], named: Option<&str>, style: CallStyle) -> Grammar {
        let selected: Vec<(String, Value)> =
            tools.iter().filter(|(n, _)| named.is_none_or(|m| m == n)).cloned().collect();
        Grammar::calls(&selected, style, |name| match named {
            Some(_) => " ".to_string(),
            None => format!(" {}, \"{}\": ", json_string(name), style.arguments_key()),
        })
    }

    /// Every tool call of a free (`auto`) reply: once the model writes the style's call tag,
    /// the call is decoded in the grammar (one of `tools` by name, its arguments matching the
    /// schema, the closing tag); before and after, the model writes freely. None for a style
    /// whose calls have no tag to wait for.
    pub fn lazy_tool_calls(tools: &[(String, Value)], style: CallStyle) -> Option<Grammar> {
        let trigger = style.trigger()?;
        if tools.is_empty() {
            return None;
        }
        let mut grammar = Grammar::calls(tools, style, |name| {
            format!("\n{{\"name\": {}, \"{}\": ", json_string(name), style.arguments_key())
        });
        grammar.trigger = Some(trigger.as_bytes().to_vec());
        Some(grammar)
    }

    /// (name, parameters) of an OpenAI-style tools list; entries without a name are skipped.
    pub fn schemas_of(tools: &[Value]) -> Vec<(String, Value)> {
        tools
            .iter()
            .filter_map(|tool| {
                let function = tool.get("function").unwrap_or(tool);
                let name = function.get("name")?.as_str()?.to_string();
                Some((name, function.get("parameters").cloned().unwrap_or(Value::Null)))
            })
            .collect()
    }

    /// One opening per tool (`opening(name)`, then its arguments), then the style's closing.
    fn calls(tools: &[(String, Value)], style: CallStyle, opening: impl Fn(&str) -> String) -> Grammar {
        let mut grammar = Grammar::empty(style.closing().as_bytes());
        for (name, schema) in tools {
            let literal = opening(name);
            if grammar.openings.iter().any(|(l, _)| l == literal.as_bytes()) {
                continue;
            }
            let node = grammar.compile(schema);
            grammar.openings.push((literal.into_bytes(), node));
        }
        if grammar.openings.is_empty() {
            let node = grammar.push(Node::Object { properties: Vec::new(), required: Vec::new(), open: true });
            grammar.openings.push((b" ".to_vec(), node));
        }
        grammar
    }

    /// A reply that is one JSON value matching `schema` (any JSON object without one).
    pub fn json(schema: Option<&Value>) -> Grammar {
        let mut grammar = Grammar::empty(b"");
        let node = match schema {
            Some(schema) => grammar.compile(schema),
            None => grammar.push(Node::Object { properties: Vec::new(), required: Vec::new(), open: true }),
        };
        grammar.openings.push((Vec::new(), node));
        grammar
    }

    /// A grammar whose node 0 is `Any` (the value of an open object's extra keys).
    fn empty(closing: &[u8]) -> Grammar {
        Grammar { nodes: vec![Node::Any], openings: Vec::new(), closing: closing.to_vec(), trigger: None }
    }

    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Compile a schema into nodes; returns the root's index.
    fn compile(&mut self, schema: &Value) -> usize {
        let Some(object) = schema.as_object() else {
            // `true` or anything unreadable: any value.
            return ANY;
        };
        if let Some(value) = object.get("const") {
            return self.push(Node::Const(value.to_string().into_bytes()));
        }
        if let Some(Value::Array(values)) = object.get("enum") {
            if !values.is_empty() && values.iter().all(Value::is_string) {
                let choices = values.iter().map(escaped_inner).collect();
                return self.push(Node::String { choices: Some(choices) });
            }
            if !values.is_empty() {
                let members = values.iter().map(|v| self.push(Node::Const(v.to_string().into_bytes()))).collect();
                return self.push(Node::Union(members));
            }
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(Value::Array(options)) = object.get(key) {
                if !options.is_empty() {
                    let members = options.iter().map(|o| self.compile(o)).collect();
                    return self.push(Node::Union(members));
                }
            }
        }
        match object.get("type") {
            Some(Value::String(kind)) => self.typed(kind, object),
            Some(Value::Array(kinds)) if !kinds.is_empty() => {
                let members = kinds.iter().filter_map(Value::as_str).map(|k| self.typed(k, object)).collect();
                self.push(Node::Union(members))
            }
            _ if object.contains_key("properties") => self.typed("object", object),
            _ => ANY,
        }
    }

    fn typed(&mut self, kind: &str, object: &serde_json::Map<String, Value>) -> usize {
        match kind {
            "object" => {
                let mut properties = Vec::new();
                if let Some(Value::Object(declared)) = object.get("properties") {
                    for (key, schema) in declared {
                        let node = self.compile(schema);
                        properties.push((escaped_inner(&Value::from(key.as_str())), node));
                    }
                }
                let required = match object.get("required") {
                    Some(Value::Array(names)) => names
                        .iter()
                        .filter_map(Value::as_str)
                        .filter_map(|n| {
                            let key = escaped_inner(&Value::from(n));
                            properties.iter().position(|(k, _)| *k == key)
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                // Without `additionalProperties`, only the declared keys (as OpenAI's strict
                // mode has it); an object that declares none takes any keys.
                let open = match object.get("additionalProperties") {
                    Some(Value::Bool(allowed)) => *allowed,
                    Some(Value::Object(_)) => true,
                    _ => properties.is_empty(),
                };
                self.push(Node::Object { properties, required, open })
            }
            "array" => {
                let items = match object.get("items") {
                    Some(items) => self.compile(items),
                    None => ANY,
                };
                self.push(Node::Array { items })
            }
            "string" => self.push(Node::String { choices: None }),
            "integer" => self.push(Node::Integer),
            "number" => self.push(Node::Number),
            "boolean" => self.push(Node::Boolean),
            "null" => self.push(Node::Null),
            _ => ANY,
        }
    }
}

/// A value as JSON text without its surrounding quotes (strings), as bytes.
fn escaped_inner(value: &Value) -> Vec<u8> {
    let text = value.to_string();
    text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(&text).as_bytes().to_vec()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObjectAt {
    /// Just after `{`: a key or `}`.
    KeyOrEnd,
    /// After `,`: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After `:`: the value.
    Value,
    /// After a value: `,` or `}`.
    CommaOrEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArrayAt {
    ItemOrEnd,
    Item,
    CommaOrEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumberAt {
    Start,
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl NumberAt {
    fn can_end(self) -> bool {
        matches!(self, NumberAt::Zero | NumberAt::Int | NumberAt::Frac | NumberAt::ExpDigits)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    Backslash,
    Hex(u8),
}

/// What a literal frame matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Literal {
    True,
    False,
    Null,
    Const(usize),
    Closing,
}

#[derive(Debug, Clone, PartialEq)]
enum Frame {
    /// One of the grammar's openings, `alive` still matching after `at` bytes.
    Opening {
        alive: u128,
        at: usize,
    },
    Value(usize),
    Object {
        node: usize,
        at: ObjectAt,
        seen: u128,
        /// The property whose value comes next (None: an open object's extra key).
        current: Option<usize>,
    },
    /// A key being read; `buffer` holds its bytes so far.
    Key {
        buffer: Vec<u8>,
    },
    Array {
        items: usize,
        at: ArrayAt,
    },
    String {
        node: usize,
        buffer: Vec<u8>,
        escape: Escape,
    },
    Number {
        integer: bool,
        at: NumberAt,
        length: u8,
    },
    Literal {
        literal: Literal,
        at: usize,
    },
}

const MAX_NUMBER_LENGTH: u8 = 24;
const MAX_INTEGER_LENGTH: u8 = 19;
const MAX_KEY_LENGTH: usize = 128;

/// Where a reply stands in a grammar; feed it bytes, clone it to try a token.
#[derive(Debug, Clone)]
pub struct Matcher {
    grammar: Arc<Grammar>,
    stack: Vec<Frame>,
    last_was_space: bool,
    /// The closing text was matched whole.
    done: bool,
}

fn is_space(byte: u8) -> bool {
    byte == b' ' || byte == b'\n'
}

impl Matcher {
    pub fn new(grammar: Arc<Grammar>) -> Matcher {
        let count = grammar.openings.len().min(128);
        let alive = if count == 128 { u128::MAX } else { (1u128 << count) - 1 };
        let mut stack = vec![Frame::Literal { literal: Literal::Closing, at: 0 }, Frame::Opening { alive, at: 0 }];
        // An empty opening (a plain schema) is passed at once.
        if let Some((literal, node)) = grammar.openings.first() {
            if literal.is_empty() {
                stack.pop();
                stack.push(Frame::Value(*node));
            }
        }
        Matcher { grammar, stack, last_was_space: false, done: false }
    }

    /// The reply may end here (the grammar is satisfied).
    pub fn is_complete(&self) -> bool {
        if self.done {
            return true;
        }
        // A number ends only when something follows; with no closing text, nothing does.
        let mut frames = self.stack.iter().rev();
        match frames.next() {
            Some(Frame::Number { at, .. }) if at.can_end() => {}
            Some(Frame::Literal { literal: Literal::Closing, at }) => return *at >= self.grammar.closing.len(),
            _ => return false,
        }
        matches!(frames.next(), Some(Frame::Literal { literal: Literal::Closing, at: 0 }))
            && self.grammar.closing.is_empty()
    }

    /// At a fixed text (a call's opening or closing), where a special token spelling it may
    /// stand; never inside a JSON value.
    fn at_fixed_text(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Opening { .. } | Frame::Literal { literal: Literal::Closing, .. }))
    }

    /// Feed every byte; false (and the matcher is spoiled) when one does not fit.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|b| self.step(*b))
    }

    /// Would these bytes fit here?
    pub fn allows(&self, bytes: &[u8]) -> bool {
        self.clone().feed(bytes)
    }

    /// The smallest value `node` accepts (required keys only, empty strings and arrays, 0, the
    /// first choice); None past a nesting depth of 8.
    fn minimal_value(&self, node: usize, depth: usize) -> Option<Vec<u8>> {
        if depth > 8 {
            return None;
        }
        Some(match &self.grammar.nodes[node] {
            Node::Any | Node::Null => b"null".to_vec(),
            Node::Object { properties, required, .. } => {
                let mut bytes = vec![b'{'];
                for (n, index) in required.iter().enumerate() {
                    let (key, value) = properties.get(*index)?;
                    if n > 0 {
                        bytes.push(b',');
                    }
                    bytes.extend([b"\"".as_slice(), key, b"\":"].concat());
                    bytes.extend(self.minimal_value(*value, depth + 1)?);
                }
                bytes.push(b'}');
                bytes
            }
            Node::Array { .. } => b"[]".to_vec(),
            Node::String { choices: None } => b"\"\"".to_vec(),
            Node::String { choices: Some(choices) } => [b"\"".as_slice(), choices.first()?, b"\""].concat(),
            Node::Integer | Node::Number => b"0".to_vec(),
            Node::Boolean => b"false".to_vec(),
            Node::Const(bytes) => bytes.clone(),
            Node::Union(members) => self.minimal_value(*members.first()?, depth + 1)?,
        })
    }

    /// The required keys of object `node` not yet `seen`, each with its smallest value, comma
    /// first unless `first`.
    fn missing_keys(&self, node: usize, seen: u128, mut first: bool) -> Option<Vec<u8>> {
        let Node::Object { properties, required, .. } = &self.grammar.nodes[node] else { return Some(Vec::new()) };
        let mut bytes = Vec::new();
        for index in required.iter().filter(|i| **i < 128 && seen & (1 << **i) == 0) {
            let (key, value) = properties.get(*index)?;
            if !first {
                bytes.push(b',');
            }
            first = false;
            bytes.extend([b"\"".as_slice(), key, b"\":"].concat());
            bytes.extend(self.minimal_value(*value, 0)?);
        }
        Some(bytes)
    }

    /// The fewest bytes that complete the reply from here by closing what is open (a string, a
    /// number, arrays, a literal, the closing text) and giving objects their missing required
    /// keys with the smallest values; None when a key or value is half-written where that cannot
    /// be done. Checked by feeding them.
    fn closing_bytes(&self) -> Option<Vec<u8>> {
        if self.is_complete() {
            return Some(Vec::new());
        }
        let mut bytes = Vec::new();
        for frame in self.stack.iter().rev() {
            match frame {
                Frame::String { escape: Escape::None, .. } => bytes.push(b'"'),
                Frame::Number { at, .. } if at.can_end() => {}
                Frame::Object { node, at: at @ (ObjectAt::KeyOrEnd | ObjectAt::CommaOrEnd), seen, .. } => {
                    bytes.extend(self.missing_keys(*node, *seen, *at == ObjectAt::KeyOrEnd)?);
                    bytes.push(b'}');
                }
                Frame::Array { at: ArrayAt::ItemOrEnd | ArrayAt::CommaOrEnd, .. } => bytes.push(b']'),
                Frame::Literal { literal, at } => bytes.extend_from_slice(self.literal_bytes(*literal).get(*at..)?),
                _ => return None,
            }
        }
        let mut closed = self.clone();
        (closed.feed(&bytes) && closed.is_complete()).then_some(bytes)
    }

    fn literal_bytes(&self, literal: Literal) -> &[u8] {
        match literal {
            Literal::True => b"true",
            Literal::False => b"false",
            Literal::Null => b"null",
            Literal::Const(node) => match &self.grammar.nodes[node] {
                Node::Const(bytes) => bytes,
                _ => b"",
            },
            Literal::Closing => &self.grammar.closing,
        }
    }

    /// A required property is still missing from this object.
    fn missing_required(&self, node: usize, seen: u128) -> bool {
        match &self.grammar.nodes[node] {
            Node::Object { required, .. } => required.iter().any(|i| *i < 128 && seen & (1 << i) == 0),
            _ => false,
        }
    }

    /// Another key may follow in this object.
    fn more_keys(&self, node: usize, seen: u128) -> bool {
        match &self.grammar.nodes[node] {
            Node::Object { properties, open, .. } => {
                *open || (0..properties.len().min(128)).any(|i| seen & (1 << i) == 0)
            }
            _ => true,
        }
    }

    /// Could a value of `node` start with `byte`?
    fn starts(&self, node: usize, byte: u8) -> bool {
        match &self.grammar.nodes[node] {
            Node::Any => matches!(byte, b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'),
            Node::Object { .. } => byte == b'{',
            Node::Array { .. } => byte == b'[',
            Node::String { .. } => byte == b'"',
            Node::Integer | Node::Number => byte == b'-' || byte.is_ascii_digit(),
            Node::Boolean => byte == b't' || byte == b'f',
            Node::Null => byte == b'n',
            Node::Const(bytes) => bytes.first() == Some(&byte),
            Node::Union(members) => members.iter().any(|m| self.starts(*m, byte)),
        }
    }

    /// Whitespace where the grammar allows it: one byte in a row.
    fn space(&mut self) -> bool {
        if self.last_was_space {
            return false;
        }
        self.last_was_space = true;
        true
    }

    fn step(&mut self, byte: u8) -> bool {
        if self.done {
            return false;
        }
        let space = is_space(byte);
        let accepted = self.step_frames(byte);
        if accepted && !space {
            self.last_was_space = false;
        }
        accepted
    }

    fn step_frames(&mut self, byte: u8) -> bool {
        loop {
            let Some(top) = self.stack.last().cloned() else { return false };
            let last = self.stack.len() - 1;
            match top {
                Frame::Opening { alive, at } => {
                    let mut still = 0u128;
                    let mut finished = None;
                    for (index, (literal, node)) in self.grammar.openings.iter().enumerate().take(128) {
                        if alive & (1 << index) != 0 && literal.get(at) == Some(&byte) {
                            still |= 1 << index;
                            if literal.len() == at + 1 {
                                finished = Some(*node);
                            }
                        }
                    }
                    if still == 0 {
                        return false;
                    }
                    self.stack[last] = match finished {
                        Some(node) => Frame::Value(node),
                        None => Frame::Opening { alive: still, at: at + 1 },
                    };
                    return true;
                }
                Frame::Value(node) => {
                    if is_space(byte) {
                        return self.space();
                    }
                    let frame = match &self.grammar.nodes[node] {
                        Node::Any => match byte {
                            b'{' => Frame::Object { node, at: ObjectAt::KeyOrEnd, seen: 0, current: None },
                            b'[' => Frame::Array { items: node, at: ArrayAt::ItemOrEnd },
                            b'"' => Frame::String { node, buffer: Vec::new(), escape: Escape::None },
                            b'-' | b'0'..=b'9' => {
                                self.stack[last] = Frame::Number { integer: false, at: NumberAt::Start, length: 0 };
                                continue;
                            }
                            b't' => Frame::Literal { literal: Literal::True, at: 1 },
                            b'f' => Frame::Literal { literal: Literal::False, at: 1 },
                            b'n' => Frame::Literal { literal: Literal::Null, at: 1 },
                            _ => return false,
                        },
                        Node::Object { .. } if byte == b'{' => {
                            Frame::Object { node, at: ObjectAt::KeyOrEnd, seen: 0, current: None }
                        }
                        Node::Array { items } if byte == b'[' => Frame::Array { items: *items, at: ArrayAt::ItemOrEnd },
                        Node::String { .. } if byte == b'"' => {
                            Frame::String { node, buffer: Vec::new(), escape: Escape::None }
                        }
                        Node::Integer | Node::Number if byte == b'-' || byte.is_ascii_digit() => {
                            let integer = self.grammar.nodes[node] == Node::Integer;
                            self.stack[last] = Frame::Number { integer, at: NumberAt::Start, length: 0 };
                            continue;
                        }
                        Node::Boolean if byte == b't' => Frame::Literal { literal: Literal::True, at: 1 },
                        Node::Boolean if byte == b'f' => Frame::Literal { literal: Literal::False, at: 1 },
                        Node::Null if byte == b'n' => Frame::Literal { literal: Literal::Null, at: 1 },
                        Node::Const(bytes) if bytes.first() == Some(&byte) => {
                            Frame::Literal { literal: Literal::Const(node), at: 1 }
                        }
                        Node::Union(members) => match members.iter().find(|m| self.starts(**m, byte)) {
                            Some(member) => {
                                self.stack[last] = Frame::Value(*member);
                                continue;
                            }
                            None => return false,
                        },
                        _ => return false,
                    };
                    self.stack[last] = frame;
                    // A one-byte literal (a one-character const) is already whole.
                    if let Frame::Literal { literal, at } = self.stack[last] {
                        if self.literal_bytes(literal).len() == at {
                            self.stack.pop();
                        }
                    }
                    return true;
                }
                Frame::Object { node, at, seen, current } => {
                    if is_space(byte) && at != ObjectAt::Value {
                        return self.space();
                    }
                    match (at, byte) {
                        (ObjectAt::KeyOrEnd | ObjectAt::Key, b'"') if self.more_keys(node, seen) => {
                            self.stack[last] = Frame::Object { node, at: ObjectAt::Colon, seen, current };
                            self.stack.push(Frame::Key { buffer: Vec::new() });
                        }
                        (ObjectAt::KeyOrEnd | ObjectAt::CommaOrEnd, b'}') if !self.missing_required(node, seen) => {
                            self.stack.pop();
                        }
                        (ObjectAt::Colon, b':') => {
                            self.stack[last] = Frame::Object { node, at: ObjectAt::Value, seen, current };
                        }
                        (ObjectAt::Value, _) => {
                            let value = match (&self.grammar.nodes[node], current) {
                                (Node::Object { properties, .. }, Some(index)) => properties[index].1,
                                _ => ANY,
                            };
                            self.stack[last] = Frame::Object { node, at: ObjectAt::CommaOrEnd, seen, current: None };
                            self.stack.push(Frame::Value(value));
                            continue;
                        }
                        (ObjectAt::CommaOrEnd, b',') if self.more_keys(node, seen) => {
                            self.stack[last] = Frame::Object { node, at: ObjectAt::Key, seen, current: None };
                        }
                        _ => return false,
                    }
                    return true;
                }
                Frame::Key { mut buffer } => {
                    let Some(Frame::Object { node, seen, .. }) = self.stack.get(last.wrapping_sub(1)).cloned() else {
                        return false;
                    };
                    let (properties, open): (&[(Vec<u8>, usize)], bool) = match &self.grammar.nodes[node] {
                        Node::Object { properties, open, .. } => (properties, *open),
                        _ => (&[], true),
                    };
                    let unseen = |i: usize, key: &[u8]| {
                        i < 128 && seen & (1 << i) == 0 && properties.get(i).is_some_and(|p| p.0 == key)
                    };
                    if byte == b'"' {
                        let index = (0..properties.len()).find(|i| unseen(*i, &buffer));
                        let known = properties.iter().any(|(k, _)| *k == buffer);
                        if index.is_none() && (known || !open || buffer.is_empty()) {
                            return false;
                        }
                        self.stack.pop();
                        if let Some(Frame::Object { seen, current, .. }) = self.stack.last_mut() {
                            if let Some(index) = index {
                                *seen |= 1 << index;
                            }
                            *current = index;
                        }
                        return true;
                    }
                    if byte < 0x20 || byte == b'\\' || buffer.len() >= MAX_KEY_LENGTH {
                        return false;
                    }
                    buffer.push(byte);
                    let fits = open
                        || (0..properties.len())
                            .any(|i| i < 128 && seen & (1 << i) == 0 && properties[i].0.starts_with(&buffer));
                    if !fits {
                        return false;
                    }
                    self.stack[last] = Frame::Key { buffer };
                    return true;
                }
                Frame::Array { items, at } => {
                    if is_space(byte) {
                        return self.space();
                    }
                    match (at, byte) {
                        (ArrayAt::ItemOrEnd | ArrayAt::CommaOrEnd, b']') => {
                            self.stack.pop();
                            return true;
                        }
                        (ArrayAt::CommaOrEnd, b',') => {
                            self.stack[last] = Frame::Array { items, at: ArrayAt::Item };
                            return true;
                        }
                        (ArrayAt::ItemOrEnd | ArrayAt::Item, _) => {
                            self.stack[last] = Frame::Array { items, at: ArrayAt::CommaOrEnd };
                            self.stack.push(Frame::Value(items));
                            continue;
                        }
                        _ => return false,
                    }
                }
                Frame::String { node, mut buffer, escape } => {
                    let choices = match &self.grammar.nodes[node] {
                        Node::String { choices: Some(choices) } => Some(choices),
                        _ => None,
                    };
                    if let Some(choices) = choices {
                        if byte == b'"' && escape == Escape::None && choices.contains(&buffer) {
                            self.stack.pop();
                            return true;
                        }
                        let escape = match (escape, byte) {
                            (Escape::None, b'\\') => Escape::Backslash,
                            _ => Escape::None,
                        };
                        buffer.push(byte);
                        if !choices.iter().any(|c| c.starts_with(&buffer)) {
                            return false;
                        }
                        self.stack[last] = Frame::String { node, buffer, escape };
                        return true;
                    }
                    let escape = match (escape, byte) {
                        (Escape::None, b'"') => {
                            self.stack.pop();
                            return true;
                        }
                        (Escape::None, b'\\') => Escape::Backslash,
                        (Escape::None, b) if b < 0x20 => return false,
                        (Escape::None, _) => Escape::None,
                        (Escape::Backslash, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Escape::None,
                        (Escape::Backslash, b'u') => Escape::Hex(4),
                        (Escape::Hex(left), b) if b.is_ascii_hexdigit() => {
                            if left == 1 {
                                Escape::None
                            } else {
                                Escape::Hex(left - 1)
                            }
                        }
                        _ => return false,
                    };
                    self.stack[last] = Frame::String { node, buffer, escape };
                    return true;
                }
                Frame::Number { integer, at, length } => {
                    let next = match (at, byte) {
                        (NumberAt::Start, b'-') => Some(NumberAt::Minus),
                        (NumberAt::Start | NumberAt::Minus, b'0') => Some(NumberAt::Zero),
                        (NumberAt::Start | NumberAt::Minus, b'1'..=b'9') => Some(NumberAt::Int),
                        (NumberAt::Int, b'0'..=b'9') => Some(NumberAt::Int),
                        (NumberAt::Zero | NumberAt::Int, b'.') if !integer => Some(NumberAt::Dot),
                        (NumberAt::Dot | NumberAt::Frac, b'0'..=b'9') => Some(NumberAt::Frac),
                        (NumberAt::Zero | NumberAt::Int | NumberAt::Frac, b'e' | b'E') if !integer => {
                            Some(NumberAt::Exp)
                        }
                        (NumberAt::Exp, b'+' | b'-') => Some(NumberAt::ExpSign),
                        (NumberAt::Exp | NumberAt::ExpSign | NumberAt::ExpDigits, b'0'..=b'9') => {
                            Some(NumberAt::ExpDigits)
                        }
                        _ => None,
                    };
                    match next {
                        Some(_) if length >= MAX_NUMBER_LENGTH => return false,
                        // An integer stays within i64 (18 digits and a sign): longer reads as a float.
                        Some(_) if integer && length >= MAX_INTEGER_LENGTH => return false,
                        Some(at) => {
                            self.stack[last] = Frame::Number { integer, at, length: length + 1 };
                            return true;
                        }
                        None if at.can_end() => {
                            self.stack.pop();
                            continue;
                        }
                        None => return false,
                    }
                }
                Frame::Literal { literal, at } => {
                    let bytes = self.literal_bytes(literal);
                    if bytes.get(at) != Some(&byte) {
                        return false;
                    }
                    if at + 1 == bytes.len() {
                        if literal == Literal::Closing {
                            self.done = true;
                        }
                        self.stack.pop();
                    } else {
                        self.stack[last] = Frame::Literal { literal, at: at + 1 };
                    }
                    return true;
                }
            }
        }
    }
}

/// The bytes each token id stands for (None: a special token, never allowed inside JSON).
#[derive(Debug)]
pub struct TokenBytes {
    bytes: Vec<Option<Vec<u8>>>,
    /// Special (added) tokens: their bytes are their text, allowed only at a fixed text.
    special: Vec<bool>,
}

/// GPT-2's byte ↔ printable character table, inverted: character → byte.
fn byte_level_table() -> HashMap<char, u8> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut extra = 0;
    for byte in 0..256u32 {
        if !printable.contains(&byte) {
            printable.push(byte);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    printable.into_iter().zip(chars).filter_map(|(b, c)| Some((char::from_u32(c)?, b as u8))).collect()
}

impl TokenBytes {
    /// Read every token of a byte-level BPE tokenizer; tokens that are not byte-level decode
    /// one by one.
    pub fn new(tokenizer: &Tokenizer, vocab_size: usize) -> TokenBytes {
        let table = byte_level_table();
        let added = tokenizer.get_added_tokens_decoder();
        let special = (0..vocab_size as u32).map(|id| added.get(&id).is_some_and(|t| t.special)).collect();
        let bytes = (0..vocab_size as u32)
            .map(|id| {
                if let Some(token) = added.get(&id) {
                    return Some(token.content.clone().into_bytes());
                }
                let token = tokenizer.id_to_token(id)?;
                let mapped: Option<Vec<u8>> = token.chars().map(|c| table.get(&c).copied()).collect();
                mapped.or_else(|| tokenizer.decode(&[id], false).ok().map(String::into_bytes))
            })
            .collect();
        TokenBytes { bytes, special }
    }

    /// The token's text as bytes (a special token's too).
    fn get(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id as usize)?.as_deref().filter(|b| !b.is_empty())
    }

    /// `text` in as few tokens as a greedy longest match gives (a special token spelling all
    /// of it first); None when some byte has no token.
    fn spell(&self, text: &[u8]) -> Option<Vec<u32>> {
        if let Some(whole) = (0..self.bytes.len() as u32).find(|id| self.get(*id) == Some(text)) {
            return Some(vec![whole]);
        }
        let mut ids = Vec::new();
        let mut at = 0;
        while at < text.len() {
            let rest = &text[at..];
            let (id, length) = (0..self.bytes.len() as u32)
                .filter(|id| !self.is_special(*id))
                .filter_map(|id| self.get(id).filter(|b| rest.starts_with(b)).map(|b| (id, b.len())))
                .max_by_key(|(_, length)| *length)?;
            ids.push(id);
            at += length;
        }
        Some(ids)
    }

    fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }
}

/// How many of the sampler's own choices are tried (each refused one masked out) before the
/// whole vocabulary is masked at once.
const TRIES_BEFORE_FULL_MASK: usize = 8;

/// Picks tokens within a grammar: the sampler proposes, the matcher disposes. With a lazy
/// grammar the sampler's choice stands until the trigger text appears; after a call only the
/// end of the turn or another call may follow (as the chat format has it: text, then calls).
pub struct ConstrainedPicker {
    grammar: Arc<Grammar>,
    /// In the grammar (None: decoding freely, waiting for a lazy grammar's trigger).
    matcher: Option<Matcher>,
    tokens: Arc<TokenBytes>,
    stops: Vec<u32>,
    /// The last bytes chosen while free, to spot the trigger.
    tail: Vec<u8>,
    /// After a lazy grammar's call: the bytes written since (None: not after a call).
    after_call: Option<Vec<u8>>,
    /// Ids chosen so far.
    picked: usize,
    /// Ids to emit before anything else (the trigger, spelled in tokens).
    queued: std::collections::VecDeque<u32>,
    /// Steps where no token fitted and the sampler's choice stood unconstrained.
    pub unconstrained_steps: usize,
    /// Tokens the reply may take in all (its `max_tokens`): near the end, what is open is closed
    /// so a value or call cut by the budget still ends well-formed.
    budget: Option<usize>,
}

/// How close to the budget closing starts: the closing text plus this many tokens to spare.
const CLOSING_MARGIN: usize = 1;

/// Sample among the ids `fits` allows: the sampler's own choices first (each refused one
/// masked out), then the whole vocabulary masked at once; None when nothing fits.
fn masked_pick(logits: &[f32], sample: &mut impl FnMut(&[f32]) -> u32, fits: impl Fn(u32) -> bool) -> Option<u32> {
    let mut masked = logits.to_vec();
    for _ in 0..TRIES_BEFORE_FULL_MASK {
        let id = sample(&masked);
        if fits(id) {
            return Some(id);
        }
        match masked.get_mut(id as usize) {
            Some(slot) if *slot > f32::NEG_INFINITY => *slot = f32::NEG_INFINITY,
            _ => break,
        }
    }
    let mut any = false;
    for (id, slot) in masked.iter_mut().enumerate() {
        if *slot > f32::NEG_INFINITY && !fits(id as u32) {
            *slot = f32::NEG_INFINITY;
        }
        any |= *slot > f32::NEG_INFINITY;
    }
    any.then(|| sample(&masked))
}

impl ConstrainedPicker {
    pub fn new(grammar: Arc<Grammar>, tokens: Arc<TokenBytes>, stops: Vec<u32>) -> ConstrainedPicker {
        let matcher = grammar.trigger.is_none().then(|| Matcher::new(Arc::clone(&grammar)));
        ConstrainedPicker {
            grammar,
            matcher,
            tokens,
            stops,
            tail: Vec::new(),
            after_call: None,
            picked: 0,
            queued: std::collections::VecDeque::new(),
            unconstrained_steps: 0,
            budget: None,
        }
    }

    /// Close what is open when the reply would otherwise be cut at `max_tokens` (the stop token
    /// after it counts as one of them).
    pub fn with_budget(mut self, max_tokens: usize) -> ConstrainedPicker {
        self.budget = Some(max_tokens);
        self
    }

    /// The closing of what is open, in tokens and bytes, when the budget leaves no room for more.
    fn closing_due(&self, matcher: &Matcher) -> Option<(Vec<u32>, Vec<u8>)> {
        let left = self.budget?.saturating_sub(self.picked);
        // Closing is rarely more than a few tokens: look only near the end.
        if left > 32 {
            return None;
        }
        let bytes = matcher.closing_bytes()?;
        // Every token spells at least one byte: while the bytes fit with room to spare, so do
        // their tokens, and spelling (a scan of the vocabulary) can wait.
        if bytes.is_empty() || bytes.len() + CLOSING_MARGIN < left {
            return None;
        }
        let ids = self.tokens.spell(&bytes)?;
        // Room for the closing and the end of the turn: beyond that, keep sampling.
        (ids.len() + CLOSING_MARGIN >= left).then_some((ids, bytes))
    }

    /// Choose the next id with `sample` among the tokens the grammar allows, and advance.
    pub fn pick(&mut self, logits: &[f32], sample: impl FnMut(&[f32]) -> u32) -> u32 {
        let id = self.pick_next(logits, sample);
        self.picked += 1;
        id
    }

    fn pick_next(&mut self, logits: &[f32], mut sample: impl FnMut(&[f32]) -> u32) -> u32 {
        if let Some(id) = self.queued.pop_front() {
            self.watch(id);
            return id;
        }
        if self.matcher.as_ref().is_some_and(Matcher::is_complete) {
            if self.grammar.trigger.is_some() {
                self.matcher = None;
                self.after_call = Some(Vec::new());
            } else {
                let best = self
                    .stops
                    .iter()
                    .copied()
                    .filter(|id| (*id as usize) < logits.len())
                    .max_by(|a, b| logits[*a as usize].total_cmp(&logits[*b as usize]));
                if let Some(id) = best {
                    return id;
                }
            }
        }
        if let Some(written) = self.after_call.take() {
            return self.pick_after_call(written, logits, &mut sample);
        }
        if let Some((ids, bytes)) = self.matcher.as_ref().and_then(|m| self.closing_due(m)) {
            if let Some(matcher) = self.matcher.as_mut() {
                matcher.feed(&bytes);
            }
            self.queued.extend(ids);
            return self.queued.pop_front().expect("a closing has a token");
        }
        let Some(mut matcher) = self.matcher.take() else {
            let id = sample(logits);
            // A reply that opens with a bare JSON object is a call without its tag (which the
            // reply parser would leave as text): the tag is written first, then the call
            // continues in the grammar.
            let bare_call = self.picked == 0
                && self.tokens.get(id).is_some_and(|b| b.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'{'));
            if bare_call {
                if let Some(spelled) = self.grammar.trigger.as_deref().and_then(|t| self.tokens.spell(t)) {
                    self.queued.extend(spelled);
                    let first = self.queued.pop_front().expect("a spelled trigger has a token");
                    self.watch(first);
                    return first;
                }
            }
            self.watch(id);
            return id;
        };
        let (tokens, stops) = (&self.tokens, &self.stops);
        let fits = |id: u32| {
            if stops.contains(&id) {
                return matcher.is_complete();
            }
            if tokens.is_special(id) && !matcher.at_fixed_text() {
                return false;
            }
            tokens.get(id).is_some_and(|bytes| matcher.allows(bytes))
        };
        let id = match masked_pick(logits, &mut sample, fits) {
            Some(id) => id,
            None => {
                self.unconstrained_steps += 1;
                sample(logits)
            }
        };
        if let Some(bytes) = self.tokens.get(id) {
            matcher.feed(bytes);
        }
        self.matcher = Some(matcher);
        id
    }

    /// After a call: the end of the turn, or the trigger (with one newline before it) that
    /// opens the next call.
    fn pick_after_call(&mut self, written: Vec<u8>, logits: &[f32], sample: &mut impl FnMut(&[f32]) -> u32) -> u32 {
        let trigger = self.grammar.trigger.clone().unwrap_or_default();
        let next_calls = [trigger.clone(), [b"\n".as_slice(), &trigger].concat()];
        let (tokens, stops) = (&self.tokens, &self.stops);
        let fits = |id: u32| {
            if stops.contains(&id) {
                return written.is_empty();
            }
            tokens.get(id).is_some_and(|bytes| {
                let candidate = [written.as_slice(), bytes].concat();
                next_calls.iter().any(|next| next.starts_with(&candidate))
            })
        };
        let Some(id) = masked_pick(logits, sample, fits) else {
            self.unconstrained_steps += 1;
            let id = sample(logits);
            self.watch(id);
            return id;
        };
        if !stops.contains(&id) {
            let written = [written.as_slice(), self.tokens.get(id).unwrap_or_default()].concat();
            if written.ends_with(&trigger) {
                self.matcher = Some(Matcher::new(Arc::clone(&self.grammar)));
            } else {
                self.after_call = Some(written);
            }
        }
        id
    }

    /// While free: keep the last bytes and enter the grammar when they end with the trigger.
    fn watch(&mut self, id: u32) {
        let Some(trigger) = self.grammar.trigger.as_deref() else { return };
        if let Some(bytes) = self.tokens.get(id) {
            self.tail.extend_from_slice(bytes);
            let keep = trigger.len();
            if self.tail.len() > keep {
                self.tail.drain(..self.tail.len() - keep);
            }
            if self.tail.ends_with(trigger) {
                self.matcher = Some(Matcher::new(Arc::clone(&self.grammar)));
                self.tail.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read_schema() -> Value {
        json!({"type": "object", "properties": {
            "file_path": {"type": "string"},
            "limit": {"type": "integer"},
            "mode": {"type": "string", "enum": ["text", "raw"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "deep": {"type": ["boolean", "null"]}
        }, "required": ["file_path"]})
    }

    fn accepts(grammar: &Grammar, text: &str) -> bool {
        let mut matcher = Matcher::new(Arc::new(grammar.clone()));
        matcher.feed(text.as_bytes()) && matcher.is_complete()
    }

    fn prefix_ok(grammar: &Grammar, text: &str) -> bool {
        Matcher::new(Arc::new(grammar.clone())).feed(text.as_bytes())
    }

    #[test]
    fn a_named_call_accepts_exactly_arguments_that_match_the_schema() {
        let grammar = Grammar::tool_call(&[("Read".into(), read_schema())], Some("Read"), CallStyle::Hermes);
        for good in [
            " {\"file_path\": \"a.py\"}}\n</tool_call>",
            " {\"file_path\": \"a \\\"b\\\" \\u00e9\", \"limit\": -20}}\n</tool_call>",
            " {\"mode\": \"raw\", \"file_path\": \"x\", \"tags\": [\"a\", \"b\"], \"deep\": null}}\n</tool_call>",
            " {\"file_path\":\"x\",\"deep\":true}}\n</tool_call>",
        ] {
            assert!(accepts(&grammar, good), "{good}");
        }
        for bad in [
            " {\"command\": \"ls\"}}\n</tool_call>",
            " {}}\n</tool_call>",
            " {\"file_path\": 3}}\n</tool_call>",
            " {\"file_path\": \"a\", \"limit\": 1.5}}\n</tool_call>",
            " {\"file_path\": \"a\", \"limit\": 51111111111111111111111}}\n</tool_call>",
            " {\"file_path\": \"a\", \"mode\": \"txt\"}}\n</tool_call>",
            " {\"file_path\": \"a\", \"file_path\": \"b\"}}\n</tool_call>",
            " {\"file_path\":   \"a\"}}\n</tool_call>",
            " {\"file_path\": \"a\"}} trailing",
        ] {
            assert!(!accepts(&grammar, bad), "{bad}");
        }
        assert!(prefix_ok(&grammar, " {\"file_p"));
        assert!(!prefix_ok(&grammar, " {\"command"));
    }

    #[test]
    fn required_picks_one_of_the_offered_tools_by_name() {
        let tools = [
            ("Read".to_string(), read_schema()),
            (
                "Bash".to_string(),
                json!({"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}),
            ),
        ];
        let grammar = Grammar::tool_call(&tools, None, CallStyle::Llama3);
        assert!(accepts(&grammar, " \"Bash\", \"parameters\": {\"command\": \"ls -la\"}}"));
        assert!(!accepts(&grammar, " \"Bash\", \"parameters\": {\"file_path\": \"a\"}}"));
        assert!(!accepts(&grammar, " \"Grep\", \"parameters\": {}}"));
        assert_eq!(CallStyle::Llama3.forced_prefix(None), "{\"name\":");
        assert_eq!(CallStyle::Hermes.forced_prefix(Some("Bash")), "<tool_call>\n{\"name\": \"Bash\", \"arguments\":");
    }

    #[test]
    fn a_json_schema_reply_may_end_on_a_number_and_open_objects_take_any_keys() {
        assert!(accepts(&Grammar::json(Some(&json!({"type": "integer"}))), "42"));
        assert!(!accepts(&Grammar::json(Some(&json!({"type": "integer"}))), "4.2"));
        let object = Grammar::json(None);
        assert!(accepts(&object, "{\"a\": [1, {\"b\": null}], \"c\": \"d\"}"));
        assert!(!accepts(&object, "[1]"));
        assert!(accepts(&Grammar::json(Some(&json!({"const": "yes"}))), "\"yes\""));
        assert!(accepts(&Grammar::json(Some(&json!({"enum": [1, "two", null]}))), "null"));
    }

    #[test]
    fn the_picker_masks_what_the_grammar_refuses_and_ends_on_a_stop_id() {
        // A toy vocabulary: 0 = end of turn (special), then single characters and words.
        let pieces = ["", " ", "{", "}", "\"", ":", "a", "x", "ls", "command", "file", "\n</tool_call>", "\"command\""];
        let tokens = Arc::new(TokenBytes {
            bytes: pieces.iter().enumerate().map(|(i, p)| (i > 0).then(|| p.as_bytes().to_vec())).collect(),
            special: vec![false; pieces.len()],
        });
        let schema = json!({"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]});
        let grammar = Arc::new(Grammar::tool_call(&[("Bash".into(), schema)], Some("Bash"), CallStyle::Hermes));
        let mut picker = ConstrainedPicker::new(grammar, tokens, vec![0]);
        // A greedy sampler that always prefers "file", then the stop id, then ...
        let mut produced = String::new();
        for _ in 0..20 {
            let logits: Vec<f32> = (0..pieces.len())
                .map(|i| match pieces[i] {
                    "file" => 9.0,
                    "" => 8.0,
                    "\"command\"" => 7.0,
                    "ls" => 6.0,
                    _ => 1.0 + i as f32 * 0.01,
                })
                .collect();
            let greedy = |l: &[f32]| l.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
            let id = picker.pick(&logits, greedy);
            if id == 0 {
                break;
            }
            produced.push_str(pieces[id as usize]);
        }
        let text = format!("<tool_call>\n{{\"name\": \"Bash\", \"arguments\":{produced}");
        let json_part = text.trim_start_matches("<tool_call>\n").trim_end_matches("\n</tool_call>");
        let call: Value = serde_json::from_str(json_part).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(call["arguments"]["command"].as_str().map(|s| !s.is_empty()), Some(true), "{text}");
        assert!(text.ends_with("}\n</tool_call>"), "{text}");
        assert_eq!(picker.unconstrained_steps, 0);
    }

    #[test]
    fn a_budget_closes_a_call_the_model_would_not_end() {
        // The model would write "x" forever inside the string and never end its turn.
        let pieces = ["", " ", "{", "}", "\"", ":", "x", "\n</tool_call>", "\"command\""];
        let tokens = Arc::new(TokenBytes {
            bytes: pieces.iter().enumerate().map(|(i, p)| (i > 0).then(|| p.as_bytes().to_vec())).collect(),
            special: vec![false; pieces.len()],
        });
        let schema = json!({"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]});
        let grammar = Arc::new(Grammar::tool_call(&[("Bash".into(), schema)], Some("Bash"), CallStyle::Hermes));
        let run = |picker: &mut ConstrainedPicker, budget: usize| -> (String, bool) {
            let mut produced = String::new();
            // ` {"command":"` and then "x" for ever; the end of the turn always last.
            let opening = [" ", "{", "\"command\"", ":", "\""];
            for step in 0..budget {
                let wanted = opening.get(step).copied().unwrap_or("x");
                let logits: Vec<f32> = (0..pieces.len())
                    .map(|i| match pieces[i] {
                        p if p == wanted => 9.0,
                        "" => -50.0,
                        _ => 1.0 + i as f32 * 0.01,
                    })
                    .collect();
                let greedy = |l: &[f32]| l.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
                match picker.pick(&logits, greedy) {
                    0 => return (produced, true),
                    id => produced.push_str(pieces[id as usize]),
                }
            }
            (produced, false)
        };
        for budget in [11, 12, 30] {
            let mut picker =
                ConstrainedPicker::new(Arc::clone(&grammar), Arc::clone(&tokens), vec![0]).with_budget(budget);
            let (produced, stopped) = run(&mut picker, budget);
            assert!(stopped, "budget {budget}: the turn ends within the budget: {produced:?}");
            let text = format!("{{\"name\": \"Bash\", \"arguments\":{produced}");
            let call: Value = serde_json::from_str(text.trim_end_matches("\n</tool_call>"))
                .unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert!(call["arguments"]["command"].as_str().is_some_and(|c| c.starts_with('x')), "{text}");
        }
        // Closing fills what an object still owes: ` {"command":"x` closes as `"}`, and an
        // object with a required integer and enum still to come gets their smallest values.
        let schema = json!({"type": "object", "properties": {"file": {"type": "string"}, "lines": {"type": "integer"},
            "kind": {"enum": ["source", "test"]}}, "required": ["file", "lines", "kind"]});
        let mut matcher = Matcher::new(Arc::new(Grammar::json(Some(&schema))));
        assert!(matcher.feed(b"{\"kind\": \"test\", \"file\": \"src/a"));
        let closing = matcher.closing_bytes().expect("closable");
        assert_eq!(String::from_utf8(closing).unwrap(), "\",\"lines\":0}");
        let mut matcher = Matcher::new(Arc::new(Grammar::json(Some(&schema))));
        assert!(matcher.feed(b"{\"fi"));
        assert_eq!(matcher.closing_bytes(), None, "a half-written key is not closed");

        // Without a budget the same model is cut mid-string.
        let mut picker = ConstrainedPicker::new(grammar, tokens, vec![0]);
        let (produced, stopped) = run(&mut picker, 12);
        assert!(!stopped && !produced.ends_with("</tool_call>"), "{produced:?}");
    }

    /// Greedy picks where step i's logits rank `script[i]` best first; stops at id 0.
    fn run_script(picker: &mut ConstrainedPicker, pieces: &[&str], script: &[&[usize]]) -> String {
        let mut text = String::new();
        for preferences in script {
            let logits: Vec<f32> = (0..pieces.len())
                .map(|i| preferences.iter().position(|p| *p == i).map_or(0.0, |rank| 100.0 - rank as f32))
                .collect();
            let greedy = |l: &[f32]| l.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
            let id = picker.pick(&logits, greedy);
            if id == 0 {
                break;
            }
            text.push_str(pieces[id as usize]);
        }
        text
    }

    #[test]
    fn a_lazy_grammar_holds_only_the_tool_call_and_leaves_the_rest_free() {
        let pieces = [
            "<|im_end|>",
            "<tool_call>",
            "\n",
            "{\"name\": \"Bash\", \"arguments\": ",
            "{\"command\": \"ls\"}",
            "}",
            "</tool_call>",
            "Hi",
            "{\"file\": 1}",
            "\n{\"name\": \"Grep\", \"arguments\": ",
        ];
        let special = pieces.iter().map(|p| p.starts_with('<')).collect();
        let tokens =
            Arc::new(TokenBytes { bytes: pieces.iter().map(|p| Some(p.as_bytes().to_vec())).collect(), special });
        let schema = json!({"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]});
        let grammar = Grammar::lazy_tool_calls(&[("Bash".into(), schema.clone())], CallStyle::Hermes).unwrap();
        assert!(Grammar::lazy_tool_calls(&[], CallStyle::Hermes).is_none());
        let mut picker = ConstrainedPicker::new(Arc::new(grammar), Arc::clone(&tokens), vec![0]);
        // What the model would choose at each step, best first.
        let script: [&[usize]; 10] =
            [&[7], &[1], &[9, 8, 2], &[9, 3], &[8, 4], &[0, 5], &[0, 6, 2], &[0, 6], &[7, 0], &[7]];
        let text = run_script(&mut picker, &pieces, &script);
        // After the call, "Hi" is refused: the turn ends (or another call opens).
        assert_eq!(text, "Hi<tool_call>\n{\"name\": \"Bash\", \"arguments\": {\"command\": \"ls\"}}\n</tool_call>");

        // A reply that opens with a bare call gets the tag first, then the call in the grammar.
        let grammar = Arc::new(Grammar::lazy_tool_calls(&[("Bash".into(), schema)], CallStyle::Hermes).unwrap());
        let mut picker = ConstrainedPicker::new(grammar, Arc::clone(&tokens), vec![0]);
        let script: [&[usize]; 7] = [&[3], &[3, 2], &[3], &[4], &[0, 5], &[0, 2], &[6]];
        let text = run_script(&mut picker, &pieces, &script);
        assert_eq!(text, "<tool_call>\n{\"name\": \"Bash\", \"arguments\": {\"command\": \"ls\"}}\n</tool_call>");
    }

    #[test]
    fn byte_level_tokens_map_back_to_their_bytes() {
        let table = byte_level_table();
        assert_eq!(table.len(), 256);
        assert_eq!(table[&'Ġ'], b' ');
        assert_eq!(table[&'Ċ'], b'\n');
        assert_eq!(table[&'a'], b'a');
    }
}

//! Reading one Claude Code transcript file (reference A2–A3): a streaming line reader (UTF-8
//! with replacement, malformed lines counted with their line number, an unterminated last line
//! that does not parse yet is "not yet written") and the tolerant extraction of each record into
//! the slim `Record` the conversation builder needs. Tool results are flattened, images become a
//! placeholder, persisted large outputs are re-inlined from `tool-results/` and every result is
//! capped here, so memory stays proportional to the kept text, not to the file.
//!
//! Knows nothing of traces, SQL or redaction.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Placeholder for an image block in a prompt or a tool result.
pub const IMAGE_PLACEHOLDER: &str = "[image omitted]";

/// Where a file's companion files (persisted tool outputs) may live, and the result cap.
#[derive(Debug, Clone)]
pub struct ReadContext {
    /// `projects/<project>/`.
    pub project_dir: PathBuf,
    /// `projects/<project>/<session>/`, when the session id is known from the layout.
    pub session_dir: Option<PathBuf>,
    pub max_tool_result_bytes: usize,
    pub max_line_bytes: usize,
}

/// A line that was skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Malformed {
    pub line: usize,
    /// Byte offset just past the line.
    pub end_offset: u64,
    pub reason: String,
}

/// One record, reduced to what the conversation needs.
#[derive(Debug, Clone)]
pub struct Record {
    /// Position among the file's records.
    pub index: usize,
    pub line: usize,
    pub uuid: Option<String>,
    pub parent_uuid: Option<String>,
    pub logical_parent_uuid: Option<String>,
    pub timestamp: Option<String>,
    pub is_sidechain: bool,
    pub context: Context,
    pub body: Body,
}

/// The envelope fields that become trace metadata.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub session_id: Option<String>,
    pub cwd: Option<String>,
    pub git_branch: Option<String>,
    pub version: Option<String>,
    pub slug: Option<String>,
    pub agent_id: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Body {
    /// A human prompt (not meta, not a command wrapper, not a compaction summary).
    Prompt {
        text: String,
        images: usize,
    },
    /// `[Request interrupted by user]`.
    Interrupted,
    /// `system/compact_boundary`.
    CompactBoundary,
    /// Tool results, with the subagent a Task result names.
    ToolResults {
        results: Vec<ToolResult>,
        agent_id: Option<String>,
    },
    Assistant {
        message_id: String,
        model: Option<String>,
        blocks: Vec<Block>,
        api_error: bool,
    },
    /// Everything else: meta and command lines, compaction summaries, system lines, bookkeeping,
    /// unknown types. Kept only for the parent links.
    Other,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Text(String),
    Thinking(String),
    ToolUse { id: String, name: String, input: Value },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    pub tool_use_id: String,
    pub content: String,
    pub is_error: bool,
    pub images: usize,
    /// Cut at the cap, or a persisted output whose file was not found.
    pub truncated: bool,
    /// A persisted output that was read back from `tool-results/`.
    pub reinlined: bool,
}

/// Everything read from one file.
#[derive(Debug, Default)]
pub struct FileRead {
    pub records: Vec<Record>,
    pub malformed: Vec<Malformed>,
    /// Lines read (complete ones, plus a parsed unterminated last line).
    pub lines: usize,
    /// Byte offset just past the last complete line: where a later read resumes.
    pub complete_offset: u64,
    /// Start of the last complete line and the SHA-256 of its bytes, to recognise an append.
    pub last_line_start: u64,
    pub last_line_hash: Option<String>,
    pub last_uuid: Option<String>,
    /// Bytes of an unterminated last line that does not parse yet (a record being written).
    pub pending_bytes: u64,
}

/// Read and extract every record of a transcript.
pub fn read_file(path: &Path, context: &ReadContext) -> io::Result<FileRead> {
    let file = File::open(path)?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut out = FileRead::default();
    let mut offset = 0u64;
    let mut line_number = 0usize;
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        let (total, terminated, line_hash) = read_line(&mut reader, &mut buffer, context.max_line_bytes)?;
        if total == 0 && !terminated {
            break;
        }
        let start = offset;
        offset += total as u64;
        line_number += 1;
        let too_long = total - usize::from(terminated) > context.max_line_bytes;
        let mut bytes: &[u8] = &buffer;
        if terminated {
            bytes = &bytes[..bytes.len() - 1];
        }
        if line_number == 1 && bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
            bytes = &bytes[3..];
        }
        let parsed = if too_long {
            Err(format!("line longer than {} bytes", context.max_line_bytes))
        } else {
            let text = String::from_utf8_lossy(bytes);
            if text.trim().is_empty() {
                Ok(None)
            } else {
                match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(map)) => Ok(Some(map)),
                    Ok(other) => Err(format!("not a JSON object but {}", crate::traces::json_kind(&other))),
                    Err(e) => Err(format!("not valid JSON: {e}")),
                }
            }
        };
        if !terminated {
            // The file may be mid-append: only a last line that already parses counts.
            match parsed {
                Ok(Some(map)) => {
                    out.lines = line_number;
                    out.complete_offset = offset;
                    out.last_line_start = start;
                    out.last_line_hash = Some(line_hash.clone());
                    push_record(&mut out, map, line_number, context);
                }
                _ => out.pending_bytes = total as u64,
            }
            break;
        }
        out.lines = line_number;
        out.complete_offset = offset;
        out.last_line_start = start;
        out.last_line_hash = Some(line_hash.clone());
        match parsed {
            Ok(Some(map)) => push_record(&mut out, map, line_number, context),
            Ok(None) => {}
            Err(reason) => out.malformed.push(Malformed { line: line_number, end_offset: offset, reason }),
        }
    }
    Ok(out)
}

/// SHA-256 of the first `len` bytes of a file (fewer if it is shorter), and how many were read.
pub fn head_hash(path: &Path, len: u64) -> io::Result<(u64, String)> {
    let mut head = Vec::new();
    File::open(path)?.take(len).read_to_end(&mut head)?;
    Ok((head.len() as u64, hex::encode(Sha256::digest(&head))))
}

/// SHA-256 of the bytes `[start, end)` of a file, or None when the file is shorter.
pub fn range_hash(path: &Path, start: u64, end: u64) -> io::Result<Option<String>> {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(end.saturating_sub(start)).read_to_end(&mut bytes)?;
    if (bytes.len() as u64) < end.saturating_sub(start) {
        return Ok(None);
    }
    Ok(Some(hex::encode(Sha256::digest(&bytes))))
}

/// Read one line into `buffer`, keeping at most `max + 1` bytes of it (the rest is counted and
/// dropped). Returns the line's length in the file, whether it ended with `\n`, and the
/// SHA-256 of all its bytes.
fn read_line(reader: &mut impl BufRead, buffer: &mut Vec<u8>, max: usize) -> io::Result<(usize, bool, String)> {
    let mut total = 0usize;
    let mut hasher = Sha256::new();
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok((total, false, hex::encode(hasher.finalize())));
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(newline) => (&available[..=newline], true),
            None => (available, false),
        };
        hasher.update(chunk);
        let room = (max + 2).saturating_sub(buffer.len());
        buffer.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if done && buffer.last() != Some(&b'\n') {
            buffer.push(b'\n');
        }
        let consumed = chunk.len();
        total += consumed;
        reader.consume(consumed);
        if done {
            return Ok((total, true, hex::encode(hasher.finalize())));
        }
    }
}

fn push_record(out: &mut FileRead, map: Map<String, Value>, line: usize, context: &ReadContext) {
    let record = extract(map, out.records.len(), line, context);
    if record.uuid.is_some() {
        out.last_uuid = record.uuid.clone();
    }
    out.records.push(record);
}

fn string(map: &Map<String, Value>, key: &str) -> Option<String> {
    map.get(key).and_then(Value::as_str).map(str::to_string)
}

fn flag(map: &Map<String, Value>, key: &str) -> bool {
    map.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn extract(map: Map<String, Value>, index: usize, line: usize, context: &ReadContext) -> Record {
    let kind = map.get("type").and_then(Value::as_str).unwrap_or("");
    let body = match kind {
        "user" => user_body(&map, context),
        "assistant" => assistant_body(&map),
        "system" if map.get("subtype").and_then(Value::as_str) == Some("compact_boundary") => Body::CompactBoundary,
        _ => Body::Other,
    };
    let conversational = matches!(kind, "user" | "assistant");
    Record {
        index,
        line,
        uuid: string(&map, "uuid"),
        parent_uuid: string(&map, "parentUuid"),
        logical_parent_uuid: string(&map, "logicalParentUuid"),
        timestamp: string(&map, "timestamp"),
        is_sidechain: flag(&map, "isSidechain"),
        context: if conversational {
            Context {
                session_id: string(&map, "sessionId"),
                cwd: string(&map, "cwd"),
                git_branch: string(&map, "gitBranch"),
                version: string(&map, "version"),
                slug: string(&map, "slug"),
                agent_id: string(&map, "agentId"),
            }
        } else {
            Context { session_id: string(&map, "sessionId"), ..Context::default() }
        },
        body,
    }
}

/// Prefixes of user text that Claude Code writes itself (slash commands and their output,
/// caveats), which are not human prompts.
const COMMAND_PREFIXES: [&str; 6] = [
    "<command-name>",
    "<command-message>",
    "<command-args>",
    "<local-command-stdout>",
    "<local-command-stderr>",
    "<local-command-caveat>",
];

fn user_body(map: &Map<String, Value>, context: &ReadContext) -> Body {
    let Some(message) = map.get("message").and_then(Value::as_object) else { return Body::Other };
    let content = message.get("content").unwrap_or(&Value::Null);
    if let Some(blocks) = content.as_array() {
        let results: Vec<&Map<String, Value>> = blocks
            .iter()
            .filter_map(Value::as_object)
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
            .collect();
        if !results.is_empty() {
            let tool_use_result = map.get("toolUseResult");
            let agent_id = tool_use_result.and_then(|r| r.get("agentId")).and_then(Value::as_str).map(str::to_string);
            let persisted_path =
                tool_use_result.and_then(|r| r.get("persistedOutputPath")).and_then(Value::as_str).map(str::to_string);
            let results = results
                .into_iter()
                .filter_map(|block| tool_result(block, persisted_path.as_deref(), context))
                .collect();
            return Body::ToolResults { results, agent_id };
        }
    }
    if flag(map, "isMeta") || flag(map, "isCompactSummary") || flag(map, "isVisibleInTranscriptOnly") {
        return Body::Other;
    }
    let (text, images) = flatten_content(content);
    let trimmed = text.trim_start();
    if trimmed.starts_with("[Request interrupted by user") {
        return Body::Interrupted;
    }
    if trimmed.is_empty() || COMMAND_PREFIXES.iter().any(|p| trimmed.starts_with(p)) {
        return Body::Other;
    }
    Body::Prompt { text, images }
}

/// Text of a string or an array of blocks; images become the placeholder, other blocks vanish.
fn flatten_content(content: &Value) -> (String, usize) {
    match content {
        Value::String(text) => (text.clone(), 0),
        Value::Array(blocks) => {
            let mut parts: Vec<String> = Vec::new();
            let mut images = 0;
            for block in blocks {
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(text) = block.get("text").and_then(Value::as_str) {
                            parts.push(text.to_string());
                        }
                    }
                    Some("image") | Some("document") => {
                        images += 1;
                        parts.push(IMAGE_PLACEHOLDER.to_string());
                    }
                    _ => {}
                }
            }
            (parts.join("\n"), images)
        }
        _ => (String::new(), 0),
    }
}

fn tool_result(block: &Map<String, Value>, persisted_path: Option<&str>, context: &ReadContext) -> Option<ToolResult> {
    let tool_use_id = string(block, "tool_use_id")?;
    let (mut content, images) = flatten_content(block.get("content").unwrap_or(&Value::Null));
    let mut truncated = false;
    let mut reinlined = false;
    if content.contains("<persisted-output>") || persisted_path.is_some() {
        match find_persisted(&content, persisted_path, &tool_use_id, context) {
            Some(path) => match read_capped(&path, context.max_tool_result_bytes) {
                Ok((text, cut)) => {
                    content = text;
                    reinlined = true;
                    truncated = cut;
                }
                Err(_) => truncated = true,
            },
            None if content.contains("<persisted-output>") => truncated = true,
            None => {}
        }
        if truncated {
            content.push_str(
                "\n[understudy: the full output was saved by Claude Code and is not available; result truncated]",
            );
        }
    }
    if !reinlined && content.len() > context.max_tool_result_bytes {
        content = cap(&content, context.max_tool_result_bytes);
        truncated = true;
    }
    Some(ToolResult { tool_use_id, content, is_error: flag(block, "is_error"), images, truncated, reinlined })
}

/// Keep the first `max` bytes (at a character boundary) and say how much was cut.
pub fn cap(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[understudy: truncated, kept {} of {} bytes]", &text[..end], end, text.len())
}

/// A persisted output, read no further than the cap (plus a few bytes to end a character);
/// says whether it was cut.
fn read_capped(path: &Path, max: usize) -> io::Result<(String, bool)> {
    let total = std::fs::metadata(path)?.len();
    let mut bytes = Vec::new();
    File::open(path)?.take(max as u64 + 4).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if total as usize <= max {
        return Ok((text, false));
    }
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Ok((format!("{}\n[understudy: truncated, kept {} of {} bytes]", &text[..end], end, total), true))
}

/// The persisted file of a `<persisted-output>` stub, looked up only under the project's own
/// `tool-results/` directories (newer: `<session>/tool-results/`, older: `tool-results/`).
fn find_persisted(
    content: &str,
    persisted_path: Option<&str>,
    tool_use_id: &str,
    context: &ReadContext,
) -> Option<PathBuf> {
    let named = persisted_path.map(str::to_string).or_else(|| {
        let at = content.find("saved to:")? + "saved to:".len();
        let rest = content[at..].trim_start();
        let end = rest.find(|c: char| c.is_whitespace() || c == '<').unwrap_or(rest.len());
        Some(rest[..end].to_string())
    });
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(named) = named {
        if let Some(at) = named.rfind("tool-results/") {
            let relative = &named[at + "tool-results/".len()..];
            let safe = !relative.is_empty()
                && Path::new(relative).components().all(|c| matches!(c, std::path::Component::Normal(_)));
            if safe {
                if let Some(session_dir) = &context.session_dir {
                    candidates.push(session_dir.join("tool-results").join(relative));
                }
                candidates.push(context.project_dir.join("tool-results").join(relative));
            }
        }
    }
    if let Some(session_dir) = &context.session_dir {
        if tool_use_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            candidates.push(session_dir.join("tool-results").join(format!("{tool_use_id}.txt")));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn assistant_body(map: &Map<String, Value>) -> Body {
    let Some(message) = map.get("message").and_then(Value::as_object) else { return Body::Other };
    let model = string(message, "model");
    let api_error = flag(map, "isApiErrorMessage") || model.as_deref() == Some("<synthetic>");
    // Records without a message id cannot be merged with others; their uuid stands in.
    let message_id =
        string(message, "id").or_else(|| string(map, "uuid").map(|u| format!("uuid:{u}"))).unwrap_or_default();
    let mut blocks = Vec::new();
    match message.get("content") {
        Some(Value::String(text)) if !text.is_empty() => blocks.push(Block::Text(text.clone())),
        Some(Value::Array(items)) => {
            for item in items {
                match item.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(text) = item.get("text").and_then(Value::as_str) {
                            blocks.push(Block::Text(text.to_string()));
                        }
                    }
                    Some("thinking") => {
                        if let Some(text) = item.get("thinking").and_then(Value::as_str) {
                            blocks.push(Block::Thinking(text.to_string()));
                        }
                    }
                    Some("tool_use") | Some("server_tool_use") => {
                        let id = item.get("id").and_then(Value::as_str);
                        let name = item.get("name").and_then(Value::as_str);
                        if let (Some(id), Some(name)) = (id, name) {
                            let input = item.get("input").cloned().unwrap_or(Value::Null);
                            blocks.push(Block::ToolUse { id: id.to_string(), name: name.to_string(), input });
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    Body::Assistant { message_id, model, blocks, api_error }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn context(dir: &Path) -> ReadContext {
        ReadContext {
            project_dir: dir.to_path_buf(),
            session_dir: Some(dir.join("s1")),
            max_tool_result_bytes: 64,
            max_line_bytes: 4096,
        }
    }

    #[test]
    fn malformed_lines_are_counted_and_a_partial_last_line_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s1.jsonl");
        let mut file = File::create(&path).unwrap();
        writeln!(file, r#"{{"type":"user","uuid":"u1","parentUuid":null,"message":{{"role":"user","content":"hi"}}}}"#)
            .unwrap();
        writeln!(file, "{{not json").unwrap();
        writeln!(file, "[1,2]").unwrap();
        writeln!(file).unwrap();
        write!(file, r#"{{"type":"assistant","uuid":"a1""#).unwrap();
        drop(file);
        let read = read_file(&path, &context(dir.path())).unwrap();
        assert_eq!(read.records.len(), 1);
        assert_eq!(read.malformed.iter().map(|m| m.line).collect::<Vec<_>>(), vec![2, 3]);
        assert!(read.pending_bytes > 0);
        assert_eq!(read.lines, 4);
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(read.complete_offset + read.pending_bytes, size);
        assert!(matches!(read.records[0].body, Body::Prompt { .. }));
    }

    #[test]
    fn results_are_capped_and_persisted_outputs_reinlined() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("s1/tool-results")).unwrap();
        std::fs::write(dir.path().join("s1/tool-results/toolu_1.txt"), "full output").unwrap();
        let ctx = context(dir.path());
        let stub = r#"{"type":"tool_result","tool_use_id":"toolu_1","content":"<persisted-output>\nOutput too large. Full output saved to: /home/x/.claude/projects/p/s1/tool-results/toolu_1.txt\n</persisted-output>"}"#;
        let block: Map<String, Value> = serde_json::from_str(stub).unwrap();
        let result = tool_result(&block, None, &ctx).unwrap();
        assert_eq!(result.content, "full output");
        assert!(result.reinlined && !result.truncated);

        let missing = stub.replace("toolu_1", "toolu_2");
        let block: Map<String, Value> = serde_json::from_str(&missing).unwrap();
        let result = tool_result(&block, None, &ctx).unwrap();
        assert!(result.truncated && !result.reinlined);

        let long = serde_json::json!({"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "x".repeat(100)}, {"type": "image", "source": {}}]});
        let result = tool_result(long.as_object().unwrap(), None, &ctx).unwrap();
        assert!(result.truncated);
        assert!(result.content.starts_with(&"x".repeat(64)));
        assert!(result.content.contains("kept 64 of"), "{}", result.content);
        assert_eq!(result.images, 1);
    }
}

//! JSON schemas of the default tool set (spec 2.2), mirroring Claude Code's tools, and of other
//! tools imports commonly meet. Used for a trace's `tools` list and the system prompt.

use serde_json::{json, Value};

/// The six default tools, in the order the system prompt lists them.
pub const DEFAULT_TOOL_NAMES: [&str; 6] = ["Read", "Write", "Edit", "Grep", "Glob", "Bash"];

pub fn tool_schema(name: &str) -> Option<Value> {
    let (description, parameters) = match name {
        "Read" => (
            "Read a file. Lines are numbered from 1; offset and limit select a range.",
            json!({"type": "object", "properties": {
                "file_path": {"type": "string", "description": "Path of the file"},
                "offset": {"type": "integer", "description": "First line to read (1-based)"},
                "limit": {"type": "integer", "description": "Number of lines to read"}},
                "required": ["file_path"]}),
        ),
        "Write" => (
            "Create or overwrite a file with the given content.",
            json!({"type": "object", "properties": {
                "file_path": {"type": "string"}, "content": {"type": "string"}},
                "required": ["file_path", "content"]}),
        ),
        "Edit" => (
            "Replace an exact string in a file. old_string must match exactly once unless replace_all is true.",
            json!({"type": "object", "properties": {
                "file_path": {"type": "string"}, "old_string": {"type": "string"},
                "new_string": {"type": "string"}, "replace_all": {"type": "boolean"}},
                "required": ["file_path", "old_string", "new_string"]}),
        ),
        "Grep" => (
            "Search file contents with a regular expression.",
            json!({"type": "object", "properties": {
                "pattern": {"type": "string", "description": "Regular expression"},
                "path": {"type": "string", "description": "File or directory to search (default: the workspace)"},
                "glob": {"type": "string", "description": "Only files whose name matches this glob"},
                "output_mode": {"type": "string", "enum": ["content", "files_with_matches", "count"]},
                "case_insensitive": {"type": "boolean"}},
                "required": ["pattern"]}),
        ),
        "Glob" => (
            "List files whose path matches a glob pattern.",
            json!({"type": "object", "properties": {
                "pattern": {"type": "string"}, "path": {"type": "string"}},
                "required": ["pattern"]}),
        ),
        "Bash" => (
            "Run a shell command in the workspace (read-only commands, git and the test suite).",
            json!({"type": "object", "properties": {
                "command": {"type": "string"}, "timeout_ms": {"type": "integer"}},
                "required": ["command"]}),
        ),
        "Task" => (
            "Launch a sub-agent for a self-contained task.",
            json!({"type": "object", "properties": {
                "description": {"type": "string"}, "prompt": {"type": "string"}, "subagent_type": {"type": "string"}},
                "required": ["description", "prompt"]}),
        ),
        "TodoWrite" => (
            "Write the task list.",
            json!({"type": "object", "properties": {"todos": {"type": "array", "items": {"type": "object"}}}, "required": ["todos"]}),
        ),
        "WebFetch" => (
            "Fetch a URL and answer a question about its content.",
            json!({"type": "object", "properties": {"url": {"type": "string"}, "prompt": {"type": "string"}}, "required": ["url", "prompt"]}),
        ),
        "WebSearch" => (
            "Search the web.",
            json!({"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}),
        ),
        _ => return None,
    };
    Some(json!({"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}))
}

pub fn default_tools() -> Vec<Value> {
    DEFAULT_TOOL_NAMES.iter().filter_map(|name| tool_schema(name)).collect()
}

//! The Ollama Modelfile: FROM, a TEMPLATE in Ollama's Go template syntax equivalent to the
//! model's chat template (with `.Tools` and `.ToolCalls` branches, so Ollama reports the model
//! as tool-capable and finds its tool-call tag), PARAMETER stop for every end-of-turn token,
//! SYSTEM, num_ctx and temperature.

use super::manifest::OllamaSettings;
use crate::model::chat_template::{ChatTemplate, TemplateKind};

/// The opening of a ChatML system turn: the system prompt, then (below) the tools.
const CHATML_SYSTEM: &str = r#"{{- if or .System .Tools }}<|im_start|>system
{{ if .System }}{{ .System }}{{ if .Tools }}

{{ end }}{{ end }}
"#;

/// Tools as `chatml_hermes.jinja` lists them (schemas rendered by Ollama as JSON).
const CHATML_HERMES_TOOLS: &str = r#"{{- if .Tools }}# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>{{ end }}"#;

/// Tools as `chatml_compact.jinja` lists them: one line per tool, parameters in their schema's
/// order (Ollama keeps them in an ordered map iterated by `All`), required ones without `?`.
const CHATML_COMPACT_TOOLS: &str = r#"{{- if .Tools }}# Tools
{{ range .Tools }}
{{ .Function.Name }}(
{{- $required := .Function.Parameters.Required }}{{ $first := true }}
{{- range $name, $property := .Function.Parameters.Properties.All }}
{{- if not $first }}, {{ end }}{{ $first = false }}{{ $name }}
{{- $isRequired := false }}{{ range $required }}{{ if eq . $name }}{{ $isRequired = true }}{{ end }}{{ end }}
{{- if not $isRequired }}?{{ end }}{{ if $property.Type }}: {{ $property.Type }}{{ end }}
{{- end }}){{ if .Function.Description }} - {{ .Function.Description }}{{ end }}
{{- end }}

To call a tool, reply with <tool_call>
{"name": <tool-name>, "arguments": <args-json-object>}
</tool_call>{{ end }}"#;

/// The end of the system turn and the conversation, as both ChatML templates render it (tool
/// results grouped in one user turn, Hermes tool calls).
const CHATML_TURNS: &str = r#"<|im_end|>
{{ end }}
{{- $inTool := false }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if and $inTool (ne .Role "tool") }}<|im_end|>
{{ end }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{- if .Content }}
{{ .Content }}{{ end }}
{{- if .ToolCalls }}
<tool_call>
{{ range $j, $call := .ToolCalls }}{{ if $j }}</tool_call>
<tool_call>
{{ end }}{"name": "{{ $call.Function.Name }}", "arguments": {{ $call.Function.Arguments }}}
{{ end }}</tool_call>{{ end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}{{ if not $inTool }}<|im_start|>user{{ end }}
<tool_response>
{{ .Content }}
</tool_response>{{ if $last }}<|im_end|>
{{ end }}
{{- end }}
{{- $inTool = eq .Role "tool" }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}"#;

/// Llama 3 with JSON tool calls, as `llama3.jinja` renders it.
const LLAMA3: &str = r#"<|begin_of_text|>
{{- if or .System .Tools }}<|start_header_id|>system<|end_header_id|>

{{ if .Tools }}Environment: ipython

{{ end }}{{ .System }}
{{- if .Tools }}{{ if .System }}

{{ end }}You have access to the following functions. To call a function, respond with JSON of the form {"name": function name, "parameters": dictionary of argument name and its value}.
{{- range .Tools }}

{{ . }}
{{- end }}{{ end }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>

{{ .Content }}
{{- if .ToolCalls }}{{ $content := .Content }}{{ range $j, $call := .ToolCalls }}{{ if or $content $j }}
{{ end }}{"name": "{{ $call.Function.Name }}", "parameters": {{ $call.Function.Arguments }}}{{ end }}{{ end }}
{{- if not $last }}<|eot_id|>{{ end }}
{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}"#;

/// The Go template equivalent to a chat template. A custom template is served through the
/// ChatML form when it speaks ChatML, else through Llama 3's when it speaks that.
pub fn go_template(template: &ChatTemplate) -> String {
    let chatml = |tools: &str| format!("{CHATML_SYSTEM}{tools}{CHATML_TURNS}");
    match template.kind {
        TemplateKind::Llama3 => LLAMA3.to_string(),
        TemplateKind::ChatmlHermes => chatml(CHATML_HERMES_TOOLS),
        TemplateKind::ChatmlCompact => chatml(CHATML_COMPACT_TOOLS),
        TemplateKind::Custom if template.source.contains("<|start_header_id|>") => LLAMA3.to_string(),
        TemplateKind::Custom => chatml(CHATML_HERMES_TOOLS),
    }
}

/// The values both the Modelfile and `ollama create` carry.
pub fn settings(template: &ChatTemplate, system: &str, context_length: usize) -> OllamaSettings {
    OllamaSettings {
        template: go_template(template),
        system: system.to_string(),
        stop: template.end_of_turn.clone(),
        num_ctx: context_length.min(8192) as u32,
        temperature: 0.0,
    }
}

fn quoted(text: &str) -> String {
    format!("\"\"\"{text}\"\"\"")
}

/// The Modelfile text; `from` is the GGUF path relative to the Modelfile.
pub fn render(from: &str, settings: &OllamaSettings) -> String {
    let mut out =
        format!("FROM ./{from}\nTEMPLATE {}\nSYSTEM {}\n", quoted(&settings.template), quoted(&settings.system));
    for stop in &settings.stop {
        out.push_str(&format!("PARAMETER stop {}\n", serde_json::to_string(stop).unwrap_or_default()));
    }
    out.push_str(&format!("PARAMETER num_ctx {}\nPARAMETER temperature {}\n", settings.num_ctx, settings.temperature));
    out
}

//! Secret redaction applied to every captured string before a trace is built, so the original
//! text never reaches the store: named regular expressions (API keys, tokens, private key
//! blocks, passwords in URLs, secret-looking assignments), configurable, with counts per name.
//!
//! A pattern with a named group `secret` replaces only that group (the key name of
//! `API_KEY=...` or the user of `https://user:pw@host` stays readable); otherwise the whole
//! match is replaced by `[REDACTED:<name>]`.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::Value;

use crate::traces::Message;

/// One named pattern.
#[derive(Debug, Clone)]
pub struct RedactionPattern {
    pub name: String,
    pub regex: Regex,
}

#[derive(Debug, thiserror::Error)]
pub enum RedactionError {
    #[error("redaction pattern {name:?} is not a valid regular expression: {source}")]
    BadPattern { name: String, source: regex::Error },
    #[error("redaction pattern {0:?} must be NAME=REGEX with a non-empty name of letters, digits, '_' or '-'")]
    BadSpec(String),
}

impl RedactionPattern {
    pub fn new(name: &str, pattern: &str) -> Result<RedactionPattern, RedactionError> {
        let valid_name = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_name {
            return Err(RedactionError::BadSpec(format!("{name}={pattern}")));
        }
        let regex =
            Regex::new(pattern).map_err(|source| RedactionError::BadPattern { name: name.to_string(), source })?;
        Ok(RedactionPattern { name: name.to_string(), regex })
    }

    /// Parse `NAME=REGEX` (the form the CLI accepts).
    pub fn parse_spec(spec: &str) -> Result<RedactionPattern, RedactionError> {
        let (name, pattern) = spec.split_once('=').ok_or_else(|| RedactionError::BadSpec(spec.to_string()))?;
        RedactionPattern::new(name.trim(), pattern)
    }
}

/// The built-in patterns, in the order they are applied (specific before generic).
pub const DEFAULT_PATTERNS: &[(&str, &str)] = &[
    ("private_key", r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\z)"),
    ("anthropic_api_key", r"\bsk-ant-[A-Za-z0-9_\-]{16,}"),
    ("openai_api_key", r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}"),
    ("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"),
    ("aws_access_key_id", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    ("slack_token", r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"),
    ("bearer_token", r"(?i)\bbearer\s+(?P<secret>[A-Za-z0-9._~+/\-]{12,}=*)"),
    ("url_password", r"(?i)\b[a-z][a-z0-9+.\-]*://[^\s:/@]+:(?P<secret>[^\s@/]+)@"),
    // `.env` style: an upper-case key with a secret word as one of its `_` parts
    // (`STRIPE_SECRET_KEY`, `GITHUB_TOKEN`, not `MAX_TOKENS`), a value of 6+ characters.
    (
        "secret_assignment",
        r#"\b[A-Z0-9_]*(?:SECRET|TOKEN|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIALS?)(?:_[A-Z0-9_]*)?[ \t]*[=:][ \t]*(?P<secret>"[^"\n]{4,}"|'[^'\n]{4,}'|[^\s"'`]{6,})"#,
    ),
    // Code and config in any case, but only quoted values (`password = "..."`, `"token": "..."`).
    (
        "secret_literal",
        r#"(?i)\b[a-z0-9_]*(?:secret|token|password|passwd|api_?key|access_?key|private_?key)["']?[ \t]*[=:][ \t]*(?P<secret>"[^"\n]{4,}"|'[^'\n]{4,}')"#,
    ),
];

/// Applies a list of patterns and counts what it replaced.
#[derive(Debug, Clone)]
pub struct Redactor {
    patterns: Vec<RedactionPattern>,
}

/// Redactions made, per pattern name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedactionCounts(pub BTreeMap<String, u64>);

impl RedactionCounts {
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn add(&mut self, other: &RedactionCounts) {
        for (name, count) in &other.0 {
            *self.0.entry(name.clone()).or_default() += count;
        }
    }
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor::with_defaults(Vec::new())
    }
}

impl Redactor {
    pub fn new(patterns: Vec<RedactionPattern>) -> Redactor {
        Redactor { patterns }
    }

    /// The built-in patterns followed by `extra`.
    pub fn with_defaults(extra: Vec<RedactionPattern>) -> Redactor {
        let mut patterns: Vec<RedactionPattern> = DEFAULT_PATTERNS
            .iter()
            .map(|(name, pattern)| RedactionPattern::new(name, pattern).expect("built-in pattern compiles"))
            .collect();
        patterns.extend(extra);
        Redactor { patterns }
    }

    pub fn pattern_names(&self) -> Vec<&str> {
        self.patterns.iter().map(|p| p.name.as_str()).collect()
    }

    /// The text with every match replaced; `counts` gains one per replacement.
    pub fn redact(&self, text: &str, counts: &mut RedactionCounts) -> String {
        let mut current = std::borrow::Cow::Borrowed(text);
        for pattern in &self.patterns {
            if !pattern.regex.is_match(&current) {
                continue;
            }
            let marker = format!("[REDACTED:{}]", pattern.name);
            let mut replaced = 0u64;
            let next = pattern.regex.replace_all(&current, |caps: &regex::Captures<'_>| {
                let whole = caps.get(0).expect("group 0 exists");
                let target = caps.name("secret").unwrap_or(whole);
                // An earlier pattern's marker is not a secret (`AWS_ACCESS_KEY_ID=[REDACTED:...]`).
                if target.as_str().trim_matches(['"', '\'']).starts_with("[REDACTED:") {
                    return whole.as_str().to_string();
                }
                replaced += 1;
                match caps.name("secret") {
                    Some(secret) => {
                        let start = secret.start() - whole.start();
                        let end = secret.end() - whole.start();
                        format!("{}{}{}", &whole.as_str()[..start], marker, &whole.as_str()[end..])
                    }
                    None => marker.clone(),
                }
            });
            let next = next.into_owned();
            if replaced > 0 {
                *counts.0.entry(pattern.name.clone()).or_default() += replaced;
            }
            current = std::borrow::Cow::Owned(next);
        }
        current.into_owned()
    }

    /// Redact a conversation in place: every message's text, and every tool call's arguments
    /// string by string (arguments that are not JSON are redacted as text). Captured turns and
    /// served conversations both go through this, so they are redacted the same way.
    pub fn redact_messages(&self, messages: &mut [Message], counts: &mut RedactionCounts) {
        for message in messages {
            if let Some(content) = &message.content {
                message.content = Some(self.redact(content, counts));
            }
            for call in &mut message.tool_calls {
                call.arguments = match serde_json::from_str::<Value>(&call.arguments) {
                    Ok(mut value) => {
                        self.redact_value(&mut value, counts);
                        value.to_string()
                    }
                    Err(_) => self.redact(&call.arguments, counts),
                };
            }
        }
    }

    /// Redact every string inside a JSON value (keys are left alone).
    pub fn redact_value(&self, value: &mut Value, counts: &mut RedactionCounts) {
        match value {
            Value::String(text) => {
                let redacted = self.redact(text, counts);
                if redacted != *text {
                    *text = redacted;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.redact_value(item, counts)),
            Value::Object(map) => map.values_mut().for_each(|item| self.redact_value(item, counts)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(text: &str) -> (String, RedactionCounts) {
        let mut counts = RedactionCounts::default();
        (Redactor::default().redact(text, &mut counts), counts)
    }

    #[test]
    fn each_default_pattern_catches_its_secret() {
        let cases = [
            ("key sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv done", "anthropic_api_key", "sk-ant-api03"),
            ("OPENAI sk-proj-aBcDeFgHiJkLmNoPqRsTuVwX", "openai_api_key", "aBcDeFgHiJ"),
            ("push with ghp_0123456789abcdefghijABCDEFGHIJ now", "github_token", "ghp_0123"),
            ("id AKIAIOSFODNN7EXAMPLE here", "aws_access_key_id", "AKIAIOSFODNN7EXAMPLE"),
            ("slack xoxb-1234567890-abcdefghij", "slack_token", "xoxb-12345"),
            ("curl -H 'Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc.def'", "bearer_token", "eyJhbGci"),
            ("db postgres://admin:hunter2pw@db.local:5432/app", "url_password", "hunter2pw"),
            ("STRIPE_SECRET_KEY=rk_live_abcdef123", "secret_assignment", "rk_live_abcdef123"),
            ("config password = \"correct horse\"", "secret_literal", "correct horse"),
        ];
        for (text, name, secret) in cases {
            let (out, counts) = redact(text);
            assert!(!out.contains(secret), "{name}: {out}");
            assert!(counts.0.get(name).copied().unwrap_or(0) >= 1, "{name} not counted: {counts:?} in {out}");
        }
    }

    #[test]
    fn private_key_blocks_and_partial_matches_keep_context() {
        let text = "before\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA\n-----END OPENSSH PRIVATE KEY-----\nafter";
        let (out, counts) = redact(text);
        assert_eq!(out, "before\n[REDACTED:private_key]\nafter");
        assert_eq!(counts.total(), 1);
        let (out, _) = redact("git clone https://ana:s3cretpw@github.com/x.git");
        assert_eq!(out, "git clone https://ana:[REDACTED:url_password]@github.com/x.git");
        let (out, _) = redact("export GITHUB_TOKEN=abc123def");
        assert_eq!(out, "export GITHUB_TOKEN=[REDACTED:secret_assignment]");
        let (out, counts) = redact("AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE");
        assert_eq!(out, "AWS_ACCESS_KEY_ID=[REDACTED:aws_access_key_id]");
        assert_eq!(counts.total(), 1, "a marker is not redacted again");
        let (out, _) = redact("2\tSTRIPE_SECRET_KEY=sk_live_51HxQz");
        assert_eq!(out, "2\tSTRIPE_SECRET_KEY=[REDACTED:secret_assignment]");
    }

    #[test]
    fn ordinary_code_is_left_alone() {
        for text in [
            "let token = self.next_token();",
            "max_tokens: 512",
            "MAX_TOKENS=4096",
            "TOKENIZER_PATH=/models/tok.json",
            "tokens = tokenize(text)",
            "test result: PASS",
        ] {
            let (out, counts) = redact(text);
            assert_eq!(out, text);
            assert_eq!(counts.total(), 0);
        }
    }

    #[test]
    fn custom_patterns_and_values() {
        let redactor = Redactor::with_defaults(vec![RedactionPattern::parse_spec("ticket=TICKET-[0-9]+").unwrap()]);
        let mut counts = RedactionCounts::default();
        let mut value = serde_json::json!({"command": "echo TICKET-42", "nested": ["AKIAIOSFODNN7EXAMPLE"]});
        redactor.redact_value(&mut value, &mut counts);
        assert_eq!(value["command"], "echo [REDACTED:ticket]");
        assert_eq!(value["nested"][0], "[REDACTED:aws_access_key_id]");
        assert_eq!(counts.total(), 2);
        assert!(RedactionPattern::parse_spec("no-equals").is_err());
        assert!(RedactionPattern::parse_spec("bad=(").is_err());
    }
}

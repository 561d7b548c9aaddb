//! `understudy bench capture`: write a synthetic Claude Code projects tree (N sessions of M
//! turns, in the on-disk shape of `tests/data/claude_code`: prompt records, assistant records with
//! one content block per line sharing a `message.id`, `tool_result` records, `uuid`/`parentUuid`
//! chains and timestamps) into a temp dir, then time one full `capture::scan` into a fresh temp
//! data dir and a second, idempotent scan. Both temp dirs are removed afterwards.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};

use super::{scan, CaptureSettings};
use crate::store::Store;

/// What `bench capture` prints.
#[derive(Debug, Clone, Serialize)]
pub struct CaptureBench {
    pub benchmark: &'static str,
    pub sessions: u64,
    pub turns: u64,
    pub files: u64,
    pub bytes: u64,
    pub lines: u64,
    pub traces: u64,
    pub seconds: f64,
    #[serde(rename = "MB/s")]
    pub mb_per_second: f64,
    #[serde(rename = "lines/s")]
    pub lines_per_second: f64,
    #[serde(rename = "traces/s")]
    pub traces_per_second: f64,
    pub rescan_seconds: f64,
    /// Traces the second scan stored anew (0 when the scan is idempotent).
    pub rescan_traces_new: u64,
}

/// Generate, scan twice and clean up; `work` is a directory this function creates and removes.
pub fn capture(sessions: u64, turns: u64, work: &Path) -> anyhow::Result<CaptureBench> {
    let result = run(sessions, turns, work);
    let _ = std::fs::remove_dir_all(work);
    result
}

fn run(sessions: u64, turns: u64, work: &Path) -> anyhow::Result<CaptureBench> {
    let root = work.join("claude");
    let (bytes, lines) = generate(&root, sessions, turns)?;
    let store = Store::open(&work.join("data"))?;
    let settings = CaptureSettings::new(vec![root]);

    let started = Instant::now();
    let report = scan(&store, &settings)?;
    let seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let rescan = scan(&store, &settings)?;
    let rescan_seconds = started.elapsed().as_secs_f64();

    let per_second = |n: f64| if seconds > 0.0 { n / seconds } else { 0.0 };
    Ok(CaptureBench {
        benchmark: "capture",
        sessions,
        turns,
        files: report.files,
        bytes,
        lines,
        traces: report.traces_new,
        seconds,
        mb_per_second: per_second(bytes as f64 / 1e6),
        lines_per_second: per_second(lines as f64),
        traces_per_second: per_second(report.traces_new as f64),
        rescan_seconds,
        rescan_traces_new: rescan.traces_new,
    })
}

/// Write `<root>/projects/<project>/<session>.jsonl` files; returns (bytes, lines) written.
pub fn generate(root: &Path, sessions: u64, turns: u64) -> std::io::Result<(u64, u64)> {
    let (mut bytes, mut lines) = (0u64, 0u64);
    for s in 0..sessions {
        let project = format!("-home-bench-src-project{}", s % 8);
        let dir = root.join("projects").join(&project);
        std::fs::create_dir_all(&dir)?;
        let session_id = format!("00000000-0000-4000-8000-{s:012x}");
        let mut file = std::io::BufWriter::new(std::fs::File::create(dir.join(format!("{session_id}.jsonl")))?);
        let mut session = Session {
            id: session_id,
            cwd: format!("/home/bench/src/project{}", s % 8),
            parent: None,
            clock: s * 10_000,
        };
        for t in 0..turns {
            for record in session.turn(s, t) {
                let line = serde_json::to_string(&record)?;
                file.write_all(line.as_bytes())?;
                file.write_all(b"\n")?;
                bytes += line.len() as u64 + 1;
                lines += 1;
            }
        }
        file.flush()?;
    }
    Ok((bytes, lines))
}

struct Session {
    id: String,
    cwd: String,
    parent: Option<String>,
    clock: u64,
}

impl Session {
    /// A record with the common envelope, chained to the previous one.
    fn record(&mut self, kind: &str, uuid: String, extra: Value) -> Value {
        self.clock += 1;
        let seconds = self.clock;
        let timestamp = format!(
            "2026-02-{:02}T{:02}:{:02}:{:02}.000Z",
            1 + (seconds / 86_400) % 28,
            (seconds / 3600) % 24,
            (seconds / 60) % 60,
            seconds % 60
        );
        let mut record = json!({
            "parentUuid": self.parent, "isSidechain": false, "userType": "external", "cwd": self.cwd,
            "sessionId": self.id, "version": "2.1.37", "gitBranch": "main", "type": kind,
            "uuid": uuid, "timestamp": timestamp,
        });
        if let (Some(target), Value::Object(extra)) = (record.as_object_mut(), extra) {
            target.extend(extra);
        }
        self.parent = Some(uuid);
        record
    }

    fn assistant(&mut self, uuid: String, message_id: &str, block: Value, stop: Option<&str>) -> Value {
        let message = json!({
            "id": message_id, "type": "message", "role": "assistant", "model": "claude-opus-4-5-20251101",
            "content": [block], "stop_reason": stop, "stop_sequence": null,
            "usage": {"input_tokens": 3, "output_tokens": 9},
        });
        self.record("assistant", uuid, json!({"requestId": format!("req_{message_id}"), "message": message}))
    }

    /// One human prompt, a text and a tool_use line of one message, the tool result, the answer.
    fn turn(&mut self, s: u64, t: u64) -> Vec<Value> {
        let tag = format!("{s:x}-{t:x}");
        let tool_id = format!("toolu_bench_{tag}");
        let path = format!("{}/src/module_{t}.rs", self.cwd);
        let prompt = format!("Session {s}, turn {t}: explain what src/module_{t}.rs does and whether it has tests");
        let mut records = vec![self.record(
            "user",
            format!("u-{tag}-1"),
            json!({"permissionMode": "default", "message": {"role": "user", "content": prompt}}),
        )];
        let first = format!("msg_{tag}_a");
        records.push(self.assistant(
            format!("a-{tag}-1"),
            &first,
            json!({"type": "text", "text": "Let me read the file first."}),
            None,
        ));
        records.push(self.assistant(
            format!("a-{tag}-2"),
            &first,
            json!({"type": "tool_use", "id": tool_id, "name": "Read", "input": {"file_path": path}}),
            Some("tool_use"),
        ));
        let body: String =
            (1..=40).map(|n| format!("{n:6}\tlet value_{n} = compute_{s}_{t}({n}); // line {n}\n")).collect();
        let source = self.parent.clone();
        records.push(self.record(
            "user",
            format!("u-{tag}-2"),
            json!({
                "message": {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": body}]},
                "toolUseResult": {"type": "text", "file": {"filePath": path, "numLines": 40, "startLine": 1, "totalLines": 40}},
                "sourceToolAssistantUUID": source,
            }),
        ));
        let answer = format!("src/module_{t}.rs computes forty values with compute_{s}_{t}; it has no tests yet.");
        records.push(self.assistant(
            format!("a-{tag}-3"),
            &format!("msg_{tag}_b"),
            json!({"type": "text", "text": answer}),
            Some("end_turn"),
        ));
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_capture_tiny_corpus_makes_one_trace_per_turn_and_rescans_nothing() {
        let scratch = tempfile::tempdir().unwrap();
        let work = scratch.path().join("corpus");
        let figures = capture(3, 2, &work).unwrap();
        assert_eq!(figures.files, 3);
        assert_eq!(figures.lines, 3 * 2 * 5);
        assert_eq!(figures.traces, 6, "{figures:?}");
        assert_eq!(figures.rescan_traces_new, 0, "{figures:?}");
        assert!(figures.bytes > 0 && figures.seconds > 0.0);
        assert!(!work.exists(), "the temp dirs are removed");
    }
}

"""Writes the capture fixtures in Claude Code's on-disk transcript format (shared reference, part A):
projects/<project>/<session>.jsonl, the session's subagents/ and tool-results/, an older-layout
session with agent-<id>.jsonl beside it, and append.jsonl.txt (the rest of the main session, which
tests/it/capture.rs appends). Run: python3 generate.py <dir>  (e.g. tests/data/claude_code)."""
import json, os, sys
root = sys.argv[1]
S = "5b0c1f0e-7c2a-4f4e-9d51-2f7a3c9e1a10"
P = "-home-ana-src-widget"
proj = os.path.join(root, "projects", P)
os.makedirs(os.path.join(proj, S, "subagents"), exist_ok=True)
os.makedirs(os.path.join(proj, S, "tool-results"), exist_ok=True)
CWD = "/home/ana/src/widget"
VER = "2.1.37"
MODEL = "claude-opus-4-5-20251101"
clock = [0]
def ts():
    clock[0] += 1
    s = clock[0]
    return "2026-02-18T11:%02d:%02d.%03dZ" % (30 + s // 60, s % 60, (s * 37) % 1000)
def env(kind, uuid, parent, **extra):
    rec = {"parentUuid": parent, "isSidechain": False, "userType": "external", "cwd": CWD,
           "sessionId": S, "version": VER, "gitBranch": "main", "slug": "quiet-orange-fox",
           "type": kind}
    rec.update(extra)
    rec["uuid"] = uuid
    rec["timestamp"] = ts()
    return rec
def prompt(uuid, parent, content, **extra):
    return env("user", uuid, parent, permissionMode="default",
               message={"role": "user", "content": content},
               thinkingMetadata={"maxThinkingTokens": 31999}, todos=[], **extra)
USAGE = {"input_tokens": 3, "cache_creation_input_tokens": 2872, "cache_read_input_tokens": 19205,
         "cache_creation": {"ephemeral_5m_input_tokens": 2872, "ephemeral_1h_input_tokens": 0},
         "output_tokens": 9, "service_tier": "standard"}
def asst(uuid, parent, msg_id, req, block, stop=None, **extra):
    return env("assistant", uuid, parent, requestId=req,
               message={"id": msg_id, "type": "message", "role": "assistant", "model": MODEL,
                        "content": [block], "stop_reason": stop, "stop_sequence": None, "usage": USAGE}, **extra)
def text(t): return {"type": "text", "text": t}
def think(t): return {"type": "thinking", "thinking": t, "signature": "EuEDCkYICxgCKkB0c2lnbmF0dXJl"}
def use(i, name, inp): return {"type": "tool_use", "id": i, "name": name, "input": inp}
def result(uuid, parent, tool_id, content, tur, is_error=None, src=None):
    block = {"type": "tool_result", "tool_use_id": tool_id, "content": content}
    if is_error is not None: block["is_error"] = is_error
    return env("user", uuid, parent, message={"role": "user", "content": [block]},
               toolUseResult=tur, sourceToolAssistantUUID=src or parent)
def dump(path, records, tail=None):
    with open(path, "w") as f:
        for r in records:
            f.write(r if isinstance(r, str) else json.dumps(r, separators=(",", ":")))
            f.write("\n")
        if tail: f.write(tail)

R = []
R.append({"type": "file-history-snapshot", "messageId": "u-001", "snapshot": {"messageId": "u-001", "trackedFileBackups": {}, "timestamp": "2026-02-18T11:30:00.000Z"}, "isSnapshotUpdate": False})
# Turn 1: fix a failing test. Thinking, text and tool_use on separate lines; parallel Read+Grep
# whose results arrive out of order; a progress line in the chain.
R.append(prompt("u-001", None, "The test parse_empty_input fails, please fix it"))
R.append(asst("a-001", "u-001", "msg_01A", "req_01A", think("The failing test is probably an off-by-one in the tokenizer.")))
R.append(asst("a-002", "a-001", "msg_01A", "req_01A", text("Let me run the test first.")))
R.append(asst("a-003", "a-002", "msg_01A", "req_01A", use("toolu_01Bash0001", "Bash", {"command": "cargo test parse_empty_input", "description": "Run failing test"}), stop="tool_use"))
R.append(result("u-002", "a-003", "toolu_01Bash0001", "running 1 test\ntest parser::parse_empty_input ... FAILED\n\nthread 'parser::parse_empty_input' panicked at src/parse.rs:14:9:\nassertion failed: tokens.is_empty()", {"stdout": "running 1 test\n...", "stderr": "", "interrupted": False, "isImage": False}, is_error=True))
R.append(asst("a-004", "u-002", "msg_01B", "req_01B", use("toolu_01Read0001", "Read", {"file_path": "/home/ana/src/widget/src/parse.rs"})))
R.append(asst("a-005", "a-004", "msg_01B", "req_01B", use("toolu_01Grep0001", "Grep", {"pattern": "fn parse_empty", "path": "src", "output_mode": "content"}), stop="tool_use"))
R.append(result("u-004", "a-005", "toolu_01Grep0001", "src/parse.rs:22:fn parse_empty_input() {", {"mode": "content", "filenames": [], "content": "src/parse.rs:22:fn parse_empty_input() {", "numFiles": 1, "numLines": 1}, src="a-005"))
R.append(result("u-003", "u-004", "toolu_01Read0001", "     1\tpub fn tokenize(input: &str) -> Vec<Token> {\n     2\t    if input.is_empty() { return vec![Token::Eof]; }\n     3\t    input.split(' ').map(Token::from).collect()\n     4\t}", {"type": "text", "file": {"filePath": "/home/ana/src/widget/src/parse.rs", "content": "pub fn tokenize...", "numLines": 4, "startLine": 1, "totalLines": 4}}, src="a-004"))
R.append(env("progress", "p-001", "u-003", data={"type": "hook_progress", "hookEvent": "PostToolUse", "hookName": "PostToolUse:Read"}, parentToolUseID="toolu_01Read0001", toolUseID="toolu_01Read0001"))
R.append(asst("a-006", "p-001", "msg_01C", "req_01C", text("The tokenizer returns an Eof token for empty input; the test expects no tokens.")))
R.append(asst("a-007", "a-006", "msg_01C", "req_01C", use("toolu_01Edit0001", "Edit", {"file_path": "/home/ana/src/widget/src/parse.rs", "old_string": "if input.is_empty() { return vec![Token::Eof]; }", "new_string": "if input.is_empty() { return Vec::new(); }"}), stop="tool_use"))
R.append(result("u-005", "a-007", "toolu_01Edit0001", "The file /home/ana/src/widget/src/parse.rs has been updated successfully.", {"filePath": "/home/ana/src/widget/src/parse.rs", "oldString": "...", "newString": "...", "originalFile": "pub fn tokenize...", "structuredPatch": [], "userModified": False, "replaceAll": False}))
R.append(asst("a-008", "u-005", "msg_01D", "req_01D", use("toolu_01Bash0002", "Bash", {"command": "cargo test parse_empty_input", "description": "Re-run the test"}), stop="tool_use"))
R.append(result("u-006", "a-008", "toolu_01Bash0002", "running 1 test\ntest parser::parse_empty_input ... ok\n\ntest result: ok. 1 passed; 0 failed", {"stdout": "running 1 test\n...", "stderr": "", "interrupted": False, "isImage": False}))
R.append(asst("a-009", "u-006", "msg_01E", "req_01E", text("Fixed: the tokenizer now returns an empty Vec for \"\" and the test passes."), stop="end_turn"))
R.append(env("system", "s-001", "a-009", subtype="turn_duration", durationMs=31869, isMeta=False))
# Turn 2: secrets in the prompt, in a tool result and in arguments.
R.append(prompt("u-010", "s-001", "Check why the deploy fails. The CI uses the token ghp_R8x2Kq9LmN4pT7vW1yZ3aB5cD6eF8gH0jK2l to push."))
R.append(asst("a-010", "u-010", "msg_02A", "req_02A", use("toolu_01Read0010", "Read", {"file_path": "/home/ana/src/widget/.env"}), stop="tool_use"))
R.append(result("u-011", "a-010", "toolu_01Read0010", "     1\tDATABASE_URL=postgres://app:Sup3rS3cretPw@db.internal:5432/widget\n     2\tSTRIPE_SECRET_KEY=sk_live_51HxQzLmNoPqRsTuV\n     3\tAWS_ACCESS_KEY_ID=AKIAZ7QW3EXAMPLE9XYZ\n     4\tOPENAI_KEY_VALUE=sk-proj-Zq8Yx7Wv6Ut5Sr4Qp3On2Ml1Kj0Ih\n     5\t-----BEGIN RSA PRIVATE KEY-----\n     6\tMIIEowIBAAKCAQEAx9RkPl4Dummy\n     7\t-----END RSA PRIVATE KEY-----", {"type": "text", "file": {"filePath": "/home/ana/src/widget/.env", "content": "...", "numLines": 7, "startLine": 1, "totalLines": 7}}))
R.append(asst("a-011", "u-011", "msg_02B", "req_02B", use("toolu_01Bash0011", "Bash", {"command": "curl -s -H 'Authorization: Bearer xoxb-2291-Slack0Token9Value' https://ci.internal/api/runs", "description": "Ask CI for the last run"}), stop="tool_use"))
R.append(result("u-012", "a-011", "toolu_01Bash0011", "{\"status\": \"failed\", \"reason\": \"push rejected\"}", {"stdout": "...", "stderr": "", "interrupted": False, "isImage": False}))
R.append(asst("a-012", "u-012", "msg_02C", "req_02C", text("The push was rejected: the CI token lacks write access. Rotate it and store it as a CI secret, not in .env."), stop="end_turn"))
# Slash command wrappers and a meta caveat: not prompts.
R.append(env("user", "u-020", "a-012", isMeta=True, message={"role": "user", "content": "<local-command-caveat>Caveat: The messages below were generated by the user while running local commands. DO NOT respond to these messages.</local-command-caveat>"}))
R.append(env("user", "u-021", "u-020", message={"role": "user", "content": "<command-name>/model</command-name>\n<command-message>model</command-message>\n<command-args></command-args>"}))
R.append(env("user", "u-022", "u-021", message={"role": "user", "content": "<local-command-stdout>Set model to opus</local-command-stdout>"}))
# Turn 3: a pasted image.
R.append(prompt("u-023", "u-022", [{"type": "text", "text": "What does this screenshot of the error dialog show?"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="}}]))
R.append(asst("a-020", "u-023", "msg_03A", "req_03A", text("It shows \"unexpected end of input\" from the parser, raised before any token is read."), stop="end_turn"))
R.append('{"parentUuid":"a-020","type":"assistant","uuid":"a-bad","message":{"id":"msg_bad","content":[{"type":"text","text":"trunc')
# Turn 4, first attempt (abandoned by /rewind).
R.append(prompt("u-030", "a-020", "Rename parse_input to parse_line everywhere"))
R.append(asst("a-030", "u-030", "msg_04A", "req_04A", use("toolu_01Grep0030", "Grep", {"pattern": "parse_input", "output_mode": "files_with_matches"}), stop="tool_use"))
R.append(result("u-031", "a-030", "toolu_01Grep0030", "Found 3 files\nsrc/parse.rs\nsrc/main.rs\ntests/parse.rs", {"mode": "files_with_matches", "filenames": ["src/parse.rs"], "numFiles": 3}))
R.append(asst("a-031", "u-031", "msg_04B", "req_04B", text("ABANDONED BRANCH: renamed parse_input to parse_line in 3 files."), stop="end_turn"))
# Turn 4 again after /rewind: forks from a-020.
R.append(prompt("u-040", "a-020", "Actually, rename parse_input to read_line instead"))
R.append(asst("a-040", "u-040", "msg_05A", "req_05A", use("toolu_01Glob0040", "Glob", {"pattern": "src/**/*.rs"}), stop="tool_use"))
R.append(result("u-041", "a-040", "toolu_01Glob0040", "/home/ana/src/widget/src/main.rs\n/home/ana/src/widget/src/parse.rs", {"filenames": ["src/main.rs", "src/parse.rs"], "durationMs": 4, "numFiles": 2, "truncated": False}))
R.append(asst("a-041", "u-041", "msg_05B", "req_05B", text("parse_input is renamed to read_line in src/main.rs and src/parse.rs."), stop="end_turn"))
# Turn 5: a subagent (Task).
R.append(prompt("u-050", "a-041", "Review the parser module for panics, use a subagent"))
R.append(asst("a-050", "u-050", "msg_06A", "req_06A", use("toolu_01Task0050", "Task", {"description": "Find panics", "prompt": "Find every call that can panic in src/parse.rs", "subagent_type": "general-purpose"}), stop="tool_use"))
R.append(env("progress", "p-050", "a-050", data={"type": "agent_progress", "message": {"role": "user", "content": "Find every call that can panic in src/parse.rs"}}, parentToolUseID="toolu_01Task0050", toolUseID="agent_msg_1"))
R.append(result("u-051", "p-050", "toolu_01Task0050", [{"type": "text", "text": "Two calls can panic: unwrap() on line 12 and line 40 of src/parse.rs."}, {"type": "text", "text": "agentId: a4e80a2"}], {"status": "completed", "agentId": "a4e80a2", "content": [{"type": "text", "text": "Two calls can panic"}], "totalDurationMs": 8123, "totalTokens": 5120, "totalToolUseCount": 1, "prompt": "Find every call that can panic in src/parse.rs"}, src="a-050"))
R.append(asst("a-051", "u-051", "msg_06B", "req_06B", text("The subagent found two unwrap() calls (lines 12 and 40); both should return a ParseError."), stop="end_turn"))
# Turn 6: persisted large outputs, one re-inlined, one whose file is gone.
R.append(prompt("u-060", "a-051", "Show me the full build log and the old one"))
R.append(asst("a-060", "u-060", "msg_07A", "req_07A", use("toolu_01Persist0001", "Bash", {"command": "cat target/build.log", "description": "Show the build log"}), stop="tool_use"))
R.append(result("u-061", "a-060", "toolu_01Persist0001", "<persisted-output>\nOutput too large (512.3KB). Full output saved to: /home/ana/.claude/projects/-home-ana-src-widget/%s/tool-results/toolu_01Persist0001.txt\n\nPreview (first 2KB):\n   Compiling widget v0.3.1\n</persisted-output>" % S, {"stdout": "", "stderr": "", "interrupted": False, "isImage": False}))
R.append(asst("a-061", "u-061", "msg_07B", "req_07B", use("toolu_01Persist0002", "Bash", {"command": "cat target/old-build.log", "description": "Show the old log"}), stop="tool_use"))
R.append(result("u-062", "a-061", "toolu_01Persist0002", "<persisted-output>\nOutput too large (808.0KB). Full output saved to: /home/ana/.claude/projects/-home-ana-src-widget/%s/tool-results/toolu_01Persist0002.txt\n\nPreview (first 2KB):\n   Compiling widget v0.2.9\n</persisted-output>" % S, {"stdout": "", "stderr": "", "interrupted": False, "isImage": False}))
R.append(asst("a-062", "u-062", "msg_07C", "req_07C", text("The build finished with 2 warnings; the old log shows the same unused-import warning."), stop="end_turn"))
# Compaction: a new root pointing back, then the summary (not a prompt).
R.append({"parentUuid": None, "logicalParentUuid": "a-062", "isSidechain": False, "userType": "external", "cwd": CWD, "sessionId": S, "version": VER, "gitBranch": "main", "type": "system", "subtype": "compact_boundary", "content": "Conversation compacted", "isMeta": False, "timestamp": ts(), "uuid": "s-900", "level": "info", "compactMetadata": {"trigger": "manual", "preTokens": 156910}})
R.append(env("user", "u-901", "s-900", isCompactSummary=True, isVisibleInTranscriptOnly=True, message={"role": "user", "content": "This session is being continued from a previous conversation that ran out of context. Summary: the user fixed parse_empty_input and renamed parse_input."}))
# Turn 7: after compaction, on another branch of git.
p7 = prompt("u-070", "u-901", "Now add a test for read_line with unicode input")
p7["gitBranch"] = "feature/unicode"
R.append(p7)
a = asst("a-070", "u-070", "msg_08A", "req_08A", use("toolu_01Write0070", "Write", {"file_path": "/home/ana/src/widget/tests/unicode.rs", "content": "#[test]\nfn read_line_unicode() {\n    assert_eq!(widget::read_line(\"héllo wörld\").len(), 2);\n}\n"}), stop="tool_use"); a["gitBranch"] = "feature/unicode"; R.append(a)
r = result("u-071", "a-070", "toolu_01Write0070", "File created successfully at: /home/ana/src/widget/tests/unicode.rs", {"type": "create", "filePath": "/home/ana/src/widget/tests/unicode.rs", "content": "...", "structuredPatch": [], "originalFile": None}); r["gitBranch"] = "feature/unicode"; R.append(r)
a = asst("a-071", "u-071", "msg_08B", "req_08B", text("Added tests/unicode.rs with a read_line test on accented input."), stop="end_turn"); a["gitBranch"] = "feature/unicode"; R.append(a)
R.append({"type": "summary", "summary": "Fix empty-input parser and rename", "leafUuid": "a-071"})
# Turn 8: still being written; the tool result line is cut mid-write.
R.append(prompt("u-080", "a-071", "Run the whole test suite"))
R.append(asst("a-080", "u-080", "msg_09A", "req_09A", text("Running the full suite.")))
R.append(asst("a-081", "a-080", "msg_09A", "req_09A", use("toolu_01Bash0080", "Bash", {"command": "cargo test", "description": "Run all tests"}), stop="tool_use"))
tail = json.dumps(result("u-081", "a-081", "toolu_01Bash0080", "running 42 tests\ntest result: ok. 42 passed", {"stdout": "...", "stderr": "", "interrupted": False, "isImage": False}), separators=(",", ":"))
dump(os.path.join(proj, S + ".jsonl"), R, tail=tail[:120])
# The rest of the session, appended by the test.
rest = [tail[120:],
        json.dumps(asst("a-082", "u-081", "msg_09B", "req_09B", text("All 42 tests pass."), stop="end_turn"), separators=(",", ":")),
        json.dumps(prompt("u-090", "a-082", "Thanks, commit it"), separators=(",", ":")),
        json.dumps(asst("a-090", "u-090", "msg_10A", "req_10A", use("toolu_01Bash0090", "Bash", {"command": "git commit -am 'Fix empty input'", "description": "Commit"}), stop="tool_use"), separators=(",", ":")),
        json.dumps(result("u-091", "a-090", "toolu_01Bash0090", "[main 1a2b3c4] Fix empty input\n 2 files changed", {"stdout": "...", "stderr": "", "interrupted": False, "isImage": False}), separators=(",", ":")),
        json.dumps(asst("a-091", "u-091", "msg_10B", "req_10B", text("Committed as 1a2b3c4."), stop="end_turn"), separators=(",", ":"))]
with open(os.path.join(root, "append.jsonl.txt"), "w") as f:
    f.write("\n".join(rest) + "\n")

with open(os.path.join(proj, S, "tool-results", "toolu_01Persist0001.txt"), "w") as f:
    for i in range(40):
        f.write("   Compiling crate-%02d v1.0.%d\n" % (i, i))
    f.write("warning: unused import: `std::fmt`\nexport DEPLOY_TOKEN=dpl_9f8e7d6c5b4a3928\n    Finished `release` profile [optimized] target(s) in 41.2s\n")

# The subagent (newer layout).
A = "a4e80a2"
def side(rec):
    rec["isSidechain"] = True
    rec["agentId"] = A
    return rec
SA = [side(prompt("sa-001", None, "Find every call that can panic in src/parse.rs")),
      side(asst("sa-002", "sa-001", "msg_S1", "req_S1", think("Search for unwrap and expect."))),
      side(asst("sa-003", "sa-002", "msg_S1", "req_S1", use("toolu_01SubGrep01", "Grep", {"pattern": "unwrap\\(\\)|expect\\(", "path": "src/parse.rs", "output_mode": "content"}), stop="tool_use")),
      side(result("sa-004", "sa-003", "toolu_01SubGrep01", "12:    let n = s.parse::<u32>().unwrap();\n40:    let t = tokens.first().unwrap();", {"mode": "content", "numFiles": 1, "numLines": 2})),
      side(asst("sa-005", "sa-004", "msg_S2", "req_S2", text("Two calls can panic: unwrap() on line 12 and line 40 of src/parse.rs."), stop="end_turn"))]
dump(os.path.join(proj, S, "subagents", "agent-%s.jsonl" % A), SA)
# The internal compaction agent: skipped.
dump(os.path.join(proj, S, "subagents", "agent-acompact-7f1c2d.jsonl"),
     [side(prompt("ac-001", None, "Summarise the conversation so far")),
      side(asst("ac-002", "ac-001", "msg_AC", "req_AC", text("COMPACTION AGENT OUTPUT"), stop="end_turn"))])

# An older session: subagent file beside the session, a duplicated line, an API error placeholder.
S2 = "9d3e5a71-0b6c-4d2e-8f1a-6c5b4a392817"
P2 = "-home-ana-src-legacy"
proj2 = os.path.join(root, "projects", P2)
os.makedirs(proj2, exist_ok=True)
CWD = "/home/ana/src/legacy"; VER = "1.0.98"; S = S2
L = []
L.append(prompt("l-001", None, "Where is the retry logic for HTTP requests?"))
L.append(asst("l-002", "l-001", "msg_L1", "req_L1", use("toolu_01LegTask1", "Task", {"description": "Find retry logic", "prompt": "Locate the HTTP retry logic", "subagent_type": "Explore"}), stop="tool_use"))
L.append(result("l-003", "l-002", "toolu_01LegTask1", [{"type": "text", "text": "Retries live in net/client.py: with_retry()."}], {"status": "completed", "agentId": "b71c9f0", "content": [], "totalDurationMs": 5000, "totalTokens": 900, "totalToolUseCount": 1}))
err = asst("l-004", "l-003", "msg_ERR", "req_ERR", text("API Error: 529 Overloaded"), stop="stop_sequence", isApiErrorMessage=True)
err["message"]["model"] = "<synthetic>"
L.append(err)
L.append(asst("l-005", "l-004", "msg_L2", "req_L2", text("The retry logic is in net/client.py, in with_retry()."), stop="end_turn"))
L.append(L[-1])  # duplicated line, as resume bugs write
L.append('"just a string"')
dump(os.path.join(proj2, S2 + ".jsonl"), L)
B = "b71c9f0"
def side2(rec):
    rec["isSidechain"] = True
    rec["agentId"] = B
    return rec
LA = [side2(prompt("lb-001", None, "Locate the HTTP retry logic")),
      side2(asst("lb-002", "lb-001", "msg_LB1", "req_LB1", use("toolu_01LegGrep1", "Grep", {"pattern": "retry", "output_mode": "files_with_matches"}), stop="tool_use")),
      side2(result("lb-003", "lb-002", "toolu_01LegGrep1", "Found 1 file\nnet/client.py", {"mode": "files_with_matches", "filenames": ["net/client.py"], "numFiles": 1})),
      side2(asst("lb-004", "lb-003", "msg_LB2", "req_LB2", text("Retries live in net/client.py: with_retry()."), stop="end_turn"))]
dump(os.path.join(proj2, "agent-%s.jsonl" % B), LA)
# Not a transcript: ignored.
with open(os.path.join(proj2, "sessions-index.json"), "w") as f:
    json.dump({"version": 1, "originalPath": CWD, "entries": []}, f)

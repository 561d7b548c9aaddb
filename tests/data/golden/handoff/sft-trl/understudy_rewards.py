"""Understudy's reward function and tool environment for TRL's GRPOTrainer. Nothing is scored
here: every completion goes to a running `understudy serve` (POST /api/rewards/score), which
replays the model's tool calls in the case's sandbox workspace and returns the same named
components and total as Understudy's own RL. In multi-turn mode the tools themselves run there
too (POST /api/rewards/environment), so the sandbox stays the single source of truth.

The server's address comes from handoff.json (rewards.url), or UNDERSTUDY_URL; an API key, when
the server needs one, from UNDERSTUDY_API_KEY."""
import json
import os
import urllib.error
import urllib.request

from understudy_handoff import load_handoff

_HANDOFF = load_handoff()
_REWARDS = _HANDOFF["rewards"]
URL = os.environ.get("UNDERSTUDY_URL", _REWARDS["url"]).rstrip("/")


def _post(endpoint, body):
    request = urllib.request.Request(URL + endpoint, data=json.dumps(body).encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json"})
    key = os.environ.get("UNDERSTUDY_API_KEY")
    if key:
        request.add_header("Authorization", "Bearer " + key)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{URL}{endpoint} answered {error.code}: {error.read().decode('utf-8', 'replace')}")
    except urllib.error.URLError as error:
        raise RuntimeError(f"{URL}{endpoint}: {error.reason} (is `understudy serve` running? set UNDERSTUDY_URL)")


_TOKENIZER = None


def use_tokenizer(tokenizer):
    """Decode completions from their token ids with the special tokens kept: TRL's text drops
    them, and with them the <tool_call> tags the calls are parsed by."""
    global _TOKENIZER
    _TOKENIZER = tokenizer


def _raw_text(ids):
    """The completion as the model wrote it, up to its end-of-turn token; and whether it had one
    (TRL's completion ids stop at the end of turn, padding removed)."""
    ends = list(_HANDOFF["dataset"]["template"]["end_of_turn"]) + [_TOKENIZER.eos_token]
    end_ids = {_TOKENIZER.convert_tokens_to_ids(token) for token in ends if token}
    ids = list(ids)
    for index, token in enumerate(ids):
        if token in end_ids:
            return _TOKENIZER.decode(ids[:index], skip_special_tokens=False), True
    return _TOKENIZER.decode(ids, skip_special_tokens=False), False


def _request(case, completion, tokens=None, truncated=False):
    body = {"case": json.loads(case) if isinstance(case, str) else case, "template": _REWARDS["template"],
            "weights": _REWARDS["weights"], "token_budget": _REWARDS["token_budget"]}
    if isinstance(completion, str):
        body["completion"] = completion
    else:
        body["messages"] = completion
    if tokens is not None:
        body["reply_tokens"] = [tokens]
    if truncated:
        body["truncated"] = True
    return body


def score(case, completion, tokens=None, truncated=False):
    """The full answer of /api/rewards/score for one completion: total, gated, components..."""
    return _post("/api/rewards/score", _request(case, completion, tokens, truncated))


def understudy_reward(prompts, completions, case, completion_ids=None, log_metric=None, **kwargs):
    """TRL reward function: Understudy's weighted reward for each completion of its case."""
    rewards = []
    components = {}
    for index, (completion, one_case) in enumerate(zip(completions, case)):
        tokens, truncated = None, False
        if completion_ids is not None and isinstance(completion, str):
            tokens = len(completion_ids[index])
            if _TOKENIZER is not None:
                completion, finished = _raw_text(completion_ids[index])
                truncated = not finished
        result = score(one_case, completion, tokens, truncated)
        rewards.append(result["total"])
        for name, value in result["components"].items():
            components.setdefault(name, []).append(value)
    if log_metric is not None:
        for name, values in components.items():
            log_metric(f"understudy/{name}", sum(values) / len(values))
    return rewards


class UnderstudyEnvironment:
    """Multi-turn tool environment: one instance per rollout; each tool call is replayed with the
    rollout's earlier calls in the case's sandbox on the Understudy server."""

    def reset(self, case, **kwargs):
        self.case = json.loads(case) if isinstance(case, str) else case
        self.replies = []
        return None

    def _call(self, name, arguments):
        arguments = {k: v for k, v in arguments.items() if v is not None}
        self.replies.append({"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}]})
        body = _request(self.case, self.replies)
        answer = _post("/api/rewards/environment", body)
        return "\n".join(message["content"] for message in answer["tool_messages"])

    def Read(self, file_path: str, offset: int = None, limit: int = None) -> str:
        """Read a file. Lines are numbered from 1; offset and limit select a range.

        Args:
            file_path: Path of the file
            offset: First line to read (1-based)
            limit: Number of lines to read
        """
        return self._call("Read", {"file_path": file_path, "offset": offset, "limit": limit})

    def Write(self, file_path: str, content: str) -> str:
        """Create or overwrite a file with the given content.

        Args:
            file_path: Path of the file
            content: The new content
        """
        return self._call("Write", {"file_path": file_path, "content": content})

    def Edit(self, file_path: str, old_string: str, new_string: str, replace_all: bool = None) -> str:
        """Replace an exact string in a file. old_string must match exactly once unless replace_all is true.

        Args:
            file_path: Path of the file
            old_string: The text to replace
            new_string: The replacement
            replace_all: Replace every occurrence
        """
        return self._call("Edit", {"file_path": file_path, "old_string": old_string, "new_string": new_string,
                                   "replace_all": replace_all})

    def Grep(self, pattern: str, path: str = None, glob: str = None, output_mode: str = None,
             case_insensitive: bool = None) -> str:
        """Search file contents with a regular expression.

        Args:
            pattern: Regular expression
            path: File or directory to search (default: the workspace)
            glob: Only files whose name matches this glob
            output_mode: content, files_with_matches or count
            case_insensitive: Ignore case
        """
        return self._call("Grep", {"pattern": pattern, "path": path, "glob": glob, "output_mode": output_mode,
                                   "case_insensitive": case_insensitive})

    def Glob(self, pattern: str, path: str = None) -> str:
        """List files whose path matches a glob pattern.

        Args:
            pattern: Glob pattern such as **/*.py
            path: Directory to search in
        """
        return self._call("Glob", {"pattern": pattern, "path": path})

    def Bash(self, command: str) -> str:
        """Run a shell command in the workspace (read-only commands, git and the test suite).

        Args:
            command: The command line
        """
        return self._call("Bash", {"command": command})

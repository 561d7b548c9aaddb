// The Playground: a chat with a served model over POST /v1/chat/completions, streamed (SSE).
// The conversation is kept as OpenAI messages; tool calls are shown with their arguments and
// the user writes each tool's result, which is sent back as a `tool` message. Each reply can be
// rated through the feedback API: thumbs up (stored as a trace), thumbs down (kept as feedback),
// or edited and saved as the preferred answer (a preference pair).
(function () {
  "use strict";

  const byId = (id) => document.getElementById(id);
  const form = byId("playground");
  if (!form) return;
  const conversation = byId("conversation");
  const errorBox = byId("chat-error");
  const toolsBox = byId("tools-json");
  const sendButton = byId("send");
  const defaultTools = byId("tools").textContent.trim();

  let messages = []; // user, assistant and tool messages; the system prompt is added per request
  let controller = null; // aborts the request in flight on "New chat"

  toolsBox.value = defaultTools;

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function bubble(role, label) {
    const node = element("div", "message " + role);
    node.append(element("header", null, label || role));
    conversation.append(node);
    return node;
  }

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = !text;
  }

  function prettyArguments(text) {
    try {
      return JSON.stringify(JSON.parse(text), null, 2);
    } catch (_) {
      return text; // still streaming, or not JSON: show it as it came
    }
  }

  function toolCallBlock(call) {
    const block = element("div", "tool-call");
    block.append(element("span", "tool-name", call.function.name), element("pre", "arguments", prettyArguments(call.function.arguments)));
    return block;
  }

  // One text box and button per call; the conversation continues once every call has a result.
  function toolResultForms(node, calls) {
    let pending = calls.length;
    for (const call of calls) {
      const box = element("div", "tool-result");
      const label = element("label", null, "tool result for " + call.function.name);
      const input = element("textarea");
      input.rows = 2;
      const button = element("button", null, "Send result");
      button.type = "button";
      button.addEventListener("click", () => {
        messages.push({ role: "tool", tool_call_id: call.id, content: input.value });
        box.remove();
        bubble("tool", "tool · " + call.function.name).append(element("pre", null, input.value));
        pending -= 1;
        if (pending === 0) complete();
      });
      label.append(input);
      box.append(label, button);
      node.append(box);
    }
  }

  function request() {
    const all = [];
    const system = byId("system-prompt").value.trim();
    if (system) all.push({ role: "system", content: system });
    const body = {
      model: byId("model").value,
      messages: all.concat(messages),
      stream: true,
      stream_options: { include_usage: true },
      temperature: Number(byId("temperature").value || 0),
      max_tokens: Number(byId("max-tokens").value || 512),
    };
    if (byId("use-tools").checked) {
      try {
        body.tools = JSON.parse(toolsBox.value);
      } catch (error) {
        throw new Error("Tools (JSON) is not valid JSON: " + error.message);
      }
    }
    return body;
  }

  function authHeaders() {
    const headers = { "Content-Type": "application/json" };
    const key = byId("api-key").value.trim();
    if (key) headers.Authorization = "Bearer " + key;
    return headers;
  }

  // POST one rating; the status line says what was stored, or the API's error message.
  async function sendFeedback(url, payload, status, buttons) {
    status.textContent = "saving…";
    buttons.forEach((b) => (b.disabled = true));
    try {
      const response = await fetch(url, { method: "POST", headers: authHeaders(), body: JSON.stringify(payload) });
      if (!response.ok) throw new Error(await errorOf(response));
      const stored = await response.json();
      const links = [];
      if (stored.trace_id) links.push("trace " + stored.trace_id);
      if (stored.pair_id) links.push("pair " + stored.pair_id);
      status.textContent = "saved: " + stored.rating + (links.length ? " (" + links.join(", ") + ")" : " (feedback " + stored.id + ")");
      status.classList.remove("error");
      return true;
    } catch (error) {
      status.textContent = error.message;
      status.classList.add("error");
      return false;
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  }

  // Thumbs up, thumbs down and "edit and save as preferred" under one finished reply.
  function feedbackControls(node, asked, message, reply) {
    const box = element("div", "feedback");
    const up = element("button", "thumbs-up", "👍");
    const down = element("button", "thumbs-down", "👎");
    const edit = element("button", "edit-preferred", "Edit and save as preferred");
    const status = element("span", "feedback-status muted");
    up.title = "Good reply: store this conversation as a training trace";
    down.title = "Bad reply: keep it as feedback (not trained on)";
    const buttons = [up, down, edit];
    buttons.forEach((b) => (b.type = "button"));
    const base = { model: reply.model || byId("model").value, version: reply.version, messages: asked.messages, reply: message };
    if (asked.tools) base.tools = asked.tools;
    up.addEventListener("click", () => sendFeedback("/api/feedback", Object.assign({ rating: "up" }, base), status, buttons));
    down.addEventListener("click", () => sendFeedback("/api/feedback", Object.assign({ rating: "down" }, base), status, buttons));
    edit.addEventListener("click", () => {
      if (box.querySelector(".edit-form")) return;
      const form = element("div", "edit-form");
      const contentLabel = element("label", null, "preferred reply");
      const content = element("textarea", "edit-content");
      content.rows = 3;
      content.value = message.content || "";
      contentLabel.append(content);
      form.append(contentLabel);
      let callsBox = null;
      if (message.tool_calls) {
        const callsLabel = element("label", null, "preferred tool calls (JSON, OpenAI tool_calls; [] for none)");
        callsBox = element("textarea", "edit-tool-calls");
        callsBox.rows = 6;
        callsBox.spellcheck = false;
        callsBox.value = JSON.stringify(message.tool_calls, null, 2);
        callsLabel.append(callsBox);
        form.append(callsLabel);
      }
      const save = element("button", "save-preferred", "Save as preferred");
      save.type = "button";
      save.addEventListener("click", async () => {
        const edited = { role: "assistant", content: content.value.trim() || null };
        if (callsBox) {
          try {
            const calls = JSON.parse(callsBox.value || "[]");
            if (calls.length) edited.tool_calls = calls;
          } catch (error) {
            status.textContent = "preferred tool calls are not valid JSON: " + error.message;
            status.classList.add("error");
            return;
          }
        }
        const saved = await sendFeedback("/api/feedback/preferred", Object.assign({ edited }, base), status, buttons.concat([save]));
        if (saved) form.remove();
      });
      form.append(save);
      box.insertBefore(form, status);
    });
    box.append(up, down, edit, status);
    node.append(box);
  }

  async function errorOf(response) {
    const text = await response.text();
    try {
      return response.status + ": " + JSON.parse(text).error.message;
    } catch (_) {
      return response.status + ": " + (text || response.statusText);
    }
  }

  // Calls `onChunk` with each parsed `data:` event until `[DONE]` or the end of the stream.
  async function readEvents(response, onChunk) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return;
          onChunk(JSON.parse(data));
        }
      }
    }
  }

  // Ask the model to continue the conversation and stream its reply into a new bubble.
  async function complete() {
    showError("");
    sendButton.disabled = true;
    const node = bubble("assistant");
    const content = element("pre", "content");
    const callsBox = element("div", "tool-calls");
    const meta = element("p", "muted reply-meta");
    node.append(content, callsBox, meta);
    const reply = { text: "", calls: [], finish: null, usage: null, version: null, model: null };
    const mine = (controller = new AbortController());
    let asked = null;
    try {
      asked = request();
      const response = await fetch("/v1/chat/completions", { method: "POST", headers: authHeaders(), body: JSON.stringify(asked), signal: mine.signal });
      if (!response.ok) throw new Error(await errorOf(response));
      await readEvents(response, (chunk) => {
        if (chunk.error) throw new Error(chunk.error.message);
        reply.version = chunk.system_fingerprint || reply.version;
        reply.model = chunk.model || reply.model;
        if (chunk.usage) reply.usage = chunk.usage;
        const choice = (chunk.choices || [])[0];
        if (!choice) return;
        const delta = choice.delta || {};
        if (delta.content) {
          reply.text += delta.content;
          content.textContent = reply.text;
        }
        for (const piece of delta.tool_calls || []) {
          const call = (reply.calls[piece.index] ||= { id: "", type: "function", function: { name: "", arguments: "" } });
          if (piece.id) call.id = piece.id;
          if (piece.function && piece.function.name) call.function.name = piece.function.name;
          if (piece.function && piece.function.arguments) call.function.arguments += piece.function.arguments;
          callsBox.replaceChildren(...reply.calls.filter(Boolean).map(toolCallBlock));
        }
        if (choice.finish_reason) reply.finish = choice.finish_reason;
      });
    } catch (error) {
      if (mine.signal.aborted) return;
      showError(error.message);
      node.classList.add("failed");
      meta.textContent = "no reply";
      return;
    } finally {
      if (controller === mine) {
        controller = null;
        sendButton.disabled = false;
      }
    }
    if (!reply.text) content.remove();
    const calls = reply.calls.filter(Boolean);
    const message = { role: "assistant", content: reply.text || null };
    if (calls.length) message.tool_calls = calls;
    messages.push(message);
    const facts = ["finish: " + (reply.finish || "none")];
    if (reply.usage) facts.push(reply.usage.prompt_tokens + " prompt + " + reply.usage.completion_tokens + " completion tokens");
    if (reply.version) facts.push((reply.model || "model") + " " + reply.version);
    meta.textContent = facts.join(" · ");
    feedbackControls(node, asked, message, reply);
    if (calls.length) toolResultForms(node, calls);
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const box = byId("message");
    const text = box.value.trim();
    if (!text || controller) return;
    messages.push({ role: "user", content: text });
    bubble("user").append(element("pre", null, text));
    box.value = "";
    complete();
  });

  byId("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
  });

  byId("new-chat").addEventListener("click", () => {
    if (controller) controller.abort();
    controller = null;
    sendButton.disabled = false;
    messages = [];
    conversation.replaceChildren();
    showError("");
  });

  byId("reset-tools").addEventListener("click", () => {
    toolsBox.value = defaultTools;
  });
})();

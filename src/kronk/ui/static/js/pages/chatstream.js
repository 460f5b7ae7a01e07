// One streamed answer from /v1/chat/completions: content rendered as Markdown as it
// arrives, reasoning folded, tool calls as cards, tokens and speed at the end.
import { events } from "../api.js";
import { h } from "../dom.js";
import { renderMarkdown } from "../markdown.js";

export function messageView(message) {
  const body = h("div", { class: "content" });
  const reasoning = h("details", { class: "reasoning", hidden: !message.reasoning },
    h("summary", {}, "Reasoning"), h("div", { class: "reasoning-text" }));
  const tools = h("div", { class: "tool-calls" });
  const footer = h("footer", { class: "muted answer-stats" });
  const el = h("article", { class: `message ${message.role}`, dataset: { role: message.role } },
    h("header", {}, message.role), reasoning, body, tools, footer);
  const view = { el, update: () => paint(view, message), body, reasoning, tools, footer };
  view.update();
  return view;
}

function paint(view, m) {
  if (m.role === "assistant") view.body.innerHTML = renderMarkdown(m.content || ""); // escaped inside
  else view.body.textContent = m.content || "";
  view.reasoning.hidden = !m.reasoning;
  view.reasoning.querySelector(".reasoning-text").textContent = m.reasoning || "";
  view.tools.replaceChildren(...(m.tool_calls || []).map(toolCard));
  view.footer.textContent = m.stats ? statsText(m.stats) : "";
}

function toolCard(call) {
  let args = call.function.arguments || "";
  try { args = JSON.stringify(JSON.parse(args), null, 2); } catch { /* still streaming: raw */ }
  return h("div", { class: "tool-card", role: "group", "aria-label": `Tool call ${call.function.name}` },
    h("div", { class: "tool-name" }, "Tool call: ", h("code", {}, call.function.name || "…")),
    h("pre", {}, args), call.id ? h("small", { class: "muted" }, call.id) : null);
}

function statsText(s) {
  const parts = [`${s.completion_tokens} tokens`];
  if (s.tokens_per_second) parts.push(`${s.tokens_per_second.toFixed(1)} tokens/s`);
  if (s.time_to_first_token) parts.push(`first token ${(s.time_to_first_token * 1000).toFixed(0)} ms`);
  if (s.prompt_tokens) parts.push(`prompt ${s.prompt_tokens} tokens`);
  if (s.stopped) parts.push("stopped");
  if (s.finish_reason) parts.push(`finish: ${s.finish_reason}`);
  return parts.join(" · ");
}

// Streams one answer into `message` (mutated in place) and repaints `view` per frame.
export async function streamAnswer(request, message, view, signal) {
  const started = performance.now();
  let first = null;
  let chunks = 0;
  let pending = false;
  const repaint = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; view.update(); });
  };
  try {
    for await (const { data } of events("/v1/chat/completions", request, signal)) {
      if (data.usage) {
        message.stats = { ...data.usage, finish_reason: message.stats && message.stats.finish_reason };
      }
      const choice = data.choices && data.choices[0];
      if (!choice) continue;
      const d = choice.delta || {};
      if (d.content || d.reasoning_content || d.tool_calls) {
        chunks += 1;
        if (first === null) first = performance.now();
      }
      if (d.content) message.content = (message.content || "") + d.content;
      if (d.reasoning_content) message.reasoning = (message.reasoning || "") + d.reasoning_content;
      for (const t of d.tool_calls || []) {
        message.tool_calls = message.tool_calls || [];
        const call = message.tool_calls[t.index] ||= { id: t.id, type: "function", function: { name: "", arguments: "" } };
        if (t.id) call.id = t.id;
        if (t.function && t.function.name) call.function.name += t.function.name;
        if (t.function && t.function.arguments) call.function.arguments += t.function.arguments;
      }
      if (choice.finish_reason) message.stats = { ...(message.stats || {}), finish_reason: choice.finish_reason };
      repaint();
    }
  } catch (err) {
    if (!signal.aborted) throw err;
    // Stopped: no usage chunk comes, so count what arrived (a chunk is about a token).
    const seconds = first !== null ? (performance.now() - first) / 1000 : 0;
    message.stats = {
      completion_tokens: chunks,
      tokens_per_second: seconds > 0 ? chunks / seconds : 0,
      time_to_first_token: first !== null ? (first - started) / 1000 : 0,
      stopped: true,
    };
  } finally {
    view.update();
  }
}

// Chat playground: model, system prompt, samplers, tools; streamed answers with a stop
// button; conversations kept in localStorage and exportable as JSON; and a
// fill-in-the-middle pane on /v1/completions with `suffix`.
import { get } from "../api.js";
import { h, field, toast } from "../dom.js";
import { messageView, streamAnswer } from "./chatstream.js";
import { fimPane } from "./fim.js";

const STORE_KEY = "kronk.conversations";
// Sampler inputs: name, label, step, placeholder (empty = the model's default).
const PARAMS = [
  ["temperature", "Temperature", "0.05"], ["top_p", "Top p", "0.01"], ["top_k", "Top k", "1"],
  ["min_p", "Min p", "0.01"], ["max_tokens", "Max tokens", "1", "256"], ["seed", "Seed", "1"],
  ["dry_multiplier", "DRY multiplier", "0.05"], ["dry_base", "DRY base", "0.05"],
  ["dry_allowed_length", "DRY allowed length", "1"], ["xtc_probability", "XTC probability", "0.01"],
  ["xtc_threshold", "XTC threshold", "0.01"],
];

const load = () => { try { return JSON.parse(localStorage.getItem(STORE_KEY)) || []; } catch { return []; } };
const save = (all) => localStorage.setItem(STORE_KEY, JSON.stringify(all));
const newConversation = () => ({ id: `c${Date.now()}`, title: "New conversation", created: Date.now(), messages: [] });

export async function render(main) {
  const state = { all: load(), controller: null };
  if (!state.all.length) state.all.push(newConversation());
  state.current = state.all[0];

  const model = h("select", { name: "model" });
  const wanted = new URLSearchParams(location.hash.split("?")[1] || "").get("model");
  const { data } = await get("/v1/models");
  for (const m of data) model.append(h("option", { value: m.id, selected: m.id === wanted }, m.id));
  if (!data.length) model.append(h("option", { value: "" }, "no models: pull one first"));

  const system = h("textarea", { name: "system", rows: 3, placeholder: "You are a helpful assistant." });
  const params = Object.fromEntries(PARAMS.map(([name, , step, value]) =>
    [name, h("input", { type: "number", name, step, value: value || null, placeholder: value ? null : "default" })]));
  const tools = h("textarea", { name: "tools", rows: 4, spellcheck: "false",
    placeholder: '[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]' });
  const toolChoice = h("input", { name: "tool_choice", placeholder: "auto, none, required or a tool's name" });

  const log = h("div", { class: "log", role: "log", "aria-label": "Conversation", "aria-live": "polite" });
  const input = h("textarea", { name: "message", rows: 3, required: true, placeholder: "Ask something (Ctrl+Enter sends)" });
  const send = h("button", { type: "submit" }, "Send");
  const stop = h("button", { type: "button", class: "danger", disabled: true }, "Stop");
  const convList = h("ul", { class: "conversations", "aria-label": "Conversations" });

  const paintConversations = () => convList.replaceChildren(...state.all.map((c) => h("li", {},
    h("button", { class: c === state.current ? "link current" : "link", "aria-current": c === state.current ? "true" : null,
      onclick: () => { state.current = c; paintAll(); } }, c.title))));
  const paintLog = () => log.replaceChildren(...state.current.messages.map((m) => messageView(m).el));
  const paintAll = () => { paintConversations(); paintLog(); };

  function requestBody() {
    const body = { model: model.value, stream: true, stream_options: { include_usage: true }, messages: [] };
    if (system.value.trim()) body.messages.push({ role: "system", content: system.value.trim() });
    for (const m of state.current.messages) {
      const item = { role: m.role, content: m.content || "" };
      if (m.tool_calls && m.tool_calls.length) item.tool_calls = m.tool_calls;
      body.messages.push(item);
      // The playground does not run tools: say so, so the conversation can go on.
      for (const call of m.tool_calls || []) {
        body.messages.push({ role: "tool", tool_call_id: call.id, content: "(the playground does not run tools)" });
      }
    }
    for (const [name, el] of Object.entries(params)) if (el.value !== "") body[name] = Number(el.value);
    if (tools.value.trim()) {
      body.tools = JSON.parse(tools.value); // a SyntaxError is shown to the user below
      const choice = toolChoice.value.trim();
      if (["auto", "none", "required"].includes(choice)) body.tool_choice = choice;
      else if (choice) body.tool_choice = { type: "function", function: { name: choice } };
    }
    return body;
  }

  async function ask(event) {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || state.controller) return;
    let body;
    state.current.messages.push({ role: "user", content: text });
    try { body = requestBody(); } catch (err) {
      state.current.messages.pop();
      toast(`tools: ${err.message}`, "error");
      return;
    }
    if (state.current.title === "New conversation") state.current.title = text.slice(0, 40);
    input.value = "";
    const answer = { role: "assistant", content: "", model: model.value };
    state.current.messages.push(answer);
    paintAll();
    const view = messageView(answer);
    log.lastElementChild.replaceWith(view.el);
    state.controller = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    try {
      await streamAnswer(body, answer, view, state.controller.signal);
    } catch (err) {
      answer.content = (answer.content || "") + `\n\n**Error:** ${err.message}`;
      view.update();
    } finally {
      state.controller = null;
      send.disabled = false;
      stop.disabled = true;
      save(state.all);
      paintConversations();
      input.focus();
    }
  }

  stop.addEventListener("click", () => state.controller && state.controller.abort());
  input.addEventListener("keydown", (e) => { if (e.key === "Enter" && e.ctrlKey) form.requestSubmit(); });
  const form = h("form", { class: "composer", "aria-label": "Send a message", onsubmit: ask },
    field("Message", input), h("div", { class: "row" }, send, stop));

  const exportButton = h("button", { class: "secondary", onclick: () => {
    const blob = new Blob([JSON.stringify(state.all, null, 2)], { type: "application/json" });
    const a = h("a", { href: URL.createObjectURL(blob), download: "kronk-conversations.json" });
    a.click();
    URL.revokeObjectURL(a.href);
  } }, "Export JSON");
  const sidebar = h("aside", { class: "sidebar", "aria-label": "Conversations" },
    h("div", { class: "row" },
      h("button", { onclick: () => { state.current = newConversation(); state.all.unshift(state.current); save(state.all); paintAll(); } }, "New"),
      exportButton,
      h("button", { class: "danger", onclick: () => {
        state.all = state.all.filter((c) => c !== state.current);
        if (!state.all.length) state.all.push(newConversation());
        state.current = state.all[0];
        save(state.all);
        paintAll();
      } }, "Delete")),
    convList);

  const settings = h("form", { class: "settings", "aria-label": "Chat settings", onsubmit: (e) => e.preventDefault() },
    field("Model", model), field("System prompt", system),
    h("fieldset", {}, h("legend", {}, "Sampling"),
      h("div", { class: "params" }, ...PARAMS.map(([name, label]) => field(label, params[name])))),
    h("details", {}, h("summary", {}, "Tools"),
      field("Tools (JSON, OpenAI format)", tools), field("Tool choice", toolChoice)));

  main.append(h("h1", {}, "Chat"),
    h("div", { class: "chat-layout" }, sidebar,
      h("section", { class: "chat-main", "aria-label": "Chat" }, log, form),
      settings),
    fimPane(() => model.value));
  paintAll();
  return () => state.controller && state.controller.abort();
}

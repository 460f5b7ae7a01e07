// Running: loaded models live (slots, KV cache, context, idle-unload countdown, unload),
// speeds from the live stats, and decode tokens/s by context size from /metrics.
import { events, get, post, formatBytes, formatSeconds } from "../api.js";
import { h, toast } from "../dom.js";

export async function render(main) {
  const list = h("div", { id: "running-list" }, h("p", { class: "muted" }, "connecting…"));
  const chart = h("div", { id: "speed-chart", class: "chart" });
  main.append(h("h1", {}, "Running"), list,
    h("section", { "aria-label": "Speed by context size" },
      h("h2", {}, "Decode tokens/s by context size"), chart));
  const controller = new AbortController();
  let lastChart = 0;
  (async () => {
    try {
      for await (const { data } of events("/manage/running/events?interval=1", undefined, controller.signal)) {
        list.replaceChildren(...(data.models.length ? data.models.map(card)
          : [h("p", {}, "No model is loaded. One loads on its first request (try the Chat page).")]));
        if (Date.now() - lastChart > 5000) { // metrics change slowly; parse them less often
          lastChart = Date.now();
          drawChart(chart, await get("/metrics"));
        }
      }
    } catch (err) {
      if (!controller.signal.aborted) list.replaceChildren(h("p", { class: "error" }, err.message));
    }
  })();
  return () => controller.abort();
}

function stat(label, value) {
  return h("div", { class: "stat" }, h("span", { class: "muted" }, label), h("strong", {}, value));
}

// What a slot is doing, from the engine's per-slot state.
export function slotDoing(s) {
  if (s.state === "prefilling") return `prefilling ${s.done}/${s.total} prompt tokens`;
  if (s.state === "generating") return `generating (${s.generated} tokens so far)`;
  if (s.state === "cached") return `idle, holding ${s.tokens} tokens`;
  return "idle";
}

function card(m) {
  const countdown = m.status !== "ready" ? `loading ${Math.round(m.progress * 100)}%`
    : m.unload_in === null ? (m.leases ? "in use" : "kept loaded") : `unloads in ${formatSeconds(m.unload_in)}`;
  const slots = h("ol", { class: "slots", "aria-label": `Slots of ${m.id}` }, ...m.slot_detail.map((s) =>
    h("li", { dataset: { state: s.state } },
      h("meter", { min: 0, max: 1, value: s.fill, "aria-label": `slot ${s.slot} context use` }),
      ` slot ${s.slot}: `, h("strong", { class: `slot-state` }, slotDoing(s)),
      ` · ${s.tokens} tokens in KV (${formatBytes(s.kv_bytes)})`)));
  const unload = h("button", { class: "secondary", "aria-label": `Unload ${m.id}`, onclick: async () => {
    try { await post("/manage/unload", { model: m.id }); toast(`unloaded ${m.id}`); }
    catch (err) { toast(err.message, "error"); }
  } }, "Unload");
  return h("article", { class: "card", dataset: { model: m.id } },
    h("h2", {}, m.id, " ", h("small", { class: "muted" }, countdown)),
    h("div", { class: "stats" },
      stat("slots busy", `${m.slots_in_use} of ${m.slots}`),
      stat("queued", m.queued),
      stat("context per slot", `${m.n_ctx} tokens`),
      stat("KV cache", `${formatBytes(m.kv_cache_used_bytes ?? 0)} of ${formatBytes(m.kv_cache_bytes)}`),
      stat("memory", formatBytes(m.memory_bytes)),
      stat("tokens/s", (m.tokens_per_second ?? 0).toFixed(1)),
      stat("time to first token", `${((m.time_to_first_token ?? 0) * 1000).toFixed(0)} ms`),
      stat("requests", m.requests_total)),
    slots, unload);
}

// Mean decode speed per (model, context bucket) from the Prometheus histogram's _sum/_count.
export function speedsByContext(text) {
  const sums = new Map();
  const re = /^kronk_decode_tokens_per_second_(sum|count)\{([^}]*)\}\s+([0-9.eE+-]+)/gm;
  for (const [, kind, labels, value] of text.matchAll(re)) {
    const model = (labels.match(/model="([^"]*)"/) || [])[1];
    const context = (labels.match(/context="([^"]*)"/) || [])[1];
    const key = `${model} · ${context}`;
    const entry = sums.get(key) || { sum: 0, count: 0 };
    entry[kind] = Number(value);
    sums.set(key, entry);
  }
  return [...sums].filter(([, v]) => v.count > 0).map(([key, v]) => ({ key, speed: v.sum / v.count }));
}

function drawChart(el, text) {
  const rows = speedsByContext(text);
  if (!rows.length) {
    el.replaceChildren(h("p", { class: "muted" }, "No requests finished yet."));
    return;
  }
  const max = Math.max(...rows.map((r) => r.speed));
  el.replaceChildren(h("table", { class: "bars", "aria-label": "Decode tokens per second by context size" },
    ...rows.map((r) => h("tr", {},
      h("th", { scope: "row" }, r.key),
      h("td", {}, h("span", { class: "bar", style: `width:${(80 * r.speed) / max}%` }), ` ${r.speed.toFixed(1)}`)))));
}

// Fill in the middle: prefix and suffix in, the middle out (/v1/completions + suffix).
import { events } from "../api.js";
import { h, field } from "../dom.js";

export function fimPane(currentModel) {
  const prefix = h("textarea", { name: "prefix", rows: 6, spellcheck: "false", class: "mono" }, "def add(a, b):\n    ");
  const suffix = h("textarea", { name: "suffix", rows: 6, spellcheck: "false", class: "mono" }, "\n\nprint(add(1, 2))\n");
  const middle = h("pre", { class: "code fim-middle", "aria-label": "Middle", "aria-live": "polite" });
  const maxTokens = h("input", { type: "number", name: "fim_max_tokens", value: 64, min: 1 });
  const run = h("button", { type: "submit" }, "Fill");
  const stop = h("button", { type: "button", class: "danger", disabled: true }, "Stop");
  let controller = null;
  stop.addEventListener("click", () => controller && controller.abort());
  const form = h("form", { class: "fim", "aria-label": "Fill in the middle", onsubmit: async (e) => {
    e.preventDefault();
    controller = new AbortController();
    middle.textContent = "";
    run.disabled = true;
    stop.disabled = false;
    const body = { model: currentModel(), prompt: prefix.value, suffix: suffix.value,
      max_tokens: Number(maxTokens.value) || 64, stream: true, temperature: 0 };
    try {
      for await (const { data } of events("/v1/completions", body, controller.signal)) {
        middle.textContent += (data.choices && data.choices[0] && data.choices[0].text) || "";
      }
    } catch (err) {
      if (!controller.signal.aborted) middle.textContent += `\n[error: ${err.message}]`;
    } finally {
      controller = null;
      run.disabled = false;
      stop.disabled = true;
    }
  } },
  h("div", { class: "fim-grid" }, field("Prefix", prefix), field("Suffix", suffix)),
  h("div", { class: "row" }, field("Max tokens", maxTokens), run, stop),
  h("h3", {}, "Middle"), middle);
  return h("section", { "aria-label": "Fill in the middle" }, h("h2", {}, "Fill in the middle (code models)"), form);
}

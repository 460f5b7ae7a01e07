// Models: local models (verify, remove), pull with live progress (cancel), import, catalog.
import { get, del, events, formatBytes, formatSeconds } from "../api.js";
import { h, field, toast, confirmDialog } from "../dom.js";

let ui = null;

export async function render(main) {
  const jobs = new Set(); // AbortControllers of running pulls, imports and verifications
  ui = { main, jobs, table: h("tbody"), catalog: h("tbody") };
  main.append(
    h("h1", {}, "Models"),
    section("Local models", h("table", { class: "grid", "aria-label": "Local models" },
      h("thead", {}, h("tr", {}, ...["Model", "Size", "Capabilities", "Verification", "Loaded", "Actions"]
        .map((t) => h("th", { scope: "col" }, t)))), ui.table)),
    pullForm(),
    importForm(),
    catalogSection(),
  );
  await Promise.all([refresh(), searchCatalog("")]);
  return () => jobs.forEach((c) => c.abort());
}

const section = (title, ...body) => h("section", { "aria-label": title }, h("h2", {}, title), ...body);

async function refresh() {
  const { models } = await get("/manage/models");
  ui.table.replaceChildren(...(models.length ? models.map(modelRow) :
    [h("tr", {}, h("td", { colspan: 6 }, "No models yet: pull one from the catalog below."))]));
}

function modelRow(m) {
  const v = m.verification || {};
  const actions = h("td", { class: "actions" });
  if (m.in_store) {
    actions.append(
      h("button", { class: "secondary", "aria-label": `Verify ${m.id}`, onclick: () => verify(m.id) }, "Verify"),
      h("button", { class: "danger", "aria-label": `Remove ${m.id}`, onclick: () => remove(m.id) }, "Remove"),
    );
  }
  actions.append(h("a", { class: "button secondary", "aria-label": `Chat with ${m.id}`, href: `#/chat?model=${encodeURIComponent(m.id)}` }, "Chat"));
  return h("tr", { dataset: { model: m.id } },
    h("th", { scope: "row" }, m.id),
    h("td", {}, formatBytes(m.size)),
    h("td", {}, (m.capabilities || ["unknown"]).join(", ")),
    h("td", { class: `verify-${(v.status || "").split(" ")[0]}` }, v.status || "",
      v.problems && v.problems.length ? h("small", {}, ` ${v.problems.join("; ")}`) : null),
    h("td", {}, m.loaded || "no"),
    actions);
}

async function remove(id) {
  if (!(await confirmDialog(`Remove ${id} and delete its files?`, "Remove"))) return;
  try {
    await del(`/manage/models/${encodeURIComponent(id)}`);
    toast(`removed ${id}`);
  } catch (err) {
    toast(`could not remove ${id}: ${err.message}`, "error");
  }
  await refresh();
  await searchCatalog(ui.search ? ui.search.value : "");
}

// One progress display for a streamed job: bar, bytes, speed, time left, cancel.
function progressBox(label) {
  const bar = h("progress", { max: 100, value: 0, "aria-label": `${label} progress` });
  const text = h("span", { class: "progress-text", role: "status" }, "starting…");
  const cancel = h("button", { class: "secondary" }, "Cancel");
  const box = h("div", { class: "progress-box" }, h("strong", {}, label), bar, text, cancel);
  return { box, bar, text, cancel };
}

async function runJob(path, body, label, container) {
  const controller = new AbortController();
  ui.jobs.add(controller);
  const p = progressBox(label);
  p.cancel.setAttribute("aria-label", `Cancel ${label}`);
  p.cancel.addEventListener("click", () => controller.abort());
  container.replaceChildren(p.box);
  let result = null;
  try {
    for await (const { event, data } of events(path, body, controller.signal)) {
      if (event === "progress") {
        if (data.percent !== null) p.bar.value = data.percent;
        else p.bar.removeAttribute("value");
        const pct = data.percent !== null ? `${Math.floor(data.percent)}%` : "";
        p.text.textContent = `${data.phase} ${data.file}: ${formatBytes(data.bytes)} of ` +
          `${formatBytes(data.total)} ${pct} · ${formatBytes(data.speed)}/s · ` +
          `${formatSeconds(data.eta)} left`;
      } else if (event === "done") {
        result = data;
      } else if (event === "error") {
        throw new Error(data.error.message);
      }
    }
    if (result) {
      p.bar.value = 100;
      p.text.textContent = `${label}: done (100%)`;
      p.box.classList.add("done");
    }
  } catch (err) {
    p.text.textContent = controller.signal.aborted ? `${label}: cancelled` : `${label} failed: ${err.message}`;
    p.box.classList.add(controller.signal.aborted ? "cancelled" : "failed");
  } finally {
    p.cancel.disabled = true;
    ui.jobs.delete(controller);
  }
  return result;
}

function pullForm() {
  const input = h("input", { name: "model", placeholder: "catalog id, https://… .gguf or oci://…", required: true });
  const sha = h("input", { name: "sha256", placeholder: "optional", pattern: "[0-9a-fA-F]{64}" });
  const status = h("div", { class: "jobs", id: "pull-status" });
  const form = h("form", { class: "inline", "aria-label": "Pull a model", onsubmit: (e) => {
    e.preventDefault();
    pull(input.value.trim(), sha.value.trim() || undefined, status);
  } },
  field("Model to pull", input), field("sha256", sha), h("button", { type: "submit" }, "Pull"));
  ui.pullStatus = status;
  return section("Pull", form, status);
}

async function pull(model, sha256, status = ui.pullStatus) {
  const result = await runJob("/manage/pull", { model, sha256 }, `Pull ${model}`, status);
  if (result) toast(`pulled ${result.model.id}`);
  await refresh();
  await searchCatalog(ui.search.value);
}

function importForm() {
  const path = h("input", { name: "path", placeholder: "/path/on/the/server/model.gguf", required: true });
  const id = h("input", { name: "id", placeholder: "optional" });
  const status = h("div", { class: "jobs" });
  const form = h("form", { class: "inline", "aria-label": "Import a local file", onsubmit: async (e) => {
    e.preventDefault();
    const result = await runJob("/manage/import", { path: path.value.trim(), id: id.value.trim() || undefined },
      "Import", status);
    if (result) toast(`imported ${result.model.id}`);
    await refresh();
  } }, field("File on the server", path), field("Model id", id), h("button", { type: "submit" }, "Import"));
  return section("Import a local file", form, status);
}

async function verify(id) {
  const row = ui.table.querySelector(`tr[data-model="${CSS.escape(id)}"] td:nth-of-type(3)`);
  const result = await runJob(`/manage/models/${encodeURIComponent(id)}/verify`, {}, `Verify ${id}`,
    row || ui.pullStatus);
  if (result) {
    const ok = result.results.every((r) => r.ok);
    toast(ok ? `${id}: every file matches its sha256` : `${id} failed verification`, ok ? "info" : "error");
  }
  await refresh();
}

function catalogSection() {
  ui.search = h("input", { type: "search", name: "q", placeholder: "name, family or capability" });
  let timer = null;
  ui.search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => searchCatalog(ui.search.value), 200); // debounce typing
  });
  return section("Catalog", field("Search the catalog", ui.search),
    h("table", { class: "grid", "aria-label": "Catalog" },
      h("thead", {}, h("tr", {}, ...["Model", "Parameters", "Capabilities", "Size", "Description", ""]
        .map((t) => h("th", { scope: "col" }, t)))), ui.catalog));
}

async function searchCatalog(q) {
  const { models } = await get(`/manage/catalog?q=${encodeURIComponent(q)}`);
  ui.catalog.replaceChildren(...models.map((m) => h("tr", {},
    h("th", { scope: "row" }, m.id),
    h("td", {}, [m.parameters, m.quantization].filter(Boolean).join(" ")),
    h("td", {}, m.capabilities.join(", ")),
    h("td", {}, formatBytes(m.size)),
    h("td", {}, m.description),
    h("td", {}, m.pulled ? "pulled" : h("button", { "aria-label": `Pull ${m.id}`,
      onclick: () => pull(m.id) }, "Pull")))));
}

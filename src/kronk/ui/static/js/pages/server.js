// Server: version, llama.cpp build and backends, settings in effect, links; sign-in.
import { get, getToken, setToken } from "../api.js";
import { h } from "../dom.js";
import { keysSection } from "./keys.js";

function table(label, rows) {
  return h("table", { class: "kv", "aria-label": label }, h("tbody", {}, ...rows.map(([k, v]) =>
    h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, typeof v === "object" && v !== null ? JSON.stringify(v) : String(v ?? ""))))));
}

export async function render(main) {
  const info = await get("/manage/server");
  const lib = info.llama_cpp;
  const auth = info.auth && info.auth.enabled;
  main.append(
    h("h1", {}, "Server"),
    h("section", { "aria-label": "Build" }, h("h2", {}, "Build"), table("Build", [
      ["kronk", info.version], ["status", info.status], ["base URL", info.base_url],
      ["llama-cpp-python", lib.llama_cpp_python], ["llama.cpp commit", lib.llama_cpp_commit],
      ["ggml", lib.ggml_version], ["backends", lib.backends.join(", ")],
      ["GPU offload", lib.gpu_offload ? "yes" : "no"], ["CPU features", lib.cpu_features.join(" ")],
    ])),
    h("section", { "aria-label": "Links" }, h("h2", {}, "Links"), h("ul", {}, ...Object.entries(info.links).map(([name, href]) =>
      h("li", {}, h("a", { href, target: "_blank", rel: "noopener" }, name), " ", h("code", {}, href))))),
    h("section", { "aria-label": "Security" }, h("h2", {}, "Security"),
      auth ? h("div", {},
        h("p", {}, getToken() ? "Signed in with a token (kept in this tab only)." : "Not signed in."),
        h("button", { onclick: () => window.dispatchEvent(new CustomEvent("kronk:auth-required")) }, "Sign in"),
        " ",
        h("button", { class: "secondary", onclick: () => { setToken(null); location.reload(); } }, "Sign out"))
        : h("p", {}, "Security is off: every request is allowed.")),
    auth && getToken() ? keysSection() : null,
    h("section", { "aria-label": "Settings in effect" }, h("h2", {}, "Settings in effect"),
      table("Settings", Object.entries(info.settings))),
  );
}

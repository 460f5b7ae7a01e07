// Keys and tokens on the Server page, for admins when security is on: the signing keys
// (delete after confirming) and a form that creates a token, shown once.
import { ApiError, del, get, post } from "../api.js";
import { confirmDialog, field, h, toast } from "../dom.js";

export function keysSection() {
  const body = h("div", { id: "keys-body" }, h("p", { class: "muted" }, "loading…"));
  const section = h("section", { "aria-label": "Keys and tokens" }, h("h2", {}, "Keys and tokens"), body);
  load(body);
  return section;
}

async function load(body) {
  let keys;
  try {
    keys = (await get("/manage/security/keys")).keys;
  } catch (err) {
    // 403: not an admin token (the server says why); 401 opens the sign-in box.
    body.replaceChildren(h("p", { class: err instanceof ApiError && err.status === 403 ? "muted" : "error" }, err.message));
    return;
  }
  body.replaceChildren(keysTable(keys, body), tokenForm(),
    h("button", { class: "secondary", onclick: async () => {
      try { await post("/manage/security/keys", {}); toast("created a signing key"); load(body); }
      catch (err) { toast(err.message, "error"); }
    } }, "Create signing key"));
}

function keysTable(keys, body) {
  if (!keys.length) return h("p", {}, "No signing keys.");
  return h("table", { class: "grid", "aria-label": "Signing keys" },
    h("thead", {}, h("tr", {}, h("th", {}, "Key"), h("th", {}, "Created"), h("th", {}, "Signs new tokens"), h("th", {}, ""))),
    h("tbody", {}, ...keys.map((k) => h("tr", {},
      h("td", {}, h("code", {}, k.id)),
      h("td", {}, new Date(k.created * 1000).toLocaleString()),
      h("td", {}, k.signs_new_tokens ? "yes" : "no"),
      h("td", { class: "actions" }, h("button", { class: "danger", "aria-label": `Delete key ${k.id}`, onclick: async () => {
        if (!await confirmDialog(`Delete key ${k.id}? Every token it signed stops working at once.`, "Delete")) return;
        try { await del(`/manage/security/keys/${encodeURIComponent(k.id)}`); toast(`deleted key ${k.id}`); load(body); }
        catch (err) { toast(err.message, "error"); }
      } }, "Delete"))))));
}

function tokenForm() {
  const endpoints = h("input", { name: "endpoints", placeholder: "chat:1000/day,embeddings,models" });
  const duration = h("input", { name: "duration", value: "720h" });
  const subject = h("input", { name: "subject", placeholder: "who holds it (for the audit log)" });
  const admin = h("input", { type: "checkbox", name: "admin", id: "token-admin" });
  const out = h("div", { id: "token-result", "aria-live": "polite" });
  const form = h("form", { class: "inline", "aria-label": "Create a token", onsubmit: async (event) => {
    event.preventDefault();
    out.replaceChildren();
    try {
      const made = await post("/manage/security/tokens", {
        endpoints: endpoints.value.trim() || null, duration: duration.value.trim(),
        subject: subject.value.trim(), admin: admin.checked,
      });
      const shown = h("textarea", { class: "mono", readonly: true, rows: 3, "aria-label": "New token" }, made.token);
      out.replaceChildren(h("p", {}, `Token ${made.id} (${made.grants}), valid until `,
        new Date(made.expires_at * 1000).toLocaleString(), ". Copy it now: it is not shown again."), shown);
      shown.select();
    } catch (err) {
      out.replaceChildren(h("p", { class: "error" }, err.message));
    }
  } },
    field("Endpoints", endpoints, "FAMILY[:COUNT/WINDOW],… families: chat, responses, completions, embeddings, tokenize, models, tools, manage, metrics"),
    field("Duration", duration, "e.g. 720h, 30d, 1h30m"),
    field("Subject", subject),
    h("div", { class: "field" }, h("label", { for: "token-admin" }, "Admin (every endpoint)"), admin),
    h("button", { type: "submit" }, "Create token"));
  return h("div", {}, h("h3", {}, "Create a token"), form, out);
}

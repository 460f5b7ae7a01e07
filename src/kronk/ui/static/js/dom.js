// A tiny DOM builder: text always goes in as text nodes, never as HTML.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

let fieldCount = 0;
// A labelled control: every form field gets a <label for=...>.
export function field(label, control, hint) {
  if (!control.id) control.id = `f${++fieldCount}`;
  return h("div", { class: "field" }, h("label", { for: control.id }, label), control,
    hint ? h("small", { class: "muted" }, hint) : null);
}

export function toast(message, kind = "info") {
  const item = h("div", { class: `toast ${kind}` }, message);
  document.getElementById("toasts").append(item);
  setTimeout(() => item.remove(), 6000);
}

// A confirmation in a modal dialog (focus is trapped and Escape cancels).
export function confirmDialog(text, yesLabel = "Yes") {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-yes").textContent = yesLabel;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
  });
}

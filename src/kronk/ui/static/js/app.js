// The shell: hash routing between pages, the sign-in hook, and live-data cleanup.
import { get, setToken, getToken } from "./api.js";
import { toast } from "./dom.js";
import * as models from "./pages/models.js";
import * as running from "./pages/running.js";
import * as chat from "./pages/chat.js";
import * as server from "./pages/server.js";
import * as apiPage from "./pages/apidocs.js";

const PAGES = { models, running, chat, server, api: apiPage };
const TITLES = { models: "Models", running: "Running", chat: "Chat", server: "Server", api: "API" };
let stopCurrent = null;

async function show() {
  const name = (location.hash.match(/^#\/(\w+)/) || [])[1] || "models";
  const page = PAGES[name] || PAGES.models;
  if (stopCurrent) stopCurrent();
  stopCurrent = null;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${TITLES[name] || "Models"} · kronk`;
  const main = document.getElementById("main");
  main.replaceChildren();
  main.dataset.page = name;
  try {
    // A page returns a function that stops its timers and streams when it is left.
    stopCurrent = (await page.render(main)) || null;
  } catch (err) {
    toast(`could not show ${name}: ${err.message}`, "error");
  }
}

function signIn() {
  const dialog = document.getElementById("signin");
  if (dialog.open) return;
  dialog.showModal();
}

function setupSignIn() {
  const dialog = document.getElementById("signin");
  const form = document.getElementById("signin-form");
  form.addEventListener("submit", () => {
    setToken(document.getElementById("signin-token").value.trim());
    document.getElementById("signin-token").value = "";
    show();
  });
  document.getElementById("signin-cancel").addEventListener("click", () => dialog.close());
  window.addEventListener("kronk:auth-required", signIn);
}

async function checkAuth() {
  // The security work sets `auth.enabled`; until then this finds auth off and does nothing.
  try {
    const info = await get("/manage/server");
    const badge = document.getElementById("signed-in");
    if (info.auth && info.auth.enabled) {
      badge.hidden = false;
      badge.textContent = getToken() ? "signed in" : "not signed in";
      if (!getToken()) signIn();
    }
  } catch { /* a 401 opens the sign-in box through the event */ }
}

setupSignIn();
window.addEventListener("hashchange", show);
show();
checkAuth();

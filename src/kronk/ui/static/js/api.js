// The server's public APIs, with the sign-in token (when security is on) on every call.
// The token lives in sessionStorage: it goes when the tab closes, and other sites
// cannot read it.
const TOKEN_KEY = "kronk.token";

export const getToken = () => sessionStorage.getItem(TOKEN_KEY);
export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(message, status, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

export function headers(extra = {}) {
  const out = { "Content-Type": "application/json", ...extra };
  const token = getToken();
  if (token) out.Authorization = `Bearer ${token}`;
  return out;
}

async function check(response) {
  if (response.ok) return response;
  let body = null;
  try { body = await response.json(); } catch { /* not JSON: use the status text */ }
  if (response.status === 401) window.dispatchEvent(new CustomEvent("kronk:auth-required"));
  // Every protocol's error shape: OpenAI's and Anthropic's {error: {message}}, Ollama's {error}.
  const err = body && body.error;
  const message = (err && (err.message || err)) || response.statusText || `HTTP ${response.status}`;
  throw new ApiError(String(message), response.status, body);
}

export async function request(method, path, body, signal) {
  const init = { method, headers: headers(), signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await check(await fetch(path, init));
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

export const get = (path, signal) => request("GET", path, undefined, signal);
export const post = (path, body, signal) => request("POST", path, body, signal);
export const del = (path) => request("DELETE", path);

// Server-sent events through fetch (EventSource can neither POST nor send the token):
// yields {event, data}; GET when `body` is undefined. Aborting `signal` closes the
// stream, which is how the server learns to stop.
export async function* events(path, body, signal) {
  const init = body === undefined ? { method: "GET" } : { method: "POST", body: JSON.stringify(body) };
  const response = await check(await fetch(path, { ...init, headers: headers(), signal }));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (!data.length) continue; // a keep-alive comment
      const text = data.join("\n");
      if (text === "[DONE]") return;
      yield { event, data: JSON.parse(text) };
    }
  }
}

export function formatBytes(n) {
  if (n === null || n === undefined) return "?";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${n.toFixed(i && n < 10 ? 1 : 0)} ${units[i]}`;
}

export function formatSeconds(s) {
  if (s === null || s === undefined || !isFinite(s)) return "?";
  if (s < 60) return `${Math.round(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

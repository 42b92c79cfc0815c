// The admin API: the token lives in sessionStorage and travels only in the
// Authorization header of fetch calls, never in a URL.
const KEY = "cdp-admin-token";

export function token() {
  return sessionStorage.getItem(KEY);
}

export function setToken(value) {
  sessionStorage.setItem(KEY, value);
}

export function forget() {
  sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, data) {
    super((data && data.message) || `HTTP ${status}`);
    this.status = status;
    this.data = data;
  }
}

let onUnauthorized = () => {};
export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

// fetch an admin route; resolves {status, data} for 2xx and 4xx answers with a JSON
// body, rejects with ApiError for the rest (and signs out on 401).
export async function call(method, path, { body, tokenOverride, raw } = {}) {
  const headers = { Authorization: `Bearer ${tokenOverride ?? token() ?? ""}` };
  const init = { method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (raw) return response;
  let data = null;
  const text = await response.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { message: text };
    }
  }
  if (response.status === 401 && tokenOverride === undefined) {
    onUnauthorized();
    throw new ApiError(401, data);
  }
  if (response.status >= 500 || response.status === 401) throw new ApiError(response.status, data);
  return { status: response.status, data };
}

export async function get(path) {
  const { status, data } = await call("GET", path);
  if (status >= 400) throw new ApiError(status, data);
  return data;
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

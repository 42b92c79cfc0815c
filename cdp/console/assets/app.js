// The console's shell: login, the nav bar and the hash routes (#/debugger,
// #/profiles?id=..., #/segments, #/health), which carry no token.
import { call, forget, setToken, token, whenUnauthorized } from "./api.js";
import { h, message, replace } from "./dom.js";
import * as debuggerPage from "./debugger.js";
import * as healthPage from "./health.js";
import * as profilesPage from "./profiles.js";
import * as segmentsPage from "./segments.js";

const PAGES = {
  debugger: debuggerPage,
  profiles: profilesPage,
  segments: segmentsPage,
  health: healthPage,
};

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const logout = document.getElementById("logout");
let cleanup = null;

function parseHash() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, search] = hash.split("?", 2);
  return { page: path || "debugger", params: new URLSearchParams(search || "") };
}

function stopPage() {
  if (cleanup) cleanup();
  cleanup = null;
}

function loginPage(note) {
  stopPage();
  nav.hidden = true;
  logout.hidden = true;
  document.title = "CDP console: log in";
  const input = h("input", { type: "password", id: "token", name: "token", autocomplete: "off", required: true });
  const status = h("div", { class: "login-status" }, note ? message("error", note) : null);
  const button = h("button", { type: "submit", id: "login" }, "Log in");
  const form = h(
    "form",
    { class: "login card", id: "login-form" },
    h("h1", {}, "CDP console"),
    h("p", {}, "Paste the admin token (CDP_ADMIN_TOKEN). It is kept in this tab only."),
    h("label", { for: "token" }, "Admin token"),
    input,
    button,
    status,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (!value) return;
    button.disabled = true;
    replace(status, message("info", "Checking…"));
    try {
      const { status: code, data } = await call("GET", "/cdp/segments", { tokenOverride: value });
      if (code >= 400) throw new Error((data && data.message) || `HTTP ${code}`);
      setToken(value);
      route();
    } catch (error) {
      const wrong = error.status === 401;
      replace(status, message("error", wrong ? "Wrong token: the server refused it." : `Could not check the token: ${error.message}`));
    } finally {
      button.disabled = false;
    }
  });
  replace(main, form);
  input.focus();
}

function route() {
  if (!token()) {
    loginPage();
    return;
  }
  const { page, params } = parseHash();
  const module = PAGES[page];
  if (!module) {
    location.hash = "#/debugger";
    return;
  }
  stopPage();
  nav.hidden = false;
  logout.hidden = false;
  for (const link of nav.querySelectorAll("a")) {
    link.classList.toggle("active", link.dataset.page === page);
  }
  document.title = `CDP console: ${module.TITLE}`;
  const root = h("section", { class: `page page-${page}`, id: `page-${page}` });
  replace(main, root);
  cleanup = module.render(root, params) || null;
}

whenUnauthorized(() => {
  forget();
  loginPage("The server refused the token (it may have changed): log in again.");
});

logout.addEventListener("click", () => {
  forget();
  loginPage();
});

window.addEventListener("hashchange", route);
route();

// Building the page: every piece of data goes in as a text node, never as HTML.
const SVG_NS = "http://www.w3.org/2000/svg";

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(node.dataset, value);
    } else if (key === "value" || key === "checked" || key === "disabled") {
      node[key] = value;
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
  return node;
}

// h("td", {class: "x"}, "text", otherNode): an element with text/node children.
export function h(tag, attrs, ...children) {
  return append(setAttrs(document.createElement(tag), attrs), children);
}

export function s(tag, attrs, ...children) {
  return append(setAttrs(document.createElementNS(SVG_NS, tag), attrs), children);
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

export function replace(node, ...children) {
  return append(clear(node), children);
}

export function iso(ms) {
  if (ms === null || ms === undefined || ms === "") return "";
  const n = Number(ms);
  if (!Number.isFinite(n)) return String(ms);
  try {
    return new Date(n).toISOString();
  } catch {
    return String(ms);
  }
}

export function show(value) {
  // A JSON value as one line of text (strings as they are).
  return typeof value === "string" ? value : JSON.stringify(value);
}

export function pretty(value) {
  return JSON.stringify(value, null, 2);
}

export function table(headers, rows, attrs) {
  return h(
    "table",
    attrs || {},
    h("thead", {}, h("tr", {}, headers.map((name) => h("th", {}, name)))),
    h("tbody", {}, rows),
  );
}

export function message(kind, text) {
  return h("p", { class: `msg ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

// A modal confirmation: resolves true when confirmed. With `typed`, the confirm button
// is enabled only once that exact text is typed.
export function confirmDialog({ title, body, confirmLabel, typed, danger }) {
  return new Promise((resolve) => {
    const input = typed ? h("input", { type: "text", autocomplete: "off", "aria-label": "confirmation", name: "confirm" }) : null;
    const ok = h("button", { type: "button", class: danger ? "danger" : "", disabled: Boolean(typed) }, confirmLabel || "Confirm");
    const cancel = h("button", { type: "button", class: "secondary" }, "Cancel");
    const dialog = h(
      "dialog",
      { class: "confirm" },
      h("h3", {}, title),
      h("p", {}, body),
      typed ? h("p", {}, "Type ", h("code", {}, typed), " to confirm:") : null,
      input,
      h("div", { class: "actions" }, cancel, ok),
    );
    const done = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    if (input) input.addEventListener("input", () => (ok.disabled = input.value !== typed));
    ok.addEventListener("click", () => done(true));
    cancel.addEventListener("click", () => done(false));
    dialog.addEventListener("cancel", (e) => {
      e.preventDefault();
      done(false);
    });
    document.body.appendChild(dialog);
    dialog.showModal();
    (input || cancel).focus();
  });
}

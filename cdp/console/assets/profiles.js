// Profile explorer: find a profile by user:/anon:/email: or its canonical id; its
// traits, tombstones, identifiers, merges, counters, segments; export and erase.
import { ApiError, call } from "./api.js";
import { bars } from "./charts.js";
import { confirmDialog, h, iso, message, pretty, replace, show, table } from "./dom.js";

export const TITLE = "Profiles";

function profilePath(id) {
  return `/cdp/profiles/${encodeURIComponent(id)}`;
}

function entryTime(record) {
  const id = String(record.entryId || "");
  const ms = Number(id.split("-")[0]);
  return Number.isFinite(ms) && id ? iso(ms) : "";
}

function flat(record) {
  // The fields of a stream record with its nested JSON opened (payload, properties),
  // for the summary columns; the record itself is shown whole beside them.
  const out = {};
  const walk = (node, depth) => {
    for (const [k, v] of Object.entries(node)) {
      if (v && typeof v === "object" && !Array.isArray(v) && depth < 3) walk(v, depth + 1);
      else if (!(k in out)) out[k] = v;
    }
  };
  walk(record, 0);
  return out;
}

function recordRows(records, columns) {
  return records.map((record) => {
    const f = flat(record);
    return h(
      "tr",
      {},
      h("td", {}, entryTime(record)),
      columns.map((name) => h("td", {}, f[name] === undefined ? "" : show(f[name]))),
      h("td", {}, h("details", {}, h("summary", {}, "record"), h("pre", { class: "json" }, pretty(record)))),
    );
  });
}

function section(title, ...content) {
  return h("section", { class: "card" }, h("h3", {}, title), ...content);
}

function traitsTable(traits) {
  const names = Object.keys(traits).sort();
  if (names.length === 0) return message("info", "No traits.");
  return table(
    ["trait", "value", "time", "winning eventId"],
    names.map((name) => {
      const t = traits[name];
      return h(
        "tr",
        { "data-trait": name },
        h("td", { class: "trait-name" }, name),
        h("td", { class: "trait-value" }, show(t.value ?? t.v)),
        h("td", {}, iso(t.ts)),
        h("td", { class: "mono" }, t.eventId ?? ""),
      );
    }),
    { class: "traits" },
  );
}

function tombstonesTable(tombstones) {
  const names = Object.keys(tombstones).sort();
  if (names.length === 0) return message("info", "No tombstones.");
  return table(
    ["trait", "deleted at", "eventId"],
    names.map((name) => h("tr", {}, h("td", {}, name), h("td", {}, iso(tombstones[name].ts)), h("td", { class: "mono" }, tombstones[name].eventId ?? ""))),
    { class: "tombstones" },
  );
}

function countersView(counters, profile) {
  const names = Object.keys(counters).sort();
  if (names.length === 0) return message("info", "No counters.");
  return h(
    "div",
    { class: "counters" },
    names.map((name) => {
      const buckets = counters[name];
      const total = profile.counters?.[name]?.total ?? buckets.reduce((n, b) => n + b[1], 0);
      return h(
        "figure",
        { class: "counter", "data-counter": name },
        bars(buckets, { label: name }),
        h("figcaption", {}, h("strong", {}, name), ` total ${total}, ${buckets.length} bucket(s)`),
      );
    }),
  );
}

function segmentsView(segments) {
  const names = Object.keys(segments || {}).sort();
  if (names.length === 0) return message("info", "In no segment.");
  return table(
    ["segment", "entered"],
    names.map((name) => {
      const at = segments[name];
      const since = at && typeof at === "object" ? at.since ?? at.enteredAt ?? at : at;
      const shown = /^\d+$/.test(String(since)) ? iso(Number(since)) : show(since);
      return h("tr", {}, h("td", {}, name), h("td", {}, shown));
    }),
    { class: "memberships" },
  );
}

async function exportProfile(id, status) {
  const confirmed = await confirmDialog({
    title: "Export this person's data?",
    body: `Downloads ${id}'s profile (traits, identifiers, counters, memberships) as JSON to this computer.`,
    confirmLabel: "Export",
  });
  if (!confirmed) return;
  try {
    const response = await call("GET", profilePath(id), { raw: true });
    if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
    const blob = new Blob([await response.text()], { type: "application/json" });
    const url = URL.createObjectURL(blob);
    const link = h("a", { href: url, download: `profile-${id.replace(/[^A-Za-z0-9_.@-]+/g, "_")}.json`, hidden: true });
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
    replace(status, message("info", "Exported."));
  } catch (error) {
    replace(status, message("error", `Export failed: ${error.message}`));
  }
}

async function eraseProfile(id, status) {
  const confirmed = await confirmDialog({
    title: "Erase this person?",
    body: `Erasing ${id} deletes its profile, identifiers, counters and memberships, and suppresses its identifiers. This cannot be undone.`,
    confirmLabel: "Erase",
    typed: id,
    danger: true,
  });
  if (!confirmed) return;
  try {
    const { status: code, data } = await call("DELETE", profilePath(id));
    if (code >= 400) throw new ApiError(code, data);
    replace(status, message("info", `Erasure job ${data.id ?? ""}: ${data.state ?? "started"}.`), h("pre", { class: "json" }, pretty(data)));
  } catch (error) {
    replace(status, message("error", `Erase failed: ${error.message}`));
  }
}

function showProfile(out, data) {
  const p = data.profile;
  const cid = p.canonicalId;
  const status = h("div", { class: "action-status" });
  const exportButton = h("button", { type: "button", id: "export" }, "Export JSON");
  const eraseButton = h("button", { type: "button", id: "erase", class: "danger" }, "Erase…");
  exportButton.addEventListener("click", () => exportProfile(cid, status));
  eraseButton.addEventListener("click", () => eraseProfile(cid, status));
  replace(
    out,
    h(
      "section",
      { class: "card profile-head" },
      h("div", { class: "toolbar" }, h("h2", {}, "Profile ", h("code", { id: "canonical-id" }, cid)), exportButton, eraseButton),
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "first seen"), h("dd", {}, show(p.firstSeen ?? "")),
        h("dt", {}, "last seen"), h("dd", {}, show(p.lastSeen ?? "")),
        h("dt", {}, "created"), h("dd", {}, show(p.createdAt ?? "")),
        h("dt", {}, "merged from"), h("dd", {}, (p.mergedFrom || []).join(", ") || "none"),
      ),
      status,
    ),
    section("Identifiers", h("ul", { class: "identifiers chips" }, (p.identifiers || []).map((id) => h("li", {}, h("a", { href: `#/profiles?id=${encodeURIComponent(id)}` }, id))))),
    section("Traits", traitsTable(data.traits || {})),
    section("Tombstones", tombstonesTable(data.tombstones || {})),
    section("Counters", countersView(data.counters || {}, p)),
    section("Segments", segmentsView(p.segments)),
    section(
      "Recent ENTER / EXIT",
      (data.segmentEvents || []).length
        ? table(["at", "transition", "segment", "profile", "reason", ""], recordRows(data.segmentEvents, ["transition", "segment", "canonicalId", "reason"]), { class: "segment-events" })
        : message("info", "No recent segment events."),
    ),
    section(
      "Merge history",
      (data.merges || []).length
        ? table(["at", "status", "survivor", "merged", "reason", ""], recordRows(data.merges, ["status", "survivor", "merged", "reason"]), { class: "merges" })
        : message("info", "No merges."),
    ),
  );
}

export function render(root, params) {
  const id = params.get("id") || "";
  const input = h("input", { type: "search", name: "id", id: "profile-search", value: id, placeholder: "user:…  anon:…  email:…  or p123", "aria-label": "identifier", autocomplete: "off" });
  const form = h("form", { class: "search" }, input, h("button", { type: "submit" }, "Find"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const value = input.value.trim();
    if (value) location.hash = `#/profiles?id=${encodeURIComponent(value)}`;
  });
  const out = h("div", { class: "profile" });
  root.append(h("div", { class: "toolbar" }, h("h2", {}, "Profile explorer"), form), out);
  if (!id) {
    out.append(message("info", "Search a profile by user:<userId>, anon:<anonymousId>, email:<address> or its canonical id pN."));
    return null;
  }
  let live = true;
  replace(out, message("info", "Loading…"));
  call("GET", `/cdp/console/profiles/${encodeURIComponent(id)}`)
    .then(({ status, data }) => {
      if (!live) return;
      if (status >= 400) replace(out, message("error", (data && data.message) || `HTTP ${status}`));
      else showProfile(out, data);
    })
    .catch((error) => live && error.status !== 401 && replace(out, message("error", error.message)));
  return () => {
    live = false;
  };
}

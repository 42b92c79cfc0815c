// Live event debugger: accepted events newest first (polling `after` every second),
// filters, pause/resume, each row expanding to its JSON; and the rejected requests.
import { get, query } from "./api.js";
import { h, iso, message, pretty, replace } from "./dom.js";

export const TITLE = "Debugger";
const POLL_MS = 1000;
const KEEP = 300;

function who(event) {
  return [
    event.userId != null ? `user:${event.userId}` : null,
    event.anonymousId != null ? `anon:${event.anonymousId}` : null,
    event.email != null ? `email:${event.email}` : null,
  ]
    .filter(Boolean)
    .join(" ");
}

function eventRow(item) {
  const e = item.event || {};
  return [
    iso(item.receivedAt ?? e.receivedAt),
    h("span", { class: `tag type-${String(e.type || "").toLowerCase()}` }, e.type || "?"),
    e.name ?? "",
    who(e),
    e.source ?? "",
    String(item.partition ?? ""),
  ];
}

function eventDetail(item) {
  return h("pre", { class: "json" }, pretty(item.event));
}

function rejectionRow(item) {
  return [
    iso(item.at),
    h("span", { class: "tag status-4xx" }, String(item.status)),
    `${item.method || ""} ${item.route || ""}`,
    h("span", { class: "reason" }, item.reason || ""),
    item.source ?? "",
  ];
}

function rejectionDetail(item) {
  return h(
    "div",
    {},
    h("p", {}, "Reason: ", h("strong", {}, item.reason || "")),
    h("p", {}, item.truncated ? "Body (cut at 2 KiB):" : "Body:"),
    h("pre", { class: "json" }, item.body || ""),
  );
}

// One polled list: the newest `limit` at first, then what arrives after the cursor.
class Feed {
  constructor({ path, key, headers, row, detail, filters }) {
    Object.assign(this, { path, key, row, detail, filters });
    this.cursor = null;
    this.count = 0;
    this.shown = new Set(); // ids listed: the first answer and the tap may share events
    this.generation = 0;
    this.inflight = false;
    this.timer = null;
    this.paused = false;
    this.stopped = false;
    this.status = h("div", { class: "feed-status", role: "status" });
    this.body = h("tbody", {});
    this.view = h(
      "div",
      { class: `feed feed-${key}` },
      this.status,
      h("table", { class: "rows" }, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))), this.body),
    );
  }

  params(extra) {
    return query({ limit: this.cursor ? 200 : 50, ...(this.filters ? this.filters() : {}), ...extra });
  }

  async reset() {
    this.generation += 1;
    this.cursor = null;
    this.count = 0;
    this.shown.clear();
    replace(this.body);
    await this.poll();
  }

  async poll() {
    clearTimeout(this.timer);
    if (this.stopped || this.inflight) return;
    this.inflight = true;
    const generation = this.generation;
    try {
      const data = await get(this.path + this.params(this.cursor ? { after: this.cursor } : {}));
      if (generation === this.generation && !this.stopped) {
        this.cursor = data.cursor ?? this.cursor;
        this.prepend(data[this.key] || []);
        replace(this.status, this.count === 0 ? message("info", "Nothing yet: waiting for the next one…") : null);
      }
    } catch (error) {
      if (error.status === 401) return;
      replace(this.status, message("error", `Could not load: ${error.message}`));
    } finally {
      this.inflight = false;
    }
    if (generation !== this.generation) {
      this.poll();
    } else if (!this.paused && !this.stopped) {
      this.timer = setTimeout(() => this.poll(), POLL_MS);
    }
  }

  prepend(items) {
    // items are newest first: insert them in order above the current first row.
    const anchor = this.body.firstChild;
    for (const item of items) {
      if (this.shown.has(item.id)) continue;
      this.shown.add(item.id);
      const cells = this.row(item).map((c) => h("td", {}, c));
      const summary = h("tr", { class: "summary", tabindex: "0", "data-id": item.id, "aria-expanded": "false" }, cells);
      const detail = h("tr", { class: "detail", hidden: true }, h("td", { colspan: cells.length }));
      const toggle = () => {
        const open = detail.hidden;
        if (open && !detail.firstChild.firstChild) detail.firstChild.appendChild(this.detail(item));
        detail.hidden = !open;
        summary.setAttribute("aria-expanded", String(open));
      };
      summary.addEventListener("click", toggle);
      summary.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          toggle();
        }
      });
      this.body.insertBefore(summary, anchor);
      this.body.insertBefore(detail, anchor);
      this.count += 1;
    }
    while (this.count > KEEP) {
      this.shown.delete(this.body.lastChild.previousSibling.dataset.id);
      this.body.lastChild.remove();
      this.body.lastChild.remove();
      this.count -= 1;
    }
  }

  pause(paused) {
    this.paused = paused;
    clearTimeout(this.timer);
    if (!paused) this.poll();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
  }
}

function filterForm(onApply) {
  const type = h(
    "select",
    { name: "type", "aria-label": "type" },
    h("option", { value: "" }, "any type"),
    ["identify", "track", "alias"].map((t) => h("option", { value: t }, t)),
  );
  const name = h("input", { name: "name", placeholder: "event name", "aria-label": "event name" });
  const source = h("input", { name: "source", placeholder: "source", "aria-label": "source" });
  const identifier = h("input", { name: "identifier", placeholder: "user:… anon:… email:…", "aria-label": "identifier" });
  const form = h("form", { class: "filters" }, type, name, source, identifier, h("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    onApply();
  });
  const values = () => ({ type: type.value, name: name.value.trim(), source: source.value.trim(), identifier: identifier.value.trim() });
  return { form, values };
}

export function render(root) {
  const filters = filterForm(() => events.reset());
  const events = new Feed({
    path: "/cdp/console/events",
    key: "events",
    headers: ["received", "type", "event", "identifiers", "source", "partition"],
    row: eventRow,
    detail: eventDetail,
    filters: filters.values,
  });
  const rejections = new Feed({
    path: "/cdp/console/rejections",
    key: "rejections",
    headers: ["at", "status", "route", "reason", "source"],
    row: rejectionRow,
    detail: rejectionDetail,
  });
  const pause = h("button", { type: "button", id: "pause", class: "secondary" }, "Pause");
  let paused = false;
  let current = events;
  const tabEvents = h("button", { type: "button", role: "tab", class: "tab active", "aria-selected": "true" }, "Events");
  const tabRejected = h("button", { type: "button", role: "tab", class: "tab", "aria-selected": "false" }, "Rejected");
  const panel = h("div", { class: "panel" });
  const select = (feed) => {
    current = feed;
    for (const [tab, f] of [[tabEvents, events], [tabRejected, rejections]]) {
      tab.classList.toggle("active", f === feed);
      tab.setAttribute("aria-selected", String(f === feed));
      f.pause(true);
    }
    filters.form.hidden = feed !== events;
    replace(panel, feed.view);
    if (paused) feed.poll();
    else feed.pause(false);
  };
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    pause.classList.toggle("paused", paused);
    current.pause(paused);
  });
  tabEvents.addEventListener("click", () => select(events));
  tabRejected.addEventListener("click", () => select(rejections));
  root.append(
    h("div", { class: "toolbar" }, h("h2", {}, "Live events"), h("div", { role: "tablist", class: "tabs" }, tabEvents, tabRejected), pause),
    filters.form,
    panel,
  );
  rejections.pause(true);
  select(events);
  return () => {
    events.stop();
    rejections.stop();
  };
}

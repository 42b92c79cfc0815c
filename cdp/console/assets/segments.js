// Segments: the list (members, ENTER/EXIT rates over the last hour, backfill), the
// custom-segment editor (preview, save, errors at their field), webhooks.
import { ApiError, call, get } from "./api.js";
import { fmt, rates, sparkline } from "./charts.js";
import { confirmDialog, h, iso, message, pretty, replace, show, table } from "./dom.js";

export const TITLE = "Segments";
const REFRESH_MS = 2000;
const HISTORY_EVERY_MS = 10_000; // the rates' samples come every 10 s or so
const EXAMPLE = { all: [{ trait: "plan", op: "eq", value: "pro" }, { count: { event: "Order Completed", within: "7d", gte: 2 } }] };

function perMinute(history, name, kind) {
  return rates(history, (sample) => sample.segments?.[name]?.[kind]).map(([t, r]) => [t, r * 60]);
}

function rateCell(history, name, kind) {
  const series = perMinute(history, name, kind);
  const last = series.length ? series[series.length - 1][1] : 0;
  return h("div", { class: "rate" }, sparkline(series, { width: 120, height: 30, label: `${kind} per minute` }), h("span", {}, `${fmt(last)}/min`));
}

function backfillCell(backfill) {
  if (!backfill) return "";
  const total = Number(backfill.total) || 0;
  const scanned = Number(backfill.scanned) || 0;
  return h(
    "div",
    { class: "backfill" },
    h("progress", { max: Math.max(total, 1), value: backfill.state === "done" ? Math.max(total, 1) : scanned }),
    ` ${backfill.state ?? ""} ${scanned}/${total}`,
  );
}

function editor(onSaved) {
  const name = h("input", { id: "seg-name", name: "name", autocomplete: "off", placeholder: "high_value" });
  const description = h("input", { id: "seg-description", name: "description", autocomplete: "off" });
  const rule = h("textarea", { id: "seg-rule", name: "rule", rows: 12, spellcheck: "false" });
  rule.value = pretty(EXAMPLE);
  const slot = (field) => h("div", { class: "field-error", "data-field": field, role: "alert" });
  const errors = { name: slot("name"), description: slot("description"), rule: slot("rule") };
  const result = h("div", { class: "editor-result", role: "status" });

  const clearErrors = () => {
    for (const node of Object.values(errors)) replace(node);
    for (const input of [name, description, rule]) input.removeAttribute("aria-invalid");
    replace(result);
  };
  const showErrors = (list) => {
    for (const { field, message: text } of list) {
      const key = field === "name" || field === "description" ? field : "rule";
      const inputs = { name, description, rule };
      inputs[key].setAttribute("aria-invalid", "true");
      errors[key].append(h("div", { class: "error-line" }, key === "rule" && field ? h("code", {}, field) : null, key === "rule" && field ? ": " : null, text));
    }
  };
  const definition = () => {
    clearErrors();
    let parsed;
    try {
      parsed = JSON.parse(rule.value);
    } catch (error) {
      showErrors([{ field: "", message: `not valid JSON: ${error.message}` }]);
      return null;
    }
    const body = { rule: parsed };
    if (description.value.trim()) body.description = description.value.trim();
    return body;
  };
  const preview = h("button", { type: "button", id: "seg-preview", class: "secondary" }, "Preview");
  const save = h("button", { type: "submit", id: "seg-save" }, "Save");
  preview.addEventListener("click", async () => {
    const body = definition();
    if (!body) return;
    try {
      const { status, data } = await call("POST", "/cdp/console/segments:preview", { body: { ...body, name: name.value.trim() } });
      if (status >= 400) throw new ApiError(status, data);
      if (!data.valid) {
        showErrors(data.errors || []);
        return;
      }
      const capped = data.capped ? ` (of the first ${data.scanned} of ${data.total} profiles)` : ` of ${data.total} profiles`;
      replace(result, message("info", `${data.matches} profile(s) match now${capped}.`));
    } catch (error) {
      if (error.status !== 401) replace(result, message("error", `Preview failed: ${error.message}`));
    }
  });
  const form = h(
    "form",
    { class: "editor card", id: "segment-editor" },
    h("h3", {}, "Custom segment"),
    h("label", { for: "seg-name" }, "Name"), name, errors.name,
    h("label", { for: "seg-description" }, "Description"), description, errors.description,
    h("label", { for: "seg-rule" }, "Rule (JSON)"), rule, errors.rule,
    h("div", { class: "actions" }, preview, save),
    result,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = definition();
    if (!body) return;
    const segment = name.value.trim();
    if (!segment) {
      showErrors([{ field: "name", message: "a name is required" }]);
      return;
    }
    try {
      const { status, data } = await call("PUT", `/cdp/segments/${encodeURIComponent(segment)}`, { body });
      if (status >= 400) {
        if (status === 400 && data) showErrors(data.errors && data.errors.length ? data.errors : [{ field: "", message: data.message }]);
        else replace(result, message("error", (data && data.message) || `HTTP ${status}`));
        return;
      }
      replace(result, message("info", `Saved ${segment}: existing profiles are being evaluated.`));
      onSaved();
    } catch (error) {
      if (error.status !== 401) replace(result, message("error", `Save failed: ${error.message}`));
    }
  });
  const load = (segment) => {
    clearErrors();
    name.value = segment.name;
    description.value = segment.description || "";
    rule.value = pretty(segment.rule);
    name.focus();
  };
  return { form, load };
}

function segmentRows(segments, history, edit, refresh, status) {
  return segments.map((segment) => {
    const actions = h("div", { class: "row-actions" });
    if (!segment.builtin) {
      const editButton = h("button", { type: "button", class: "secondary small" }, "Edit");
      editButton.addEventListener("click", () => edit(segment));
      const del = h("button", { type: "button", class: "danger small" }, "Delete");
      del.addEventListener("click", async () => {
        const ok = await confirmDialog({ title: `Delete ${segment.name}?`, body: "Its memberships end without EXIT events.", confirmLabel: "Delete", danger: true });
        if (!ok) return;
        try {
          const { status: code, data } = await call("DELETE", `/cdp/segments/${encodeURIComponent(segment.name)}`);
          if (code >= 400) throw new ApiError(code, data);
          replace(status);
        } catch (error) {
          if (error.status !== 401) replace(status, message("error", `Could not delete ${segment.name}: ${error.message}`));
        }
        refresh();
      });
      actions.append(editButton, del);
    }
    return h(
      "tr",
      { "data-segment": segment.name },
      h("td", {}, h("strong", {}, segment.name), segment.builtin ? h("span", { class: "tag" }, "built-in") : null, h("div", { class: "muted" }, segment.description || "")),
      h("td", { class: "members num" }, String(segment.members)),
      h("td", {}, rateCell(history, segment.name, "enter")),
      h("td", {}, rateCell(history, segment.name, "exit")),
      h("td", {}, backfillCell(segment.backfill)),
      h("td", {}, actions),
    );
  });
}

function webhooksView(data) {
  const hooks = data.webhooks || [];
  const dead = data.dead || [];
  return h(
    "div",
    {},
    hooks.length
      ? table(
          ["id", "url", "segments", "delivered", "retries", "dead", "attempts", "next attempt", "last error"],
          hooks.map((w) => {
            const st = w.state || {};
            return h(
              "tr",
              {},
              h("td", { class: "mono" }, w.id),
              h("td", {}, w.url),
              h("td", {}, (w.segments || []).join(", ") || "all"),
              h("td", { class: "num" }, String(st.delivered ?? 0)),
              h("td", { class: "num" }, String(st.retries ?? 0)),
              h("td", { class: "num" }, String(st.dead ?? 0)),
              h("td", { class: "num" }, String(st.attempts ?? 0)),
              h("td", {}, st.nextAt ? iso(st.nextAt) : ""),
              h("td", { class: "reason" }, st.lastError ?? ""),
            );
          }),
          { class: "webhooks" },
        )
      : message("info", "No webhook subscriptions."),
    h("h4", {}, `Dead letters (${dead.length})`),
    dead.length
      ? table(
          ["entry", "record"],
          dead.map((d) => h("tr", {}, h("td", { class: "mono" }, d.entryId ?? ""), h("td", {}, h("details", {}, h("summary", {}, show(d.error ?? d.reason ?? d.webhook ?? "record")), h("pre", { class: "json" }, pretty(d)))))),
        )
      : message("info", "No dead letters."),
  );
}

export function render(root) {
  let live = true;
  let timer = null;
  let history = [];
  let historyAt = 0;
  const list = h("div", { class: "segment-list" });
  const status = h("div", { class: "action-status" });
  const hooks = h("div", { class: "webhooks-view" }, message("info", "Loading…"));
  const ed = editor(() => refresh());
  const refresh = async () => {
    if (!live) return;
    clearTimeout(timer);
    try {
      const stale = Date.now() - historyAt >= HISTORY_EVERY_MS;
      const [segments, health] = await Promise.all([get("/cdp/segments"), stale ? get("/cdp/console/health").catch(() => null) : null]);
      if (!live) return;
      if (health) {
        history = health.history || [];
        historyAt = Date.now();
      }
      replace(
        list,
        table(["segment", "members", "ENTER", "EXIT", "backfill", ""], segmentRows(segments.segments || [], history, ed.load, refresh, status), { class: "segments" }),
      );
    } catch (error) {
      if (!live || error.status === 401) return;
      replace(list, message("error", `Could not load the segments: ${error.message}`));
    }
    try {
      const data = await get("/cdp/console/webhooks");
      if (live) replace(hooks, webhooksView(data));
    } catch (error) {
      if (!live || error.status === 401) return;
      replace(hooks, message("error", `Could not load the webhooks: ${error.message}`));
    }
    if (live) timer = setTimeout(refresh, REFRESH_MS);
  };
  root.append(
    h("div", { class: "toolbar" }, h("h2", {}, "Segments")),
    h("section", { class: "card" }, status, list),
    h("div", { class: "columns" }, ed.form, h("section", { class: "card grow" }, h("h3", {}, "Webhooks"), hooks)),
  );
  refresh();
  return () => {
    live = false;
    clearTimeout(timer);
  };
}

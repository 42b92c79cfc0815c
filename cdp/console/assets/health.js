// Pipeline health: rates over the last hour (from the sampled history), buffered
// events, workers and their partitions, lag and pending per partition, dead letters,
// dropped events and rejections, and the replay actions.
import { ApiError, call, get } from "./api.js";
import { fmt, rates, sparkline } from "./charts.js";
import { confirmDialog, h, iso, message, pretty, replace, table } from "./dom.js";

export const TITLE = "Health";
const REFRESH_MS = 5000;
// Shown name -> the counter names it may have (the first one present is used).
const RATES = [
  ["accepted", ["accepted"]],
  ["applied", ["applied", "processed"]],
  ["late", ["late"]],
  ["dropped", ["dropped"]],
  ["dedup", ["dedup", "dedup_hits"]],
];

function pick(counters, names) {
  for (const name of names) if (counters && counters[name] !== undefined) return Number(counters[name]);
  return undefined;
}

function rateCards(data) {
  const history = data.history || [];
  return h(
    "div",
    { class: "cards" },
    RATES.map(([label, names]) => {
      const series = rates(history, (sample) => pick(sample.counters, names));
      const last = series.length ? series[series.length - 1][1] : 0;
      const total = pick(data.counters, names);
      return h(
        "figure",
        { class: "card stat", "data-rate": label },
        h("figcaption", {}, h("strong", {}, label), h("span", { class: "muted" }, ` total ${total ?? 0}`)),
        sparkline(series, { width: 200, height: 44, label: `${label} per second` }),
        h("div", { class: "big" }, `${fmt(last)}/s`),
      );
    }),
  );
}

function replayButton(source, count, status, refresh) {
  const button = h("button", { type: "button", class: "secondary", "data-replay": source, disabled: !count }, `Replay ${source} (${count ?? 0})`);
  button.addEventListener("click", async () => {
    const ok = await confirmDialog({
      title: `Replay the ${source} events?`,
      body: `Every ${source} record not replayed yet is published again as an import (dedup makes a repeat harmless).`,
      confirmLabel: "Replay",
    });
    if (!ok) return;
    try {
      const { status: code, data } = await call("POST", "/cdp/replay", { body: { source } });
      if (code >= 400) throw new ApiError(code, data);
      replace(status, message("info", `Replayed ${data.replayed} of ${data.selected} selected (${data.alreadyReplayed} already, ${data.skipped} skipped).`), h("details", {}, h("summary", {}, "report"), h("pre", { class: "json" }, pretty(data))));
      refresh();
    } catch (error) {
      if (error.status !== 401) replace(status, message("error", `Replay failed: ${error.message}`));
    }
  });
  return button;
}

function view(data, status, refresh) {
  const streams = data.streams || {};
  const workers = data.workers || [];
  const partitions = data.partitions || [];
  return [
    h("p", { class: "muted" }, `As of ${iso(data.now)}; ${(data.history || []).length} sample(s) in the last hour.`),
    rateCards(data),
    h(
      "div",
      { class: "cards" },
      [
        ["buffered events", data.buffered],
        ["dropped (cdp:events:dropped)", streams.dropped],
        ["dead letters (cdp:events:dead)", streams.dead],
        ["webhook dead letters", streams.webhooksDead],
        ["rejections", streams.rejections],
      ].map(([label, value]) => h("div", { class: "card stat", "data-stat": label }, h("div", { class: "muted" }, label), h("div", { class: "big" }, String(value ?? 0)))),
    ),
    h("div", { class: "actions" }, replayButton("dropped", streams.dropped, status, refresh), replayButton("dead", streams.dead, status, refresh)),
    status,
    h(
      "div",
      { class: "columns" },
      h(
        "section",
        { class: "card grow" },
        h("h3", {}, `Workers (${workers.length})`),
        workers.length
          ? table(["worker", "buffered", "partitions"], workers.map((w) => h("tr", {}, h("td", { class: "mono" }, w.id), h("td", { class: "num" }, String(w.buffered ?? 0)), h("td", {}, (w.partitions || []).join(", ")))), { class: "workers" })
          : message("error", "No live worker."),
      ),
      h(
        "section",
        { class: "card grow" },
        h("h3", {}, "Partitions"),
        table(
          ["partition", "lag", "pending", "held by"],
          partitions.map((p) => h("tr", { class: p.lag > 0 || p.pending > 0 ? "busy" : "" }, h("td", { class: "num" }, String(p.partition)), h("td", { class: "num" }, String(p.lag ?? "")), h("td", { class: "num" }, String(p.pending ?? "")), h("td", { class: "mono" }, p.holder ?? "nobody"))),
          { class: "partitions" },
        ),
      ),
    ),
  ];
}

export function render(root) {
  let live = true;
  let timer = null;
  const body = h("div", {}, message("info", "Loading…"));
  const status = h("div", { class: "action-status" });
  const refresh = async () => {
    if (!live) return;
    clearTimeout(timer);
    try {
      const data = await get("/cdp/console/health");
      if (!live) return;
      replace(body, view(data, status, refresh));
    } catch (error) {
      if (!live || error.status === 401) return;
      replace(body, message("error", `Could not load the health: ${error.message}`));
    }
    if (live) timer = setTimeout(refresh, REFRESH_MS);
  };
  root.append(h("div", { class: "toolbar" }, h("h2", {}, "Pipeline health")), body);
  refresh();
  return () => {
    live = false;
    clearTimeout(timer);
  };
}

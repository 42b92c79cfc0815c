// Small SVG charts drawn here: a sparkline of a series and bars over buckets.
import { iso, s } from "./dom.js";

const W = 160;
const H = 36;

// values: [[timeMs, value], ...] oldest first.
export function sparkline(points, { width = W, height = H, label = "" } = {}) {
  const svg = s("svg", { class: "chart spark", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
  if (points.length === 0) {
    svg.appendChild(s("text", { x: 4, y: height / 2 + 4, class: "empty" }, "no data yet"));
    return svg;
  }
  const max = Math.max(...points.map((p) => p[1]), 0);
  const t0 = points[0][0];
  const t1 = points[points.length - 1][0];
  const x = (t) => (t1 === t0 ? width / 2 : 2 + ((t - t0) / (t1 - t0)) * (width - 4));
  const y = (v) => (max === 0 ? height - 2 : height - 2 - (v / max) * (height - 6));
  const coords = points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
  svg.appendChild(s("polyline", { points: coords, fill: "none", class: "line" }));
  const [lt, lv] = points[points.length - 1];
  svg.appendChild(s("circle", { cx: x(lt).toFixed(1), cy: y(lv).toFixed(1), r: 2, class: "dot" }));
  svg.appendChild(s("title", {}, `${label} max ${fmt(max)}, last ${fmt(lv)}`));
  return svg;
}

// buckets: [[bucketStartMs, count], ...] oldest first.
export function bars(buckets, { width = 220, height = 44, label = "" } = {}) {
  const svg = s("svg", { class: "chart bars", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
  if (buckets.length === 0) {
    svg.appendChild(s("text", { x: 4, y: height / 2 + 4, class: "empty" }, "no buckets"));
    return svg;
  }
  const max = Math.max(...buckets.map((b) => b[1]), 1);
  // at most 14px a bar, the newest bucket at the right edge
  const step = Math.min(14, width / buckets.length);
  const bw = Math.max(1, step - 2);
  const left = width - step * buckets.length;
  svg.appendChild(s("line", { x1: 0, x2: width, y1: height - 0.5, y2: height - 0.5, class: "axis" }));
  buckets.forEach(([start, count], i) => {
    const bh = Math.max(1, (count / max) * (height - 4));
    svg.appendChild(
      s(
        "rect",
        { x: (left + i * step + 1).toFixed(1), y: (height - bh).toFixed(1), width: bw.toFixed(1), height: bh.toFixed(1), class: "bar" },
        s("title", {}, `${iso(start)}: ${count}`),
      ),
    );
  });
  return svg;
}

export function fmt(n) {
  if (!Number.isFinite(n)) return String(n);
  if (Math.abs(n) >= 100 || Number.isInteger(n)) return String(Math.round(n));
  return n.toFixed(2);
}

// Per-second rates between consecutive samples: [[atMs, rate], ...].
export function rates(samples, pick) {
  const out = [];
  for (let i = 1; i < samples.length; i += 1) {
    const a = samples[i - 1];
    const b = samples[i];
    const dt = (b.at - a.at) / 1000;
    const va = pick(a);
    const vb = pick(b);
    if (dt <= 0 || va === undefined || vb === undefined) continue;
    out.push([b.at, Math.max(0, vb - va) / dt]);
  }
  return out;
}

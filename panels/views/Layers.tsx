/**
 * Layers: every MoE layer side by side.
 *  - A layer-vs-layer table (load entropy, MaxVio, router entropy, dead experts) over the window,
 *    sortable by any column, each number with a bar on its column's scale.
 *  - Small multiples of any per-layer metric over time (1-second intervals), every layer on one
 *    shared scale, so that their heights compare.
 *  - A diff of two windows of the same job: the last W seconds against W seconds ending some time
 *    ago ("what changed since 10 minutes ago"), per layer and per expert.
 */
import './maps.css';
import { useEffect, useMemo, useState } from 'preact/hooks';
import { LAYER_METRICS, shortLayerLabel, type LayerMetricId } from '../../src/analysis';
import type { Analysis, LayerRow } from '../engine/analyzer';
import type { DiffData, DiffRequest, SeriesData } from '../engine/view-data';
import type { Store } from '../store';
import { currentTheme, makeScale } from './colour-scale';
import { fmt, int, pct } from './format';
import { HeatGrid } from './HeatGrid';
import { analysisSource, useSettled } from './useSettled';

interface LayersOptions {
  metric: LayerMetricId;
  diff: DiffRequest;
}
const DEFAULTS: LayersOptions = { metric: 'maxVio', diff: { windowS: 30, agoS: 600 } };

export function Layers({ store, a: latest }: { store: Store; a: Analysis }) {
  const a = useSettled(store, latest, analysisSource(latest));
  // the same element while the shown analysis is held: Preact skips the whole view
  return useMemo(() => <LayersBody store={store} a={a} />, [store, a]);
}

function LayersBody({ store, a }: { store: Store; a: Analysis }) {
  const saved = store.state.viewRequests.layers as { series?: { metric: LayerMetricId }; diff?: DiffRequest } | undefined;
  const [o, setO] = useState<LayersOptions>(() => ({ metric: saved?.series?.metric ?? DEFAULTS.metric, diff: saved?.diff ?? DEFAULTS.diff }));
  useEffect(() => store.setViewRequest('layers', { series: { metric: o.metric }, diff: o.diff }), [o]);
  return (
    <div class="layers" data-testid="layers-view">
      <LayerTable store={store} a={a} />
      <Multiples store={store} a={a} metric={o.metric} series={a.views?.series ?? null} onMetric={(metric) => setO((x) => ({ ...x, metric }))} />
      <WindowDiff a={a} request={o.diff} data={a.views?.diff ?? null} onRequest={(patch) => setO((x) => ({ ...x, diff: { ...x.diff, ...patch } }))} />
    </div>
  );
}

type Column = 'layer' | 'tokens' | 'loadEntropy' | 'maxVio' | 'routerEntropy' | 'dead';

function LayerTable({ store, a }: { store: Store; a: Analysis }) {
  const [sort, setSort] = useState<{ by: Column; desc: boolean }>({ by: 'layer', desc: false });
  const dead = useMemo(() => {
    const m = new Map<number, number>();
    for (const f of a.findings) if (f.kind === 'dead_expert') m.set(f.layer, (m.get(f.layer) ?? 0) + (f.experts?.length ?? 0));
    return m;
  }, [a]);
  const value = (r: LayerRow, c: Column): number => {
    if (c === 'layer') return r.layer;
    if (c === 'tokens') return r.tokens;
    if (c === 'loadEntropy') return r.normalizedEntropy;
    if (c === 'maxVio') return r.maxVio;
    if (c === 'routerEntropy') return r.routerEntropy;
    return a.window.tokens >= a.judgeable[r.layer]! ? dead.get(r.layer) ?? 0 : NaN;
  };
  const rows = [...a.rows].sort((x, y) => {
    const vx = value(x, sort.by);
    const vy = value(y, sort.by);
    // Not measured (NaN) last either way.
    if (Number.isNaN(vx) || Number.isNaN(vy)) return Number.isNaN(vx) ? (Number.isNaN(vy) ? x.layer - y.layer : 1) : -1;
    return (sort.desc ? vy - vx : vx - vy) || x.layer - y.layer;
  });
  const maxVio = Math.max(1e-9, ...a.rows.map((r) => (Number.isFinite(r.maxVio) ? r.maxVio : 0)));
  const head = (c: Column, text: string, title: string) => (
    <th aria-sort={sort.by === c ? (sort.desc ? 'descending' : 'ascending') : 'none'}>
      <button class="th-sort" data-testid={`layers-sort-${c}`} title={`${title}. Click to sort.`}
        onClick={() => setSort((s) => ({ by: c, desc: s.by === c ? !s.desc : c !== 'layer' }))}>
        {text}{sort.by === c ? (sort.desc ? ' ▾' : ' ▴') : ''}
      </button>
    </th>
  );
  const bar = (v: number, max: number) => (Number.isFinite(v) ? <span class="cell-bar" style={{ width: `${Math.max(0, Math.min(1, v / max)) * 100}%` }} /> : null);
  return (
    <section>
      <h3>Layer vs layer <span class="muted">over the window ({a.window.passes} passes, {int(a.window.tokens)} tokens)</span></h3>
      <div class="table-scroll">
        <table class="grid layers-table fixed-grid" data-testid="layers-table">
          <thead><tr>
            {head('layer', 'Layer', 'Model order')}
            {head('tokens', 'Tokens', 'Tokens through the layer in the window')}
            {head('loadEntropy', 'Load entropy', 'Entropy of the loads / ln E: 1 even, 0 one expert takes all')}
            {head('maxVio', 'MaxVio', '(max load - mean) / mean: 0 even')}
            {head('routerEntropy', 'Router entropy', 'Mean normalized per-token router entropy')}
            {head('dead', 'Dead experts', 'Experts with no token over a window big enough to judge')}
          </tr></thead>
          <tbody>
            {rows.map((r) => {
              const d = value(r, 'dead');
              return (
                <tr key={r.layer} data-layer={r.layer} data-load-entropy={r.normalizedEntropy} data-max-vio={r.maxVio} data-router-entropy={r.routerEntropy} data-dead={d}
                  onClick={() => store.selectLayer(r.layer)}>
                  <td class="layer-name" title={r.label}>{r.label}</td>
                  <td class="num">{int(r.tokens)}</td>
                  <td class="num bar-num">{bar(r.normalizedEntropy, 1)}<span>{fmt(r.normalizedEntropy, 3)}</span></td>
                  <td class="num bar-num">{bar(r.maxVio, maxVio)}<span>{fmt(r.maxVio)}</span></td>
                  <td class="num bar-num">{bar(r.routerEntropy, 1)}<span>{fmt(r.routerEntropy, 3)}</span></td>
                  <td class={`num ${d > 0 ? 'warn' : ''}`} title={Number.isNaN(d) ? `judged from ${int(a.judgeable[r.layer]!)} tokens` : undefined}>{Number.isNaN(d) ? '–' : d}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
    </section>
  );
}

function Multiples({ store, a, metric, series, onMetric }: { store: Store; a: Analysis; metric: LayerMetricId; series: SeriesData | null; onMetric: (m: LayerMetricId) => void }) {
  const info = LAYER_METRICS.find((m) => m.id === metric)!;
  const fresh = series && series.metric === metric ? series : null;
  const T = fresh ? fresh.t.length : 0;
  const L = a.layers;
  // One scale for every layer: the range of all their values.
  let lo = Infinity;
  let hi = -Infinity;
  if (fresh) for (const v of fresh.values) if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  if (!(hi >= lo)) { lo = 0; hi = 1; }
  if (lo > 0 && lo < hi * 0.5) lo = 0; // start at 0 unless the values sit in a narrow band far from it
  if (hi === lo) hi = lo + (Math.abs(lo) || 1);
  const key = fresh ? `${metric}:${T}:${fresh.t[T - 1]}:${lo}:${hi}:${currentTheme()}` : '';
  return (
    <section>
      <h3>Over time, every layer on one scale{' '}
        <select data-testid="layers-metric" value={metric} onChange={(e) => onMetric((e.target as HTMLSelectElement).value as LayerMetricId)}>
          {LAYER_METRICS.map((m) => <option key={m.id} value={m.id}>{m.label}</option>)}
        </select>
      </h3>
      <p class="muted" data-testid="layers-scale" data-lo={lo} data-hi={hi}>{info.description}. Each box: one layer, the last {T} intervals of {fresh?.seconds ?? 1} s; y from {fmt(lo, 3)} to {fmt(hi, 3)} for every box.</p>
      {!fresh || T === 0 ? <p class="empty">No 1-second interval has closed yet.</p> : (
        <div class="multiples" data-testid="layers-multiples">
          {a.rows.map((r) => {
            const last = fresh.values[(T - 1) * L + r.layer]!;
            return (
              <button key={r.layer} class="multiple" data-layer={r.layer} data-last={last} title={`${r.label}: ${info.label} ${fmt(last, 3)} in the last interval`} onClick={() => store.selectLayer(r.layer)}>
                <SeriesSpark values={fresh.values} layers={L} layer={r.layer} count={T} lo={lo} hi={hi} drawKey={key} />
                <span>{shortLayerLabel(r.info)} · {fmt(last, 2)}</span>
              </button>
            );
          })}
        </div>
      )}
    </section>
  );
}

/**
 * One layer's series as an SVG polyline (recomputed only when its data or scale changed). Not a
 * canvas: 64 to 128 small canvases made Chrome's layerization step cost ~5 ms per frame.
 */
function SeriesSpark({ values, layers, layer, count, lo, hi, drawKey }: { values: Float32Array; layers: number; layer: number; count: number; lo: number; hi: number; drawKey: string }) {
  const w = 120;
  const h = 36;
  const segments = useMemo(() => {
    const out: string[] = [];
    let cur: string[] = [];
    for (let i = 0; i < count; i++) {
      const v = values[i * layers + layer]!;
      if (!Number.isFinite(v)) {
        if (cur.length) out.push(cur.join(' '));
        cur = [];
        continue;
      }
      const x = count > 1 ? (i / (count - 1)) * (w - 2) + 1 : w / 2;
      const y = h - 2 - ((v - lo) / (hi - lo)) * (h - 4);
      cur.push(`${x.toFixed(1)},${y.toFixed(1)}`);
    }
    if (cur.length) out.push(cur.join(' '));
    return out;
  }, [drawKey]);
  return (
    <svg class="spark series-spark" width={w} height={h} viewBox={`0 0 ${w} ${h}`} aria-hidden="true">
      {segments.map((pts, i) => <polyline key={i} points={pts} />)}
    </svg>
  );
}

const AGO_PRESETS = [60, 300, 600, 1800];

function WindowDiff({ a, request, data, onRequest }: { a: Analysis; request: DiffRequest; data: DiffData | null; onRequest: (r: Partial<DiffRequest>) => void }) {
  const fresh = data && data.request.windowS === request.windowS && data.request.agoS === request.agoS ? data : null;
  const num = (e: Event, fallback: number) => {
    const v = Number((e.target as HTMLInputElement).value);
    return Number.isFinite(v) && v > 0 ? v : fallback;
  };
  return (
    <section>
      <h3>What changed</h3>
      <div class="controls">
        <label>Compare the last <input type="number" min="1" data-testid="diff-window" value={request.windowS} onChange={(e) => onRequest({ windowS: num(e, 30) })} /> s</label>
        <label>with the same length ending <input type="number" min="1" data-testid="diff-ago" value={request.agoS} onChange={(e) => onRequest({ agoS: num(e, 600) })} /> s ago</label>
        <span class="plot-tools">
          {AGO_PRESETS.map((s) => <button key={s} class="icon-button" data-testid={`diff-ago-${s}`} onClick={() => onRequest({ agoS: s })}>{s >= 60 ? `${s / 60} min` : `${s} s`}</button>)}
        </span>
      </div>
      {!fresh ? (
        <p class="empty" data-testid="diff-empty">
          {data === null && a.views
            ? `The earlier window would end before the job was attached (${fmt(a.timeline.t[a.timeline.length - 1] ?? 0, 0)} s ago): ask for a shorter time ago.`
            : 'Comparing…'}
        </p>
      ) : <DiffBody a={a} d={fresh} />}
    </section>
  );
}

function DiffBody({ a, d }: { a: Analysis; d: DiffData }) {
  const { before, after } = d;
  const short = before.t1 - before.t0 < d.request.windowS * 0.5;
  const late = after.t1 - before.t1 < d.request.agoS * 0.5;
  const W = a.maxWidth;
  const L = a.layers;
  // Colour: the expert's share now ÷ its share then (the fair-share scale does ratios: value × width = ratio).
  const { values, ratios } = useMemo(() => {
    const values = new Float32Array(L * W).fill(NaN);
    const ratios = new Float32Array(L * W).fill(NaN);
    for (let l = 0; l < L; l++) {
      const off = a.offsets[l]!;
      const E = a.widths[l]!;
      let tb = 0;
      let ta = 0;
      for (let e = 0; e < E; e++) {
        tb += before.counts[off + e]!;
        ta += after.counts[off + e]!;
      }
      for (let e = 0; e < E; e++) {
        const p = tb ? before.counts[off + e]! / tb : 0;
        const q = ta ? after.counts[off + e]! / ta : 0;
        const r = p > 0 ? q / p : q > 0 ? Infinity : NaN;
        ratios[l * W + e] = r;
        values[l * W + e] = Number.isNaN(r) ? NaN : r === Infinity ? 1 : r / E; // unused both times: blank
      }
    }
    return { values, ratios };
  }, [d]);
  const scale = makeScale('fair', currentTheme(), values);
  const describe = (l: number, e: number) => {
    const row = a.rows[l]!;
    if (e >= a.widths[l]!) return `${row.label} has ${a.widths[l]} experts (no expert ${e})`;
    const off = a.offsets[l]!;
    const E = a.widths[l]!;
    let tb = 0;
    let ta = 0;
    for (let i = 0; i < E; i++) {
      tb += before.counts[off + i]!;
      ta += after.counts[off + i]!;
    }
    const nb = before.counts[off + e]!;
    const na = after.counts[off + e]!;
    const r = ratios[l * W + e]!;
    return `${row.label}, expert ${e}: then ${int(nb)} assignments (${pct(tb ? nb / tb : 0)} of the layer), now ${int(na)} (${pct(ta ? na / ta : 0)})` +
      (Number.isNaN(r) ? ', unused both times' : r === Infinity ? ', new' : `, ${fmt(r)}× its share then`);
  };
  // In model order (a table that re-sorted itself 5 times a second could not be read); the bars show the size of each shift.
  const rows = d.layers;
  return (
    <>
      <p class="muted" data-testid="diff-summary" data-before-from={before.fromPass} data-before-to={before.toPass} data-after-from={after.fromPass} data-after-to={after.toPass}
        data-before-seconds={before.t1 - before.t0} data-after-seconds={after.t1 - after.t0} data-ago={after.t1 - before.t1}>
        Then: {fmt(before.t0, 1)}–{fmt(before.t1, 1)} s after attach (passes {before.fromPass + 1}–{before.toPass}, {int(before.tokens[0] ?? 0)} tokens through {a.rows[0]?.label}).
        Now: {fmt(after.t0, 1)}–{fmt(after.t1, 1)} s (passes {after.fromPass + 1}–{after.toPass}, {int(after.tokens[0] ?? 0)} tokens).
        {d.spacing > 1 ? ` The earlier window is read from snapshots kept every ${fmt(d.spacing, 0)} s, so its ends may be off by up to half that.` : ''}
        {short || late ? ' The job has not been attached long enough for the windows asked for: they are as close as the history allows.' : ''}
      </p>
      <div class="table-scroll">
        <table class="grid fixed-grid" data-testid="diff-table">
          <thead><tr>
            <th>Layer</th>
            <th title="Total variation distance between the two load distributions: half the sum of |share now - share then| over the experts; 0 same, 1 disjoint">Load shift</th>
            <th>Load entropy then → now</th><th>MaxVio then → now</th><th>Router entropy then → now</th><th>Moved most (share then → now)</th>
          </tr></thead>
          <tbody>
            {rows.map((x) => {
              const r = a.rows[x.layer]!;
              return (
                <tr key={x.layer} data-layer={x.layer} data-tv={x.shift.totalVariation}>
                  <td class="layer-name">{r.label}</td>
                  <td class="num bar-num">{Number.isFinite(x.shift.totalVariation) ? <span class="cell-bar" style={{ width: `${x.shift.totalVariation * 100}%` }} /> : null}<span>{fmt(x.shift.totalVariation, 3)}</span></td>
                  <td class="num">{fmt(x.shift.normalizedEntropyBefore, 3)} → {fmt(x.shift.normalizedEntropyAfter, 3)}</td>
                  <td class="num">{fmt(x.shift.maxVioBefore)} → {fmt(x.shift.maxVioAfter)}</td>
                  <td class="num">{fmt(x.routerEntropyBefore, 3)} → {fmt(x.routerEntropyAfter, 3)}</td>
                  <td>{x.shift.largest.slice(0, 3).map((m) => <span class="chip" key={m.expert}>{m.expert}: {pct(m.before)} → {pct(m.after)}</span>)}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
      <h3>Per expert <span class="muted">share now ÷ share then</span></h3>
      <HeatGrid rows={L} cols={W} values={values} rowWidths={a.widths} order={null} scale={scale} describe={describe}
        rowTick={(l) => shortLayerLabel(a.rows[l]!.info)} rowAxis="MoE layer" colAxis="expert" testid="diff-heatmap" legend="expert's share now ÷ its share then; blank: unused both times" height={Math.min(360, Math.max(60, L * 10))} />
    </>
  );
}

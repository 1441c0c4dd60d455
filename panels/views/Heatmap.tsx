/**
 * Heatmap: experts' shares as colour, in three arrangements:
 *  - layers x experts over the window (each cell the expert's share of its layer's assignments;
 *    layers keep their own widths, cells past a layer's last expert are blank);
 *  - time x experts for one layer (1 s buckets: how its load moved);
 *  - tokens x experts for one sampled sequence (each token's routing weights).
 * Axes, a colour legend, linear / log / fair-share scales, columns by expert id, load or
 * similarity, and WebGL when the canvas cannot keep up (HeatGrid).
 */
import { useEffect, useMemo, useState } from 'preact/hooks';
import { shortLayerLabel } from '../../src/analysis';
import type { Analysis, TokenRow } from '../engine/analyzer';
import { defaultTokenPass, tokenWeights, type HeatmapMode, type HeatmapRequest, type HeatmapSort, type LayerBucket } from '../engine/view-data';
import type { Store } from '../store';
import { currentTheme, makeScale, SCALE_MODES, type ScaleMode } from './colour-scale';
import { fmt, int, pct } from './format';
import { HeatGrid, type Renderer } from './HeatGrid';

/** The Heatmap's options: what the worker is asked for, and how it is drawn. */
export interface HeatmapOptions extends HeatmapRequest {
  scale: ScaleMode;
  renderer: Renderer;
}

const DEFAULTS: HeatmapOptions = { mode: 'layers', sort: 'index', layer: 0, pass: null, scale: 'fair', renderer: 'auto' };

function tokenText(row: TokenRow, i: number): string {
  const t = row.texts?.[i];
  if (t !== undefined) return JSON.stringify(t).slice(1, -1);
  const id = row.tokenIds?.[i];
  return id !== undefined ? `#${id}` : `·${i}`;
}

export function Heatmap({ store, a, layer }: { store: Store; a: Analysis; layer: number }) {
  const saved = store.state.viewRequests.heatmap?.heatmap as HeatmapOptions | undefined;
  const [o, setO] = useState<HeatmapOptions>(() => ({ ...DEFAULTS, layer, ...saved }));
  const set = (patch: Partial<HeatmapOptions>) => setO((prev) => ({ ...prev, ...patch }));
  useEffect(() => store.setViewRequest('heatmap', { heatmap: o }), [o]);
  const L = a.layers;
  const lay = Math.min(o.layer, L - 1);
  const labels = a.rows.map((r) => r.label).join('\n');
  const layerOptions = useMemo(() => a.rows.map((r) => <option key={r.layer} value={String(r.layer)}>{r.label}</option>), [labels]);
  const hd = a.views?.heatmap;
  const fresh = hd && hd.request.mode === o.mode && hd.request.layer === o.layer && hd.request.pass === o.pass ? hd : null;
  const order = fresh && fresh.request.sort === o.sort && o.sort !== 'index' ? fresh.order : null;

  const controls = (
    <div class="controls">
      <label>View{' '}
        <select data-testid="heatmap-mode" value={o.mode} onChange={(e) => set({ mode: (e.target as HTMLSelectElement).value as HeatmapMode })}>
          <option value="layers">layers × experts</option>
          <option value="time">time × experts (one layer)</option>
          <option value="tokens">tokens × experts (one sequence)</option>
        </select>
      </label>
      {o.mode !== 'layers' && (
        <label>Layer{' '}
          <select data-testid="heatmap-layer" value={String(lay)} onChange={(e) => set({ layer: Number((e.target as HTMLSelectElement).value) })}>
            {layerOptions}
          </select>
        </label>
      )}
      {o.mode === 'tokens' && (
        <label>Sequence{' '}
          <select data-testid="heatmap-pass" value={o.pass === null || o.pass === undefined ? '' : String(o.pass)} onChange={(e) => { const v = (e.target as HTMLSelectElement).value; set({ pass: v === '' ? null : Number(v) }); }}>
            <option value="">latest, most tokens</option>
            {a.tokens.map((r) => <option key={r.pass} value={String(r.pass)}>pass {r.pass} ({r.phase}, {r.n} tokens)</option>)}
          </select>
        </label>
      )}
      <label>Colour{' '}
        <select data-testid="heatmap-scale" value={o.scale} onChange={(e) => set({ scale: (e.target as HTMLSelectElement).value as ScaleMode })}>
          {SCALE_MODES.map((m) => <option key={m.id} value={m.id}>{m.label}</option>)}
        </select>
      </label>
      <label>Experts by{' '}
        <select data-testid="heatmap-sort" value={o.sort} onChange={(e) => set({ sort: (e.target as HTMLSelectElement).value as HeatmapSort })}>
          <option value="index">expert id</option>
          <option value="load">load (busiest first)</option>
          <option value="similarity">similarity (alike side by side)</option>
        </select>
      </label>
      <label title="WebGL draws large maps on the GPU; auto switches to it for large maps or when the canvas is slow">Draw with{' '}
        <select data-testid="heatmap-renderer" value={o.renderer} onChange={(e) => set({ renderer: (e.target as HTMLSelectElement).value as Renderer })}>
          <option value="auto">auto</option>
          <option value="canvas">canvas</option>
          <option value="webgl">WebGL</option>
        </select>
      </label>
    </div>
  );
  const common = { order, renderer: o.renderer };
  return (
    <div class="heatmap" data-testid="heatmap-view" data-mode={o.mode} data-passes={a.window.passes} data-from-pass={a.window.fromPass}
      data-order={order ? order.join(',') : undefined}>
      {controls}
      {o.mode === 'layers' && <LayersMap a={a} scaleMode={o.scale} {...common} />}
      {o.mode === 'time' && <TimeMap a={a} layer={lay} data={fresh?.buckets ?? null} scaleMode={o.scale} {...common} />}
      {o.mode === 'tokens' && <TokensMap a={a} layer={lay} row={o.pass === null ? defaultTokenPass(a.tokens) : a.tokens.find((r) => r.pass === o.pass) ?? null} scaleMode={o.scale} {...common} />}
    </div>
  );
}

interface MapProps {
  a: Analysis;
  scaleMode: ScaleMode;
  order: number[] | null;
  renderer: Renderer;
}

function LayersMap({ a, scaleMode, order, renderer }: MapProps) {
  const { layers: L, widths, offsets, maxWidth: W } = a;
  const c = a.window.counts;
  const { values, totals } = useMemo(() => {
    const totals = new Float64Array(L);
    const values = new Float32Array(L * W).fill(NaN);
    for (let l = 0; l < L; l++) {
      let t = 0;
      for (let e = 0; e < widths[l]!; e++) t += c[offsets[l]! + e]!;
      totals[l] = t;
      for (let e = 0; e < widths[l]!; e++) values[l * W + e] = t ? c[offsets[l]! + e]! / t : 0;
    }
    return { values, totals };
  }, [a]);
  const scale = makeScale(scaleMode, currentTheme(), values);
  const describe = (l: number, e: number) => {
    const row = a.rows[l]!;
    if (e >= widths[l]!) return `${row.label} has ${widths[l]} experts (no expert ${e})`;
    const n = c[offsets[l]! + e]!;
    const share = totals[l]! ? n / totals[l]! : 0;
    const identity = e >= widths[l]! - row.info.identity_experts ? ' (zero-compute)' : '';
    return `${row.label}, expert ${e}${identity}: ${int(n)} assignments, ${pct(share)} of the layer ` +
      `(fair share ${pct(1 / widths[l]!)}; ${fmt(share * widths[l]!)}× fair) over ${a.window.passes} passes`;
  };
  const mixed = widths.some((w) => w !== W);
  return (
    <>
      <p class="muted">{L} layers × {mixed ? `up to ${W}` : W} experts · last {a.window.passes} passes{mixed ? ' · blank: past a layer’s last expert' : ''}</p>
      <HeatGrid rows={L} cols={W} values={values} rowWidths={widths} order={order} scale={scale} describe={describe}
        rowTick={(l) => shortLayerLabel(a.rows[l]!.info)} rowAxis="MoE layer (model order)" colAxis="expert" testid="heatmap" renderer={renderer} />
    </>
  );
}

function TimeMap({ a, layer, data, scaleMode, order, renderer }: MapProps & { layer: number; data: LayerBucket[] | null }) {
  const E = a.widths[layer]!;
  const row = a.rows[layer]!;
  const buckets = data ?? [];
  const { values, totals } = useMemo(() => {
    const totals = buckets.map((b) => b.counts.reduce((x, y) => x + y, 0));
    const values = new Float32Array(buckets.length * E);
    buckets.forEach((b, r) => {
      for (let e = 0; e < E; e++) values[r * E + e] = totals[r]! ? b.counts[e]! / totals[r]! : 0;
    });
    return { values, totals };
  }, [data, layer]);
  if (!buckets.length) return <p class="empty" data-testid="heatmap-time-empty">No 1-second bucket has closed yet for {row.label}.</p>;
  const scale = makeScale(scaleMode, currentTheme(), values);
  const now = buckets[buckets.length - 1]!.t1;
  const describe = (r: number, e: number) => {
    const b = buckets[r]!;
    const n = b.counts[e]!;
    return `${row.label}, expert ${e}, ${fmt(b.t0, 1)}–${fmt(b.t1, 1)} s (passes ${b.fromPass + 1}–${b.toPass}): ${int(n)} assignments, ` +
      `${pct(totals[r]! ? n / totals[r]! : 0)} of the layer in that interval`;
  };
  return (
    <>
      <p class="muted">{row.label}: each row one {a.views?.buckets?.seconds ?? 1}-second interval, oldest at the top ({buckets.length} intervals, the last {fmt(now - buckets[0]!.t0, 0)} s)</p>
      <HeatGrid rows={buckets.length} cols={E} values={values} rowWidths={buckets.map(() => E)} order={order} scale={scale} describe={describe}
        rowTick={(r) => `${fmt(buckets[r]!.t1 - now, 0)} s`} rowAxis="time" colAxis="expert" testid="heatmap" renderer={renderer} quantity="share of the layer in the interval" />
    </>
  );
}

function TokensMap({ a, layer, row, scaleMode, order, renderer }: MapProps & { layer: number; row: TokenRow | null }) {
  const E = a.widths[layer]!;
  const info = a.rows[layer]!;
  const rec = row?.layers.find((l) => l.layer === layer) ?? null;
  const values = useMemo(() => (row && rec ? tokenWeights(rec, row.n, E) : new Float32Array(0)), [row, rec, E]);
  if (!row) return <p class="empty" data-testid="heatmap-tokens-empty">No sampled sequence in this window yet: the probe samples a few passes per second.</p>;
  if (!rec) return <p class="empty" data-testid="heatmap-tokens-empty">Pass {row.pass} has no per-token choices for {info.label}{info.info.token_source === 'none' ? ' (not visible for this layer)' : ''}.</p>;
  const scale = makeScale(scaleMode, currentTheme(), values);
  const describe = (i: number, e: number) => {
    const slots: string[] = [];
    for (let j = 0; j < rec.k; j++) {
      if (rec.ids[i * rec.k + j] !== e) continue;
      slots.push(`slot ${j + 1}${rec.weights ? `, gate weight ${fmt(rec.weights[i * rec.k + j]!, 4)}` : ''}`);
    }
    const share = values[i * E + e]!;
    return `token ${i} “${tokenText(row, i)}” (pass ${row.pass}), ${info.label}, expert ${e}: ` +
      (slots.length ? `chosen (${slots.join('; ')}), ${pct(share)} of the token’s routing weight` : 'not chosen');
  };
  return (
    <>
      <p class="muted">{info.label}: pass {row.pass} ({row.phase}), {row.n} sampled tokens; each cell the token’s routing weight on the expert
        {rec.weights ? ' (gate weights, normalized over its chosen experts)' : ' (1/k for each chosen expert: the router gives no weights)'}</p>
      <HeatGrid rows={row.n} cols={E} values={values} rowWidths={new Array(row.n).fill(E)} order={order} scale={scale} describe={describe}
        rowTick={(i) => tokenText(row, i)} rowAxis="token" colAxis="expert" testid="heatmap" renderer={renderer} quantity="the token’s routing weight" height={Math.min(640, Math.max(80, row.n * 14))} />
    </>
  );
}

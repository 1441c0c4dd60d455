/**
 * Flow: how the window's sampled tokens move from the experts of one MoE layer to the experts of
 * the next, over a chosen range of layers, as a Sankey diagram (src/analysis/flow.ts counts it,
 * in the worker; flow-layout.ts places it). Hover a node or band for its counts; click a node (or
 * focus the diagram, move with the arrow keys and press Enter) to follow the tokens of one expert
 * through the stack; filter the tokens by text. The table lists one pair's transitions, the
 * numbers `moe-devtools flow` prints from a recording.
 */
import './maps.css';
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { FLOW_WEIGHTINGS, shortLayerLabel, transition, type FlowWeighting, type RoutingFlow } from '../../src/analysis';
import type { Analysis } from '../engine/analyzer';
import type { FlowData, FlowRequest } from '../engine/view-data';
import type { Store } from '../store';
import { currentTheme } from './colour-scale';
import { bandY, hitFlow, layoutFlow, type FlowBands, type FlowLayout, type FlowNode, type NodeOrder } from './flow-layout';
import { fmt, int, pct } from './format';
import { analysisSource, useSettled } from './useSettled';

const WEIGHTING_LABEL: Record<FlowWeighting, string> = {
  top1: 'top-1 choice (whole tokens)',
  slots: 'all top-k slots, equal split',
  gates: 'all top-k slots, by gate weight',
};
/** Bands thinner than this are not drawn (they would not show); they still count everywhere else. */
const MIN_BAND_PX = 0.25;
const MAX_BANDS_PER_PAIR = 300;
const TABLE_ROWS = 50;

/** Same hue per expert as the Tokens view's underline. */
const hue = (expert: number) => (expert * 47) % 360;

function defaultRequest(layer: number, layers: number): FlowRequest {
  const from = Math.max(0, Math.min(layer, layers - 2));
  return { from, to: Math.min(layers - 1, from + 3), weighting: 'top1', filter: '', through: null };
}

export function Flow({ store, a, layer }: { store: Store; a: Analysis; layer: number }) {
  const saved = store.state.viewRequests.flow?.flow;
  const [req, setReq] = useState<FlowRequest>(() => saved ?? defaultRequest(layer, a.layers));
  const [order, setOrder] = useState<NodeOrder>('expert');
  const [filterText, setFilterText] = useState(req.filter);
  const set = (patch: Partial<FlowRequest>) => setReq((r) => ({ ...r, ...patch }));
  useEffect(() => store.setViewRequest('flow', { flow: req }), [req]);
  useEffect(() => {
    const t = setTimeout(() => set({ filter: filterText }), 300);
    return () => clearTimeout(t);
  }, [filterText]);
  const data = a.views?.flow ?? null;
  const label = (l: number) => a.rows[l]?.label ?? `layer ${l}`;
  // The layer lists change only with the model: the same elements let Preact skip them at each analysis.
  const labels = a.rows.map((r) => r.label).join('\n');
  const options = useMemo(() => a.rows.map((r) => <option key={r.layer} value={String(r.layer)}>{r.label}</option>), [labels]);
  const hidden = a.rows.filter((r) => r.layer >= Math.min(req.from, req.to) && r.layer <= Math.max(req.from, req.to) && r.info.token_source === 'none');

  return (
    <div class="flow" data-testid="flow-view">
      <div class="controls">
        <label>From{' '}
          <select data-testid="flow-from" value={String(req.from)} onChange={(e) => set({ from: Number((e.target as HTMLSelectElement).value), through: null })}>
            {options}
          </select>
        </label>
        <label>to{' '}
          <select data-testid="flow-to" value={String(req.to)} onChange={(e) => set({ to: Number((e.target as HTMLSelectElement).value), through: null })}>
            {options}
          </select>
        </label>
        <label>Count{' '}
          <select data-testid="flow-weighting" value={req.weighting} onChange={(e) => set({ weighting: (e.target as HTMLSelectElement).value as FlowWeighting })}>
            {FLOW_WEIGHTINGS.map((w) => <option key={w} value={w}>{WEIGHTING_LABEL[w]}</option>)}
          </select>
        </label>
        <label title="Tokens whose text contains this (case-insensitive); #123 for token id 123">Tokens{' '}
          <input type="search" data-testid="flow-filter" placeholder="filter by text or #id" value={filterText}
            onInput={(e) => setFilterText((e.target as HTMLInputElement).value)} onKeyDown={(e) => e.key === 'Enter' && set({ filter: filterText })} />
        </label>
        <label>Nodes by{' '}
          <select data-testid="flow-order" value={order} onChange={(e) => setOrder((e.target as HTMLSelectElement).value as NodeOrder)}>
            <option value="expert">expert id</option>
            <option value="flow">flow (largest first)</option>
          </select>
        </label>
        {req.through && (
          <span class="chip" data-testid="flow-through" data-layer={req.through.layer} data-expert={req.through.expert}>
            following {shortLayerLabel(a.rows[req.through.layer]!.info)} expert {req.through.expert}
            <button class="icon-button" title="Stop following (Escape)" onClick={() => set({ through: null })}>✕</button>
          </span>
        )}
      </div>
      {hidden.length > 0 && <p class="muted">Per-token choices are not visible for {hidden.map((r) => r.label).join(', ')}: no flow passes through {hidden.length === 1 ? 'it' : 'them'}.</p>}
      {!data ? <p class="empty">Counting the flow…</p> : data.flow.tokens === 0 ? (
        <p class="empty" data-testid="flow-empty">
          {data.sampledPasses === 0 ? 'No sampled tokens in this window yet: the probe samples a few passes per second.' : `No sampled token in this window matches “${data.request.filter}”.`}
        </p>
      ) : <FlowBody store={store} a={a} data={data} order={order} label={label} onFollow={(through) => set({ through })} />}
    </div>
  );
}

function FlowBody({ store, a, data, order, label, onFollow }: {
  store: Store; a: Analysis; data: FlowData; order: NodeOrder; label: (l: number) => string; onFollow: (t: FlowRequest['through']) => void;
}) {
  const { flow, highlight } = data;
  const passes = flow.passes;
  // The diagram follows every analysis; the transitions table the newest at most once a second.
  const listed = useSettled(store, data, `${analysisSource(a)}/${JSON.stringify(data.request)}`);
  const [pairIndex, setPairIndex] = useState(0);
  const [showAll, setShowAll] = useState(false);
  const pairs = listed.flow.pairs;
  const p = Math.min(pairIndex, pairs.length - 1);
  const pair = pairs[p];
  const rows = useMemo(() => {
    if (!pair) return [];
    const idx = Array.from(pair.weight.keys()).sort((x, y) => pair.weight[y]! - pair.weight[x]! || pair.src[x]! - pair.src[y]! || pair.dst[x]! - pair.dst[y]!);
    return idx;
  }, [pair]);
  const fromMass = listed.flow.nodes[p];
  const toMass = listed.flow.nodes[p + 1];
  const omitted = listed.omitted[p];
  return (
    <>
      <p class="muted" data-testid="flow-summary" data-tokens={flow.tokens} data-passes={passes.join(',')} data-weighting={flow.weighting}
        data-filter={data.request.filter} data-highlight={highlight?.tokens}>
        {int(flow.tokens)} sampled tokens{data.request.filter ? ` matching “${data.request.filter}”` : ''} from {passes.length} passes in the window
        {passes.length ? ` (passes ${passes[0]}–${passes[passes.length - 1]})` : ''}; {WEIGHTING_LABEL[flow.weighting]}; node height = tokens.
        {highlight ? ` Highlighted: the ${int(highlight.tokens)} tokens through ${label(data.request.through!.layer)} expert ${data.request.through!.expert}.` : ' Click a node to follow its tokens.'}
      </p>
      <Sankey a={a} flow={flow} highlight={highlight} order={order} label={label} onFollow={onFollow} through={data.request.through} />
      {pairs.length > 0 && pair && fromMass && toMass && (
        <section>
          <h3>Transitions{' '}
            <select data-testid="flow-pair" value={String(p)} onChange={(e) => setPairIndex(Number((e.target as HTMLSelectElement).value))}>
              {pairs.map((x, i) => <option key={i} value={String(i)}>{label(x.from)} → {label(x.to)}</option>)}
            </select>
            {' '}<span class="muted">{int(pair.src.length + (omitted?.transitions ?? 0))} distinct, {fmt(pair.total, pair.total % 1 ? 2 : 0)} tokens in both layers</span>
          </h3>
          {omitted && omitted.transitions > 0 && <p class="muted">The {int(omitted.transitions)} smallest transitions ({fmt(omitted.weight, 1)} tokens) are not listed or drawn.</p>}
          <div class="table-scroll flow-table-box">
            <table class="grid fixed-grid" data-testid="flow-table" data-from={pair.from} data-to={pair.to} data-total={pair.total} data-rows={rows.length}>
              <thead><tr><th>From expert</th><th>To expert</th><th>Tokens</th><th title="of the tokens leaving the From expert">% of from</th><th title="of the tokens reaching the To expert">% of to</th></tr></thead>
              <tbody>
                {(showAll ? rows : rows.slice(0, TABLE_ROWS)).map((i) => {
                  const w = pair.weight[i]!;
                  return (
                    <tr key={`${pair.src[i]}>${pair.dst[i]}`} data-src={pair.src[i]} data-dst={pair.dst[i]} data-weight={w}>
                      <td class="num">{pair.src[i]}</td><td class="num">{pair.dst[i]}</td>
                      <td class="num" data-testid="flow-count">{fmt(w, w % 1 ? 3 : 0)}</td>
                      <td class="num">{pct(w / fromMass[pair.src[i]!]!)}</td><td class="num">{pct(w / toMass[pair.dst[i]!]!)}</td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
          {rows.length > TABLE_ROWS && (
            <button class="link" data-testid="flow-show-all" onClick={() => setShowAll(!showAll)}>{showAll ? `Show the largest ${TABLE_ROWS}` : `Show all ${int(rows.length)}`}</button>
          )}
        </section>
      )}
    </>
  );
}

function describeNode(n: FlowNode, flow: RoutingFlow, label: (l: number) => string): string {
  const total = flow.nodes[n.column]!.reduce((x, y) => x + y, 0);
  const parts = [`${label(n.layer)}, expert ${n.expert}: ${fmt(n.mass, n.mass % 1 ? 2 : 0)} tokens (${pct(n.mass / total)} of the layer’s flow)`];
  const next = flow.pairs[n.column];
  if (next) {
    const out: Array<[number, number]> = [];
    for (let i = 0; i < next.src.length; i++) if (next.src[i] === n.expert) out.push([next.dst[i]!, next.weight[i]!]);
    out.sort((x, y) => y[1] - x[1]);
    if (out.length) parts.push(`next: ${out.slice(0, 3).map(([e, w]) => `expert ${e} ${pct(w / n.mass, 0)}`).join(', ')}`);
  }
  return parts.join('; ');
}

function describeBand(b: number, layout: FlowLayout, flow: RoutingFlow, label: (l: number) => string): string {
  const { bands } = layout;
  const p = bands.pair[b]!;
  const pair = flow.pairs[p]!;
  const from = bands.from[b]!;
  const to = bands.to[b]!;
  const w = transition(pair, from, to);
  return `${label(pair.from)} expert ${from} → ${label(pair.to)} expert ${to}: ${fmt(w, w % 1 ? 3 : 0)} tokens ` +
    `(${pct(w / flow.nodes[p]![from]!)} of expert ${from}’s, ${pct(w / flow.nodes[p + 1]![to]!)} of expert ${to}’s)`;
}

/** The bands worth drawing: per pair the largest ones, at most MAX_BANDS_PER_PAIR, none thinner than MIN_BAND_PX. */
function bandsToDraw(layout: FlowLayout, pairs: number): { drawn: Int32Array; skipped: number; skippedTokens: number } {
  const { bands } = layout;
  const byPair: number[][] = Array.from({ length: pairs }, () => []);
  let skipped = 0;
  let skippedTokens = 0;
  for (let i = 0; i < bands.n; i++) {
    if (bands.w[i]! >= MIN_BAND_PX) byPair[bands.pair[i]!]!.push(i);
    else {
      skipped++;
      skippedTokens += bands.weight[i]!;
    }
  }
  const drawn: number[] = [];
  for (const list of byPair) {
    if (list.length > MAX_BANDS_PER_PAIR) {
      list.sort((x, y) => bands.w[y]! - bands.w[x]!);
      for (const i of list.slice(MAX_BANDS_PER_PAIR)) {
        skipped++;
        skippedTokens += bands.weight[i]!;
      }
      list.length = MAX_BANDS_PER_PAIR;
    }
    drawn.push(...list);
  }
  // Widest first, so that thin bands stay visible on top.
  drawn.sort((x, y) => bands.w[y]! - bands.w[x]!);
  return { drawn: Int32Array.from(drawn), skipped, skippedTokens };
}

function Sankey({ a, flow, highlight, order, label, onFollow, through }: {
  a: Analysis; flow: RoutingFlow; highlight: RoutingFlow | null; order: NodeOrder; label: (l: number) => string;
  onFollow: (t: FlowRequest['through']) => void; through: FlowRequest['through'];
}) {
  const box = useRef<HTMLDivElement>(null);
  const canvas = useRef<HTMLCanvasElement>(null);
  const [width, setWidth] = useState(600);
  const [hover, setHover] = useState<string | null>(null);
  const [focus, setFocus] = useState<{ column: number; index: number } | null>(null);
  const height = 420;
  useEffect(() => {
    const el = box.current!;
    setWidth(el.clientWidth);
    const ro = new ResizeObserver(() => setWidth(el.clientWidth));
    ro.observe(el);
    return () => ro.disconnect();
  }, []);
  const layout = useMemo(() => layoutFlow(flow, width, height, order), [flow, width, order]);
  const plan = useMemo(() => bandsToDraw(layout, flow.pairs.length), [layout]);
  const columns = useMemo(() => flow.layers.map((_, c) => layout.nodes.filter((n) => n.column === c)), [layout]);
  const focused = focus ? columns[focus.column]?.[focus.index] ?? null : null;

  useEffect(() => {
    const c = canvas.current;
    const ctx = c?.getContext('2d');
    if (!c || !ctx) return;
    const dpr = devicePixelRatio || 1;
    // Resizing a canvas reallocates its backing store: only when the size really changed.
    const w = Math.round(width * dpr);
    const h = Math.round(height * dpr);
    if (c.width !== w) c.width = w;
    if (c.height !== h) c.height = h;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    drawSankey(ctx, layout, plan.drawn, highlight, through, focused);
  }, [layout, highlight, focused]);

  const onMove = (e: MouseEvent) => {
    const r = canvas.current!.getBoundingClientRect();
    const hit = hitFlow(layout, e.clientX - r.left, e.clientY - r.top);
    setHover(hit ? ('node' in hit ? describeNode(hit.node, flow, label) : describeBand(hit.band, layout, flow, label)) : null);
  };
  const onClick = (e: MouseEvent) => {
    const r = canvas.current!.getBoundingClientRect();
    const hit = hitFlow(layout, e.clientX - r.left, e.clientY - r.top);
    if (hit && 'node' in hit) onFollow(through && through.layer === hit.node.layer && through.expert === hit.node.expert ? null : { layer: hit.node.layer, expert: hit.node.expert });
  };
  const onKey = (e: KeyboardEvent) => {
    const f = focus ?? { column: 0, index: 0 };
    let { column, index } = f;
    if (e.key === 'ArrowUp') index--;
    else if (e.key === 'ArrowDown') index++;
    else if (e.key === 'ArrowLeft') column--;
    else if (e.key === 'ArrowRight') column++;
    else if (e.key === 'Enter') {
      const node = columns[f.column]?.[f.index];
      if (node) onFollow({ layer: node.layer, expert: node.expert });
      e.preventDefault();
      return;
    } else if (e.key === 'Escape') {
      onFollow(null);
      return;
    } else return;
    e.preventDefault();
    column = Math.max(0, Math.min(columns.length - 1, column));
    index = Math.max(0, Math.min((columns[column]?.length ?? 1) - 1, index));
    setFocus({ column, index });
  };
  const readout = hover ?? (focused ? describeNode(focused, flow, label) : null);
  return (
    <div class="sankey">
      <div class="matrix-readout" data-testid="flow-readout">{readout ?? 'Hover a node or band; click a node, or focus the diagram (arrow keys, Enter), to follow its tokens'}</div>
      <div class="sankey-heads" aria-hidden="true">
        {flow.layers.map((l, c) => (
          <span key={l} style={{ left: `${flow.layers.length > 1 ? (c / (flow.layers.length - 1)) * 100 : 0}%` }}>{shortLayerLabel(a.rows[l]!.info)}</span>
        ))}
      </div>
      <div ref={box} class="sankey-box">
        <canvas ref={canvas} data-testid="flow-canvas" tabIndex={0} style={{ width: '100%', height: `${height}px` }}
          aria-label="Routing flow diagram: arrow keys move between experts, Enter follows one, Escape stops"
          onMouseMove={onMove} onMouseLeave={() => setHover(null)} onClick={onClick} onKeyDown={onKey}
          onFocus={() => setFocus((f) => f ?? { column: 0, index: 0 })} onBlur={() => setFocus(null)} />
      </div>
      {plan.skipped > 0 && (
        <p class="muted" data-testid="flow-undrawn">{int(plan.skipped)} transitions ({fmt(plan.skippedTokens, 0)} tokens) are too thin to draw at this size; they are counted everywhere else.</p>
      )}
    </div>
  );
}

function drawSankey(ctx: CanvasRenderingContext2D, layout: FlowLayout, drawn: Int32Array, highlight: RoutingFlow | null, through: FlowRequest['through'], focused: FlowNode | null) {
  const dark = currentTheme() === 'dark';
  const { bands } = layout;
  const grey = dark ? 'rgba(154,160,166,0.18)' : 'rgba(95,99,104,0.15)';
  // One colour string per source expert, set only when it changes: parsing a colour at each of
  // hundreds of bands was a measurable part of a redraw.
  const bandStyle = new Map<number, string>();
  let style = '';
  for (const b of drawn) {
    const from = bands.from[b]!;
    let next = highlight ? grey : bandStyle.get(from);
    if (next === undefined) bandStyle.set(from, (next = `hsla(${hue(from)}, 65%, ${dark ? 60 : 50}%, 0.35)`));
    if (next !== style) ctx.fillStyle = style = next;
    fillBand(ctx, bands, b, bands.w[b]!);
  }
  if (highlight) {
    ctx.fillStyle = dark ? 'rgba(138,180,248,0.75)' : 'rgba(26,115,232,0.7)';
    for (const b of drawn) {
      const w = transition(highlight.pairs[bands.pair[b]!]!, bands.from[b]!, bands.to[b]!) * layout.scale;
      if (w > 0) fillBand(ctx, bands, b, Math.max(0.5, w));
    }
  }
  // Nodes expert by expert, each colour set once for every column (nodes never overlap).
  const experts = Math.max(0, ...layout.byExpert.map((column) => column.length));
  for (let e = 0; e < experts; e++) {
    let styled = false;
    for (const column of layout.byExpert) {
      const n = column[e];
      if (!n) continue;
      if (!styled) ctx.fillStyle = `hsl(${hue(e)}, 60%, ${dark ? 62 : 45}%)`;
      styled = true;
      ctx.fillRect(n.x, n.y, layout.nodeWidth, Math.max(1, n.h));
    }
  }
  if (highlight) {
    ctx.fillStyle = dark ? '#8ab4f8' : '#1a73e8';
    for (const n of layout.nodes) {
      const h = (highlight.nodes[n.column]![n.expert] ?? 0) * layout.scale;
      if (h > 0) ctx.fillRect(n.x - 3, n.y, 3, Math.max(1, h));
    }
  }
  const ink = dark ? '#e8eaed' : '#202124';
  const marked = through && layout.nodes.find((n) => n.layer === through.layer && n.expert === through.expert);
  if (marked) {
    ctx.strokeStyle = ink;
    ctx.lineWidth = 1.5;
    ctx.strokeRect(marked.x - 1, marked.y - 1, layout.nodeWidth + 2, Math.max(1, marked.h) + 2);
  }
  // Experts large enough to label.
  ctx.font = '10px system-ui, sans-serif';
  ctx.textBaseline = 'middle';
  ctx.fillStyle = ink;
  const last = layout.byExpert.length - 1;
  for (const n of layout.nodes) {
    if (n.h < 11) continue;
    const right = n.column < last;
    ctx.textAlign = right ? 'left' : 'right';
    ctx.fillText(String(n.expert), right ? n.x + layout.nodeWidth + 3 : n.x - 3, n.y + n.h / 2);
  }
  if (focused) {
    ctx.strokeStyle = dark ? '#fdd663' : '#b06000';
    ctx.lineWidth = 2;
    ctx.strokeRect(focused.x - 2, focused.y - 2, layout.nodeWidth + 4, Math.max(1, focused.h) + 4);
  }
}

/** A band as a filled polygon along bandY (the same curve the hit test uses). */
function fillBand(ctx: CanvasRenderingContext2D, bands: FlowBands, b: number, w: number) {
  const steps = 8;
  const x0 = bands.x0[b]!;
  const dx = (bands.x1[b]! - x0) / steps;
  ctx.beginPath();
  for (let i = 0; i <= steps; i++) {
    const x = x0 + dx * i;
    if (i === 0) ctx.moveTo(x, bandY(bands, b, x));
    else ctx.lineTo(x, bandY(bands, b, x));
  }
  for (let i = steps; i >= 0; i--) {
    const x = x0 + dx * i;
    ctx.lineTo(x, bandY(bands, b, x) + w);
  }
  ctx.closePath();
  ctx.fill();
}

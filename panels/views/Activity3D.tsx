/**
 * 3D activation map: layers x experts x time as stacked heat planes (WebGL, activity-gl.ts). Each
 * plane is one MoE layer, experts along its width and 1-second intervals along its depth (newest
 * at the front); the colour is the expert's share of its layer in that interval, on the Heatmap's
 * scale. Drag to rotate, wheel to zoom; hover for the exact numbers. Keyboard: focus the map, the
 * arrow keys move the cursor cell (Page Up/Down: older/newer), Shift+arrows rotate, + and - zoom,
 * 0 resets the view. The buckets come from the worker a few at a time (only new ones), so the
 * map costs the main thread one texture row per layer per second.
 */
import './maps.css';
import { useEffect, useLayoutEffect, useMemo, useRef, useState } from 'preact/hooks';
import { shortLayerLabel } from '../../src/analysis';
import type { Analysis } from '../engine/analyzer';
import type { Bucket } from '../engine/buckets';
import type { Store } from '../store';
import { ActivityGL, cellCentre, DEPTH, explodedSpacing, HALF_WIDTH, pickCell, planeRight, planeY, type Stack } from './activity-gl';
import { currentTheme, makeScale, SCALE_MODES, type ScaleMode } from './colour-scale';
import { fmt, int, pct } from './format';
import { webgl2Available } from './gl';
import { Legend } from './HeatGrid';
import { invert, lookAt, multiply, orbitEye, orthographic, project, unprojectRay, type Mat4 } from './mat4';

/** Planes drawn at most at once by default (a range of layers); the user can widen it. */
const DEFAULT_PLANES = 16;
const HEIGHT = 460;

interface Held {
  bucket: Bucket;
  /** Per layer: assignments in the bucket (the share's denominator). */
  totals: Float64Array;
  maxShare: number;
  minShare: number;
}

interface Camera {
  yaw: number;
  pitch: number;
  zoom: number;
}
const DEFAULT_CAMERA: Camera = { yaw: -0.3, pitch: 0.38, zoom: 1 };

export function Activity3D({ store, a, layer }: { store: Store; a: Analysis; layer: number }) {
  const L = a.layers;
  const [range, setRange] = useState(() => {
    const from = L <= DEFAULT_PLANES ? 0 : Math.min(layer, L - DEFAULT_PLANES);
    return { from, to: Math.min(L - 1, from + DEFAULT_PLANES - 1) };
  });
  const [scaleMode, setScaleMode] = useState<ScaleMode>('fair');
  const [spread, setSpread] = useState(1);
  const [camera, setCamera] = useState<Camera>(DEFAULT_CAMERA);
  const [cursor, setCursor] = useState<{ layer: number; expert: number; age: number }>({ layer: range.from, expert: 0, age: 0 });
  const [hover, setHover] = useState<{ layer: number; expert: number; bucket: number } | null>(null);
  const [error, setError] = useState<string | null>(webgl2Available() ? null : 'WebGL2 is not available in this browser, so the 3D map cannot be drawn; the Heatmap’s “time × experts” view shows the same numbers.');
  const [width, setWidth] = useState(600);
  const box = useRef<HTMLDivElement>(null);
  const canvas = useRef<HTMLCanvasElement>(null);
  const overlay = useRef<HTMLCanvasElement>(null);
  const gl = useRef<ActivityGL | null>(null);
  const held = useRef<Held[]>([]);
  const [version, setVersion] = useState(0);
  const drag = useRef<{ x: number; y: number; cam: Camera } | null>(null);

  // Ask for the buckets after the newest held; take those that arrive.
  const lastId = held.current.length ? held.current[held.current.length - 1]!.bucket.id : 0;
  useEffect(() => store.setViewRequest('activity', { buckets: { since: lastId } }), [lastId]);
  const data = a.views?.buckets;
  const labels = a.rows.map((r) => r.label).join('\n');
  // Two lists (a vnode renders in one place only), made once per model so that Preact skips them at each analysis.
  const [fromOptions, toOptions] = useMemo(() => [0, 1].map(() => a.rows.map((r) => <option key={r.layer} value={String(r.layer)}>{r.label}</option>)), [labels]);
  const slots = data?.capacity ?? 0;
  const W = a.maxWidth;

  useLayoutEffect(() => {
    const el = box.current!;
    setWidth(el.clientWidth);
    const ro = new ResizeObserver(() => setWidth(el.clientWidth));
    ro.observe(el);
    return () => ro.disconnect();
  }, []);
  useEffect(() => () => gl.current?.dispose(), []);

  // New buckets: into the held list and one texture row per layer each.
  useEffect(() => {
    if (!data || error) return;
    try {
      if (!gl.current && canvas.current) {
        gl.current = new ActivityGL(canvas.current);
        gl.current.allocate(W, data.capacity, L, a.widths);
      }
    } catch (err) {
      setError((err as Error).message);
      return;
    }
    let list = held.current;
    let changed = false;
    if (list.length && list[0]!.bucket.id < data.firstId && data.buckets.length && data.buckets[0]!.id === data.firstId) {
      list = []; // the job's history was cleared
      gl.current!.allocate(W, data.capacity, L, a.widths);
      changed = true;
    }
    for (const b of data.buckets) {
      const last = list[list.length - 1];
      if (last && b.id <= last.bucket.id) continue;
      // An interval the view never got (it was away): its slots hold no data.
      if (last) for (let id = last.bucket.id + 1; id < b.id; id++) gl.current!.upload(id, new Float32Array(W * L).fill(NaN));
      const rows = new Float32Array(W * L).fill(NaN);
      const totals = new Float64Array(L);
      let maxShare = 0;
      let minShare = Infinity;
      for (let l = 0; l < L; l++) {
        const off = a.offsets[l]!;
        let t = 0;
        for (let e = 0; e < a.widths[l]!; e++) t += b.counts[off + e]!;
        totals[l] = t;
        for (let e = 0; e < a.widths[l]!; e++) {
          const s = t > 0 ? b.counts[off + e]! / t : 0;
          rows[l * W + e] = s;
          if (s > maxShare) maxShare = s;
          if (s > 0 && s < minShare) minShare = s;
        }
      }
      gl.current!.upload(b.id, rows);
      list = [...list, { bucket: b, totals, maxShare, minShare }];
      changed = true;
    }
    if (list.length > data.capacity) list = list.slice(list.length - data.capacity);
    if (changed) {
      held.current = list;
      setVersion((v) => v + 1);
    }
  }, [data]);

  const list = held.current;
  const first = list[0]?.bucket.id ?? 0;
  const count = list.length ? list[list.length - 1]!.bucket.id - first + 1 : 0;
  const layers = useMemo(() => {
    const out: number[] = [];
    for (let l = Math.max(0, range.from); l <= Math.min(L - 1, range.to); l++) out.push(l);
    return out;
  }, [range, L]);
  // Planes far enough apart that, seen from the default angle, none hides another.
  const stack: Stack = { layers, widths: a.widths, maxWidth: W, spacing: explodedSpacing(DEFAULT_CAMERA.yaw, DEFAULT_CAMERA.pitch) * spread, count };
  const scale = useMemo(() => {
    const extremes: number[] = [];
    for (const h of list) {
      extremes.push(h.maxShare);
      if (h.minShare < Infinity) extremes.push(h.minShare);
    }
    return makeScale(scaleMode, currentTheme(), extremes);
  }, [version, scaleMode]);
  // Orthographic: every cell the same size wherever it sits, and planes spaced as above never overlap at the default tilt.
  const stackHeight = (layers.length - 1) * stack.spacing;
  const aspect = width / HEIGHT;
  const fitH = Math.max(1.2, (stackHeight * Math.cos(camera.pitch) + 2 * DEPTH * Math.sin(Math.abs(camera.pitch))) / 2 + 0.35);
  const halfH = Math.max(fitH, (HALF_WIDTH * 1.5) / aspect) / camera.zoom;
  const eye = orbitEye(camera.yaw, camera.pitch, 20);
  const mvp: Mat4 = multiply(orthographic(halfH * aspect, halfH, 0.1, 60), lookAt(eye, [0, 0, 0]));
  const inverse = useMemo(() => invert(mvp), [mvp.join(',')]);

  const theme = currentTheme();
  const cellOf = (l: number) => layers.indexOf(l);
  const cursorBucket = count - 1 - Math.min(cursor.age, Math.max(0, count - 1));
  const cursorPos = cellOf(cursor.layer) >= 0 && count ? project(mvp, cellCentre(stack, cellOf(cursor.layer), cursor.expert, cursorBucket), width, HEIGHT) : null;

  useEffect(() => {
    const c = canvas.current;
    if (!c || !gl.current || error) return;
    const dpr = devicePixelRatio || 1;
    c.width = Math.round(width * dpr);
    c.height = Math.round(HEIGHT * dpr);
    gl.current.draw({ mvp, eye, stack, oldestSlot: first, scale, background: theme === 'dark' ? [32, 33, 36] : [255, 255, 255] });
    drawOverlay(overlay.current, { mvp, stack, width, theme, label: (l) => shortLayerLabel(a.rows[l]!.info), cursorPos });
    // Redrawn when what it shows changes, not at every analysis (most bring no new interval).
  }, [version, camera, width, spread, layers, scale, cursorPos?.[0], cursorPos?.[1], error, theme]);

  const describe = (l: number, expert: number, bucket: number) => {
    const h = list.find((x) => x.bucket.id === first + bucket);
    const row = a.rows[l]!;
    if (!h) return `${row.label}, expert ${expert}: no data for that interval`;
    const b = h.bucket;
    const n = b.counts[a.offsets[l]! + expert]!;
    return `${row.label}, expert ${expert}, ${fmt(b.t0, 1)}–${fmt(b.t1, 1)} s (passes ${b.fromPass + 1}–${b.toPass}): ${int(n)} assignments, ` +
      `${pct(h.totals[l]! ? n / h.totals[l]! : 0)} of the layer in that interval`;
  };
  const pick = (e: MouseEvent) => {
    if (!inverse || !count) return null;
    const r = canvas.current!.getBoundingClientRect();
    const ray = unprojectRay(inverse, e.clientX - r.left, e.clientY - r.top, r.width, r.height);
    const hit = pickCell(stack, ray.origin, ray.dir);
    return hit ? { layer: layers[hit.plane]!, expert: hit.expert, bucket: hit.bucket } : null;
  };
  const onMove = (e: MouseEvent) => {
    const d = drag.current;
    if (d) {
      setCamera({ ...d.cam, yaw: d.cam.yaw - (e.clientX - d.x) * 0.01, pitch: Math.max(-1.45, Math.min(1.45, d.cam.pitch + (e.clientY - d.y) * 0.01)) });
      return;
    }
    setHover(pick(e));
  };
  const onKey = (e: KeyboardEvent) => {
    const k = e.key;
    if (e.shiftKey && k.startsWith('Arrow')) {
      const step = 0.08;
      setCamera((c) => ({
        ...c, yaw: c.yaw + (k === 'ArrowLeft' ? step : k === 'ArrowRight' ? -step : 0),
        pitch: Math.max(-1.45, Math.min(1.45, c.pitch + (k === 'ArrowUp' ? step : k === 'ArrowDown' ? -step : 0))),
      }));
    } else if (k === '+' || k === '=') setCamera((c) => ({ ...c, zoom: Math.min(8, c.zoom * 1.15) }));
    else if (k === '-') setCamera((c) => ({ ...c, zoom: Math.max(0.3, c.zoom / 1.15) }));
    else if (k === '0') setCamera(DEFAULT_CAMERA);
    else if (k.startsWith('Arrow') || k === 'PageUp' || k === 'PageDown') {
      setHover(null);
      setCursor((c) => {
        const i = Math.max(0, cellOf(c.layer));
        const li = layers[Math.max(0, Math.min(layers.length - 1, i + (k === 'ArrowDown' ? 1 : k === 'ArrowUp' ? -1 : 0)))]!;
        return {
          layer: li,
          expert: Math.max(0, Math.min(a.widths[li]! - 1, c.expert + (k === 'ArrowRight' ? 1 : k === 'ArrowLeft' ? -1 : 0))),
          age: Math.max(0, Math.min(Math.max(0, count - 1), c.age + (k === 'PageUp' ? 1 : k === 'PageDown' ? -1 : 0))),
        };
      });
    } else return;
    e.preventDefault();
  };
  const shown = hover ?? (count ? { layer: cursor.layer, expert: cursor.expert, bucket: cursorBucket } : null);
  const rotate = (dy: number, dp: number) => setCamera((c) => ({ ...c, yaw: c.yaw + dy, pitch: Math.max(-1.45, Math.min(1.45, c.pitch + dp)) }));

  return (
    <div class="activity" data-testid="activity-view" data-buckets={count}>
      <div class="controls">
        <label>Layers{' '}
          <select data-testid="activity-from" value={String(range.from)} onChange={(e) => { const from = Number((e.target as HTMLSelectElement).value); setRange((r) => ({ from, to: Math.max(from, r.to) })); }}>
            {fromOptions}
          </select>
          {' to '}
          <select data-testid="activity-to" value={String(range.to)} onChange={(e) => { const to = Number((e.target as HTMLSelectElement).value); setRange((r) => ({ from: Math.min(r.from, to), to })); }}>
            {toOptions}
          </select>
        </label>
        <label>Colour{' '}
          <select data-testid="activity-scale" value={scaleMode} onChange={(e) => setScaleMode((e.target as HTMLSelectElement).value as ScaleMode)}>
            {SCALE_MODES.map((m) => <option key={m.id} value={m.id}>{m.label}</option>)}
          </select>
        </label>
        <label>Spacing{' '}
          <input type="range" min="0.3" max="3" step="0.1" value={spread} data-testid="activity-spacing" onInput={(e) => setSpread(Number((e.target as HTMLInputElement).value))} />
        </label>
        <span class="plot-tools">
          <button class="icon-button" title="Rotate left (Shift+←)" onClick={() => rotate(0.15, 0)}>↺</button>
          <button class="icon-button" title="Rotate right (Shift+→)" onClick={() => rotate(-0.15, 0)}>↻</button>
          <button class="icon-button" title="Tilt up (Shift+↑)" onClick={() => rotate(0, 0.12)}>▲</button>
          <button class="icon-button" title="Tilt down (Shift+↓)" onClick={() => rotate(0, -0.12)}>▼</button>
          <button class="icon-button" title="Zoom in (+)" onClick={() => setCamera((c) => ({ ...c, zoom: Math.min(8, c.zoom * 1.15) }))}>+</button>
          <button class="icon-button" title="Zoom out (-)" onClick={() => setCamera((c) => ({ ...c, zoom: Math.max(0.3, c.zoom / 1.15) }))}>−</button>
          <button class="icon-button" title="Reset the view (0)" onClick={() => setCamera(DEFAULT_CAMERA)}>⤢</button>
        </span>
      </div>
      <p class="muted">{layers.length} of {L} layers, top to bottom in model order; experts left to right; {count} intervals of {data?.seconds ?? 1} s, oldest at the back, newest at the front.
        {count === 0 ? ' The first interval closes a second after the first update.' : ''}</p>
      {error ? <p class="empty" data-testid="activity-error">{error}</p> : (
        <>
          <div class="matrix-readout" data-testid="activity-readout" data-layer={shown?.layer} data-expert={shown?.expert} data-bucket={shown ? first + shown.bucket : undefined}>
            {shown ? describe(shown.layer, shown.expert, shown.bucket) : 'Hover a plane, or focus the map and use the arrow keys'}
          </div>
          <div ref={box} class="activity-box" data-cursor-x={cursorPos?.[0]} data-cursor-y={cursorPos?.[1]} data-slots={slots}>
            <canvas ref={canvas} data-testid="activity-canvas" tabIndex={0} style={{ width: '100%', height: `${HEIGHT}px` }}
              aria-label="3D activation map: arrow keys move the cursor (Page Up/Down in time), Shift+arrows rotate, + and - zoom, 0 resets"
              onMouseDown={(e) => { drag.current = { x: e.clientX, y: e.clientY, cam: camera }; }}
              onMouseUp={() => { drag.current = null; }}
              onMouseMove={onMove} onMouseLeave={() => { drag.current = null; setHover(null); }}
              onWheel={(e) => { e.preventDefault(); setCamera((c) => ({ ...c, zoom: Math.max(0.3, Math.min(8, c.zoom * (e.deltaY < 0 ? 1.1 : 1 / 1.1))) })); }}
              onKeyDown={onKey} />
            <canvas ref={overlay} class="activity-overlay" aria-hidden="true" style={{ width: '100%', height: `${HEIGHT}px` }} />
          </div>
          <Legend scale={scale} />
        </>
      )}
    </div>
  );
}

function drawOverlay(c: HTMLCanvasElement | null, o: {
  mvp: Mat4; stack: Stack; width: number; theme: 'light' | 'dark'; label: (layer: number) => string; cursorPos: [number, number] | null;
}) {
  const ctx = c?.getContext('2d');
  if (!c || !ctx) return;
  const dpr = devicePixelRatio || 1;
  c.width = Math.round(o.width * dpr);
  c.height = Math.round(HEIGHT * dpr);
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, o.width, HEIGHT);
  const text = o.theme === 'dark' ? '#e8eaed' : '#202124';
  const line = o.theme === 'dark' ? 'rgba(232,234,237,0.35)' : 'rgba(32,33,36,0.3)';
  ctx.font = '10px system-ui, sans-serif';
  ctx.textBaseline = 'middle';
  const { stack } = o;
  const labelEvery = Math.max(1, Math.ceil(stack.layers.length / 24));
  stack.layers.forEach((layer, i) => {
    const y = planeY(stack, i);
    const right = planeRight(stack, layer);
    const corners = [[-HALF_WIDTH, y, -DEPTH], [right, y, -DEPTH], [right, y, DEPTH], [-HALF_WIDTH, y, DEPTH]].map((p) => project(o.mvp, p as [number, number, number], o.width, HEIGHT));
    if (corners.some((p) => !p)) return;
    ctx.strokeStyle = line;
    ctx.beginPath();
    corners.forEach((p, j) => (j ? ctx.lineTo(p![0], p![1]) : ctx.moveTo(p![0], p![1])));
    ctx.closePath();
    ctx.stroke();
    if (i % labelEvery === 0) {
      const p = corners[3]!;
      ctx.fillStyle = text;
      ctx.textAlign = 'right';
      ctx.fillText(o.label(layer), p[0] - 4, p[1]);
    }
  });
  // Axis hints along the bottom plane.
  const last = stack.layers.length - 1;
  if (last >= 0) {
    const y = planeY(stack, last);
    const ex = project(o.mvp, [0, y, DEPTH], o.width, HEIGHT);
    const tz = project(o.mvp, [planeRight(stack, stack.layers[last]!), y, 0], o.width, HEIGHT);
    ctx.fillStyle = text;
    ctx.textAlign = 'center';
    if (ex) ctx.fillText('experts →', ex[0], ex[1] + 12);
    ctx.textAlign = 'left';
    if (tz) ctx.fillText('time (newest in front)', tz[0] + 6, tz[1]);
  }
  if (o.cursorPos) {
    ctx.strokeStyle = o.theme === 'dark' ? '#fdd663' : '#b06000';
    ctx.lineWidth = 1.5;
    ctx.strokeRect(o.cursorPos[0] - 4, o.cursorPos[1] - 4, 8, 8);
  }
}

/**
 * A heatmap with axes, a colour legend and a hover/keyboard readout: rows x cols shares drawn on a
 * canvas (heat-paint.ts) or, when the canvas cannot keep up, with WebGL (heat-gl.ts). Shared by the
 * Heatmap view's modes (layers x experts, time x experts, tokens x experts) and the window diff.
 *
 * Keyboard: focus the map (Tab), then the arrow keys move the cursor cell, Page Up/Down and
 * Home/End jump along the columns; the readout says what the cell holds.
 */
import './maps.css';
import { useEffect, useLayoutEffect, useMemo, useRef, useState } from 'preact/hooks';
import { legendTicks, legendTitle, ramp, type ColourScale } from './colour-scale';
import { webgl2Available } from './gl';
import { HeatGL } from './heat-gl';
import { paintHeat } from './heat-paint';

export type Renderer = 'auto' | 'canvas' | 'webgl';
/** Auto: WebGL from this many cells on, or once a canvas draw took longer than AUTO_GL_MS. */
const AUTO_GL_CELLS = 65536;
const AUTO_GL_MS = 4;

interface Props {
  rows: number;
  cols: number;
  /** Share per cell, row-major rows x cols (the column index, not the drawn position); NaN: no such cell. */
  values: Float32Array;
  /** Experts of each row (for the fair-share scale). */
  rowWidths: ArrayLike<number>;
  /** The column shown at each position; null: index order. */
  order: readonly number[] | null;
  scale: ColourScale;
  describe: (row: number, col: number) => string;
  rowTick: (row: number) => string;
  rowAxis: string;
  colAxis: string;
  testid: string;
  renderer?: Renderer;
  height?: number;
  /** What the legend says the colour means: the whole title, or just what the share is of (`quantity`). */
  legend?: string;
  quantity?: string;
}

function niceStep(n: number, room: number): number {
  const want = Math.max(1, n / Math.max(1, room));
  for (const s of [1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100, 128, 200, 256, 500, 512, 1000]) if (s >= want) return s;
  return Math.ceil(want);
}

export function HeatGrid(p: Props) {
  const { rows, cols, values, order, scale, testid } = p;
  const plot = useRef<HTMLDivElement>(null);
  const cpuCanvas = useRef<HTMLCanvasElement>(null);
  const glCanvas = useRef<HTMLCanvasElement>(null);
  const gl = useRef<HeatGL | null>(null);
  const slowCanvas = useRef(false);
  const [width, setWidth] = useState(0);
  const [hover, setHover] = useState<{ row: number; pos: number } | null>(null);
  const [cursor, setCursor] = useState<{ row: number; pos: number } | null>(null);
  const height = p.height ?? Math.min(520, Math.max(80, rows * 14));
  const dpr = typeof devicePixelRatio === 'number' ? devicePixelRatio : 1;
  const drawn = Math.max(1, Math.min(cols, Math.floor((width || cols) * dpr)));
  const wantGl = p.renderer === 'webgl' || (p.renderer !== 'canvas' && (rows * cols >= AUTO_GL_CELLS || slowCanvas.current));
  const useGl = wantGl && webgl2Available();

  useLayoutEffect(() => {
    const el = plot.current;
    if (!el) return;
    setWidth(el.clientWidth);
    const ro = new ResizeObserver(() => setWidth(el.clientWidth));
    ro.observe(el);
    return () => ro.disconnect();
  }, []);

  useEffect(() => () => gl.current?.dispose(), []);

  useEffect(() => {
    if (rows < 1 || cols < 1) return;
    if (useGl && glCanvas.current) {
      try {
        gl.current ??= new HeatGL(glCanvas.current);
        gl.current.draw({ values, rows, cols, drawn, rowWidths: p.rowWidths, order, scale });
        return;
      } catch {
        gl.current = null; // fall through to the canvas
      }
    }
    const c = cpuCanvas.current;
    const ctx = c?.getContext('2d');
    if (!c || !ctx) return;
    const t0 = performance.now();
    c.width = drawn;
    c.height = rows;
    const img = ctx.createImageData(drawn, rows);
    paintHeat(img.data, values, rows, cols, drawn, p.rowWidths, order, scale);
    ctx.putImageData(img, 0, 0);
    if (performance.now() - t0 > AUTO_GL_MS) slowCanvas.current = true; // the next draw goes to WebGL (auto)
  });

  const at = (e: MouseEvent) => {
    const rect = (e.currentTarget as HTMLElement).getBoundingClientRect();
    const pos = Math.floor(((e.clientX - rect.left) / rect.width) * cols);
    const row = Math.floor(((e.clientY - rect.top) / rect.height) * rows);
    return pos < 0 || pos >= cols || row < 0 || row >= rows ? null : { row, pos };
  };
  const colAt = (pos: number) => (order ? order[pos]! : pos);
  const onKey = (e: KeyboardEvent) => {
    const c = cursor ?? { row: 0, pos: 0 };
    const page = Math.max(1, Math.round(cols / 10));
    const moves: Record<string, [number, number]> = {
      ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1], PageUp: [0, -page], PageDown: [0, page], Home: [0, -cols], End: [0, cols],
    };
    const m = moves[e.key];
    if (!m) return;
    e.preventDefault();
    setHover(null);
    setCursor({ row: Math.max(0, Math.min(rows - 1, c.row + m[0])), pos: Math.max(0, Math.min(cols - 1, c.pos + m[1])) });
  };
  const shown = hover ?? cursor;
  const inRange = shown && shown.row < rows && shown.pos < cols ? shown : null;

  const rowStep = Math.max(1, Math.ceil((rows * 13) / height));
  const colStep = niceStep(cols, (width || 400) / 44);
  const colTicks: number[] = [];
  for (let pos = 0; pos < cols; pos += colStep) colTicks.push(pos);
  const canvasProps = {
    class: 'matrix-canvas', style: { height: `${height}px` }, tabIndex: 0,
    'aria-label': `${p.rowAxis} by ${p.colAxis} heatmap; arrow keys move the cursor`,
    onMouseMove: (e: MouseEvent) => setHover(at(e)), onMouseLeave: () => setHover(null), onKeyDown: onKey,
    onFocus: () => setCursor((c) => c ?? { row: 0, pos: 0 }), onBlur: () => setCursor(null),
    'data-rows': rows, 'data-cols': cols,
  };
  return (
    <div class="heat" data-renderer={useGl ? 'webgl' : 'canvas'}>
      <div class="matrix-readout" data-testid={`${testid}-readout`} data-row={inRange?.row} data-col={inRange ? colAt(inRange.pos) : undefined}>
        {inRange ? p.describe(inRange.row, colAt(inRange.pos)) : `Hover a cell, or focus the map and use the arrow keys: ${p.rowAxis} × ${p.colAxis}`}
      </div>
      <div class="heat-body">
        <div class="heat-rows" style={{ height: `${height}px` }} aria-hidden="true">
          {Array.from({ length: Math.ceil(rows / rowStep) }, (_, i) => i * rowStep).map((r) => (
            <span key={r} style={{ top: `${((r + 0.5) / rows) * 100}%` }} title={p.rowTick(r)}>{p.rowTick(r)}</span>
          ))}
        </div>
        <div class="heat-plot" ref={plot}>
          <canvas ref={cpuCanvas} {...canvasProps} data-testid={useGl ? undefined : testid} hidden={useGl} />
          <canvas ref={glCanvas} {...canvasProps} data-testid={useGl ? testid : undefined} hidden={!useGl} />
          {inRange && (
            <div class="heat-cursor" aria-hidden="true" style={{
              left: `${(inRange.pos / cols) * 100}%`, top: `${(inRange.row / rows) * 100}%`,
              width: `max(2px, ${100 / cols}%)`, height: `max(2px, ${100 / rows}%)`,
            }} />
          )}
          <div class="heat-cols" aria-hidden="true">
            {colTicks.map((pos) => (
              <span key={pos} style={{ left: `${((pos + 0.5) / cols) * 100}%` }}>{colAt(pos)}</span>
            ))}
          </div>
          <div class="heat-axis-title muted">{p.colAxis}{order ? ' (reordered: tick labels are expert ids)' : ''}{drawn < cols ? ` · each pixel column shows the hottest of the ~${(cols / drawn).toFixed(1)} experts it covers` : ''}</div>
        </div>
      </div>
      <Legend scale={scale} title={p.legend ?? legendTitle(scale, p.quantity)} />
    </div>
  );
}

/** The colour bar with its scale: what a colour means in the maps above it. */
export function Legend({ scale, title }: { scale: ColourScale; title?: string }) {
  const ref = useRef<HTMLCanvasElement>(null);
  const colours = useMemo(() => ramp(scale.theme, scale.mode), [scale.theme, scale.mode]);
  useEffect(() => {
    const ctx = ref.current?.getContext('2d');
    if (!ctx) return;
    const img = ctx.createImageData(256, 1);
    img.data.set(colours);
    ctx.putImageData(img, 0, 0);
  }, [colours]);
  const ticks = legendTicks(scale);
  return (
    <div class="legend" data-testid="legend" data-mode={scale.mode} data-lo={scale.lo} data-hi={scale.hi}>
      <span class="legend-title muted">{title ?? legendTitle(scale)}</span>
      <div class="legend-bar">
        <canvas ref={ref} width={256} height={1} aria-hidden="true" />
        <div class="legend-ticks">
          {ticks.map((t) => <span key={t.label} style={{ left: `${t.t * 100}%` }}>{t.label}</span>)}
        </div>
      </div>
    </div>
  );
}

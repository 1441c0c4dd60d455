/** Load: per-expert token share for the chosen layer, all layers as small multiples, imbalance over time. */
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { shortLayerLabel } from '../../src/analysis';
import type { Analysis } from '../engine/analyzer';
import type { Store } from '../store';
import { currentTheme } from './colour-scale';
import { fmt } from './format';
import { sparkBars } from './spark-bars';
import { LinePlot } from './LinePlot';
import { LoadChart } from './LoadChart';
import { analysisSource, useSettled } from './useSettled';

const SPARK_W = 120;
const SPARK_H = 32;

/** The accent colour as [r, g, b], read once per theme (it is the same for every sparkline). */
const accentByTheme = new Map<string, number[]>();
function accentRgb(canvas: HTMLCanvasElement, ctx: CanvasRenderingContext2D): number[] {
  const theme = currentTheme();
  let rgb = accentByTheme.get(theme);
  if (!rgb) {
    // The accent colour as the canvas normalizes it ('#rrggbb').
    ctx.fillStyle = getComputedStyle(canvas).getPropertyValue('--accent').trim() || '#1a73e8';
    const hex = /^#([0-9a-f]{6})$/i.exec(String(ctx.fillStyle))?.[1] ?? '1a73e8';
    accentByTheme.set(theme, (rgb = [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16))));
  }
  return rgb;
}

/**
 * One layer's loads as bars on a small canvas, drawn as pixels: each pixel column shows the
 * busiest expert among those it covers (512 experts share 120 columns). As SVG this was one
 * <rect> per expert, 32k elements for 64 x 512, diffed on every render; as a canvas path of
 * rectangles it was 32k rectangles rasterized on the main thread at every analysis. A canvas
 * whose columns did not change is not redrawn (nor repainted); its pixels are reused.
 */
function Spark({ counts }: { counts: Float64Array }) {
  const ref = useRef<HTMLCanvasElement>(null);
  const drawn = useRef<{ bars: Int8Array; theme: string; img: ImageData } | null>(null);
  useEffect(() => {
    const canvas = ref.current;
    const ctx = canvas?.getContext('2d');
    if (!canvas || !ctx) return;
    const bars = sparkBars(counts, SPARK_W, SPARK_H);
    const theme = currentTheme();
    const last = drawn.current;
    if (last && last.theme === theme && last.bars.every((b, x) => b === bars[x])) return;
    const img = last?.img ?? ctx.createImageData(SPARK_W, SPARK_H);
    img.data.fill(0);
    const rgb = accentRgb(canvas, ctx);
    for (let x = 0; x < SPARK_W; x++) {
      for (let y = SPARK_H - Math.max(0, bars[x]!); y < SPARK_H; y++) {
        const p = (y * SPARK_W + x) * 4;
        img.data[p] = rgb[0]!;
        img.data[p + 1] = rgb[1]!;
        img.data[p + 2] = rgb[2]!;
        img.data[p + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
    drawn.current = { bars, theme, img };
  }, [counts]);
  return <canvas ref={ref} width={SPARK_W} height={SPARK_H} class="spark" aria-hidden="true" />;
}

/** Rows drawn past the visible ones, above and below. */
const OVERSCAN = 8;
/** Up to this many experts every row is in the page; more, and only the rows in view are (512 rows cost layout and paint at every analysis). */
const ALL_ROWS = 128;
const ROW_PX = 19;

function ExpertTable({ counts, total, identityFrom, layer, a }: { counts: number[]; total: number; identityFrom: number; layer: number; a: Analysis }) {
  const [top, setTop] = useState(0);
  const box = useRef<HTMLDivElement>(null);
  const E = counts.length;
  const windowed = E > ALL_ROWS;
  const view = Math.ceil((box.current?.clientHeight ?? 300) / ROW_PX);
  const start = windowed ? Math.max(0, Math.floor(top / ROW_PX) - OVERSCAN) : 0;
  const end = windowed ? Math.min(E, Math.floor(top / ROW_PX) + view + OVERSCAN) : E;
  const row = (e: number) => {
    const c = counts[e]!;
    return (
      <tr key={e} data-expert={e} class={c === 0 ? 'zero' : ''} style={windowed ? { height: `${ROW_PX}px` } : undefined}>
        <td>{e}{e >= identityFrom ? <span class="muted" title="zero-compute (identity) expert"> ∅</span> : null}</td>
        <td class="num" data-testid="expert-count">{c}</td>
        <td class="num">{total ? ((100 * c) / total).toFixed(1) : '0.0'}%</td>
      </tr>
    );
  };
  return (
    <div class="table-scroll expert-table-box" ref={box} onScroll={(e) => windowed && setTop((e.currentTarget as HTMLElement).scrollTop)}>
      <table class="grid" data-testid="expert-table" data-layer={layer} data-passes={a.window.passes} data-from-pass={a.window.fromPass} data-experts={E}
        data-rows-from={start} data-rows-to={end}>
        <thead><tr><th>Expert</th><th>Tokens</th><th>Share</th></tr></thead>
        <tbody>
          {start > 0 && <tr aria-hidden="true" style={{ height: `${start * ROW_PX}px` }} />}
          {Array.from({ length: end - start }, (_, i) => row(start + i))}
          {end < E && <tr aria-hidden="true" style={{ height: `${(E - end) * ROW_PX}px` }} />}
        </tbody>
      </table>
    </div>
  );
}

export function Load({ store, a, layer }: { store: Store; a: Analysis; layer: number }) {
  const row = a.rows[layer];
  const E = a.widths[layer] ?? 0;
  const start = a.offsets[layer] ?? 0;
  const counts = useMemo(() => Array.from(a.window.counts.subarray(start, start + E)), [a, layer]);
  const identityFrom = E - (row?.info.identity_experts ?? 0);
  const total = counts.reduce((x, y) => x + y, 0);
  const vio = useMemo(() => {
    const tl = a.timeline;
    const byLayer = Array.from({ length: tl.length }, (_, i) => tl.maxVioByLayer[i * a.layers + layer] ?? NaN);
    return [Array.from(tl.t), byLayer, Array.from(tl.maxVio)] as [number[], number[], number[]];
  }, [a.timeline, layer]);
  // The small multiples are a summary of every layer: redrawn at most once a second (useSettled),
  // not at every analysis; the chosen layer's chart and table above keep the full rate.
  const settled = useSettled(store, a, analysisSource(a));
  const multiples = useMemo(() => <LayerMultiples store={store} a={settled} layer={layer} />, [store, settled, layer]);
  return (
    <div class="load">
      <div class="load-top">
        <div class="load-main">
          <LoadChart counts={counts} title={`Tokens per expert, ${row?.label ?? `layer ${layer}`} (last ${a.window.passes} passes)`} />
          {row && <div class="muted stats-line">MaxVio {fmt(row.maxVio)} · CV {fmt(row.cv)} · Gini {fmt(row.gini)} · load entropy {fmt(row.normalizedEntropy)} · effective experts {fmt(row.effectiveExperts, 1)} of {E}</div>}
        </div>
        <ExpertTable counts={counts} total={total} identityFrom={identityFrom} layer={layer} a={a} />
      </div>
      <LinePlot title="Imbalance over time (MaxVio, trailing 1 s)" testid="imbalance-plot" pan
        lines={[{ label: row ? shortLayerLabel(row.info) : `layer ${layer}`, color: '#1a73e8' }, { label: 'mean of layers', color: '#e37400' }]} data={vio} height={150} />
      <h3>All layers</h3>
      {multiples}
    </div>
  );
}

/** Every layer's loads as a sparkline (64 to 128 canvases), a button to choose the layer. */
function LayerMultiples({ store, a, layer }: { store: Store; a: Analysis; layer: number }) {
  return (
    <div class="multiples" data-testid="small-multiples">
      {a.rows.map((r) => (
        <button key={r.layer} class={`multiple ${r.layer === layer ? 'selected' : ''}`} data-layer={r.layer}
          title={`${r.label}: ${r.experts} experts, MaxVio ${fmt(r.maxVio)}`} onClick={() => store.selectLayer(r.layer)}>
          <Spark counts={a.window.counts.subarray(r.offset, r.offset + r.experts)} />
          <span>{shortLayerLabel(r.info)} · {fmt(r.maxVio, 1)}</span>
        </button>
      ))}
    </div>
  );
}

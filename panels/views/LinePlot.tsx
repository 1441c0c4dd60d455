/** Lines over time with uPlot: drag to zoom, double-click to reset, the arrow buttons pan. */
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import { chartRedraws } from './redraw-queue';

export interface Line {
  label: string;
  color: string;
  scale?: string;
}

interface Props {
  title: string;
  lines: Line[];
  data: uPlot.AlignedData;
  height?: number;
  /** x ranges to shade (e.g. prefill), in x units. */
  bands?: Array<[number, number]>;
  testid?: string;
  pan?: boolean;
  /** Label of the x axis (default: seconds). */
  xLabel?: string;
}

function cssVar(name: string, fallback: string) {
  return getComputedStyle(document.body).getPropertyValue(name).trim() || fallback;
}

export function LinePlot({ title, lines, data, height = 180, bands, testid, pan, xLabel = 's' }: Props) {
  const host = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const bandsRef = useRef(bands);
  bandsRef.current = bands;
  const key = lines.map((l) => l.label + (l.scale ?? '')).join('|');

  useEffect(() => {
    const el = host.current!;
    const text = cssVar('--text-secondary', '#5f6368');
    const grid = cssVar('--grid', '#e0e0e0');
    const bandColor = cssVar('--band', 'rgba(26,115,232,0.08)');
    const scales = [...new Set(lines.map((l) => l.scale ?? 'y'))];
    const opts: uPlot.Options = {
      width: Math.max(200, el.clientWidth),
      height,
      title,
      legend: { show: true, live: false },
      cursor: { drag: { x: true, y: false, setScale: true } },
      scales: { x: { time: false } },
      axes: [
        { stroke: text, grid: { stroke: grid }, ticks: { stroke: grid }, label: xLabel },
        ...scales.map((s, i) => ({ scale: s, side: i === 0 ? 3 : 1, stroke: text, grid: { show: i === 0, stroke: grid }, ticks: { stroke: grid }, size: 50 })),
      ],
      series: [{}, ...lines.map((l) => ({ label: l.label, stroke: l.color, width: 1.5, scale: l.scale ?? 'y', points: { show: false } }))],
      hooks: {
        drawClear: [
          (u: uPlot) => {
            const b = bandsRef.current;
            if (!b?.length) return;
            const ctx = u.ctx;
            ctx.save();
            ctx.fillStyle = bandColor;
            for (const [a, z] of b) {
              const x0 = u.valToPos(a, 'x', true);
              const x1 = u.valToPos(z, 'x', true);
              ctx.fillRect(x0, u.bbox.top, Math.max(1, x1 - x0), u.bbox.height);
            }
            ctx.restore();
          },
        ],
      },
    };
    plot.current = new uPlot(opts, data, el);
    const resize = new ResizeObserver(() => plot.current?.setSize({ width: Math.max(200, el.clientWidth), height }));
    resize.observe(el);
    return () => {
      resize.disconnect();
      if (plot.current) chartRedraws.cancel(plot.current);
      plot.current?.destroy();
      plot.current = null;
    };
  }, [key, title, height, xLabel]);

  useEffect(() => {
    const u = plot.current;
    if (!u) return;
    // in a coming frame, one chart per frame (see redraw-queue.ts); zoom state is read then
    chartRedraws.request(u, () => {
      const zoomed = u.scales.x.min !== undefined && (u.select.width > 0 || (u as unknown as { _zoomed?: boolean })._zoomed);
      u.setData(data, !zoomed);
    });
  }, [data]);

  const shift = (dir: number) => {
    const u = plot.current;
    if (!u || u.scales.x.min === undefined || u.scales.x.max === undefined) return;
    const w = u.scales.x.max - u.scales.x.min;
    (u as unknown as { _zoomed?: boolean })._zoomed = true;
    u.setScale('x', { min: u.scales.x.min + dir * w * 0.25, max: u.scales.x.max + dir * w * 0.25 });
  };
  const reset = () => {
    const u = plot.current;
    if (!u) return;
    (u as unknown as { _zoomed?: boolean })._zoomed = false;
    u.setData(u.data, true);
  };

  return (
    <div class="plot-box">
      {pan && (
        <div class="plot-tools">
          <button class="icon-button" title="Pan left" onClick={() => shift(-1)}>◀</button>
          <button class="icon-button" title="Pan right" onClick={() => shift(1)}>▶</button>
          <button class="icon-button" title="Reset zoom (or double-click the plot)" onClick={reset}>⤢</button>
          <span class="muted">drag to zoom</span>
        </div>
      )}
      <div class="chart" ref={host} data-testid={testid} onDblClick={reset} />
    </div>
  );
}

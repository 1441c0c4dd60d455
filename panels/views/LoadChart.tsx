/** Tokens per expert for one layer, as uPlot bars. */
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';

interface Props {
  counts: number[];
  title: string;
}

function chartData(counts: number[]): uPlot.AlignedData {
  return [counts.map((_, i) => i), counts];
}

/**
 * Bars as one fillRect each on whole pixels, 70 % of the slot wide (at most 64 px). uPlot's bars
 * path puts every bar in one Path2D, which the software rasterizer (no GPU, the usual headless
 * and remote-desktop case) took 15-30 ms to fill for 512 experts, on the main thread, at every
 * analysis; rectangles on whole pixels are blits.
 */
function drawBars(color: string) {
  return (u: uPlot) => {
    const xs = u.data[0];
    const ys = u.data[1] as ArrayLike<number | null | undefined>;
    const ctx = u.ctx;
    const { left, top, width, height } = u.bbox;
    const step = xs.length > 1 ? Math.abs(u.valToPos(xs[1]!, 'x', true) - u.valToPos(xs[0]!, 'x', true)) : width;
    const bw = Math.max(1, Math.round(Math.min(64 * uPlot.pxRatio, step * 0.7)));
    const base = Math.round(u.valToPos(0, 'y', true));
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, width, height);
    ctx.clip();
    ctx.fillStyle = color;
    for (let i = 0; i < xs.length; i++) {
      const v = ys[i];
      if (v == null || !(v > 0)) continue;
      const x = Math.round(u.valToPos(xs[i]!, 'x', true) - bw / 2);
      const y = Math.round(u.valToPos(v, 'y', true));
      ctx.fillRect(x, y, bw, Math.max(1, base - y));
    }
    ctx.restore();
  };
}

export function LoadChart({ counts, title }: Props) {
  const host = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const titleEl = useRef<HTMLElement | null>(null);
  const experts = counts.length;

  useEffect(() => {
    const el = host.current!;
    const css = getComputedStyle(document.body);
    const bar = css.getPropertyValue('--accent').trim() || '#1a73e8';
    const text = css.getPropertyValue('--text-secondary').trim() || '#5f6368';
    const grid = css.getPropertyValue('--grid').trim() || '#e0e0e0';
    const opts: uPlot.Options = {
      width: Math.max(200, el.clientWidth),
      height: 240,
      title,
      legend: { show: false },
      cursor: { points: { show: false }, drag: { x: false, y: false } },
      scales: { x: { time: false, range: [-0.5, experts - 0.5] }, y: { range: (_u, _min, max) => [0, Math.max(1, max * 1.1)] } },
      axes: [
        { stroke: text, grid: { show: false }, ticks: { stroke: grid }, label: 'expert', incrs: [1, 2, 4, 8, 16, 32, 64], values: (_u, splits) => splits.map((v) => String(v)) },
        { stroke: text, grid: { stroke: grid }, ticks: { stroke: grid }, label: 'tokens', size: 60 },
      ],
      // The bars are drawn by the draw hook; the series only sets the scales.
      series: [{}, { label: 'tokens', stroke: bar, paths: () => null, points: { show: false } }],
      hooks: { draw: [drawBars(bar)] },
    };
    plot.current = new uPlot(opts, chartData(counts), el);
    titleEl.current = plot.current.root.querySelector('.u-title');
    const resize = new ResizeObserver(() => plot.current?.setSize({ width: Math.max(200, el.clientWidth), height: 240 }));
    resize.observe(el);
    return () => {
      resize.disconnect();
      plot.current?.destroy();
      plot.current = null;
    };
    // Rebuilt only when the number of experts changes; data flows through setData and the title
    // (which names the window's passes, so it changes with every analysis) through its element.
  }, [experts]);

  useEffect(() => {
    plot.current?.setData(chartData(counts), true);
  }, [counts]);

  useEffect(() => {
    if (titleEl.current) titleEl.current.textContent = title;
  }, [title]);

  return <div class="chart" ref={host} data-testid="load-chart" />;
}

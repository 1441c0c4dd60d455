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
      series: [{}, { label: 'tokens', fill: bar, stroke: bar, paths: uPlot.paths.bars!({ size: [0.7, 64] }), points: { show: false } }],
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

/** Timeline: router entropy, imbalance and tokens/s over time; decode stretches shaded; training jobs' backward passes apart. */
import { useMemo } from 'preact/hooks';
import type { Analysis } from '../engine/analyzer';
import { LinePlot } from './LinePlot';

export function Timeline({ a }: { a: Analysis }) {
  const { data, bands, rate, passes, training, prefillShare } = useMemo(() => {
    const tl = a.timeline;
    const col = (c: Float64Array) => Array.from(c);
    const t = col(tl.t);
    const bands: Array<[number, number]> = [];
    let start: number | null = null;
    let prefill = 0;
    for (let i = 0; i < tl.length; i++) {
      const dec = tl.decodeShare[i]! > 0.5;
      if (tl.decodeShare[i]! <= 0.5) prefill++;
      if (dec && start === null) start = tl.t[i]!;
      if (!dec && start !== null) {
        bands.push([start, tl.t[i]!]);
        start = null;
      }
    }
    if (start !== null && tl.length) bands.push([start, tl.t[tl.length - 1]!]);
    return {
      data: [t, col(tl.routerEntropy), col(tl.maxVio)] as [number[], number[], number[]],
      rate: [t, col(tl.tokensPerS), col(tl.passesPerS)] as [number[], number[], number[]],
      passes: [t, col(tl.passesPerS), col(tl.backwardPerS)] as [number[], number[], number[]],
      training: tl.backwardPerS.some((v) => Number.isFinite(v)),
      prefillShare: tl.length ? prefill / tl.length : NaN,
      bands,
    };
  }, [a.timeline]);
  return (
    <div class="timeline" data-testid="timeline-view" data-points={a.timeline.length}>
      <p class="muted">Each point covers the trailing second. Shaded: decode passes (sequence length 1); unshaded: prefill. {Number.isFinite(prefillShare) ? `${Math.round(100 * prefillShare)}% of the time in prefill.` : ''}</p>
      <LinePlot title="Router entropy and imbalance" testid="timeline-entropy" pan bands={bands}
        lines={[{ label: 'router entropy (normalized)', color: '#1a73e8' }, { label: 'MaxVio (mean of layers)', color: '#e37400', scale: 'vio' }]} data={data} />
      <LinePlot title="Throughput" testid="timeline-rate" pan bands={bands}
        lines={[{ label: 'tokens/s', color: '#188038' }, { label: 'passes/s', color: '#a142f4', scale: 'p' }]} data={rate} />
      {training && (
        <LinePlot title="Forward and backward passes (training)" testid="timeline-backward" pan bands={bands}
          lines={[{ label: 'forward passes/s', color: '#a142f4' }, { label: 'backward passes/s', color: '#d93025' }]} data={passes} />
      )}
    </div>
  );
}

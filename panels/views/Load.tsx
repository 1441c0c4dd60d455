/** Load: per-expert token share for the chosen layer, all layers as small multiples, imbalance over time. */
import { useMemo } from 'preact/hooks';
import type { Analysis } from '../engine/analyzer';
import type { Store } from '../store';
import { fmt } from './format';
import { LinePlot } from './LinePlot';
import { LoadChart } from './LoadChart';

function Spark({ counts }: { counts: Float64Array }) {
  let max = 0;
  for (const c of counts) if (c > max) max = c;
  const w = 120;
  const h = 32;
  const bw = w / Math.max(1, counts.length);
  return (
    <svg width={w} height={h} class="spark" aria-hidden="true">
      {Array.from(counts, (c, i) => (
        <rect key={i} x={i * bw} width={Math.max(0.5, bw - (bw > 2 ? 0.5 : 0))} y={max ? h - (h * c) / max : h} height={max ? (h * c) / max : 0} />
      ))}
    </svg>
  );
}

export function Load({ store, a, layer }: { store: Store; a: Analysis; layer: number }) {
  const E = a.experts;
  const counts = useMemo(() => Array.from(a.window.counts.subarray(layer * E, (layer + 1) * E)), [a, layer]);
  const total = counts.reduce((x, y) => x + y, 0);
  const vio = useMemo(() => {
    const t = a.timeline.map((p) => p.t);
    return [t, a.timeline.map((p) => p.maxVioByLayer[layer] ?? NaN), a.timeline.map((p) => p.maxVio)] as [number[], number[], number[]];
  }, [a.timeline, layer]);
  const row = a.rows[layer];
  return (
    <div class="load">
      <div class="load-top">
        <div class="load-main">
          <LoadChart counts={counts} title={`Tokens per expert, layer ${layer} (last ${a.window.passes} passes)`} />
          {row && <div class="muted stats-line">MaxVio {fmt(row.maxVio)} · CV {fmt(row.cv)} · Gini {fmt(row.gini)} · load entropy {fmt(row.normalizedEntropy)} · effective experts {fmt(row.effectiveExperts, 1)} of {E}</div>}
        </div>
        <div class="table-scroll expert-table-box">
          <table class="grid" data-testid="expert-table" data-layer={layer} data-passes={a.window.passes} data-from-pass={a.window.fromPass}>
            <thead><tr><th>Expert</th><th>Tokens</th><th>Share</th></tr></thead>
            <tbody>
              {counts.map((c, e) => (
                <tr key={e} data-expert={e} class={c === 0 ? 'zero' : ''}>
                  <td>{e}</td>
                  <td class="num" data-testid="expert-count">{c}</td>
                  <td class="num">{total ? ((100 * c) / total).toFixed(1) : '0.0'}%</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </div>
      <LinePlot title="Imbalance over time (MaxVio, trailing 1 s)" testid="imbalance-plot" pan
        lines={[{ label: `layer ${layer}`, color: '#1a73e8' }, { label: 'mean of layers', color: '#e37400' }]} data={vio} height={150} />
      <h3>All layers</h3>
      <div class="multiples" data-testid="small-multiples">
        {Array.from({ length: a.layers }, (_, l) => (
          <button key={l} class={`multiple ${l === layer ? 'selected' : ''}`} title={`Layer ${l}: MaxVio ${fmt(a.rows[l]?.maxVio ?? NaN)}`} onClick={() => store.selectLayer(l)}>
            <Spark counts={a.window.counts.subarray(l * E, (l + 1) * E)} />
            <span>L{l} · {fmt(a.rows[l]?.maxVio ?? NaN, 1)}</span>
          </button>
        ))}
      </div>
    </div>
  );
}

/** Heatmap: layers x experts, each cell the expert's share of its layer's assignments in the window. */
import { useMemo, useState } from 'preact/hooks';
import type { Analysis } from '../engine/analyzer';
import { int, pct } from './format';
import { MatrixCanvas } from './MatrixCanvas';

export function Heatmap({ a }: { a: Analysis }) {
  const [sorted, setSorted] = useState(false);
  const { layers: L, experts: E } = a;
  const c = a.window.counts;
  const totals = useMemo(() => {
    const t = new Float64Array(L);
    for (let l = 0; l < L; l++) for (let e = 0; e < E; e++) t[l]! += c[l * E + e]!;
    return t;
  }, [a]);
  const order = useMemo(() => {
    if (!sorted) return undefined;
    const load = new Float64Array(E);
    for (let l = 0; l < L; l++) for (let e = 0; e < E; e++) load[e]! += totals[l]! ? c[l * E + e]! / totals[l]! : 0;
    return Array.from({ length: E }, (_, e) => e).sort((x, y) => load[y]! - load[x]! || x - y);
  }, [a, sorted]);
  // Colour: share relative to twice the fair share, so an even layer sits mid-scale and hot experts saturate.
  const intensity = (l: number, e: number) => (totals[l]! ? (c[l * E + e]! / totals[l]!) * (E / 2) : 0);
  const describe = (l: number, e: number) => {
    const n = c[l * E + e]!;
    return `Layer ${l}, expert ${e}: ${int(n)} assignments, ${pct(totals[l]! ? n / totals[l]! : 0)} of the layer (fair share ${pct(1 / E)}) over ${a.window.passes} passes`;
  };
  return (
    <div class="heatmap" data-testid="heatmap-view" data-passes={a.window.passes}>
      <div class="controls">
        <label><input type="checkbox" data-testid="heatmap-sort" checked={sorted} onChange={(e) => setSorted((e.target as HTMLInputElement).checked)} /> Sort experts by load</label>
        <span class="muted">{L} layers × {E} experts · last {a.window.passes} passes · colour: share of the layer, full at 2× fair share</span>
      </div>
      <MatrixCanvas rows={L} cols={E} intensity={intensity} order={order} describe={describe} rowLabel="layer" colLabel="expert" testid="heatmap" />
      <div class="axis-note muted">rows: layers 0 (top) to {L - 1} · columns: experts {sorted ? 'busiest first' : `0 to ${E - 1}`}</div>
    </div>
  );
}

/**
 * Heatmap: MoE layers x experts, each cell the expert's share of its layer's assignments in the
 * window. Layers keep their own widths: a row stops at its layer's last expert, and the cells past
 * it are drawn blank.
 */
import { useMemo, useState } from 'preact/hooks';
import type { Analysis } from '../engine/analyzer';
import { int, pct } from './format';
import { MatrixCanvas } from './MatrixCanvas';

export function Heatmap({ a }: { a: Analysis }) {
  const [sorted, setSorted] = useState(false);
  const { layers: L, widths, offsets, maxWidth: W } = a;
  const c = a.window.counts;
  const totals = useMemo(() => {
    const t = new Float64Array(L);
    for (let l = 0; l < L; l++) for (let e = 0; e < widths[l]!; e++) t[l]! += c[offsets[l]! + e]!;
    return t;
  }, [a]);
  const order = useMemo(() => {
    if (!sorted) return undefined;
    // an expert's mean share over the layers that have it
    const load = new Float64Array(W);
    const seen = new Float64Array(W);
    for (let l = 0; l < L; l++) {
      for (let e = 0; e < widths[l]!; e++) {
        load[e]! += totals[l]! ? c[offsets[l]! + e]! / totals[l]! : 0;
        seen[e]! += 1;
      }
    }
    return Array.from({ length: W }, (_, e) => e).sort((x, y) => load[y]! / seen[y]! - load[x]! / seen[x]! || x - y);
  }, [a, sorted]);
  // Colour: share relative to twice the layer's fair share, so an even layer sits mid-scale and hot experts saturate.
  const intensity = (l: number, e: number) => {
    const width = widths[l]!;
    if (e >= width) return NaN; // this layer has fewer experts
    return totals[l]! ? (c[offsets[l]! + e]! / totals[l]!) * (width / 2) : 0;
  };
  const describe = (l: number, e: number) => {
    const row = a.rows[l]!;
    if (e >= widths[l]!) return `${row.label} has ${widths[l]} experts (no expert ${e})`;
    const n = c[offsets[l]! + e]!;
    const identity = e >= widths[l]! - row.info.identity_experts ? ' (zero-compute)' : '';
    return `${row.label}, expert ${e}${identity}: ${int(n)} assignments, ${pct(totals[l]! ? n / totals[l]! : 0)} of the layer ` +
      `(fair share ${pct(1 / widths[l]!)}) over ${a.window.passes} passes`;
  };
  const mixed = widths.some((w) => w !== W);
  return (
    <div class="heatmap" data-testid="heatmap-view" data-passes={a.window.passes}>
      <div class="controls">
        <label><input type="checkbox" data-testid="heatmap-sort" checked={sorted} onChange={(e) => setSorted((e.target as HTMLInputElement).checked)} /> Sort experts by load</label>
        <span class="muted">{L} layers × {mixed ? `up to ${W}` : W} experts · last {a.window.passes} passes · colour: share of the layer, full at 2× the layer's fair share</span>
      </div>
      <MatrixCanvas rows={L} cols={W} intensity={intensity} order={order} describe={describe} rowLabel="layer" colLabel="expert" testid="heatmap" />
      <div class="axis-note muted">
        rows: MoE layers in model order, {a.rows[0]?.label} (top) to {a.rows[L - 1]?.label}
        {' · '}columns: experts {sorted ? 'busiest first' : `0 to ${W - 1}`}{mixed ? ' · blank: past a layer’s last expert' : ''}
      </div>
    </div>
  );
}

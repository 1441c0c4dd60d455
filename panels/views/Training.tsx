/**
 * Training: what a model in training mode computes for its MoE layers, pass by pass, as the
 * probe read it (ProbeLosses): each layer's auxiliary load-balancing loss and router z-loss, the
 * model's own aux_loss and loss; forward passes in training mode and backward passes, counted
 * apart, and each layer's backward time.
 */
import { useMemo } from 'preact/hooks';
import type uPlot from 'uplot';
import type { Analysis, LossRow } from '../engine/analyzer';
import { fmt, int } from './format';
import { LinePlot } from './LinePlot';

const COLORS = ['#1a73e8', '#e37400', '#188038', '#a142f4', '#d93025', '#12b5cb', '#f9ab00', '#9334e6'];
/** Layers drawn in the per-layer plot (the table lists every layer). */
const PLOTTED_LAYERS = 8;

function mean(rows: LossRow[], pick: (r: LossRow) => number): number {
  let sum = 0;
  let n = 0;
  for (const r of rows) {
    const v = pick(r);
    if (Number.isFinite(v)) {
      sum += v;
      n++;
    }
  }
  return n ? sum / n : NaN;
}

export function Training({ a }: { a: Analysis }) {
  const t = a.training;
  const rows = t?.rows ?? [];
  const last = rows[rows.length - 1];
  const plots = useMemo(() => {
    const x = rows.map((r) => r.pass);
    const shown = Math.min(PLOTTED_LAYERS, a.layers);
    return {
      totals: [x, rows.map((r) => r.loss), rows.map((r) => r.modelAux)] as [number[], number[], number[]],
      aux: [x, ...Array.from({ length: shown }, (_, l) => rows.map((r) => r.aux[l] ?? NaN))] as uPlot.AlignedData,
      z: [x, ...Array.from({ length: shown }, (_, l) => rows.map((r) => r.z[l] ?? NaN))] as uPlot.AlignedData,
      lines: Array.from({ length: shown }, (_, l) => ({ label: a.rows[l]?.label ?? `layer ${l}`, color: COLORS[l % COLORS.length]! })),
    };
  }, [rows, a.layers, a.rows]);
  if (!t) {
    return (
      <div class="training" data-testid="training-view">
        <p class="empty" data-testid="training-empty">
          No training pass seen in this job: its model runs in evaluation mode (the probe reads training passes of torch
          models in training mode, e.g. a transformers Trainer run).
        </p>
      </div>
    );
  }
  return (
    <div class="training" data-testid="training-view" data-passes={rows.length} data-last-pass={last?.pass ?? 0}>
      <div class="cards">
        <div class="card"><div class="card-value" data-testid="train-passes">{int(t.trainPasses)}</div><div class="muted">forward passes (training)</div></div>
        <div class="card"><div class="card-value" data-testid="backward-passes">{int(t.backwardPasses)}</div><div class="muted">backward passes</div></div>
        <div class="card"><div class="card-value" data-testid="last-loss">{fmt(last?.loss ?? NaN, 4)}</div><div class="muted">loss (last pass)</div></div>
        <div class="card"><div class="card-value" data-testid="last-model-aux">{fmt(last?.modelAux ?? NaN, 4)}</div><div class="muted">model aux_loss (last pass)</div></div>
      </div>
      <p class="muted">
        Over the window of {int(a.window.passes)} passes: {int(t.trainPasses)} forward passes in training mode and{' '}
        {int(t.backwardPasses)} backward passes. Per layer, each loss as the model computes it: the load-balancing loss of
        that layer's router logits alone (the model's own function), and the router z-loss, mean of logsumexp(logits)².
      </p>
      <table class="grid training-table" data-testid="training-table" data-pass={last?.pass ?? ''} data-loss={String(last?.loss ?? NaN)}
        data-model-aux={String(last?.modelAux ?? NaN)}>
        <thead>
          <tr><th>Layer</th><th>aux (last pass)</th><th>aux (mean)</th><th>z-loss (last pass)</th><th>z-loss (mean)</th><th>backward ms / pass</th></tr>
        </thead>
        <tbody>
          {a.rows.map((r) => (
            <tr key={r.layer} data-layer={r.layer} data-aux={String(last?.aux[r.layer] ?? NaN)} data-z={String(last?.z[r.layer] ?? NaN)}>
              <td>{r.label}</td>
              <td class="num">{fmt(last?.aux[r.layer] ?? NaN, 4)}</td>
              <td class="num">{fmt(mean(rows, (x) => x.aux[r.layer] ?? NaN), 4)}</td>
              <td class="num">{fmt(last?.z[r.layer] ?? NaN, 4)}</td>
              <td class="num">{fmt(mean(rows, (x) => x.z[r.layer] ?? NaN), 4)}</td>
              <td class="num" data-testid="backward-ms">{fmt(r.backwardMsPerPass, 3)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {rows.length > 1 && (
        <>
          <LinePlot title="Loss and the model's aux_loss" testid="training-totals" pan xLabel="pass"
            lines={[{ label: 'loss', color: '#1a73e8' }, { label: 'aux_loss', color: '#e37400', scale: 'aux' }]} data={plots.totals} />
          <LinePlot title="Load-balancing loss per layer" testid="training-aux" pan xLabel="pass" lines={plots.lines} data={plots.aux} />
          <LinePlot title="Router z-loss per layer" testid="training-z" pan xLabel="pass" lines={plots.lines} data={plots.z} />
        </>
      )}
    </div>
  );
}

/** Profiler: time per MoE layer (from timeS), throughput, and the probe's own cost. */
import type { Analysis } from '../engine/analyzer';
import { fmt, int, pct } from './format';

export function Profiler({ a }: { a: Analysis }) {
  const p = a.profile;
  const max = Math.max(0, ...a.rows.map((r) => (Number.isFinite(r.msPerPass) ? r.msPerPass : 0)));
  const measured = a.rows.some((r) => Number.isFinite(r.msPerPass));
  return (
    <div class="profiler" data-testid="profiler-view">
      <div class="cards">
        <div class="card"><div class="card-value" data-testid="prof-tokens-per-s">{int(p.tokensPerS)}</div><div class="muted">tokens/s</div></div>
        <div class="card"><div class="card-value">{fmt(p.passesPerS, 1)}</div><div class="muted">passes/s</div></div>
        <div class="card"><div class="card-value">{fmt(p.blockMsPerPass, 2)} ms</div><div class="muted">in MoE blocks per pass</div></div>
        <div class="card"><div class="card-value" data-testid="probe-share">{pct(p.probeShare)}</div><div class="muted">probe cost (probeS / block time)</div></div>
      </div>
      {!measured ? (
        <p class="empty" data-testid="profile-unmeasured">
          The probe does not report block times for this job: inside a compiled JAX, TensorFlow or ONNX Runtime graph
          one layer's time is not visible from Python (torch jobs report it).
        </p>
      ) : (
        <table class="grid profile" data-testid="profile-table">
          <thead><tr><th>Layer</th><th>ms / pass</th><th>Share</th><th></th></tr></thead>
          <tbody>
            {a.rows.map((r) => (
              <tr key={r.layer} data-layer={r.layer}>
                <td>{r.label}</td>
                <td class="num">{fmt(r.msPerPass, 3)}</td>
                <td class="num">{pct(p.blockMsPerPass > 0 ? r.msPerPass / p.blockMsPerPass : NaN)}</td>
                <td class="bar-cell"><div class="bar" style={{ width: `${max > 0 ? (100 * r.msPerPass) / max : 0}%` }} /></td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <p class="muted">Over the window of {a.window.passes} passes ({fmt(a.window.seconds, 1)} s). Probe time per pass: {fmt(p.probeMsPerPass, 3)} ms. Dropped: {int(a.dropped)} snapshots, {int(a.droppedTokenRecords)} token records.</p>
    </div>
  );
}

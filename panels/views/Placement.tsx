/**
 * Beside the Load view: where to put the experts on G devices with R redundant slots, from the
 * loads the job showed (src/analysis/placement.ts): each layer's predicted device loads and
 * balancedness as placed contiguously, by DeepSeek's EPLB greedy, and by ours; exported as JSON.
 * Planned in the analysis worker when asked (a plan of many wide layers takes a moment).
 */
import { useEffect, useState } from 'preact/hooks';
import { planJson, type PlanResult, type RangeSpec } from '../engine/long-run';
import type { Store } from '../store';
import { fmt, int } from './format';

function download(name: string, text: string) {
  const url = URL.createObjectURL(new Blob([text], { type: 'application/json' }));
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** Device loads as bars, before and after, scaled to the busiest of both. */
function DeviceBars({ before, after, label }: { before: number[] | null; after: number[]; label: string }) {
  const max = Math.max(1e-9, ...after, ...(before ?? []));
  return (
    <table class="grid devices" data-testid="device-loads" aria-label={label}>
      <thead><tr><th>Device</th>{before && <th>Now</th>}<th>Planned</th></tr></thead>
      <tbody>
        {after.map((v, g) => (
          <tr key={g} data-device={g}>
            <td class="num">{g}</td>
            {before && <td class="bar-cell"><div class="bar before" style={{ width: `${(100 * before[g]!) / max}%` }} title={int(before[g]!)} /></td>}
            <td class="bar-cell"><div class="bar" style={{ width: `${(100 * v) / max}%` }} title={int(v)} /></td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

export function Placement({ store, pid, layer, modelClass }: { store: Store; pid: number; layer: number; modelClass: string }) {
  const [devices, setDevices] = useState(4);
  const [redundant, setRedundant] = useState(4);
  const [range, setRange] = useState<RangeSpec['kind']>('window');
  const [plan, setPlan] = useState<PlanResult | null>(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => setPlan(null), [pid]);
  const make = async () => {
    const port = store.analysisPort;
    if (!port?.plan) return;
    setBusy(true);
    const s = store.state.settings;
    setPlan(await port.plan(pid, { kind: range } as RangeSpec, devices, redundant, undefined, { windowMode: s.windowMode, windowValue: s.windowValue }));
    setBusy(false);
  };
  const lp = plan?.layers.find((l) => l.layer === layer);
  const summary = plan && plan.layers.filter((l) => l.ours);
  const mean = (f: (l: PlanResult['layers'][number]) => number | undefined) => {
    const v = (summary ?? []).map(f).filter((x): x is number => x !== undefined && Number.isFinite(x));
    return v.length ? v.reduce((a, b) => a + b, 0) / v.length : NaN;
  };
  return (
    <section class="placement" data-testid="placement">
      <h3>Expert placement plan <span class="muted">(G devices, R redundant expert slots in all; each expert's tokens split evenly over its replicas)</span></h3>
      <div class="controls">
        <label>Devices <input type="number" min="1" data-testid="plan-devices" value={devices} onChange={(e) => setDevices(Math.max(1, Math.round(Number((e.target as HTMLInputElement).value)) || 1))} /></label>
        <label>Redundant slots <input type="number" min="0" data-testid="plan-redundant" value={redundant} onChange={(e) => setRedundant(Math.max(0, Math.round(Number((e.target as HTMLInputElement).value)) || 0))} /></label>
        <label>Loads from <select data-testid="plan-range" value={range} onChange={(e) => setRange((e.target as HTMLSelectElement).value as RangeSpec['kind'])}>
          <option value="window">the analysis window</option>
          <option value="all">everything since attach</option>
        </select></label>
        <button class="primary" data-testid="plan-make" disabled={busy} onClick={() => void make()}>{busy ? 'Planning…' : plan ? 'Plan again' : 'Plan'}</button>
        <button data-testid="plan-export" disabled={!plan} onClick={() => plan && download(`moe-placement-${pid}-G${plan.devices}-R${plan.redundant}.json`, planJson(plan, { class: modelClass, pid }))}>Export JSON</button>
      </div>
      {plan && (
        <p class="muted" data-testid="plan-summary">
          From {int(plan.passes)} passes ({fmt(plan.to - plan.from, 1)} s). Mean balancedness over {summary!.length} layers: now {fmt(mean((l) => l.contiguous?.balancedness), 3)},
          EPLB {fmt(mean((l) => l.eplb?.balancedness), 3)}, this plan {fmt(mean((l) => l.ours?.balancedness), 3)}.
        </p>
      )}
      {lp && lp.error && <p class="warn" data-testid="plan-error">{lp.label}: {lp.error}</p>}
      {lp && lp.ours && (
        <div class="plan-layer" data-testid="plan-layer" data-layer={lp.layer} data-before={lp.contiguous?.balancedness ?? ''} data-eplb={lp.eplb?.balancedness} data-ours={lp.ours.balancedness}>
          <div class="cards">
            <div class="card"><div class="card-value" data-testid="plan-before">{fmt(lp.contiguous?.balancedness ?? NaN, 3)}</div><div class="muted">balancedness now (expert e on device ⌊e·G/E⌋)</div></div>
            <div class="card"><div class="card-value">{fmt(lp.eplb!.balancedness, 3)}</div><div class="muted">with EPLB's greedy</div></div>
            <div class="card"><div class="card-value" data-testid="plan-after">{fmt(lp.ours.balancedness, 3)}</div><div class="muted">with this plan</div></div>
          </div>
          <DeviceBars before={lp.contiguous?.deviceLoad ?? null} after={lp.ours.deviceLoad} label={`Predicted load per device, ${lp.label}`} />
          <p class="muted plan-slots">
            {Array.from({ length: plan!.devices }, (_, g) => (
              <span key={g} class="chip" title={`device ${g}`}>d{g}: {lp.ours!.slots.slice(g * lp.ours!.slotsPerDevice, (g + 1) * lp.ours!.slotsPerDevice).join(' ')}</span>
            ))}
          </p>
        </div>
      )}
    </section>
  );
}

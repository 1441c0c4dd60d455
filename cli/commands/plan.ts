/**
 * `moe-devtools plan FILE --devices G [--redundant R] [-o plan.json]`: an expert placement for
 * expert parallelism from a recording's loads (every layer's assignments per expert since attach),
 * the same plan as beside the panel's Load view (src/analysis/placement.ts, panels/engine/long-run.ts).
 */
import type { JobUpdate } from '../../src/protocol/panel';
import { layerLabel, unknownLayer } from '../../src/analysis/layers';
import { contiguousPlacement, eplbPlacement, planPlacement, PlacementError } from '../../src/analysis/placement';
import { planJson, type LayerPlan, type PlanResult } from '../../panels/engine/long-run';
import type { Recording } from '../../panels/engine/recording';
import { CliError } from '../errors';

export function planFromRecording(rec: Recording, devices: number, redundant: number): { plan: PlanResult; modelClass: string } {
  const updates = rec.messages.filter((m): m is JobUpdate => m.type === 'update');
  const last = updates[updates.length - 1]!;
  const first = updates[0]!;
  const attached = rec.messages.find((m) => m.type === 'attached');
  const model = attached?.type === 'attached' ? attached.models.find((m) => m.id === last.model) : undefined;
  const layers: LayerPlan[] = [];
  let off = 0;
  last.widths.forEach((e, l) => {
    const load = last.counts.slice(off, off + e);
    off += e;
    const info = model?.layers[l]?.experts === e ? model.layers[l]! : unknownLayer(l, e);
    const plan: LayerPlan = { layer: l, label: layerLabel(info), experts: e, load, contiguous: null, eplb: null, ours: null };
    try {
      plan.contiguous = e % devices === 0 ? contiguousPlacement(load, devices) : null;
      plan.eplb = eplbPlacement(load, devices, redundant);
      plan.ours = planPlacement(load, devices, redundant);
    } catch (err) {
      if (!(err instanceof PlacementError)) throw err;
      plan.error = err.message;
    }
    layers.push(plan);
  });
  if (layers.every((l) => l.error)) throw new CliError(`no plan: ${layers[0]!.error}`);
  return {
    plan: { pid: rec.header.pid, devices, redundant, from: 0, to: last.ts - first.ts, passes: last.passes, layers },
    modelClass: model?.class ?? 'Recorded model',
  };
}

export function planText(plan: PlanResult): string {
  const f = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? '    -' : x.toFixed(3));
  const out = [`expert placement on ${plan.devices} devices with ${plan.redundant} redundant slots, from ${plan.passes} passes since attach`,
    'layer  experts  balancedness now  EPLB   this plan  name'];
  for (const l of plan.layers) {
    out.push(l.error
      ? `${String(l.layer).padStart(5)}  ${String(l.experts).padStart(7)}  ${l.error}`
      : `${String(l.layer).padStart(5)}  ${String(l.experts).padStart(7)}  ${f(l.contiguous?.balancedness).padStart(16)}  ${f(l.eplb?.balancedness)}  ${f(l.ours?.balancedness).padStart(9)}  ${l.label}`);
  }
  return out.join('\n');
}

export { planJson };

/**
 * `moe-devtools flow FILE`: the routing flow of a recording's sampled tokens between consecutive
 * MoE layers, the numbers the panel's Flow view draws (the same src/analysis/flow.ts over the same
 * token records), as a table or JSON.
 */
import { fmtInt, layerLabel, routingFlow, tokenTextFilter, unknownLayer, type FlowRecord, type FlowWeighting, type RoutingFlow } from '../../src/analysis';
import type { HostMessage, JobUpdate, TokenUpdate } from '../../src/protocol/panel';
import type { LayerInfo } from '../../src/protocol/probe';
import type { Recording } from '../../panels/engine/recording';
import { CliError } from '../errors';

export interface FlowCommandOptions {
  /** Probe layer indices; the flow runs through every layer from `from` to `to`. */
  from: number;
  to: number;
  weighting: FlowWeighting;
  filter: string;
  /** Only passes in [fromPass, toPass]. */
  fromPass?: number;
  toPass?: number;
}

export interface RecordingFlow {
  flow: RoutingFlow;
  layers: LayerInfo[];
  options: FlowCommandOptions;
}

/**
 * The sampled passes of the recording's model, parts of one pass (split by layers) merged. As in
 * the panel's replay, token records that come before the model's first counts update are left out
 * (a recording started mid-stream may begin with one; the panel has no job to put it in yet).
 */
export function tokenRecords(messages: readonly HostMessage[], model: number): FlowRecord[] {
  const byPass = new Map<number, FlowRecord & { layers: FlowRecord['layers'][number][] }>();
  let counted = false;
  for (const m of messages) {
    if (m.type === 'update' && m.model === model) counted = true;
    if (m.type !== 'tokens' || m.model !== model || !counted) continue;
    const t = m as TokenUpdate;
    let rec = byPass.get(t.pass);
    if (!rec) byPass.set(t.pass, (rec = { pass: t.pass, tokenIds: t.tokenIds, texts: t.texts, layers: [] }));
    rec.tokenIds ??= t.tokenIds;
    rec.texts ??= t.texts;
    for (const l of t.layers) {
      if (l.k < 1 || l.ids.length < l.n * l.k) continue; // as the panel's analyzer: a malformed part is left out
      rec.layers = rec.layers.filter((x) => x.layer !== l.layer);
      rec.layers.push({ layer: l.layer, k: l.k, ids: l.ids.slice(0, l.n * l.k), weights: l.weights ? l.weights.slice(0, l.n * l.k) : null });
    }
  }
  return [...byPass.values()].sort((a, b) => a.pass - b.pass);
}

export function recordingFlow(recording: Recording, options: FlowCommandOptions): RecordingFlow {
  const update = recording.messages.find((m): m is JobUpdate => m.type === 'update')!;
  const widths = update.widths;
  const attached = recording.messages.find((m) => m.type === 'attached');
  let infos: LayerInfo[] = attached && attached.type === 'attached' ? attached.models.find((x) => x.id === update.model)?.layers ?? [] : [];
  for (const m of recording.messages) if (m.type === 'layers' && m.model === update.model) infos = m.layers;
  const layers = widths.map((w, i) => (infos[i]?.experts === w ? infos[i]! : unknownLayer(i, w)));
  for (const [flag, l] of [['--from', options.from], ['--to', options.to]] as const) {
    if (!(l >= 0 && l < widths.length)) throw new CliError(`${flag} ${l}: the recording's model has layers 0 to ${widths.length - 1}`);
  }
  if (options.to <= options.from) throw new CliError('--to should be a later layer than --from');
  const records = tokenRecords(recording.messages, update.model)
    .filter((r) => (options.fromPass === undefined || r.pass >= options.fromPass) && (options.toPass === undefined || r.pass <= options.toPass));
  if (!records.length) throw new CliError('the recording holds no per-token records in that range (the probe samples a few passes per second; layers read from expert inputs have none)');
  const chain: number[] = [];
  for (let l = options.from; l <= options.to; l++) chain.push(l);
  const flow = routingFlow(records, chain, widths, { weighting: options.weighting, select: tokenTextFilter(options.filter) });
  return { flow, layers, options };
}

const num = (w: number) => (Number.isInteger(w) ? String(w) : w.toFixed(6));

export function flowText(r: RecordingFlow): string {
  const { flow } = r;
  const passes = flow.passes;
  const lines = [
    `${fmtInt(flow.tokens)} sampled tokens${r.options.filter ? ` matching "${r.options.filter}"` : ''} from ${fmtInt(passes.length)} passes` +
      (passes.length ? ` (${passes[0]}-${passes[passes.length - 1]})` : '') + `; weighting: ${flow.weighting}`,
  ];
  for (const pair of flow.pairs) {
    lines.push('', `${layerLabel(r.layers[pair.from]!)} -> ${layerLabel(r.layers[pair.to]!)}: ${fmtInt(pair.src.length)} transitions, ${num(pair.total)} tokens in both layers`);
    lines.push('from_expert  to_expert  tokens');
    const order = Array.from(pair.weight.keys()).sort((a, b) => pair.weight[b]! - pair.weight[a]! || pair.src[a]! - pair.src[b]! || pair.dst[a]! - pair.dst[b]!);
    for (const i of order) lines.push(`${String(pair.src[i]).padStart(11)}  ${String(pair.dst[i]).padStart(9)}  ${num(pair.weight[i]!)}`);
  }
  return lines.join('\n');
}

export function flowJson(r: RecordingFlow): string {
  const { flow } = r;
  return JSON.stringify({
    weighting: flow.weighting, filter: r.options.filter, tokens: flow.tokens, passes: flow.passes,
    layers: flow.layers.map((l, c) => ({ layer: l, name: r.layers[l]!.name, experts: Array.from(flow.nodes[c]!) })),
    pairs: flow.pairs.map((p) => ({ from: p.from, to: p.to, total: p.total, transitions: Array.from(p.weight, (w, i) => [p.src[i], p.dst[i], w]) })),
  }, null, 2);
}

/**
 * What the probe saw of how a job's passes ran, in words: passes read from torch.compile'd code
 * (and what attaching cost there), passes replayed from CUDA graphs (counted when the graph was
 * captured while attached, not seen when it was captured before), and how to see what was not
 * seen. A pure function of a counts update, shared by the panel and the command line.
 *
 * It says only what the probe has evidence for: a pass it did not see is named only when the
 * probe counted something that ran without it (a CUDA graph replay); otherwise the lines give
 * the passes it saw and nothing more.
 */
import type { ProbeVisibility } from '../protocol/probe';
import { fmtInt } from './findings';

export interface VisibilityInput {
  passes: number;
  prefill?: number;
  decode?: number;
  visibility?: ProbeVisibility;
}

export interface VisibilityNote {
  kind: 'seen' | 'compiled' | 'graphs' | 'advice';
  text: string;
}

/** The documented ways to see passes an engine replays from CUDA graphs. */
export const SEE_GRAPH_REPLAYS =
  'To see them: attach before the engine captures its CUDA graphs (a graph captured while attached carries the ' +
  'probe\'s counting into every replay), or run it eagerly: vLLM enforce_eager=True, SGLang --disable-cuda-graph, ' +
  'torch.compile in a mode other than "reduce-overhead".';

const plural = (n: number, one: string, many = `${one}s`) => `${fmtInt(n)} ${n === 1 ? one : many}`;

function seconds(s: number): string {
  return s >= 10 ? `${s.toFixed(0)} s` : s >= 0.1 ? `${s.toFixed(1)} s` : `${Math.round(s * 1000)} ms`;
}

/**
 * Notes for one update; none for a job whose every pass ran eagerly in view of the probe
 * (nothing there is hidden from it).
 */
export function visibilityNotes(u: VisibilityInput): VisibilityNote[] {
  const v = u.visibility;
  if (!v) return [];
  const notes: VisibilityNote[] = [];
  const prefill = u.prefill ?? 0;
  const decode = u.decode ?? 0;
  const unseen = v.unseen_replays;
  const graphsInvolved = unseen > 0 || v.captured_passes > 0 || v.replayed_passes > 0;
  if (graphsInvolved) {
    const seen = [prefill ? `prefill (${plural(prefill, 'pass', 'passes')})` : '', decode ? `decode (${plural(decode, 'pass', 'passes')})` : '']
      .filter(Boolean);
    let text = seen.length ? `Seen: ${seen.join(', ')}.` : 'No pass seen yet.';
    if (unseen > 0) {
      // Serving engines replay their decode steps from graphs captured at startup.
      text += prefill > 0 && decode === 0
        ? ` Decode runs in CUDA graphs: not seen (${plural(unseen, 'replay')} since attach).`
        : ` Not seen: ${plural(unseen, 'CUDA graph replay')} since attach, of graphs captured before it (they run no Python).`;
    }
    notes.push({ kind: 'seen', text });
    if (v.replayed_passes > 0 || v.captured_passes > 0) {
      notes.push({
        kind: 'graphs',
        text: `${plural(v.replayed_passes, 'pass', 'passes')} counted from replays of ${plural(v.captured_passes, 'pass', 'passes')} ` +
          'captured into CUDA graphs while attached (no health statistics or token records for those).',
      });
    }
    if (unseen > 0) notes.push({ kind: 'advice', text: SEE_GRAPH_REPLAYS });
  }
  if (v.compiled_passes > 0 || v.tap_compiles > 0) {
    const cost = v.tap_compiles > 0
      ? `attaching recompiled ${plural(v.tap_compiles, 'graph')} in ${seconds(v.tap_compile_s)} (the job's pass waited for it)`
      : 'no recompilation (compiled with the probe\'s hooks at an earlier attach)';
    const breaks = v.graph_breaks > 0 ? `${plural(v.graph_breaks, 'graph break')} while attached` : 'no graph break';
    const others = v.other_compiles > 0 ? `; the job compiled ${plural(v.other_compiles, 'other graph')} meanwhile` : '';
    notes.push({
      kind: 'compiled',
      text: `torch.compile: ${plural(v.compiled_passes, 'pass', 'passes')} read inside the compiled code; ${cost}; ${breaks}${others}. ` +
        'Detaching returns to the original compiled code without recompiling.',
    });
  }
  return notes;
}

/** What the panel and the command line say about passes the probe did or did not see (src/analysis/visibility.ts). */
import { describe, expect, it } from 'vitest';
import { SEE_GRAPH_REPLAYS, visibilityNotes } from '../../src/analysis';
import type { ProbeVisibility } from '../../src/protocol/probe';

const none: ProbeVisibility = {
  compiled_passes: 0, tap_compiles: 0, tap_compile_s: 0, other_compiles: 0, graph_breaks: 0,
  captured_passes: 0, replayed_passes: 0, unseen_replays: 0,
};

describe('visibility notes', () => {
  it('say nothing for passes that all ran eagerly in the probe\'s view, or for an older probe', () => {
    expect(visibilityNotes({ passes: 40, prefill: 10, decode: 30 })).toEqual([]);
    expect(visibilityNotes({ passes: 40, prefill: 10, decode: 30, visibility: none })).toEqual([]);
  });

  it('say what attaching to a compiled model cost, and that attaching again costs nothing', () => {
    const first = visibilityNotes({ passes: 40, prefill: 40, visibility: { ...none, compiled_passes: 40, tap_compiles: 1, tap_compile_s: 6.14 } });
    expect(first).toEqual([{
      kind: 'compiled',
      text: 'torch.compile: 40 passes read inside the compiled code; attaching recompiled 1 graph in 6.1 s (the job\'s pass waited for it); ' +
        'no graph break. Detaching returns to the original compiled code without recompiling.',
    }]);
    const again = visibilityNotes({ passes: 3, visibility: { ...none, compiled_passes: 3, graph_breaks: 2, other_compiles: 1 } });
    expect(again[0]!.text).toBe('torch.compile: 3 passes read inside the compiled code; no recompilation (compiled with the probe\'s hooks ' +
      'at an earlier attach); 2 graph breaks while attached; the job compiled 1 other graph meanwhile. Detaching returns to the original ' +
      'compiled code without recompiling.');
  });

  it('say prefill is seen and decode runs in CUDA graphs, not seen, and how to see it', () => {
    const notes = visibilityNotes({ passes: 12, prefill: 12, decode: 0, visibility: { ...none, unseen_replays: 3400 } });
    expect(notes.map((n) => n.kind)).toEqual(['seen', 'advice']);
    expect(notes[0]!.text).toBe('Seen: prefill (12 passes). Decode runs in CUDA graphs: not seen (3,400 replays since attach).');
    expect(notes[1]!.text).toBe(SEE_GRAPH_REPLAYS);
    expect(SEE_GRAPH_REPLAYS).toMatch(/attach before the engine captures/);
    expect(SEE_GRAPH_REPLAYS).toMatch(/enforce_eager=True/);
    expect(SEE_GRAPH_REPLAYS).toMatch(/--disable-cuda-graph/);
  });

  it('never claim a phase it did not see', () => {
    // decode seen too: the unseen replays are named as replays, not as a phase
    const mixed = visibilityNotes({ passes: 20, prefill: 5, decode: 15, visibility: { ...none, unseen_replays: 7 } });
    expect(mixed[0]!.text).toBe('Seen: prefill (5 passes), decode (15 passes). Not seen: 7 CUDA graph replays since attach, of graphs captured before it (they run no Python).');
    // nothing seen at all
    const nothing = visibilityNotes({ passes: 0, visibility: { ...none, unseen_replays: 1 } });
    expect(nothing[0]!.text).toBe('No pass seen yet. Not seen: 1 CUDA graph replay since attach, of graphs captured before it (they run no Python).');
    for (const n of [...mixed, ...nothing]) expect(n.text).not.toMatch(/decode runs/i);
  });

  it('count passes replayed from graphs captured while attached as seen', () => {
    const notes = visibilityNotes({ passes: 27, prefill: 1, decode: 26, visibility: { ...none, captured_passes: 1, replayed_passes: 25 } });
    expect(notes.map((n) => n.kind)).toEqual(['seen', 'graphs']);
    expect(notes[0]!.text).toBe('Seen: prefill (1 pass), decode (26 passes).');
    expect(notes[1]!.text).toBe('25 passes counted from replays of 1 pass captured into CUDA graphs while attached (no health statistics or token records for those).');
  });
});

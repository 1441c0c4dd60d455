/** The explain and expert-params requests between panel and probe: validation, frames, and answers cut under the message limit. */
import { describe, expect, it } from 'vitest';
import { MAX_HOST_MESSAGE_BYTES, parsePanelRequest } from '../../src/protocol/panel';
import type { ProbeExpertParams } from '../../src/protocol/probe';
import { expertParamsFrame, expertParamsMessages, explainFrame } from '../../native-host/src/requests';
import { prng } from './prng';

function f64(values: number[]): Uint8Array {
  const out = new Uint8Array(values.length * 8);
  const view = new DataView(out.buffer);
  values.forEach((v, i) => view.setFloat64(i * 8, v, true));
  return out;
}

function f32(values: number[]): Uint8Array {
  const out = new Uint8Array(values.length * 4);
  const view = new DataView(out.buffer);
  values.forEach((v, i) => view.setFloat32(i * 4, v, true));
  return out;
}

const explain = { type: 'explain', pid: 42, id: 7, model: 0, pass: 12, index: 3, layer: 1, expert: 5 };

describe('explain and expert-params requests', () => {
  it('accepts what the panel sends and fills the probe frame with the defaults', () => {
    const request = parsePanelRequest(explain);
    expect(request).toEqual(explain);
    expect(explainFrame(request as never)).toEqual({ t: 'explain', id: 7, model: 0, pass: 12, index: 3, layer: 1, expert: 5, steps: 32, baseline: 'zero' });
    const full = parsePanelRequest({ ...explain, steps: 64, baseline: 'token', baselineToken: 0, maxSeconds: 5, maxMB: 64 });
    expect(explainFrame(full as never)).toEqual({
      t: 'explain', id: 7, model: 0, pass: 12, index: 3, layer: 1, expert: 5, steps: 64, baseline: 'token', baseline_token: 0, max_seconds: 5, max_mb: 64,
    });
    const params = parsePanelRequest({ type: 'expert-params', pid: 42, id: 8, model: 0, layers: [0, 2], chunkMB: 16 });
    expect(expertParamsFrame(params as never)).toEqual({ t: 'expert-params', id: 8, model: 0, layers: [0, 2], chunk_mb: 16 });
  });

  it.each([
    [{ ...explain, pid: 0 }, 'explain needs a positive integer pid'],
    [{ ...explain, expert: -1 }, 'explain needs a whole number expert'],
    [{ ...explain, pass: '12' }, 'explain needs a whole number pass'],
    [{ ...explain, steps: 0 }, 'explain: steps should be a whole number from 1 to 1024'],
    [{ ...explain, steps: 5000 }, 'explain: steps should be a whole number from 1 to 1024'],
    [{ ...explain, baseline: 'noise' }, 'explain: baseline should be one of zero, mean, token'],
    [{ ...explain, baseline: 'token' }, 'explain: a token baseline needs baselineToken'],
    [{ ...explain, maxMB: 0 }, 'explain: maxMB should be between 1 and 1048576'],
    [{ type: 'expert-params', pid: 1, id: 1, model: 0, layers: [0, -1] }, 'expert-params: layers should list whole layer numbers'],
    [{ type: 'expert-params', pid: 1, id: 1 }, 'expert-params needs whole id and model numbers'],
  ])('refuses %j', (message, error) => {
    expect(parsePanelRequest(message)).toEqual({ error });
  });

  it('cuts a 512-expert layer into messages under the limit that put its matrices back together', () => {
    const E = 512;
    const random = prng(5);
    const router = Array.from({ length: E * E }, () => random() * 2 - 1);
    const weights = Array.from({ length: E * E }, (_, i) => (i % (E + 1) === 0 ? 1 : random() * 0.2));
    router[3 * E + 7] = NaN; // a zero-norm row's cosine
    const frame: ProbeExpertParams = {
      t: 'expert-params', id: 9, model: 0, layer: 4, part: 2, parts: 8, experts: E, compute_experts: E,
      router_name: 'weight', router_norms: f64(Array.from({ length: E }, (_, i) => i / 10)), router_cosine: f32(router),
      router_bias_name: '', router_bias: null, layout: 'stacked', groups: ['gate_up_proj', 'down_proj'], params: 1e6,
      expert_norms: f64(Array.from({ length: E }, () => 1.5)), group_norms: f64(Array.from({ length: 2 * E }, () => 1)),
      weight_cosine: f32(weights), seconds: 1.25, peak_bytes: 64 << 20, notes: [],
    };
    const budget = MAX_HOST_MESSAGE_BYTES - 64 * 1024;
    const parts = expertParamsMessages(42, frame, budget);
    expect(parts.length).toBeGreaterThan(1);
    for (const p of parts) expect(JSON.stringify(p).length).toBeLessThanOrEqual(budget);
    expect(parts[0]!.rowStart).toBe(0);
    expect(parts.at(-1)!.rowEnd).toBe(E);
    parts.slice(1).forEach((p, i) => expect(p.rowStart).toBe(parts[i]!.rowEnd));
    expect(parts[0]!.routerNorms![10]).toBeCloseTo(1, 12);
    expect(parts.slice(1).every((p) => p.routerNorms === null && p.expertNorms === null)).toBe(true);
    const merged = parts.flatMap((p) => p.routerCosine!);
    const mergedWeights = parts.flatMap((p) => p.weightCosine!);
    expect(merged).toHaveLength(E * E);
    expect(merged[3 * E + 7]).toBeNull();
    for (let i = 0; i < E * E; i += 997) {
      if (i === 3 * E + 7) continue;
      expect(merged[i]).toBeCloseTo(Math.fround(router[i]!), 4);
      expect(mergedWeights[i]).toBeCloseTo(Math.fround(weights[i]!), 4);
    }
    // a small layer fits in one message, whole
    const small = expertParamsMessages(42, { ...frame, experts: 2, router_norms: f64([1, 2]), router_cosine: f32([1, 0.5, 0.5, 1]),
      expert_norms: null, group_norms: null, weight_cosine: null }, budget);
    expect(small).toHaveLength(1);
    expect(small[0]).toMatchObject({ rowStart: 0, rowEnd: 2, routerCosine: [1, 0.5, 0.5, 1], routerNorms: [1, 2], weightCosine: null });
  });
});

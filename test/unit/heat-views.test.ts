/**
 * The DOM-free parts of the heat views: the colour scale every heat view shares, the CPU heatmap
 * painter (the picture the WebGL renderer draws too), the Sankey layout and its hit test, and the
 * 3D map's projection and picking.
 */
import { describe, expect, it } from 'vitest';
import { routingFlow, type FlowRecord } from '../../src/analysis';
import { cellCentre, explodedSpacing, pickCell, type Stack } from '../../panels/views/activity-gl';
import { blankColour, legendTicks, makeScale, matrixRamp, position, ramp, rampIndex } from '../../panels/views/colour-scale';
import { bandY, hitFlow, layoutFlow } from '../../panels/views/flow-layout';
import { paintHeat } from '../../panels/views/heat-paint';
import { invert, lookAt, multiply, orbitEye, orthographic, perspective, project, unprojectRay } from '../../panels/views/mat4';

describe('colour scale', () => {
  it('places shares on the linear, log and fair-share scales', () => {
    const shares = [0, 0.01, 0.1, 0.4];
    const lin = makeScale('linear', 'light', shares);
    expect(lin.hi).toBe(0.4);
    expect(position(lin, 0.1, 8)).toBeCloseTo(0.25);
    expect(position(lin, 0, 8)).toBe(0);
    const log = makeScale('log', 'light', shares);
    expect([log.lo, log.hi]).toEqual([0.01, 0.4]);
    expect(position(log, 0.1, 8)).toBeCloseTo(1 / Math.log10(40));
    expect(position(log, 0, 8)).toBe(0);
    const fair = makeScale('fair', 'dark', shares);
    expect(position(fair, 1 / 8, 8)).toBeCloseTo(0.5); // exactly the fair share: the middle
    expect(position(fair, 1, 8)).toBe(1); // 8x
    expect(position(fair, 1 / 64, 8)).toBe(0); // 1/8x
    expect(position(fair, 0.25, 8)).toBeCloseTo(4 / 6); // 2x
    expect(rampIndex(fair, 1 / 8, 8)).toBe(128);
    // The log scale spans at most 4 decades below its top.
    expect(makeScale('log', 'light', [1e-9, 0.5]).lo).toBeCloseTo(0.5e-4);
    expect(legendTicks(fair).map((t) => t.label)).toEqual(['1/8×', '1/4×', '1/2×', '1×', '2×', '4×', '8×']);
    expect(legendTicks(lin).at(-1)!.label).toBe('40%');
  });

  it('has a ramp per theme, diverging for the fair-share scale', () => {
    const light = ramp('light', 'linear');
    expect(Array.from(light.subarray(0, 3))).toEqual([255, 255, 255]); // white background at 0
    const dark = ramp('dark', 'linear');
    expect(Array.from(dark.subarray(0, 3))).toEqual([32, 33, 36]); // the dark background at 0
    const div = ramp('light', 'fair');
    expect(Array.from(div.subarray(0, 3))).toEqual([26, 115, 232]);
    expect(Array.from(div.subarray(255 * 4, 255 * 4 + 3))).toEqual([217, 48, 37]);
  });

  it('has a matrix ramp per theme from the background to the accent, straight between them', () => {
    const light = matrixRamp('light');
    expect(Array.from(light.subarray(0, 4))).toEqual([255, 255, 255, 255]);
    expect(Array.from(light.subarray(255 * 4, 255 * 4 + 4))).toEqual([26, 115, 232, 255]);
    expect(Array.from(light.subarray(51 * 4, 51 * 4 + 3))).toEqual([209, 227, 250]); // 1/5 of the way: 255 - 229/5, 255 - 140/5, 255 - 23/5
    const dark = matrixRamp('dark');
    expect(Array.from(dark.subarray(0, 3))).toEqual([32, 33, 36]);
    expect(Array.from(dark.subarray(255 * 4, 255 * 4 + 3))).toEqual([138, 180, 248]);
  });
});

describe('paintHeat', () => {
  it('paints each cell with its ramp colour, blanks past a row’s width, and keeps the hottest column per pixel', () => {
    const values = new Float32Array([0.5, 0.25, 0.25, NaN, 0, 1, NaN, NaN]); // 2 rows x 4 cols
    const scale = makeScale('linear', 'light', values);
    const out = new Uint8Array(2 * 4 * 4);
    paintHeat(out, values, 2, 4, 4, [3, 2], null, scale);
    const px = (r: number, c: number) => Array.from(out.subarray((r * 4 + c) * 4, (r * 4 + c) * 4 + 3));
    const colour = (i: number) => Array.from(ramp('light', 'linear').subarray(i * 4, i * 4 + 3));
    expect(px(0, 0)).toEqual(colour(128)); // 0.5 of max 1
    expect(px(0, 1)).toEqual(colour(64));
    expect(px(0, 3)).toEqual(blankColour('light'));
    expect(px(1, 1)).toEqual(colour(255));
    expect(px(1, 0)).toEqual(colour(0));
    // Two columns per pixel: each pixel shows the hotter of its two.
    const half = new Uint8Array(2 * 2 * 4);
    paintHeat(half, values, 2, 4, 2, [3, 2], null, scale);
    expect(Array.from(half.subarray(0, 3))).toEqual(colour(128));
    expect(Array.from(half.subarray(4, 7))).toEqual(colour(64)); // 0.25 and NaN: the 0.25
    expect(Array.from(half.subarray(12, 15))).toEqual(blankColour('light')); // both blank
    // A column order moves columns, not values.
    const ordered = new Uint8Array(2 * 4 * 4);
    paintHeat(ordered, values, 2, 4, 4, [3, 2], [1, 0, 2, 3], scale);
    expect(Array.from(ordered.subarray(0, 3))).toEqual(colour(64));
  });
});

describe('Sankey layout', () => {
  const records: FlowRecord[] = [
    { pass: 1, layers: [{ layer: 0, k: 1, ids: [0, 0, 0, 1] }, { layer: 1, k: 1, ids: [1, 1, 0, 0] }] },
  ];
  const flow = routingFlow(records, [0, 1], [2, 2]);
  it('sizes nodes by tokens on one scale and stacks bands in them', () => {
    const l = layoutFlow(flow, 400, 212);
    const n = (c: number, e: number) => l.byExpert[c]![e]!;
    expect(n(0, 0).h / n(0, 1).h).toBeCloseTo(3); // 3 tokens vs 1
    expect(n(1, 0).h).toBeCloseTo(n(1, 1).h);
    expect(n(0, 0).h + n(0, 1).h).toBeCloseTo(4 * l.scale);
    // Expert 0 of layer 0 sends 2 tokens to expert 1 and 1 to expert 0: stacked in the targets' order.
    const band = (from: number, to: number) => Array.from({ length: l.bands.n }, (_, i) => i).find((i) => l.bands.from[i] === from && l.bands.to[i] === to)!;
    const toE0 = band(0, 0);
    const toE1 = band(0, 1);
    expect(l.bands.y0[toE0]).toBeCloseTo(n(0, 0).y);
    expect(l.bands.y0[toE1]).toBeCloseTo(n(0, 0).y + l.bands.w[toE0]!);
    expect(l.bands.w[toE1]).toBeCloseTo(2 * l.scale);
    // Arriving at expert 0 of layer 1: from expert 0 first, then from expert 1.
    expect(l.bands.y1[toE0]).toBeCloseTo(n(1, 0).y);
    expect(l.bands.y1[band(1, 0)]).toBeCloseTo(n(1, 0).y + l.bands.w[toE0]!);
    // Ordered by flow, the busier expert's node comes first.
    expect(layoutFlow(flow, 400, 212, 'flow').byExpert[0]![0]!.y).toBeLessThan(layoutFlow(flow, 400, 212, 'flow').byExpert[0]![1]!.y);
  });
  it('finds the node or band under a point, on the curve it is drawn along', () => {
    const l = layoutFlow(flow, 400, 212);
    const node = l.byExpert[1]![1]!;
    expect(hitFlow(l, node.x + 2, node.y + node.h / 2)).toEqual({ node });
    const b = Array.from({ length: l.bands.n }, (_, i) => i).find((i) => l.bands.from[i] === 1)!;
    const x = (l.bands.x0[b]! + l.bands.x1[b]!) / 2;
    const hit = hitFlow(l, x, bandY(l.bands, b, x) + l.bands.w[b]! / 2);
    expect(hit && 'band' in hit ? [l.bands.from[hit.band], l.bands.to[hit.band]] : null).toEqual([1, 0]);
    expect(hitFlow(l, 1, 1)).toBeNull();
  });
});

describe('3D map picking', () => {
  it('projects a cell centre and picks the same cell back from the ray through it', () => {
    // Spaced for the camera angle: no plane hides another, so every cell is picked back.
    const stack: Stack = { layers: [2, 3, 4, 5], widths: [8, 8, 8, 4, 8, 8], maxWidth: 8, spacing: explodedSpacing(-0.45, 0.5), count: 10 };
    const m = multiply(orthographic(2.4, 1.6, 0.1, 60), lookAt(orbitEye(-0.45, 0.5, 20), [0, 0, 0]));
    const inv = invert(m)!;
    const cells: Array<[number, number, number]> = [];
    for (let plane = 0; plane < 4; plane++) for (let expert = 0; expert < stack.widths[stack.layers[plane]!]!; expert++) for (let bucket = 0; bucket < 10; bucket++) cells.push([plane, expert, bucket]);
    for (const [plane, expert, bucket] of cells) {
      const p = project(m, cellCentre(stack, plane, expert, bucket), 600, 400)!;
      const ray = unprojectRay(inv, p[0], p[1], 600, 400);
      expect(pickCell(stack, ray.origin, ray.dir)).toEqual({ plane, expert, bucket });
    }
    // Past the narrow layer's 4 experts there is no cell of that plane.
    const past = project(m, cellCentre(stack, 1, 6, 5), 600, 400)!;
    const ray = unprojectRay(inv, past[0], past[1], 600, 400);
    expect(pickCell(stack, ray.origin, ray.dir)?.plane ?? -1).not.toBe(1);
    // In perspective, too, the nearest plane along the ray wins.
    const persp = multiply(perspective(0.6, 1.5, 0.05, 100), lookAt(orbitEye(0, 1.2, 6), [0, 0, 0]));
    const pp = project(persp, cellCentre(stack, 0, 4, 5), 600, 400)!;
    const pray = unprojectRay(invert(persp)!, pp[0], pp[1], 600, 400);
    expect(pickCell(stack, pray.origin, pray.dir)).toEqual({ plane: 0, expert: 4, bucket: 5 });
  });
});

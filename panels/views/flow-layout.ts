/**
 * Where the Flow view draws things: a Sankey layout of a RoutingFlow (one column per layer, one
 * node per expert with flow, one band per transition), and what lies under a point. DOM-free, so
 * the drawing and the hover readout use the same geometry and unit tests can check it.
 *
 * Node heights are proportional to token mass on one scale for every column. Bands leave a node
 * stacked in the order of their target nodes and arrive stacked in the order of their sources,
 * as in any Sankey diagram. Band centre lines follow a smoothstep from one column to the next
 * (bandY), which both the drawing and the hit test use.
 *
 * Bands are kept in typed arrays and ordered by sorting packed numeric keys: a pair can hold
 * thousands of transitions (512 x 512 experts), laid out at every analysis on the main thread.
 */
import type { RoutingFlow } from '../../src/analysis';

export type NodeOrder = 'expert' | 'flow';

export interface FlowNode {
  column: number;
  layer: number;
  expert: number;
  mass: number;
  x: number;
  y: number;
  h: number;
}

/** Band i of a layout: pair[i], from[i] -> to[i], weight[i] tokens, top edge y0[i] at x0[i] to y1[i] at x1[i], w[i] px thick. */
export interface FlowBands {
  n: number;
  pair: Int32Array;
  from: Int32Array;
  to: Int32Array;
  weight: Float64Array;
  x0: Float32Array;
  y0: Float32Array;
  x1: Float32Array;
  y1: Float32Array;
  w: Float32Array;
}

export interface FlowLayout {
  nodes: FlowNode[];
  /** Per column: node of each expert (undefined: no flow). */
  byExpert: Array<Array<FlowNode | undefined>>;
  bands: FlowBands;
  /** px per token. */
  scale: number;
  nodeWidth: number;
}

export const NODE_WIDTH = 10;
const PAD = 6;
/** Packed sort keys: position key x 2^22 + band index (fewer than 2^22 bands per pair). */
const INDEX_BITS = 2 ** 22;

export function layoutFlow(flow: RoutingFlow, width: number, height: number, order: NodeOrder = 'expert'): FlowLayout {
  const C = flow.layers.length;
  const usable = Math.max(10, height - 2 * PAD);
  const columns = flow.nodes.map((mass) => {
    const experts: number[] = [];
    for (let e = 0; e < mass.length; e++) if (mass[e]! > 0) experts.push(e);
    if (order === 'flow') experts.sort((a, b) => mass[b]! - mass[a]! || a - b);
    return experts;
  });
  // Gaps between nodes take at most a fifth of the height; the rest is shared by mass on one scale.
  const gapOf = (n: number) => (n > 1 ? Math.min(3, (usable * 0.2) / (n - 1)) : 0);
  let scale = Infinity;
  flow.nodes.forEach((mass, c) => {
    let total = 0;
    for (const e of columns[c]!) total += mass[e]!;
    if (total > 0) scale = Math.min(scale, (usable - gapOf(columns[c]!.length) * (columns[c]!.length - 1)) / total);
  });
  if (!Number.isFinite(scale)) scale = 0;
  const xOf = (c: number) => (C > 1 ? PAD + (c * (width - 2 * PAD - NODE_WIDTH)) / (C - 1) : PAD);
  const nodes: FlowNode[] = [];
  const byExpert: Array<Array<FlowNode | undefined>> = [];
  // Position of each expert's node in its column (-1: none), for the band order.
  const rank: Int32Array[] = [];
  columns.forEach((experts, c) => {
    const list: Array<FlowNode | undefined> = new Array(flow.nodes[c]!.length);
    const r = new Int32Array(flow.nodes[c]!.length).fill(-1);
    const gap = gapOf(experts.length);
    let y = PAD;
    experts.forEach((e, i) => {
      const node: FlowNode = { column: c, layer: flow.layers[c]!, expert: e, mass: flow.nodes[c]![e]!, x: xOf(c), y, h: flow.nodes[c]![e]! * scale };
      nodes.push(node);
      list[e] = node;
      r[e] = i;
      y += node.h + gap;
    });
    byExpert.push(list);
    rank.push(r);
  });

  let total = 0;
  for (const p of flow.pairs) total += p.src.length;
  const bands: FlowBands = {
    n: 0, pair: new Int32Array(total), from: new Int32Array(total), to: new Int32Array(total), weight: new Float64Array(total),
    x0: new Float32Array(total), y0: new Float32Array(total), x1: new Float32Array(total), y1: new Float32Array(total), w: new Float32Array(total),
  };
  flow.pairs.forEach((pair, p) => {
    const rs = rank[p]!;
    const rd = rank[p + 1]!;
    const E = rd.length;
    const src = byExpert[p]!;
    const dst = byExpert[p + 1]!;
    const m = pair.src.length;
    // Leaving a node: in the order of the targets' positions; arriving: in the order of the sources'.
    const leave = new Float64Array(m);
    const arrive = new Float64Array(m);
    let k = 0;
    for (let i = 0; i < m; i++) {
      const a = rs[pair.src[i]!]!;
      const b = rd[pair.dst[i]!]!;
      if (a < 0 || b < 0) continue;
      leave[k] = (a * E + b) * INDEX_BITS + i;
      arrive[k] = (b * rs.length + a) * INDEX_BITS + i;
      k++;
    }
    const out = leave.subarray(0, k).sort();
    const inn = arrive.subarray(0, k).sort();
    const y0 = new Float32Array(m);
    let node = -1;
    let off = 0;
    for (let j = 0; j < k; j++) {
      const i = out[j]! % INDEX_BITS;
      const s = pair.src[i]!;
      if (s !== node) {
        node = s;
        off = 0;
      }
      y0[i] = src[s]!.y + off;
      off += pair.weight[i]! * scale;
    }
    node = -1;
    off = 0;
    for (let j = 0; j < k; j++) {
      const i = inn[j]! % INDEX_BITS;
      const d = pair.dst[i]!;
      if (d !== node) {
        node = d;
        off = 0;
      }
      const b = bands.n++;
      bands.pair[b] = p;
      bands.from[b] = pair.src[i]!;
      bands.to[b] = d;
      bands.weight[b] = pair.weight[i]!;
      bands.x0[b] = xOf(p) + NODE_WIDTH;
      bands.y0[b] = y0[i]!;
      bands.x1[b] = xOf(p + 1);
      bands.y1[b] = dst[d]!.y + off;
      bands.w[b] = pair.weight[i]! * scale;
      off += pair.weight[i]! * scale;
    }
  });
  return { nodes, byExpert, bands, scale, nodeWidth: NODE_WIDTH };
}

/** Top edge of band b at x (between its ends): a smoothstep from y0 to y1. */
export function bandY(bands: FlowBands, b: number, x: number): number {
  const u = Math.max(0, Math.min(1, (x - bands.x0[b]!) / (bands.x1[b]! - bands.x0[b]!)));
  return bands.y0[b]! + (bands.y1[b]! - bands.y0[b]!) * u * u * (3 - 2 * u);
}

/** What lies under (x, y): a node, else the thinnest band (the most specific) covering the point, else null. */
export function hitFlow(layout: FlowLayout, x: number, y: number): { node: FlowNode } | { band: number } | null {
  for (const n of layout.nodes) {
    if (x >= n.x - 2 && x <= n.x + layout.nodeWidth + 2 && y >= n.y - 1 && y <= n.y + Math.max(2, n.h) + 1) return { node: n };
  }
  const b = layout.bands;
  let best = -1;
  for (let i = 0; i < b.n; i++) {
    if (x < b.x0[i]! || x > b.x1[i]!) continue;
    const top = bandY(b, i, x);
    if (y >= top - 1 && y <= top + Math.max(1, b.w[i]!) + 1 && (best < 0 || b.w[i]! < b.w[best]!)) best = i;
  }
  return best >= 0 ? { band: best } : null;
}

/**
 * Where the Flow view draws things: a Sankey layout of a RoutingFlow (one column per layer, one
 * node per expert with flow, one band per transition), and what lies under a point. DOM-free, so
 * the drawing and the hover readout use the same geometry and unit tests can check it.
 *
 * Node heights are proportional to token mass on one scale for every column. Bands leave a node
 * stacked in the order of their target nodes and arrive stacked in the order of their sources,
 * as in any Sankey diagram. Band centre lines follow a smoothstep from one column to the next
 * (bandY), which both the drawing and the hit test use.
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

export interface FlowBand {
  pair: number;
  from: number;
  to: number;
  weight: number;
  x0: number;
  /** Top of the band at its source and at its target. */
  y0: number;
  x1: number;
  y1: number;
  /** Thickness in px. */
  w: number;
}

export interface FlowLayout {
  nodes: FlowNode[];
  /** Per column: expert -> node. */
  byExpert: Array<Map<number, FlowNode>>;
  bands: FlowBand[];
  /** px per token. */
  scale: number;
  nodeWidth: number;
}

export const NODE_WIDTH = 10;
const PAD = 6;

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
  const byExpert: Array<Map<number, FlowNode>> = [];
  columns.forEach((experts, c) => {
    const map = new Map<number, FlowNode>();
    const gap = gapOf(experts.length);
    let y = PAD;
    for (const e of experts) {
      const node: FlowNode = { column: c, layer: flow.layers[c]!, expert: e, mass: flow.nodes[c]![e]!, x: xOf(c), y, h: flow.nodes[c]![e]! * scale };
      nodes.push(node);
      map.set(e, node);
      y += node.h + gap;
    }
    byExpert.push(map);
  });
  const bands: FlowBand[] = [];
  flow.pairs.forEach((pair, p) => {
    const src = byExpert[p]!;
    const dst = byExpert[p + 1]!;
    const idx = Array.from(pair.weight.keys()).filter((i) => src.has(pair.src[i]!) && dst.has(pair.dst[i]!));
    // Leaving a node: in the order of the targets' positions; arriving: in the order of the sources'.
    const outOffset = new Map<number, number>();
    const inOffset = new Map<number, number>();
    const y0 = new Map<number, number>();
    for (const i of [...idx].sort((a, b) => src.get(pair.src[a]!)!.y - src.get(pair.src[b]!)!.y || dst.get(pair.dst[a]!)!.y - dst.get(pair.dst[b]!)!.y)) {
      const s = pair.src[i]!;
      const off = outOffset.get(s) ?? 0;
      y0.set(i, src.get(s)!.y + off);
      outOffset.set(s, off + pair.weight[i]! * scale);
    }
    for (const i of [...idx].sort((a, b) => dst.get(pair.dst[a]!)!.y - dst.get(pair.dst[b]!)!.y || src.get(pair.src[a]!)!.y - src.get(pair.src[b]!)!.y)) {
      const d = pair.dst[i]!;
      const off = inOffset.get(d) ?? 0;
      bands.push({
        pair: p, from: pair.src[i]!, to: d, weight: pair.weight[i]!, x0: xOf(p) + NODE_WIDTH, y0: y0.get(i)!, x1: xOf(p + 1),
        y1: dst.get(d)!.y + off, w: pair.weight[i]! * scale,
      });
      inOffset.set(d, off + pair.weight[i]! * scale);
    }
  });
  return { nodes, byExpert, bands, scale, nodeWidth: NODE_WIDTH };
}

/** Top edge of a band at x (between its ends): a smoothstep from y0 to y1. */
export function bandY(b: Pick<FlowBand, 'x0' | 'x1' | 'y0' | 'y1'>, x: number): number {
  const u = Math.max(0, Math.min(1, (x - b.x0) / (b.x1 - b.x0)));
  return b.y0 + (b.y1 - b.y0) * u * u * (3 - 2 * u);
}

/** What lies under (x, y): a node, else the thinnest band (the most specific) covering the point, else null. */
export function hitFlow(layout: FlowLayout, x: number, y: number): { node: FlowNode } | { band: FlowBand } | null {
  for (const n of layout.nodes) {
    if (x >= n.x - 2 && x <= n.x + layout.nodeWidth + 2 && y >= n.y - 1 && y <= n.y + Math.max(2, n.h) + 1) return { node: n };
  }
  let best: FlowBand | null = null;
  for (const b of layout.bands) {
    if (x < b.x0 || x > b.x1) continue;
    const top = bandY(b, x);
    if (y >= top - 1 && y <= top + Math.max(1, b.w) + 1 && (!best || b.w < best.w)) best = b;
  }
  return best ? { band: best } : null;
}

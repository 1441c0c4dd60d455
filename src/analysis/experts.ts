/**
 * What the experts themselves look like, from their weights (the probe's expert-params answer):
 * findings, and the similarity graph's clusters and layout.
 *
 * - Near-duplicate experts: the cosine similarity of two experts' flattened weights is at least
 *   `duplicateCosine` (0.99). Independently initialised experts sit near 0; copies (an upcycled
 *   model whose experts never diverged, a bad checkpoint merge) sit at 1. Two such experts
 *   compute the same function, so the router's choice between them is wasted capacity.
 * - Dead by weights: an expert's router row (the projection that scores it) has collapsed to near
 *   zero, its norm at most `collapsedRouterRow` (1 %) of the layer's median row norm. Its score
 *   is then the same for every token (its bias, or 0), so the router no longer tells tokens apart
 *   for it: it is chosen for all of them or, usually, for none.
 */

export const PARAMETER_THRESHOLDS = Object.freeze({ duplicateCosine: 0.99, collapsedRouterRow: 0.01 });
export type ParameterThresholds = { duplicateCosine: number; collapsedRouterRow: number };

/** One layer of the probe's answer, decoded (NaN where a value does not exist). */
export interface ExpertParameterLayer {
  layer: number;
  experts: number;
  /** Experts with weights of their own; the rest are zero-compute. */
  computeExperts: number;
  /** [E] router row norms, or null when no router weight was found. */
  routerNorms: Float64Array | null;
  /** [E x E] cosine of router rows. */
  routerCosine: Float32Array | null;
  routerBias: Float64Array | null;
  routerBiasName: string;
  /** The router weight's parameter name, as the probe found it ('' when unknown). */
  routerName?: string;
  /** [E] norm of each expert's weights. */
  expertNorms: Float64Array | null;
  /** [groups x E] norm of each parameter group of each expert. */
  groupNorms: Float64Array | null;
  groups: string[];
  /** [E x E] cosine of the experts' flattened weights. */
  weightCosine: Float32Array | null;
  layout: string;
  params: number;
  seconds: number;
  peakBytes: number;
  notes: string[];
}

export type ParameterFindingKind = 'near_duplicate' | 'dead_by_weights';

export interface ParameterFinding {
  kind: ParameterFindingKind;
  layer: number;
  experts: number[];
  /** The lowest pairwise cosine inside the group (near_duplicate) or the smallest row norm's share of the median (dead_by_weights). */
  value: number;
  threshold: number;
  message: string;
}

function median(values: number[]): number {
  const v = values.filter(Number.isFinite).sort((a, b) => a - b);
  if (!v.length) return NaN;
  const mid = v.length >> 1;
  return v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
}

function list(ids: number[]): string {
  return ids.length <= 1 ? String(ids[0]) : `${ids.slice(0, -1).join(', ')} and ${ids[ids.length - 1]}`;
}

/** Groups of nodes joined by pairs at or above `threshold` (union-find), each sorted, in order of their first node. */
export function linkedGroups(matrix: ArrayLike<number>, n: number, threshold: number): number[][] {
  const parent = Array.from({ length: n }, (_, i) => i);
  const find = (i: number): number => (parent[i] === i ? i : (parent[i] = find(parent[i]!)));
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) {
      const v = matrix[i * n + j]!;
      if (Number.isFinite(v) && v >= threshold) parent[find(j)] = find(i);
    }
  }
  const groups = new Map<number, number[]>();
  for (let i = 0; i < n; i++) {
    const root = find(i);
    const g = groups.get(root);
    if (g) g.push(i);
    else groups.set(root, [i]);
  }
  return [...groups.values()].sort((a, b) => a[0]! - b[0]!);
}

export function parameterFindings(
  layers: readonly ExpertParameterLayer[], label: (layer: number) => string, th: ParameterThresholds = PARAMETER_THRESHOLDS,
): ParameterFinding[] {
  const out: ParameterFinding[] = [];
  for (const p of layers) {
    const name = label(p.layer);
    if (p.weightCosine) {
      const E = p.experts;
      for (const group of linkedGroups(p.weightCosine, E, th.duplicateCosine)) {
        if (group.length < 2) continue;
        let lowest = Infinity;
        for (const i of group) for (const j of group) if (i < j) lowest = Math.min(lowest, p.weightCosine[i * E + j]!);
        // linked through a chain, some pairs of a group may sit below the threshold: say the lowest
        out.push({
          kind: 'near_duplicate', layer: p.layer, experts: group, value: lowest, threshold: th.duplicateCosine,
          message: `${name}: experts ${list(group)} are near-duplicates: the cosine similarity of their weights is ${group.length === 2 ? '' : 'at least '}${lowest.toFixed(4)}`,
        });
      }
    }
    if (p.routerNorms) {
      const norms = Array.from(p.routerNorms);
      const mid = median(norms);
      if (mid === 0) {
        out.push({
          kind: 'dead_by_weights', layer: p.layer, experts: norms.map((_, i) => i), value: 0, threshold: th.collapsedRouterRow,
          message: `${name}: every router row is zero: the router scores every expert the same for every token`,
        });
        continue;
      }
      const dead = norms.map((n, i) => [n, i] as const).filter(([n]) => Number.isFinite(n) && n <= th.collapsedRouterRow * mid);
      if (dead.length) {
        const smallest = Math.min(...dead.map(([n]) => n));
        out.push({
          kind: 'dead_by_weights', layer: p.layer, experts: dead.map(([, i]) => i), value: smallest / mid, threshold: th.collapsedRouterRow,
          message: `${name}: the router row of expert${dead.length > 1 ? 's' : ''} ${list(dead.map(([, i]) => i))} ha${dead.length > 1 ? 've' : 's'} collapsed to near zero ` +
            `(norm ${smallest.toPrecision(2)} against the layer's median ${mid.toPrecision(3)}): its score no longer depends on the token`,
        });
      }
    }
  }
  return out;
}

/**
 * The display threshold that keeps about `edgesPerNode` x n of the strongest pairs (the similarity of
 * the k-th strongest pair), so that the graph shows the structure whatever the scale of the values;
 * never below `floor` (0: an edge always means alike, never merely less opposed).
 */
export function strongestPairsThreshold(matrix: ArrayLike<number>, n: number, edgesPerNode = 1.5, floor = 0): number {
  const values: number[] = [];
  for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) if (Number.isFinite(matrix[i * n + j]!)) values.push(matrix[i * n + j]!);
  if (!values.length) return 1;
  values.sort((a, b) => b - a);
  return Math.max(floor, values[Math.min(values.length - 1, Math.max(0, Math.round(edgesPerNode * n) - 1))]!);
}

export interface GraphEdge {
  a: number;
  b: number;
  value: number;
}

/** Pairs at or above the threshold, strongest first, at most `max`. */
export function similarityEdges(matrix: ArrayLike<number>, n: number, threshold: number, max = 4 * n): GraphEdge[] {
  const edges: GraphEdge[] = [];
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) {
      const v = matrix[i * n + j]!;
      if (Number.isFinite(v) && v >= threshold) edges.push({ a: i, b: j, value: v });
    }
  }
  return edges.sort((x, y) => y.value - x.value || x.a - y.a || x.b - y.b).slice(0, max);
}

export interface GraphNode {
  /** Position in [0, 1] x [0, 1]. */
  x: number;
  y: number;
  /** Index of the node's cluster: 0 for the largest (ties: the one with the lowest node). */
  cluster: number;
}

/**
 * A layout that keeps clusters together: the clusters (nodes linked through edges at or above the
 * threshold) each get a disc sized by the square root of their members, packed in rows from the
 * largest down; inside its disc a cluster is laid out by a few rounds of springs along its edges
 * (pulling harder the more similar) against a repulsion between its nodes. Nodes never leave their
 * cluster's disc and discs never overlap, so clusters never mix. Deterministic: the same matrix and
 * threshold give the same picture.
 */
export function similarityLayout(matrix: ArrayLike<number>, n: number, threshold: number, iterations = 60): GraphNode[] {
  const groups = linkedGroups(matrix, n, threshold).sort((a, b) => b.length - a.length || a[0]! - b[0]!);
  const nodes: GraphNode[] = new Array(n);
  // Shelf packing: rows of discs (diameter 2r plus a margin) no wider than a square of their total area.
  const radii = groups.map((g) => Math.sqrt(g.length));
  const margin = 0.6;
  const width = Math.max(2 * radii[0]! + margin, Math.sqrt(radii.reduce((s, r) => s + (2 * r + margin) ** 2, 0)) * 1.1);
  const centers: Array<[number, number]> = [];
  let x = 0;
  let y = 0;
  let rowHeight = 0;
  for (const r of radii) {
    const d = 2 * r + margin;
    if (x > 0 && x + d > width) {
      y += rowHeight;
      x = 0;
      rowHeight = 0;
    }
    centers.push([x + d / 2, y + d / 2]);
    x += d;
    rowHeight = Math.max(rowHeight, d);
  }
  const used = [Math.max(...centers.map(([cx], c) => cx + radii[c]! + margin / 2)), y + rowHeight];
  const extent = Math.max(used[0]!, used[1]!);
  // centred in the unit square, aspect kept
  const offset = [(extent - used[0]!) / 2, (extent - used[1]!) / 2];
  groups.forEach((group, c) => {
    const r = radii[c]!;
    const [cx, cy] = centers[c]!;
    const inner = group.length > 1 ? r * 0.75 : 0;
    const pos = group.map((_, k) => [cx + inner * Math.cos((2 * Math.PI * k) / group.length), cy + inner * Math.sin((2 * Math.PI * k) / group.length)]);
    for (let it = 0; it < iterations && group.length > 2; it++) {
      const step = 0.1 * r * (1 - it / iterations);
      const force = pos.map(() => [0, 0]);
      for (let a = 0; a < group.length; a++) {
        for (let b = a + 1; b < group.length; b++) {
          const dx = pos[b]![0]! - pos[a]![0]!;
          const dy = pos[b]![1]! - pos[a]![1]!;
          const d = Math.max(1e-6, Math.hypot(dx, dy));
          const sim = matrix[group[a]! * n + group[b]!]!;
          const pull = Number.isFinite(sim) && sim >= threshold ? sim * d : 0;
          const push = (r * r) / (group.length * d);
          const f = (pull - push) / d;
          force[a]![0]! += f * dx;
          force[a]![1]! += f * dy;
          force[b]![0]! -= f * dx;
          force[b]![1]! -= f * dy;
        }
      }
      for (let a = 0; a < group.length; a++) {
        const len = Math.hypot(force[a]![0]!, force[a]![1]!);
        if (len > 0) {
          pos[a]![0]! += (force[a]![0]! / len) * Math.min(step, len);
          pos[a]![1]! += (force[a]![1]! / len) * Math.min(step, len);
        }
        // stay inside the cluster's disc
        const dx = pos[a]![0]! - cx;
        const dy = pos[a]![1]! - cy;
        const d = Math.hypot(dx, dy);
        if (d > r * 0.9) {
          pos[a]![0] = cx + (dx / d) * r * 0.9;
          pos[a]![1] = cy + (dy / d) * r * 0.9;
        }
      }
    }
    group.forEach((node, k) => {
      nodes[node] = { x: (pos[k]![0]! + offset[0]!) / extent, y: (pos[k]![1]! + offset[1]!) / extent, cluster: c };
    });
  });
  return nodes;
}

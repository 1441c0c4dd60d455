/**
 * Experts as nodes, pairs at or above a similarity threshold as edges, laid out so that clusters
 * stay together (src/analysis/experts.ts similarityLayout). SVG, so it scales to a narrow dock;
 * every node is focusable (Tab) and says what it is most similar to.
 */
import { useMemo, useState } from 'preact/hooks';
import { similarityEdges, similarityLayout } from '../../src/analysis';
import { fmt } from './format';

interface Props {
  matrix: Float32Array;
  n: number;
  threshold: number;
  /** Experts to mark (router row collapsed). */
  dead: ReadonlySet<number>;
  /** What a node's readout says besides its similarities (its load, its norms). */
  describe: (expert: number) => string;
  what: string;
}

const SIZE = 100;

export function SimilarityGraph({ matrix, n, threshold, dead, describe, what }: Props) {
  const nodes = useMemo(() => similarityLayout(matrix, n, threshold), [matrix, n, threshold]);
  const edges = useMemo(() => similarityEdges(matrix, n, threshold), [matrix, n, threshold]);
  const [focus, setFocus] = useState<number | null>(null);
  const radius = Math.max(0.9, Math.min(3, 40 / Math.sqrt(n) / 4));
  const pad = 4;
  const at = (v: number) => pad + v * (SIZE - 2 * pad);
  const nearest = (e: number) => Array.from({ length: n }, (_, j) => j).filter((j) => j !== e && Number.isFinite(matrix[e * n + j]!))
    .sort((x, y) => matrix[e * n + y]! - matrix[e * n + x]!).slice(0, 3);
  const clusters = new Set(nodes.map((p) => p.cluster)).size;
  return (
    <div class="similarity-graph" data-testid="similarity-graph" data-edges={edges.length} data-clusters={clusters} data-threshold={threshold}>
      <div class="graph-readout" data-testid="graph-readout">
        {focus === null
          ? `${n} experts, ${edges.length} pairs with ${what} ≥ ${fmt(threshold, 3)}, ${clusters} cluster${clusters === 1 ? '' : 's'}. Hover or Tab to a node.`
          : `Expert ${focus}: ${describe(focus)}; most similar: ${nearest(focus).map((j) => `${j} (${fmt(matrix[focus * n + j]!, 3)})`).join(', ')}`}
      </div>
      <svg viewBox={`0 0 ${SIZE} ${SIZE}`} role="group" aria-label={`Similarity graph of ${n} experts by ${what}`}>
        {edges.map((e) => (
          <line key={`${e.a}-${e.b}`} data-testid="graph-edge" data-a={e.a} data-b={e.b} x1={at(nodes[e.a]!.x)} y1={at(nodes[e.a]!.y)} x2={at(nodes[e.b]!.x)} y2={at(nodes[e.b]!.y)}
            stroke-width={0.15 + 0.6 * Math.max(0, Math.min(1, e.value))} stroke-opacity={0.25 + 0.6 * Math.max(0, Math.min(1, e.value))} />
        ))}
        {nodes.map((p, e) => (
          <g key={e} class={`node ${dead.has(e) ? 'dead' : ''} ${focus === e ? 'selected' : ''}`} tabIndex={0} data-testid="graph-node" data-expert={e} data-cluster={p.cluster}
            aria-label={`Expert ${e}, cluster ${p.cluster + 1}`} onFocus={() => setFocus(e)} onMouseEnter={() => setFocus(e)}>
            <circle cx={at(p.x)} cy={at(p.y)} r={radius} fill={`hsl(${(210 + p.cluster * 67) % 360} 60% 55%)`} />
            {n <= 64 && <text x={at(p.x)} y={at(p.y)}>{e}</text>}
          </g>
        ))}
      </svg>
    </div>
  );
}

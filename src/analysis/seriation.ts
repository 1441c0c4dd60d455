/**
 * Orders for the columns of a heatmap (experts): by load, or by similarity, so that experts that
 * behave alike over the rows (layers, time buckets, tokens) sit side by side.
 *
 * Input: a rows x cols row-major matrix `m` (m[r * cols + c]); NaN cells (a layer with fewer
 * experts than the widest) count as 0. Output: a permutation of 0..cols-1, the column shown at
 * each position.
 */

/** Columns by their sum over the rows, largest first; ties keep the lower index first. */
export function orderByLoad(m: ArrayLike<number>, rows: number, cols: number): number[] {
  const sum = new Float64Array(cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const v = m[r * cols + c]!;
      if (v === v) sum[c]! += v;
    }
  }
  return Array.from({ length: cols }, (_, c) => c).sort((a, b) => sum[b]! - sum[a]! || a - b);
}

/**
 * Greedy nearest-neighbour seriation on cosine similarity: start at the column with the largest
 * norm, then repeatedly append the unplaced column most similar (cosine of the two column
 * vectors over the rows) to the last placed one; ties go to the lower index. All-zero columns
 * (similar to nothing) come last in index order. Deterministic; O(cols^2 x rows).
 */
export function orderBySimilarity(m: ArrayLike<number>, rows: number, cols: number): number[] {
  // Columns as unit vectors, column-major for the inner loop.
  const unit = new Float64Array(rows * cols);
  const norm = new Float64Array(cols);
  for (let c = 0; c < cols; c++) {
    let s = 0;
    for (let r = 0; r < rows; r++) {
      const v = m[r * cols + c]!;
      const x = v === v ? v : 0;
      unit[c * rows + r] = x;
      s += x * x;
    }
    norm[c] = Math.sqrt(s);
    if (norm[c]! > 0) for (let r = 0; r < rows; r++) unit[c * rows + r]! /= norm[c]!;
  }
  const placed = new Uint8Array(cols);
  const order: number[] = [];
  let current = -1;
  for (let c = 0; c < cols; c++) if (norm[c]! > 0 && (current < 0 || norm[c]! > norm[current]!)) current = c;
  while (current >= 0) {
    placed[current] = 1;
    order.push(current);
    let best = -1;
    let bestSim = -Infinity;
    const base = current * rows;
    for (let c = 0; c < cols; c++) {
      if (placed[c] || !(norm[c]! > 0)) continue;
      let dot = 0;
      const cb = c * rows;
      for (let r = 0; r < rows; r++) dot += unit[base + r]! * unit[cb + r]!;
      if (dot > bestSim) {
        bestSim = dot;
        best = c;
      }
    }
    current = best;
  }
  for (let c = 0; c < cols; c++) if (!placed[c]) order.push(c);
  return order;
}

/**
 * Fewer points for a line that has more of them than the screen has pixels: the timeline holds
 * 3600 points (2 minutes at 30 Hz) and every analysis carries it to the main thread, where each
 * point costs deserialization and drawing, 5 times a second, though a plot is ~1000 px wide.
 * Thinning keeps, per run of consecutive points, the one with the lowest and the one with the
 * highest `key` (so peaks and dips survive), the first and the newest point, in order.
 */
export function thinIndices(n: number, max: number, key: (i: number) => number): number[] {
  if (n <= max) return Array.from({ length: n }, (_, i) => i);
  const runs = Math.max(1, Math.floor(max / 2));
  const out: number[] = [];
  for (let r = 0; r < runs; r++) {
    const a = Math.floor((r * n) / runs);
    const b = Math.floor(((r + 1) * n) / runs);
    let lo = a;
    let hi = a;
    for (let i = a; i < b; i++) {
      const v = key(i);
      // NaN (not measured) is neither a peak nor a dip
      if (v < key(lo) || Number.isNaN(key(lo))) lo = i;
      if (v > key(hi) || Number.isNaN(key(hi))) hi = i;
    }
    if (lo === hi) out.push(lo);
    else out.push(Math.min(lo, hi), Math.max(lo, hi));
  }
  if (out[0] !== 0) out.unshift(0);
  if (out[out.length - 1] !== n - 1) out.push(n - 1);
  return out;
}

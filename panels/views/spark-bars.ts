/** The Load view's per-layer sparklines as pixel columns (DOM-free, so a unit test can check them). */

/** Bar height in pixels of each pixel column: the busiest expert among those it covers (-1: a gap between bars); h at most 127. */
export function sparkBars(counts: Float64Array, w: number, h: number): Int8Array {
  const bars = new Int8Array(w);
  const E = counts.length;
  let max = 0;
  for (const c of counts) if (c > max) max = c;
  const gaps = E * 3 <= w; // few experts: a blank column between bars
  for (let x = 0; x < w; x++) {
    const lo = Math.floor((x * E) / w);
    const hi = Math.max(lo + 1, Math.floor(((x + 1) * E) / w));
    if (gaps && Math.floor(((x + 1) * E) / w) > lo && x > 0) {
      bars[x] = -1;
      continue;
    }
    let v = 0;
    for (let e = lo; e < hi && e < E; e++) if (counts[e]! > v) v = counts[e]!;
    bars[x] = v > 0 && max > 0 ? Math.max(1, Math.round((h * v) / max)) : 0;
  }
  return bars;
}

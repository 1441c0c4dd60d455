// Small statistics shared by the benchmark scripts.

/** The q-quantile (0..1) of an ascending array, linearly interpolated; null when empty. */
export function quantile(sorted, q) {
  if (!sorted.length) return null;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

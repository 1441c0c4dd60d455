/**
 * Which experts are chosen together.
 */
import { makeScratchF64 } from './scratch';

const usedScratch = makeScratchF64();

/**
 * Co-activation matrix of one layer from its top-k choices.
 *
 * Input: `topkIds`, [N, k] row-major (a flat Int32Array as it comes off the
 * wire, or any ArrayLike<number>): the experts token t was routed to are
 * topkIds[t*k .. t*k + k). Ids outside [0, E) (e.g. -1 padding) are ignored,
 * and an id repeated within one token's row counts once.
 *
 * Output: an E x E row-major Float64Array M with
 *   M[i*E + j] = P(j | i) = #tokens whose top-k holds both i and j / #tokens whose top-k holds i.
 * Rows are conditional on the row expert, so M is NOT symmetric in general.
 * Diagonal: M[i*E + i] = 1 when expert i was used by at least one token
 * (trivially P(i | i) = 1) and 0 when it was never used; the whole row of an
 * unused expert is 0. N = 0 gives the all-zero matrix.
 *
 * Pass `out` (length >= E*E) to reuse a buffer; it is overwritten.
 * Cost O(N k^2 + E^2).
 */
export function coactivation(
  topkIds: ArrayLike<number>,
  n: number,
  k: number,
  e: number,
  out?: Float64Array,
): Float64Array {
  if (!Number.isInteger(n) || n < 0 || !Number.isInteger(k) || k < 1 || !Number.isInteger(e) || e < 1) {
    throw new RangeError(`coactivation: need whole N >= 0, k >= 1, E >= 1, got N=${n} k=${k} E=${e}`);
  }
  if (topkIds.length < n * k) throw new RangeError(`coactivation: ${topkIds.length} ids is fewer than N*k = ${n}x${k}`);
  const m = out ?? new Float64Array(e * e);
  if (m.length < e * e) throw new RangeError(`coactivation: out holds ${m.length} values, need E*E = ${e * e}`);
  m.fill(0, 0, e * e);
  const used = usedScratch(e);
  used.fill(0, 0, e);

  const valid = (id: number) => Number.isInteger(id) && id >= 0 && id < e;
  for (let t = 0; t < n; t++) {
    const base = t * k;
    for (let a = 0; a < k; a++) {
      const ia = topkIds[base + a]!;
      if (!valid(ia) || repeatsEarlier(topkIds, base, a, ia)) continue;
      used[ia]! += 1;
      for (let b = 0; b < k; b++) {
        if (b === a) continue;
        const ib = topkIds[base + b]!;
        if (ib === ia || !valid(ib) || repeatsEarlier(topkIds, base, b, ib)) continue;
        m[ia * e + ib]! += 1;
      }
    }
  }
  for (let i = 0; i < e; i++) {
    const ni = used[i]!;
    const row = i * e;
    if (ni === 0) continue; // row stays all zero, diagonal included
    const inv = 1 / ni;
    for (let j = 0; j < e; j++) m[row + j]! *= inv;
    m[row + i] = 1;
  }
  return m;
}

/** Whether `id` already occurs in slots [base, base + slot) of the same row. */
function repeatsEarlier(ids: ArrayLike<number>, base: number, slot: number, id: number): boolean {
  for (let s = 0; s < slot; s++) if (ids[base + s] === id) return true;
  return false;
}

/**
 * The heatmap drawn by the CPU into RGBA pixels: the same picture heat-gl.ts draws with the GPU.
 * One pixel per row; `drawn` pixel columns for `cols` columns, each pixel column showing the
 * hottest of the columns it covers (so no expert hides between pixels when there are more
 * experts than pixels), blank only when every one of them is blank (NaN). DOM-free.
 */
import { blankColour, FAIR_RANGE, ramp, type ColourScale } from './colour-scale';

export function paintHeat(
  out: Uint8ClampedArray | Uint8Array, values: ArrayLike<number>, rows: number, cols: number, drawn: number,
  rowWidths: ArrayLike<number>, order: readonly number[] | null, scale: ColourScale,
): void {
  const colours = ramp(scale.theme, scale.mode);
  const blank = blankColour(scale.theme);
  // position() of colour-scale.ts, unrolled per mode for the inner loop.
  const mode = scale.mode;
  const invHi = 1 / scale.hi;
  const logLo = Math.log2(scale.lo);
  const logSpan = Math.log2(scale.hi) - logLo;
  for (let r = 0; r < rows; r++) {
    const w = rowWidths[r]!;
    const logW = Math.log2(w);
    const rowBase = r * cols;
    for (let x = 0; x < drawn; x++) {
      const c0 = Math.floor((x * cols) / drawn);
      const c1 = Math.max(c0 + 1, Math.floor(((x + 1) * cols) / drawn));
      let best = -1;
      for (let c = c0; c < c1; c++) {
        const v = values[rowBase + (order ? order[c]! : c)]!;
        if (v !== v) continue; // NaN: no such expert in this row
        let t = 0;
        if (v > 0) {
          t = mode === 'linear' ? v * invHi : mode === 'log' ? (Math.log2(v) - logLo) / logSpan : (Math.log2(v) + logW + FAIR_RANGE) / (2 * FAIR_RANGE);
          t = t < 0 ? 0 : t > 1 ? 1 : t;
        }
        if (t > best) best = t;
      }
      const p = (r * drawn + x) * 4;
      if (best < 0) {
        out[p] = blank[0];
        out[p + 1] = blank[1];
        out[p + 2] = blank[2];
      } else {
        const i = Math.round(best * 255) * 4;
        out[p] = colours[i]!;
        out[p + 1] = colours[i + 1]!;
        out[p + 2] = colours[i + 2]!;
      }
      out[p + 3] = 255;
    }
  }
}

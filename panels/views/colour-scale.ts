/**
 * The colour scale of every heat view (Heatmap, 3D activation map, window diff): how an expert's
 * share of its layer becomes a colour, in one place so that the canvas, the WebGL shaders and the
 * legend agree. DOM-free (unit-tested).
 *
 * Values are shares s in [0, 1] of a layer's assignments (count / layer total), with the layer's
 * width E (its number of experts). Modes:
 *  - linear: t = s / max, max = the largest share shown;
 *  - log:    t = (log10 s - log10 lo) / (log10 max - log10 lo), lo = the smallest non-zero share
 *            shown (at least max / 10^4); s = 0 is drawn as the bottom colour;
 *  - fair:   the share against the layer's fair share 1/E: r = s E, t = (log2 r + 3) / 6, so 1/8x
 *            and less is the bottom, 1x (even routing) the middle, 8x and more the top, on a
 *            diverging ramp; s = 0 is the bottom.
 * t is then looked up in a 256-entry ramp that follows the DevTools theme.
 */
export type ScaleMode = 'linear' | 'log' | 'fair';
export const SCALE_MODES: Array<{ id: ScaleMode; label: string }> = [
  { id: 'linear', label: 'share (linear)' },
  { id: 'log', label: 'share (log)' },
  { id: 'fair', label: '× fair share' },
];
export type Theme = 'light' | 'dark';

/** log2 of the fair-share ratio at the top of the 'fair' scale (8x). */
export const FAIR_RANGE = 3;
/** The 'log' scale spans at most this many decades. */
const LOG_DECADES = 4;

type RGB = [number, number, number];
/** matrix: background to accent, for the values in [0, 1] of MatrixCanvas (co-activation, similarity, ranks). */
const STOPS: Record<Theme, { sequential: RGB[]; diverging: RGB[]; matrix: RGB[]; blank: RGB }> = {
  light: {
    sequential: [[255, 255, 255], [138, 180, 248], [26, 115, 232], [13, 60, 130]],
    diverging: [[26, 115, 232], [255, 255, 255], [217, 48, 37]],
    matrix: [[255, 255, 255], [26, 115, 232]],
    blank: [218, 220, 224],
  },
  dark: {
    sequential: [[32, 33, 36], [25, 70, 140], [138, 180, 248], [232, 240, 254]],
    diverging: [[138, 180, 248], [32, 33, 36], [242, 139, 130]],
    matrix: [[32, 33, 36], [138, 180, 248]],
    blank: [60, 64, 67],
  },
};

/** 256 RGBA entries interpolated through the stops. */
function rampOf(stops: RGB[]): Uint8Array {
  const out = new Uint8Array(256 * 4);
  for (let i = 0; i < 256; i++) {
    const x = (i / 255) * (stops.length - 1);
    const j = Math.min(stops.length - 2, Math.floor(x));
    const f = x - j;
    for (let c = 0; c < 3; c++) out[i * 4 + c] = Math.round(stops[j]![c]! + (stops[j + 1]![c]! - stops[j]![c]!) * f);
    out[i * 4 + 3] = 255;
  }
  return out;
}

const RAMPS = new Map<string, Uint8Array>();
/** The theme's ramp through one set of stops, built once. */
function cachedRamp(theme: Theme, stops: 'sequential' | 'diverging' | 'matrix'): Uint8Array {
  const key = `${theme}:${stops}`;
  let r = RAMPS.get(key);
  if (!r) RAMPS.set(key, (r = rampOf(STOPS[theme][stops])));
  return r;
}

export function ramp(theme: Theme, mode: ScaleMode): Uint8Array {
  return cachedRamp(theme, mode === 'fair' ? 'diverging' : 'sequential');
}

/** MatrixCanvas' 256 RGBA entries, background to accent. */
export function matrixRamp(theme: Theme): Uint8Array {
  return cachedRamp(theme, 'matrix');
}

export function blankColour(theme: Theme): RGB {
  return STOPS[theme].blank;
}

export interface ColourScale {
  mode: ScaleMode;
  theme: Theme;
  /** linear: 0 and the largest share; log: lo and max shares; fair: unused (fixed range). */
  lo: number;
  hi: number;
}

/**
 * The scale for a set of shares (any iterable of the values shown; NaN ignored). With no
 * non-zero share the linear and log scales span [0, 1] and [1e-4, 1].
 */
export function makeScale(mode: ScaleMode, theme: Theme, shares: ArrayLike<number>): ColourScale {
  let max = 0;
  let minPos = Infinity;
  for (let i = 0; i < shares.length; i++) {
    const s = shares[i]!;
    if (!(s > 0)) continue;
    if (s > max) max = s;
    if (s < minPos) minPos = s;
  }
  if (mode === 'linear') return { mode, theme, lo: 0, hi: max > 0 ? max : 1 };
  if (mode === 'log') {
    const hi = max > 0 ? max : 1;
    const lo = Math.min(hi, Math.max(minPos === Infinity ? hi : minPos, hi / 10 ** LOG_DECADES));
    return { mode, theme, lo: lo < hi ? lo : hi / 10, hi };
  }
  return { mode, theme, lo: 2 ** -FAIR_RANGE, hi: 2 ** FAIR_RANGE };
}

/** Position t in [0, 1] on the ramp for a share s of a layer of `width` experts (definitions at the top). */
export function position(scale: ColourScale, share: number, width: number): number {
  if (!(share > 0)) return 0;
  let t: number;
  if (scale.mode === 'linear') t = share / scale.hi;
  else if (scale.mode === 'log') t = (Math.log10(share) - Math.log10(scale.lo)) / (Math.log10(scale.hi) - Math.log10(scale.lo));
  else t = (Math.log2(share * width) + FAIR_RANGE) / (2 * FAIR_RANGE);
  return t < 0 ? 0 : t > 1 ? 1 : t;
}

/** Index into the ramp (0..255). */
export function rampIndex(scale: ColourScale, share: number, width: number): number {
  return Math.round(position(scale, share, width) * 255);
}

/** Tick marks for the legend: position t and label. */
export function legendTicks(scale: ColourScale): Array<{ t: number; label: string }> {
  const pct = (s: number) => (s >= 0.1 ? `${(100 * s).toFixed(0)}%` : s >= 0.01 ? `${(100 * s).toFixed(1)}%` : `${(100 * s).toPrecision(1)}%`);
  if (scale.mode === 'linear') return [0, 0.25, 0.5, 0.75, 1].map((t) => ({ t, label: pct(t * scale.hi) }));
  if (scale.mode === 'log') {
    const a = Math.log10(scale.lo);
    const b = Math.log10(scale.hi);
    const ticks: Array<{ t: number; label: string }> = [{ t: 0, label: pct(scale.lo) }];
    for (let d = Math.ceil(a); d < b; d++) {
      const t = (d - a) / (b - a);
      if (t > 0.08 && t < 0.92) ticks.push({ t, label: pct(10 ** d) });
    }
    ticks.push({ t: 1, label: pct(scale.hi) });
    return ticks;
  }
  const ticks: Array<{ t: number; label: string }> = [];
  for (let p = -FAIR_RANGE; p <= FAIR_RANGE; p++) {
    ticks.push({ t: (p + FAIR_RANGE) / (2 * FAIR_RANGE), label: p >= 0 ? `${2 ** p}×` : `1/${2 ** -p}×` });
  }
  return ticks;
}

/** What the legend says the colour means; `quantity` names the share ("share of the layer"). */
export function legendTitle(scale: ColourScale, quantity = 'share of the layer'): string {
  if (scale.mode === 'fair') return `${quantity} ÷ fair share (1/E); 0 is the bottom colour`;
  if (scale.mode === 'log') return `${quantity} (log); 0 is the bottom colour`;
  return quantity;
}

/** The page's theme, as main.tsx sets it from DevTools. */
export function currentTheme(): Theme {
  return typeof document !== 'undefined' && document.documentElement.dataset.theme === 'dark' ? 'dark' : 'light';
}

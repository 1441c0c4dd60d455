/**
 * A rows x cols matrix drawn on a canvas (up to 128 x 512 and more): one pass over
 * an ImageData, scaled by CSS. Hovering shows the cell's value in a readout.
 *
 * Drawn again only when what it shows changes (`data`, the size, the column order, the theme):
 * a 1024 x 1024 co-activation matrix is a million cells, ~11 ms a pass on a 2-core EPYC, and
 * every render (each analysis, each hover) used to redraw it and allocate a new 4 MiB ImageData.
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import { blankColour, currentTheme, matrixRamp, type Theme } from './colour-scale';

interface Props {
  rows: number;
  cols: number;
  /** Value for (row, col) in [0, 1] for colour; NaN for a cell that does not exist (drawn blank). */
  intensity: (row: number, col: number) => number;
  /** What `intensity` reads (the matrix, the counts): a new value redraws the canvas, the same one does not. */
  data: unknown;
  /** Column drawn at position x (for sorting); default identity. */
  order?: number[];
  describe: (row: number, col: number) => string;
  rowLabel: string;
  colLabel: string;
  testid: string;
  height?: number;
}

/** The theme's 256 colour levels (colour-scale's matrix ramp) as RGBA pixels, and its blank colour as one pixel. */
function pixelsOf(theme: Theme): { levels: Uint32Array; blank: number } {
  const [r, g, b] = blankColour(theme);
  return { levels: new Uint32Array(matrixRamp(theme).buffer, 0, 256), blank: new Uint32Array(Uint8Array.of(r, g, b, 255).buffer)[0]! };
}

export function MatrixCanvas({ rows, cols, intensity, data, order, describe, rowLabel, colLabel, testid, height }: Props) {
  const canvas = useRef<HTMLCanvasElement>(null);
  const image = useRef<ImageData | null>(null);
  const [hover, setHover] = useState<{ row: number; col: number } | null>(null);
  const theme = currentTheme();

  useEffect(() => {
    const c = canvas.current;
    if (!c || rows < 1 || cols < 1) return;
    // setting a canvas' size, even to the same one, clears and reallocates it
    if (c.width !== cols) c.width = cols;
    if (c.height !== rows) c.height = rows;
    const ctx = c.getContext('2d');
    if (!ctx) return;
    const last = image.current;
    const img = last && last.width === cols && last.height === rows ? last : (image.current = ctx.createImageData(cols, rows));
    // one 32-bit pixel per cell from a table of 256 colour levels: a million cells are a million
    // calls of `intensity`, so the rest of the loop is kept to a lookup and a store
    const { levels, blank } = pixelsOf(theme);
    const pixels = new Uint32Array(img.data.buffer, img.data.byteOffset, rows * cols);
    for (let r = 0; r < rows; r++) {
      const rowStart = r * cols;
      for (let x = 0; x < cols; x++) {
        const raw = intensity(r, order ? order[x]! : x);
        if (Number.isNaN(raw)) pixels[rowStart + x] = blank;
        else pixels[rowStart + x] = levels[raw > 0 && raw < Infinity ? (raw >= 1 ? 255 : Math.round(raw * 255)) : 0]!;
      }
    }
    ctx.putImageData(img, 0, 0);
  }, [data, rows, cols, order, theme]);

  const onMove = (e: MouseEvent) => {
    const c = canvas.current!;
    const rect = c.getBoundingClientRect();
    const x = Math.floor(((e.clientX - rect.left) / rect.width) * cols);
    const row = Math.floor(((e.clientY - rect.top) / rect.height) * rows);
    if (x < 0 || x >= cols || row < 0 || row >= rows) return setHover(null);
    setHover({ row, col: order ? order[x]! : x });
  };

  const h = height ?? Math.min(520, Math.max(80, rows * 14));
  return (
    <div class="matrix">
      <div class="matrix-readout" data-testid={`${testid}-readout`} data-row={hover?.row} data-col={hover?.col}>
        {hover ? describe(hover.row, hover.col) : `Hover a cell: ${rowLabel} × ${colLabel}`}
      </div>
      <canvas ref={canvas} class="matrix-canvas" data-testid={testid} style={{ height: `${h}px` }} onMouseMove={onMove} onMouseLeave={() => setHover(null)} />
    </div>
  );
}

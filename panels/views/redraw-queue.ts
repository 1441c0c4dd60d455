/**
 * Chart redraws spread over animation frames, one per frame. A view with several uPlot charts
 * (Timeline: two or three, Training: three) gets new data for all of them in the same analysis;
 * redrawn together they cost one frame 2-3 times a chart's redraw (~2.5 ms each at 1,200 points,
 * axes and legend), which is what kept Timeline's frame work at the 16 ms limit. One per frame
 * keeps every frame's share to a single chart; with analyses at 5 Hz and frames at 30-60 Hz the
 * charts lag at most a frame or two behind one another.
 *
 * Only the newest redraw of each chart is kept (a chart that gets new data before its turn draws
 * once, with the newest), and charts take their turns in the order they first asked.
 */
type Frame = (callback: () => void) => unknown;

export class RedrawQueue {
  private readonly pending = new Map<object, () => void>();
  private scheduled = false;

  constructor(private readonly nextFrame: Frame = (cb) => requestAnimationFrame(cb)) {}

  /** Run `draw` for `chart` in a coming frame, replacing a redraw of it still waiting. */
  request(chart: object, draw: () => void): void {
    this.pending.set(chart, draw);
    this.schedule();
  }

  /** Forget a waiting redraw (the chart is being destroyed). */
  cancel(chart: object): void {
    this.pending.delete(chart);
  }

  /** Redraws waiting (for tests and diagnostics). */
  get size(): number {
    return this.pending.size;
  }

  private schedule(): void {
    if (this.scheduled || this.pending.size === 0) return;
    this.scheduled = true;
    this.nextFrame(() => this.runOne());
  }

  private runOne(): void {
    this.scheduled = false;
    const next = this.pending.entries().next();
    if (!next.done) {
      const [chart, draw] = next.value;
      this.pending.delete(chart);
      try {
        draw();
      } finally {
        this.schedule();
      }
    }
  }
}

/** The panel's one queue: every chart shares it, so that two views' charts do not draw in one frame either. */
export const chartRedraws = new RedrawQueue();

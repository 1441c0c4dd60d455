/**
 * When the host sends the panel its coalesced updates: as soon as new counts are waiting, but
 * never sooner than one interval (1 / updateHz) after the last send, so the browser hears of a job
 * at most updateHz times a second and each update is the newest.
 *
 * A fixed-rate timer sent fewer than updateHz on a busy machine: its ticks ran late, and some found
 * nothing new while the next interval held two snapshots, one of them coalesced away (24 of 30
 * updates/s with the job at 37 passes/s, 2-core machine beside Chromium).
 */
export class UpdatePacer {
  private timer: ReturnType<typeof setTimeout> | undefined;
  private lastSend = -Infinity;
  private intervalMs: number;

  /** send: sends what is waiting; false when nothing could go (the browser is behind): tried again an interval later. */
  constructor(
    private readonly send: () => boolean,
    hz: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.intervalMs = 1000 / hz;
  }

  /** New counts are waiting. */
  request(): void {
    if (this.timer !== undefined) return;
    // rounded up: timers count whole milliseconds, and a send a fraction early would exceed updateHz
    const wait = Math.max(0, Math.ceil(this.lastSend + this.intervalMs - this.now()));
    this.timer = setTimeout(() => this.fire(), wait);
  }

  setRate(hz: number): void {
    this.intervalMs = 1000 / hz;
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private fire() {
    this.timer = undefined;
    this.lastSend = this.now();
    if (!this.send()) this.request();
  }
}

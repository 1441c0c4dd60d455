/**
 * When the host sends the panel its coalesced updates: as soon as new counts are waiting, but
 * never sooner than one interval (1 / updateHz) after the last send, so the browser hears of a job
 * at most updateHz times a second and each update is the newest.
 *
 * A fixed-rate timer sent fewer than updateHz on a busy machine: its ticks ran late, and some found
 * nothing new while the next interval held two snapshots, one of them coalesced away (24 of 30
 * updates/s with the job at 37 passes/s, 2-core machine beside Chromium).
 *
 * The next send is due one interval after this one was due, not after it went: a timer that fires
 * a few ms late (the event loop busy with probe frames) would otherwise stretch every interval and
 * the rate with it (26 of 30 updates/s in the same benchmark). A send later than half an interval
 * (the job was quiet, or the host stalled) starts the schedule afresh instead of catching up, so
 * two sends are never closer than half an interval and any second holds at most updateHz + 1.
 */
export class UpdatePacer {
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** When the next send may go (performance.now() time). */
  private nextDue = -Infinity;
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
    const wait = Math.max(0, Math.ceil(this.nextDue - this.now()));
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
    const now = this.now();
    const onSchedule = now - this.nextDue <= this.intervalMs / 2;
    this.nextDue = (onSchedule ? this.nextDue : now) + this.intervalMs;
    if (!this.send()) this.request();
  }
}

import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { UpdatePacer } from '../../native-host/src/update-pacer';

describe('UpdatePacer: the host sends as soon as counts wait, at most once per interval', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('sends at once after a quiet interval, and a burst of counts once', () => {
    const sends: number[] = [];
    const pacer = new UpdatePacer(() => (sends.push(Date.now()), true), 30, () => Date.now());
    const t0 = Date.now();
    pacer.request();
    pacer.request();
    vi.advanceTimersByTime(0);
    expect(sends.map((t) => t - t0)).toEqual([0]);
    // counts 10 ms later wait for the rest of the interval (33.3 ms), and the ones after join them
    vi.advanceTimersByTime(10);
    pacer.request();
    vi.advanceTimersByTime(10);
    pacer.request();
    vi.advanceTimersByTime(20);
    expect(sends.map((t) => t - t0)).toEqual([0, 34]);
    // nothing waiting: nothing sent
    vi.advanceTimersByTime(500);
    expect(sends).toHaveLength(2);
    pacer.stop();
  });

  it('keeps the rate of a job faster than updateHz at updateHz, each send the newest', () => {
    let waiting = 0;
    let sent = 0;
    const pacer = new UpdatePacer(() => {
      if (waiting) sent++;
      waiting = 0;
      return true;
    }, 30, () => Date.now());
    // a pass every 25 ms (40 passes/s) for 3 s, irregular by up to 12 ms
    let t = 0;
    for (let pass = 0; pass < 120; pass++) {
      const next = pass * 25 + ((pass * 7919) % 13);
      vi.advanceTimersByTime(next - t);
      t = next;
      waiting++;
      pacer.request();
    }
    vi.advanceTimersByTime(100);
    // 30/s over the 3.1 s (without pacing all 120 would go)
    expect(sent).toBeGreaterThanOrEqual(85);
    expect(sent).toBeLessThanOrEqual(92);
    pacer.stop();
  });

  it('keeps updateHz when its timer fires late (the event loop busy with probe frames), never more', () => {
    // Each probe frame holds the host's event loop 4 ms: the pacer's clock moves on while no timer
    // can fire, so a timer due during a frame fires late.
    let busy = 0;
    const now = () => Date.now() + busy;
    const sends: number[] = [];
    const pacer = new UpdatePacer(() => (sends.push(now()), true), 30, now);
    let t = 0;
    for (let pass = 0; pass < 300; pass++) {
      const next = pass * 25 + ((pass * 7919) % 13);
      vi.advanceTimersByTime(next - t);
      t = next;
      busy += 4;
      pacer.request();
    }
    pacer.stop();
    const seconds = (sends.at(-1)! - sends[0]!) / 1000;
    const rate = (sends.length - 1) / seconds;
    // the job makes ~34 passes/s on the pacer's clock; every send waits for counts
    expect(rate).toBeGreaterThan(29.5);
    expect(rate).toBeLessThanOrEqual(30);
    // never two sends closer than half an interval, never more than updateHz + 1 in any second
    const gaps = sends.slice(1).map((s, i) => s - sends[i]!);
    expect(Math.min(...gaps)).toBeGreaterThanOrEqual(1000 / 30 / 2);
    for (const s of sends) expect(sends.filter((x) => x >= s && x < s + 1000).length).toBeLessThanOrEqual(31);
  });

  it('tries again an interval later while the browser is behind', () => {
    let congested = 2;
    let sent = 0;
    const pacer = new UpdatePacer(() => (congested > 0 ? (congested--, false) : (sent++, true)), 30, () => Date.now());
    pacer.request();
    vi.advanceTimersByTime(0);
    expect(sent).toBe(0);
    vi.advanceTimersByTime(34);
    expect(sent).toBe(0);
    vi.advanceTimersByTime(34);
    expect(sent).toBe(1);
    vi.advanceTimersByTime(1000);
    expect(sent).toBe(1);
  });

  it('follows a new rate', () => {
    const sends: number[] = [];
    const pacer = new UpdatePacer(() => (sends.push(Date.now()), true), 30, () => Date.now());
    const t0 = Date.now();
    pacer.setRate(5);
    pacer.request();
    vi.advanceTimersByTime(0);
    pacer.request();
    vi.advanceTimersByTime(300);
    expect(sends.map((t) => t - t0)).toEqual([0, 200]);
  });
});

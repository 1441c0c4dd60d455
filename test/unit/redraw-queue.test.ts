import { describe, expect, it } from 'vitest';
import { RedrawQueue } from '../../panels/views/redraw-queue';

/** Frames run by hand: `frame()` runs the callbacks requested so far, as one animation frame would. */
function frames() {
  let waiting: Array<() => void> = [];
  return {
    next: (cb: () => void) => waiting.push(cb),
    frame() {
      const run = waiting;
      waiting = [];
      for (const cb of run) cb();
    },
    get requested() {
      return waiting.length;
    },
  };
}

describe('RedrawQueue: chart redraws one per frame', () => {
  it('draws one chart per frame, in the order they asked', () => {
    const f = frames();
    const q = new RedrawQueue(f.next);
    const drawn: string[] = [];
    const a = {}, b = {}, c = {};
    q.request(a, () => drawn.push('a'));
    q.request(b, () => drawn.push('b'));
    q.request(c, () => drawn.push('c'));
    expect(drawn).toEqual([]);
    expect(f.requested).toBe(1);
    f.frame();
    expect(drawn).toEqual(['a']);
    f.frame();
    expect(drawn).toEqual(['a', 'b']);
    f.frame();
    expect(drawn).toEqual(['a', 'b', 'c']);
    expect(f.requested).toBe(0);
    expect(q.size).toBe(0);
  });

  it('keeps only the newest redraw of a chart, in its first place', () => {
    const f = frames();
    const q = new RedrawQueue(f.next);
    const drawn: string[] = [];
    const a = {}, b = {};
    q.request(a, () => drawn.push('a1'));
    q.request(b, () => drawn.push('b1'));
    q.request(a, () => drawn.push('a2'));
    f.frame();
    f.frame();
    f.frame();
    expect(drawn).toEqual(['a2', 'b1']);
  });

  it('forgets a cancelled chart and stops asking for frames when nothing waits', () => {
    const f = frames();
    const q = new RedrawQueue(f.next);
    const drawn: string[] = [];
    const a = {};
    q.request(a, () => drawn.push('a'));
    q.cancel(a);
    f.frame();
    expect(drawn).toEqual([]);
    expect(f.requested).toBe(0);
  });

  it('goes on with the other charts when one redraw throws', () => {
    const f = frames();
    const q = new RedrawQueue(f.next);
    const drawn: string[] = [];
    q.request({}, () => {
      throw new Error('bad data');
    });
    q.request({}, () => drawn.push('b'));
    expect(() => f.frame()).toThrow('bad data');
    f.frame();
    expect(drawn).toEqual(['b']);
  });
});

import { describe, expect, it } from 'vitest';
import { sparkBars } from '../../panels/views/spark-bars';

describe("sparkBars: the Load view's sparkline columns", () => {
  it('shows the busiest expert of each column, scaled to the busiest of all', () => {
    // 512 experts over 120 columns: expert 300 is the busiest; column x covers floor(x*512/120)..
    const counts = new Float64Array(512);
    counts[300] = 64;
    counts[0] = 16;
    counts[511] = 32;
    const bars = sparkBars(counts, 120, 32);
    const col = (e: number) => Math.floor((e * 120) / 512);
    expect(bars[col(300)]).toBe(32);
    expect(bars[0]).toBe(8);
    expect(bars[119]).toBe(16);
    expect([...bars].filter((b) => b > 0)).toHaveLength(3);
  });

  it('keeps a blank column between the bars of few experts, and a 1 px bar for any load', () => {
    const counts = Float64Array.from([1000, 1, 0, 500]);
    const bars = [...sparkBars(counts, 12, 32)];
    // each expert has 3 columns, the last of them blank (-1)
    expect(bars).toEqual([32, 32, -1, 1, 1, -1, 0, 0, -1, 16, 16, -1]);
  });

  it('draws nothing for an idle layer', () => {
    expect([...sparkBars(new Float64Array(8), 120, 32)].every((b) => b <= 0)).toBe(true);
  });
});

/**
 * Tables that every analysis rewrites (Overview's and Layers' tables of every layer, Flow's
 * transitions, Load's sparklines of every layer) show the newest value at most once a second. An
 * analysis comes up to 5 times a second and changes nearly every number of such a table: at that
 * rate the numbers cannot be read, and re-laying out the table took more than a frame on a busy
 * machine. Charts keep the full rate. Paused, or a new source (another job, model or request): at once (a changed window
 * setting shows with the next refresh, within the second).
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import type { Analysis } from '../engine/analyzer';
import type { Store } from '../store';

const SETTLE_MS = 1000;

/** What an analysis is of: a value of another source is shown at once. */
export const analysisSource = (a: Analysis) => `${a.pid}/${a.model}/${a.layers}`;

export function useSettled<T>(store: Store, value: T, source: string): T {
  const shown = useRef<{ value: T; source: string; at: number } | null>(null);
  const [, wake] = useState(0);
  const now = Date.now();
  const last = shown.current;
  if (last === null || last.source !== source || store.state.paused || now - last.at >= SETTLE_MS) shown.current = { value, source, at: now };
  const held = shown.current!.value !== value;
  useEffect(() => {
    if (!held) return;
    // the newest value shows after SETTLE_MS even if no other comes
    const t = setTimeout(() => wake((n) => n + 1), SETTLE_MS - (Date.now() - shown.current!.at) + 5);
    return () => clearTimeout(t);
  });
  return shown.current!.value;
}

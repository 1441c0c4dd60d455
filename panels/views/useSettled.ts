/**
 * Tables of every layer (Overview, Layers) show the newest analysis at most once a second. An
 * analysis comes up to 5 times a second and changes nearly every number of a 64-row table: at
 * that rate the numbers cannot be read, and re-laying out the table took more than a frame on a
 * busy machine. Charts keep the full rate. Paused, or another job or model: at once (a changed
 * window setting shows with the next refresh, within the second).
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import type { Analysis } from '../engine/analyzer';
import type { Store } from '../store';

const SETTLE_MS = 1000;

export function useSettled(store: Store, a: Analysis): Analysis {
  const shown = useRef<{ a: Analysis; at: number } | null>(null);
  const [, wake] = useState(0);
  const now = Date.now();
  const last = shown.current;
  const sameSource = last !== null && last.a.pid === a.pid && last.a.model === a.model && last.a.layers === a.layers;
  if (!sameSource || store.state.paused || now - last.at >= SETTLE_MS) shown.current = { a, at: now };
  const held = shown.current!.a !== a;
  useEffect(() => {
    if (!held) return;
    // the newest analysis shows after SETTLE_MS even if no other comes
    const t = setTimeout(() => wake((n) => n + 1), SETTLE_MS - (Date.now() - shown.current!.at) + 5);
    return () => clearTimeout(t);
  });
  return shown.current!.a;
}

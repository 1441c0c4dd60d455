/**
 * A view's own subscription to one part of the store: the component re-renders when that part
 * changes (by reference), even where its parent skips re-rendering (the job view re-renders its
 * views only with a new analysis), and not on every other change (30 updates a second).
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import type { Store, StoreState } from '../store';

export function useStoreSlice<T>(store: Store, select: (state: StoreState) => T): T {
  const latest = useRef(select);
  latest.current = select;
  const [, setVersion] = useState(0);
  const value = select(store.state);
  const seen = useRef(value);
  seen.current = value;
  useEffect(() => store.subscribe(() => {
    if (!Object.is(latest.current(store.state), seen.current)) setVersion((v) => v + 1);
  }), [store]);
  return value;
}

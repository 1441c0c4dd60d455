/**
 * One Preact render per frame. Updates reach the panel up to 30 times a second, and when the
 * machine is busy Chrome produces frames more slowly than that: rendering at each message made a
 * frame carry several renders of the same views. Renders queued by any number of messages now run
 * together before the next frame (requestAnimationFrame), or after FALLBACK_MS when no frame comes
 * (DevTools hides the panel's document while another panel is shown, and a hidden document gets
 * no animation frames).
 */
import { options } from 'preact';

const FALLBACK_MS = 100;

/** Runs `callback` once, at the next animation frame or after FALLBACK_MS, whichever is first. */
export function atNextFrame(callback: () => void): void {
  let done = false;
  const run = () => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    callback();
  };
  const timer = setTimeout(run, FALLBACK_MS);
  requestAnimationFrame(run);
}

export function renderOncePerFrame(): void {
  options.debounceRendering = atNextFrame;
}

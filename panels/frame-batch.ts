/**
 * Work done once per frame. Updates reach the panel up to 30 times a second, and when the machine
 * is busy Chrome produces frames more slowly than that: rendering at each message made a frame
 * carry several renders of the same views. What updates change is told to the views here, at the
 * next animation frame, or after FALLBACK_MS when no frame comes (DevTools hides the panel's
 * document while another panel is shown, and a hidden document gets no animation frames).
 */
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
  if (typeof requestAnimationFrame === 'function') requestAnimationFrame(run);
}

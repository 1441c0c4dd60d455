// Before the browser tests: one clear line, and a non-zero exit, when no Chromium is installed
// (otherwise every browser test would fail on its own with the same message).
import { findChromium } from './lib/devtools-harness.mjs';

try {
  findChromium();
} catch (err) {
  console.error(`${err.message} The end-to-end tests and the demo drive a real Chromium.`);
  process.exit(1);
}

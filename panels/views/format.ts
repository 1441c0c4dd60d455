/** Number formatting shared by the views. */
export const fmt = (x: number, digits = 2) => (Number.isFinite(x) ? x.toFixed(digits) : '–');
export const pct = (x: number, digits = 1) => (Number.isFinite(x) ? `${(100 * x).toFixed(digits)}%` : '–');
// One formatter for every call: Number#toLocaleString with a locale builds a new one each
// time (~50 µs), and the Overview formats hundreds of numbers per render.
const INT = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
export const int = (x: number) => (Number.isFinite(x) ? INT.format(Math.round(x)) : '–');

const FRAMEWORK_NAMES: Record<string, string> = { torch: 'PyTorch', jax: 'JAX', tensorflow: 'TensorFlow', onnxruntime: 'ONNX Runtime' };
/** How the panel names a framework of the protocol ("jax" -> "JAX"); several ("torch+jax") are joined by " + ". */
export const frameworkName = (name: string) => name.split('+').map((n) => FRAMEWORK_NAMES[n] ?? n).join(' + ');

/**
 * Reusable scratch buffers, so that the analyses called at frame rate do not
 * allocate arrays on every call. Each caller module owns its own buffer (made
 * with makeScratchF64), so two analyses never share one; JavaScript runs one
 * call at a time per realm, so a module-level buffer is safe to reuse.
 * Buffers only grow; contents are not cleared between uses.
 */
export function makeScratchF64(): (length: number) => Float64Array {
  let buf = new Float64Array(0);
  return (length: number): Float64Array => {
    if (buf.length < length) buf = new Float64Array(Math.max(length, buf.length * 2));
    return buf;
  };
}

export function makeScratchI32(): (length: number) => Int32Array {
  let buf = new Int32Array(0);
  return (length: number): Int32Array => {
    if (buf.length < length) buf = new Int32Array(Math.max(length, buf.length * 2));
    return buf;
  };
}

/**
 * Small WebGL2 helpers shared by the heatmap renderer and the 3D activation map: compiling a
 * program, float and colour-ramp textures. No 3D library: the two views need one textured quad
 * each (instanced for the 3D map's planes), a handful of uniforms and a 4x4 matrix, which is less
 * code than adapting a library, and nothing to keep up to date.
 */

export function webgl2(canvas: HTMLCanvasElement): WebGL2RenderingContext | null {
  try {
    return canvas.getContext('webgl2', { antialias: false, premultipliedAlpha: false, preserveDrawingBuffer: true });
  } catch {
    return null;
  }
}

/** Whether this browser gives WebGL2 at all (cached). */
let available: boolean | null = null;
export function webgl2Available(): boolean {
  if (available === null) {
    try {
      available = !!document.createElement('canvas').getContext('webgl2');
    } catch {
      available = false;
    }
  }
  return available;
}

export function program(gl: WebGL2RenderingContext, vertex: string, fragment: string): WebGLProgram {
  const compile = (type: number, source: string) => {
    const s = gl.createShader(type)!;
    gl.shaderSource(s, source);
    gl.compileShader(s);
    if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(`shader: ${gl.getShaderInfoLog(s)}`);
    return s;
  };
  const p = gl.createProgram()!;
  gl.attachShader(p, compile(gl.VERTEX_SHADER, vertex));
  gl.attachShader(p, compile(gl.FRAGMENT_SHADER, fragment));
  gl.linkProgram(p);
  if (!gl.getProgramParameter(p, gl.LINK_STATUS)) throw new Error(`program: ${gl.getProgramInfoLog(p)}`);
  return p;
}

/** A texture of single floats (R32F, nearest: float textures are not filterable everywhere). */
export function floatTexture(gl: WebGL2RenderingContext): WebGLTexture {
  const t = gl.createTexture()!;
  gl.bindTexture(gl.TEXTURE_2D, t);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
  return t;
}

export function uploadFloats(gl: WebGL2RenderingContext, tex: WebGLTexture, width: number, height: number, data: Float32Array): void {
  gl.bindTexture(gl.TEXTURE_2D, tex);
  gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
  gl.texImage2D(gl.TEXTURE_2D, 0, gl.R32F, width, height, 0, gl.RED, gl.FLOAT, data);
}

/** The 256-entry colour ramp as a 256 x 1 RGBA texture (linear filtering between entries). */
export function rampTexture(gl: WebGL2RenderingContext, ramp: Uint8Array, tex?: WebGLTexture): WebGLTexture {
  const t = tex ?? gl.createTexture()!;
  gl.bindTexture(gl.TEXTURE_2D, t);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
  gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, 256, 1, 0, gl.RGBA, gl.UNSIGNED_BYTE, ramp);
  return t;
}

/**
 * GLSL for the colour scale of colour-scale.ts (keep the two in step; the unit test of the
 * scale and the end-to-end hover checks hold the numbers, the screenshots the colours):
 * position of share s in a row of width w, for mode 0 linear, 1 log, 2 fair.
 */
export const GLSL_SCALE = `
const float FAIR_RANGE = 3.0;
float scalePosition(float s, float w, int mode, float lo, float hi) {
  if (!(s > 0.0)) return 0.0;
  float t;
  if (mode == 0) t = s / hi;
  else if (mode == 1) t = (log2(s) - log2(lo)) / (log2(hi) - log2(lo));
  else t = (log2(s * w) + FAIR_RANGE) / (2.0 * FAIR_RANGE);
  return clamp(t, 0.0, 1.0);
}
`;

export const MODE_INDEX = { linear: 0, log: 1, fair: 2 } as const;

/**
 * The heatmap drawn by the GPU: the shares go up as one float texture and a fragment shader does
 * the colour scale (colour-scale.ts, in GLSL in gl.ts), the column order and the pixel-column
 * maximum, so the main thread's work per frame is one texture upload instead of a loop over every
 * cell. Used when the canvas cannot keep up (HeatGrid picks it).
 */
import { blankColour, ramp, type ColourScale } from './colour-scale';
import { floatTexture, GLSL_SCALE, MODE_INDEX, program, rampTexture, uploadFloats, webgl2 } from './gl';

const VERTEX = `#version 300 es
in vec2 corner;
out vec2 uv;
void main() {
  uv = corner * 0.5 + 0.5;
  gl_Position = vec4(corner, 0.0, 1.0);
}`;

// One output pixel column covers [x * cols / drawn, (x + 1) * cols / drawn) positions; it shows the
// hottest of them (so that no expert hides between pixels), blank only when every one is blank.
const FRAGMENT = `#version 300 es
precision highp float;
precision highp int;
uniform sampler2D values;   // cols x rows shares, NaN = blank
uniform sampler2D widths;   // rows x 1: experts of each row (fair share)
uniform sampler2D order;    // cols x 1: the column shown at each position
uniform sampler2D colours;  // 256 x 1 ramp
uniform int cols;
uniform int rows;
uniform int drawn;
uniform int useOrder;
uniform int mode;
uniform float lo;
uniform float hi;
uniform vec3 blank;
in vec2 uv;
out vec4 colour;
${GLSL_SCALE}
void main() {
  int x = int(floor(uv.x * float(drawn)));
  int row = rows - 1 - int(floor(uv.y * float(rows)));
  int c0 = (x * cols) / drawn;
  int c1 = max(c0 + 1, ((x + 1) * cols) / drawn);
  float w = texelFetch(widths, ivec2(row, 0), 0).r;
  float best = -1.0;
  for (int c = c0; c < c1; c++) {
    int col = useOrder == 1 ? int(texelFetch(order, ivec2(c, 0), 0).r) : c;
    float v = texelFetch(values, ivec2(col, row), 0).r;
    if (isnan(v)) continue;
    best = max(best, scalePosition(v, w, mode, lo, hi));
  }
  colour = best < 0.0 ? vec4(blank, 1.0) : vec4(texture(colours, vec2((floor(best * 255.0 + 0.5) + 0.5) / 256.0, 0.5)).rgb, 1.0);
}`;

export class HeatGL {
  private gl: WebGL2RenderingContext;
  private prog: WebGLProgram;
  private values: WebGLTexture;
  private widths: WebGLTexture;
  private order: WebGLTexture;
  private colours: WebGLTexture;
  private rampKey = '';
  private u: Record<string, WebGLUniformLocation | null> = {};

  /** Throws when the canvas gives no WebGL2 context. */
  constructor(readonly canvas: HTMLCanvasElement) {
    const gl = webgl2(canvas);
    if (!gl) throw new Error('WebGL2 is not available');
    this.gl = gl;
    this.prog = program(gl, VERTEX, FRAGMENT);
    for (const name of ['values', 'widths', 'order', 'colours', 'cols', 'rows', 'drawn', 'useOrder', 'mode', 'lo', 'hi', 'blank']) {
      this.u[name] = gl.getUniformLocation(this.prog, name);
    }
    const buffer = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, buffer);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
    const loc = gl.getAttribLocation(this.prog, 'corner');
    const vao = gl.createVertexArray();
    gl.bindVertexArray(vao);
    gl.enableVertexAttribArray(loc);
    gl.vertexAttribPointer(loc, 2, gl.FLOAT, false, 0, 0);
    this.values = floatTexture(gl);
    this.widths = floatTexture(gl);
    this.order = floatTexture(gl);
    this.colours = gl.createTexture()!;
  }

  draw(opts: { values: Float32Array; rows: number; cols: number; drawn: number; rowWidths: ArrayLike<number>; order: readonly number[] | null; scale: ColourScale }): void {
    const { gl } = this;
    const { rows, cols, drawn, scale } = opts;
    this.canvas.width = drawn;
    this.canvas.height = rows;
    gl.viewport(0, 0, drawn, rows);
    gl.useProgram(this.prog);
    uploadFloats(gl, this.values, cols, rows, opts.values);
    uploadFloats(gl, this.widths, rows, 1, Float32Array.from(opts.rowWidths));
    if (opts.order) uploadFloats(gl, this.order, cols, 1, Float32Array.from(opts.order));
    const key = `${scale.theme}:${scale.mode === 'fair'}`;
    if (key !== this.rampKey) {
      rampTexture(gl, ramp(scale.theme, scale.mode), this.colours);
      this.rampKey = key;
    }
    const textures: Array<[string, WebGLTexture]> = [['values', this.values], ['widths', this.widths], ['order', this.order], ['colours', this.colours]];
    textures.forEach(([name, tex], i) => {
      gl.activeTexture(gl.TEXTURE0 + i);
      gl.bindTexture(gl.TEXTURE_2D, tex);
      gl.uniform1i(this.u[name]!, i);
    });
    gl.uniform1i(this.u.cols!, cols);
    gl.uniform1i(this.u.rows!, rows);
    gl.uniform1i(this.u.drawn!, drawn);
    gl.uniform1i(this.u.useOrder!, opts.order ? 1 : 0);
    gl.uniform1i(this.u.mode!, MODE_INDEX[scale.mode]);
    gl.uniform1f(this.u.lo!, scale.lo);
    gl.uniform1f(this.u.hi!, scale.hi);
    const b = blankColour(scale.theme);
    gl.uniform3f(this.u.blank!, b[0] / 255, b[1] / 255, b[2] / 255);
    gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
  }

  dispose(): void {
    this.gl.getExtension('WEBGL_lose_context')?.loseContext();
  }
}

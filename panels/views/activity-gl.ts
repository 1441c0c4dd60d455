/**
 * The 3D activation map's geometry and its WebGL drawing: one heat plane per MoE layer, stacked
 * top to bottom in model order, each plane experts (x) by time (z: oldest at the back, newest at
 * the front), coloured by the same scale as the Heatmap (colour-scale.ts / GLSL_SCALE).
 *
 * Data lives on the GPU as one float texture array [layers][time slots][experts]: a new time
 * bucket is one texSubImage3D of a row per layer; slot = bucket id mod slots.
 */
import { blankColour, ramp, type ColourScale } from './colour-scale';
import { GLSL_SCALE, MODE_INDEX, program, rampTexture, uploadFloats, webgl2, floatTexture } from './gl';
import type { Mat4, Vec3 } from './mat4';

/** Half the time axis' depth and half the expert axis' width, in world units. */
export const DEPTH = 0.6;
export const HALF_WIDTH = 1;

export interface Stack {
  /** The layers drawn, top to bottom. */
  layers: number[];
  /** Experts of every layer (by probe index) and of the widest. */
  widths: readonly number[];
  maxWidth: number;
  /** Vertical distance between planes. */
  spacing: number;
  /** Time buckets on the time axis. */
  count: number;
}

/**
 * Plane spacing at which, seen orthographically from (yaw, pitch), no plane hides any part of
 * another: a plane's footprint along the view direction (its depth and, turned by the yaw, its
 * width) times tan(pitch), with a margin.
 */
export function explodedSpacing(yaw: number, pitch: number): number {
  return (2 * DEPTH * Math.abs(Math.cos(yaw)) + 2 * HALF_WIDTH * Math.abs(Math.sin(yaw))) * Math.tan(Math.abs(pitch)) * 1.12;
}

export function planeY(stack: Stack, i: number): number {
  return ((stack.layers.length - 1) / 2 - i) * stack.spacing;
}

/** Right edge of a layer's plane: narrower layers are shorter along the expert axis. */
export function planeRight(stack: Stack, layer: number): number {
  return -HALF_WIDTH + (2 * HALF_WIDTH * stack.widths[layer]!) / stack.maxWidth;
}

/** World position of the centre of cell (plane i, expert, bucket b counted from the oldest). */
export function cellCentre(stack: Stack, i: number, expert: number, b: number): Vec3 {
  return [-HALF_WIDTH + (2 * HALF_WIDTH * (expert + 0.5)) / stack.maxWidth, planeY(stack, i), -DEPTH + (2 * DEPTH * (b + 0.5)) / Math.max(1, stack.count)];
}

/** The cell a ray hits first: nearest plane along the ray whose rectangle contains the hit point. */
export function pickCell(stack: Stack, origin: Vec3, dir: Vec3): { plane: number; expert: number; bucket: number } | null {
  let best: { t: number; plane: number; expert: number; bucket: number } | null = null;
  if (Math.abs(dir[1]) < 1e-12) return null;
  for (let i = 0; i < stack.layers.length; i++) {
    const layer = stack.layers[i]!;
    const t = (planeY(stack, i) - origin[1]) / dir[1];
    if (!(t > 0) || (best && t >= best.t)) continue;
    const x = origin[0] + t * dir[0];
    const z = origin[2] + t * dir[2];
    if (x < -HALF_WIDTH || x >= planeRight(stack, layer) || z < -DEPTH || z >= DEPTH) continue;
    const expert = Math.floor(((x + HALF_WIDTH) / (2 * HALF_WIDTH)) * stack.maxWidth);
    const bucket = Math.floor(((z + DEPTH) / (2 * DEPTH)) * stack.count);
    if (expert >= stack.widths[layer]! || bucket < 0 || bucket >= stack.count) continue;
    best = { t, plane: i, expert, bucket };
  }
  return best && { plane: best.plane, expert: best.expert, bucket: best.bucket };
}

const VERTEX = `#version 300 es
in vec2 corner;        // (0..1, 0..1) over the plane
in vec2 plane;         // per instance: layer index, y
uniform mat4 mvp;
uniform float depth;
uniform float maxWidth;
uniform sampler2D widths;
out vec2 uv;
flat out int layer;
flat out float width;
void main() {
  float w = texelFetch(widths, ivec2(int(plane.x), 0), 0).r;
  vec3 p = vec3(mix(-1.0, -1.0 + 2.0 * w / maxWidth, corner.x), plane.y, mix(-depth, depth, corner.y));
  uv = corner;
  layer = int(plane.x);
  width = w;
  gl_Position = mvp * vec4(p, 1.0);
}`;

const FRAGMENT = `#version 300 es
precision highp float;
precision highp int;
precision highp sampler2DArray;
uniform sampler2DArray shares;
uniform sampler2D colours;
uniform int count;
uniform int oldest;
uniform int slots;
uniform int mode;
uniform float lo;
uniform float hi;
uniform vec3 blank;
in vec2 uv;
flat in int layer;
flat in float width;
out vec4 colour;
${GLSL_SCALE}
void main() {
  int e = min(int(floor(uv.x * width)), int(width) - 1);
  int b = min(int(floor(uv.y * float(count))), count - 1);
  float v = texelFetch(shares, ivec3(e, (oldest + b) % slots, layer), 0).r;
  if (isnan(v)) { colour = vec4(blank, 0.5); return; }
  float t = scalePosition(v, width, mode, lo, hi);
  colour = vec4(texture(colours, vec2((floor(t * 255.0 + 0.5) + 0.5) / 256.0, 0.5)).rgb, 0.93);
}`;

export class ActivityGL {
  private gl: WebGL2RenderingContext;
  private prog: WebGLProgram;
  private shares: WebGLTexture;
  private widths: WebGLTexture;
  private colours: WebGLTexture;
  private instances: WebGLBuffer;
  private rampKey = '';
  private dims = { experts: 0, slots: 0, layers: 0 };
  private u: Record<string, WebGLUniformLocation | null> = {};

  constructor(readonly canvas: HTMLCanvasElement) {
    const gl = webgl2(canvas);
    if (!gl) throw new Error('WebGL2 is not available in this browser, so the 3D map cannot be drawn (the Heatmap’s time view shows the same data).');
    this.gl = gl;
    this.prog = program(gl, VERTEX, FRAGMENT);
    for (const n of ['mvp', 'depth', 'maxWidth', 'widths', 'shares', 'colours', 'count', 'oldest', 'slots', 'mode', 'lo', 'hi', 'blank']) this.u[n] = gl.getUniformLocation(this.prog, n);
    const vao = gl.createVertexArray();
    gl.bindVertexArray(vao);
    const quad = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, quad);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([0, 0, 1, 0, 0, 1, 1, 1]), gl.STATIC_DRAW);
    const corner = gl.getAttribLocation(this.prog, 'corner');
    gl.enableVertexAttribArray(corner);
    gl.vertexAttribPointer(corner, 2, gl.FLOAT, false, 0, 0);
    this.instances = gl.createBuffer()!;
    gl.bindBuffer(gl.ARRAY_BUFFER, this.instances);
    const plane = gl.getAttribLocation(this.prog, 'plane');
    gl.enableVertexAttribArray(plane);
    gl.vertexAttribPointer(plane, 2, gl.FLOAT, false, 0, 0);
    gl.vertexAttribDivisor(plane, 1);
    this.shares = gl.createTexture()!;
    this.widths = floatTexture(gl);
    this.colours = gl.createTexture()!;
  }

  /** (Re)allocate the texture array, every cell NaN (no data). */
  allocate(experts: number, slots: number, layers: number, widths: readonly number[]): void {
    const { gl } = this;
    this.dims = { experts, slots, layers };
    gl.bindTexture(gl.TEXTURE_2D_ARRAY, this.shares);
    gl.texParameteri(gl.TEXTURE_2D_ARRAY, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
    gl.texParameteri(gl.TEXTURE_2D_ARRAY, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
    gl.texImage3D(gl.TEXTURE_2D_ARRAY, 0, gl.R32F, experts, slots, layers, 0, gl.RED, gl.FLOAT, new Float32Array(experts * slots * layers).fill(NaN));
    uploadFloats(gl, this.widths, layers, 1, Float32Array.from(widths));
  }

  /** One time slot of every layer: `rows` holds layers x experts shares (NaN past a layer's width). */
  upload(slot: number, rows: Float32Array): void {
    const { gl } = this;
    gl.bindTexture(gl.TEXTURE_2D_ARRAY, this.shares);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
    gl.texSubImage3D(gl.TEXTURE_2D_ARRAY, 0, 0, slot % this.dims.slots, 0, this.dims.experts, 1, this.dims.layers, gl.RED, gl.FLOAT, rows);
  }

  draw(o: { mvp: Mat4; eye: Vec3; stack: Stack; oldestSlot: number; scale: ColourScale; background: [number, number, number] }): void {
    const { gl } = this;
    const { stack } = o;
    gl.viewport(0, 0, this.canvas.width, this.canvas.height);
    gl.clearColor(o.background[0] / 255, o.background[1] / 255, o.background[2] / 255, 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    if (!stack.count || !stack.layers.length) return;
    gl.useProgram(this.prog);
    gl.enable(gl.BLEND);
    gl.blendFunc(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA);
    // Planes back to front (by the camera's height against theirs), so the nearer ones blend over.
    const planes = stack.layers.map((layer, i) => ({ layer, y: planeY(stack, i) }));
    planes.sort((a, b) => Math.abs(b.y - o.eye[1]) - Math.abs(a.y - o.eye[1]));
    gl.bindBuffer(gl.ARRAY_BUFFER, this.instances);
    gl.bufferData(gl.ARRAY_BUFFER, Float32Array.from(planes.flatMap((p) => [p.layer, p.y])), gl.DYNAMIC_DRAW);
    const key = `${o.scale.theme}:${o.scale.mode === 'fair'}`;
    if (key !== this.rampKey) {
      rampTexture(gl, ramp(o.scale.theme, o.scale.mode), this.colours);
      this.rampKey = key;
    }
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D_ARRAY, this.shares);
    gl.uniform1i(this.u.shares!, 0);
    gl.activeTexture(gl.TEXTURE1);
    gl.bindTexture(gl.TEXTURE_2D, this.widths);
    gl.uniform1i(this.u.widths!, 1);
    gl.activeTexture(gl.TEXTURE2);
    gl.bindTexture(gl.TEXTURE_2D, this.colours);
    gl.uniform1i(this.u.colours!, 2);
    gl.uniformMatrix4fv(this.u.mvp!, false, o.mvp);
    gl.uniform1f(this.u.depth!, DEPTH);
    gl.uniform1f(this.u.maxWidth!, stack.maxWidth);
    gl.uniform1i(this.u.count!, stack.count);
    gl.uniform1i(this.u.oldest!, o.oldestSlot % this.dims.slots);
    gl.uniform1i(this.u.slots!, this.dims.slots);
    gl.uniform1i(this.u.mode!, MODE_INDEX[o.scale.mode]);
    gl.uniform1f(this.u.lo!, o.scale.lo);
    gl.uniform1f(this.u.hi!, o.scale.hi);
    const b = blankColour(o.scale.theme);
    gl.uniform3f(this.u.blank!, b[0] / 255, b[1] / 255, b[2] / 255);
    gl.drawArraysInstanced(gl.TRIANGLE_STRIP, 0, 4, planes.length);
  }

  dispose(): void {
    this.gl.getExtension('WEBGL_lose_context')?.loseContext();
  }
}

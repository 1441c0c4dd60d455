// The shared probe-frame vectors (test/vectors/probe-frames.json, written by
// scripts/gen-probe-vectors.mjs) against the TypeScript side of the protocol.
// native-host/tests/test_protocol_vectors.py holds the Python probe to the same file.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { HEALTH_COLUMNS, ProtocolError, countsToNumbers, float32s, float64s, int32s, parseProbeFrame } from '../../src/protocol/probe';
import { ProbeFrameReader, decodeProbeFrameBody, encodeFrameHeader } from '../../native-host/src/probe-frames';

interface Vector {
  name: string;
  frame: unknown;
  msgpack_hex: string;
  invalid?: boolean;
  expect_error?: string;
}

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const vectors: Vector[] = JSON.parse(fs.readFileSync(path.join(root, 'test/vectors/probe-frames.json'), 'utf8'));
const valid = vectors.filter((v) => !v.invalid);
const invalid = vectors.filter((v) => v.invalid);

/** JSON form of a decoded value: binary data as {"$bin": hex}. */
function toJson(value: unknown): unknown {
  if (value instanceof Uint8Array) return { $bin: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('hex') };
  if (Array.isArray(value)) return value.map(toJson);
  if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toJson(v)]));
  return value;
}

function fromJson(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(fromJson);
  if (value && typeof value === 'object') {
    const obj = value as Record<string, unknown>;
    if (typeof obj.$bin === 'string' && Object.keys(obj).length === 1) return Buffer.from(obj.$bin, 'hex');
    return Object.fromEntries(Object.entries(obj).map(([k, v]) => [k, fromJson(v)]));
  }
  return value;
}

describe('probe frame vectors', () => {
  it('cover every frame type, with and without optional fields, and invalid frames', () => {
    expect(new Set(valid.map((v) => (v.frame as { t: string }).t))).toEqual(new Set(['hello', 'counts', 'tokens', 'error', 'bye', 'layers', 'explanation', 'expert-params', 'refused']));
    expect(valid.some((v) => (v.frame as { error?: unknown }).error)).toBe(true);
    expect(valid.some((v) => ((v.frame as { models?: { layers: unknown[] }[] }).models ?? []).some((m) => m.layers.length > 1))).toBe(true);
    expect(invalid.length).toBeGreaterThanOrEqual(4);
    expect(new Set(vectors.map((v) => v.name)).size).toBe(vectors.length);
  });

  it('are what scripts/gen-probe-vectors.mjs writes (the file was not edited by hand)', () => {
    execFileSync(process.execPath, [path.join(root, 'scripts/gen-probe-vectors.mjs'), '--check'], { cwd: root, stdio: 'pipe' });
  });

  it.each(vectors.map((v) => [v.name, v] as const))('%s: msgpackr packs the frame to the vector bytes', (_name, v) => {
    const packr = new Packr({ useRecords: false, variableMapSize: true });
    expect(packr.pack(fromJson(v.frame)).toString('hex')).toBe(v.msgpack_hex);
  });

  it.each(valid.map((v) => [v.name, v] as const))('%s: decodes to a valid frame equal to the JSON value', (_name, v) => {
    const frame = decodeProbeFrameBody(Buffer.from(v.msgpack_hex, 'hex'));
    expect(parseProbeFrame(frame)).toEqual(frame);
    expect(toJson(frame)).toEqual(v.frame);
    // The same bytes through the stream reader, one byte at a time.
    const bytes = Buffer.from(v.msgpack_hex, 'hex');
    const stream = Buffer.concat([encodeFrameHeader(bytes.length), bytes]);
    const reader = new ProbeFrameReader();
    const frames = [];
    for (let i = 0; i < stream.length; i++) frames.push(...reader.feed(stream.subarray(i, i + 1)));
    expect(frames.map(toJson)).toEqual([v.frame]);
  });

  it('counts payloads decode to the int64 values they were written from', () => {
    const small = decodeProbeFrameBody(Buffer.from(valid.find((v) => v.name === 'counts')!.msgpack_hex, 'hex'));
    expect(small.t).toBe('counts');
    if (small.t !== 'counts') return;
    expect(countsToNumbers(small.counts)).toEqual([12, 0, 7, 5, 3, 9, 0, 12]);
    const large = decodeProbeFrameBody(Buffer.from(valid.find((v) => v.name === 'counts_large')!.msgpack_hex, 'hex'));
    if (large.t !== 'counts') throw new Error('expected counts');
    expect(countsToNumbers(large.counts)).toEqual(Array.from({ length: 64 }, (_, i) => (i % 5 === 0 ? 2 ** 33 + i : i * 1000)));
  });

  it('binary payloads of the full counts and tokens frames decode to what they were written from', () => {
    const full = decodeProbeFrameBody(Buffer.from(valid.find((v) => v.name === 'counts_full')!.msgpack_hex, 'hex'));
    if (full.t !== 'counts') throw new Error('expected counts');
    expect(full.health!.byteLength).toBe(full.layers * HEALTH_COLUMNS.length * 8);
    expect(float64s(full.health!)).toEqual([48, 61.25, 130.5, 0, 0, 0, 48, 58.75, 122.0625, 1, 2, 3]);
    expect(float64s(full.max_logit!)).toEqual([3.5, -0.25]);
    const tokens = decodeProbeFrameBody(Buffer.from(valid.find((v) => v.name === 'tokens')!.msgpack_hex, 'hex'));
    if (tokens.t !== 'tokens') throw new Error('expected tokens');
    expect(int32s(tokens.token_ids!)).toEqual([1, 4711, 63]);
    expect(tokens.texts).toEqual(['<s>', '▁données', 'ü']);
    expect(int32s(tokens.layers[0].ids)).toEqual([0, 3, 2, 1, 3, 0]);
    expect(float32s(tokens.layers[1].weights!)).toEqual([0.5, 0.5, 0.875, 0.125, 0.5, 0.5]);
  });

  it.each(invalid.map((v) => [v.name, v] as const))('%s: rejected with a ProtocolError saying what is wrong', (_name, v) => {
    const bytes = Buffer.from(v.msgpack_hex, 'hex');
    let caught: unknown;
    try {
      decodeProbeFrameBody(bytes);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ProtocolError);
    expect((caught as Error).message).toContain(v.expect_error);
    expect(() => parseProbeFrame(fromJson(v.frame))).toThrow(v.expect_error);
  });
});

/**
 * The export encoders on their own: TFRecord framing and protobuf bytes against published test
 * vectors, and the Chrome trace against the Trace Event Format's rules. That TensorBoard, W&B
 * and DevTools really read the files is tested end to end (test/e2e/cli.test.ts).
 */
import { describe, expect, it } from 'vitest';
import { buildReport } from '../../cli/routing-report';
import { chromeTrace, layerTid, PASSES_TID, type ChromeTrace } from '../../cli/export/chrome-trace';
import { crc32c, maskedCrc32c, ProtoWriter, tfRecord } from '../../cli/export/tfrecord';
import { tensorboardEvents } from '../../cli/export/tensorboard';
import { BLOCK_MS_PER_PASS, fixtureRecording, L, PASSES_PER_UPDATE, PID, UPDATES, UPDATE_EVERY_S } from './recording-fixture';

const bytes = (s: string) => new TextEncoder().encode(s);

describe('TFRecord framing', () => {
  it('computes CRC-32C (Castagnoli) and TensorFlow\'s mask', () => {
    expect(crc32c(bytes('123456789'))).toBe(0xe3069283); // the CRC catalogue's check value
    expect(crc32c(new Uint8Array(32))).toBe(0x8a9136aa); // RFC 3720 B.4: 32 bytes of zeros
    expect(crc32c(new Uint8Array(32).fill(0xff))).toBe(0x62a8ab43); // RFC 3720 B.4: 32 bytes of ones
    const crc = crc32c(bytes('abc'));
    expect(maskedCrc32c(bytes('abc'))).toBe(((((crc >>> 15) | (crc << 17)) >>> 0) + 0xa282ead8) >>> 0);
  });

  it('frames a record as length, masked CRC of the length, data, masked CRC of the data', () => {
    const data = bytes('hello');
    const record = tfRecord(data);
    const view = new DataView(record.buffer);
    expect(record.length).toBe(8 + 4 + 5 + 4);
    expect(view.getBigUint64(0, true)).toBe(5n);
    expect(view.getUint32(8, true)).toBe(maskedCrc32c(record.subarray(0, 8)));
    expect(new TextDecoder().decode(record.subarray(12, 17))).toBe('hello');
    expect(view.getUint32(17, true)).toBe(maskedCrc32c(data));
  });
});

describe('protobuf writer', () => {
  it('writes the wire format byte for byte', () => {
    // Field 1 varint 150 is the protobuf guide's example: 08 96 01.
    expect(Array.from(new ProtoWriter().int64(1, 150).finish())).toEqual([0x08, 0x96, 0x01]);
    // Negative int64: ten bytes of two's complement.
    expect(Array.from(new ProtoWriter().int64(2, -1).finish())).toEqual([0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    // Field 2 string "testing": 12 07 74 65 73 74 69 6e 67.
    expect(Array.from(new ProtoWriter().string(2, 'testing').finish())).toEqual([0x12, 0x07, ...bytes('testing')]);
    // Field 1 double 1.0 (wire type 1), field 2 float 1.0 (wire type 5), little-endian.
    expect(Array.from(new ProtoWriter().double(1, 1).float(2, 1).finish())).toEqual([0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x15, 0, 0, 0x80, 0x3f]);
    // Nested message and packed doubles: length-delimited.
    expect(Array.from(new ProtoWriter().message(5, (w) => w.int64(1, 1)).packedDoubles(6, [0]).finish())).toEqual([0x2a, 0x02, 0x08, 0x01, 0x32, 0x08, 0, 0, 0, 0, 0, 0, 0, 0]);
  });

  it('starts the event file with the brain.Event:2 file-version record and has one record per step', () => {
    const report = buildReport(fixtureRecording());
    const file = tensorboardEvents(report);
    const view = new DataView(file.buffer, file.byteOffset);
    let at = 0;
    const records: Uint8Array[] = [];
    while (at < file.length) {
      const n = Number(view.getBigUint64(at, true));
      records.push(file.subarray(at + 12, at + 12 + n));
      expect(view.getUint32(at + 12 + n, true)).toBe(maskedCrc32c(records.at(-1)!));
      at += 16 + n;
    }
    expect(records).toHaveLength(1 + report.series.points.length);
    expect(new TextDecoder().decode(records[0]!.subarray(-13))).toBe('brain.Event:2');
  });
});

/** The Trace Event Format's rules for what this export writes (phases X, C, M). Returns the problems found. */
function traceProblems(trace: ChromeTrace): string[] {
  const problems: string[] = [];
  const isInt = (v: unknown) => Number.isInteger(v);
  const metadata = new Set(['process_name', 'process_labels', 'process_sort_index', 'thread_name', 'thread_sort_index']);
  const byThread = new Map<string, Array<{ ts: number; end: number }>>();
  for (const [i, e] of trace.traceEvents.entries()) {
    const where = `event ${i} (${e.ph} ${e.name})`;
    if (typeof e.name !== 'string' || !e.name) problems.push(`${where}: no name`);
    if (!isInt(e.pid) || !isInt(e.tid)) problems.push(`${where}: pid and tid should be integers`);
    if (e.ph === 'M') {
      if (!metadata.has(e.name)) problems.push(`${where}: unknown metadata event`);
      if (!e.args || !('name' in e.args || 'sort_index' in e.args)) problems.push(`${where}: metadata without args.name or args.sort_index`);
      continue;
    }
    if (typeof e.ts !== 'number' || !Number.isFinite(e.ts) || e.ts < 0) problems.push(`${where}: ts should be a non-negative number of microseconds`);
    if (e.ph === 'X') {
      if (typeof e.dur !== 'number' || !(e.dur >= 0)) problems.push(`${where}: a complete event needs dur >= 0`);
      const key = `${e.pid}:${e.tid}`;
      if (!byThread.has(key)) byThread.set(key, []);
      byThread.get(key)!.push({ ts: e.ts!, end: e.ts! + e.dur! });
    } else if (e.ph === 'C') {
      if (!e.args || !Object.values(e.args).every((v) => typeof v === 'number' && Number.isFinite(v))) problems.push(`${where}: counter args should be numbers`);
    } else {
      problems.push(`${where}: unexpected phase`);
    }
  }
  // Slices on one thread must nest: here none is nested, so none may overlap another.
  for (const [key, slices] of byThread) {
    slices.sort((a, b) => a.ts - b.ts);
    for (let i = 1; i < slices.length; i++) if (slices[i]!.ts < slices[i - 1]!.end) problems.push(`thread ${key}: slices overlap at ${slices[i]!.ts}`);
  }
  return problems;
}

describe('Chrome trace / Perfetto export', () => {
  const recording = fixtureRecording();
  const trace = chromeTrace(recording, buildReport(recording));
  const slices = trace.traceEvents.filter((e) => e.ph === 'X');

  it('follows the trace event format', () => {
    expect(traceProblems(trace)).toEqual([]);
    expect(JSON.parse(JSON.stringify(trace))).toEqual(trace); // plain JSON, nothing lost
  });

  it('has one slice per interval on the passes track and on each layer track, as long as the measured block time', () => {
    const intervals = UPDATES - 1;
    expect(slices).toHaveLength(intervals * (1 + L));
    const passes = slices.filter((e) => e.tid === PASSES_TID);
    expect(passes[0]).toMatchObject({ name: 'passes 6-10', pid: PID, ts: 0, dur: UPDATE_EVERY_S * 1e6, args: { passes: PASSES_PER_UPDATE, prefill: 5, decode: 0 } });
    for (let l = 0; l < L; l++) {
      const layer = slices.filter((e) => e.tid === layerTid(l));
      expect(layer).toHaveLength(intervals);
      expect(layer[3]).toMatchObject({ ts: 3 * UPDATE_EVERY_S * 1e6, dur: BLOCK_MS_PER_PASS[l]! * PASSES_PER_UPDATE * 1000, args: { ms_per_pass: BLOCK_MS_PER_PASS[l] } });
    }
  });

  it('has load, entropy and time counters per interval', () => {
    const counters = trace.traceEvents.filter((e) => e.ph === 'C');
    const load1 = counters.filter((e) => e.name === 'layer 1 expert load');
    expect(load1).toHaveLength(UPDATES - 1);
    expect(load1[0]!.args).toEqual({ 'expert 0': 0.5, 'expert 1': 0.3125, 'expert 2': 0.1875, 'expert 3': 0 });
    expect(counters.find((e) => e.name === 'router entropy')!.args).toEqual({ 'layer 0': 0.5, 'layer 1': 0.25 });
    expect(counters.find((e) => e.name === 'ms per pass')!.args).toEqual({ 'layer 0': 2, 'layer 1': 6 });
    expect(counters.find((e) => e.name === 'load entropy')!.args!['layer 0']).toBe(1);
  });
});

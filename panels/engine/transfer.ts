/**
 * Handing host messages to the analysis worker cheaply. An update's counts arrive from the port as
 * a JavaScript array (one number per expert of every layer: 32,768 for 64 x 512, 131,072 for
 * 128 x 1024), and posting such an array to a worker costs ~40 ns per element on the main thread
 * to serialize, 30 times a second. The same numbers in a Float64Array are one memcpy, and
 * transferred, not even that. The Analyzer reads any ArrayLike, so it takes either.
 *
 * Back the other way, an analysis carries the recent token records: per pass and layer two small
 * typed arrays (768 passes x layers for 64 layers), each its own ArrayBuffer to deserialize on the
 * main thread. Packed as views of one buffer they cost a quarter of that.
 */
import type { HostMessage, TokenUpdate } from '../../src/protocol/panel';
import type { TokenRow } from './analyzer';

const NUMERIC = ['counts', 'tokens', 'health', 'maxLogit', 'timeS'] as const;

/** The message with its long numeric arrays as typed arrays, and the buffers to transfer. */
export function forWorker(message: HostMessage): { message: HostMessage; transfer: ArrayBuffer[] } {
  if (message.type === 'tokens') return tokensForWorker(message);
  if (message.type !== 'update') return { message, transfer: [] };
  const copy: Record<string, unknown> = { ...message };
  const transfer: ArrayBuffer[] = [];
  for (const key of NUMERIC) {
    const v = message[key];
    if (!Array.isArray(v)) continue;
    const typed = Float64Array.from(v);
    copy[key] = typed;
    transfer.push(typed.buffer);
  }
  return { message: copy as unknown as HostMessage, transfer };
}

/**
 * A pass's token records (per layer n x k expert ids and weights: 16,384 of each for 32 tokens,
 * 64 layers and top-8) as views of one transferred buffer: ids as Int32Array, weights as
 * Float32Array, the types the analyzer keeps them in. As JavaScript arrays the structured clone
 * cost the main thread about as much as an update's counts.
 */
function tokensForWorker(message: TokenUpdate): { message: HostMessage; transfer: ArrayBuffer[] } {
  const packer = new LayerPacker(message.layers);
  const layers = message.layers.map((l) => packer.pack(l));
  return { message: { ...message, layers } as unknown as HostMessage, transfer: [packer.buffer] };
}

/** The same rows with every layer's ids and weights as views of one shared buffer (copies; the worker's rows are left as they are). */
export function packTokenRows(rows: readonly TokenRow[]): TokenRow[] {
  const packer = new LayerPacker(rows.flatMap((r) => r.layers));
  return rows.map((r) => ({ ...r, layers: r.layers.map((l) => packer.pack(l)) }));
}

interface IdsAndWeights {
  ids: ArrayLike<number>;
  weights: ArrayLike<number> | null;
}

/** Copies layers' ids (as Int32) and weights (as Float32) into views of one buffer sized for all of them. */
class LayerPacker {
  readonly buffer: ArrayBuffer;
  private offset = 0;

  constructor(layers: readonly IdsAndWeights[]) {
    let values = 0;
    for (const l of layers) values += l.ids.length + (l.weights?.length ?? 0);
    this.buffer = new ArrayBuffer(4 * values);
  }

  pack<T extends IdsAndWeights>(l: T): Omit<T, 'ids' | 'weights'> & { ids: Int32Array; weights: Float32Array | null } {
    const ids = new Int32Array(this.buffer, this.offset, l.ids.length);
    ids.set(l.ids);
    this.offset += 4 * l.ids.length;
    let weights: Float32Array | null = null;
    if (l.weights) {
      weights = new Float32Array(this.buffer, this.offset, l.weights.length);
      weights.set(l.weights);
      this.offset += 4 * l.weights.length;
    }
    return { ...l, ids, weights };
  }
}

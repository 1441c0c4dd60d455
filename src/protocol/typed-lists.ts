/**
 * Host messages with their long lists of numbers as typed arrays, for the hops between threads
 * that copy by structured clone: service worker -> panel (src/background/service-worker.ts; the
 * handshake is in panel-channel.ts) and panel -> analysis worker (panels/engine/transfer.ts).
 *
 * An update holds one number per expert of every layer (32,768 for 64 x 512, 131,072 for
 * 128 x 1024), a token record 2 x tokens x layers x top-k. As JSON or as a structured clone of a
 * JavaScript array every number is parsed or cloned on its own (~1 ms per 64 x 512 update on the
 * receiving thread, 30 times a second); a typed array is one memcpy, and transferred not even
 * that. Float64 is lossless for the numbers the host sends (JSON numbers are doubles), so a
 * message converted here still says exactly what the host said; JSON.stringify needs
 * `typedListsAsArrays` to write it back out as lists. A list holding null (JSON's spelling of a
 * non-finite number: the -Infinity largest logit of a layer that has seen none, a NaN mixing
 * weight) has no typed equivalent and stays a list: an update's on its own, a token record's with
 * the whole record.
 */
import type { HostMessage, JobUpdate, TokenUpdate } from './panel';

/** The fields of an update that hold one number per expert or per layer. */
export const UPDATE_NUMBER_LISTS = ['counts', 'tokens', 'health', 'maxLogit', 'timeS', 'expertS', 'backwardS'] as const;

export interface WithTransfer {
  message: HostMessage;
  /** The buffers the message's typed arrays live in: to transfer, not copy, with it. */
  transfer: ArrayBuffer[];
}

/**
 * The message with its long number lists (an update's, a token record's) as typed arrays of their
 * own, copies whatever the lists were (arrays or typed arrays): the message given is left as it is.
 * Token records' ids and weights go as `layerTypes` says: Float64 for a lossless hop, Int32 and
 * Float32 for the analysis worker, which keeps them so. Other messages are returned as they are.
 */
export function withTypedLists(message: HostMessage, layerTypes: LayerTypes = LOSSLESS): WithTransfer {
  if (message.type === 'update') return updateWithTypedLists(message);
  if (message.type === 'tokens') {
    if (message.layers.some((l) => holdsNull(l.ids) || holdsNull(l.weights))) return { message, transfer: [] };
    const packer = new LayerPacker(message.layers, layerTypes);
    const layers = message.layers.map((l) => packer.pack(l));
    return { message: { ...message, layers } as unknown as TokenUpdate, transfer: [packer.buffer] };
  }
  return { message, transfer: [] };
}

function updateWithTypedLists(message: JobUpdate): WithTransfer {
  const copy: Record<string, unknown> = { ...message };
  const transfer: ArrayBuffer[] = [];
  for (const key of UPDATE_NUMBER_LISTS) {
    const v: unknown = message[key];
    if (!(Array.isArray(v) || ArrayBuffer.isView(v)) || holdsNull(v)) continue;
    const typed = new Float64Array(v as ArrayLike<number>);
    copy[key] = typed;
    transfer.push(typed.buffer);
  }
  return { message: copy as unknown as JobUpdate, transfer };
}

/** A list (not a typed array) with a null in it: no typed array can say that. */
function holdsNull(v: unknown): boolean {
  return Array.isArray(v) && v.includes(null);
}

/** For JSON.stringify: typed arrays written as lists, as the host sent them. */
export function typedListsAsArrays(_key: string, value: unknown): unknown {
  return ArrayBuffer.isView(value) && !(value instanceof DataView) ? Array.from(value as unknown as ArrayLike<number>) : value;
}

/** Element types for token records' ids and weights; both 4 bytes or both 8, so that every view is aligned. */
export type LayerTypes = { ids: Int32ArrayConstructor; weights: Float32ArrayConstructor } | { ids: Float64ArrayConstructor; weights: Float64ArrayConstructor };
export const LOSSLESS: LayerTypes = { ids: Float64Array, weights: Float64Array };
export const COMPACT: LayerTypes = { ids: Int32Array, weights: Float32Array };

interface IdsAndWeights {
  ids: ArrayLike<number>;
  weights: ArrayLike<number> | null;
}

/**
 * Copies layers' ids and weights into views of one buffer sized for all of them: one buffer to
 * transfer instead of two per layer (64 layers: 128 buffers, each with its own cost to clone).
 */
export class LayerPacker {
  readonly buffer: ArrayBuffer;
  private offset = 0;
  private readonly bytes: number;

  constructor(layers: readonly IdsAndWeights[], private readonly types: LayerTypes) {
    let values = 0;
    for (const l of layers) values += l.ids.length + (l.weights?.length ?? 0);
    this.bytes = types.ids.BYTES_PER_ELEMENT;
    this.buffer = new ArrayBuffer(this.bytes * values);
  }

  pack<T extends IdsAndWeights>(l: T): Omit<T, 'ids' | 'weights'> & { ids: Int32Array | Float64Array; weights: Float32Array | Float64Array | null } {
    const ids = new this.types.ids(this.buffer, this.offset, l.ids.length);
    ids.set(l.ids);
    this.offset += this.bytes * l.ids.length;
    let weights: Float32Array | Float64Array | null = null;
    if (l.weights) {
      weights = new this.types.weights(this.buffer, this.offset, l.weights.length);
      weights.set(l.weights);
      this.offset += this.bytes * l.weights.length;
    }
    return { ...l, ids, weights };
  }
}

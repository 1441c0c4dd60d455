/**
 * Handing host messages to the analysis worker cheaply, and analyses back. An update's counts
 * (one number per expert of every layer) and a pass's token records go over as typed arrays
 * transferred with the message (src/protocol/typed-lists.ts): posting them as JavaScript arrays
 * cost the main thread ~40 ns per element to serialize, 30 times a second. The message the store
 * keeps (for the status bar, a recording) is left as it is: the worker gets copies.
 *
 * Back the other way, an analysis carries the recent token records: per pass and layer two small
 * typed arrays (768 passes x layers for 64 layers), each its own ArrayBuffer to deserialize on the
 * main thread. Packed as views of one buffer they cost a quarter of that.
 */
import type { HostMessage } from '../../src/protocol/panel';
import { COMPACT, LayerPacker, withTypedLists, type WithTransfer } from '../../src/protocol/typed-lists';
import type { TokenRow } from './analyzer';

/** The message with its long number lists as typed arrays (token ids as Int32, weights as Float32, as the analyzer keeps them), and the buffers to transfer. */
export function forWorker(message: HostMessage): WithTransfer {
  return withTypedLists(message, COMPACT);
}

/** The same rows with every layer's ids and weights as views of one shared buffer (copies; the worker's rows are left as they are). */
export function packTokenRows(rows: readonly TokenRow[]): TokenRow[] {
  const packer = new LayerPacker(rows.flatMap((r) => r.layers), COMPACT);
  // COMPACT packs ids as Int32 and weights as Float32: the TokenRow types.
  return rows.map((r) => ({ ...r, layers: r.layers.map((l) => packer.pack(l) as TokenRow['layers'][number]) }));
}

/**
 * Expert placement for expert parallelism: from the observed load of each expert of a layer,
 * which experts to replicate and which device should hold each replica, so that the devices
 * share the layer's tokens as evenly as possible.
 *
 * Model: G devices with S = (E + R) / G expert slots each (E experts, R redundant slots in all).
 * An expert with c replicas has its load split evenly over them (as dispatchers that spread an
 * expert's tokens over its replicas do), so a device's predicted load is the sum over its slots of
 * load[e] / c[e]. Balancedness = mean device load / max device load (1 is perfect; the same
 * mean/max that balancedness() in load.ts reports for experts, here over devices).
 *
 * - contiguousPlacement: the usual starting point, expert e on device floor(e / (E / G)), no replicas.
 * - eplbPlacement: the reference, DeepSeek's EPLB global policy (github.com/deepseek-ai/EPLB,
 *   eplb.py, replicate_experts + balanced_packing with one group and one node): give each redundant
 *   slot to the expert with the largest load per replica, then place replicas heaviest first, each on
 *   the lightest device that still has a free slot.
 * - planPlacement: ours. The same start, then (1) replicas of one expert go to different devices
 *   where a slot allows (two on one device spread nothing), (2) pairwise swaps between the busiest
 *   device and any other while they lower the busier of the two, and (3) moving a redundant slot from
 *   one expert to another when that lowers the busiest device after (1) and (2): greedy replication
 *   minimizes the largest replica's load, which is not the same as the largest device's load once
 *   replicas must fit in whole slots (e.g. loads 9 and 1 on 2 devices x 2 slots: EPLB gives expert 0
 *   three replicas, 0.83; two replicas each give 4.5 + 0.5 per device, 1.0).
 * Every step keeps or lowers the busiest device's predicted load, so planPlacement is never worse
 * than EPLB on the loads it was given.
 */

export interface Placement {
  devices: number;
  slotsPerDevice: number;
  /** The expert held by each slot, device after device: device g holds slots[g * S .. g * S + S). */
  slots: number[];
  /** Replicas of each expert (at least 1). */
  replicas: number[];
  /** Predicted load of each device. */
  deviceLoad: number[];
  /** Mean over max of deviceLoad; NaN when there is no load. */
  balancedness: number;
}

export class PlacementError extends Error {}

function check(load: readonly number[], devices: number, redundant: number): number {
  const e = load.length;
  if (!Number.isInteger(devices) || devices < 1) throw new PlacementError(`devices should be a whole number of at least 1, not ${devices}`);
  if (!Number.isInteger(redundant) || redundant < 0) throw new PlacementError(`redundant slots should be a whole number of at least 0, not ${redundant}`);
  if (e < 1) throw new PlacementError('no experts to place');
  if (load.some((x) => !(x >= 0) || !Number.isFinite(x))) throw new PlacementError('every expert load should be a finite number of at least 0');
  if ((e + redundant) % devices !== 0) {
    throw new PlacementError(`${e} experts and ${redundant} redundant slots make ${e + redundant} slots, which ${devices} devices cannot share equally`);
  }
  return (e + redundant) / devices;
}

/** Predicted load per device and the balancedness of a placement. */
export function evaluatePlacement(load: readonly number[], slots: readonly number[], replicas: readonly number[], devices: number): { deviceLoad: number[]; balancedness: number } {
  const s = slots.length / devices;
  const deviceLoad = new Array<number>(devices).fill(0);
  slots.forEach((e, i) => (deviceLoad[Math.floor(i / s)]! += load[e]! / replicas[e]!));
  const max = Math.max(...deviceLoad);
  const mean = deviceLoad.reduce((a, b) => a + b, 0) / devices;
  return { deviceLoad, balancedness: max > 0 ? mean / max : NaN };
}

function placement(load: readonly number[], slots: number[], replicas: number[], devices: number): Placement {
  return { devices, slotsPerDevice: slots.length / devices, slots, replicas, ...evaluatePlacement(load, slots, replicas, devices) };
}

/** Expert e on device floor(e / (E / G)), no replicas (needs E divisible by G). */
export function contiguousPlacement(load: readonly number[], devices: number): Placement {
  check(load, devices, 0);
  return placement(load, load.map((_, e) => e), load.map(() => 1), devices);
}

/** EPLB's replicate_experts: each redundant slot to the expert with the largest load per replica (first on ties). */
export function greedyReplicas(load: readonly number[], redundant: number): number[] {
  const replicas = load.map(() => 1);
  for (let r = 0; r < redundant; r++) {
    let best = 0;
    for (let e = 1; e < load.length; e++) if (load[e]! / replicas[e]! > load[best]! / replicas[best]!) best = e;
    replicas[best]! += 1;
  }
  return replicas;
}

/** The replicas as EPLB orders its physical experts: every expert once, then the redundant ones in the order they were added. */
function eplbPhysical(load: readonly number[], redundant: number): { physical: number[]; replicas: number[] } {
  const replicas = load.map(() => 1);
  const physical = load.map((_, e) => e);
  for (let r = 0; r < redundant; r++) {
    let best = 0;
    for (let e = 1; e < load.length; e++) if (load[e]! / replicas[e]! > load[best]! / replicas[best]!) best = e;
    physical.push(best);
    replicas[best]! += 1;
  }
  return { physical, replicas };
}

/** EPLB's balanced_packing: heaviest first (stable on ties), each to the lightest device with a free slot (lowest index on ties). */
export function eplbPlacement(load: readonly number[], devices: number, redundant: number): Placement {
  const s = check(load, devices, redundant);
  const { physical, replicas } = eplbPhysical(load, redundant);
  const weight = physical.map((e) => load[e]! / replicas[e]!);
  const order = physical.map((_, i) => i).sort((a, b) => weight[b]! - weight[a]! || a - b);
  const packLoad = new Array<number>(devices).fill(0);
  const packItems: number[][] = Array.from({ length: devices }, () => []);
  for (const i of order) {
    let pack = -1;
    for (let g = 0; g < devices; g++) if (packItems[g]!.length < s && (pack < 0 || packLoad[g]! < packLoad[pack]!)) pack = g;
    packItems[pack]!.push(physical[i]!);
    packLoad[pack]! += weight[i]!;
  }
  return placement(load, packItems.flat(), replicas, devices);
}

export interface PlanOptions {
  /** Most moves of a redundant slot between experts to try (each followed by a re-packing). Default 4 x (R + G). */
  maxReplicaMoves: number;
}

/** Our placement: EPLB's start, then distinct devices for replicas, swaps, and moving redundant slots (see the file comment). */
export function planPlacement(load: readonly number[], devices: number, redundant: number, options: Partial<PlanOptions> = {}): Placement {
  const s = check(load, devices, redundant);
  const maxMoves = options.maxReplicaMoves ?? redundant + devices;
  let replicas = greedyReplicas(load, redundant);
  let best = pack(load, replicas, devices, s);
  const eplb = eplbPlacement(load, devices, redundant);
  if (Math.max(...eplb.deviceLoad) < maxOf(best)) best = { groups: chunk(eplb.slots, s), loads: eplb.deviceLoad.slice() };
  const perReplica = (e: number, c = replicas[e]!) => load[e]! / c;
  for (let move = 0; move < maxMoves && redundant > 0; move++) {
    // A redundant slot moves from one expert to another: from an expert of the busiest device that
    // has several replicas there or from those that can spare one most cheaply, to an expert of the
    // busiest device or to those with the heaviest replicas.
    const onBusiest = [...new Set(best.groups[argmax(best.loads)])];
    const experts = load.map((_, e) => e);
    const spare = experts.filter((e) => replicas[e]! > 1);
    const froms = new Set([...onBusiest.filter((e) => replicas[e]! > 1),
      ...spare.sort((a, b) => perReplica(a, replicas[a]! - 1) - perReplica(b, replicas[b]! - 1)).slice(0, 6)]);
    const tos = new Set([...onBusiest, ...experts.sort((a, b) => perReplica(b) - perReplica(a)).slice(0, 6)]);
    // screen every pair by greedy packing alone, then pack the three most promising fully
    const screened: Array<{ trial: number[]; peak: number }> = [];
    for (const from of froms) {
      for (const to of tos) {
        if (from === to) continue;
        const trial = replicas.slice();
        trial[from]! -= 1;
        trial[to]! += 1;
        screened.push({ trial, peak: maxOf(greedyPack(load, trial, devices, s)) });
      }
    }
    screened.sort((a, b) => a.peak - b.peak);
    let improved: { replicas: number[]; packed: Packed } | null = null;
    for (const { trial } of screened.slice(0, 3)) {
      const packed = pack(load, trial, devices, s);
      if (maxOf(packed) < (improved ? maxOf(improved.packed) : maxOf(best)) * (1 - 1e-12)) improved = { replicas: trial, packed };
    }
    if (!improved) break;
    replicas = improved.replicas;
    best = improved.packed;
  }
  return placement(load, best.groups.flat(), replicas, devices);
}

interface Packed {
  groups: number[][];
  loads: number[];
}

const maxOf = (p: Packed) => Math.max(...p.loads);

function argmax(values: number[]): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i]! > values[best]!) best = i;
  return best;
}

function chunk(slots: number[], s: number): number[][] {
  const out: number[][] = [];
  for (let i = 0; i < slots.length; i += s) out.push(slots.slice(i, i + s));
  return out;
}

/** Replicas heaviest first onto the lightest device with a free slot, preferring a device that does not hold the expert yet. */
function greedyPack(load: readonly number[], replicas: readonly number[], devices: number, s: number): Packed {
  const items: Array<{ expert: number; w: number }> = [];
  replicas.forEach((c, e) => {
    for (let r = 0; r < c; r++) items.push({ expert: e, w: load[e]! / c });
  });
  items.sort((a, b) => b.w - a.w || a.expert - b.expert);
  const groups: number[][] = Array.from({ length: devices }, () => []);
  const loads = new Array<number>(devices).fill(0);
  for (const item of items) {
    let pick = -1;
    let pickHolds = true;
    for (let g = 0; g < devices; g++) {
      if (groups[g]!.length >= s) continue;
      const holds = replicas[item.expert]! > 1 && groups[g]!.includes(item.expert);
      if (pick < 0 || (pickHolds && !holds) || (holds === pickHolds && loads[g]! < loads[pick]!)) {
        pick = g;
        pickHolds = holds;
      }
    }
    groups[pick]!.push(item.expert);
    loads[pick]! += item.w;
  }
  return { groups, loads };
}

/**
 * greedyPack, then swaps between the busiest device and another while that lowers the busier of
 * the two (each such swap lowers the sum of squared device loads, so this ends), never putting a
 * second replica of an expert on a device.
 */
function pack(load: readonly number[], replicas: readonly number[], devices: number, s: number): Packed {
  const { groups, loads } = greedyPack(load, replicas, devices, s);
  const w = (e: number) => load[e]! / replicas[e]!;
  for (let iter = 0; iter < 4 * devices * s; iter++) {
    const h = argmax(loads);
    const onH = new Set(groups[h]);
    let bestSwap: { d: number; i: number; j: number; peak: number } | null = null;
    for (let d = 0; d < devices; d++) {
      if (d === h) continue;
      const onD = new Set(groups[d]);
      for (let i = 0; i < s; i++) {
        const a = groups[h]![i]!;
        if (onD.has(a) && replicas[a]! > 1) continue;
        for (let j = 0; j < s; j++) {
          const b = groups[d]![j]!;
          const delta = w(a) - w(b);
          if (delta <= 0 || (onH.has(b) && replicas[b]! > 1)) continue;
          const peak = Math.max(loads[h]! - delta, loads[d]! + delta);
          if (peak < loads[h]! * (1 - 1e-12) && (!bestSwap || peak < bestSwap.peak)) bestSwap = { d, i, j, peak };
        }
      }
    }
    if (!bestSwap) break;
    const { d, i, j } = bestSwap;
    const a = groups[h]![i]!;
    const b = groups[d]![j]!;
    groups[h]![i] = b;
    groups[d]![j] = a;
    loads[h]! += w(b) - w(a);
    loads[d]! += w(a) - w(b);
  }
  return { groups, loads };
}

/**
 * Distributed jobs shown as one: the host groups the ranks it is attached to (here, or behind
 * relays on other nodes) by the job they say they belong to, and sends the panel one job per
 * group: its logical model (global expert ids), counts that are the sum over its ranks, and each
 * rank's own figures beside them (JobUpdate.ranks). A rank that dies, disappears with its node or
 * does not agree with the others (another model, a conflicting expert map) is named; the others
 * keep streaming.
 *
 * Ranks come in as JobUpdates with their own process ids or relay handles; the merging and
 * checking are the pure functions of src/analysis/ranks.ts.
 */
import type { AttachMethod, HostMessage, JobUpdate, RankInfo, TokenUpdate } from '../../src/protocol/panel';
import type { LayerInfo, ModelInfo } from '../../src/protocol/probe';
import {
  capitalized, expertMapConflict, goOn, heldByLayer, mergeRankUpdates, modelMismatch, rankList, rankName, rankSample, uncoveredExperts,
} from '../../src/analysis/ranks';

/** A rank joining its job: what its probe said, and where it is. */
export interface RankJoin {
  /** Its id in messages: its pid here, a relay handle otherwise. */
  handle: number;
  pid: number;
  node: string;
  /** The relay it came through, "" when local. */
  via: string;
  rank: number;
  worldSize: number;
  /** The job it belongs to (dist-discovery.ts jobKey, or what discovery said before attaching). */
  key: string;
  label: string;
  model: ModelInfo | undefined;
  method: AttachMethod;
  ms: number;
  python: string;
  framework: string;
  frameworkVersion: string;
  argv: string[];
}

interface Member extends RankJoin {
  status: RankInfo['status'];
  message?: string;
  latest: JobUpdate | null;
}

interface Group {
  handle: number;
  key: string;
  label: string;
  worldSize: number;
  /** The logical model: the first rank's, without what only that rank holds. */
  model: ModelInfo;
  members: Map<number, Member>;
  /** The layer whose per-rank, per-expert counts the updates carry. */
  detailLayer: number;
  dirty: boolean;
  ended: boolean;
  /** Whether the panel asked to detach (then ranks ending is no news). */
  detaching: boolean;
  /** Merged passes as of the last update, and the token-record passes given out since. */
  passes: number;
  lastTokenPass: number;
  tokenPasses: Map<string, number>;
  coverageChecked: boolean;
}

/**
 * Bytes of JSON one rank's count of one expert may take (up to 12 digits and a comma), and what all
 * ranks' counts of the detail layer may take of an update (Chrome refuses a message over 1 MiB; the
 * job's own counts and figures need the rest).
 */
const RANK_COUNT_BYTES = 13;
const RANK_COUNTS_BUDGET = 384 * 1024;

/** The logical model of a job: a rank's model without the experts only that rank holds. */
function logicalModel(model: ModelInfo): ModelInfo {
  return { ...model, layers: model.layers.map(stripHeld) };
}

function stripHeld(layer: LayerInfo): LayerInfo {
  const { held: _held, ...rest } = layer;
  return rest;
}

export class RankGroups {
  private groups = new Map<number, Group>();
  private live = new Map<string, number>();
  private memberOf = new Map<number, number>();

  constructor(
    private readonly send: (message: HostMessage) => void,
    private readonly newHandle: () => number,
    /** Take the probe out of a rank left out of its job (here, or through its relay). */
    private readonly detachRank: (handle: number, via: string) => void = () => {},
    /** A rank sent new counts: the host's next flush has something to send. */
    private readonly onCounts: () => void = () => {},
  ) {}

  /** The group a rank belongs to, if any. */
  groupOf(handle: number): number | undefined {
    return this.memberOf.get(handle);
  }

  isGroup(handle: number): boolean {
    return this.groups.has(handle);
  }

  /** The ranks of a group still attached: their handles and where they are. */
  liveMembers(group: number): Array<{ handle: number; via: string }> {
    const g = this.groups.get(group);
    return g ? [...g.members.values()].filter((m) => m.status === 'attached').map((m) => ({ handle: m.handle, via: m.via })) : [];
  }

  /**
   * Add a rank to its job (a new job on its first rank). Returns the group, and why the rank is
   * left out when it does not agree with the ranks already there (the caller then detaches it).
   */
  join(j: RankJoin): { group: number; excluded?: string } {
    let g = this.groups.get(this.live.get(j.key) ?? -1);
    if (!g) {
      if (!j.model) return { group: -1, excluded: 'its probe found no MoE model' };
      g = {
        handle: this.newHandle(), key: j.key, label: j.label, worldSize: j.worldSize, model: logicalModel(j.model),
        members: new Map(), detailLayer: 0, dirty: false, ended: false, detaching: false, passes: 0, lastTokenPass: 0,
        tokenPasses: new Map(), coverageChecked: false,
      };
      this.groups.set(g.handle, g);
      this.live.set(j.key, g.handle);
      this.send({
        type: 'attached', pid: g.handle, method: 'ranks', ms: j.ms, python: j.python, framework: j.framework,
        frameworkVersion: j.frameworkVersion, argv: j.argv, models: [g.model], warnings: [],
        job: { key: g.key, label: g.label, worldSize: g.worldSize },
      });
    }
    const member: Member = { ...j, status: 'attached', latest: null };
    const excluded = this.basicDisagreement(g, j) ?? this.settle(g, member);
    g.members.set(j.handle, member);
    this.memberOf.set(j.handle, g.handle);
    if (excluded) this.exclude(g, member, excluded);
    this.sendRanks(g);
    this.checkCoverage(g);
    return { group: g.handle, ...(excluded ? { excluded } : {}) };
  }

  private basicDisagreement(g: Group, j: RankJoin): string | null {
    if (!j.model) return 'its probe found no MoE model';
    if (j.worldSize !== g.worldSize) return `it says the world has ${j.worldSize} ranks, the job ${g.worldSize}`;
    const same = [...g.members.values()].find((m) => m.status === 'attached' && m.rank === j.rank);
    if (same) return `${rankName(same)} already is rank ${j.rank} of this job`;
    return null;
  }

  /** Why two ranks cannot both be in one job's view: another model, or expert maps that conflict. */
  private conflict(a: Member, b: Member): string | null {
    const mismatch = modelMismatch(a.model!, b.model!);
    if (mismatch) return `it reports a different model than rank ${a.rank}: ${mismatch.replace(/the job/g, `rank ${a.rank}`)}`;
    const clash = expertMapConflict(a.model!.layers, [{ rank: a.rank, held: heldByLayer(a.model!) }], { rank: b.rank, held: heldByLayer(b.model!) });
    return clash ? `its expert map conflicts with rank ${a.rank}'s: ${clash}` : null;
  }

  /**
   * Settle a newcomer against the ranks already in: where two ranks disagree, the lower rank's
   * word holds (rank 0 is the job's reference), whatever order they were attached in. Returns why
   * the newcomer is left out, or null; ranks above it that disagree with it are left out instead,
   * and the job's model becomes the newcomer's when it was theirs.
   */
  private settle(g: Group, j: Member): string | null {
    const rivals = [...g.members.values()].filter((m) => m.status === 'attached').map((m) => ({ m, why: this.conflict(m, j) })).filter((r) => r.why);
    const lower = rivals.filter((r) => r.m.rank < j.rank).sort((a, b) => a.m.rank - b.m.rank)[0];
    if (lower) return lower.why;
    for (const { m } of rivals) {
      this.exclude(g, m, this.conflict(j, m)!);
      this.detachRank(m.handle, m.via);
    }
    if (modelMismatch(g.model, j.model!)) {
      g.model = logicalModel(j.model!);
      this.send({
        type: 'attached', pid: g.handle, method: 'ranks', ms: j.ms, python: j.python, framework: j.framework,
        frameworkVersion: j.frameworkVersion, argv: j.argv, models: [g.model], warnings: [],
        job: { key: g.key, label: g.label, worldSize: g.worldSize },
      });
    }
    return null;
  }

  private exclude(g: Group, m: Member, why: string) {
    m.status = 'excluded';
    m.message = why;
    m.latest = null;
    g.dirty = true;
    this.send({
      type: 'error', pid: g.handle, code: 'rank_conflict',
      message: `${capitalized(rankName(m))} is left out of the job's view and detached: ${why}. The other ranks go on.`,
      hint: 'Every rank of a job must run the same model; an expert-parallel rank says which experts it holds (moe_probe.attach(model, expert_map=...)).',
    });
  }

  /** Once every rank of the world is here: experts no rank holds are a map that cannot be right. */
  private checkCoverage(g: Group) {
    const merged = [...g.members.values()].filter((m) => m.status !== 'excluded' && m.model);
    if (g.coverageChecked || merged.length < g.worldSize) return;
    g.coverageChecked = true;
    const missing = uncoveredExperts(g.model.layers.map((l) => l.experts), merged.map((m) => heldByLayer(m.model!)));
    if (!missing.length) return;
    const what = missing.slice(0, 3).map((m) => `experts ${m.experts.join(', ')} of ${g.model.layers[m.layer]!.name}`).join('; ');
    this.send({
      type: 'error', pid: g.handle, code: 'rank_conflict',
      message: `All ${g.worldSize} ranks are attached, yet no rank says it holds ${what}: their expert maps do not cover the model, so that load is not seen.`,
      hint: 'Check the expert map each rank gives (moe_probe.attach(model, expert_map=...)) or declares (local_expert_indices).',
    });
  }

  /** A rank's latest cumulative counts (its own update, by its own handle). */
  counts(handle: number, update: JobUpdate) {
    const g = this.groups.get(this.memberOf.get(handle) ?? -1);
    const m = g?.members.get(handle);
    if (!g || !m || m.status === 'excluded' || update.model !== m.model?.id) return;
    if (update.layers !== g.model.layers.length || update.widths.some((w, l) => w !== g.model.layers[l]!.experts)) return;
    m.latest = update;
    g.dirty = true;
    this.onCounts();
  }

  /** What a rank's probe learned about its layers; the job's model follows its first rank. */
  layers(handle: number, model: number, layers: LayerInfo[]) {
    const g = this.groups.get(this.memberOf.get(handle) ?? -1);
    const m = g?.members.get(handle);
    if (!g || !m?.model || m.model.id !== model) return;
    m.model = { ...m.model, layers };
    if (this.lead(g) === m && layers.length === g.model.layers.length) {
      g.model = { ...g.model, layers: layers.map(stripHeld) };
      this.send({ type: 'layers', pid: g.handle, model: g.model.id, layers: g.model.layers });
    }
  }

  /** Token records of the job: those of its lowest live rank, numbered on the job's pass count. */
  tokens(handle: number, update: TokenUpdate) {
    const g = this.groups.get(this.memberOf.get(handle) ?? -1);
    if (!g || this.lead(g)?.handle !== handle) return;
    const key = `${handle}:${update.pass}`;
    let pass = g.tokenPasses.get(key);
    if (pass === undefined) {
      // after the passes already counted, and after every record given out before (parts of one
      // pass, split by layers, keep one number)
      pass = Math.max(g.lastTokenPass + 1, g.passes + 1);
      g.lastTokenPass = pass;
      g.tokenPasses.set(key, pass);
      if (g.tokenPasses.size > 64) g.tokenPasses.delete(g.tokenPasses.keys().next().value!);
    }
    this.send({ ...update, pid: g.handle, pass });
  }

  private lead(g: Group): Member | undefined {
    let best: Member | undefined;
    for (const m of g.members.values()) if (m.status === 'attached' && (!best || m.rank < best.rank)) best = m;
    return best;
  }

  setDetailLayer(group: number, layer: number) {
    const g = this.groups.get(group);
    if (!g || layer >= g.model.layers.length) return;
    g.detailLayer = layer;
    g.dirty = true;
  }

  /** The panel asked to detach the whole job: ranks ending now is what it asked for. */
  detaching(group: number) {
    const g = this.groups.get(group);
    if (g) g.detaching = true;
  }

  /** A rank stopped streaming: detached, exited, or lost with its node. */
  end(handle: number, status: Exclude<RankInfo['status'], 'attached' | 'excluded'>, message: string) {
    this.endAll([handle], status, message);
  }

  /** Ranks that stopped together (a node lost with its relay): said in one message per job. */
  endAll(handles: number[], status: Exclude<RankInfo['status'], 'attached' | 'excluded'>, message: string) {
    const byGroup = new Map<Group, Member[]>();
    for (const handle of handles) {
      const g = this.groups.get(this.memberOf.get(handle) ?? -1);
      const m = g?.members.get(handle);
      if (!g || !m || m.status !== 'attached') continue;
      m.status = status;
      m.message = message;
      byGroup.set(g, [...(byGroup.get(g) ?? []), m]);
    }
    for (const [g, ended] of byGroup) {
      g.dirty = true;
      this.flushGroup(g); // their last counts stay in the job's (what they routed did happen)
      this.sendRanks(g);
      const going = [...g.members.values()].filter((x) => x.status === 'attached').map((x) => x.rank);
      if (!g.detaching && status !== 'detached') {
        const who = ended.length === 1 ? capitalized(rankName(ended[0]!))
          : `${capitalized(rankList(ended.map((m) => m.rank)))} (pids ${ended.map((m) => m.pid).join(', ')} on ${[...new Set(ended.map((m) => m.node))].join(', ')})`;
        this.send({
          type: 'error', pid: g.handle, code: 'rank_lost',
          message: `${who} ${message}; ${goOn(going)}.`,
        });
      }
      if (!going.length) {
        g.ended = true;
        this.live.delete(g.key);
        const last = ended[ended.length - 1]!;
        this.send({
          type: 'detached', pid: g.handle, reason: g.detaching ? 'requested' : status === 'exited' ? 'process_exited' : 'probe_closed',
          message: g.detaching ? undefined : `No rank of the job is left: the last, ${rankName(last)}, ${message}.`,
        });
      }
    }
  }

  /** Send each job whose ranks sent something new its merged update. */
  flush() {
    for (const g of this.groups.values()) if (g.dirty) this.flushGroup(g);
  }

  private flushGroup(g: Group) {
    g.dirty = false;
    const merged = [...g.members.values()].filter((m) => m.latest && m.status !== 'excluded');
    if (!merged.length) return;
    const widths = g.model.layers.map((l) => l.experts);
    const sum = mergeRankUpdates(merged.map((m) => m.latest!), widths);
    g.passes = sum.passes;
    // Each rank's counts of the detail layer, unless so many ranks would not fit one native message.
    const withCounts = merged.length * (widths[g.detailLayer] ?? 0) * RANK_COUNT_BYTES <= RANK_COUNTS_BUDGET;
    this.send({
      type: 'update', pid: g.handle, model: g.model.id, ts: Date.now() / 1000, ...sum,
      ranks: merged.map((m) => rankSample(m.handle, m.rank, m.latest!, g.detailLayer, withCounts)), rankLayer: g.detailLayer,
    });
  }

  private sendRanks(g: Group) {
    this.send({
      type: 'ranks', pid: g.handle, key: g.key, label: g.label, worldSize: g.worldSize,
      ranks: [...g.members.values()].sort((a, b) => a.rank - b.rank).map((m) => ({
        handle: m.handle, pid: m.pid, rank: m.rank, node: m.node, via: m.via, status: m.status,
        held: m.model ? heldByLayer(m.model) : [], ...(m.message ? { message: m.message } : {}),
      })),
    });
  }
}

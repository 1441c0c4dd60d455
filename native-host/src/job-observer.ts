/**
 * What the host does with an attached job's frames besides relaying them: writes them to the
 * history database (history-service.ts) and runs the online change detection on them
 * (src/analysis/anomaly.ts), sending each finding to the panel and storing it with the session.
 * One observer per attached job.
 */
import type { HostMessage } from '../../src/protocol/panel';
import { countsToNumbers, float64s, type LayerInfo, type ModelInfo, type ProbeCounts, type ProbeTokens } from '../../src/protocol/probe';
import { AnomalyDetector, type CumulativeSnapshot } from '../../src/analysis/anomaly';
import { layerLabel } from '../../src/analysis/layers';
import type { HistoryService } from './history-service';

/** A counts frame as the detector reads it, decoded only when read (the detector reads the counts once a block). */
function lazySnapshot(f: ProbeCounts): CumulativeSnapshot {
  let counts: number[] | undefined;
  let tokens: number[] | undefined;
  let health: number[] | null | undefined;
  return {
    ts: f.ts,
    passes: f.passes,
    get counts() {
      return (counts ??= countsToNumbers(f.counts));
    },
    get tokens() {
      return (tokens ??= countsToNumbers(f.tokens));
    },
    get health() {
      if (health === undefined) health = f.health ? float64s(f.health) : null;
      return health;
    },
    timeS: f.time_s ?? null,
  };
}

let nextKey = 1;

export class JobObserver {
  private readonly key = nextKey++;
  private detectors = new Map<number, AnomalyDetector>();
  private lastTs = NaN;

  constructor(
    private readonly pid: number,
    private models: ModelInfo[],
    private readonly send: (m: HostMessage) => void,
    private readonly history: HistoryService | undefined,
    attached: Extract<HostMessage, { type: 'attached' }>,
    private readonly detect = true,
  ) {
    history?.startSession(this.key, pid, attached);
  }

  private detector(model: number, widths: number[]): AnomalyDetector | null {
    if (!this.detect) return null;
    let d = this.detectors.get(model);
    if (!d) {
      const info = this.models.find((m) => m.id === model);
      d = new AnomalyDetector(widths.map((w, i) => {
        const l = info?.layers[i];
        return { label: l ? layerLabel(l) : `layer ${i}`, experts: w, topK: l && l.experts === w ? l.top_k : 1 };
      }));
      this.detectors.set(model, d);
    }
    return d;
  }

  counts(frame: ProbeCounts) {
    this.lastTs = frame.ts;
    this.history?.counts(this.key, frame);
    const found = this.detector(frame.model, frame.widths)?.push(lazySnapshot(frame)) ?? [];
    for (const anomaly of found) {
      this.send({ type: 'anomaly', pid: this.pid, model: frame.model, anomaly });
      this.history?.anomaly(this.key, frame.model, anomaly);
    }
  }

  tokens(frame: ProbeTokens) {
    // on the probe's clock, like the snapshots (a remote job's clock may differ from ours)
    this.history?.tokens(this.key, Number.isFinite(this.lastTs) ? this.lastTs : Date.now() / 1000, frame);
  }

  layers(model: number, layers: LayerInfo[]) {
    this.models = this.models.map((m) => (m.id === model ? { ...m, layers } : m));
    this.detectors.delete(model); // labels and top-k as now understood; the reference is learned again
    this.history?.layers(this.key, model, layers);
  }

  end() {
    this.history?.endSession(this.key);
  }
}

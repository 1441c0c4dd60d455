/**
 * Plain-language findings about a model's routing, for the panel to list.
 */
import type { RoutingDesign } from '../protocol/probe';
import { routerCollapse } from './collapse';
import { loadIsJudgeable, routerEntropyIsJudgeable } from './layers';
import { DEFAULT_THRESHOLDS, resolveThresholds, type Thresholds } from './thresholds';
import { smallestJudgeableWindow } from './window';

export { DEFAULT_THRESHOLDS, type Thresholds };

/** What is known about one layer over the window being judged. */
export interface LayerWindow {
  /** Layer index the finding refers to (the probe's index); default the position in the `layers` array. */
  layer?: number;
  /** How messages name the layer (see layerLabel); default "Layer <layer>". */
  label?: string;
  /** How the layer routes (see RoutingDesign); default 'top-k'. Expert choice has no load verdicts. */
  design?: RoutingDesign;
  /** The router's scoring function when known; 'sigmoid' gates get no router-entropy verdict. */
  gating?: string;
  /** Assignments per expert over the window (see load.ts). */
  counts: ArrayLike<number>;
  /** Router top-k. Default 1. */
  topK?: number;
  /** Tokens routed through the layer in the window; default sum(counts) / topK. */
  tokens?: number;
  /** NaN router logits seen in the window. */
  nanLogits?: number;
  /** +-Inf router logits seen in the window. */
  infLogits?: number;
  /** Tokens dropped in the window because their expert was over capacity (same unit as tokens). */
  droppedTokens?: number;
  /** Mean normalized per-token router entropy over the window (RouterLogitStats.normalizedEntropy). */
  routerEntropy?: number;
}

/** Every kind of finding, for callers that take kinds by name (the command line's --fail-on). */
export const FINDING_KINDS = ['dead_expert', 'imbalance', 'collapse', 'abnormal_entropy', 'nan_logits', 'dropped_tokens'] as const;
export type FindingKind = (typeof FINDING_KINDS)[number];

export interface Finding {
  kind: FindingKind;
  layer: number;
  /** Experts concerned: dead ones (ascending), overloaded ones or the collapse's top-k (busiest first). */
  experts?: number[];
  /** The measured quantity that crossed `threshold` (see findings()). */
  value: number;
  threshold: number;
  /** What `value` measures, when a kind has several tests (collapse: load entropy, top-k share, one expert's token share). */
  metric?: 'load_entropy' | 'top_share' | 'expert_token_share';
  message: string;
}

/**
 * Judge every layer and return its findings, layer by layer, in the order
 * nan_logits, collapse, dead_expert, imbalance, abnormal_entropy, dropped_tokens.
 * `thresholds` overrides DEFAULT_THRESHOLDS field by field. With T the window's
 * tokens (LayerWindow.tokens, else sum(counts)/k), E experts, top-k routing:
 *
 * - nan_logits: nanLogits + infLogits > nonFiniteLogits. value: that count.
 *   A layer with any NaN/Inf logit in the window gets no load finding (collapse,
 *   dead_expert, imbalance): what its router did there is not a choice to judge.
 * - collapse: T >= minTokens, k < E, and (H/ln E < collapseEntropy or the k
 *   busiest experts' share of assignments >= collapseTopShare); see
 *   routerCollapse. value/threshold: the normalized entropy and collapseEntropy
 *   when the entropy test fired, else the top share and collapseTopShare.
 * - dead_expert: experts with count 0, once T >= max(minTokens,
 *   ceil(minExpectedPerExpert * E / k)); see deadExperts. One finding per layer
 *   listing all dead experts. value: T; threshold: that smallest window.
 * - imbalance: MaxVio = (max - mean)/mean > imbalanceMaxVio over the same
 *   window as dead_expert, and only when the layer has not collapsed (collapse
 *   says more). experts: those above (1 + imbalanceMaxVio) * mean, busiest first.
 *   value: MaxVio.
 * - abnormal_entropy: routerEntropy given and < routerEntropyLow (saturated,
 *   near one-hot router) or > routerEntropyHigh (near-uniform router); not for
 *   hash or fixed routing or sigmoid gates, where the softmax of the logits is
 *   not what chooses.
 * - design 'expert-choice': no load findings (every expert takes the same number
 *   of tokens by design).
 * - dropped_tokens: droppedTokens / T > droppedFraction (all dropped counts as 1
 *   when T = 0). value: the fraction.
 *
 * A layer with no counts at all (T = 0) gets no load findings. O(E) per layer;
 * allocates only the findings it returns.
 */
export function findings(layers: readonly LayerWindow[], thresholds: Partial<Thresholds> = {}): Finding[] {
  const th = resolveThresholds(thresholds);
  const out: Finding[] = [];
  for (let li = 0; li < layers.length; li++) judgeLayer(layers[li]!, li, th, out);
  return out;
}

function judgeLayer(w: LayerWindow, position: number, th: Thresholds, out: Finding[]): void {
  const layer = w.layer ?? position;
  const counts = w.counts;
  const e = counts.length;
  const k = Math.max(1, w.topK ?? 1);

  // One pass: total, max, zero count.
  let total = 0;
  let max = -Infinity;
  let zeros = 0;
  for (let i = 0; i < e; i++) {
    const c = counts[i]!;
    total += c;
    if (c > max) max = c;
    if (c === 0) zeros++;
  }
  const tokens = w.tokens ?? total / k;
  const L = w.label ?? `Layer ${layer}`;
  const design = w.design ?? 'top-k';

  const nonFinite = (w.nanLogits ?? 0) + (w.infLogits ?? 0);
  if (nonFinite > th.nonFiniteLogits) {
    out.push({
      kind: 'nan_logits',
      layer,
      value: nonFinite,
      threshold: th.nonFiniteLogits,
      message: `${L}: router logits contained ${fmtInt(w.nanLogits ?? 0)} NaN and ${fmtInt(w.infLogits ?? 0)} infinite values` +
        ' (no collapse, dead-expert or imbalance verdict on this layer in this window)',
    });
  }

  let collapsed = false;
  if (total > 0 && e > 0 && nonFinite === 0 && loadIsJudgeable({ design })) {
    const verdict = routerCollapse(counts, {
      topK: k,
      tokens,
      minTokens: th.minTokens,
      collapseEntropy: th.collapseEntropy,
      collapseTopShare: th.collapseTopShare,
      collapseExpertTokenShare: th.collapseExpertTokenShare,
    });
    if (verdict.collapsed) {
      collapsed = true;
      const top = verdict.experts;
      const byEntropy = verdict.reason === 'entropy' || verdict.reason === 'both';
      const unit = k === 1 ? 'tokens' : 'assignments';
      const normH = verdict.normalizedEntropy;
      const effective = `normalized load entropy ${normH.toFixed(2)}, effective experts ${Math.exp(normH * Math.log(e)).toFixed(1)} of ${e}`;
      if (verdict.reason === 'one_expert') {
        out.push({
          kind: 'collapse',
          layer,
          experts: top,
          value: verdict.expertTokenShare,
          threshold: th.collapseExpertTokenShare,
          metric: 'expert_token_share',
          message: `${L}: routing has collapsed onto ${expertsPhrase(top, e)}, chosen by ${fmtPct(verdict.expertTokenShare)} of tokens (${effective})`,
        });
      } else {
        out.push({
          kind: 'collapse',
          layer,
          experts: top,
          value: byEntropy ? normH : verdict.topShare,
          threshold: byEntropy ? th.collapseEntropy : th.collapseTopShare,
          metric: byEntropy ? 'load_entropy' : 'top_share',
          message: `${L}: routing has collapsed onto ${expertsPhrase(top, e)} (${fmtPct(verdict.topShare)} of ${unit}; ${effective})`,
        });
      }
    }

    // Dead experts and imbalance need per-expert evidence.
    const need = smallestJudgeableWindow(e, k, th.minTokens, th.minExpectedPerExpert);
    if (tokens >= need) {
      if (zeros > 0) {
        const dead: number[] = [];
        for (let i = 0; i < e; i++) if (counts[i] === 0) dead.push(i);
        out.push({
          kind: 'dead_expert',
          layer,
          experts: dead,
          value: tokens,
          threshold: need,
          message: `${L}: ${expertsPhrase(dead, e)} received no tokens in the last ${fmtInt(tokens)} tokens`,
        });
      }
      const mean = total / e;
      const vio = (max - mean) / mean;
      if (!collapsed && vio > th.imbalanceMaxVio) {
        const hot = overloaded(counts, (1 + th.imbalanceMaxVio) * mean);
        out.push({
          kind: 'imbalance',
          layer,
          experts: hot,
          value: vio,
          threshold: th.imbalanceMaxVio,
          message:
            `${L}: ${expertsPhrase(hot, e)} received up to ${(max / mean).toFixed(1)}x the mean load ` +
            `(MaxVio ${vio.toFixed(2)} > ${th.imbalanceMaxVio.toFixed(2)})`,
        });
      }
    }
  }

  const re = w.routerEntropy;
  if (re !== undefined && Number.isFinite(re) && routerEntropyIsJudgeable({ design, gating: w.gating ?? '' })) {
    if (re < th.routerEntropyLow) {
      out.push({
        kind: 'abnormal_entropy',
        layer,
        value: re,
        threshold: th.routerEntropyLow,
        message:
          `${L}: router is saturated: mean normalized per-token entropy ${re.toFixed(3)} < ` +
          `${th.routerEntropyLow.toFixed(3)} (near one-hot probabilities)`,
      });
    } else if (re > th.routerEntropyHigh) {
      out.push({
        kind: 'abnormal_entropy',
        layer,
        value: re,
        threshold: th.routerEntropyHigh,
        message:
          `${L}: router barely distinguishes experts: mean normalized per-token entropy ${re.toFixed(3)} > ` +
          `${th.routerEntropyHigh.toFixed(3)} (near-uniform probabilities)`,
      });
    }
  }

  const dropped = w.droppedTokens ?? 0;
  if (dropped > 0) {
    const frac = tokens > 0 ? dropped / tokens : 1;
    if (frac > th.droppedFraction) {
      out.push({
        kind: 'dropped_tokens',
        layer,
        value: frac,
        threshold: th.droppedFraction,
        message:
          `${L}: ${fmtPct(frac)} of tokens (${fmtInt(dropped)} of ${fmtInt(tokens)}) were dropped ` +
          `over expert capacity (> ${fmtPct(th.droppedFraction)})`,
      });
    }
  }
}

/** Experts with a count above `limit`, busiest first (ties to the lower index). */
function overloaded(counts: ArrayLike<number>, limit: number): number[] {
  const hot: number[] = [];
  for (let i = 0; i < counts.length; i++) if (counts[i]! > limit) hot.push(i);
  return hot.sort((a, b) => counts[b]! - counts[a]! || a - b);
}

/** "expert 5", "experts 5 and 9", "experts 5, 9 and 12", "40 of 64 experts (0, 1, 2, 3, 4 and 35 more)". */
function expertsPhrase(ids: readonly number[], experts: number): string {
  if (ids.length === 1) return `expert ${ids[0]}`;
  if (ids.length <= 6) return `experts ${ids.slice(0, -1).join(', ')} and ${ids[ids.length - 1]}`;
  return `${ids.length} of ${experts} experts (${ids.slice(0, 5).join(', ')} and ${ids.length - 5} more)`;
}

/** Whole number with thousands separators, locale-independent: 12800 -> "12,800". */
export function fmtInt(n: number): string {
  const r = Math.round(n);
  const s = String(Math.abs(r)).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return r < 0 ? `-${s}` : s;
}

/** 0.0253 -> "2.5%". */
function fmtPct(x: number): string {
  return `${(x * 100).toFixed(1)}%`;
}

/**
 * "Why did this token go to that expert?": under a selected token of the Tokens view, pick a layer
 * and one of the experts the token went to, and the probe attributes that router decision to
 * every token of the sequence the token saw (see moe_probe/attribution.py). The sequence is shown
 * shaded by attribution; token strings only ever become text nodes.
 */
import { useEffect, useState } from 'preact/hooks';
import { attributionShades, completeness, topContributions, type AttributionMethod, type AttributionTarget } from '../../src/analysis';
import type { ExplanationMessage } from '../../src/protocol/panel';
import type { ExplainBaseline } from '../../src/protocol/probe';
import type { Analysis, TokenRow } from '../engine/analyzer';
import { explanationKey } from '../engine/requests';
import type { Store } from '../store';
import { fmt, int } from './format';
import { useStoreSlice } from './useStoreSlice';

const TOP = 8;

function sequenceText(e: ExplanationMessage, i: number): string {
  return e.texts?.[i] ?? `#${e.tokenIds[i]}`;
}

const PROB_LABEL: Record<string, string> = { softmax: 'softmax probability', sigmoid: 'sigmoid score', row: 'probability (as the router gives it)' };

export function ExplainToken({ store, a, row, index }: { store: Store; a: Analysis; row: TokenRow; index: number }) {
  const pid = a.pid;
  const job = useStoreSlice(store, (s) => s.jobs.get(pid));
  const requests = useStoreSlice(store, (s) => s.requests);
  const layers = row.layers.filter((l) => l.ids[index * l.k] !== undefined && l.ids[index * l.k]! >= 0);
  const [layer, setLayer] = useState(() => (layers.some((l) => l.layer === store.state.selectedLayer) ? store.state.selectedLayer : layers[0]?.layer ?? 0));
  const current = layers.find((l) => l.layer === layer) ?? layers[0];
  const chosen = current ? Array.from(current.ids.subarray(index * current.k, (index + 1) * current.k)).filter((e) => e >= 0) : [];
  const [expertPick, setExpert] = useState<number | null>(null);
  const expert = expertPick !== null && chosen.includes(expertPick) ? expertPick : chosen[0];
  const [steps, setSteps] = useState(32);
  const [baseline, setBaseline] = useState<ExplainBaseline>('zero');
  const [baselineToken, setBaselineToken] = useState(0);
  const [maxSeconds, setMaxSeconds] = useState(60);
  const [maxMB, setMaxMB] = useState(512);
  const live = job?.status === 'attached';
  if (!current || expert === undefined) return null;
  const key = explanationKey({ pass: row.pass, index, layer: current.layer, expert });
  const found = job?.explanations?.find((e) => explanationKey(e) === key);
  const status = [...requests.values()].filter((r) => r.pid === pid && r.key === key).pop();
  const running = status?.state === 'running';
  const others = (job?.explanations ?? []).filter((e) => e.pass === row.pass && e.index === index && explanationKey(e) !== key);
  const label = (l: number) => a.rows[l]?.label ?? `layer ${l}`;

  return (
    <div class="explain" data-testid="explain">
      <h3>Why did this token go to expert {expert} in {label(current.layer)}?</h3>
      <div class="controls">
        <label>
          Layer{' '}
          <select data-testid="explain-layer" value={String(current.layer)} onChange={(e) => { setLayer(Number((e.target as HTMLSelectElement).value)); setExpert(null); }}>
            {layers.map((l) => <option key={l.layer} value={String(l.layer)}>{label(l.layer)}</option>)}
          </select>
        </label>
        <span role="radiogroup" aria-label="Expert">
          Expert{' '}
          {chosen.map((e) => (
            <button key={e} role="radio" aria-checked={e === expert} class={`chip ${e === expert ? 'on' : ''}`} data-testid="explain-expert" data-expert={e} onClick={() => setExpert(e)}>{e}</button>
          ))}
        </span>
        <label title="Points on the path from the baseline to the input (midpoint rule)">
          Steps <input type="number" min="1" max="1024" data-testid="explain-steps" value={steps} onChange={(e) => setSteps(Math.max(1, Math.min(1024, Math.round(Number((e.target as HTMLInputElement).value)) || 32)))} />
        </label>
        <label title="Where integrated gradients start: a zero embedding, the mean embedding over the vocabulary, or one token's embedding at every position">
          Baseline{' '}
          <select data-testid="explain-baseline" value={baseline} onChange={(e) => setBaseline((e.target as HTMLSelectElement).value as ExplainBaseline)}>
            <option value="zero">zero embedding</option>
            <option value="mean">mean embedding</option>
            <option value="token">a token's embedding</option>
          </select>
          {baseline === 'token' && <input type="number" min="0" aria-label="Baseline token id" data-testid="explain-baseline-token" value={baselineToken} onChange={(e) => setBaselineToken(Math.max(0, Math.round(Number((e.target as HTMLInputElement).value)) || 0))} />}
        </label>
        <label title="The probe stops and says so past this time, or when one batch of steps would hold more than this for its gradients (the process's peak grows by about twice that)">
          Limits <input type="number" min="1" max="3600" aria-label="Most seconds" data-testid="explain-max-seconds" value={maxSeconds}
            onChange={(e) => setMaxSeconds(Math.max(1, Math.min(3600, Number((e.target as HTMLInputElement).value) || 60)))} /> s,{' '}
          <input type="number" min="1" max="1048576" aria-label="Most MiB for gradients" data-testid="explain-max-mb" value={maxMB}
            onChange={(e) => setMaxMB(Math.max(1, Math.min(1048576, Number((e.target as HTMLInputElement).value) || 512)))} /> MiB
        </label>
        <button class="primary" data-testid="explain-run" disabled={!live || running}
          title={live ? 'The probe recomputes this sequence on its own thread, with gradients there only' : 'Explanations need a live job (this one is not attached)'}
          onClick={() => store.explain({ pass: row.pass, index, layer: current.layer, expert, steps, baseline, maxSeconds, maxMB, ...(baseline === 'token' ? { baselineToken } : {}) })}>
          {found ? 'Explain again' : 'Explain'}
        </button>
        {running && <Running started={status!.started} />}
      </div>
      {!live && !found && <p class="muted" data-testid="explain-not-live">Explanations are computed by the probe in a live job; this job is {job?.status === 'recording' ? 'a recording' : 'not attached'}.</p>}
      {status?.state === 'refused' && <p class="notice-inline" role="alert" data-testid="explain-refused" data-code={status.code}>The probe could not explain this: {status.message}</p>}
      {others.length > 0 && (
        <p class="muted">Also explained for this token:{' '}
          {others.map((e) => (
            <button key={explanationKey(e)} class="link" onClick={() => { setLayer(e.layer); setExpert(e.expert); }}>{label(e.layer)}, expert {e.expert}</button>
          ))}
        </p>
      )}
      {found && <Explanation e={found} recorded={chosen} label={label(found.layer)} />}
    </div>
  );
}

function Running({ started }: { started: number }) {
  const [, setTick] = useState(0);
  useEffect(() => {
    const timer = setInterval(() => setTick((t) => t + 1), 500);
    return () => clearInterval(timer);
  }, []);
  return <span class="muted" data-testid="explain-running">explaining… {fmt((Date.now() - started) / 1000, 1)} s</span>;
}

/**
 * Every explanation the job holds (live, or saved in a recording whose token stream may no longer
 * hold those passes): pick one to see it.
 */
export function ExplanationList({ store, a }: { store: Store; a: Analysis }) {
  const explanations = useStoreSlice(store, (s) => s.jobs.get(a.pid)?.explanations);
  const [picked, setPicked] = useState<string | null>(null);
  if (!explanations?.length) return null;
  const label = (l: number) => a.rows[l]?.label ?? `layer ${l}`;
  const shown = explanations.find((e) => explanationKey(e) === picked);
  const recordedFor = (e: ExplanationMessage) => {
    const l = a.tokens.find((r) => r.pass === e.pass)?.layers.find((x) => x.layer === e.layer);
    return l ? Array.from(l.ids.subarray(e.index * l.k, (e.index + 1) * l.k)).filter((x) => x >= 0) : null;
  };
  return (
    <div class="explain" data-testid="explanation-list">
      <h3>Explained routing decisions <span class="muted">({explanations.length}; kept with the job and in its recordings)</span></h3>
      <p>
        {explanations.map((e) => (
          <button key={explanationKey(e)} class={`chip ${explanationKey(e) === picked ? 'on' : ''}`} data-testid="explanation-item" data-pass={e.pass} data-index={e.index}
            data-layer={e.layer} data-expert={e.expert} onClick={() => setPicked(explanationKey(e) === picked ? null : explanationKey(e))}>
            “{sequenceText(e, e.position)}” (pass {e.pass}, token {e.index}) → expert {e.expert} in {label(e.layer)}
          </button>
        ))}
      </p>
      {shown && <Explanation e={shown} recorded={recordedFor(shown)} label={label(shown.layer)} />}
    </div>
  );
}

/** One explanation: the sequence shaded by attribution, the top tokens, and the checks. */
export function Explanation({ e, recorded, label }: { e: ExplanationMessage; recorded: number[] | null; label: string }) {
  const [method, setMethod] = useState<AttributionMethod>('ig');
  const [target, setTarget] = useState<AttributionTarget>('logit');
  const values = method === 'ig' ? (target === 'logit' ? e.igLogit : e.igProb) : (target === 'logit' ? e.gxiLogit : e.gxiProb);
  const fx = target === 'logit' ? e.logit : e.prob;
  const fb = target === 'logit' ? e.baselineLogit : e.baselineProb;
  const check = completeness(values, fx, fb);
  const shades = attributionShades(values);
  const top = topContributions(values, TOP);
  const sameChoice = recorded === null || [...e.recomputed].sort((x, y) => x - y).join(',') === [...recorded].sort((x, y) => x - y).join(',');
  const baseline = e.baseline === 'token' ? `token ${e.baselineToken}'s embedding` : `${e.baseline} embedding`;
  const targetName = target === 'logit' ? 'router score (logit)' : PROB_LABEL[e.probKind] ?? 'probability';
  return (
    <div class="explanation" data-testid="explanation" data-method={method} data-target={target} data-pass={e.pass} data-index={e.index}
      data-layer={e.layer} data-expert={e.expert} data-error={check.relativeError}>
      <div class="controls">
        <span role="radiogroup" aria-label="Method">
          <button role="radio" aria-checked={method === 'ig'} class={`chip ${method === 'ig' ? 'on' : ''}`} data-testid="explain-method-ig" onClick={() => setMethod('ig')}>Integrated gradients</button>
          <button role="radio" aria-checked={method === 'gxi'} class={`chip ${method === 'gxi' ? 'on' : ''}`} data-testid="explain-method-gxi" onClick={() => setMethod('gxi')}>Gradient × input</button>
        </span>
        <span role="radiogroup" aria-label="Target">
          <button role="radio" aria-checked={target === 'logit'} class={`chip ${target === 'logit' ? 'on' : ''}`} data-testid="explain-target-logit" onClick={() => setTarget('logit')}>Router score</button>
          <button role="radio" aria-checked={target === 'prob'} class={`chip ${target === 'prob' ? 'on' : ''}`} data-testid="explain-target-prob" onClick={() => setTarget('prob')}>Routing probability</button>
        </span>
      </div>
      <p class="stats-line">
        Expert {e.expert}'s {targetName} at the token: <b>{fmt(fx, 4)}</b> (from the baseline, {baseline}: {fmt(fb, 4)}).{' '}
        {method === 'ig' ? (
          <span data-testid="explain-completeness" class={check.relativeError > 0.05 ? 'warn' : ''}
            title="Integrated gradients should sum to f(x) - f(baseline). A large error means more steps are needed, or the target jumps on the way (an earlier layer's top-k choice switching)">
            Completeness: attributions sum to {fmt(check.sum, 4)} against f(x) − f(baseline) = {fmt(check.delta, 4)}, error {Number.isFinite(check.relativeError) ? `${fmt(100 * check.relativeError, 2)} %` : `${check.absoluteError.toExponential(1)} (f(x) = f(baseline))`}
            {check.relativeError > 0.05
              ? e.baseline === 'zero'
                ? ' — try the mean-embedding baseline or more steps (normalisation makes the target change sharply near a zero input); if the error stays, the target jumps on the way (an earlier layer’s top-k choice switching)'
                : ' — more steps, or the target jumps on the way (an earlier layer’s top-k choice switching)'
              : ''}.
          </span>
        ) : (
          <span class="muted">Gradient × input sums to {fmt(check.sum, 4)}; unlike integrated gradients it need not equal f(x) − f(0).</span>
        )}
      </p>
      <p class={sameChoice ? 'muted' : 'warn'} data-testid="explain-recomputed" data-same={recorded === null ? undefined : String(sameChoice)}>
        Recomputed, the router's top-{e.recomputed.length} here is {e.recomputed.join(', ')}{recorded === null ? ' (the job’s routing of this token is no longer in view).' : sameChoice ? ', as the job routed this token.'
          : `; the job routed ${recorded.join(', ')}. The recomputation differs (the context the probe kept, padding, or a router that selects by more than its scores, such as a selection bias), so read it with care.`}
      </p>
      <div class="token-stream attribution" data-testid="explain-sequence">
        {e.tokenIds.map((_, i) => {
          const s = shades[i]!;
          const color = s >= 0 ? 'var(--attr-pos)' : 'var(--attr-neg)';
          return (
            <span key={i} class={`tok ${i === e.position ? 'target' : ''}`} data-testid="explain-token" data-position={i} data-value={values[i]}
              title={`position ${i}: attribution ${values[i]!.toPrecision(4)}`} style={{ background: `rgba(${color}, ${Math.abs(s) * 0.75})` }}>
              {sequenceText(e, i)}
            </span>
          );
        })}
      </div>
      <table class="grid" data-testid="explain-top">
        <thead><tr><th>#</th><th>Position</th><th>Token</th><th>Attribution</th><th>Share</th></tr></thead>
        <tbody>
          {top.map((c, rank) => (
            <tr key={c.position} data-testid="explain-top-row" data-position={c.position} data-value={c.value}>
              <td class="num">{rank + 1}</td>
              <td class="num">{c.position}{c.position === e.position ? ' (the token)' : ''}</td>
              <td>{sequenceText(e, c.position)}</td>
              <td class={`num ${c.value < 0 ? 'neg' : 'pos'}`}>{c.value.toPrecision(3)}</td>
              <td class="num">{fmt(100 * c.share, 1)} %</td>
            </tr>
          ))}
        </tbody>
      </table>
      <p class="muted" data-testid="explain-cost">
        {label}, pass {e.pass}, row {e.row}, position {e.position} of {e.tokenIds.length} tokens. Took {fmt(e.seconds, 2)} s on {e.device}: {e.steps} steps
        in batches of {e.batch}, {int(e.peakBytes / 1024)} KiB held for gradients at most.
        {e.notes.map((n) => ` ${n[0]!.toUpperCase()}${n.slice(1)}.`).join('')}
      </p>
    </div>
  );
}

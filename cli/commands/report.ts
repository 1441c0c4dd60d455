/** `moe-devtools report run.moerec`: findings and per-layer metrics, as text or JSON, and a CI verdict. */
import { fmtInt, type Finding, type FindingKind } from '../../src/analysis';
import { FINDING_KINDS, type RoutingReport } from '../routing-report';
import { CliError } from '../errors';

/** The kinds named by `--fail-on a,b,c`, each checked against the kinds findings can have. */
export function parseFailOn(value: string): FindingKind[] {
  const kinds = value.split(',').map((s) => s.trim()).filter(Boolean);
  if (!kinds.length) throw new CliError(`--fail-on needs finding kinds, e.g. --fail-on dead_expert,collapse (kinds: ${FINDING_KINDS.join(', ')})`);
  for (const kind of kinds) {
    if (!(FINDING_KINDS as readonly string[]).includes(kind)) {
      throw new CliError(`unknown finding kind "${kind}" in --fail-on (kinds: ${FINDING_KINDS.join(', ')})`);
    }
  }
  return kinds as FindingKind[];
}

/** The findings that make `report --fail-on` fail. */
export function failingFindings(report: RoutingReport, failOn: readonly FindingKind[]): Finding[] {
  return report.findings.filter((f) => failOn.includes(f.kind));
}

/** JSON with NaN and Infinity as null (JSON has no such numbers), without the series' per-expert loads. */
export function reportJson(report: RoutingReport): string {
  const series = { ...report.series, points: report.series.points.map(({ expertLoad: _, ...point }) => point) };
  return JSON.stringify({ ...report, series }, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2);
}

const fixed = (x: number | null, digits: number) => (x === null ? '-' : x.toFixed(digits));

export function reportText(report: RoutingReport, file: string): string {
  const out: string[] = [];
  const job = report.job;
  const command = job ? job.argv.join(' ') : 'unknown command';
  out.push(`${file}: process ${report.pid} (${command.length > 100 ? `${command.slice(0, 97)}...` : command})`);
  out.push(`model ${report.model.class}, ${report.model.layers} MoE layers; recorded ${new Date(report.started).toISOString()}, ` +
    `${report.window.seconds.toFixed(1)} s of counts, ${fmtInt(report.window.passes)} passes since attach, ` +
    `${fmtInt(report.window.tokens)} tokens through layer 0`);
  for (const line of report.visibility) out.push(line);
  out.push('');
  if (report.findings.length) {
    out.push(`Findings (${report.findings.length}):`);
    const width = Math.max(...report.findings.map((f) => f.kind.length));
    for (const f of report.findings) out.push(`  ${f.kind.padEnd(width)}  ${f.message}`);
  } else {
    out.push('Findings: none');
  }
  if (report.parameterFindings) {
    out.push('');
    if (report.parameterFindings.length) {
      out.push(`Findings from the experts' weights (${report.parameterFindings.length}):`);
      const width = Math.max(...report.parameterFindings.map((f) => f.kind.length));
      for (const f of report.parameterFindings) out.push(`  ${f.kind.padEnd(width)}  ${f.message}`);
    } else {
      out.push("Findings from the experts' weights: none (no near-duplicate experts, no collapsed router rows)");
    }
  }
  if (report.explanations) out.push('', `The recording holds ${report.explanations} explained routing decision${report.explanations === 1 ? '' : 's'} (open it in the panel: Tokens view).`);
  out.push('');
  const head = ['layer', 'experts', 'top_k', 'tokens', 'balancedness', 'max_vio', 'load_entropy', 'router_entropy', 'z_loss', 'dead_experts', 'ms/pass', 'name'];
  const rows = report.layers.map((l) => [
    String(l.layer), String(l.experts), String(l.topK), fmtInt(l.tokens), fixed(l.balancedness, 3), fixed(l.maxVio, 3),
    fixed(l.loadEntropy, 3), fixed(l.routerEntropy, 3), fixed(l.zLoss, 2),
    l.deadExpertIds === null ? '?' : l.deadExpertIds.length ? l.deadExpertIds.join(' ') : 'none',
    fixed(l.msPerPass, 3), l.name,
  ]);
  const width = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  for (const r of [head, ...rows]) out.push(r.map((c, i) => (i === r.length - 1 ? c : c.padStart(width[i]!))).join('  ').trimEnd());
  if (report.layers.some((l) => l.deadExpertIds === null)) {
    out.push('', 'dead_experts "?": too few tokens to tell a dead expert from an unlucky one (see thresholds minTokens, minExpectedPerExpert).');
  }
  return out.join('\n');
}

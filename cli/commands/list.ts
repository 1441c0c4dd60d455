/** `moe-devtools list`: the Python processes with torch loaded that could be attached to. */
import type { ProcessInfo } from '../../src/protocol/panel';
import { listTorchProcesses } from '../../native-host/src/processes';

export function listCommand(json: boolean, out: (text: string) => void): void {
  const processes = listTorchProcesses(new Set());
  out(json ? JSON.stringify(processes, null, 2) : formatProcesses(processes));
}

export function formatProcesses(processes: ProcessInfo[]): string {
  if (!processes.length) return 'No Python process with torch loaded was found (only your own processes are listed).';
  // One line per process: a `python -c` program's newlines would break the table. Ranks of a
  // distributed job say which rank of which job they are (only when there are some).
  const ranks = processes.some((p) => p.dist);
  const rank = (p: ProcessInfo) => (p.dist ? `${p.dist.rank ?? '?'} of ${p.dist.label}` : '');
  const rows = processes.map((p) => [String(p.pid), p.python ?? '?', p.probe ? 'probe' : '', ...(ranks ? [rank(p)] : []), p.cmdline.replace(/\s+/g, ' ')]);
  const head = ['PID', 'PYTHON', 'PROBE', ...(ranks ? ['RANK'] : []), 'COMMAND'];
  const width = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return [head, ...rows].map((r) => r.map((c, i) => (i < r.length - 1 ? c.padEnd(width[i]!) : c)).join('  ')).join('\n');
}

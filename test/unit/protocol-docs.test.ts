import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { PROTOCOL_DOC, protocolReference } from '../../scripts/gen-protocol-docs.mjs';

describe('docs/protocol.md', () => {
  it('is what scripts/gen-protocol-docs.mjs generates from src/protocol (run it after changing a message)', () => {
    expect(fs.readFileSync(PROTOCOL_DOC, 'utf8')).toBe(protocolReference());
  });

  it('names every message and field of the protocol sources', () => {
    const doc = protocolReference();
    for (const name of ['JobUpdate', 'TokenUpdate', 'ProbeHello', 'ProbeCounts', 'ProbeTokens', 'PanelRequest', 'HostMessage', 'ProbeFrame']) {
      expect(doc).toContain(`### ${name}`);
    }
    for (const type of ['hello', 'list', 'attach', 'detach', 'history', 'token-pass', 'connect', 'configure', 'host-stats', 'detached', 'error']) {
      expect(doc).toContain(`#### \`type: "${type}"\``);
    }
    expect(doc).toContain("| `counts` | `number[]` | yes | Cumulative assignments to each (layer, expert) since attach: layer 0's experts, then layer 1's, ... (sum(widths) values). |");
    expect(doc).toContain('| `widths` | `number[]` | yes | Experts of each layer (layers may differ): layer l\'s counts start at the sum of the widths before it. |');
    expect(doc).toContain('| `HEALTH_COLUMNS` | `["logit_tokens", "entropy_sum", "zloss_sum", "nan", "inf", "dropped"]` |');
  });
});

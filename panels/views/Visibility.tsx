/**
 * What the probe sees of how the job's passes run (torch.compile, CUDA graphs), under the job's
 * title: nothing for a job whose passes all run eagerly in its view.
 */
import { visibilityNotes } from '../../src/analysis';
import type { JobUpdate } from '../../src/protocol/panel';

export function Visibility({ update }: { update?: JobUpdate }) {
  const notes = update ? visibilityNotes(update) : [];
  if (!notes.length) return null;
  return (
    <ul class="visibility" data-testid="visibility" aria-label="What the probe sees">
      {notes.map((n) => (
        <li key={n.kind} class={`visibility-${n.kind}`} data-testid="visibility-note" data-kind={n.kind}>{n.text}</li>
      ))}
    </ul>
  );
}

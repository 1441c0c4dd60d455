/** How the command line fails: one clear line on stderr and an exit status scripts can test. */

/** Exit statuses: 0 all well; 1 `report --fail-on` found what it was told to fail on; 2 anything went wrong. */
export const EXIT = { ok: 0, findings: 1, error: 2 } as const;

export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number = EXIT.error,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

const WHY: Record<string, string> = {
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EROFS: 'the file system is read-only',
  ENOTDIR: 'part of the path is a file, not a folder',
  ENOENT: 'no such file or folder',
  EISDIR: 'it is a folder',
  EEXIST: 'it already exists',
  ENOSPC: 'no space left on the device',
};

/** "cannot write /x/y: permission denied" from a Node file-system error. */
export function fsError(action: string, target: string, err: unknown): CliError {
  const code = (err as NodeJS.ErrnoException)?.code;
  const why = (code && WHY[code]) ?? (err as Error)?.message ?? String(err);
  return new CliError(`cannot ${action} ${target}: ${why}`);
}

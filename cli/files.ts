/** Reading recordings and preparing output places, each failure as one clear CliError. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseRecording, RecordingError, type Recording } from '../panels/engine/recording';
import { CliError, fsError } from './errors';

export function readRecording(file: string): Recording {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw fsError('read', file, err);
  }
  try {
    return parseRecording(text);
  } catch (err) {
    if (err instanceof RecordingError) throw new CliError(`${file}: ${err.message}`);
    throw err;
  }
}

/** Create `dir` (and its parents) if needed and make sure we may write into it. */
export function prepareDir(dir: string): string {
  try {
    fs.mkdirSync(dir, { recursive: true });
    if (!fs.statSync(dir).isDirectory()) throw Object.assign(new Error('not a folder'), { code: 'ENOTDIR' });
    fs.accessSync(dir, fs.constants.W_OK);
  } catch (err) {
    throw fsError('write to folder', dir, err);
  }
  return dir;
}

/**
 * Check that `file` can be written (its folder exists and is writable) without touching an
 * existing file unless `force`: a previous recording or export is never overwritten by mistake.
 */
export function prepareFile(file: string, force: boolean): void {
  if (!force && fs.existsSync(file)) throw new CliError(`${file} already exists (pass --force to replace it)`);
  const dir = path.dirname(path.resolve(file));
  try {
    if (!fs.statSync(dir).isDirectory()) throw Object.assign(new Error('not a folder'), { code: 'ENOTDIR' });
    fs.accessSync(dir, fs.constants.W_OK);
  } catch (err) {
    throw fsError('write to folder', dir, err);
  }
}

/** Write through a temporary file and rename, so a reader never sees half a file. */
export function writeFileAtomic(file: string, data: string | Uint8Array): void {
  const tmp = `${file}.${process.pid}.partial`;
  try {
    fs.writeFileSync(tmp, data);
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw fsError('write', file, err);
  }
}

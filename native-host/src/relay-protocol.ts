/**
 * The link between a relay (`moe-devtools relay`, a headless host on another node) and the host
 * the panel talks to: the same messages as native messaging (PanelRequest one way, HostMessage the
 * other), framed the same way (4-byte little-endian length + UTF-8 JSON), over one TCP connection,
 * reached through an SSH tunnel to the relay's loopback port.
 *
 * The client speaks first: {type: 'auth', token} within AUTH_TIMEOUT_MS. A wrong token gets an
 * error message and the connection closes. Then the relay says hello (with its node's name),
 * attaches to its node's ranks and streams them; it sends a heartbeat at least every
 * HEARTBEAT_MS, so a client that hears nothing for LOST_AFTER_MS takes the node as gone (a
 * network that drops packets closes nothing).
 */
import { timingSafeEqual } from 'node:crypto';

export const AUTH_TIMEOUT_MS = 5000;
export const HEARTBEAT_MS = 1000;
export const LOST_AFTER_MS = 5000;

export interface RelayAuth {
  type: 'auth';
  token: string;
}

export function isAuth(value: unknown): value is RelayAuth {
  return typeof value === 'object' && value !== null && (value as RelayAuth).type === 'auth' && typeof (value as RelayAuth).token === 'string';
}

/** Compare tokens in constant time (a token of another length is simply wrong). */
export function tokenMatches(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** The extension's id, fixed by the public key in manifest.json (sha256 of the key, a-p encoded). */
export const EXTENSION_ID = 'fipnmmpecciakaemjooejcahhcgnjccp';

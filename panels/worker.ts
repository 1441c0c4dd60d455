/** The panel's Web Worker: the Analyzer behind comlink. The main thread only renders. */
import * as Comlink from 'comlink';
import { Analyzer } from './engine/analyzer';

Comlink.expose(new Analyzer());

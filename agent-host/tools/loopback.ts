export { assertPlaintextAllowed, isLoopback, targetHost } from '../../common/loopback.js';

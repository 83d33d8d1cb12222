/**
 * The fault-injecting proxy lives in scripts/support so the chaos soak (a
 * script, which never imports from test/) and the tests share one copy.
 */
export { FaultProxy, type FaultProxyOptions, type FaultProxyState } from '../../scripts/support/fault-proxy.js';

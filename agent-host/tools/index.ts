/**
 * The Tether tool library: what agents' tools import to call the control plane,
 * or any gRPC or HTTP service, as their agent, reading the token at each call.
 */
export { AgentClient, type AgentClientOptions, type CallOptions } from './agent-client.js';
export type { AgentContext, AgentInstance, AgentModule, DeliveredMessage } from './agent-module.js';
export { authorizationHeader, bearerInterceptor, callCredentials } from './call-credentials.js';
export { fromFile, fromHolder, type CredentialSource, type FileSourceStats, type ReadOnlyCredentials } from './credential-source.js';
export { assertPlaintextAllowed, isLoopback } from './loopback.js';
export { fromServiceError } from './service-errors.js';

/**
 * The Tether tool library: what agents' tools import to call the control plane,
 * or any gRPC or HTTP service, as their agent, reading the token at each call.
 */
export { AgentClient, type AgentClientOptions, type CallOptions } from './agent-client.js';
export type { AgentContext, AgentInstance, AgentModule, DeliveredMessage } from './agent-module.js';
export {
  AudienceTokens,
  DEFAULT_AUDIENCE_REFRESH,
  isAudienceTokenStale,
  type AudienceRefreshPolicy,
  type AudienceToken,
  type AudienceTokenMinter,
  type AudienceTokensFromClient,
  type AudienceTokensFromSource,
  type AudienceTokensOptions,
  type AudienceTokensState,
} from './audience-tokens.js';
export { caFileCredentials, type CaFileCredentials, type CaFileCredentialsOptions } from './ca-file-credentials.js';
export { bearerChannel, type BearerChannelArgs, type BearerChannelOptions } from './bearer-channel.js';
export { authorizationHeader, bearerInterceptor, callCredentials } from './call-credentials.js';
export {
  fromFile,
  fromHolder,
  type AsyncCredentialSource,
  type BearerSource,
  type CredentialSource,
  type FileSourceStats,
  type ReadOnlyCredentials,
} from './credential-source.js';
export { fetchAs } from './fetch-as.js';
export { assertChannelAllowed, assertHttpAllowed, assertPlaintextAllowed, isLoopback } from './loopback.js';
export { fromServiceError } from './service-errors.js';

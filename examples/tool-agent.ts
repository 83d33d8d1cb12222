/**
 * An example module agent whose tools call a third-party gRPC service and an
 * HTTP service *as the agent*, without ever holding a token: each call reads a
 * short-lived token minted for that service's audience (AgentService.MintToken),
 * cached and refreshed by `AudienceTokens`. The services verify it offline
 * against the control plane's JWKS. See docs/tools.md.
 *
 * Run it on a host:
 *
 *   agent-host --module tool-agent=examples/tool-agent.ts
 *
 * and dispatch it with its configuration (JSON):
 *
 *   control-plane agents dispatch --module tool-agent --config \
 *     '{"grpc":{"target":"127.0.0.1:50051","audience":"inventory"},"http":{"url":"http://127.0.0.1:8080/whoami","audience":"billing"}}'
 *
 * The gRPC service here speaks the standard health protocol (any generated
 * grpc-js client is built the same way). Plaintext is allowed to loopback only;
 * give `caFile` for a TLS service elsewhere.
 */
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { AudienceTokens, bearerChannel, fetchAs, type AgentModule } from '../agent-host/tools/index.js';

/** The example's configuration (`spec.config`, JSON). */
export interface ToolAgentConfig {
  /** A gRPC service: `host:port`, the audience it verifies, and a CA file for TLS. */
  grpc?: { target: string; audience: string; caFile?: string };
  /** An HTTP service: the URL to GET and the audience it verifies. */
  http?: { url: string; audience: string };
}

/** The one method of grpc.health.v1.Health the example calls. */
interface HealthClient extends grpc.Client {
  check(
    request: { service: string },
    options: grpc.CallOptions,
    callback: (err: grpc.ServiceError | null, response?: { status?: string }) => void,
  ): grpc.ClientUnaryCall;
}

/** A client constructor for grpc.health.v1.Health, from the descriptor grpc-health-check ships. */
const HealthClientConstructor = grpc.makeGenericClientConstructor(healthService, 'Health');

/** Parses `spec.config`; an empty config means no tools. */
export function parseToolAgentConfig(text: string): ToolAgentConfig {
  if (text.trim() === '') return {};
  const parsed = JSON.parse(text) as ToolAgentConfig;
  if (parsed.grpc !== undefined && (typeof parsed.grpc.target !== 'string' || typeof parsed.grpc.audience !== 'string')) {
    throw new Error('config.grpc needs target and audience');
  }
  if (parsed.http !== undefined && (typeof parsed.http.url !== 'string' || typeof parsed.http.audience !== 'string')) {
    throw new Error('config.http needs url and audience');
  }
  return parsed;
}

/** Calls Health.Check; resolves with the serving status. */
function check(client: HealthClient, signal: AbortSignal): Promise<string> {
  return new Promise((resolve, reject) => {
    const call = client.check({ service: '' }, {}, (err, response) => {
      signal.removeEventListener('abort', onAbort);
      if (err !== null) reject(err);
      else resolve(response?.status ?? 'UNKNOWN');
    });
    const onAbort = (): void => call.cancel();
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * The example agent: runs its tools once at start and again for every message.
 * A failed tool call at start is logged; one during a message refuses the
 * message (it is delivered again later).
 */
export const agent: AgentModule = (context) => {
  const config = parseToolAgentConfig(context.config);
  // One cache per agent, on the agent's clock; closed when the agent stops.
  const tokens = new AudienceTokens({ client: context.agent, clock: context.clock, signal: context.signal });

  let health: HealthClient | undefined;
  if (config.grpc !== undefined) {
    const { target, audience, caFile } = config.grpc;
    // Refuses a plaintext non-loopback target here, before any connection.
    const { credentials, options } = bearerChannel(target, tokens.source(audience), {
      ...(caFile === undefined ? {} : { channelCredentials: grpc.credentials.createSsl(readFileSync(caFile)) }),
    });
    health = new HealthClientConstructor(target, credentials, options) as unknown as HealthClient;
  }

  const runTools = async (): Promise<void> => {
    if (health !== undefined && config.grpc !== undefined) {
      const status = await check(health, context.signal);
      // Log the token's id, never the token.
      context.logger.info({ aud: config.grpc.audience, jti: tokens.describe(config.grpc.audience)?.tokenId, status }, 'gRPC tool call answered');
    }
    if (config.http !== undefined) {
      const response = await fetchAs(tokens.source(config.http.audience), config.http.url, { signal: context.signal });
      await response.body?.cancel();
      context.logger.info({ aud: config.http.audience, jti: tokens.describe(config.http.audience)?.tokenId, status: response.status }, 'HTTP tool call answered');
      if (!response.ok) throw new Error(`HTTP tool call answered ${response.status}`);
    }
  };

  const startup = runTools().catch((err: unknown) => context.logger.warn({ err }, 'tool calls at start failed'));

  return {
    onMessage: async () => {
      await runTools();
    },
    close: async () => {
      await startup;
      health?.close();
      tokens.close();
    },
  };
};

/**
 * Variables a process agent inherits from its host, by name. An allow-list, so
 * the host's own secrets (`TETHER_ADMIN_TOKEN`, `TETHER_JOIN_TOKEN`,
 * `TETHER_JOIN_TOKEN_FILE`, where the host keeps its credential, and anything
 * else in its environment) never reach an agent: what is not named here is not
 * passed. Nothing starting with `TETHER_` is inherited; the host sets those.
 */
export const INHERITED_VARIABLES: readonly string[] = [
  'PATH',
  'HOME',
  'USER',
  'LOGNAME',
  'SHELL',
  'LANG',
  'LANGUAGE',
  'LC_ALL',
  'LC_CTYPE',
  'LC_MESSAGES',
  'LC_NUMERIC',
  'LC_TIME',
  'LC_COLLATE',
  'TZ',
  'TMPDIR',
  'TEMP',
  'TMP',
  // Windows needs these to start most programs at all.
  'SYSTEMROOT',
  'WINDIR',
  'COMSPEC',
  'PATHEXT',
];

/** What the host tells a process agent about itself (all but `caFile` always set). */
export interface ProcessAgentVariables {
  agentId: string;
  name: string;
  incarnation: number;
  /** The control plane, `host:port`. */
  server: string;
  tokenFile: string;
  agentDir: string;
  /** `spec.config`, as given; omitted when empty. */
  config: string;
  /** CA certificate to verify a TLS control plane. */
  caFile?: string;
  /** `TETHER_AUDIENCE_FILE_<NAME>` → path of each audience-token file. */
  audienceFiles?: Readonly<Record<string, string>>;
}

/**
 * The environment of a process agent: the allow-listed variables of `parent`
 * (the host's own environment) plus the `TETHER_*` variables describing the
 * agent. Never `parent` passed through.
 */
export function childEnvironment(parent: Readonly<Record<string, string | undefined>>, agent: ProcessAgentVariables): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of INHERITED_VARIABLES) {
    const value = parent[name];
    if (value !== undefined) env[name] = value;
  }
  env.TETHER_AGENT_ID = agent.agentId;
  env.TETHER_AGENT_NAME = agent.name;
  env.TETHER_AGENT_INCARNATION = String(agent.incarnation);
  env.TETHER_SERVER = agent.server;
  env.TETHER_TOKEN_FILE = agent.tokenFile;
  env.TETHER_AGENT_DIR = agent.agentDir;
  if (agent.config !== '') env.TETHER_AGENT_CONFIG = agent.config;
  if (agent.caFile !== undefined && agent.caFile !== '') env.TETHER_CA_FILE = agent.caFile;
  for (const [name, path] of Object.entries(agent.audienceFiles ?? {})) if (name.startsWith('TETHER_AUDIENCE_FILE_')) env[name] = path;
  return env;
}

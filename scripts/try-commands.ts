/** One thing to try against a running control plane, as a grpcurl and a buf curl command built from the same row. */
export interface TryCommand {
  title: string;
  grpcurl: string;
  bufCurl: string;
}

interface Row {
  title: string;
  /** `service/method`, or undefined to list services. */
  method?: string;
  body?: string;
  isAdmin?: boolean;
}

const ROWS: readonly Row[] = [
  { title: 'List services (server reflection)' },
  { title: 'Health check', method: 'grpc.health.v1.Health/Check', body: '{}' },
  { title: 'List agents', method: 'tether.v1.AdminService/ListAgents', body: '{}', isAdmin: true },
  { title: 'List hosts', method: 'tether.v1.AdminService/ListHosts', body: '{}', isAdmin: true },
  { title: 'Describe the demo agent: state, host, generations, and its transitions with reasons', method: 'tether.v1.AdminService/DescribeAgent', body: '{"agent_id":"demo-agent"}', isAdmin: true },
  { title: 'Rotate the demo agent now', method: 'tether.v1.AdminService/RotateAgentCredential', body: '{"agent_id":"demo-agent"}', isAdmin: true },
  { title: 'The public signing keys', method: 'tether.v1.AdminService/GetJwks', body: '{}', isAdmin: true },
];

/**
 * The commands `npm start` prints. The admin token is read from a file in the
 * data directory (buf curl `-H @file`; grpcurl `-expand-headers` from an
 * environment variable), never pasted on a command line.
 */
export function tryCommands(target: string, dataDir: string): TryCommand[] {
  return ROWS.map((row) => {
    const body = row.body === undefined ? '' : ` -d '${row.body}'`;
    if (row.method === undefined) {
      return {
        title: row.title,
        grpcurl: `grpcurl -plaintext ${target} list`,
        bufCurl: `npx buf curl --protocol grpc --http2-prior-knowledge --list-services http://${target}`,
      };
    }
    const grpcurlAuth = row.isAdmin === true ? ` -expand-headers -H 'authorization: Bearer \${TETHER_ADMIN_TOKEN}'` : '';
    const grpcurlEnv = row.isAdmin === true ? `TETHER_ADMIN_TOKEN="$(cat ${dataDir}/admin-token)" ` : '';
    const bufAuth = row.isAdmin === true ? ` -H @${dataDir}/admin-headers` : '';
    return {
      title: row.title,
      grpcurl: `${grpcurlEnv}grpcurl -plaintext${grpcurlAuth}${body} ${target} ${row.method}`,
      bufCurl: `npx buf curl --protocol grpc --http2-prior-knowledge${bufAuth}${body} http://${target}/${row.method}`,
    };
  });
}

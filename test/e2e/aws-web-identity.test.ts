/**
 * Issue 17, Show 3: the AWS SDK's web-identity credential provider
 * (`@aws-sdk/credential-provider-web-identity`, unchanged) reads a process
 * agent's audience-token file and exchanges it at a local STS on 127.0.0.1
 * that verifies it as AWS would: through the issuer's discovery document,
 * ES256 only, `iss` and `aud` pinned. It gets credentials, gets them again
 * after the host replaced the file, and fails on a tampered file.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fromTokenFile } from '@aws-sdk/credential-provider-web-identity';
import { createRemoteJWKSet, decodeJwt, jwtVerify } from 'jose';
import { afterEach, describe, expect, it } from 'vitest';
import { refreshAtMs } from '../../agent-host/audience-file-keeper.js';
import { listen } from '../../common/metrics-http.js';
import { call, Harness, killStartedAgentProcesses } from '../support/harness.js';
import { startHttpFront, type HttpFront } from '../support/http-front.js';
import { nextEvent, waitUntil } from '../support/wait.js';

const NODE = process.execPath;
const FIXTURE = fileURLToPath(new URL('../support/process-agent-fixture.mjs', import.meta.url));
const AGENT_ID = 'aws-sdk-agent';
const STS_AUDIENCE = 'sts.amazonaws.com';
const ROLE_ARN = 'arn:aws:iam::123456789012:role/tether-agent';
const AGENT_TTL_MS = 3_600_000;

/** What the local STS saw: every request, and the verified claims of those it accepted. */
interface StsLog {
  requests: number;
  accepted: { sub: string; jti: string; roleArn: string; sessionName: string }[];
  refused: string[];
}

/**
 * A local STS: AssumeRoleWithWebIdentity (query protocol, form body) only.
 * The token is verified as AWS does for an IAM OIDC provider: keys from the
 * `jwks_uri` of the issuer's discovery document, ES256, `iss` = the issuer,
 * `aud` = sts.amazonaws.com, times on `now()`.
 */
async function startSts(issuerUrl: string, now: () => number): Promise<{ url: string; log: StsLog; server: Server }> {
  const discovery = (await (await fetch(`${issuerUrl}/.well-known/openid-configuration`)).json()) as { issuer: string; jwks_uri: string };
  const jwks = createRemoteJWKSet(new URL(discovery.jwks_uri), { cooldownDuration: 0 });
  const log: StsLog = { requests: 0, accepted: [], refused: [] };
  const server = createServer((request, response) => {
    let body = '';
    request.setEncoding('utf8');
    request.on('data', (chunk: string) => (body += chunk));
    request.on('end', () => {
      log.requests++;
      const form = new URLSearchParams(body);
      const requestId = randomUUID();
      const refuse = (code: string, message: string): void => {
        log.refused.push(code);
        response.writeHead(400, { 'content-type': 'text/xml', 'x-amzn-requestid': requestId });
        response.end(`<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>${code}</Code><Message>${message}</Message></Error><RequestId>${requestId}</RequestId></ErrorResponse>`);
      };
      if (form.get('Action') !== 'AssumeRoleWithWebIdentity') {
        refuse('InvalidAction', 'only AssumeRoleWithWebIdentity');
        return;
      }
      jwtVerify(form.get('WebIdentityToken') ?? '', jwks, { issuer: discovery.issuer, audience: STS_AUDIENCE, algorithms: ['ES256'], currentDate: new Date(now()) }).then(
        ({ payload }) => {
          const sessionName = form.get('RoleSessionName') ?? '';
          log.accepted.push({ sub: String(payload.sub), jti: String(payload.jti), roleArn: form.get('RoleArn') ?? '', sessionName });
          // The credentials expire an hour from now in real time: the SDK compares them to the wall clock.
          const expiration = new Date(Date.now() + 3_600_000).toISOString();
          response.writeHead(200, { 'content-type': 'text/xml', 'x-amzn-requestid': requestId });
          response.end(
            `<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleWithWebIdentityResult>` +
              `<SubjectFromWebIdentityToken>${String(payload.sub)}</SubjectFromWebIdentityToken><Audience>${STS_AUDIENCE}</Audience>` +
              `<AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/tether-agent/${sessionName}</Arn><AssumedRoleId>AROAEXAMPLE:${sessionName}</AssumedRoleId></AssumedRoleUser>` +
              `<Credentials><SessionToken>session-${log.accepted.length}</SessionToken><SecretAccessKey>secret-${log.accepted.length}</SecretAccessKey>` +
              `<Expiration>${expiration}</Expiration><AccessKeyId>ASIAEXAMPLE${log.accepted.length}</AccessKeyId></Credentials>` +
              `<Provider>${discovery.issuer}</Provider></AssumeRoleWithWebIdentityResult><ResponseMetadata><RequestId>${requestId}</RequestId></ResponseMetadata></AssumeRoleWithWebIdentityResponse>`,
          );
        },
        () => refuse('InvalidIdentityToken', 'the web identity token could not be verified'),
      );
    });
  });
  const port = await listen(server, '127.0.0.1:0');
  return { url: `http://127.0.0.1:${port}`, log, server };
}

describe('AWS SDK web-identity provider against an audience-token file', () => {
  let harness: Harness | undefined;
  let front: HttpFront | undefined;
  let sts: Server | undefined;
  const dirs: string[] = [];

  afterEach(async () => {
    killStartedAgentProcesses(harness);
    await harness?.close();
    harness = undefined;
    await front?.close();
    front = undefined;
    const server = sts;
    if (server !== undefined) {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
    sts = undefined;
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  it('obtains credentials from the file, again after the host replaced it, and fails on a tampered file', async () => {
    front = await startHttpFront();
    harness = await Harness.start({ httpAddress: '127.0.0.1:0', issuerUrl: front.url, agentTokenTtlMs: AGENT_TTL_MS });
    const h = harness;
    front.pointAt(h.cp.httpPort);
    const agentsDir = join(mkdtempSync(join(tmpdir(), 'tether-aws-')), 'agents');
    dirs.push(agentsDir);
    const { host, hostId } = await h.startHost('h', { allowedCommands: [NODE], agentsDir, stopGraceMs: 10_000 });
    const started = nextEvent<{ agentId: string }>(host.events, 'agent-started', (e) => e.agentId === AGENT_ID);
    await call(h.admin.dispatchAgent.bind(h.admin), {
      agentId: AGENT_ID,
      name: AGENT_ID,
      hostId,
      hostLabels: [],
      spec: { kind: 'process', module: '', command: NODE, args: [FIXTURE, '--dump-env'], config: '', audienceFiles: { files: [{ name: 'aws', audience: STS_AUDIENCE }] } },
    });
    await started;
    const agentDir = join(agentsDir, AGENT_ID);
    await waitUntil(() => existsSync(join(agentDir, 'env.json')), 'the agent to write its environment');
    // The path as the agent's environment gives it: what the agent would hand its SDK as AWS_WEB_IDENTITY_TOKEN_FILE.
    const tokenFile = (JSON.parse(readFileSync(join(agentDir, 'env.json'), 'utf8')) as Record<string, string>).TETHER_AUDIENCE_FILE_AWS ?? '';
    expect(tokenFile).toBe(join(agentDir, 'tokens', 'aws'));

    const local = await startSts(front.url, () => h.clock.now());
    sts = local.server;
    const provider = fromTokenFile({
      webIdentityTokenFile: tokenFile,
      roleArn: ROLE_ARN,
      roleSessionName: AGENT_ID,
      clientConfig: { endpoint: local.url, region: 'us-east-1', maxAttempts: 1 },
    });

    const first = await provider();
    expect(first).toMatchObject({ accessKeyId: 'ASIAEXAMPLE1', secretAccessKey: 'secret-1', sessionToken: 'session-1' });
    expect(local.log.requests).toBe(1);
    expect(local.log.accepted).toEqual([{ sub: AGENT_ID, jti: decodeJwt(readFileSync(tokenFile, 'utf8')).jti, roleArn: ROLE_ARN, sessionName: AGENT_ID }]);

    // The host replaces the file after its refresh point; the SDK reads the new one.
    const claims = decodeJwt(readFileSync(tokenFile, 'utf8'));
    const inode = statSync(tokenFile).ino;
    h.clock.advance(refreshAtMs((claims.iat ?? 0) * 1000, (claims.exp ?? 0) * 1000, AGENT_TTL_MS) - h.clock.now() + 1_000);
    await waitUntil(() => statSync(tokenFile).ino !== inode, 'the host to replace the file');
    const second = await provider();
    expect(second).toMatchObject({ accessKeyId: 'ASIAEXAMPLE2' });
    expect(local.log.requests).toBe(2);
    expect(local.log.accepted[1]?.jti).not.toBe(claims.jti);
    expect(local.log.accepted[1]?.jti).toBe(decodeJwt(readFileSync(tokenFile, 'utf8')).jti);

    // Tampered (one claim changed, signature kept): the STS refuses it, and the SDK's call fails.
    const [header, payload, signature] = readFileSync(tokenFile, 'utf8').split('.');
    const forged = { ...(JSON.parse(Buffer.from(payload ?? '', 'base64url').toString()) as Record<string, unknown>), sub: 'someone-else' };
    writeFileSync(tokenFile, `${header}.${Buffer.from(JSON.stringify(forged)).toString('base64url')}.${signature}`, { mode: 0o600 });
    await expect(provider()).rejects.toThrow(/could not be verified|InvalidIdentityToken/);
    expect(local.log.requests).toBe(3);
    expect(local.log.refused).toEqual(['InvalidIdentityToken']);
    expect(local.log.accepted).toHaveLength(2);
  });
});

import { describe, expect, it } from 'vitest';
import { childEnvironment } from '../../agent-host/child-environment.js';
import { encodeMessageLine, LineSplitter, parseControlLine, redactJwts } from '../../agent-host/process-protocol.js';

// A made-up token (never issued), assembled here so no JWT-shaped string sits in the repository.
const JWT = ['eyJhbGciOiJFZERTQSJ9', 'eyJzdWIiOiJhIiwiZ2VuIjoxfQ', 'c2lnbmF0dXJl'].join('.');

describe('parseControlLine', () => {
  it.each([
    ['{"ack":1}', { type: 'ack', seq: 1 }],
    ['  {"ack":42}\r', { type: 'ack', seq: 42 }],
    ['{"nack":3,"error":"busy"}', { type: 'nack', seq: 3, error: 'busy' }],
    ['{"nack":3}', { type: 'nack', seq: 3, error: 'refused by the agent' }],
    ['{"nack":3,"error":""}', { type: 'nack', seq: 3, error: 'refused by the agent' }],
    [`{"nack":3,"error":"bad token ${JWT}"}`, { type: 'nack', seq: 3, error: 'bad token [redacted-jwt]' }],
    ['{"pong":7}', { type: 'pong', ping: 7 }],
  ])('%s is a control line', (line, expected) => {
    expect(parseControlLine(line)).toEqual(expected);
  });

  it.each([
    'ack 1',
    'hello',
    '',
    '[1]',
    'null',
    '{"ack":"1"}',
    '{"ack":0}',
    '{"ack":-1}',
    '{"ack":1.5}',
    '{"ack":1,"msg":"a log line with an ack field"}',
    '{"nack":1,"error":5}',
    '{"nack":1,"error":"x","extra":true}',
    '{"ack":1',
    '{"pong":0}',
    '{"pong":"7"}',
    '{"pong":7,"ack":1}',
  ])('%s is not', (line) => {
    expect(parseControlLine(line)).toBeUndefined();
  });

  it('cuts a long nack error', () => {
    const parsed = parseControlLine(JSON.stringify({ nack: 1, error: 'x'.repeat(10_000) }));
    expect(parsed?.type === 'nack' ? parsed.error.length : 0).toBe(512);
  });
});

describe('redactJwts', () => {
  it.each([
    [`token ${JWT} here`, 'token [redacted-jwt] here'],
    ['Bearer eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJh', 'Bearer [redacted-jwt]'],
    ['nothing to see', 'nothing to see'],
    [`${JWT},${JWT}`, '[redacted-jwt],[redacted-jwt]'],
  ])('%s', (input, expected) => {
    expect(redactJwts(input)).toBe(expected);
  });
});

describe('LineSplitter', () => {
  it('joins chunks into lines and keeps the unterminated rest', () => {
    const splitter = new LineSplitter(100);
    expect(splitter.push('{"ack"')).toEqual([]);
    expect(splitter.push(':1}\nhel')).toEqual([{ text: '{"ack":1}', isTruncated: false }]);
    expect(splitter.push('lo\r\n\n')).toEqual([
      { text: 'hello', isTruncated: false },
      { text: '', isTruncated: false },
    ]);
    expect(splitter.flush()).toBeUndefined();
    splitter.push('tail');
    expect(splitter.flush()).toEqual({ text: 'tail', isTruncated: false });
  });

  it('holds at most the bound of a line, however long', () => {
    const splitter = new LineSplitter(8);
    expect(splitter.push('x'.repeat(5))).toEqual([]);
    expect(splitter.push('y'.repeat(1_000_000))).toEqual([]);
    expect(splitter.push('z\n{"ack":1}\n')).toEqual([
      { text: 'xxxxxyyy', isTruncated: true },
      { text: '{"ack":1}'.slice(0, 8), isTruncated: true },
    ]);
  });
});

describe('encodeMessageLine', () => {
  it('is one JSON line with the seq and a base64 payload', () => {
    const line = encodeMessageLine({ seq: 7, id: 'm', from: 'operator', contentType: 'text/plain', payload: Buffer.from('hi\n'), createdAtMs: 5 });
    expect(line.endsWith('\n')).toBe(true);
    expect(line.indexOf('\n')).toBe(line.length - 1);
    expect(JSON.parse(line)).toEqual({ seq: 7, id: 'm', from: 'operator', contentType: 'text/plain', payload: Buffer.from('hi\n').toString('base64'), createdAtMs: 5 });
  });
});

describe('childEnvironment', () => {
  it('passes the allow-list and the agent variables, nothing else', () => {
    const env = childEnvironment(
      {
        PATH: '/usr/bin',
        HOME: '/home/h',
        TZ: 'UTC',
        TETHER_ADMIN_TOKEN: 'admin',
        TETHER_JOIN_TOKEN: 'join',
        TETHER_JOIN_TOKEN_FILE: '/secret/join',
        TETHER_HOST_DATA_DIR: '/data',
        TETHER_TOKEN_FILE: '/elsewhere/token',
        AWS_SECRET_ACCESS_KEY: 'aws',
        NODE_OPTIONS: '--require /tmp/evil.js',
      },
      { agentId: 'a1', name: 'one', incarnation: 2, server: '127.0.0.1:7443', tokenFile: '/d/a1/token', agentDir: '/d/a1', config: '' },
    );
    expect(env).toEqual({
      PATH: '/usr/bin',
      HOME: '/home/h',
      TZ: 'UTC',
      TETHER_AGENT_ID: 'a1',
      TETHER_AGENT_NAME: 'one',
      TETHER_AGENT_INCARNATION: '2',
      TETHER_SERVER: '127.0.0.1:7443',
      TETHER_TOKEN_FILE: '/d/a1/token',
      TETHER_AGENT_DIR: '/d/a1',
    });
  });

  it('adds the config and the CA file when there are some', () => {
    const env = childEnvironment({}, { agentId: 'a', name: 'a', incarnation: 1, server: 's', tokenFile: 't', agentDir: 'd', config: '{"x":1}', caFile: '/ca.pem' });
    expect(env.TETHER_AGENT_CONFIG).toBe('{"x":1}');
    expect(env.TETHER_CA_FILE).toBe('/ca.pem');
  });
});

import { describe, expect, it } from 'vitest';
import { connectionStringPassword, isPostgresUrl, redactConnectionString } from '../../../control-plane/store/postgres-url.js';

describe('PostgreSQL connection strings', () => {
  it.each([
    { url: 'postgres://tether:s3cr%40t@db:5432/tether', redacted: 'postgres://tether:***@db:5432/tether', password: 's3cr@t' },
    { url: 'postgresql://u:p@h/d?sslmode=require', redacted: 'postgresql://u:***@h/d?sslmode=require', password: 'p' },
    { url: 'postgres://u@h/d?password=p%20w&x=1', redacted: 'postgres://u@h/d?password=***&x=1', password: 'p w' },
    { url: 'postgres://postgres@127.0.0.1:5432/test', redacted: 'postgres://postgres@127.0.0.1:5432/test', password: undefined },
  ])('redacts the password of $url', ({ url, redacted, password }) => {
    expect(redactConnectionString(url)).toBe(redacted);
    expect(connectionStringPassword(url)).toBe(password);
  });

  it.each([
    ['postgres://h/d', true],
    ['postgresql://h/d', true],
    ['POSTGRES://h/d', true],
    ['sqlite', false],
    ['/var/lib/tether', false],
  ])('tells %s is a PostgreSQL URL: %s', (store, isPostgres) => {
    expect(isPostgresUrl(store)).toBe(isPostgres);
  });
});

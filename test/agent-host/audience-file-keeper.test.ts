import { describe, expect, it } from 'vitest';
import { refreshAtMs } from '../../agent-host/audience-file-keeper.js';
import { audienceFileVariable, MAX_AUDIENCE_FILES, parseAudienceFile, validateAudienceFiles } from '../../common/audience-files.js';
import { InvalidArgumentError } from '../../common/errors.js';

const HOUR = 3_600_000;

describe('audience-token files', () => {
  it('refresh a token while an outage of a third of the agent TTL (and a twentieth more) would still leave it valid, never before an eighth of its life', () => {
    // A full file token (half the TTL): replaced with TTL/3 + TTL/20 left.
    expect(refreshAtMs(0, HOUR / 2, HOUR)).toBe(HOUR / 2 - HOUR / 3 - HOUR / 20);
    expect(HOUR / 2 - refreshAtMs(0, HOUR / 2, HOUR)).toBeGreaterThan(HOUR / 3);
    // Cut short by its agent token's exp: not minted again at once (the next agent token brings a full one).
    expect(refreshAtMs(0, 0.35 * HOUR, HOUR)).toBe(Math.ceil((0.35 * HOUR) / 8));
  });

  it('take plain names only, one variable each, and plain audiences', () => {
    expect(parseAudienceFile('aws=sts.amazonaws.com')).toEqual({ name: 'aws', audience: 'sts.amazonaws.com' });
    expect(parseAudienceFile('gcp=//iam.googleapis.com/a=b')).toEqual({ name: 'gcp', audience: '//iam.googleapis.com/a=b' });
    expect(audienceFileVariable('my-gcp')).toBe('TETHER_AUDIENCE_FILE_MY_GCP');
    for (const bad of ['../x=a', 'a/b=a', '..=a', '.=a', '=a', 'token=a', 'aws=', 'aws=has space', 'aws']) {
      expect(() => parseAudienceFile(bad), bad).toThrow(InvalidArgumentError);
    }
    expect(() => validateAudienceFiles([{ name: 'a-b', audience: 'x' }, { name: 'a_b', audience: 'y' }])).toThrow(/same variable/);
    const many = Array.from({ length: MAX_AUDIENCE_FILES + 1 }, (_, i) => ({ name: `f${i}`, audience: 'x' }));
    expect(() => validateAudienceFiles(many)).toThrow(InvalidArgumentError);
    expect(() => validateAudienceFiles(many.slice(1))).not.toThrow();
  });
});

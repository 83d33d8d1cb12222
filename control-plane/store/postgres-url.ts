/** Connection strings of the PostgreSQL store: recognising one, and showing one without its password. */

/** Whether `store` (a `--store` value) names a PostgreSQL database rather than the embedded store. */
export function isPostgresUrl(store: string): boolean {
  return /^postgres(ql)?:\/\//i.test(store);
}

/**
 * `url` fit for a log line or an error message: the password (in the userinfo
 * or a `password=` parameter) replaced by `***`.
 */
export function redactConnectionString(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:/?#@]*):[^@/?#]*@/i, '$1:***@').replace(/([?&]password=)[^&#]*/gi, '$1***');
}

/** The password in `url`, if it holds one (for a redactor to learn), percent-decoded. */
export function connectionStringPassword(url: string): string | undefined {
  const inUserinfo = /^[a-z][a-z0-9+.-]*:\/\/[^:/?#@]*:([^@/?#]*)@/i.exec(url)?.[1];
  const inQuery = /[?&]password=([^&#]*)/i.exec(url)?.[1];
  const raw = inUserinfo ?? inQuery;
  if (raw === undefined || raw === '') return undefined;
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw;
  }
}

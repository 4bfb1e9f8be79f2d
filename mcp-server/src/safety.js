// DNS-rebinding protection: a web page the user visits must not reach this server through a hostname it
// controls (Host) or script it from another origin (Origin). Both are checked, with the port, on every path.

const LOCAL_NAMES = ['127.0.0.1', 'localhost', '[::1]'];

/** The allowed `Host` values and `Origin`s: the loopback names and the bound host, with the port; plus extras. */
export function allowList(settings, port) {
  const names = new Set([...LOCAL_NAMES, settings.host.includes(':') ? `[${settings.host}]` : settings.host]);
  const hosts = new Set([...names].map((name) => `${name}:${port}`.toLowerCase()));
  const origins = new Set([...names].map((name) => `http://${name}:${port}`.toLowerCase()));
  for (const host of settings.allowed_hosts) hosts.add(host.toLowerCase());
  for (const origin of settings.allowed_origins) origins.add(origin.toLowerCase());
  return { hosts, origins };
}

/** Why the request is refused, or null. A missing Origin is allowed: non-browser clients send none. */
export function rejection(req, { hosts, origins }) {
  const host = (req.headers.host ?? '').toLowerCase();
  if (!hosts.has('*') && !hosts.has(host)) return `Host header ${JSON.stringify(req.headers.host ?? '')} is not allowed`;
  const origin = req.headers.origin;
  if (origin !== undefined && !origins.has('*') && !origins.has(origin.toLowerCase())) {
    return `Origin ${JSON.stringify(origin)} is not allowed`;
  }
  return null;
}

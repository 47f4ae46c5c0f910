// Helpers shared by the logging app's endpoints.

/** An error answer in Synod's shape: {"error": {"code", "message"}}. */
export function error(statusCode, code, message) {
  // A 503 is a bound reached: the client retries (CCF's clients honour Retry-After).
  const headers = statusCode === 503 ? { "retry-after": "1" } : {};
  return { statusCode, headers, body: { error: { code, message } } };
}

/** Parses a query string ("a=1&b=2") into an object. */
export function parseQuery(query) {
  const out = {};
  for (const part of (query || "").split("&")) {
    if (part === "") continue;
    const i = part.indexOf("=");
    const k = decodeURIComponent(i < 0 ? part : part.slice(0, i));
    out[k] = i < 0 ? "" : decodeURIComponent(part.slice(i + 1).replace(/\+/g, " "));
  }
  return out;
}

/** An id as an 8-byte big-endian key, so the map's byte order is the numeric order. */
export function idKey(id) {
  const b = new ArrayBuffer(8);
  const v = new DataView(b);
  v.setUint32(0, Math.floor(id / 2 ** 32));
  v.setUint32(4, id % 2 ** 32);
  return b;
}

/** The id of an 8-byte big-endian key. */
export function keyId(b) {
  const v = new DataView(b);
  return v.getUint32(0) * 2 ** 32 + v.getUint32(4);
}

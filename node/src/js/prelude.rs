//! The `ccf` global in JavaScript, built over the Rust natives in `__synod` (CCF's API, the subset real apps and
//! constitutions use, plus ordered range reads).

/// Evaluated once per context, before any module.
pub const PRELUDE: &str = r#"
(() => {
  const n = globalThis.__synod;
  delete globalThis.__synod;
  const toBuf = (x, what) => {
    if (x instanceof ArrayBuffer) return x;
    if (ArrayBuffer.isView(x)) return x.buffer.slice(x.byteOffset, x.byteOffset + x.byteLength);
    throw new TypeError(`${what} must be an ArrayBuffer or a typed array`);
  };
  class KvMap {
    constructor(name) { this.name = name; }
    get(k) { return n.get(this.name, toBuf(k, "key")); }
    has(k) { return n.get(this.name, toBuf(k, "key")) !== undefined; }
    set(k, v) { n.set(this.name, toBuf(k, "key"), toBuf(v, "value")); return this; }
    delete(k) { return n.delete(this.name, toBuf(k, "key")); }
    range(from, to, limit) {
      return n.range(this.name, from === undefined ? undefined : toBuf(from, "from"),
                     to === undefined ? undefined : toBuf(to, "to"), limit);
    }
    forEach(f) { for (const [k, v] of n.range(this.name, undefined, undefined, undefined)) f(v, k, this); }
    clear() { for (const [k] of n.range(this.name, undefined, undefined, undefined)) n.delete(this.name, k); }
    get size() { return n.range(this.name, undefined, undefined, undefined).length; }
  }
  const kv = new Proxy({}, {
    get: (_, name) => (typeof name === "string" ? new KvMap(name) : undefined),
  });
  const strToBuf = (s) => n.strToBuf(String(s));
  const bufToStr = (b) => n.bufToStr(toBuf(b, "buffer"));
  globalThis.ccf = {
    kv,
    strToBuf,
    bufToStr,
    jsonCompatibleToBuf: (v) => strToBuf(JSON.stringify(v)),
    bufToJsonCompatible: (b) => JSON.parse(bufToStr(b)),
    pemToId: (pem) => n.pemToId(pem),
    crypto: {
      digest: (alg, data) => {
        if (alg !== "SHA-256") throw new TypeError(`unsupported digest ${alg} (SHA-256 is)`);
        return n.sha256(toBuf(data, "data"));
      },
      verifySignature: (algorithm, key, signature, data) =>
        n.verifySignature(typeof algorithm === "string" ? algorithm : algorithm.name, key,
                          toBuf(signature, "signature"), toBuf(data, "data")),
    },
    consensus: {
      getLastCommittedTxId: () => {
        const [view, seqno] = n.lastCommitted().split(".").map(Number);
        return { view, seqno };
      },
    },
    rpc: { setApplyWrites: (v) => n.setApplyWrites(!!v) },
  };
  const hidden = (name, value) => Object.defineProperty(globalThis, name, { value, enumerable: false });
  hidden("__synod_request", (json, body) => {
    const r = JSON.parse(json);
    r.body = {
      text: () => bufToStr(body),
      json: () => JSON.parse(bufToStr(body)),
      arrayBuffer: () => body.slice(0),
    };
    return r;
  });
  hidden("__synod_response", (r) => {
    if (r === undefined || r === null) r = {};
    if (typeof r !== "object") throw new TypeError("a handler returns {statusCode, headers, body}");
    const status = r.statusCode === undefined ? 200 : r.statusCode;
    const headers = r.headers === undefined ? {} : r.headers;
    let body = r.body;
    let kind;
    if (body === undefined || body === null) { kind = "none"; body = new ArrayBuffer(0); }
    else if (body instanceof ArrayBuffer || ArrayBuffer.isView(body)) { kind = "binary"; body = toBuf(body, "body"); }
    else if (typeof body === "string") { kind = "text"; body = strToBuf(body); }
    else { kind = "json"; body = strToBuf(JSON.stringify(body)); }
    return [status, JSON.stringify(headers), kind, body];
  });
})();
"#;

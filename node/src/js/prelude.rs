//! The `ccf` global in JavaScript, built over the Rust natives in `__synod` (CCF's API, the subset real apps and
//! constitutions use, plus ordered range reads and a synchronous `ccf.historical`).

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
  // `ccf.kv[name]`: a handle per name, made by a proxy the first time and then kept as a property of `kv` itself,
  // so that later lookups are plain property reads (a handle holds nothing but its name). Bounded, as names come
  // from scripts.
  let handles = 0;
  const kv = Object.create(new Proxy(Object.create(null), {
    get: (_, name, receiver) => {
      if (typeof name !== "string" || receiver !== kv) return undefined;
      if (handles >= 256) {
        for (const k of Object.getOwnPropertyNames(kv)) delete kv[k];
        handles = 0;
      }
      const m = new KvMap(name);
      Object.defineProperty(kv, name, { value: m, configurable: true });
      handles++;
      return m;
    },
    set: () => false,
    defineProperty: () => false,
  }));
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
      // CCF's SigningAlgorithm: {name: "ECDSA", hash: "SHA-256" | "SHA-384"} or {name: "EdDSA"}.
      verifySignature: (algorithm, key, signature, data) =>
        n.verifySignature(typeof algorithm === "string" ? algorithm : String(algorithm.name),
                          typeof algorithm === "string" ? "" : String(algorithm.hash ?? ""), String(key),
                          toBuf(signature, "signature"), toBuf(data, "data")),
    },
    consensus: {
      getLastCommittedTxId: () => {
        const [view, seqno] = n.lastCommitted().split(".").map(Number);
        return { view, seqno };
      },
    },
    rpc: { setApplyWrites: (v) => n.setApplyWrites(!!v) },
    historical: {
      getValueAt: (map, key, seqno) => n.historicalValueAt(String(map), toBuf(key, "key"), Number(seqno)),
      getVersions: (map, key, fromSeqno, toSeqno, limit) =>
        n.historicalVersions(String(map), toBuf(key, "key"), Number(fromSeqno), Number(toSeqno),
                             limit === undefined ? 100 : Number(limit)),
      getReceipt: (txId) => JSON.parse(n.historicalReceipt(
        typeof txId === "object" && txId !== null ? `${txId.view}.${txId.seqno}` : String(txId))),
    },
  };
  const hidden = (name, value) => Object.defineProperty(globalThis, name, { value, enumerable: false });
  // The request object from its parts (built by the node, no JSON text in between); the body is read from the
  // node when the handler asks for it.
  class Body {
    text() { return n.bodyText(); }
    json() { return n.bodyJson(); }
    arrayBuffer() { return n.bodyBuffer(); }
  }
  hidden("__synod_request", (method, url, path, query, route, headers, params, policy, id, data, cert) => ({
    headers: headers === undefined ? {} : headers,
    query, url, method, path,
    caller: policy === undefined ? null : { policy, id, data, cert },
    params: params === undefined ? {} : params,
    route,
    body: new Body(),
  }));
  // The bytes a typed array or DataView of a response body views, as an ArrayBuffer.
  hidden("__synod_view_buffer", (v) => toBuf(v, "body"));
})();
"#;

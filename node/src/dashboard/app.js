// Synod's dashboard: the network, commit progress, proposals and a ledger explorer that verifies COSE receipts in the
// browser (WebCrypto) against the service certificate. Plain ES module, no dependencies, served by every node.
"use strict";

const $ = (id) => document.getElementById(id);
const GOV = "api-version=2024-07-01";
const PROPOSALS_SHOWN = 20;

// ---- bytes ----

const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
const concat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let i = 0;
  for (const p of parts) {
    out.set(p, i);
    i += p.length;
  }
  return out;
};
const sha256 = async (bytes) => new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
const equal = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

function pemToDer(pem) {
  const m = /-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/.exec(pem);
  if (!m) throw new Error("no CERTIFICATE block in the service certificate");
  return Uint8Array.from(atob(m[1].replace(/\s+/g, "")), (c) => c.charCodeAt(0));
}

// ---- DER: just enough to find a certificate's SubjectPublicKeyInfo ----

function tlv(bytes, at) {
  if (at + 2 > bytes.length) throw new Error("truncated DER");
  const tag = bytes[at];
  let len = bytes[at + 1];
  let header = 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n < 1 || n > 3) throw new Error("unsupported DER length");
    len = 0;
    for (let i = 0; i < n; i++) len = (len << 8) | bytes[at + 2 + i];
    header += n;
  }
  const end = at + header + len;
  if (end > bytes.length) throw new Error("truncated DER");
  return { tag, start: at + header, end, whole: bytes.subarray(at, end) };
}

function children(bytes, parent) {
  const out = [];
  for (let at = parent.start; at < parent.end; ) {
    const child = tlv(bytes, at);
    out.push(child);
    at = child.end;
  }
  return out;
}

const OID_P384 = "2b81040022";
const OID_P256 = "2a8648ce3d030107";
const OID_ED25519 = "2b6570";

// The certificate's SubjectPublicKeyInfo and the WebCrypto algorithm of its key.
function certificateKey(der) {
  const cert = tlv(der, 0);
  const tbs = children(der, cert)[0];
  const fields = children(der, tbs);
  const rest = fields[0].tag === 0xa0 ? fields.slice(1) : fields; // skip the explicit version
  const spki = rest[5]; // serial, signature, issuer, validity, subject, subjectPublicKeyInfo
  if (!spki || spki.tag !== 0x30) throw new Error("no SubjectPublicKeyInfo");
  const algorithm = children(der, children(der, spki)[0]).map((c) => hex(der.subarray(c.start, c.end)));
  if (algorithm[0] === OID_ED25519) return { spki: spki.whole, alg: { name: "Ed25519" }, cose: -8 };
  if (algorithm[1] === OID_P384)
    return { spki: spki.whole, alg: { name: "ECDSA", namedCurve: "P-384", hash: "SHA-384" }, cose: -35 };
  if (algorithm[1] === OID_P256)
    return { spki: spki.whole, alg: { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" }, cose: -7 };
  throw new Error("the service key is not P-384, P-256 or Ed25519");
}

// ---- CBOR: the subset COSE receipts use (definite lengths) ----

function cborDecode(bytes) {
  let at = 0;
  const need = (n) => {
    if (at + n > bytes.length) throw new Error("truncated CBOR");
  };
  const arg = (info) => {
    if (info < 24) return info;
    const n = { 24: 1, 25: 2, 26: 4, 27: 8 }[info];
    if (!n) throw new Error("indefinite or reserved CBOR length");
    need(n);
    let v = 0;
    for (let i = 0; i < n; i++) v = v * 256 + bytes[at + i];
    at += n;
    if (!Number.isSafeInteger(v)) throw new Error("CBOR integer too large");
    return v;
  };
  const item = (depth) => {
    if (depth > 16) throw new Error("CBOR nested too deep");
    need(1);
    const head = bytes[at++];
    const major = head >> 5;
    const info = head & 0x1f;
    if (major === 7) {
      const simple = { 20: false, 21: true, 22: null };
      if (!(info in simple)) throw new Error("unsupported CBOR simple value");
      return simple[info];
    }
    const n = arg(info);
    switch (major) {
      case 0: return n;
      case 1: return -1 - n;
      case 2: need(n); at += n; return bytes.slice(at - n, at);
      case 3: need(n); at += n; return new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(at - n, at));
      case 4: return Array.from({ length: n }, () => item(depth + 1));
      case 5: {
        const m = new Map();
        for (let i = 0; i < n; i++) m.set(item(depth + 1), item(depth + 1));
        return m;
      }
      case 6: return { tag: n, value: item(depth + 1) };
    }
    throw new Error("bad CBOR");
  };
  const value = item(0);
  if (at !== bytes.length) throw new Error("trailing bytes after the CBOR item");
  return value;
}

function cborHead(major, n) {
  if (n < 24) return Uint8Array.of((major << 5) | n);
  if (n < 256) return Uint8Array.of((major << 5) | 24, n);
  if (n < 65536) return Uint8Array.of((major << 5) | 25, n >> 8, n & 0xff);
  throw new Error("too long");
}
const cborBytes = (b) => concat(cborHead(2, b.length), b);

// ---- COSE receipt verification (draft-ietf-cose-merkle-tree-proofs, CCF's ledger profile) ----

/// Verifies a COSE receipt against the service certificate (PEM): returns what it proves, or throws saying why not.
export async function verifyCoseReceipt(receiptBytes, serviceCertPem) {
  const key = certificateKey(pemToDer(serviceCertPem));
  let msg = cborDecode(receiptBytes);
  if (msg && msg.tag === 18) msg = msg.value;
  if (!Array.isArray(msg) || msg.length !== 4) throw new Error("not a COSE_Sign1");
  const [protectedBytes, unprotected, payload, signature] = msg;
  if (!(protectedBytes instanceof Uint8Array) || !(unprotected instanceof Map) || payload !== null ||
      !(signature instanceof Uint8Array)) throw new Error("not a COSE_Sign1 with a detached payload");
  const header = cborDecode(protectedBytes);
  if (header.get(1) !== key.cose) throw new Error(`alg ${header.get(1)} is not the service key's (${key.cose})`);
  if (header.get(395) !== 2) throw new Error("vds (395) is not 2 (CCF ledger)");
  const kid = new TextDecoder().decode(header.get(4) || new Uint8Array());
  if (kid !== hex(await sha256(key.spki))) throw new Error("kid is not the service key's");
  const vdp = unprotected.get(396);
  const proofs = vdp instanceof Map ? vdp.get(-1) : undefined;
  if (!Array.isArray(proofs) || proofs.length === 0) throw new Error("no inclusion proof");
  const cryptoKey = await crypto.subtle.importKey("spki", key.spki, key.alg, false, ["verify"]);
  let result;
  for (const proofBytes of proofs) {
    const proof = cborDecode(proofBytes);
    const [writeSetDigest, commitEvidence, claimsDigest] = proof.get(1);
    let acc = await sha256(concat(writeSetDigest, await sha256(new TextEncoder().encode(commitEvidence)),
      claimsDigest));
    const leaf = acc;
    for (const [left, digest] of proof.get(2)) acc = await sha256(left ? concat(digest, acc) : concat(acc, digest));
    const toBeSigned = concat(Uint8Array.of(0x84), Uint8Array.of(0x6a), new TextEncoder().encode("Signature1"),
      cborBytes(protectedBytes), cborBytes(new Uint8Array()), cborBytes(acc));
    if (!(await crypto.subtle.verify(key.alg, cryptoKey, signature, toBeSigned)))
      throw new Error("the service's signature does not verify over the recomputed root");
    if (result && !equal(result.root, acc)) throw new Error("inclusion proofs disagree on the root");
    result = { root: acc, leaf, commitEvidence };
  }
  const ccf = header.get("ccf.v1");
  return {
    root: hex(result.root),
    leaf: hex(result.leaf),
    txid: result.commitEvidence.split(":")[1],
    signedAt: ccf instanceof Map ? ccf.get("txid") : undefined,
  };
}
window.synodVerifyCoseReceipt = verifyCoseReceipt;

// ---- the page ----

let serviceCertPem;
let lastCommit;

async function getJson(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" } });
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (cls) td.className = cls;
  return td;
}

async function refreshNetwork() {
  const net = await getJson("/node/network");
  serviceCertPem = net.service_certificate;
  const status = $("service-status");
  status.textContent = net.service_status;
  status.className = `badge ${net.service_status}`;
  $("view").textContent = net.current_view;
  $("primary").textContent = net.primary_id ? net.primary_id.slice(0, 16) + "…" : "none known";
  const der = pemToDer(serviceCertPem);
  $("service-fingerprint").textContent = hex(await sha256(der));
  const key = certificateKey(der);
  $("service-key").textContent = key.alg.namedCurve ? `ECDSA ${key.alg.namedCurve}` : key.alg.name;

  const nodes = await getJson("/node/network/nodes");
  const body = $("nodes-body");
  body.replaceChildren();
  for (const n of nodes.nodes) {
    const row = body.insertRow();
    row.dataset.nodeId = n.node_id;
    cell(row, n.node_id.slice(0, 16) + "…", "mono");
    cell(row, n.name);
    cell(row, n.status);
    cell(row, n.consensus_role);
    cell(row, n.primary ? "primary" : "");
    cell(row, n.rpc_interfaces?.primary_rpc_interface?.published_address, "mono");
  }
}

async function refreshCommit() {
  const c = await getJson("/node/commit");
  $("commit").textContent = c.transaction_id;
  const seqno = Number(String(c.transaction_id).split(".")[1]);
  const now = performance.now();
  if (lastCommit) {
    const rate = ((seqno - lastCommit.seqno) * 1000) / (now - lastCommit.at);
    $("commit-rate").textContent = `${rate.toFixed(1)} tx/s`;
  }
  lastCommit = { seqno, at: now };
}

async function refreshProposals() {
  const [proposals, members] = await Promise.all([
    getJson(`/gov/members/proposals?${GOV}`),
    getJson(`/gov/service/members?${GOV}`),
  ]);
  const body = $("proposals-body");
  body.replaceChildren();
  for (const p of proposals.value.slice(-PROPOSALS_SHOWN).reverse()) {
    const row = body.insertRow();
    cell(row, p.proposalId.slice(0, 16) + "…", "mono");
    cell(row, (p.proposerId || "").slice(0, 12) + "…", "mono");
    cell(row, p.state);
    let ballots = p.finalVotes
      ? Object.entries(p.finalVotes).map(([m, v]) => `${m.slice(0, 8)}… ${v ? "for" : "against"}`)
      : [];
    if (!p.finalVotes && p.ballotCount > 0) {
      // Which members have a ballot in (their content is JavaScript, shown by the CLI).
      const present = await Promise.all(members.value.map(async (m) => {
        const r = await fetch(`/gov/members/proposals/${p.proposalId}/ballots/${m.memberId}?${GOV}`);
        return r.ok ? `${m.memberId.slice(0, 8)}… submitted` : null;
      }));
      ballots = present.filter(Boolean);
    }
    cell(row, ballots.length ? ballots.join(", ") : `${p.ballotCount}`);
  }
}

function showReceipt(result) {
  const div = $("receipt");
  div.replaceChildren();
  const p = document.createElement("p");
  p.className = "ok";
  p.id = "receipt-verdict";
  p.textContent = `Receipt verified against the service certificate: transaction ${result.txid}, signed at ` +
    `${result.signedAt}.`;
  const dl = document.createElement("dl");
  for (const [k, v] of [["Merkle root", result.root], ["Leaf", result.leaf]]) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.className = "mono";
    dd.textContent = v;
    dl.append(dt, dd);
  }
  div.append(p, dl);
}

function showReceiptError(e) {
  const p = document.createElement("p");
  p.className = "bad";
  p.id = "receipt-verdict";
  p.textContent = `Receipt refused: ${e.message}`;
  $("receipt").replaceChildren(p);
}

async function lookup(event) {
  event.preventDefault();
  const txid = $("txid").value.trim();
  $("receipt").replaceChildren();
  if (!/^\d+\.\d+$/.test(txid)) {
    $("tx-status").textContent = "A transaction id is view.seqno, e.g. 2.15.";
    return;
  }
  const status = await getJson(`/node/tx?transaction_id=${txid}`);
  $("tx-status").textContent = `${txid}: ${status.status}`;
  if (status.status !== "Committed") return;
  try {
    const r = await fetch(`/app/receipt?transaction_id=${txid}`, { headers: { Accept: "application/cose" } });
    if (!r.ok) throw new Error(`the node answered ${r.status} (a user's client certificate is needed)`);
    showReceipt(await verifyCoseReceipt(new Uint8Array(await r.arrayBuffer()), serviceCertPem));
  } catch (e) {
    showReceiptError(e);
  }
}

async function verifyFile() {
  const file = $("receipt-file").files[0];
  if (!file) return;
  try {
    showReceipt(await verifyCoseReceipt(new Uint8Array(await file.arrayBuffer()), serviceCertPem));
  } catch (e) {
    showReceiptError(e);
  }
}

async function refresh() {
  try {
    await refreshNetwork();
    await refreshCommit();
    await refreshProposals();
    $("refreshed").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.loaded = "true";
  } catch (e) {
    $("refreshed").textContent = `cannot reach the node: ${e.message}`;
  }
}

$("lookup").addEventListener("submit", (e) => lookup(e).catch(showReceiptError));
$("receipt-file").addEventListener("change", () => verifyFile());
refresh();
setInterval(refresh, 2000);

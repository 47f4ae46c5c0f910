// The logging app (CCF's canonical sample) as a JavaScript bundle, with the same JSON API as Synod's native
// logging app: POST {"id", "msg"}, GET/DELETE ?id=, ordered range reads ?from=&to=&limit=, and historical queries
// (/historical?id=&transaction_id=, /historical/range?id=&from_seqno=&to_seqno=&limit=). Records live in
// "jslog.records" (private: sealed in the ledger) and "public:jslog.records" (clear).
import { error, parseQuery, idKey, keyId } from "./util.js";

const PRIVATE = "jslog.records";
const PUBLIC = "public:jslog.records";
const RANGE_LIMIT_MAX = 1000;

function write(map, request) {
  let body;
  try {
    body = request.body.json();
  } catch (e) {
    return error(400, "InvalidInput", `request body is not JSON: ${e.message}`);
  }
  if (typeof body !== "object" || body === null || !Number.isSafeInteger(body.id) || body.id < 0 || typeof body.msg !== "string") {
    return error(400, "InvalidInput", 'expected {"id": <unsigned integer>, "msg": <string>}');
  }
  ccf.kv[map].set(idKey(body.id), ccf.strToBuf(body.msg));
  return { statusCode: 201, body: { id: body.id } };
}

function idOf(request) {
  const q = parseQuery(request.query);
  const id = Number(q.id);
  if (q.id === undefined || !Number.isSafeInteger(id) || id < 0) {
    return undefined;
  }
  return id;
}

function read(map, request) {
  const id = idOf(request);
  if (id === undefined) return error(400, "InvalidInput", "query parameter id must be an unsigned integer");
  const value = ccf.kv[map].get(idKey(id));
  if (value === undefined) return error(404, "ResourceNotFound", `no record with id ${id}`);
  return { body: { msg: ccf.bufToStr(value) } };
}

function remove(map, request) {
  const id = idOf(request);
  if (id === undefined) return error(400, "InvalidInput", "query parameter id must be an unsigned integer");
  if (!ccf.kv[map].delete(idKey(id))) return error(404, "ResourceNotFound", `no record with id ${id}`);
  return { body: { id } };
}

function range(map, request) {
  const q = parseQuery(request.query);
  const from = q.from === undefined ? 0 : Number(q.from);
  const limit = q.limit === undefined ? 100 : Number(q.limit);
  if (!Number.isSafeInteger(from) || from < 0 || !Number.isSafeInteger(limit) || limit < 1 || limit > RANGE_LIMIT_MAX) {
    return error(400, "InvalidInput", `from must be an unsigned integer and limit between 1 and ${RANGE_LIMIT_MAX}`);
  }
  const to = q.to === undefined ? undefined : idKey(Number(q.to));
  const rows = ccf.kv[map].range(idKey(from), to, limit + 1);
  const entries = rows.slice(0, limit).map(([k, v]) => ({ id: keyId(k), msg: ccf.bufToStr(v) }));
  const next = rows.length > limit ? keyId(rows[limit][0]) : null;
  return { body: { entries, next } };
}

export const postPrivate = (r) => write(PRIVATE, r);
export const postPublic = (r) => write(PUBLIC, r);
export const getPrivate = (r) => read(PRIVATE, r);
export const getPublic = (r) => read(PUBLIC, r);
export const deletePrivate = (r) => remove(PRIVATE, r);
export const deletePublic = (r) => remove(PUBLIC, r);
export const rangePrivate = (r) => range(PRIVATE, r);
export const rangePublic = (r) => range(PUBLIC, r);

export function whoami(request) {
  return { body: { policy: request.caller.policy, id: request.caller.id, last_committed: ccf.consensus.getLastCommittedTxId() } };
}

// Historical queries (CCF's logging app has them), over ccf.historical: committed transactions only, read back
// from the node's ledger. Its errors carry the native endpoints' code and status.
function historicalError(e) {
  if (e && typeof e.code === "string" && Number.isInteger(e.statusCode)) {
    return error(e.statusCode, e.code, e.message);
  }
  throw e;
}

function historical(map, request) {
  const q = parseQuery(request.query);
  const id = idOf(request);
  if (id === undefined) return error(400, "InvalidInput", "query parameter id must be an unsigned integer");
  const m = /^(\d+)\.(\d+)$/.exec(q.transaction_id || "");
  if (m === null) return error(400, "InvalidTransactionId", "transaction_id must be of the form <view>.<seqno>");
  const seqno = Number(m[2]);
  try {
    // The receipt first: it refuses Pending, Unknown, Invalid and before-snapshot transactions.
    const receipt = ccf.historical.getReceipt(q.transaction_id);
    const v = ccf.historical.getValueAt(map, idKey(id), seqno);
    if (v === undefined) return error(404, "ResourceNotFound", `record ${id} had no value as of transaction ${q.transaction_id}`);
    return {
      body: {
        id,
        msg: ccf.bufToStr(v.value),
        transaction_id: q.transaction_id,
        write_seqno: v.seqno,
        write_transaction_id: v.transactionId,
        receipt,
      },
    };
  } catch (e) {
    return historicalError(e);
  }
}

function historicalRange(map, request) {
  const q = parseQuery(request.query);
  const id = idOf(request);
  const from = q.from_seqno === undefined ? 1 : Number(q.from_seqno);
  const to = q.to_seqno === undefined ? ccf.consensus.getLastCommittedTxId().seqno : Number(q.to_seqno);
  const limit = q.limit === undefined ? 100 : Number(q.limit);
  if (id === undefined || !Number.isSafeInteger(from) || from < 1 || !Number.isSafeInteger(to) || to < from ||
      !Number.isSafeInteger(limit) || limit < 1 || limit > RANGE_LIMIT_MAX) {
    return error(400, "InvalidInput",
      `id must be an unsigned integer, 1 <= from_seqno <= to_seqno, and limit between 1 and ${RANGE_LIMIT_MAX}`);
  }
  try {
    const page = ccf.historical.getVersions(map, idKey(id), from, to, limit);
    const entries = page.versions.map((v) => ({
      seqno: v.seqno,
      transaction_id: v.transactionId,
      id,
      msg: v.value === undefined ? null : ccf.bufToStr(v.value),
    }));
    return { body: { entries, next: page.next === undefined ? null : page.next } };
  } catch (e) {
    return historicalError(e);
  }
}

export const historicalPrivate = (r) => historical(PRIVATE, r);
export const historicalPublic = (r) => historical(PUBLIC, r);
export const historicalRangePrivate = (r) => historicalRange(PRIVATE, r);
export const historicalRangePublic = (r) => historicalRange(PUBLIC, r);

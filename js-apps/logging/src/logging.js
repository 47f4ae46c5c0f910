// The logging app (CCF's canonical sample) as a JavaScript bundle, with the same JSON API as Synod's native
// logging app: POST {"id", "msg"}, GET/DELETE ?id=, ordered range reads ?from=&to=&limit=. Records live in
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

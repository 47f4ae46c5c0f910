// Endpoints that misbehave, for the sandboxing tests.
const k = (s) => ccf.strToBuf(s);

export function writeGovernance() {
  ccf.kv["public:ccf.gov.users.certs"].set(k("intruder"), k("not a certificate"));
  return { body: "written" };
}
export function readInternal() {
  return { body: String(ccf.kv["public:ccf.internal.signatures"].size) };
}
export function loop() {
  ccf.kv["bad.records"].set(k("loop"), k("half-done"));
  for (;;) {}
}
export function memory() {
  const hoard = [];
  for (;;) hoard.push(new Array(1 << 16).fill(7));
}
// Buffers made by the natives, kept until they are four times the heap limit of the test (32 MiB).
export function hoardBuffers() {
  const mib = "x".repeat(1 << 20);
  const hoard = [];
  for (let i = 0; i < 128; i++) hoard.push(ccf.strToBuf(mib));
  return { body: { kept: hoard.length } };
}
export function hoardKvBuffers() {
  ccf.kv["bad.blob"].set(k("blob"), ccf.strToBuf("x".repeat(1 << 20)));
  const hoard = [];
  for (let i = 0; i < 128; i++) hoard.push(ccf.kv["bad.blob"].get(k("blob")));
  return { body: { kept: hoard.length } };
}
export function readHistory() {
  return { body: String(ccf.kv["public:ccf.gov.history"].size) };
}
export function writeThenThrow() {
  ccf.kv["bad.records"].set(k("throw"), k("half-done"));
  throw new Error("the handler failed on purpose");
}
export function writeThenRefuse() {
  ccf.kv["bad.records"].set(k("refuse"), k("half-done"));
  return { statusCode: 409, body: { error: { code: "Refused", message: "not today" } } };
}
export function countUsers() {
  return { body: { users: ccf.kv["public:ccf.gov.users.certs"].size } };
}
export function probe() {
  const names = ["throw", "refuse", "loop"].filter((n) => ccf.kv["bad.records"].has(k(n)));
  return { body: { written: names } };
}

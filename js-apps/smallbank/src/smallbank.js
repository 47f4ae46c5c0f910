// A SmallBank-style bank: accounts with a checking and a savings balance (integers, in cents), deposits, and
// transfers that are atomic: a transfer that would overdraw refuses and writes nothing, and concurrent transfers
// never lose money (Synod re-runs a transaction whose reads changed). Balances are private (sealed in the
// ledger); account names are the keys, so GET /smallbank/total can add every balance up with an ordered scan.

const ACCOUNTS = "smallbank.accounts";

function error(statusCode, code, message) {
  return { statusCode, body: { error: { code, message } } };
}

function body(request) {
  try {
    const b = request.body.json();
    if (typeof b === "object" && b !== null) return b;
  } catch (e) {
    // fall through
  }
  return undefined;
}

const isAmount = (x) => Number.isSafeInteger(x) && x >= 0;
const isName = (x) => typeof x === "string" && x.length > 0 && x.length <= 64;

function get(name) {
  const v = ccf.kv[ACCOUNTS].get(ccf.strToBuf(name));
  return v === undefined ? undefined : ccf.bufToJsonCompatible(v);
}

function put(name, account) {
  ccf.kv[ACCOUNTS].set(ccf.strToBuf(name), ccf.jsonCompatibleToBuf(account));
}

export function open(request) {
  const b = body(request);
  if (!b || !isName(b.name) || !isAmount(b.checking ?? 0) || !isAmount(b.savings ?? 0)) {
    return error(400, "InvalidInput", 'expected {"name": <1-64 chars>, "checking": <cents>, "savings": <cents>}');
  }
  if (get(b.name) !== undefined) return error(409, "AccountExists", `account ${b.name} exists`);
  put(b.name, { checking: b.checking ?? 0, savings: b.savings ?? 0 });
  return { statusCode: 201, body: { name: b.name } };
}

// Opens accounts `${prefix}${from}` … `${prefix}${from + count - 1}` in one transaction (CCF's smallbank has the
// same "create_batch" endpoint, to load a benchmark's accounts quickly); an existing name refuses the whole batch.
const BATCH_MAX = 10000;
export function openBatch(request) {
  const b = body(request);
  const prefix = b?.prefix ?? "";
  if (!b || typeof prefix !== "string" || prefix.length > 32 || !isAmount(b.from) || !Number.isSafeInteger(b.count) ||
      b.count < 1 || b.count > BATCH_MAX || !isAmount(b.checking ?? 0) || !isAmount(b.savings ?? 0)) {
    return error(400, "InvalidInput",
      `expected {"prefix": <≤ 32 chars>, "from": <n>, "count": <1-${BATCH_MAX}>, "checking": <cents>, "savings": <cents>}`);
  }
  const account = ccf.jsonCompatibleToBuf({ checking: b.checking ?? 0, savings: b.savings ?? 0 });
  const accounts = ccf.kv[ACCOUNTS];
  for (let i = b.from; i < b.from + b.count; i++) {
    const name = ccf.strToBuf(`${prefix}${i}`);
    if (accounts.has(name)) return error(409, "AccountExists", `account ${prefix}${i} exists`);
    accounts.set(name, account);
  }
  return { statusCode: 201, body: { opened: b.count } };
}

export function balance(request) {
  const account = get(request.params.name);
  if (account === undefined) return error(404, "ResourceNotFound", `no account ${request.params.name}`);
  return { body: { name: request.params.name, ...account, total: account.checking + account.savings } };
}

export function deposit(request) {
  const b = body(request);
  if (!b || !isName(b.name) || !isAmount(b.amount)) return error(400, "InvalidInput", 'expected {"name", "amount": <cents>}');
  const account = get(b.name);
  if (account === undefined) return error(404, "ResourceNotFound", `no account ${b.name}`);
  account.checking += b.amount;
  put(b.name, account);
  return { body: { name: b.name, checking: account.checking } };
}

export function transfer(request) {
  const b = body(request);
  if (!b || !isName(b.from) || !isName(b.to) || !isAmount(b.amount) || b.from === b.to) {
    return error(400, "InvalidInput", 'expected {"from", "to" (another account), "amount": <cents>}');
  }
  const from = get(b.from);
  const to = get(b.to);
  if (from === undefined || to === undefined) return error(404, "ResourceNotFound", "no such account");
  if (from.checking < b.amount) {
    return error(400, "InsufficientFunds", `${b.from} has ${from.checking} in checking, less than ${b.amount}`);
  }
  from.checking -= b.amount;
  to.checking += b.amount;
  put(b.from, from);
  put(b.to, to);
  return { body: { from: b.from, to: b.to, amount: b.amount } };
}

export function amalgamate(request) {
  const b = body(request);
  if (!b || !isName(b.from) || !isName(b.to) || b.from === b.to) return error(400, "InvalidInput", 'expected {"from", "to"}');
  const from = get(b.from);
  const to = get(b.to);
  if (from === undefined || to === undefined) return error(404, "ResourceNotFound", "no such account");
  to.checking += from.checking + from.savings;
  put(b.to, to);
  put(b.from, { checking: 0, savings: 0 });
  return { body: { to: b.to, checking: to.checking } };
}

export function total() {
  let sum = 0;
  let accounts = 0;
  ccf.kv[ACCOUNTS].forEach((v) => {
    const a = ccf.bufToJsonCompatible(v);
    sum += a.checking + a.savings;
    accounts += 1;
  });
  return { body: { accounts, total: sum } };
}

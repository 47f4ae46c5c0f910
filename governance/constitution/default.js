// Synod's default constitution (CCF's shape: validate, resolve, apply). A proposal is accepted by a strict majority
// of active members and rejected once a strict majority votes against it. Actions are CCF's standard ones.
//
// Tables are CCF's: public:ccf.gov.members.{certs,info,acks}, public:ccf.gov.users.{certs,info},
// public:ccf.gov.nodes.{info,code_ids}, public:ccf.gov.service.info, public:ccf.gov.constitution, ...

class Action {
  constructor(validate, apply) {
    this.validate = validate;
    this.apply = apply;
  }
}

const enc = (v) => ccf.jsonCompatibleToBuf(v);
const dec = (b) => ccf.bufToJsonCompatible(b);
const key = (s) => ccf.strToBuf(s);
const table = (name) => ccf.kv[name];

function checkType(value, type, field) {
  const ok = type === "array" ? Array.isArray(value) : typeof value === type && value !== null;
  if (!ok) throw new Error(`${field} must be of type ${type} but is of type ${typeof value}`);
}
function checkPem(value, field) {
  checkType(value, "string", field);
  if (!value.includes("-----BEGIN CERTIFICATE-----")) throw new Error(`${field} must be a PEM certificate`);
}
function checkMeasurement(value, field) {
  checkType(value, "string", field);
  if (!/^([0-9a-f]{64}|[0-9a-f]{96})$/.test(value)) {
    throw new Error(`${field} must be 64 (SGX MRENCLAVE, virtual) or 96 (SEV-SNP MEASUREMENT) lower-case hex characters`);
  }
}
function checkHex(value, field) {
  checkType(value, "string", field);
  if (!/^[0-9a-f]{64}$/.test(value)) throw new Error(`${field} must be 64 lower-case hex characters`);
}
function checkValidity(args) {
  checkType(args.validity_period_days, "number", "validity_period_days");
  if (!Number.isInteger(args.validity_period_days) || args.validity_period_days < 1 || args.validity_period_days > 365) {
    throw new Error("validity_period_days must be an integer between 1 and 365");
  }
  if (args.valid_from !== undefined) {
    checkType(args.valid_from, "string", "valid_from");
    if (!/^([0-9]{12}|[0-9]{14})Z$/.test(args.valid_from)) {
      throw new Error("valid_from must be YYMMDDHHMMSSZ or YYYYMMDDHHMMSSZ (UTC)");
    }
  }
}
function getJson(tableName, k) {
  const b = table(tableName).get(key(k));
  return b === undefined ? undefined : dec(b);
}
function setJson(tableName, k, v) {
  table(tableName).set(key(k), enc(v));
}

function activeMembers() {
  const ids = [];
  table("public:ccf.gov.members.info").forEach((v, k) => {
    if (dec(v).status === "Active") ids.push(ccf.bufToStr(k));
  });
  return ids;
}

function memberIdOf(args) {
  if (args.member_id !== undefined) return args.member_id;
  if (args.cert !== undefined) return ccf.pemToId(args.cert);
  throw new Error("member_id or cert is required");
}

const actions = new Map([
  ["set_member", new Action(
    (args) => {
      checkPem(args.cert, "cert");
      if (args.encryption_pub_key !== undefined && args.encryption_pub_key !== null) checkType(args.encryption_pub_key, "string", "encryption_pub_key");
    },
    (args) => {
      const id = ccf.pemToId(args.cert);
      table("public:ccf.gov.members.certs").set(key(id), key(args.cert));
      const existing = getJson("public:ccf.gov.members.info", id);
      setJson("public:ccf.gov.members.info", id, {
        status: existing ? existing.status : "Accepted",
        member_data: args.member_data === undefined ? null : args.member_data,
      });
      if (args.encryption_pub_key) table("public:ccf.gov.members.encryption_public_keys").set(key(id), key(args.encryption_pub_key));
    })],
  ["remove_member", new Action(
    (args) => { if (args.member_id !== undefined) checkHex(args.member_id, "member_id"); else checkPem(args.cert, "cert"); },
    (args) => {
      const id = memberIdOf(args);
      const info = getJson("public:ccf.gov.members.info", id);
      if (info === undefined) return; // removing an absent member is a no-op, as in CCF
      if (info.status === "Active" && activeMembers().length <= 1) throw new Error("cannot remove the last active member");
      for (const t of ["certs", "info", "acks", "encryption_public_keys"]) table(`public:ccf.gov.members.${t}`).delete(key(id));
    })],
  ["set_member_data", new Action(
    (args) => checkHex(args.member_id, "member_id"),
    (args) => {
      const info = getJson("public:ccf.gov.members.info", args.member_id);
      if (info === undefined) throw new Error(`member ${args.member_id} does not exist`);
      info.member_data = args.member_data;
      setJson("public:ccf.gov.members.info", args.member_id, info);
    })],
  ["set_user", new Action(
    (args) => checkPem(args.cert, "cert"),
    (args) => {
      const id = ccf.pemToId(args.cert);
      table("public:ccf.gov.users.certs").set(key(id), key(args.cert));
      if (args.user_data !== undefined) setJson("public:ccf.gov.users.info", id, { user_data: args.user_data });
    })],
  ["remove_user", new Action(
    (args) => checkHex(args.user_id, "user_id"),
    (args) => {
      table("public:ccf.gov.users.certs").delete(key(args.user_id));
      table("public:ccf.gov.users.info").delete(key(args.user_id));
    })],
  ["set_user_data", new Action(
    (args) => checkHex(args.user_id, "user_id"),
    (args) => {
      if (!table("public:ccf.gov.users.certs").has(key(args.user_id))) throw new Error(`user ${args.user_id} does not exist`);
      setJson("public:ccf.gov.users.info", args.user_id, { user_data: args.user_data });
    })],
  ["transition_node_to_trusted", new Action(
    (args) => checkHex(args.node_id, "node_id"),
    (args) => {
      const info = getJson("public:ccf.gov.nodes.info", args.node_id);
      if (info === undefined) throw new Error(`node ${args.node_id} does not exist`);
      if (info.status === "Retired") throw new Error(`node ${args.node_id} is retired`);
      if (info.status === "Pending") {
        info.status = "Trusted";
        setJson("public:ccf.gov.nodes.info", args.node_id, info);
      }
    })],
  ["remove_node", new Action(
    (args) => checkHex(args.node_id, "node_id"),
    (args) => {
      const info = getJson("public:ccf.gov.nodes.info", args.node_id);
      if (info === undefined) return;
      info.status = "Retired";
      setJson("public:ccf.gov.nodes.info", args.node_id, info);
    })],
  ["add_node_code", new Action(
    (args) => checkMeasurement(args.code_id, "code_id"),
    (args) => table("public:ccf.gov.nodes.code_ids").set(key(args.code_id), enc("AllowedToJoin")))],
  ["remove_node_code", new Action(
    (args) => checkMeasurement(args.code_id, "code_id"),
    (args) => table("public:ccf.gov.nodes.code_ids").delete(key(args.code_id)))],
  ["add_snp_host_data", new Action(
    (args) => checkHex(args.host_data, "host_data"),
    (args) => table("public:ccf.gov.nodes.snp.host_data").set(key(args.host_data), enc("AllowedToJoin")))],
  ["remove_snp_host_data", new Action(
    (args) => checkHex(args.host_data, "host_data"),
    (args) => table("public:ccf.gov.nodes.snp.host_data").delete(key(args.host_data)))],
  // A publisher's endorsements of SEV-SNP utility VM images (CCF's action): a node whose launch measurement a
  // UVM endorsement signed by `did` under `feed` states, with an SVN of at least `svn`, may join without its
  // measurement in nodes.code_ids.
  ["add_snp_uvm_endorsement", new Action(
    (args) => {
      checkType(args.did, "string", "did");
      if (!/^did:x509:0:sha256:[A-Za-z0-9_-]{43}::eku:[0-9]+(\.[0-9]+)*$/.test(args.did)) {
        throw new Error("did must be did:x509:0:sha256:<base64url SHA-256 fingerprint>::eku:<oid>");
      }
      checkType(args.feed, "string", "feed");
      if (args.feed.length === 0 || args.feed.length > 256) throw new Error("feed must be 1 to 256 characters");
      checkType(args.svn, "string", "svn");
      if (!/^[0-9]{1,19}$/.test(args.svn)) throw new Error("svn must be a decimal number");
    },
    (args) => {
      const feeds = getJson("public:ccf.gov.nodes.snp.uvm_endorsements", args.did) || {};
      feeds[args.feed] = { svn: args.svn };
      setJson("public:ccf.gov.nodes.snp.uvm_endorsements", args.did, feeds);
    })],
  ["remove_snp_uvm_endorsement", new Action(
    (args) => {
      checkType(args.did, "string", "did");
      checkType(args.feed, "string", "feed");
    },
    (args) => {
      const feeds = getJson("public:ccf.gov.nodes.snp.uvm_endorsements", args.did);
      if (feeds === undefined) return;
      delete feeds[args.feed];
      if (Object.keys(feeds).length === 0) {
        table("public:ccf.gov.nodes.snp.uvm_endorsements").delete(key(args.did));
      } else {
        setJson("public:ccf.gov.nodes.snp.uvm_endorsements", args.did, feeds);
      }
    })],
  ["set_node_minimum_tcb", new Action(
    (args) => {
      if (args.platform !== "sgx" && args.platform !== "snp") throw new Error("platform must be sgx or snp");
      checkType(args.tcb, "string", "tcb");
      const sgx = ["UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
        "OutOfDate", "OutOfDateConfigurationNeeded"];
      if (args.platform === "sgx" && !sgx.includes(args.tcb)) throw new Error(`tcb must be one of ${sgx.join(", ")}`);
      if (args.platform === "snp" && !/^bootloader \d+ tee \d+ snp \d+ microcode \d+$/.test(args.tcb)) {
        throw new Error("tcb must be of the form \"bootloader N tee N snp N microcode N\"");
      }
    },
    (args) => table("public:ccf.gov.nodes.minimum_tcb").set(key(args.platform), enc(args.tcb)))],
  ["set_js_app", new Action(
    (args) => {
      checkType(args.bundle, "object", "bundle");
      checkType(args.bundle.metadata, "object", "bundle.metadata");
      checkType(args.bundle.modules, "array", "bundle.modules");
      for (const m of args.bundle.modules) {
        checkType(m.name, "string", "bundle.modules[].name");
        checkType(m.module, "string", "bundle.modules[].module");
      }
    },
    (args, proposalId) => setJson("public:ccf.gov.js_app", "", { bundle: args.bundle, version: proposalId }))],
  ["remove_js_app", new Action(
    () => {},
    () => table("public:ccf.gov.js_app").delete(key("")))],
  // Opens a new service; on a recovered one (status Recovering), accepts the recovery instead: the members name
  // the identity of the service it recovers (and may name the new one), and the service then waits for their
  // recovery shares (CCF's arguments and states). It opens once enough shares were submitted and its private
  // state is recovered.
  ["transition_service_to_open", new Action(
    (args) => {
      if (args.previous_service_identity !== undefined) checkPem(args.previous_service_identity, "previous_service_identity");
      if (args.next_service_identity !== undefined) checkPem(args.next_service_identity, "next_service_identity");
    },
    (args) => {
      const info = getJson("public:ccf.gov.service.info", "");
      if (info === undefined) throw new Error("no service info");
      const pem = (p) => p.replace(/\s+/g, "");
      if (args.next_service_identity !== undefined && pem(args.next_service_identity) !== pem(info.cert)) {
        throw new Error("next_service_identity is not this service's identity");
      }
      if (info.status === "Recovering") {
        if (args.previous_service_identity === undefined) {
          throw new Error("previous_service_identity is required to accept the recovery of a service");
        }
        const previous = getJson("public:ccf.internal.previous_service_identity", "");
        if (previous === undefined || pem(previous.previous_service_identity) !== pem(args.previous_service_identity)) {
          throw new Error("previous_service_identity is not the identity of the service this one recovers");
        }
        info.status = "WaitingForRecoveryShares";
        setJson("public:ccf.gov.service.info", "", info);
        return;
      }
      if (info.status === "Open") throw new Error("the service is already open");
      if (info.status !== "Opening") throw new Error(`the service is ${info.status}, not Opening or Recovering`);
      info.status = "Open";
      setJson("public:ccf.gov.service.info", "", info);
    })],
  ["set_constitution", new Action(
    (args) => checkType(args.constitution, "string", "constitution"),
    (args) => table("public:ccf.gov.constitution").set(key(""), key(args.constitution)))],
  // The node rekeys the ledger in the same transaction (a fresh secret for every trusted node; the recovery
  // members get shares of it). remove_member rekeys too.
  ["trigger_ledger_rekey", new Action(
    () => {},
    (args, proposalId) => setJson("public:ccf.gov.triggers", "ledger_rekey", proposalId))],
  // Certificate lifetimes (CCF's actions): the node makes the renewed certificates in the same transaction; the
  // all-nodes period also applies to nodes that join later.
  ["set_node_certificate_validity", new Action(
    (args) => { checkHex(args.node_id, "node_id"); checkValidity(args); },
    (args) => {
      const info = getJson("public:ccf.gov.nodes.info", args.node_id);
      if (info === undefined || info.status !== "Trusted") throw new Error(`node ${args.node_id} is not a trusted node`);
    })],
  ["set_all_nodes_certificate_validity", new Action(
    (args) => checkValidity(args),
    (args) => {
      const info = getJson("public:ccf.gov.service.info", "");
      info.node_certificate_validity_days = args.validity_period_days;
      setJson("public:ccf.gov.service.info", "", info);
    })],
  ["set_service_certificate_validity", new Action(
    (args) => checkValidity(args),
    (args) => {
      const info = getJson("public:ccf.gov.service.info", "");
      info.service_certificate_validity_days = args.validity_period_days;
      setJson("public:ccf.gov.service.info", "", info);
    })],
  ["trigger_snapshot", new Action(
    () => {},
    (args, proposalId) => setJson("public:ccf.gov.triggers", "snapshot", proposalId))],
  ["trigger_ledger_chunk", new Action(
    () => {},
    (args, proposalId) => setJson("public:ccf.gov.triggers", "ledger_chunk", proposalId))],
  ["set_recovery_threshold", new Action(
    (args) => {
      checkType(args.recovery_threshold, "number", "recovery_threshold");
      if (!Number.isInteger(args.recovery_threshold) || args.recovery_threshold < 1 || args.recovery_threshold > 255) {
        throw new Error("recovery_threshold must be an integer between 1 and 255");
      }
    },
    (args) => {
      const info = getJson("public:ccf.gov.service.info", "");
      if (args.recovery_threshold > activeMembers().length) {
        throw new Error(`recovery_threshold ${args.recovery_threshold} exceeds the ${activeMembers().length} active members`);
      }
      info.recovery_threshold = args.recovery_threshold;
      setJson("public:ccf.gov.service.info", "", info);
    })],
]);

export function validate(input) {
  let proposal;
  try {
    proposal = JSON.parse(input);
  } catch (e) {
    return { valid: false, description: `proposal is not JSON: ${e.message}` };
  }
  if (typeof proposal !== "object" || proposal === null || !Array.isArray(proposal.actions)) {
    return { valid: false, description: "a proposal is {\"actions\": [{\"name\", \"args\"}]}" };
  }
  if (proposal.actions.length === 0) return { valid: false, description: "a proposal needs at least one action" };
  const errors = [];
  proposal.actions.forEach((action, i) => {
    const definition = actions.get(action.name);
    if (definition === undefined) {
      errors.push(`action ${i}: unknown action ${JSON.stringify(action.name)}`);
      return;
    }
    try {
      definition.validate(action.args === undefined ? {} : action.args);
    } catch (e) {
      errors.push(`action ${i} (${action.name}): ${e.message}`);
    }
  });
  return errors.length === 0 ? { valid: true, description: "OK" } : { valid: false, description: errors.join("; ") };
}

export function resolve(proposal, proposerId, votes) {
  const active = activeMembers();
  const counted = votes.filter((v) => active.includes(v.member_id));
  const yes = counted.filter((v) => v.vote).length;
  const no = counted.filter((v) => !v.vote).length;
  if (yes > Math.floor(active.length / 2)) return "Accepted";
  if (no > Math.floor(active.length / 2)) return "Rejected";
  return "Open";
}

export function apply(proposal, proposalId) {
  for (const action of JSON.parse(proposal).actions) {
    actions.get(action.name).apply(action.args === undefined ? {} : action.args, proposalId);
  }
}

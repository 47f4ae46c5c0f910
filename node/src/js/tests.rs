use super::*;

fn engine(modules: &[(&str, &str)]) -> Engine {
    let modules: Vec<(String, String)> = modules
        .iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect();
    Engine::new(
        JsLimits {
            heap_bytes_max: 16 << 20,
            time_ms_max: 200,
            stack_bytes_max: 512 << 10,
        },
        &modules,
    )
    .expect("engine")
}

fn call(
    e: &Engine,
    tx: &mut Tx,
    policy: KvPolicy,
    f: &str,
    args: &[serde_json::Value],
) -> Result<serde_json::Value, JsError> {
    e.call(tx, policy, (2, 10), "main.js", f, args)
}

#[test]
fn scripts_read_and_write_the_transaction_through_ccf_kv() {
    let e = engine(&[
        (
            "main.js",
            r#"
        import { double } from "lib.js";
        export function put(k, v) { ccf.kv["records"].set(ccf.strToBuf(k), ccf.jsonCompatibleToBuf(v)); return "ok"; }
        export function get(k) { const b = ccf.kv["records"].get(ccf.strToBuf(k)); return b === undefined ? null : ccf.bufToJsonCompatible(b); }
        export function count() { let c = 0; ccf.kv["records"].forEach(() => c++); return [c, ccf.kv["records"].size, double(c)]; }
        export function page() { return ccf.kv["records"].range(ccf.strToBuf("b"), undefined, 1).map(([k]) => ccf.bufToStr(k)); }
        export function txid() { return ccf.consensus.getLastCommittedTxId(); }
        export function digest() { return Array.from(new Uint8Array(ccf.crypto.digest("SHA-256", ccf.strToBuf("abc")))).slice(0, 2); }
        "#,
        ),
        ("lib.js", "export function double(x) { return 2 * x; }"),
    ]);
    let mut tx = Tx::new(State::default());
    for (k, v) in [("a", 1), ("b", 2), ("c", 3)] {
        let r = call(&e, &mut tx, KvPolicy::Application, "put", &[k.into(), v.into()]).expect("put");
        assert_eq!(r, "ok");
    }
    assert_eq!(
        tx.get("records", b"b"),
        Some(b"2".to_vec()),
        "writes land in the Rust transaction"
    );
    assert_eq!(
        call(&e, &mut tx, KvPolicy::Application, "get", &["c".into()]).expect("get"),
        3
    );
    assert_eq!(
        call(&e, &mut tx, KvPolicy::Application, "get", &["z".into()]).expect("get"),
        serde_json::Value::Null
    );
    assert_eq!(
        call(&e, &mut tx, KvPolicy::Application, "count", &[]).expect("count"),
        serde_json::json!([3, 3, 6])
    );
    assert_eq!(
        call(&e, &mut tx, KvPolicy::Application, "page", &[]).expect("page"),
        serde_json::json!(["b"])
    );
    assert_eq!(
        call(&e, &mut tx, KvPolicy::Application, "txid", &[]).expect("txid"),
        serde_json::json!({"view": 2, "seqno": 10})
    );
    assert_eq!(
        call(&e, &mut tx, KvPolicy::Application, "digest", &[]).expect("digest"),
        serde_json::json!([0xba, 0x78])
    );
}

#[test]
fn applications_cannot_write_framework_tables_but_governance_can() {
    let e = engine(&[(
        "main.js",
        r#"export function w(m) { ccf.kv[m].set(ccf.strToBuf("k"), ccf.strToBuf("v")); }
                                   export function r(m) { return ccf.kv[m].get(ccf.strToBuf("k")) !== undefined; }"#,
    )]);
    let mut tx = Tx::new(State::default());
    for map in [
        "public:ccf.gov.users.certs",
        "ccf.internal.secrets",
        "public:ccf.internal.signatures",
    ] {
        let err = call(&e, &mut tx, KvPolicy::Application, "w", &[map.into()]).expect_err("refused");
        assert!(err.to_string().contains("framework"), "{err}");
    }
    call(
        &e,
        &mut tx,
        KvPolicy::Application,
        "r",
        &["public:ccf.gov.users.certs".into()],
    )
    .expect("apps read public gov tables");
    assert!(call(
        &e,
        &mut tx,
        KvPolicy::Application,
        "r",
        &["ccf.internal.secrets".into()]
    )
    .is_err());
    call(
        &e,
        &mut tx,
        KvPolicy::Governance,
        "w",
        &["public:ccf.gov.users.certs".into()],
    )
    .expect("the constitution writes");
    assert!(!tx.is_read_only());
}

#[test]
fn runaway_scripts_are_stopped_and_the_engine_keeps_working() {
    let e = engine(&[(
        "main.js",
        r#"
        export function spin() { for (;;) {} }
        export function hog() { const a = []; for (;;) a.push("x".repeat(1 << 16)); }
        export function fail() { throw new Error("nope"); }
        export function ok() { return 1; }"#,
    )]);
    let mut tx = Tx::new(State::default());
    assert!(matches!(
        call(&e, &mut tx, KvPolicy::Application, "spin", &[]),
        Err(JsError::Timeout(200))
    ));
    let err = call(&e, &mut tx, KvPolicy::Application, "hog", &[]).expect_err("bounded heap");
    assert!(
        matches!(err, JsError::OutOfMemory(_) | JsError::Exception { .. }),
        "{err:?}"
    );
    match call(&e, &mut tx, KvPolicy::Application, "fail", &[]) {
        Err(JsError::Exception { message, .. }) => assert!(message.contains("nope")),
        other => panic!("{:?}", other.err()),
    }
    e.collect();
    assert_eq!(
        call(&e, &mut tx, KvPolicy::Application, "ok", &[]).expect("still serving"),
        1
    );
}

/// ArrayBuffers the natives make used to be handed to QuickJS as Rust-owned vectors, which its allocator (and so
/// the heap limit) never saw: a script could keep gigabytes of them under a heap limit of megabytes.
#[test]
fn buffers_made_by_natives_count_against_the_heap_limit() {
    let e = engine(&[(
        "main.js",
        r#"
        const big = () => "x".repeat(1 << 20);
        // Keeps 128 MiB of buffers from each native under a 16 MiB heap limit (the string is made once).
        function hoard(make) { const s = big(); const kept = []; for (let i = 0; i < 128; i++) kept.push(make(s)); return kept.length; }
        export function strToBuf() { return hoard((s) => ccf.strToBuf(s)); }
        export function json() { return hoard((s) => ccf.jsonCompatibleToBuf(s)); }
        export function kvGet() { return hoard(() => ccf.kv["blob"].get(ccf.strToBuf("k"))); }
        export function kvRange() { return hoard(() => ccf.kv["blob"].range()[0][1]); }
        export function small() { return ccf.bufToStr(ccf.strToBuf(big())).length; }"#,
    )]);
    let mut tx = Tx::new(State::default());
    tx.put("blob", b"k", &vec![7; 1 << 20]);
    for f in ["strToBuf", "json", "kvGet", "kvRange"] {
        let out = call(&e, &mut tx, KvPolicy::Application, f, &[]);
        assert!(matches!(out, Err(JsError::OutOfMemory(_))), "{f}: {out:?}");
    }
    // Within the limit, the same natives work (and the engine survived).
    assert_eq!(
        call(&e, &mut tx, KvPolicy::Application, "small", &[]).expect("small"),
        1 << 20
    );
}

/// The transaction lives on the Rust heap too: a script could grow its write set (or its read set, with ever new
/// keys) to gigabytes while its JS heap stayed small.
#[test]
fn a_call_cannot_grow_its_transaction_past_the_heap_limit() {
    let e = engine(&[(
        "main.js",
        r#"
        const mib = () => ccf.strToBuf("x".repeat(1 << 20));
        export function writes() { const v = mib(); for (let i = 0; i < 128; i++) ccf.kv["big"].set(ccf.strToBuf("k" + i), v); }
        export function caught() { const v = mib(); try { for (let i = 0; i < 128; i++) ccf.kv["big"].set(ccf.strToBuf("k" + i), v); } catch (e) {} return "swallowed"; }
        export function reads() { const key = new Uint8Array(1 << 20); for (let i = 0; i < 128; i++) { key[0] = i; ccf.kv["big"].get(key); } }
        export function rewrites() {
          const v = mib(); for (let i = 0; i < 32; i++) ccf.kv["big"].set(ccf.strToBuf("same"), v);
          const key = new ArrayBuffer(64 << 10); for (let i = 0; i < 512; i++) ccf.kv["big"].get(key);
          return "ok"; }"#,
    )]);
    for f in ["writes", "caught", "reads"] {
        let mut tx = Tx::new(State::default());
        let out = call(&e, &mut tx, KvPolicy::Application, f, &[]);
        assert!(matches!(out, Err(JsError::OutOfMemory(_))), "{f}: {out:?}");
    }
    // Rewriting and rereading one key does not grow the transaction, and is not charged as if it did.
    let mut tx = Tx::new(State::default());
    assert_eq!(
        call(&e, &mut tx, KvPolicy::Application, "rewrites", &[]).expect("rewrites"),
        "ok"
    );
}

/// Ballots and the constitution used to read every map: a member's ballot could read a private application map
/// and leak it through its error text.
#[test]
fn governance_scripts_cannot_read_private_maps() {
    let e = engine(&[(
        "main.js",
        r#"export function r(m) { const b = ccf.kv[m].get(ccf.strToBuf("k")); return b === undefined ? null : ccf.bufToStr(b); }
           export function each(m) { const all = []; ccf.kv[m].forEach((v) => all.push(ccf.bufToStr(v))); return all; }
           export function w(m) { ccf.kv[m].set(ccf.strToBuf("k"), ccf.strToBuf("v")); }"#,
    )]);
    let mut tx = Tx::new(State::default());
    tx.put("records", b"k", b"the secret");
    tx.put("public:records", b"k", b"public");
    for policy in [KvPolicy::ReadOnly, KvPolicy::Governance] {
        for f in ["r", "each"] {
            let err = call(&e, &mut tx, policy, f, &["records".into()]).expect_err("private");
            assert!(
                err.to_string().contains("private") && !err.to_string().contains("the secret"),
                "{policy:?} {f}: {err}"
            );
        }
        assert_eq!(
            call(&e, &mut tx, policy, "r", &["public:records".into()]).expect("public"),
            "public"
        );
    }
    // Applications read their own private maps.
    assert_eq!(
        call(&e, &mut tx, KvPolicy::Application, "r", &["records".into()]).expect("own map"),
        "the secret"
    );
    // The constitution writes the governance tables only.
    for map in ["records", "public:records", "public:ccf.internal.signatures"] {
        let err = call(&e, &mut tx, KvPolicy::Governance, "w", &[map.into()]).expect_err("not governance");
        assert!(err.to_string().contains("governance table"), "{map}: {err}");
    }
}

/// The members' signed requests are governance's evidence: applications cannot read them (the same rule as
/// `/app/kv/{map}`).
#[test]
fn applications_cannot_read_signed_member_requests() {
    let e = engine(&[("main.js", r#"export function n(m) { return ccf.kv[m].size; }"#)]);
    let mut tx = Tx::new(State::default());
    for map in [maps::GOV_HISTORY, maps::GOV_RECENT_REQUESTS] {
        let err = call(&e, &mut tx, KvPolicy::Application, "n", &[map.into()]).expect_err("hidden");
        assert!(err.to_string().contains("internal"), "{map}: {err}");
    }
    call(
        &e,
        &mut tx,
        KvPolicy::Application,
        "n",
        &[maps::PROPOSALS_INFO.into()],
    )
    .expect("other governance tables are readable");
}

#[test]
fn engines_built_from_bytecode_behave_like_engines_built_from_source() {
    let modules = vec![
        (
            "main.js".to_string(),
            "import { twice } from \"./lib/twice.js\"; export function f(x) { return twice(x); }".to_string(),
        ),
        (
            "lib/twice.js".to_string(),
            "export const twice = (x) => 2 * x;".to_string(),
        ),
    ];
    let compiled = compile(&modules).expect("compile");
    let e = Engine::from_bytecode(JsLimits::default(), &compiled).expect("engine");
    let mut tx = Tx::new(State::default());
    assert_eq!(
        e.call(
            &mut tx,
            KvPolicy::Application,
            (1, 1),
            "main.js",
            "f",
            &[21.into()]
        )
        .expect("call"),
        42
    );
    let err = compile(&[("bad.js".to_string(), "export function (".to_string())]).expect_err("syntax error");
    assert!(err.to_string().contains("bad.js"), "{err}");
}

/// Not a test of speed (nothing is asserted on time): prints what one handler call costs, for profiling.
#[test]
#[ignore]
fn handler_call_cost() {
    let modules = vec![
        (
            "logging.js".to_string(),
            std::fs::read_to_string("../js-apps/logging/src/logging.js").expect("source"),
        ),
        (
            "util.js".to_string(),
            std::fs::read_to_string("../js-apps/logging/src/util.js").expect("source"),
        ),
    ];
    let compiled = compile(&modules).expect("compile");
    let e = Engine::from_bytecode(JsLimits::default(), &compiled).expect("engine");
    let request = r#"{"headers":{"content-type":"application/json"},"query":"","url":"/app/js/log/private","method":"POST","path":"/app/js/log/private","caller":null,"params":{},"route":"/js/log/private"}"#;
    let n = 20_000;
    let start = std::time::Instant::now();
    for i in 0..n {
        let mut tx = Tx::new(State::default());
        let body = format!(r#"{{"id": {i}, "msg": "hello"}}"#);
        let r = e
            .call_handler(
                &mut tx,
                KvPolicy::Application,
                (1, 1),
                "logging.js",
                "postPrivate",
                HandlerRequest {
                    json: request,
                    body: body.as_bytes(),
                },
            )
            .expect("call");
        assert_eq!(r.status, 201);
    }
    println!(
        "{:.1} us per handler call",
        start.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}

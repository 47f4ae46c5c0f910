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

/// A request as the logging app's clients send it: a user with a certificate, the usual headers, a JSON body.
fn logging_request<'a>(
    caller: &'a HandlerCaller,
    headers: &'a http::HeaderMap,
    body: &'a bytes::Bytes,
) -> HandlerRequest<'a> {
    HandlerRequest {
        method: "POST",
        url: "/app/js/log/private",
        path: "/app/js/log/private",
        query: "",
        route: "/js/log/private",
        headers,
        params: &[],
        caller: Some(caller),
        body,
    }
}

fn logging_caller() -> (HandlerCaller, http::HeaderMap) {
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        "MIIBszCCAVmgAwIBAgIUQ".repeat(28)
    );
    let caller = HandlerCaller {
        policy: "user_cert".into(),
        id: "a3".repeat(32),
        data_json: None,
        cert: Some(pem),
    };
    let headers = [
        ("content-type", "application/json"),
        ("accept", "*/*"),
        ("host", "127.0.0.1:8001"),
        ("content-length", "40"),
    ]
    .iter()
    .map(|(k, v)| {
        (
            http::HeaderName::from_static(k),
            http::HeaderValue::from_static(v),
        )
    })
    .collect();
    (caller, headers)
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
    let (caller, headers) = logging_caller();
    let n = 20_000;
    let start = std::time::Instant::now();
    for i in 0..n {
        let mut tx = Tx::new(State::default());
        let body = bytes::Bytes::from(format!(r#"{{"id": {i}, "msg": "hello"}}"#));
        let r = e
            .call_handler(
                &mut tx,
                KvPolicy::Application,
                (1, 1),
                "logging.js",
                "postPrivate",
                logging_request(&caller, &headers, &body),
                Some(Duration::from_millis(2)),
            )
            .expect("call");
        assert_eq!(r.status, 201);
    }
    println!(
        "{:.1} us per handler call",
        start.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}

#[test]
fn handlers_see_ccf_request_objects_and_answer_with_any_body() {
    let e = engine(&[(
        "main.js",
        r#"
        export function echo(r) {
            const { body, ...rest } = r;
            return { statusCode: 202, headers: { "x-n": 7, "x-s": "s", "x-u": undefined },
                     body: { request: rest, text: body.text(), json: body.json(), bytes: body.arrayBuffer().byteLength } };
        }
        export const text = () => ({ body: "pla" + "in".repeat(1) });
        export const view = () => ({ body: new DataView(new Uint8Array([9, 1, 2, 3, 9]).buffer, 1, 3) });
        export const number = () => ({ statusCode: 201, body: 5 });
        export const notAnObject = () => 7;
        export const binary = () => ({ body: new Uint8Array([1, 2, 3]) });
        export const empty = () => undefined;
        export const badHeaders = () => ({ headers: "x" });
        export const badStatus = () => ({ statusCode: 99 });
        export function notJson(r) { try { r.body.json(); } catch (e) { return { body: e.name }; } }
        "#,
    )]);
    let (mut caller, headers) = logging_caller();
    caller.data_json = Some(r#"{"role": "auditor"}"#.into());
    let params = vec![("id".to_string(), "a b".to_string())];
    let body = bytes::Bytes::from_static(br#"{"id": 1, "msg": "hi"}"#);
    let request = HandlerRequest {
        method: "GET",
        url: "/app/x/a%20b?k=v",
        path: "/app/x/a%20b",
        query: "k=v",
        route: "/x/{id}",
        headers: &headers,
        params: &params,
        caller: Some(&caller),
        body: &body,
    };
    let mut tx = Tx::new(State::default());
    let run = |tx: &mut Tx, f: &str, request: HandlerRequest<'_>| {
        e.call_handler(tx, KvPolicy::Application, (1, 1), "main.js", f, request, None)
    };
    let r = run(&mut tx, "echo", request).expect("echo");
    assert_eq!(r.status, 202);
    assert_eq!(r.kind, BodyKind::Json);
    assert_eq!(
        r.headers,
        vec![
            ("x-n".to_string(), "7".to_string()),
            ("x-s".to_string(), "s".to_string())
        ]
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON body");
    assert_eq!(
        v["request"],
        serde_json::json!({
            "headers": {"content-type": "application/json", "accept": "*/*", "host": "127.0.0.1:8001", "content-length": "40"},
            "query": "k=v", "url": "/app/x/a%20b?k=v", "method": "GET", "path": "/app/x/a%20b",
            "caller": {"policy": "user_cert", "id": caller.id, "data": {"role": "auditor"}, "cert": caller.cert},
            "params": {"id": "a b"}, "route": "/x/{id}",
        })
    );
    assert_eq!(v["text"], r#"{"id": 1, "msg": "hi"}"#);
    assert_eq!(v["json"], serde_json::json!({"id": 1, "msg": "hi"}));
    assert_eq!(v["bytes"], body.len());
    let no_caller = HandlerRequest {
        caller: None,
        ..request
    };
    let r = run(&mut tx, "echo", no_caller).expect("echo");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON body");
    assert_eq!(v["request"]["caller"], serde_json::Value::Null);
    let r = run(&mut tx, "text", request).expect("text");
    assert_eq!(
        (r.status, r.kind, r.body.as_slice()),
        (200, BodyKind::Text, &b"plain"[..])
    );
    let r = run(&mut tx, "binary", request).expect("binary");
    assert_eq!((r.kind, r.body.as_slice()), (BodyKind::Binary, &[1u8, 2, 3][..]));
    let r = run(&mut tx, "view", request).expect("view");
    assert_eq!((r.kind, r.body.as_slice()), (BodyKind::Binary, &[1u8, 2, 3][..]));
    let r = run(&mut tx, "number", request).expect("number");
    assert_eq!(
        (r.status, r.kind, r.body.as_slice()),
        (201, BodyKind::Json, &b"5"[..])
    );
    assert!(run(&mut tx, "notAnObject", request).is_err());
    let r = run(&mut tx, "empty", request).expect("empty");
    assert_eq!((r.status, r.kind, r.body.len()), (200, BodyKind::None, 0));
    assert!(run(&mut tx, "badHeaders", request).is_err());
    assert!(matches!(
        run(&mut tx, "badStatus", request),
        Err(JsError::BadReturn(_))
    ));
    let garbage = bytes::Bytes::from_static(b"{not json");
    let r = run(
        &mut tx,
        "notJson",
        HandlerRequest {
            body: &garbage,
            ..request
        },
    )
    .expect("notJson");
    assert_eq!(r.body, b"SyntaxError");
}

#[test]
fn a_handler_past_its_slice_is_stopped_apart_from_its_time_limit() {
    let e = Engine::new(
        JsLimits {
            time_ms_max: 60_000,
            ..JsLimits::default()
        },
        &[(
            "main.js".to_string(),
            r#"export function spin() { ccf.kv["records"].set(ccf.strToBuf("k"), ccf.strToBuf("v")); for (;;) {} }
               export const quick = () => ({ body: "ok" });"#
                .to_string(),
        )],
    )
    .expect("engine");
    let (caller, headers) = logging_caller();
    let body = bytes::Bytes::new();
    let mut tx = Tx::new(State::default());
    let r = e.call_handler(
        &mut tx,
        KvPolicy::Application,
        (1, 1),
        "main.js",
        "spin",
        logging_request(&caller, &headers, &body),
        Some(Duration::from_millis(1)),
    );
    assert!(matches!(r, Err(JsError::SliceExpired(1000))), "{r:?}");
    // The transaction comes back (the caller drops what the call wrote), and the engine answers again.
    assert_eq!(tx.get("records", b"k"), Some(b"v".to_vec()));
    let r = e
        .call_handler(
            &mut tx,
            KvPolicy::Application,
            (1, 1),
            "main.js",
            "quick",
            logging_request(&caller, &headers, &body),
            Some(Duration::from_millis(1)),
        )
        .expect("quick");
    assert_eq!(r.body, b"ok");
}

#[test]
fn a_runaway_recursion_is_an_exception_on_a_thread_already_deep_in_its_stack() {
    // Handlers run inline on async workers (2 MiB stacks, part of it used by the server's futures): QuickJS's
    // stack limit, counted from where each call starts, stops a recursion long before the thread's stack ends.
    fn deep(
        levels: usize,
        f: &dyn Fn() -> Result<HandlerResponse, JsError>,
    ) -> Result<HandlerResponse, JsError> {
        let pad = std::hint::black_box([0u8; 4096]);
        if levels == 0 {
            return f();
        }
        let r = deep(levels - 1, f);
        std::hint::black_box(&pad);
        r
    }
    let thread = std::thread::Builder::new().stack_size(2 << 20).spawn(|| {
        let e = Engine::new(
            JsLimits::default(),
            &[(
                "main.js".to_string(),
                "export function recurse() { const f = (n) => f(n + 1) + 1; return { body: f(0) }; }"
                    .to_string(),
            )],
        )
        .expect("engine");
        let (caller, headers) = logging_caller();
        let body = bytes::Bytes::new();
        // About 256 KiB of the thread's stack in use before the call.
        deep(64, &|| {
            let mut tx = Tx::new(State::default());
            e.call_handler(
                &mut tx,
                KvPolicy::Application,
                (1, 1),
                "main.js",
                "recurse",
                logging_request(&caller, &headers, &body),
                None,
            )
        })
    });
    let r = thread
        .expect("thread")
        .join()
        .expect("the thread did not overflow its stack");
    assert!(
        matches!(&r, Err(JsError::Exception { message, .. }) if message.contains("stack")),
        "{r:?}"
    );
}

/// A committed past for `ccf.historical`: key "k" of "records" was "a" at seqno 3 and "b" at 7, deleted at 9.
struct FakeHistory;

impl HistoricalSource for FakeHistory {
    fn value_at(
        &self,
        map: &str,
        key: &[u8],
        seqno: u64,
    ) -> Result<Option<HistoricalVersion>, HistoricalRefusal> {
        if seqno > 10 {
            return Err(HistoricalRefusal {
                status: 404,
                code: "TransactionPendingOrUnknown".into(),
                message: format!("seqno {seqno} is not committed yet"),
            });
        }
        let (page, _) = self.versions(map, key, 1, seqno, 100)?;
        Ok(page.into_iter().last().filter(|v| v.value.is_some()))
    }

    fn versions(
        &self,
        map: &str,
        key: &[u8],
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<VersionPage, HistoricalRefusal> {
        let all = [(3, Some(b"a".to_vec())), (7, Some(b"b".to_vec())), (9, None)];
        let found: Vec<_> = all
            .into_iter()
            .filter(|(s, _)| map == "records" && key == b"k" && (from..=to).contains(s))
            .map(|(seqno, value)| HistoricalVersion {
                view: 2,
                seqno,
                value,
            })
            .collect();
        let next = (found.len() > limit).then(|| found[limit].seqno);
        Ok((found.into_iter().take(limit).collect(), next))
    }

    fn receipt(&self, view: u64, seqno: u64) -> Result<String, HistoricalRefusal> {
        Ok(format!(r#"{{"tx": "{view}.{seqno}"}}"#))
    }
}

#[test]
fn ccf_historical_reads_the_committed_past_through_its_source() {
    let e = engine(&[(
        "main.js",
        r#"
        const k = () => ccf.strToBuf("k");
        const text = (v) => v === undefined ? null : { seqno: v.seqno, id: v.transactionId, msg: v.value === undefined ? null : ccf.bufToStr(v.value) };
        export function at(map, seqno) { return text(ccf.historical.getValueAt(map, k(), seqno)); }
        export function all(limit) {
            const r = ccf.historical.getVersions("records", k(), 1, 10, limit);
            return { versions: r.versions.map(text), next: r.next === undefined ? null : r.next };
        }
        export function receipt() { return ccf.historical.getReceipt({ view: 2, seqno: 7 }); }
        export function refused() {
            try { ccf.historical.getValueAt("records", k(), 11); } catch (e) { return [e.code, e.statusCode]; }
        }
        "#,
    )]);
    let mut tx = Tx::new(State::default());
    let app = |tx: &mut Tx, f: &str, args: &[serde_json::Value]| call(&e, tx, KvPolicy::Application, f, args);
    // Without a source (not a JavaScript worker's call), ccf.historical is not there.
    let err = app(&mut tx, "at", &["records".into(), 5.into()]).unwrap_err();
    assert!(err.to_string().contains("not available"), "{err}");
    let source: Rc<dyn HistoricalSource> = Rc::new(FakeHistory);
    with_historical(source, || {
        let at = |tx: &mut Tx, seqno: u64| app(tx, "at", &["records".into(), seqno.into()]).expect("at");
        assert_eq!(at(&mut tx, 2), serde_json::Value::Null);
        assert_eq!(
            at(&mut tx, 5),
            serde_json::json!({"seqno": 3, "id": "2.3", "msg": "a"})
        );
        assert_eq!(at(&mut tx, 8)["msg"], "b");
        assert_eq!(at(&mut tx, 9), serde_json::Value::Null, "deleted then");
        assert_eq!(
            app(&mut tx, "all", &[2.into()]).expect("all"),
            serde_json::json!({
                "versions": [{"seqno": 3, "id": "2.3", "msg": "a"}, {"seqno": 7, "id": "2.7", "msg": "b"}],
                "next": 9,
            })
        );
        assert_eq!(
            app(&mut tx, "all", &[5.into()]).expect("all")["versions"][2]["msg"],
            serde_json::Value::Null
        );
        assert_eq!(
            app(&mut tx, "receipt", &[]).expect("receipt"),
            serde_json::json!({"tx": "2.7"})
        );
        assert_eq!(
            app(&mut tx, "refused", &[]).expect("refused"),
            serde_json::json!(["TransactionPendingOrUnknown", 404])
        );
        // The sandbox's read rule holds for the past too, and governance scripts have no ccf.historical.
        let err = app(
            &mut tx,
            "at",
            &["public:ccf.internal.signatures".into(), 5.into()],
        )
        .unwrap_err();
        assert!(err.to_string().contains("internal to the framework"), "{err}");
        let err = call(
            &e,
            &mut tx,
            KvPolicy::ReadOnly,
            "at",
            &["public:x".into(), 5.into()],
        )
        .unwrap_err();
        assert!(err.to_string().contains("application handlers"), "{err}");
        let err = app(&mut tx, "at", &["records".into(), 0.5.into()]).unwrap_err();
        assert!(err.to_string().contains("positive integer"), "{err}");
    });
}

#[test]
fn verify_signature_takes_ecdsa_on_both_curves_and_eddsa() {
    use synod_core::cert::{self, Curve, PrivateKey};
    let e = engine(&[(
        "main.js",
        r#"
        export function verify(alg, hash, pem, sig, msg) {
          const algorithm = hash ? { name: alg, hash } : { name: alg };
          return ccf.crypto.verifySignature(algorithm, pem, new Uint8Array(sig).buffer, ccf.strToBuf(msg));
        }
        "#,
    )]);
    let ident = |curve| {
        let id = cert::generate_self_signed_with(curve, "k", false).expect("identity");
        let key = PrivateKey::from_pem(&id.key_pem).expect("key");
        (id.cert_pem, key)
    };
    let mut tx = Tx::new(State::default());
    let mut verify = |alg: &str, hash: &str, pem: &str, sig: &[u8], msg: &str| {
        call(
            &e,
            &mut tx,
            KvPolicy::Application,
            "verify",
            &[
                alg.into(),
                hash.into(),
                pem.into(),
                serde_json::json!(sig),
                msg.into(),
            ],
        )
    };
    let (p384_pem, p384) = ident(Curve::P384);
    let raw = p384.sign(b"hello");
    assert_eq!(
        verify("ECDSA", "SHA-384", &p384_pem, &raw, "hello").unwrap(),
        true
    );
    assert_eq!(
        verify("ECDSA", "SHA-384", &p384_pem, &raw, "hellp").unwrap(),
        false
    );
    assert_eq!(
        verify("ECDSA", "SHA-256", &p384_pem, &raw, "hello").unwrap(),
        false
    );
    // DER signatures over a SHA-256 digest, as OpenSSL makes them; the key given as a PUBLIC KEY block.
    let der = p384.sign_digest(&synod_core::hash::sha256(b"hello"));
    let cert::PublicKey::P384(vk) = p384.public_key() else {
        panic!("P-384")
    };
    let spki = p384::pkcs8::EncodePublicKey::to_public_key_pem(&vk, Default::default()).expect("spki");
    assert_eq!(verify("ECDSA", "SHA-256", &spki, &der, "hello").unwrap(), true);

    let (p256_pem, p256) = ident(Curve::P256);
    assert_eq!(
        verify("ECDSA", "SHA-256", &p256_pem, &p256.sign(b"hi"), "hi").unwrap(),
        true
    );
    assert_eq!(
        verify("ECDSA", "SHA-256", &p384_pem, &p256.sign(b"hi"), "hi").unwrap(),
        false
    );

    let (ed_pem, ed) = ident(Curve::Ed25519);
    assert_eq!(verify("EdDSA", "", &ed_pem, &ed.sign(b"hi"), "hi").unwrap(), true);
    assert_eq!(
        verify("EdDSA", "", &ed_pem, &ed.sign(b"hi"), "ho").unwrap(),
        false
    );
    // A key that cannot verify the named algorithm, or an unknown algorithm or hash, is an error, not `false`.
    assert!(verify("ECDSA", "SHA-256", &ed_pem, &raw, "hello").is_err());
    assert!(verify("EdDSA", "", &p384_pem, &raw, "hello").is_err());
    assert!(verify("RSA-PSS", "SHA-256", &p384_pem, &raw, "hello").is_err());
    assert!(verify("ECDSA", "SHA-1", &p384_pem, &raw, "hello").is_err());
    assert!(verify("ECDSA", "SHA-256", "not a key", &raw, "hello").is_err());
}

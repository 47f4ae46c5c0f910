//! JavaScript in the node (QuickJS via rquickjs, what CCF uses): the constitution that decides governance, and
//! (later) application bundles. Scripts run against one KV transaction through CCF's `ccf` global:
//!
//! ```text
//!  Tx ─(moved in)─▶ Engine { Runtime (heap limit, interrupt at a deadline), Context (`ccf` global, modules) }
//!                      ccf.kv[map].get/set/delete/has/clear/forEach/size/range ─▶ natives ─▶ the Tx
//!                      ccf.historical.getValueAt/getVersions/getReceipt ─▶ the committed past (`historical`)
//!  Tx ◀─(moved out)── after the call; writes count only if the caller commits the Tx
//! ```
//!
//! Every call is bounded: a heap limit (allocation fails with an exception) and a wall-clock deadline checked by
//! QuickJS's interrupt handler (a loop that never ends is stopped). Buffers the natives return are allocated by
//! QuickJS, so they count against the heap limit; what the natives add to the transaction (on the Rust heap) is
//! bounded by the same number of bytes (`TxBudget`). What a script may touch is a [`KvPolicy`].

mod historical;
mod prelude;

pub use historical::{with_historical, HistoricalRefusal, HistoricalSource, HistoricalVersion, VersionPage};

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rquickjs::loader::{BuiltinLoader, BuiltinResolver, ImportAttributes, Loader};
use rquickjs::module::Declared;
use rquickjs::{ArrayBuffer, Context, Ctx, Exception, Function, Module, Object, Runtime, Value};
use synod_core::hash::sha256;
use synod_core::maps;
use synod_kv::{State, Tx};

/// Bounds on one script call.
#[derive(Clone, Copy, Debug)]
pub struct JsLimits {
    /// Heap a runtime may allocate, in bytes.
    pub heap_bytes_max: usize,
    /// Wall-clock time one call may run, in milliseconds.
    pub time_ms_max: u64,
    /// Native stack, in bytes.
    pub stack_bytes_max: usize,
}

impl Default for JsLimits {
    fn default() -> JsLimits {
        JsLimits {
            heap_bytes_max: 64 << 20,
            time_ms_max: 1000,
            stack_bytes_max: 1 << 20,
        }
    }
}

/// What scripts may read and write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvPolicy {
    /// The constitution's `apply`: reads public maps, writes the governance tables
    /// ([`maps::is_writable_by_governance`]).
    Governance,
    /// Applications: their own maps; the public governance tables read-only; no internal tables at all
    /// ([`maps::is_readable_by_applications`]).
    Application,
    /// Ballots, and the constitution's `validate` and `resolve`: public maps, read-only.
    ReadOnly,
}

impl KvPolicy {
    fn check_read(self, map: &str) -> Result<(), String> {
        match self {
            KvPolicy::Application if !maps::is_readable_by_applications(map) => Err(format!(
                "{map} is internal to the framework and cannot be read by applications"
            )),
            KvPolicy::Governance | KvPolicy::ReadOnly if !maps::is_readable_by_governance(map) => Err(
                format!("{map} is private: ballots and the constitution read public maps only"),
            ),
            _ => Ok(()),
        }
    }

    fn check_write(self, map: &str) -> Result<(), String> {
        match self {
            KvPolicy::ReadOnly => Err(format!("this script may only read: writing {map} is refused")),
            KvPolicy::Application if maps::is_framework_table(map) => Err(format!(
                "{map} belongs to the framework: applications may not write it"
            )),
            KvPolicy::Governance if !maps::is_writable_by_governance(map) => Err(format!(
                "{map} is not a governance table: the constitution writes public:ccf.gov.* only"
            )),
            _ => Ok(()),
        }
    }
}

/// Why a script call failed.
#[derive(Debug, thiserror::Error)]
pub enum JsError {
    /// The script threw (or did not compile): the message and, if any, the JS stack.
    #[error("{message}")]
    Exception {
        /// The exception's message.
        message: String,
        /// Its stack trace.
        stack: Option<String>,
    },
    /// The call ran past its time limit.
    #[error("script stopped: it ran longer than {0} ms")]
    Timeout(u64),
    /// The call used up the CPU slice it was given ([`Engine::call_handler`] with a slice) before its time
    /// limit: nothing it did counts, and it may be run again with its full time.
    #[error("script stopped: it used up its {0}-µs slice")]
    SliceExpired(u64),
    /// The call ran out of heap.
    #[error("script stopped: it exceeded its {0}-byte heap limit")]
    OutOfMemory(usize),
    /// A module does not export the function asked for.
    #[error("module {module} does not export a function {function}")]
    MissingExport {
        /// The module.
        module: String,
        /// The function.
        function: String,
    },
    /// The script returned something unexpected.
    #[error("script returned an unexpected value: {0}")]
    BadReturn(String),
    /// An engine error.
    #[error("JavaScript engine: {0}")]
    Engine(String),
}

/// What the natives behind `ccf` reach during a call.
struct CallState {
    tx: Tx,
    policy: KvPolicy,
    last_committed: (u64, u64),
    apply_writes: Option<bool>,
    budget: TxBudget,
    /// The HTTP request's body, for `request.body.*` (shared, not copied: converted only when a handler asks).
    body: Option<bytes::Bytes>,
}

/// Why a native refused.
enum Refusal {
    /// A policy or argument error (a `TypeError`).
    Refused(String),
    /// The call's transaction would outgrow its budget (an `InternalError` "out of memory", like QuickJS's own).
    OutOfMemory(String),
}

impl From<String> for Refusal {
    fn from(m: String) -> Refusal {
        Refusal::Refused(m)
    }
}

/// Bytes one key of the transaction costs beyond its map name, key and value (tree nodes, vector headers, the
/// budget's own entry). An estimate: it only has to keep the order of magnitude honest.
const TX_ENTRY_OVERHEAD: usize = 64;
/// Bytes the transaction keeps per entry a range read returned (the key's handle and version, for validation).
const TX_RANGE_ENTRY: usize = 40;

/// What the natives add to the transaction during one call. The transaction lives on the Rust heap, out of
/// QuickJS's sight: without this bound a script could grow its write set (or its read set, with ever new keys, or
/// its recorded ranges, with `size` in a loop) to gigabytes within its time limit while its JS heap stays small.
/// It is bounded by the same number of bytes as the heap ([`JsLimits::heap_bytes_max`]).
struct TxBudget {
    limit: usize,
    used: usize,
    /// What each (map, key) touched is charged now, by a hash of it: reading or rewriting a key again costs
    /// nothing more, as the transaction keeps one entry per key.
    per_key: std::collections::HashMap<u64, usize>,
    hasher: std::collections::hash_map::RandomState,
    /// Set once a charge was refused: the call fails even if the script caught the exception.
    exceeded: bool,
}

impl TxBudget {
    fn new(limit: usize) -> TxBudget {
        TxBudget {
            limit,
            used: 0,
            per_key: Default::default(),
            hasher: Default::default(),
            exceeded: false,
        }
    }

    fn check(&mut self, used: usize) -> Result<(), Refusal> {
        if self.exceeded || used > self.limit {
            self.exceeded = true;
            return Err(Refusal::OutOfMemory(format!(
                "out of memory: this call's transaction would grow past the {}-byte heap limit",
                self.limit
            )));
        }
        self.used = used;
        Ok(())
    }

    /// Refuses everything once the budget was exceeded (for operations charged after they ran).
    fn still_open(&mut self) -> Result<(), Refusal> {
        self.check(self.used)
    }

    /// Charges a read (`value` None) or a write of `value` bytes at `key` of `map`, before it happens.
    fn key(&mut self, map: &str, key: &[u8], value: Option<usize>) -> Result<(), Refusal> {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one((map, key));
        let old = self.per_key.get(&h).copied().unwrap_or(0);
        let base = map.len() + key.len() + TX_ENTRY_OVERHEAD;
        // A write replaces the key's value; a read adds an entry only the first time.
        let new = match value {
            Some(v) => base.saturating_add(v),
            None => old.max(base),
        };
        self.check(self.used.saturating_sub(old).saturating_add(new))?;
        self.per_key.insert(h, new);
        Ok(())
    }

    /// Charges a range read that returned `entries` (every range read stays recorded in the transaction).
    fn range(&mut self, map: &str, bounds: usize, entries: usize) -> Result<(), Refusal> {
        let cost =
            (map.len() + bounds + TX_ENTRY_OVERHEAD).saturating_add(entries.saturating_mul(TX_RANGE_ENTRY));
        self.check(self.used.saturating_add(cost))
    }
}

type Shared = Rc<RefCell<Option<CallState>>>;

/// Exported functions already looked up, by module then name (two levels, so a lookup allocates nothing).
type FunctionCache = std::collections::HashMap<
    String,
    std::collections::HashMap<String, rquickjs::Persistent<Function<'static>>>,
>;

/// A JavaScript engine: one runtime and context, reusable across calls (not thread-safe: one per thread).
pub struct Engine {
    /// Exported functions already looked up (dropped before the runtime they live in).
    functions: RefCell<FunctionCache>,
    /// The prelude's `__synod_request` and `__synod_view_buffer`, looked up once (dropped before the runtime).
    request_fn: rquickjs::Persistent<Function<'static>>,
    view_buffer_fn: rquickjs::Persistent<Function<'static>>,
    /// One small block of each of QuickJS's allocator size classes, kept for the engine's life (see [`BALLAST`]).
    _ballast: rquickjs::Persistent<rquickjs::Array<'static>>,
    runtime: Runtime,
    context: Context,
    state: Shared,
    interrupt: Arc<Interrupt>,
    epoch: Instant,
    limits: JsLimits,
}

/// What QuickJS's interrupt handler checks, and what it found.
struct Interrupt {
    /// Wall-clock deadline of the call, in ms since the engine's epoch (`u64::MAX`: none).
    deadline_ms: AtomicU64,
    /// CPU time the call's slice lasts, in ns (`u64::MAX`: no slice).
    slice_ns: AtomicU64,
    /// When the slice ends, in ns of this thread's CPU time; 0 until the first check of the call. The slice
    /// starts there rather than when the call does, which saves reading the clock (a system call) in the many
    /// calls that end before QuickJS first checks for an interrupt; it adds at most one check interval.
    slice_end_ns: AtomicU64,
    /// The call was stopped (either deadline).
    interrupted: AtomicBool,
    /// The call was stopped by its slice, not by its time limit.
    sliced: AtomicBool,
}

/// CPU time this thread has used, in ns; `u64::MAX` if the clock cannot be read (so a slice ends at once, and
/// the call is retried where it may take its full time).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return u64::MAX;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Who called a handler (CCF's `request.caller`), for an endpoint that authenticates its callers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HandlerCaller {
    /// The policy that authenticated the caller (`user_cert`, `member_cert`, `any_cert`).
    pub policy: String,
    /// The caller's id (its certificate's fingerprint).
    pub id: String,
    /// The caller's `user_data` / `member_data`, JSON-encoded; `None` for null.
    pub data_json: Option<String>,
    /// The caller's registered certificate (PEM), if any.
    pub cert: Option<String>,
}

/// An HTTP request for a handler: the parts of CCF's request object, handed to JavaScript without a JSON
/// round-trip. The body is offered as `request.body.text()/json()/arrayBuffer()`, converted only when asked.
#[derive(Clone, Copy, Debug)]
pub struct HandlerRequest<'a> {
    /// `method`.
    pub method: &'a str,
    /// `url` (path and query).
    pub url: &'a str,
    /// `path`.
    pub path: &'a str,
    /// `query` (without `?`).
    pub query: &'a str,
    /// `route`: the endpoint's path template.
    pub route: &'a str,
    /// `headers` (a repeated name keeps its last value; values that are not visible ASCII are left out).
    pub headers: &'a http::HeaderMap,
    /// `params`: the template's path parameters.
    pub params: &'a [(String, String)],
    /// `caller`; `None` for null (an endpoint without authentication).
    pub caller: Option<&'a HandlerCaller>,
    /// The body.
    pub body: &'a bytes::Bytes,
}

/// How a handler gave its response body (decides the default content type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body.
    None,
    /// A string.
    Text,
    /// Anything else but a buffer: sent as JSON.
    Json,
    /// An `ArrayBuffer` or typed array.
    Binary,
}

/// What an HTTP handler answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerResponse {
    /// `statusCode` (200 when absent).
    pub status: u16,
    /// `headers`.
    pub headers: Vec<(String, String)>,
    /// How the body was given.
    pub kind: BodyKind,
    /// The body's bytes.
    pub body: Vec<u8>,
    /// `ccf.rpc.setApplyWrites`, if the handler called it.
    pub apply_writes: Option<bool>,
}

fn engine_error(e: impl std::fmt::Display) -> JsError {
    JsError::Engine(e.to_string())
}

fn buf_bytes(buf: &ArrayBuffer<'_>) -> Option<Vec<u8>> {
    // SAFETY: the bytes are copied before any JavaScript runs again.
    unsafe { buf.as_bytes() }.map(<[u8]>::to_vec)
}

fn throw(ctx: &Ctx<'_>, message: &str) -> rquickjs::Error {
    Exception::throw_type(ctx, message)
}

/// Makes one block of each size class of QuickJS's small-block allocator (an `ArrayBuffer` of `n` bytes takes a
/// block of `n` + 8). QuickJS hands an arena (4 KiB of blocks of one size) back to `malloc` as soon as its last
/// block is freed, and builds it again (its free list block by block) at the next allocation of that size: a
/// handler's objects, all freed when it returns, made it do so several times per call. A block kept in each class
/// keeps its arena.
const BALLAST: &str = "[16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128, 144, 160, 176, 192, 208, \
                       224, 240, 256, 288, 320, 352, 384, 416, 448, 480, 512].map((size) => new ArrayBuffer(size - 8))";

/// Modules compiled to QuickJS bytecode (name → bytecode), produced by [`compile`].
pub type Compiled = Vec<(String, Vec<u8>)>;

/// Compiles `modules` (name → source) to bytecode once, so engines on other threads skip parsing them.
pub fn compile(modules: &[(String, String)]) -> Result<Compiled, JsError> {
    let captured: Rc<RefCell<std::collections::HashMap<String, Vec<u8>>>> = Rc::default();
    let runtime = Runtime::new().map_err(engine_error)?;
    let mut resolver = BuiltinResolver::default();
    for (name, _) in modules {
        resolver = resolver.with_module(name.clone());
    }
    // QuickJS loads a module's imports while declaring it: the loader compiles those too and keeps their bytes.
    let loader = CapturingLoader {
        sources: modules.iter().cloned().collect(),
        captured: captured.clone(),
    };
    runtime.set_loader(resolver, loader);
    let context = Context::full(&runtime).map_err(engine_error)?;
    context.with(|ctx| {
        for (name, source) in modules {
            if captured.borrow().contains_key(name) {
                continue;
            }
            let declared = Module::declare(ctx.clone(), name.as_str(), source.as_str()).map_err(|e| {
                let message = match e {
                    rquickjs::Error::Exception => {
                        let v = ctx.catch();
                        v.as_exception()
                            .and_then(|x| x.message())
                            .unwrap_or_else(|| "syntax error".into())
                    }
                    other => other.to_string(),
                };
                JsError::Exception {
                    message: format!("module {name}: {message}"),
                    stack: None,
                }
            })?;
            let bytes = declared
                .write(rquickjs::module::WriteOptions::default())
                .map_err(engine_error)?;
            captured.borrow_mut().insert(name.clone(), bytes);
        }
        Ok::<_, JsError>(())
    })?;
    let captured = captured.borrow();
    modules
        .iter()
        .map(|(name, _)| {
            captured
                .get(name)
                .map(|b| (name.clone(), b.clone()))
                .ok_or_else(|| JsError::Engine(format!("module {name} was not compiled")))
        })
        .collect()
}

struct CapturingLoader {
    sources: std::collections::HashMap<String, String>,
    captured: Rc<RefCell<std::collections::HashMap<String, Vec<u8>>>>,
}

impl Loader for CapturingLoader {
    fn load<'js>(
        &mut self,
        ctx: &Ctx<'js>,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<Module<'js, Declared>> {
        let source = self
            .sources
            .get(name)
            .ok_or_else(|| rquickjs::Error::new_loading(name))?;
        let module = Module::declare(ctx.clone(), name, source.as_str())?;
        let bytes = module.write(rquickjs::module::WriteOptions::default())?;
        self.captured.borrow_mut().insert(name.to_string(), bytes);
        Ok(module)
    }
}

/// Loads modules from bytecode this process compiled.
struct BytecodeLoader {
    modules: std::collections::HashMap<String, Vec<u8>>,
}

impl Loader for BytecodeLoader {
    fn load<'js>(
        &mut self,
        ctx: &Ctx<'js>,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<Module<'js, Declared>> {
        let bytes = self
            .modules
            .get(name)
            .ok_or_else(|| rquickjs::Error::new_loading(name))?;
        // SAFETY: the bytes are bytecode written by `compile` in this process, by this very QuickJS.
        unsafe { Module::load(ctx.clone(), bytes) }
    }
}

impl Engine {
    /// A fresh engine with `modules` (name → source) loadable by `import`.
    pub fn new(limits: JsLimits, modules: &[(String, String)]) -> Result<Engine, JsError> {
        let mut resolver = BuiltinResolver::default();
        let mut loader = BuiltinLoader::default();
        for (name, source) in modules {
            resolver = resolver.with_module(name.clone());
            loader = loader.with_module(name.clone(), source.clone());
        }
        Engine::build(limits, resolver, loader)
    }

    /// A fresh engine whose modules come from bytecode [`compile`]d before.
    pub fn from_bytecode(limits: JsLimits, compiled: &Compiled) -> Result<Engine, JsError> {
        let mut resolver = BuiltinResolver::default();
        for (name, _) in compiled {
            resolver = resolver.with_module(name.clone());
        }
        let loader = BytecodeLoader {
            modules: compiled.iter().cloned().collect(),
        };
        Engine::build(limits, resolver, loader)
    }

    fn build(
        limits: JsLimits,
        resolver: BuiltinResolver,
        loader: impl Loader + 'static,
    ) -> Result<Engine, JsError> {
        let runtime = Runtime::new().map_err(engine_error)?;
        runtime.set_memory_limit(limits.heap_bytes_max);
        runtime.set_max_stack_size(limits.stack_bytes_max);
        runtime.set_loader(resolver, loader);
        let interrupt = Arc::new(Interrupt {
            deadline_ms: AtomicU64::new(u64::MAX),
            slice_ns: AtomicU64::new(u64::MAX),
            slice_end_ns: AtomicU64::new(0),
            interrupted: AtomicBool::new(false),
            sliced: AtomicBool::new(false),
        });
        let epoch = Instant::now();
        {
            let interrupt = interrupt.clone();
            runtime.set_interrupt_handler(Some(Box::new(move || {
                let now = epoch.elapsed().as_millis() as u64;
                let late = now > interrupt.deadline_ms.load(Ordering::Relaxed);
                let slice = interrupt.slice_ns.load(Ordering::Relaxed);
                // Reading the CPU clock is a system call: only for calls that have a slice.
                let sliced = !late && slice != u64::MAX && {
                    let now = thread_cpu_ns();
                    match interrupt.slice_end_ns.load(Ordering::Relaxed) {
                        0 => {
                            interrupt
                                .slice_end_ns
                                .store(now.saturating_add(slice).max(1), Ordering::Relaxed);
                            now == u64::MAX
                        }
                        end => now > end,
                    }
                };
                if late || sliced {
                    interrupt.interrupted.store(true, Ordering::Relaxed);
                    interrupt.sliced.store(sliced, Ordering::Relaxed);
                }
                late || sliced
            })));
        }
        let context = Context::full(&runtime).map_err(engine_error)?;
        let state: Shared = Rc::new(RefCell::new(None));
        let (request_fn, view_buffer_fn, ballast) = context
            .with(|ctx| {
                install_ccf(&ctx, &state)?;
                let g = ctx.globals();
                let request: Function = g.get("__synod_request")?;
                let view_buffer: Function = g.get("__synod_view_buffer")?;
                let ballast: rquickjs::Array = ctx.eval(BALLAST)?;
                Ok::<_, rquickjs::Error>((
                    rquickjs::Persistent::save(&ctx, request),
                    rquickjs::Persistent::save(&ctx, view_buffer),
                    rquickjs::Persistent::save(&ctx, ballast),
                ))
            })
            .map_err(engine_error)?;
        Ok(Engine {
            functions: RefCell::default(),
            request_fn,
            view_buffer_fn,
            _ballast: ballast,
            runtime,
            context,
            state,
            interrupt,
            epoch,
            limits,
        })
    }

    /// Calls `function` exported by module `module` with JSON `args`, against `tx` (moved in and back out), and
    /// returns its value as JSON (`null` for undefined).
    pub fn call(
        &self,
        tx: &mut Tx,
        policy: KvPolicy,
        last_committed: (u64, u64),
        module: &str,
        function: &str,
        args: &[serde_json::Value],
    ) -> Result<serde_json::Value, JsError> {
        let (value, _) = self.with_tx(tx, policy, last_committed, None, |ctx| {
            let f = self.function(ctx, module, function)?;
            let caught = |e: rquickjs::Error| self.exception(ctx, e);
            let mut js_args = rquickjs::function::Args::new(ctx.clone(), args.len());
            for a in args {
                let v = ctx.json_parse(a.to_string()).map_err(caught)?;
                js_args.push_arg(v).map_err(caught)?;
            }
            let out: Value = f.call_arg(js_args).map_err(caught)?;
            let out = self.settle(ctx, out)?;
            let json = ctx.json_stringify(out).map_err(caught)?;
            match json {
                None => Ok(serde_json::Value::Null),
                Some(s) => {
                    let s = s.to_string().map_err(engine_error)?;
                    serde_json::from_str(&s).map_err(|e| JsError::BadReturn(e.to_string()))
                }
            }
        })?;
        Ok(value)
    }

    /// Calls an HTTP handler `function(request)` of `module` (see [`HandlerRequest`]). With a `slice`, the call
    /// is also stopped once it used that much CPU time ([`JsError::SliceExpired`]), so that a caller that cannot
    /// wait long (an async worker thread) can hand a long call to a thread that can.
    #[allow(clippy::too_many_arguments)]
    pub fn call_handler(
        &self,
        tx: &mut Tx,
        policy: KvPolicy,
        last_committed: (u64, u64),
        module: &str,
        function: &str,
        request: HandlerRequest<'_>,
        slice: Option<Duration>,
    ) -> Result<HandlerResponse, JsError> {
        let (mut response, apply_writes) = self.with_tx(tx, policy, last_committed, slice, |ctx| {
            let f = self.function(ctx, module, function)?;
            let caught = |e: rquickjs::Error| self.exception(ctx, e);
            if let Some(call) = self.state.borrow_mut().as_mut() {
                call.body = Some(request.body.clone());
            }
            let make_request = self.request_fn.clone().restore(ctx).map_err(caught)?;
            let js_request: Value = make_request
                .call_arg(request_args(ctx, &request).map_err(caught)?)
                .map_err(caught)?;
            let out: Value = f.call((js_request,)).map_err(caught)?;
            let out = self.settle(ctx, out)?;
            self.response(ctx, out)
        })?;
        response.apply_writes = apply_writes;
        Ok(response)
    }

    /// Checks that `module` loads and exports a function under each of `names`. Its top-level code runs, bounded
    /// like a call, against `tx` under `policy`.
    pub fn check_exports(
        &self,
        tx: &mut Tx,
        policy: KvPolicy,
        last_committed: (u64, u64),
        module: &str,
        names: &[&str],
    ) -> Result<(), JsError> {
        self.with_tx(tx, policy, last_committed, None, |ctx| {
            names
                .iter()
                .try_for_each(|name| self.function(ctx, module, name).map(drop))
        })?;
        Ok(())
    }

    fn function<'js>(&self, ctx: &Ctx<'js>, module: &str, function: &str) -> Result<Function<'js>, JsError> {
        let saved = self
            .functions
            .borrow()
            .get(module)
            .and_then(|m| m.get(function))
            .cloned();
        if let Some(saved) = saved {
            return saved.restore(ctx).map_err(|e| self.exception(ctx, e));
        }
        let f = self.lookup(ctx, module, function)?;
        self.functions
            .borrow_mut()
            .entry(module.to_string())
            .or_default()
            .insert(function.to_string(), rquickjs::Persistent::save(ctx, f.clone()));
        Ok(f)
    }

    fn lookup<'js>(&self, ctx: &Ctx<'js>, module: &str, function: &str) -> Result<Function<'js>, JsError> {
        let caught = |e: rquickjs::Error| self.exception(ctx, e);
        let promise = Module::import(ctx, module).map_err(caught)?;
        let namespace: Object = promise.finish().map_err(caught)?;
        let f: Value = namespace.get(function).map_err(caught)?;
        f.into_function().ok_or_else(|| JsError::MissingExport {
            module: module.to_string(),
            function: function.to_string(),
        })
    }

    /// A handler's answer `{statusCode, headers, body}` (undefined or null: an empty 200), read in place (what
    /// the prelude did before, without its intermediate array). A string or JSON body is converted once.
    fn response<'js>(&self, ctx: &Ctx<'js>, out: Value<'js>) -> Result<HandlerResponse, JsError> {
        let caught = |e: rquickjs::Error| self.exception(ctx, e);
        let refused = |message: &str| JsError::Exception {
            message: message.to_string(),
            stack: None,
        };
        if out.is_undefined() || out.is_null() {
            return Ok(HandlerResponse {
                status: 200,
                headers: Vec::new(),
                kind: BodyKind::None,
                body: Vec::new(),
                apply_writes: None,
            });
        }
        let Some(r) = out.into_object().filter(|o| !o.is_function()) else {
            return Err(refused("a handler returns {statusCode, headers, body}"));
        };
        let status: Value = r.get("statusCode").map_err(caught)?;
        let status: i32 = if status.is_undefined() {
            200
        } else {
            rquickjs::FromJs::from_js(ctx, status).map_err(caught)?
        };
        let status = u16::try_from(status)
            .ok()
            .filter(|s| (100..600).contains(s))
            .ok_or_else(|| JsError::BadReturn(format!("statusCode {status} is not an HTTP status")))?;
        let headers: Value = r.get("headers").map_err(caught)?;
        if !headers.is_undefined() && (!headers.is_object() || headers.is_function() || headers.is_array()) {
            return Err(refused("response headers must be an object"));
        }
        let headers = response_headers(ctx, headers).map_err(caught)?;
        let body: Value = r.get("body").map_err(caught)?;
        let buffer_bytes = |v: Value<'js>| {
            v.into_object()
                .and_then(ArrayBuffer::from_object)
                .and_then(|b| buf_bytes(&b))
                .ok_or_else(|| JsError::BadReturn("detached response body".into()))
        };
        let (kind, body) = if body.is_undefined() || body.is_null() {
            (BodyKind::None, Vec::new())
        } else if let Some(text) = body.as_string() {
            (BodyKind::Text, text.to_string().map_err(caught)?.into_bytes())
        } else if buffer_kind(&body) == Some(BufferKind::Buffer) {
            (BodyKind::Binary, buffer_bytes(body)?)
        } else if buffer_kind(&body) == Some(BufferKind::View) {
            // A typed array or DataView: the bytes it views.
            let view_buffer = self.view_buffer_fn.clone().restore(ctx).map_err(caught)?;
            let buffer: Value = view_buffer.call((body,)).map_err(caught)?;
            (BodyKind::Binary, buffer_bytes(buffer)?)
        } else {
            // Anything else is sent as JSON (`String(JSON.stringify(body))`, as CCF does).
            let json = match ctx.json_stringify(body).map_err(caught)? {
                Some(s) => s.to_string().map_err(caught)?,
                None => "undefined".to_string(),
            };
            (BodyKind::Json, json.into_bytes())
        };
        Ok(HandlerResponse {
            status,
            headers,
            kind,
            body,
            apply_writes: None,
        })
    }

    fn settle<'js>(&self, ctx: &Ctx<'js>, out: Value<'js>) -> Result<Value<'js>, JsError> {
        match out.as_promise() {
            Some(p) => p.finish().map_err(|e| self.exception(ctx, e)),
            None => Ok(out),
        }
    }

    fn with_tx<T>(
        &self,
        tx: &mut Tx,
        policy: KvPolicy,
        last_committed: (u64, u64),
        slice: Option<Duration>,
        f: impl FnOnce(&Ctx<'_>) -> Result<T, JsError>,
    ) -> Result<(T, Option<bool>), JsError> {
        let taken = std::mem::replace(tx, Tx::new(State::default()));
        *self.state.borrow_mut() = Some(CallState {
            tx: taken,
            policy,
            last_committed,
            apply_writes: None,
            budget: TxBudget::new(self.limits.heap_bytes_max),
            body: None,
        });
        let interrupt = &*self.interrupt;
        interrupt.interrupted.store(false, Ordering::Relaxed);
        interrupt.sliced.store(false, Ordering::Relaxed);
        let deadline = self.epoch.elapsed() + Duration::from_millis(self.limits.time_ms_max);
        interrupt
            .deadline_ms
            .store(deadline.as_millis() as u64, Ordering::Relaxed);
        let slice_ns = slice.map(|s| u64::try_from(s.as_nanos()).unwrap_or(u64::MAX - 1));
        interrupt.slice_end_ns.store(0, Ordering::Relaxed);
        interrupt
            .slice_ns
            .store(slice_ns.unwrap_or(u64::MAX), Ordering::Relaxed);
        let result = self.context.with(|ctx| f(&ctx));
        interrupt.deadline_ms.store(u64::MAX, Ordering::Relaxed);
        interrupt.slice_ns.store(u64::MAX, Ordering::Relaxed);
        let call = self.state.borrow_mut().take();
        let apply_writes = call.as_ref().and_then(|c| c.apply_writes);
        let exceeded = call.as_ref().is_some_and(|c| c.budget.exceeded);
        if let Some(call) = call {
            *tx = call.tx;
        }
        if interrupt.sliced.load(Ordering::Relaxed) {
            return Err(JsError::SliceExpired(slice_ns.unwrap_or(0) / 1000));
        }
        if interrupt.interrupted.load(Ordering::Relaxed) {
            return Err(JsError::Timeout(self.limits.time_ms_max));
        }
        if exceeded {
            return Err(JsError::OutOfMemory(self.limits.heap_bytes_max));
        }
        Ok((result?, apply_writes))
    }

    fn exception(&self, ctx: &Ctx<'_>, e: rquickjs::Error) -> JsError {
        if self.interrupt.interrupted.load(Ordering::Relaxed) {
            // with_tx tells a slice from the time limit.
            return JsError::Timeout(self.limits.time_ms_max);
        }
        if !matches!(e, rquickjs::Error::Exception) {
            let text = e.to_string();
            if text.contains("out of memory") || text.contains("Allocation") {
                return JsError::OutOfMemory(self.limits.heap_bytes_max);
            }
            return JsError::Exception {
                message: text,
                stack: None,
            };
        }
        let value = ctx.catch();
        if let Some(ex) = value.as_exception() {
            let message = ex.message().unwrap_or_else(|| "exception".into());
            if message.contains("out of memory") {
                return JsError::OutOfMemory(self.limits.heap_bytes_max);
            }
            return JsError::Exception {
                message,
                stack: ex.stack(),
            };
        }
        let message = ctx
            .json_stringify(value)
            .ok()
            .flatten()
            .and_then(|s| s.to_string().ok())
            .unwrap_or_else(|| "a non-Error value was thrown".into());
        if message.contains("out of memory") {
            return JsError::OutOfMemory(self.limits.heap_bytes_max);
        }
        JsError::Exception {
            message: format!("uncaught {message}"),
            stack: None,
        }
    }

    /// Runs the garbage collector (between calls on a reused engine).
    pub fn collect(&self) {
        self.runtime.run_gc();
    }
}

/// The arguments of the prelude's `__synod_request` for `r`: the request's parts as JavaScript values, built
/// directly (a JSON text would be written here and parsed again in JavaScript, per request). Objects with fixed
/// keys (the request, its caller) are literals in the prelude, whose keys are compiled once; only the headers and
/// path parameters, whose names vary, are built here (and no parameters make `undefined`, for `{}`).
fn request_args<'js>(
    ctx: &Ctx<'js>,
    r: &HandlerRequest<'_>,
) -> rquickjs::Result<rquickjs::function::Args<'js>> {
    let pairs = |pairs: &mut dyn Iterator<Item = (&str, &str)>| -> rquickjs::Result<Value<'js>> {
        let mut pairs = pairs.peekable();
        if pairs.peek().is_none() {
            return Ok(Value::new_undefined(ctx.clone()));
        }
        let o = Object::new(ctx.clone())?;
        for (k, v) in pairs {
            o.set(k, v)?;
        }
        Ok(o.into_value())
    };
    let mut args = rquickjs::function::Args::new(ctx.clone(), 12);
    args.push_arg(r.method)?;
    args.push_arg(r.url)?;
    args.push_arg(r.path)?;
    args.push_arg(r.query)?;
    args.push_arg(r.route)?;
    let headers = r
        .headers
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)));
    args.push_arg(pairs(&mut headers.into_iter())?)?;
    args.push_arg(pairs(
        &mut r.params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )?)?;
    match r.caller {
        // `policy` undefined: the caller is null.
        None => args.push_arg(rquickjs::Undefined)?,
        Some(c) => {
            args.push_arg(c.policy.as_str())?;
            args.push_arg(c.id.as_str())?;
            let data = match &c.data_json {
                Some(json) => ctx.json_parse(json.as_str())?,
                None => Value::new_null(ctx.clone()),
            };
            args.push_arg(data)?;
            args.push_arg(c.cert.as_deref())?;
        }
    }
    Ok(args)
}

/// A response's `headers` object as name/value pairs: strings as they are, other values as their JSON text
/// (what `JSON.stringify` of the object gave before), `undefined` values left out.
fn response_headers<'js>(ctx: &Ctx<'js>, headers: Value<'js>) -> rquickjs::Result<Vec<(String, String)>> {
    let Some(headers) = headers.into_object() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for prop in headers.props::<String, Value>() {
        let (name, value) = prop?;
        if let Some(s) = value.as_string() {
            out.push((name, s.to_string()?));
        } else if let Some(json) = ctx.json_stringify(value)? {
            out.push((name, json.to_string()?));
        }
    }
    Ok(out)
}

/// What kind of binary data a value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BufferKind {
    /// An `ArrayBuffer`.
    Buffer,
    /// A typed array or a `DataView` (`ArrayBuffer.isView`).
    View,
}

/// Whether `v` is an ArrayBuffer or a view of one, by its class (rquickjs's own checks throw a TypeError, left
/// pending, for every value that is not a buffer: thousands of instructions per call for nothing).
fn buffer_kind(v: &Value<'_>) -> Option<BufferKind> {
    if !v.is_object() {
        return None;
    }
    let raw = v.as_raw();
    // SAFETY: these read the class id of the live object `v` holds, nothing else.
    unsafe {
        if rquickjs::qjs::JS_IsArrayBuffer(raw) {
            Some(BufferKind::Buffer)
        } else if rquickjs::qjs::JS_GetTypedArrayType(raw) >= 0 || rquickjs::qjs::JS_IsDataView(raw) {
            Some(BufferKind::View)
        } else {
            None
        }
    }
}

/// An ArrayBuffer holding a copy of `bytes`, allocated by QuickJS so that it counts against the heap limit.
/// (`ArrayBuffer::new` would hand QuickJS a Rust-owned vector its allocator never sees: a script could keep
/// gigabytes of them under a heap limit of megabytes.)
fn js_buf<'js>(ctx: &Ctx<'js>, bytes: &[u8]) -> rquickjs::Result<ArrayBuffer<'js>> {
    ArrayBuffer::new_copy(ctx.clone(), bytes)
}

fn with_state<T>(
    ctx: &Ctx<'_>,
    shared: &Shared,
    f: impl FnOnce(&mut CallState) -> Result<T, Refusal>,
) -> rquickjs::Result<T> {
    let mut guard = shared.borrow_mut();
    let state = guard
        .as_mut()
        .ok_or_else(|| throw(ctx, "the key-value store is only available during a call"))?;
    f(state).map_err(|r| match r {
        Refusal::Refused(m) => throw(ctx, &m),
        Refusal::OutOfMemory(m) => Exception::throw_internal(ctx, &m),
    })
}

fn install_ccf<'js>(ctx: &Ctx<'js>, shared: &Shared) -> rquickjs::Result<()> {
    let g = ctx.globals();
    let natives = Object::new(ctx.clone())?;
    install_kv(ctx, &natives, shared)?;
    install_body(ctx, &natives, shared)?;
    install_crypto(ctx, &natives)?;
    install_call(ctx, &natives, shared)?;
    historical::install(ctx, &natives, shared)?;
    g.set("__synod", natives)?;
    ctx.eval::<(), _>(prelude::PRELUDE)?;
    Ok(())
}

/// The KV natives behind `ccf.kv`: get, set, delete and range, under the call's policy and budget.
fn install_kv<'js>(ctx: &Ctx<'js>, natives: &Object<'js>, shared: &Shared) -> rquickjs::Result<()> {
    {
        let s = shared.clone();
        natives.set(
            "get",
            Function::new(
                ctx.clone(),
                move |ctx: Ctx<'js>, map: String, key: ArrayBuffer<'js>| {
                    // SAFETY: read before any JavaScript runs again (nothing below runs any).
                    let key = unsafe { key.as_bytes() }.ok_or_else(|| throw(&ctx, "detached key"))?;
                    let value = with_state(&ctx, &s, |st| {
                        st.policy.check_read(&map)?;
                        st.budget.key(&map, key, None)?;
                        Ok(st.tx.get(&map, key))
                    })?;
                    value.map(|v| js_buf(&ctx, &v)).transpose()
                },
            )?,
        )?;
    }
    {
        let s = shared.clone();
        natives.set(
            "set",
            Function::new(
                ctx.clone(),
                move |ctx: Ctx<'js>, map: String, key: ArrayBuffer<'js>, value: ArrayBuffer<'js>| {
                    // SAFETY: read (and copied into the transaction) before any JavaScript runs again: nothing
                    // below runs any. One copy instead of two.
                    let key = unsafe { key.as_bytes() }.ok_or_else(|| throw(&ctx, "detached key"))?;
                    let value = unsafe { value.as_bytes() }.ok_or_else(|| throw(&ctx, "detached value"))?;
                    with_state(&ctx, &s, |st| {
                        st.policy.check_write(&map)?;
                        st.budget.key(&map, key, Some(value.len()))?;
                        st.tx.put(&map, key, value);
                        Ok(())
                    })
                },
            )?,
        )?;
    }
    {
        let s = shared.clone();
        natives.set(
            "delete",
            Function::new(
                ctx.clone(),
                move |ctx: Ctx<'js>, map: String, key: ArrayBuffer<'js>| {
                    // SAFETY: read before any JavaScript runs again (nothing below runs any).
                    let key = unsafe { key.as_bytes() }.ok_or_else(|| throw(&ctx, "detached key"))?;
                    with_state(&ctx, &s, |st| {
                        st.policy.check_write(&map)?;
                        st.budget.key(&map, key, Some(0))?;
                        let had = st.tx.has(&map, key);
                        st.tx.delete(&map, key);
                        Ok(had)
                    })
                },
            )?,
        )?;
    }
    {
        let s = shared.clone();
        natives.set(
            "range",
            Function::new(
                ctx.clone(),
                move |ctx: Ctx<'js>,
                      map: String,
                      from: Option<ArrayBuffer<'js>>,
                      to: Option<ArrayBuffer<'js>>,
                      limit: Option<u32>| {
                    let from = from.and_then(|b| buf_bytes(&b)).unwrap_or_default();
                    let to = to.and_then(|b| buf_bytes(&b));
                    let limit = limit.map_or(usize::MAX, |l| l as usize);
                    let rows = with_state(&ctx, &s, |st| {
                        st.policy.check_read(&map)?;
                        st.budget.still_open()?;
                        let rows = st.tx.range(&map, &from, to.as_deref(), limit);
                        let bounds = from.len() + to.as_ref().map_or(0, Vec::len);
                        st.budget.range(&map, bounds, rows.len())?;
                        Ok(rows)
                    })?;
                    let out = rquickjs::Array::new(ctx.clone())?;
                    for (i, (k, v)) in rows.into_iter().enumerate() {
                        let pair = rquickjs::Array::new(ctx.clone())?;
                        pair.set(0, js_buf(&ctx, &k)?)?;
                        pair.set(1, js_buf(&ctx, &v)?)?;
                        out.set(i, pair)?;
                    }
                    Ok::<_, rquickjs::Error>(out)
                },
            )?,
        )?;
    }
    Ok(())
}

/// `request.body.text()/json()/arrayBuffer()`: the body of the current call, converted on demand.
fn install_body<'js>(ctx: &Ctx<'js>, natives: &Object<'js>, shared: &Shared) -> rquickjs::Result<()> {
    {
        // `request.body.text()/json()/arrayBuffer()`: the body of the current call, converted on demand.
        let body_native = |what: u8| {
            let s = shared.clone();
            move |ctx: Ctx<'js>| -> rquickjs::Result<Value<'js>> {
                let body = with_state(&ctx, &s, |st| {
                    st.body
                        .clone()
                        .ok_or_else(|| Refusal::Refused("this call has no request body".into()))
                })?;
                if what == 2 {
                    return js_buf(&ctx, &body).map(ArrayBuffer::into_value);
                }
                let text = std::str::from_utf8(&body)
                    .map_err(|_| throw(&ctx, "the request body is not valid UTF-8"))?;
                if what == 1 {
                    return ctx.json_parse(text);
                }
                rquickjs::String::from_str(ctx.clone(), text).map(rquickjs::String::into_value)
            }
        };
        natives.set("bodyText", Function::new(ctx.clone(), body_native(0))?)?;
        natives.set("bodyJson", Function::new(ctx.clone(), body_native(1))?)?;
        natives.set("bodyBuffer", Function::new(ctx.clone(), body_native(2))?)?;
    }
    Ok(())
}

/// Conversions, hashing and signature checks (`ccf.strToBuf`, `ccf.crypto.*`): no state.
fn install_crypto<'js>(ctx: &Ctx<'js>, natives: &Object<'js>) -> rquickjs::Result<()> {
    natives.set(
        "strToBuf",
        // The string's UTF-8 straight from QuickJS into the buffer (no Rust copy in between).
        Function::new(ctx.clone(), |ctx: Ctx<'js>, s: rquickjs::String<'js>| {
            js_buf(&ctx, s.to_cstring()?.as_bytes())
        })?,
    )?;
    natives.set(
        "bufToStr",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, b: ArrayBuffer<'js>| {
            let bytes = buf_bytes(&b).ok_or_else(|| throw(&ctx, "detached buffer"))?;
            String::from_utf8(bytes).map_err(|_| throw(&ctx, "buffer is not valid UTF-8"))
        })?,
    )?;
    natives.set(
        "sha256",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, b: ArrayBuffer<'js>| {
            let bytes = buf_bytes(&b).ok_or_else(|| throw(&ctx, "detached buffer"))?;
            js_buf(&ctx, &sha256(&bytes))
        })?,
    )?;
    natives.set(
        "pemToId",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, pem: String| {
            synod_core::cert::pem_to_der(&pem)
                .map(|der| synod_core::cert::cert_fingerprint_hex(&der))
                .map_err(|e| throw(&ctx, &format!("not a PEM certificate: {e}")))
        })?,
    )?;
    natives.set(
        "verifySignature",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>,
             alg: String,
             hash: String,
             key_pem: String,
             signature: ArrayBuffer<'js>,
             data: ArrayBuffer<'js>| {
                let sig = buf_bytes(&signature).ok_or_else(|| throw(&ctx, "detached signature"))?;
                let data = buf_bytes(&data).ok_or_else(|| throw(&ctx, "detached data"))?;
                verify_signature(&alg, &hash, &key_pem, &sig, &data).map_err(|e| throw(&ctx, &e))
            },
        )?,
    )?;
    Ok(())
}

/// `ccf.crypto.verifySignature`: CCF's algorithm names (`ECDSA` with `SHA-256`/`SHA-384`, `EdDSA`); whether the
/// signature verifies, or why the key cannot check it.
fn verify_signature(alg: &str, hash: &str, key_pem: &str, sig: &[u8], data: &[u8]) -> Result<bool, String> {
    let key = synod_core::keys::PublicKey::from_pem(key_pem).map_err(|e| e.to_string())?;
    let ed25519 = matches!(key, synod_core::keys::PublicKey::Ed25519(_));
    match alg {
        "EdDSA" | "Ed25519" if ed25519 => Ok(key.verify(data, sig).is_ok()),
        "ECDSA" if !ed25519 => {
            let prehash = match hash {
                "SHA-256" => <sha2::Sha256 as sha2::Digest>::digest(data).to_vec(),
                "SHA-384" => <sha2::Sha384 as sha2::Digest>::digest(data).to_vec(),
                other => return Err(format!("unsupported ECDSA hash {other:?} (SHA-256 or SHA-384)")),
            };
            Ok(key.verify_ecdsa_prehashed(&prehash, sig).is_ok())
        }
        "EdDSA" | "Ed25519" | "ECDSA" => Err(format!("a {} key cannot verify {alg} signatures", key.curve())),
        other => Err(format!(
            "unsupported signature algorithm {other} (ECDSA or EdDSA)"
        )),
    }
}

/// What the call knows of the service: the last committed transaction, and whether its writes apply.
fn install_call<'js>(ctx: &Ctx<'js>, natives: &Object<'js>, shared: &Shared) -> rquickjs::Result<()> {
    {
        let s = shared.clone();
        natives.set(
            "lastCommitted",
            Function::new(ctx.clone(), move |ctx: Ctx<'js>| {
                let (view, seqno) = with_state(&ctx, &s, |st| Ok(st.last_committed))?;
                Ok::<_, rquickjs::Error>(format!("{view}.{seqno}"))
            })?,
        )?;
    }
    {
        let s = shared.clone();
        natives.set(
            "setApplyWrites",
            Function::new(ctx.clone(), move |ctx: Ctx<'js>, apply: bool| {
                with_state(&ctx, &s, |st| {
                    st.apply_writes = Some(apply);
                    Ok(())
                })
            })?,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;

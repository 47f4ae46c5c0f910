//! `ccf.historical`: synchronous, bounded reads of the committed past for application handlers, over a
//! [`HistoricalSource`] (the node's ledger files, see `crate::apps::history`). Simpler than CCF's asynchronous
//! `getStateRange(handle, ...)`: a handler asks for the value of a key as of a committed seqno, for the versions of
//! a key in a range of seqnos, or for a receipt, and gets the answer at once (or an exception with `code` and
//! `statusCode`, e.g. 404 `TransactionPendingOrUnknown`, 503 `HistoricalReadBusy`).
//!
//! The source is set per thread for the duration of a call ([`with_historical`]): the JavaScript workers set it
//! to their node; elsewhere (the constitution, tests without one) `ccf.historical` throws.

use std::cell::RefCell;
use std::rc::Rc;

use rquickjs::{Ctx, Exception, Function, Object};

use super::{buf_bytes, js_buf, throw, with_state, KvPolicy, Refusal, Shared};

/// A committed write to a key, as `ccf.historical` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoricalVersion {
    /// View of the transaction that wrote it.
    pub view: u64,
    /// Seqno of that transaction.
    pub seqno: u64,
    /// The value; `None` for a delete.
    pub value: Option<Vec<u8>>,
}

/// Why `ccf.historical` refused: thrown as an `Error` with `code` and `statusCode`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoricalRefusal {
    /// The HTTP status the native endpoints answer in the same case.
    pub status: u16,
    /// The error code (as the native endpoints').
    pub code: String,
    /// What went wrong.
    pub message: String,
}

/// Versions of a key and where the next page starts, if any.
pub type VersionPage = (Vec<HistoricalVersion>, Option<u64>);

/// What `ccf.historical` reads: the committed past of the ledger. Every method is bounded and may block briefly.
pub trait HistoricalSource {
    /// The latest write to `key` of `map` at or before the committed `seqno`; `None` when the key had no value
    /// then.
    fn value_at(
        &self,
        map: &str,
        key: &[u8],
        seqno: u64,
    ) -> Result<Option<HistoricalVersion>, HistoricalRefusal>;
    /// The writes to `key` of `map` in the committed seqnos `from..=to`, at most `limit`.
    fn versions(
        &self,
        map: &str,
        key: &[u8],
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<VersionPage, HistoricalRefusal>;
    /// The JSON receipt of the committed transaction `view.seqno`.
    fn receipt(&self, view: u64, seqno: u64) -> Result<String, HistoricalRefusal>;
}

thread_local! {
    static SOURCE: RefCell<Option<Rc<dyn HistoricalSource>>> = const { RefCell::new(None) };
}

/// Restores the previous source when a call ends, even by a panic.
struct Restore(Option<Rc<dyn HistoricalSource>>);

impl Drop for Restore {
    fn drop(&mut self) {
        let previous = self.0.take();
        SOURCE.with(|s| *s.borrow_mut() = previous);
    }
}

/// Runs `f` with `source` behind `ccf.historical` on this thread.
pub fn with_historical<T>(source: Rc<dyn HistoricalSource>, f: impl FnOnce() -> T) -> T {
    let previous = SOURCE.with(|s| s.borrow_mut().replace(source));
    let _restore = Restore(previous);
    f()
}

/// Largest seqno a JavaScript number holds exactly.
const SEQNO_MAX: f64 = 9_007_199_254_740_991.0;

fn seqno_arg(ctx: &Ctx<'_>, what: &str, n: f64) -> rquickjs::Result<u64> {
    if n.fract() != 0.0 || !(1.0..=SEQNO_MAX).contains(&n) {
        return Err(throw(ctx, &format!("{what} must be a positive integer seqno")));
    }
    Ok(n as u64)
}

fn throw_refusal(ctx: &Ctx<'_>, r: HistoricalRefusal) -> rquickjs::Error {
    let thrown = Exception::from_message(ctx.clone(), &format!("{}: {}", r.code, r.message)).and_then(|ex| {
        ex.as_object().set("code", r.code)?;
        ex.as_object().set("statusCode", r.status)?;
        Ok(ex.throw())
    });
    thrown.unwrap_or_else(|e| e)
}

/// Checks that the call may read `map` historically and returns the source.
fn source_for(ctx: &Ctx<'_>, shared: &Shared, map: &str) -> rquickjs::Result<Rc<dyn HistoricalSource>> {
    with_state(ctx, shared, |st| {
        if st.policy != KvPolicy::Application {
            return Err(Refusal::Refused(
                "ccf.historical is for application handlers".into(),
            ));
        }
        st.policy.check_read(map)?;
        Ok(())
    })?;
    SOURCE
        .with(|s| s.borrow().clone())
        .ok_or_else(|| throw(ctx, "ccf.historical is not available here"))
}

fn version_object<'js>(ctx: &Ctx<'js>, v: &HistoricalVersion) -> rquickjs::Result<Object<'js>> {
    let o = Object::new(ctx.clone())?;
    o.set("seqno", v.seqno)?;
    o.set("view", v.view)?;
    o.set("transactionId", format!("{}.{}", v.view, v.seqno))?;
    match &v.value {
        Some(value) => o.set("value", js_buf(ctx, value)?)?,
        None => o.set("value", rquickjs::Undefined)?,
    }
    Ok(o)
}

/// Adds the natives behind `ccf.historical` to `natives`.
pub(super) fn install<'js>(ctx: &Ctx<'js>, natives: &Object<'js>, shared: &Shared) -> rquickjs::Result<()> {
    {
        let s = shared.clone();
        natives.set(
            "historicalValueAt",
            Function::new(
                ctx.clone(),
                move |ctx: Ctx<'js>, map: String, key: rquickjs::ArrayBuffer<'js>, seqno: f64| {
                    let key = buf_bytes(&key).ok_or_else(|| throw(&ctx, "detached key"))?;
                    let seqno = seqno_arg(&ctx, "seqno", seqno)?;
                    let source = source_for(&ctx, &s, &map)?;
                    let found = source
                        .value_at(&map, &key, seqno)
                        .map_err(|r| throw_refusal(&ctx, r))?;
                    found.map(|v| version_object(&ctx, &v)).transpose()
                },
            )?,
        )?;
    }
    {
        let s = shared.clone();
        natives.set(
            "historicalVersions",
            Function::new(
                ctx.clone(),
                move |ctx: Ctx<'js>,
                      map: String,
                      key: rquickjs::ArrayBuffer<'js>,
                      from: f64,
                      to: f64,
                      limit: f64| {
                    let key = buf_bytes(&key).ok_or_else(|| throw(&ctx, "detached key"))?;
                    let from = seqno_arg(&ctx, "fromSeqno", from)?;
                    let to = seqno_arg(&ctx, "toSeqno", to)?;
                    let limit = seqno_arg(&ctx, "limit", limit)?;
                    if to < from {
                        return Err(throw(&ctx, "toSeqno must not be before fromSeqno"));
                    }
                    let source = source_for(&ctx, &s, &map)?;
                    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
                    let (versions, next) = source
                        .versions(&map, &key, from, to, limit)
                        .map_err(|r| throw_refusal(&ctx, r))?;
                    let out = Object::new(ctx.clone())?;
                    let list = rquickjs::Array::new(ctx.clone())?;
                    for (i, v) in versions.iter().enumerate() {
                        list.set(i, version_object(&ctx, v)?)?;
                    }
                    out.set("versions", list)?;
                    match next {
                        Some(n) => out.set("next", n)?,
                        None => out.set("next", rquickjs::Undefined)?,
                    }
                    Ok::<_, rquickjs::Error>(out)
                },
            )?,
        )?;
    }
    {
        let s = shared.clone();
        natives.set(
            "historicalReceipt",
            Function::new(ctx.clone(), move |ctx: Ctx<'js>, tx_id: String| {
                let parsed: Option<synod_core::txid::TxId> = tx_id.parse().ok();
                let tx_id = parsed.ok_or_else(|| {
                    throw(&ctx, &format!("{tx_id:?} is not a transaction id <view>.<seqno>"))
                })?;
                with_state(&ctx, &s, |st| {
                    if st.policy != KvPolicy::Application {
                        return Err(Refusal::Refused(
                            "ccf.historical is for application handlers".into(),
                        ));
                    }
                    Ok(())
                })?;
                let source = SOURCE
                    .with(|s| s.borrow().clone())
                    .ok_or_else(|| throw(&ctx, "ccf.historical is not available here"))?;
                source
                    .receipt(tx_id.view, tx_id.seqno)
                    .map_err(|r| throw_refusal(&ctx, r))
            })?,
        )?;
    }
    Ok(())
}

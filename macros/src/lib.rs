//! `#[live_mutex::serial]` and `#[live_mutex::parallel]`: run a test while holding live-mutex
//! locks on keys, so that tests sharing a key never overlap, whether they run as threads of one
//! process (`cargo test`) or as separate processes (`cargo nextest run`, several CI jobs on one
//! host).
//!
//! Use them through the `live-mutex` crate (feature `macros`); the expansion calls into it.
//! See `live_mutex::serial` for where the broker comes from.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::quote;
use syn::parse::{Parse, ParseStream};
use syn::{Attribute, Ident, Item, ItemFn, LitStr, Token};

/// The key of `#[serial]` and `#[parallel]` without keys.
const DEFAULT_KEY: &str = "live-mutex:default";

/// Holds live-mutex locks on the given keys, exclusively, for the whole call.
///
/// ```ignore
/// #[live_mutex::serial]                  // one shared default key
/// #[test]
/// fn a() {}
///
/// #[live_mutex::serial(db)]              // identifiers or strings
/// #[test]
/// fn migrates() { /* no other test holding "db", in any process, runs now */ }
///
/// #[live_mutex::serial("db", cache, timeout = "60s")] // both or neither; fail after 60 s
/// #[tokio::test]
/// async fn warms_cache() {}
///
/// #[live_mutex::serial(db)]              // on a module: every test fn in it
/// mod db_tests { #[test] fn x() {} }
/// ```
///
/// The keys are taken before the first statement of the body and given back when it returns
/// or panics. A nested take of a key the same test holds proceeds. On an `async fn`, with the
/// `tokio` feature, the keys are awaited on the caller's runtime.
#[proc_macro_attribute]
pub fn serial(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr, item, false)
}

/// Holds live-mutex locks on the given keys shared (read locks) for the whole call: parallel
/// tests of a key run together, never alongside a serial one. Same forms as `serial`.
///
/// ```ignore
/// #[live_mutex::parallel(db)]
/// #[test]
/// fn reads_only() {}
/// ```
#[proc_macro_attribute]
pub fn parallel(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr, item, true)
}

fn expand(attr: TokenStream, item: TokenStream, shared: bool) -> TokenStream {
    let form = if shared { "parallel" } else { "serial" };
    let args = match syn::parse::<Args>(attr) {
        Ok(a) => a,
        Err(e) => return e.to_compile_error().into(),
    };
    let item = match syn::parse::<Item>(item) {
        Ok(i) => i,
        Err(e) => return e.to_compile_error().into(),
    };
    let out = match item {
        Item::Fn(f) => Ok(Item::Fn(wrap(f, &args, shared))),
        Item::Mod(m) => on_mod(m, &args, shared, form).map(Item::Mod),
        other => Err(syn::Error::new_spanned(
            other,
            format!("#[live_mutex::{form}] goes on a fn or on an inline `mod {{ .. }}` of tests"),
        )),
    };
    match out {
        Ok(i) => quote!(#i).into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// What the attribute says: keys (none: the default key) and a time-out.
struct Args {
    keys: Vec<LitStr>,
    timeout_ms: Option<u64>,
}

impl Parse for Args {
    fn parse(input: ParseStream) -> syn::Result<Args> {
        let mut keys: Vec<LitStr> = Vec::new();
        let mut timeout_ms = None;
        while !input.is_empty() {
            if input.peek(Ident) && input.peek2(Token![=]) {
                let name: Ident = input.parse()?;
                input.parse::<Token![=]>()?;
                if name != "timeout" {
                    return Err(syn::Error::new(
                        name.span(),
                        format!("unknown option `{name}`: the only option is `timeout = \"60s\"`"),
                    ));
                }
                if timeout_ms.is_some() {
                    return Err(syn::Error::new(name.span(), "`timeout` is given twice"));
                }
                let v: LitStr = input.parse().map_err(|e| {
                    syn::Error::new(e.span(), "`timeout` takes a string such as \"60s\"")
                })?;
                timeout_ms = Some(parse_duration(&v)?);
            } else if input.peek(LitStr) {
                keys.push(input.parse()?);
            } else if input.peek(Ident) {
                let i: Ident = input.parse()?;
                if input.peek(Token![::]) || input.peek(Token![-]) || input.peek(Token![.]) {
                    return Err(input.error(format!(
                        "a key is one identifier or a string: write `\"{i}...\"` for a key \
                         with other characters"
                    )));
                }
                keys.push(LitStr::new(&i.to_string(), i.span()));
            } else {
                return Err(input.error(
                    "expected a key (an identifier such as `db` or a string such as \"db\") \
                     or `timeout = \"60s\"`",
                ));
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        for (i, k) in keys.iter().enumerate() {
            if k.value().is_empty() {
                return Err(syn::Error::new(k.span(), "a lock key cannot be empty"));
            }
            if keys[..i].iter().any(|o| o.value() == k.value()) {
                return Err(syn::Error::new(
                    k.span(),
                    format!("the key {:?} is given twice", k.value()),
                ));
            }
        }
        if keys.is_empty() {
            keys.push(LitStr::new(DEFAULT_KEY, Span::call_site()));
        }
        Ok(Args { keys, timeout_ms })
    }
}

/// `"500ms"`, `"60s"`, `"2m"`, `"1h"`: a positive whole number and a unit, in milliseconds.
fn parse_duration(v: &LitStr) -> syn::Result<u64> {
    let s = v.value();
    let bad = || {
        syn::Error::new(
            v.span(),
            format!(
                "timeout = {s:?}: expected a positive whole number and a unit, such as \
                 \"500ms\", \"60s\", \"2m\" or \"1h\""
            ),
        )
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    match n.checked_mul(scale) {
        Some(ms) if ms > 0 => Ok(ms),
        _ => Err(bad()),
    }
}

/// The fn, holding the keys for its whole body.
fn wrap(mut f: ItemFn, args: &Args, shared: bool) -> ItemFn {
    let keys = &args.keys;
    let timeout = match args.timeout_ms {
        Some(ms) => quote!(::core::option::Option::Some(#ms)),
        None => quote!(::core::option::Option::None),
    };
    let name = f.sig.ident.to_string();
    let attr: TokenStream2 = quote! {
        ::live_mutex::client::__Attr {
            keys: &[#(#keys),*],
            shared: #shared,
            timeout_ms: #timeout,
            lmx_hint: ::core::option_env!("CARGO_BIN_EXE_lmx"),
            test: ::core::concat!(::core::module_path!(), "::", #name),
        }
    };
    if f.sig.asyncness.is_some() {
        let body = &f.block;
        f.block = syn::parse_quote!({
            ::live_mutex::client::__serial_async(#attr, async move #body).await
        });
    } else {
        let take: syn::Stmt = syn::parse_quote! {
            let __live_mutex_guard = ::live_mutex::client::__serial_attr(#attr);
        };
        f.block.stmts.insert(0, take);
    }
    f
}

/// Every test fn of the module (and of its inline submodules) that has no `serial`/`parallel`
/// attribute of its own.
fn on_mod(mut m: syn::ItemMod, args: &Args, shared: bool, form: &str) -> syn::Result<syn::ItemMod> {
    let Some((brace, items)) = m.content.take() else {
        return Err(syn::Error::new_spanned(
            &m,
            format!(
                "#[live_mutex::{form}] on a module needs its body here (`mod name {{ .. }}`), \
                 not in another file"
            ),
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        out.push(match item {
            Item::Fn(f) if is_test(&f.attrs) && !has_own(&f.attrs) => {
                Item::Fn(wrap(f, args, shared))
            }
            Item::Mod(sub) if sub.content.is_some() && !has_own(&sub.attrs) => {
                Item::Mod(on_mod(sub, args, shared, form)?)
            }
            other => other,
        });
    }
    m.content = Some((brace, out));
    Ok(m)
}

fn last_segment_is(a: &Attribute, names: &[&str]) -> bool {
    a.path()
        .segments
        .last()
        .is_some_and(|s| names.iter().any(|n| s.ident == n))
}

/// `#[test]`, `#[tokio::test]` and the like.
fn is_test(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| last_segment_is(a, &["test"]))
}

/// A `serial`/`parallel` attribute of its own, which wins over the module's.
fn has_own(attrs: &[Attribute]) -> bool {
    attrs
        .iter()
        .any(|a| last_segment_is(a, &["serial", "parallel"]))
}

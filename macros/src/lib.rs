//! `#[live_mutex::serial("key", ...)]`: runs a test while holding live-mutex locks on the
//! keys, so that tests sharing a key never overlap, whether they run as threads of one process
//! (`cargo test`) or as separate processes (`cargo nextest run`, several CI jobs on one host).
//!
//! Use it through the `live-mutex` crate (feature `macros`, on by default); the expansion
//! calls into it. See `live_mutex::serial` for where the broker comes from.

use proc_macro::TokenStream;
use quote::quote;
use syn::punctuated::Punctuated;
use syn::{ItemFn, LitStr, Token, parse_macro_input};

/// Holds live-mutex locks on the given keys for the whole test.
///
/// ```ignore
/// #[live_mutex::serial("db")]
/// #[test]
/// fn migrates() { /* no other test holding "db", in any process, runs now */ }
///
/// #[live_mutex::serial("db", "cache")] // both or neither: overlapping key sets cannot deadlock
/// #[tokio::test]
/// async fn warms_cache() {}
/// ```
///
/// The keys are taken all-or-nothing before the first statement of the body and released when
/// it returns or panics. For an `async fn` the lock is taken inside the future, blocking its
/// thread while it waits (as a test runtime's only task, that is the test itself).
#[proc_macro_attribute]
pub fn serial(attr: TokenStream, item: TokenStream) -> TokenStream {
    let keys = parse_macro_input!(attr with Punctuated::<LitStr, Token![,]>::parse_terminated);
    let mut f = parse_macro_input!(item as ItemFn);
    if keys.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[live_mutex::serial] needs at least one key, e.g. #[live_mutex::serial(\"db\")]",
        )
        .to_compile_error()
        .into();
    }
    if let Some(k) = keys.iter().find(|k| k.value().is_empty()) {
        return syn::Error::new(k.span(), "a lock key cannot be empty")
            .to_compile_error()
            .into();
    }
    let keys = keys.iter();
    let take: syn::Stmt = syn::parse_quote! {
        let __live_mutex_serial_guard = ::live_mutex::client::__serial_attr(
            &[#(#keys),*],
            ::core::option_env!("CARGO_BIN_EXE_lmx"),
        );
    };
    f.block.stmts.insert(0, take);
    quote!(#f).into()
}

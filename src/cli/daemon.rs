//! `lmx start --daemon`: a broker detached from the process that started it (the double fork
//! and readiness report are `live_mutex::daemon::detach`, shared with the zero-install start of
//! the shared broker from a test executable).
//!
//! The fork happens before this process has any thread (only clap has run), so the children
//! inherit no lock held by a thread that does not exist in them.

use super::EXIT_USAGE;
use super::out::tell;
use super::start::{Listen, StartArgs, serve};
use live_mutex::broker::BrokerBuilder;

pub(crate) fn daemon(
    a: &StartArgs,
    listen: Listen,
    configure: impl Fn(BrokerBuilder) -> Result<BrokerBuilder, String>,
) -> i32 {
    // Relative to where lmx was started, not to `/` where the daemon runs.
    let log = match a.log.as_deref().map(std::path::absolute).transpose() {
        Ok(l) => l,
        Err(e) => {
            tell!("lmx start: --log: {e}");
            return EXIT_USAGE;
        }
    };
    let url = listen.url();
    let code = live_mutex::daemon::detach(&url, "lmx start", log.as_deref(), |ready| {
        serve(configure(listen.builder()), |_| ready())
    });
    debug_assert!(code == 0 || code == super::EXIT_UNAVAILABLE);
    code
}

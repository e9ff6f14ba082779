//! OpenSSL is initialised at the first TLS or SSH connection, not when the program loads.
//!
//! The `curl` crate (under isahc, the http executor's client) initialises libcurl from a
//! load-time constructor, before `main`, and libcurl initialises OpenSSL there. In an idle
//! daemon that is about 1.7 MiB of libcrypto pages touched, and in every command about 1.7 ms
//! (`picoflow --version`: 2.7 ms with it, 1.0 ms without), although most runs never open a
//! TLS connection.
//!
//! The binary is linked with `--wrap=OPENSSL_init_ssl` (`build.rs`), so every call of that
//! function from the binary's own code (the Rust bindings, the statically built libcurl,
//! PicoFlow's executors) comes here. Before `main` a call only records the options it asked
//! for; from `main` on, a call is passed on with the recorded options added. The executors
//! call it before their first connection (`executor::init_openssl`), and OpenSSL 1.1 and later
//! also initialise themselves on first use, so no TLS code runs uninitialised.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static MAIN_STARTED: AtomicBool = AtomicBool::new(false);
/// Options asked for before `main`, not yet passed on.
static DEFERRED: AtomicU64 = AtomicU64::new(0);

/// Called first thing in `main`: from here on, initialisation requests are carried out.
pub(crate) fn main_started() {
    MAIN_STARTED.store(true, Ordering::SeqCst);
}

extern "C" {
    /// The real OPENSSL_init_ssl (the linker's name for it under `--wrap`).
    fn __real_OPENSSL_init_ssl(opts: u64, settings: *const c_void) -> c_int;
}

/// Every call of OPENSSL_init_ssl in the binary, by the linker's `--wrap`.
///
/// # Safety
/// As OPENSSL_init_ssl: `settings` is null or a valid `OPENSSL_INIT_SETTINGS`.
#[no_mangle]
pub(crate) unsafe extern "C" fn __wrap_OPENSSL_init_ssl(
    opts: u64,
    settings: *const c_void,
) -> c_int {
    if !MAIN_STARTED.load(Ordering::SeqCst) {
        DEFERRED.fetch_or(opts, Ordering::SeqCst);
        return 1; // Success, as far as the caller needs to know.
    }
    let opts = opts | DEFERRED.swap(0, Ordering::SeqCst);
    // SAFETY: the caller's contract, passed on.
    unsafe { __real_OPENSSL_init_ssl(opts, settings) }
}
